//! The device-side checks of BRSKI (RFC 8995 5.6) and of enrollment, as pure functions.
//!
//! Order (DESIGN 3): the device accepts the registrar's certificate provisionally; sends a
//! voucher request; checks the voucher ([`accept_voucher`]): signed by its manufacturer, its
//! serial and IDevID issuer, fresh; then checks that the registrar's certificate chains to the
//! CA the voucher pins ([`check_registrar`]). Only then does it send a CSR, and it stores the
//! enrollment only if the LDevID is for its own key and serial and chains to that CA
//! ([`check_enrollment`]).

use certs::chain::{self, Usage};
use certs::{CertInfo, Identity};
use protocol::keys::PublicKey;
use protocol::message::Enrollment;
use protocol::voucher::{Assertion, CLOCK_SKEW, Voucher, VoucherExpectation, VoucherRequest};

use crate::error::AgentError;

/// The voucher request for this session.
pub fn voucher_request(
    identity: &Identity,
    nonce: &[u8],
    registrar_cert: &[u8],
    session_binding: &[u8],
    now: u64,
) -> VoucherRequest {
    VoucherRequest {
        created_on: now,
        assertion: Assertion::Proximity,
        serial_number: identity.serial.clone(),
        nonce: nonce.to_vec(),
        proximity_registrar_cert: registrar_cert.to_vec(),
        session_binding: session_binding.to_vec(),
    }
}

/// A voucher the device accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The voucher.
    pub voucher: Voucher,
    /// The time to take, when the device's clock disagrees with a voucher bound to its nonce
    /// (fresh by the nonce, so made moments ago): the voucher's creation time.
    pub time: Option<u64>,
}

/// Verifies a voucher: the manufacturer's signature (with the voucher-signing key from the
/// factory), this device's serial and IDevID issuer, and freshness: by the nonce when it
/// carries this request's nonce (then its creation time is the time, whatever the device's
/// clock says), else by its expiry against the device's clock.
pub fn accept_voucher(
    identity: &Identity,
    signed: &[u8],
    nonce: &[u8],
    now: u64,
) -> Result<Accepted, AgentError> {
    let voucher = certs::brski::open_voucher(signed, &identity.masa_info.public_key)?;
    let fresh_by_nonce = voucher.nonce.as_deref() == Some(nonce) && !nonce.is_empty();
    let time = (fresh_by_nonce && voucher.created_on.abs_diff(now) > CLOCK_SKEW)
        .then_some(voucher.created_on);
    let now = time.unwrap_or(now);
    voucher.check(
        &VoucherExpectation {
            serial: &identity.serial,
            idevid_issuer: identity.idevid_issuer(),
            nonce,
        },
        now,
    )?;
    if let Some(expires_on) = voucher.expires_on {
        // A voucher may not outlive the CA it pins (RFC 8366bis).
        let pinned = CertInfo::parse(&voucher.pinned_domain_cert)
            .map_err(|e| AgentError::RogueRegistrar(format!("pinned-domain-cert: {e}")))?;
        if expires_on > pinned.not_after {
            return Err(AgentError::RogueRegistrar(
                "the voucher outlives the CA it pins".into(),
            ));
        }
    }
    Ok(Accepted { voucher, time })
}

/// Checks the registrar's certificate chain (as presented in the TLS handshake) against the
/// owner roots the device trusts (the CA the voucher pins, at first), and that it is marked as a registrar (id-kp-cmcRA, RFC 8995 2.6).
pub fn check_registrar(
    anchors: &[Vec<u8>],
    presented: &[Vec<u8>],
    now: u64,
) -> Result<(), AgentError> {
    let (leaf, intermediates) = presented
        .split_first()
        .ok_or_else(|| AgentError::RogueRegistrar("no registrar certificate".into()))?;
    chain::verify(leaf, intermediates, anchors, now, Usage::ServerAuth)
        .map_err(|e| AgentError::RogueRegistrar(format!("registrar certificate: {e}")))?;
    let info = CertInfo::parse(leaf).map_err(|e| AgentError::RogueRegistrar(e.to_string()))?;
    if !info.cmc_ra {
        return Err(AgentError::RogueRegistrar(
            "registrar certificate lacks id-kp-cmcRA".into(),
        ));
    }
    Ok(())
}

