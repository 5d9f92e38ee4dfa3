//! Renewal with re-key (EST simplereenroll, RFC 7030 4.2.2) over an LDevID session.
//!
//! The CSR keeps the subject (the device serial) and brings a fresh key: reusing the current
//! key, any earlier one or the IDevID's is refused. It is bound to the TLS session like every
//! CSR. The new certificate is confirmed when the device opens a session with it; the old one
//! is then superseded and keeps working for the grace period at most.

use super::access::{ldevid, usable};
use super::decision::Decision;
use super::error::LifecycleError;
use super::issue::issue;
use super::peer::{CredentialKind, DevicePeer};
use super::policy::{Entropy, Registrar};
use super::record::DeviceRecord;
use super::state::DeviceState;

/// Checks a re-enrollment CSR and issues the renewed LDevID.
pub fn reenroll(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    csr: &[u8],
    session_binding: &[u8],
    now: u64,
    entropy: Entropy,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "re-enrollment")?;
    let mut record = usable(peer, record)?;
    let cert = ldevid(peer, &record, now, reg.policy.superseded_grace)?.clone();
    // An EST client has no other way to say it stored its certificate than to use it.
    let mut events = super::onboard::confirm_by_use(peer, &mut record, &cert, now)?;
    record.require_state(&[DeviceState::Active], "re-enrollment")?;
    let idevid = record
        .idevid_key
        .as_deref()
        .and_then(public_key_from_raw)
        .into_iter()
        .collect::<Vec<_>>();
    let mut forbidden = vec![peer.public_key.clone()];
    forbidden.extend(idevid);
    let checked = certs::csr::check_csr(
        csr,
        &certs::csr::CsrPolicy {
            serial: &peer.id.serial,
            binding: session_binding,
            binding_required: peer.binding_required(&reg.policy),
            forbidden_keys: &forbidden,
        },
    )?;
    let issued = issue(reg, &mut record, &checked, "renewed LDevID", now, &entropy)?;
    let changed = issued.changed || !events.is_empty();
    events.extend(issued.events);
    Ok(Decision {
        write: changed.then_some(record),
        events,
        response: issued.response,
    })
}

/// The pinned IDevID key from its raw bytes (the length tells the kind apart: 65 bytes for
/// P-256, 97 for P-384, 32 for Ed25519).
fn public_key_from_raw(raw: &[u8]) -> Option<protocol::keys::PublicKey> {
    use protocol::keys::PublicKey;
    PublicKey::p256(raw)
        .or_else(|_| PublicKey::p384(raw))
        .or_else(|_| PublicKey::ed25519(raw))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testkit::{BINDING, Kit, NOW, entropy};
    use certs::{KeyKind, KeyPair};
    use protocol::message::ErrorCode;

    #[test]
    fn a_renewal_issues_for_a_fresh_key_only_over_the_ldevid() {
        let kit = Kit::new();
        let (record, current_key, peer) = kit.onboarded("SN-1");
        let (_, idevid) = kit.device("SN-1");
        let fresh = KeyPair::generate(KeyKind::P256).unwrap();
        let csr = kit.csr("SN-1", &fresh);
        let code = |r: Result<Decision, LifecycleError>| r.unwrap_err().code();
        assert_eq!(
            code(reenroll(
                &kit.registrar,
                &idevid,
                Some(record.clone()),
                &csr,
                &BINDING,
                NOW,
                entropy(5)
            )),
            ErrorCode::Unauthorized
        );
        // The current key again is no re-key.
        let same = kit.csr("SN-1", &current_key);
        assert_eq!(
            code(reenroll(
                &kit.registrar,
                &peer,
                Some(record.clone()),
                &same,
                &BINDING,
                NOW,
                entropy(5)
            )),
            ErrorCode::CsrPolicy
        );
        let d = reenroll(
            &kit.registrar,
            &peer,
            Some(record.clone()),
            &csr,
            &BINDING,
            NOW,
            entropy(5),
        )
        .unwrap();
        let renewed = d.write.unwrap();
        assert_eq!(renewed.certificates.len(), 2);
        assert_eq!(
            renewed.pending_certificate().unwrap().public_key,
            fresh.public_key().raw()
        );
        // A quarantined device renews nothing.
        let mut quarantined = record;
        quarantined.state = crate::core::DeviceState::Quarantined;
        assert_eq!(
            code(reenroll(
                &kit.registrar,
                &peer,
                Some(quarantined),
                &csr,
                &BINDING,
                NOW,
                entropy(6)
            )),
            ErrorCode::Quarantined
        );
    }

    /// The pinned IDevID key is recognised for every kind a device may have, so a renewal
    /// cannot slip the birth key in as a "fresh" key.
    #[test]
    fn the_pinned_idevid_key_is_read_back_for_every_kind() {
        for kind in [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
            let key = KeyPair::generate(kind).unwrap().public_key();
            assert_eq!(public_key_from_raw(key.raw()), Some(key), "{kind:?}");
        }
        assert_eq!(public_key_from_raw(&[4; 7]), None);
    }
}
