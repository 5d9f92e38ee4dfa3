//! What a crash may have left half done, and how the agent finishes it before anything else:
//! a renewed key stored but not promoted, and a trial boot the device restarted in.

use certs::CertInfo;
use protocol::keys::PublicKey;
use protocol::message::FirmwareReport;

use super::AgentState;
use crate::error::{AgentError, CredentialRefusal};

/// How the key store must be repaired to match the stored LDevID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRepair {
    /// Nothing to do: the current key is the LDevID's (or there is no LDevID).
    None,
    /// The pending key is the LDevID's: the promotion was interrupted; finish it.
    PromotePending,
    /// The device was wiped and its LDevID keys destroyed, and its return to the factory
    /// state was interrupted: finish it.
    FinishReset,
}

/// Compares the stored LDevID's key with the key store's current and pending keys.
pub fn keys(
    state: &AgentState,
    current: Option<&PublicKey>,
    pending: Option<&PublicKey>,
) -> Result<KeyRepair, AgentError> {
    let Some(cert) = &state.ldevid else {
        return Ok(KeyRepair::None);
    };
    let wanted = CertInfo::parse(cert)?.public_key;
    if current == Some(&wanted) {
        return Ok(KeyRepair::None);
    }
    if pending == Some(&wanted) {
        return Ok(KeyRepair::PromotePending);
    }
    if state.pending_attestation.is_some() && current.is_none() && pending.is_none() {
        return Ok(KeyRepair::FinishReset);
    }
    Err(crate::error::PlatformError::Key("no key for the stored LDevID".into()).into())
}

/// A trial boot that this agent is not running was interrupted (the device restarted in it):
/// the state to go back to the previous image with, and the report to deliver. `None` when
/// no trial was interrupted. The caller rolls the slots back if they are still in trial.
pub fn interrupted_trial(state: &AgentState, updating: bool) -> Option<AgentState> {
    if updating {
        return None;
    }
    let trial = state.trial.as_ref()?;
    let mut next = state.clone();
    next.trial = None;
    next.firmware_version = trial.previous_version.clone();
    next.pending_report = Some(FirmwareReport::rolled_back(
        &trial.digest,
        "the trial boot was interrupted".into(),
        0,
    ));
    Some(next)
}

/// Whether a refusal of the LDevID calls for enrolling again with the IDevID: only when the
/// onboarder says it has expired (the device was offline through its renewal window). The
/// onboarder's clock decides, not the device's, which may be wrong.
pub fn reenroll_after(reason: CredentialRefusal) -> bool {
    reason == CredentialRefusal::Expired
}

/// Whether a wiped device whose attestation is still pending is done with its owner: the
/// owner revoked its credential, which it does once it has the attestation (its answer was
/// lost to a crash or a cut) or when it gives up on the device. Either way the credential can
/// never deliver the attestation, and the device is already wiped: it returns to the factory
/// state instead of knocking forever. Another refusal may pass, and keeps the attestation.
pub fn done_with_owner(state: &AgentState, reason: CredentialRefusal) -> bool {
    state.pending_attestation.is_some() && reason == CredentialRefusal::Revoked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Trial;

    #[test]
    fn a_wiped_device_whose_keys_are_gone_finishes_its_reset() {
        use certs::ca::random_serial;
        use certs::profile::{LdevidProfile, issue_ldevid};
        use certs::{Ca, CaName, KeyKind, KeyPair, Validity};
        let validity = Validity::starting(1_800_000_000, 86_400);
        let name = CaName {
            organization: "Owner".into(),
            common_name: "Issuing".into(),
        };
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let ca = Ca::root(&name, key, validity, &random_serial().unwrap()).unwrap();
        let device_key = KeyPair::generate(KeyKind::P256).unwrap();
        let profile = LdevidProfile {
            serial: "SN-1",
            common_name: "SN-1",
            organization: "Owner",
            crl_url: None,
        };
        let serial = random_serial().unwrap();
        let ldevid = issue_ldevid(&ca, &profile, &device_key.spki_der(), validity, &serial);
        let mut state = AgentState::factory("1.0.0");
        state.ldevid = Some(ldevid.unwrap());
        // Onboarded, the key gone: nothing the agent may repair.
        assert!(keys(&state, None, None).is_err());
        // Wiped, the key destroyed, the reset interrupted: finish it.
        state.pending_attestation = Some(vec![1]);
        assert_eq!(keys(&state, None, None).unwrap(), KeyRepair::FinishReset);
        let key = device_key.public_key();
        assert_eq!(keys(&state, Some(&key), None).unwrap(), KeyRepair::None);
    }

    #[test]
    fn a_wiped_device_refused_as_revoked_is_done_with_its_owner() {
        let mut state = AgentState::factory("1.0.0");
        assert!(!done_with_owner(&state, CredentialRefusal::Revoked));
        state.pending_attestation = Some(vec![1]);
        assert!(done_with_owner(&state, CredentialRefusal::Revoked));
        assert!(!done_with_owner(&state, CredentialRefusal::Rejected));
        assert!(!done_with_owner(&state, CredentialRefusal::Expired));
    }

    #[test]
    fn an_interrupted_trial_goes_back_and_reports() {
        let mut state = AgentState::factory("1.0.0");
        assert_eq!(interrupted_trial(&state, false), None);
        state.trial = Some(Trial {
            digest: vec![1],
            previous_version: "1.0.0".into(),
        });
        state.firmware_version = "2.0.0".into();
        assert_eq!(interrupted_trial(&state, true), None, "our own trial");
        let back = interrupted_trial(&state, false).unwrap();
        assert_eq!(back.firmware_version, "1.0.0");
        assert!(back.trial.is_none());
        assert_eq!(
            back.pending_report.unwrap().state,
            protocol::message::FirmwareState::RolledBack
        );
    }

    #[test]
    fn keys_are_repaired_only_toward_the_stored_certificate() {
        let state = AgentState::factory("1.0.0");
        assert_eq!(keys(&state, None, None).unwrap(), KeyRepair::None);
    }

    #[test]
    fn only_an_expired_ldevid_calls_for_enrolling_again() {
        assert!(reenroll_after(CredentialRefusal::Expired));
        for other in [
            CredentialRefusal::Revoked,
            CredentialRefusal::UnknownIssuer,
            CredentialRefusal::Rejected,
        ] {
            assert!(!reenroll_after(other), "{other:?}");
        }
    }
}