/// Checks an enrollment before storing it: the LDevID is for `key`, names this device, and
/// chains through the given CA certificates to one of the owner roots the device trusts.
pub fn check_enrollment(
    enrollment: &Enrollment,
    serial: &str,
    key: &PublicKey,
    anchors: &[Vec<u8>],
    now: u64,
) -> Result<CertInfo, AgentError> {
    let bad = |m: String| AgentError::BadEnrollment(m);
    let info = CertInfo::parse(&enrollment.certificate).map_err(|e| bad(e.to_string()))?;
    if info.subject_serial.as_deref() != Some(serial) {
        return Err(bad(format!(
            "LDevID names {:?}, not this device",
            info.subject_serial
        )));
    }
    if &info.public_key != key {
        return Err(bad("LDevID is not for the key this device requested".into()));
    }
    let intermediates: Vec<Vec<u8>> = enrollment.chain.iter().map(|c| c.to_vec()).collect();
    chain::verify(
        &enrollment.certificate,
        &intermediates,
        anchors,
        now,
        Usage::ClientAuth,
    )
    .map_err(|e| bad(format!("LDevID chain: {e}")))?;
    Ok(info)
}

/// What `onboard` has left to do, from the stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remaining {
    /// Nothing: onboarded and confirmed.
    Nothing,
    /// The enrollment is stored but the server has not confirmed it yet: a hello on the new
    /// LDevID (the operational session) will.
    Confirm,
    /// Everything: voucher, checks, CSR, enrollment.
    Enroll,
}

/// What is left of onboarding for a device in `state`.
pub fn remaining(state: &crate::machine::AgentState) -> Remaining {
    match state.phase {
        crate::machine::Phase::Enrolled { confirmed: true } => Remaining::Nothing,
        crate::machine::Phase::Enrolled { confirmed: false } => Remaining::Confirm,
        crate::machine::Phase::Factory => Remaining::Enroll,
    }
}

#[cfg(test)]
mod tests {
    //! Every check on its own, on a fixed clock, with real keys and certificates.

    use certs::factory::{Manufacturer, ManufacturerConfig};
    use certs::profile::{self, LdevidProfile};
    use certs::{Ca, CaName, KeyKind, KeyPair, Validity};
    use protocol::message::{DeviceConfig, NetworkProfile};
    use protocol::voucher::VoucherError;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const NONCE: [u8; 16] = [9; 16];

    struct Owner {
        root: Ca,
        issuing: Ca,
    }

    fn ca_name(o: &str) -> CaName {
        CaName {
            organization: o.into(),
            common_name: format!("{o} CA"),
        }
    }

    fn serial() -> [u8; 16] {
        certs::ca::random_serial().unwrap()
    }

    fn domain(name: &str) -> Owner {
        let root = Ca::root(
            &ca_name(name),
            KeyPair::generate(KeyKind::P256).unwrap(),
            Validity::starting(NOW - 10, 10 * 365 * 86_400),
            &serial(),
        )
        .unwrap();
        let issuing = root
            .intermediate(
                &ca_name(&format!("{name} Issuing")),
                KeyPair::generate(KeyKind::P256).unwrap(),
                Validity::starting(NOW - 10, 5 * 365 * 86_400),
                &serial(),
            )
            .unwrap();
        Owner { root, issuing }
    }

    fn maker() -> (Manufacturer, Identity) {
        maker_named("Test Devices")
    }

    /// An online voucher for `identity`, pinning `pinned`, with `edit` applied before signing.
    fn voucher(
        maker: &Manufacturer,
        identity: &Identity,
        pinned: &[u8],
        edit: impl FnOnce(&mut Voucher),
    ) -> Vec<u8> {
        let mut voucher = Voucher {
            created_on: NOW,
            expires_on: None,
            assertion: Assertion::Proximity,
            serial_number: identity.serial.clone(),
            idevid_issuer: Some(identity.idevid_issuer().to_vec()),
            pinned_domain_cert: pinned.to_vec(),
            nonce: Some(NONCE.to_vec()),
        };
        edit(&mut voucher);
        voucher.sign(maker.masa_key()).unwrap()
    }

    fn registrar(ca: &Ca) -> Vec<u8> {
        profile::issue_registrar(
            ca,
            "Owner",
            &["onboarder.local".to_string()],
            &KeyPair::generate(KeyKind::P256).unwrap(),
            Validity::starting(NOW - 10, 86_400),
            &serial(),
        )
        .unwrap()
    }

    fn enrollment(ca: &Ca, serial_number: &str, key: &KeyPair) -> Enrollment {
        let certificate = profile::issue_ldevid(
            ca,
            &LdevidProfile {
                serial: serial_number,
                common_name: serial_number,
                organization: "Owner",
                crl_url: None,
            },
            &key.spki_der(),
            Validity::starting(NOW - 10, 86_400),
            &serial(),
        )
        .unwrap();
        Enrollment {
            certificate,
            chain: vec![serde_bytes::ByteBuf::from(ca.cert_der().to_vec())],
            network: NetworkProfile::Wifi {
                ssid: "s".into(),
                psk: "p".into(),
            },
            config: DeviceConfig {
                server_name: "onboarder.local".into(),
                heartbeat_secs: 30,
            },
        }
    }

    #[test]
    fn a_good_voucher_is_accepted_and_each_fault_is_refused_by_name() {
        let (maker, identity) = maker();
        let owner = domain("Owner");
        let pinned = owner.root.cert_der();
        let good = voucher(&maker, &identity, pinned, |_| {});
        let accepted = accept_voucher(&identity, &good, &NONCE, NOW).unwrap();
        assert_eq!(accepted.voucher.pinned_domain_cert, pinned);
        assert_eq!(accepted.time, None, "the clock agrees");
        // Bound to this request's nonce, it gives its time to a clock years off either way;
        // one without a nonce proves nothing about now and gives none.
        for wrong in [NOW - 3 * 365 * 86_400, NOW + 2 * 365 * 86_400] {
            let accepted = accept_voucher(&identity, &good, &NONCE, wrong).unwrap();
            assert_eq!(accepted.time, Some(NOW));
        }
        let bulk = voucher(&maker, &identity, pinned, |v| {
            v.nonce = None;
            v.expires_on = Some(NOW + 86_400);
        });
        let accepted = accept_voucher(&identity, &bulk, &NONCE, NOW + 3600).unwrap();
        assert_eq!(accepted.time, None);

        let refused = |signed: &[u8], nonce: &[u8], now: u64| {
            accept_voucher(&identity, signed, nonce, now).unwrap_err()
        };
        // Replayed from another session: another nonce.
        assert!(matches!(
            refused(&good, &[1; 16], NOW),
            AgentError::Voucher(VoucherError::NonceMismatch)
        ));
        // Another device's voucher.
        let other = voucher(&maker, &identity, pinned, |v| {
            v.serial_number = "SN-2".into()
        });
        assert!(matches!(
            refused(&other, &NONCE, NOW),
            AgentError::Voucher(VoucherError::WrongSerial { .. })
        ));
        // Another IDevID issuer.
        let issuer = voucher(&maker, &identity, pinned, |v| {
            v.idevid_issuer = Some(vec![1; 20])
        });
        assert!(matches!(
            refused(&issuer, &NONCE, NOW),
            AgentError::Voucher(VoucherError::WrongIssuer)
        ));
        // Expired.
        let expired = voucher(&maker, &identity, pinned, |v| {
            v.expires_on = Some(NOW - 1);
            v.created_on = NOW - 100;
        });
        assert!(matches!(
            refused(&expired, &NONCE, NOW),
            AgentError::Voucher(VoucherError::Expired { .. })
        ));
        // Signed by another manufacturer.
        let (stranger, _) = maker_named("Stranger Devices");
        let forged = voucher(&stranger, &identity, pinned, |_| {});
        assert!(matches!(
            refused(&forged, &NONCE, NOW),
            AgentError::Voucher(VoucherError::Signature(_))
        ));
        // Tampered after signing: one byte of the payload flipped.
        let mut tampered = good.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        assert!(matches!(
            refused(&tampered, &NONCE, NOW),
            AgentError::Voucher(_)
        ));
        // Outliving the CA it pins.
        let long = voucher(&maker, &identity, pinned, |v| {
            v.expires_on = Some(NOW + 20 * 365 * 86_400)
        });
        assert!(matches!(
            refused(&long, &NONCE, NOW),
            AgentError::RogueRegistrar(_)
        ));
    }

    fn maker_named(name: &str) -> (Manufacturer, Identity) {
        let maker = Manufacturer::create(ManufacturerConfig::new(name), NOW).unwrap();
        let identity = maker.mint("SN-1", KeyKind::P256, NOW).unwrap().identity;
        (maker, identity)
    }

    #[test]
    fn the_registrar_must_chain_to_the_pinned_ca_and_be_a_registrar() {
        let owner = domain("Owner");
        let pinned = &[owner.root.cert_der().to_vec()];
        let chain = |leaf: Vec<u8>, ca: &Ca| vec![leaf, ca.cert_der().to_vec()];
        check_registrar(
            pinned,
            &chain(registrar(&owner.issuing), &owner.issuing),
            NOW,
        )
        .unwrap();

        let rogue = domain("Rogue");
        assert!(matches!(
            check_registrar(
                pinned,
                &chain(registrar(&rogue.issuing), &rogue.issuing),
                NOW
            ),
            Err(AgentError::RogueRegistrar(_))
        ));
        assert!(matches!(
            check_registrar(pinned, &[], NOW),
            Err(AgentError::RogueRegistrar(_))
        ));
        // A device certificate of the right CA is not a registrar.
        let device = enrollment(
            &owner.issuing,
            "SN-1",
            &KeyPair::generate(KeyKind::P256).unwrap(),
        );
        assert!(matches!(
            check_registrar(pinned, &chain(device.certificate, &owner.issuing), NOW),
            Err(AgentError::RogueRegistrar(_))
        ));
        // Expired by the time it is presented.
        assert!(matches!(
            check_registrar(
                pinned,
                &chain(registrar(&owner.issuing), &owner.issuing),
                NOW + 2 * 86_400
            ),
            Err(AgentError::RogueRegistrar(_))
        ));
    }

    #[test]
    fn an_enrollment_must_name_this_device_hold_its_key_and_chain_to_the_pinned_ca() {
        let owner = domain("Owner");
        let pinned = &[owner.root.cert_der().to_vec()];
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let good = enrollment(&owner.issuing, "SN-1", &key);
        let info = check_enrollment(&good, "SN-1", &key.public_key(), pinned, NOW).unwrap();
        assert_eq!(info.subject_serial.as_deref(), Some("SN-1"));

        let refused = |e: &Enrollment, key: &PublicKey| {
            matches!(
                check_enrollment(e, "SN-1", key, pinned, NOW),
                Err(AgentError::BadEnrollment(_))
            )
        };
        assert!(refused(
            &enrollment(&owner.issuing, "SN-2", &key),
            &key.public_key()
        ));
        let other_key = KeyPair::generate(KeyKind::P256).unwrap();
        assert!(refused(&good, &other_key.public_key()));
        let rogue = domain("Rogue");
        assert!(refused(
            &enrollment(&rogue.issuing, "SN-1", &key),
            &key.public_key()
        ));
        let mut garbage = good.clone();
        garbage.certificate.truncate(10);
        assert!(refused(&garbage, &key.public_key()));
    }

    #[test]
    fn onboarding_resumes_where_the_stored_state_left_it() {
        let mut state = crate::machine::AgentState::factory("1.0.0");
        assert_eq!(remaining(&state), Remaining::Enroll);
        state.phase = crate::machine::Phase::Enrolled { confirmed: false };
        assert_eq!(remaining(&state), Remaining::Confirm);
        state.phase = crate::machine::Phase::Enrolled { confirmed: true };
        assert_eq!(remaining(&state), Remaining::Nothing);
    }
}
