use super::*;
use crate::core::testkit::{BINDING, Kit, NOW, entropy};
use certs::KeyPair;
use protocol::message::ErrorCode;

fn ok() -> Status {
    Status {
        ok: true,
        reason: None,
    }
}

/// With `admit_vouched`, a device no voucher was imported for is admitted by its MASA's
/// nonced voucher for its own request, if the voucher pins our root: its record is written,
/// expected, holding that voucher. A voucher pinning another owner admits nothing.
#[test]
fn a_device_the_masa_vouches_for_is_admitted_when_the_policy_says_so() {
    let mut kit = Kit::new();
    kit.registrar.policy.admit_vouched = true;
    let (identity, peer) = kit.device("SN-NEW");
    let signed = kit.voucher_request(&identity);
    let nonced = |owner: &[u8]| {
        kit.maker
            .nonced_voucher(&identity.identity.idevid, &signed, owner, NOW)
            .unwrap()
    };
    let voucher = nonced(&kit.owner_root);
    let d = voucher_request(
        &kit.registrar,
        &peer,
        None,
        &signed,
        &BINDING,
        NOW,
        Some(voucher.clone()),
    )
    .unwrap();
    let record = d.write.expect("the device is admitted");
    assert_eq!(record.state, DeviceState::Expected);
    assert_eq!(record.voucher.as_ref(), Some(&voucher));
    assert_eq!(d.events[0].action, "admitted-by-masa");
    assert!(matches!(d.response, Response::Voucher(v) if v == voucher));

    let elsewhere = Kit::new().owner_root;
    let err = voucher_request(
        &kit.registrar,
        &peer,
        None,
        &signed,
        &BINDING,
        NOW,
        Some(nonced(&elsewhere)),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    // Without a MASA's voucher, an unknown device stays unknown.
    let err =
        voucher_request(&kit.registrar, &peer, None, &signed, &BINDING, NOW, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnknownDevice);
}

#[test]
fn a_voucher_request_answers_the_voucher_and_writes_nothing() {
    let kit = Kit::new();
    let (identity, peer) = kit.device("SN-1");
    let record = kit.expected("SN-1");
    let d = voucher_request(
        &kit.registrar,
        &peer,
        Some(record.clone()),
        &kit.voucher_request(&identity),
        &BINDING,
        NOW,
        None,
    )
    .unwrap();
    assert!(
        d.write.is_none(),
        "nothing is pinned before the voucher is accepted"
    );
    assert_eq!(d.events[0].action, "voucher-issued");
    assert!(matches!(d.response, Response::Voucher(v) if Some(&v) == record.voucher.as_ref()));
}

/// A MASA's voucher answers only the request it was made for; the request's creation time is
/// not held against it (the device's clock may be years off), everything else still is.
#[test]
fn a_nonced_voucher_answers_its_own_request_whatever_the_device_clock() {
    let kit = Kit::new();
    let (identity, peer) = kit.device("SN-1");
    let record = kit.expected("SN-1");
    let signed = kit.voucher_request(&identity);
    let nonced = |request: &[u8]| {
        kit.maker
            .nonced_voucher(&identity.identity.idevid, request, &kit.owner_root, NOW)
            .unwrap()
    };
    let years_later = NOW + 3 * 365 * 86_400;
    let voucher = nonced(&signed);
    let d = voucher_request(
        &kit.registrar,
        &peer,
        Some(record.clone()),
        &signed,
        &BINDING,
        years_later,
        Some(voucher.clone()),
    )
    .unwrap();
    assert!(d.write.is_none());
    assert!(d.events[0].detail.contains("nonced"));
    assert!(matches!(d.response, Response::Voucher(v) if v == voucher));

    // Made for another request (another nonce): not an answer.
    let other = device_agent::machine::onboarding::voucher_request(
        &identity.identity,
        &[2; 16],
        &kit.registrar.registrar_cert,
        &BINDING,
        NOW,
    )
    .sign(&identity.key)
    .unwrap();
    let err = voucher_request(
        &kit.registrar,
        &peer,
        Some(record.clone()),
        &signed,
        &BINDING,
        NOW,
        Some(nonced(&other)),
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    // The MASA's answer does not make a stranger known, nor excuse another session.
    for (record, binding) in [(None, BINDING), (Some(record), [9; 32])] {
        let err = voucher_request(
            &kit.registrar,
            &peer,
            record,
            &signed,
            &binding,
            NOW,
            Some(voucher.clone()),
        )
        .unwrap_err();
        assert!(matches!(
            err.code(),
            ErrorCode::UnknownDevice | ErrorCode::StaleRequest
        ));
    }
}

#[test]
fn voucher_requests_are_refused_with_typed_errors() {
    let kit = Kit::new();
    let (identity, peer) = kit.device("SN-1");
    let record = kit.expected("SN-1");
    let signed = kit.voucher_request(&identity);
    let reg = &kit.registrar;
    let code = |r: Result<Decision, LifecycleError>| r.unwrap_err().code();
    // Unknown device.
    assert_eq!(
        code(voucher_request(
            reg, &peer, None, &signed, &BINDING, NOW, None
        )),
        ErrorCode::UnknownDevice
    );
    // Another session's binding (a replay).
    assert_eq!(
        code(voucher_request(
            reg,
            &peer,
            Some(record.clone()),
            &signed,
            &[9; 32],
            NOW,
            None
        )),
        ErrorCode::StaleRequest
    );
    // Made long ago.
    assert_eq!(
        code(voucher_request(
            reg,
            &peer,
            Some(record.clone()),
            &signed,
            &BINDING,
            NOW + 3600,
            None
        )),
        ErrorCode::StaleRequest
    );
    // Signed by another key than the IDevID's.
    let (other, _) = kit.device("SN-2");
    assert_eq!(
        code(voucher_request(
            reg,
            &peer,
            Some(record.clone()),
            &kit.voucher_request(&other),
            &BINDING,
            NOW,
            None
        )),
        ErrorCode::BadSignature
    );
    // An expired voucher on file.
    let mut late = record.clone();
    late.voucher_expires_on = Some(NOW);
    assert_eq!(
        code(voucher_request(
            reg,
            &peer,
            Some(late),
            &signed,
            &BINDING,
            NOW,
            None
        )),
        ErrorCode::VoucherExpired
    );
    // A device further on.
    let mut active = record.clone();
    active.state = DeviceState::Active;
    assert_eq!(
        code(voucher_request(
            reg,
            &peer,
            Some(active),
            &signed,
            &BINDING,
            NOW,
            None
        )),
        ErrorCode::WrongState
    );
    // A voucher naming another IDevID issuer.
    let mut voucher =
        protocol::voucher::Voucher::parse_unverified(record.voucher.as_ref().unwrap()).unwrap();
    voucher.idevid_issuer = Some(vec![1, 2, 3]);
    let mut crossed = record.clone();
    crossed.voucher = Some(voucher.sign(kit.maker.masa_key()).unwrap());
    assert_eq!(
        code(voucher_request(
            reg,
            &peer,
            Some(crossed),
            &signed,
            &BINDING,
            NOW,
            None
        )),
        ErrorCode::Unauthorized
    );
}

#[test]
fn accepting_the_voucher_pins_the_idevid_and_a_clone_is_refused_after() {
    let kit = Kit::new();
    let (_, peer) = kit.device("SN-1");
    let (_, clone) = kit.device("SN-1");
    let record = kit.expected("SN-1");
    // A rejection is a note: nothing changes.
    let no = Status {
        ok: false,
        reason: Some("not my owner".into()),
    };
    let d = voucher_status(&peer, Some(record.clone()), no, NOW).unwrap();
    assert!(d.write.is_none());
    assert_eq!(d.events[0].action, "voucher-rejected");
    // Acceptance moves to onboarding and pins this IDevID.
    let d = voucher_status(&peer, Some(record.clone()), ok(), NOW).unwrap();
    let pinned = d.write.unwrap();
    assert_eq!(pinned.state, DeviceState::Onboarding);
    assert_eq!(pinned.idevid_key.as_deref(), Some(peer.public_key.raw()));
    // Saying it again changes nothing and says nothing.
    let d = voucher_status(&peer, Some(pinned.clone()), ok(), NOW).unwrap();
    assert!(d.write.is_none() && d.events.is_empty());
    // Another IDevID of the same maker and serial is refused from now on.
    let e = voucher_status(&clone, Some(pinned), ok(), NOW).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
}

#[test]
fn enrollment_needs_the_accepted_voucher_and_a_retry_gets_the_same_certificate() {
    let kit = Kit::new();
    let (_, peer) = kit.device("SN-1");
    let record = kit.expected("SN-1");
    let key = KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = kit.csr("SN-1", &key);
    let e = enroll(
        &kit.registrar,
        &peer,
        Some(record.clone()),
        &csr,
        &BINDING,
        NOW,
        entropy(1),
    )
    .unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::WrongState,
        "before the voucher is accepted"
    );
    let onboarding = voucher_status(&peer, Some(record), ok(), NOW)
        .unwrap()
        .write
        .unwrap();
    let first = enroll(
        &kit.registrar,
        &peer,
        Some(onboarding.clone()),
        &csr,
        &BINDING,
        NOW,
        entropy(1),
    )
    .unwrap();
    let issued = first.write.clone().unwrap();
    assert_eq!(issued.certificates.len(), 1);
    let again = enroll(
        &kit.registrar,
        &peer,
        Some(issued.clone()),
        &csr,
        &BINDING,
        NOW,
        entropy(2),
    )
    .unwrap();
    assert!(again.write.is_none(), "a retry writes nothing");
    assert_eq!(
        format!("{:?}", again.response),
        format!("{:?}", first.response)
    );
    // A CSR for another serial, or for the IDevID's own key, is refused.
    let wrong = kit.csr("SN-OTHER", &key);
    let e = enroll(
        &kit.registrar,
        &peer,
        Some(onboarding.clone()),
        &wrong,
        &BINDING,
        NOW,
        entropy(3),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::CsrPolicy);
    let unbound = certs::csr::build_csr("SN-1", &key, &[0; 32]).unwrap();
    let e = enroll(
        &kit.registrar,
        &peer,
        Some(onboarding),
        &unbound,
        &BINDING,
        NOW,
        entropy(3),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::StaleRequest);
}

/// The voucher accepted with the CSR: one decision that pins the IDevID, moves the device to
/// onboarding and issues its LDevID, in one write; a retry gets the same certificate and
/// writes nothing; a refused CSR refuses the acceptance with it.
#[test]
fn accepting_the_voucher_with_the_csr_is_one_write_and_a_refusal_records_neither() {
    let kit = Kit::new();
    let (_, peer) = kit.device("SN-1");
    let record = kit.expected("SN-1");
    let key = KeyPair::generate(certs::KeyKind::P256).unwrap();
    let fold = |record: &DeviceRecord, csr: &[u8], seed| {
        accept_voucher_and_enroll(
            &kit.registrar,
            &peer,
            Some(record.clone()),
            csr,
            &BINDING,
            NOW,
            entropy(seed),
        )
    };

    let e = fold(&record, &kit.csr("SN-OTHER", &key), 1).unwrap_err();
    assert_eq!(e.code(), ErrorCode::CsrPolicy, "the CSR decides for both");

    let csr = kit.csr("SN-1", &key);
    let first = fold(&record, &csr, 1).unwrap();
    let written = first.write.clone().unwrap();
    assert_eq!(written.state, DeviceState::Onboarding);
    assert_eq!(written.idevid_key.as_deref(), Some(peer.public_key.raw()));
    assert_eq!(written.certificates.len(), 1);
    let actions: Vec<&str> = first.events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions.first(), Some(&"voucher-accepted"), "{actions:?}");
    assert!(actions.len() > 1, "the issue's events follow: {actions:?}");
    assert!(matches!(first.response, Response::Enrolled(_)));

    // The same as the two requests one after the other.
    let accepted = voucher_status(&peer, Some(record), ok(), NOW)
        .unwrap()
        .write
        .unwrap();
    let apart = enroll(
        &kit.registrar,
        &peer,
        Some(accepted),
        &csr,
        &BINDING,
        NOW,
        entropy(1),
    )
    .unwrap();
    // ECDSA signatures are randomised: the certificates differ in their signature alone.
    let unsigned = |d: &Decision| {
        let mut r = d.write.clone().unwrap();
        r.certificates.iter_mut().for_each(|c| c.der.clear());
        r
    };
    assert_eq!(unsigned(&apart), unsigned(&first));

    let again = fold(&written, &csr, 2).unwrap();
    assert!(again.write.is_none(), "a retry writes nothing");
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(
        format!("{:?}", again.response),
        format!("{:?}", first.response)
    );
}

#[test]
fn a_welcome_carries_what_the_device_missed_and_only_ldevids_get_one() {
    let kit = Kit::new();
    let (mut record, _, ldevid) = kit.onboarded("SN-1");
    let (_, idevid) = kit.device("SN-1");
    let hi = || Hello {
        agent_version: "a".into(),
        firmware_version: "1.0.0".into(),
        firmware_sequence: 0,
        class_id: "sensor-1".into(),
        hardware: [("arch".to_string(), "riscv64".to_string())].into(),
        anchors: Some(kit.registrar.roots.digest.to_vec().into()),
    };
    let e = hello(
        &kit.registrar,
        &idevid,
        Some(record.clone()),
        hi(),
        None,
        NOW,
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
    record.rotation = Some(super::super::record::Rotation {
        requested_at: NOW,
        state: RotationState::Pending,
    });
    let d = hello(
        &kit.registrar,
        &ldevid,
        Some(record.clone()),
        hi(),
        None,
        NOW,
    )
    .unwrap();
    let Response::Welcome(w) = &d.response else {
        panic!("{:?}", d.response)
    };
    assert_eq!(w.commands, [Command::Rotate]);
    assert!(opens_session(&ldevid, &d.response));
    assert!(!opens_session(&idevid, &d.response));
    // The versions and hardware it reports are recorded.
    let written = d.write.unwrap();
    assert_eq!(written.agent_version.as_deref(), Some("a"));
    assert_eq!(written.hardware, hi().hardware);
    assert_eq!(
        written.anchors.as_deref(),
        Some(kit.registrar.roots.digest.as_slice())
    );
    // Said again, nothing is written.
    let again = hello(
        &kit.registrar,
        &ldevid,
        Some(written.clone()),
        hi(),
        None,
        NOW,
    )
    .unwrap();
    assert!(again.write.is_none());
    // A device that trusts other roots (or does not say) is sent the roots in force first,
    // and what it said is recorded.
    let elsewhere = Hello {
        anchors: Some(vec![0; 32].into()),
        ..hi()
    };
    let d = hello(
        &kit.registrar,
        &ldevid,
        Some(written.clone()),
        elsewhere,
        None,
        NOW,
    )
    .unwrap();
    let Response::Welcome(w) = &d.response else {
        panic!("{:?}", d.response)
    };
    let roots = Command::TrustAnchors {
        anchors: vec![kit.owner_root.clone().into()],
    };
    assert_eq!(w.commands, [roots, Command::Rotate]);
    assert_eq!(d.write.unwrap().anchors, Some(vec![0; 32]));
    // Facts past the bounds are refused, and nothing is written.
    let too_many = Hello {
        hardware: (0..=protocol::message::MAX_HARDWARE_FACTS)
            .map(|i| (format!("f{i}"), "x".to_string()))
            .collect(),
        ..hi()
    };
    let too_long = Hello {
        hardware: [("board".to_string(), "x".repeat(129))].into(),
        ..hi()
    };
    for bad in [too_many, too_long] {
        let e = hello(
            &kit.registrar,
            &ldevid,
            Some(written.clone()),
            bad,
            None,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
    }
}

#[test]
fn an_active_device_enrolls_again_with_its_idevid_only_once_every_ldevid_expired() {
    let kit = Kit::new();
    let (_, peer) = kit.device("SN-1");
    let record = Kit::apply(
        kit.expected("SN-1"),
        &voucher_status(&peer, Some(kit.expected("SN-1")), ok(), NOW).unwrap(),
    );
    let key = KeyPair::generate(certs::KeyKind::P256).unwrap();
    let enroll_at = |reg: &Registrar, record: &DeviceRecord, key: &KeyPair, now: u64| {
        enroll(
            reg,
            &peer,
            Some(record.clone()),
            &kit.csr("SN-1", key),
            &BINDING,
            now,
            entropy(2),
        )
    };
    let record = Kit::apply(
        record.clone(),
        &enroll_at(&kit.registrar, &record, &key, NOW).unwrap(),
    );
    let active = Kit::apply(
        record.clone(),
        &enroll_status(&peer, Some(record), ok(), NOW).unwrap(),
    );
    assert_eq!(active.state, DeviceState::Active);
    let expiry = active.certificates[0].not_after;
    let fresh = KeyPair::generate(certs::KeyKind::P256).unwrap();

    // Still valid: renew with it instead.
    let e = enroll_at(&kit.registrar, &active, &fresh, expiry - 1).unwrap_err();
    assert_eq!(e.code(), ErrorCode::WrongState);
    // Expired, and the policy says no.
    let mut strict = Kit::new();
    strict.registrar.policy.reenroll_expired = false;
    let e = enroll_at(&strict.registrar, &active, &fresh, expiry + 1).unwrap_err();
    assert_eq!(e.code(), ErrorCode::WrongState);
    // Expired, and allowed: a new LDevID, audited, confirmed like a first enrollment.
    let d = enroll_at(&kit.registrar, &active, &fresh, expiry + 1).unwrap();
    assert!(
        d.events
            .iter()
            .any(|e| e.action == "reenrolled-with-idevid")
    );
    let renewed = Kit::apply(active.clone(), &d);
    assert_eq!(renewed.certificates.len(), 2);
    let confirmed = Kit::apply(
        renewed.clone(),
        &enroll_status(&peer, Some(renewed), ok(), expiry + 2).unwrap(),
    );
    assert_eq!(confirmed.state, DeviceState::Active);
    assert!(
        confirmed
            .certificates
            .iter()
            .any(|c| c.status == CertStatus::Active && c.not_after > expiry + 2)
    );
    // Another device's IDevID cannot do it.
    let (_, stranger) = kit.device("SN-1");
    let e = enroll(
        &kit.registrar,
        &stranger,
        Some(active),
        &kit.csr("SN-1", &fresh),
        &BINDING,
        expiry + 1,
        entropy(3),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unauthorized);
}

/// Plain EST has no voucher exchange: an expected device enrolls over HTTPS with its IDevID
/// alone (pinned then), with or without its session's binding unless the owner requires it;
/// over our QUIC protocol the voucher comes first and the binding is always required.
#[test]
fn an_expected_device_enrolls_over_est_without_a_voucher_exchange() {
    use crate::core::Channel;
    let mut kit = Kit::new();
    let (_, quic) = kit.device("SN-1");
    let https = quic.clone().over(Channel::Https);
    let record = kit.expected("SN-1");
    let key = KeyPair::generate(certs::KeyKind::P256).unwrap();
    let unbound = certs::csr::build_birth_csr("SN-1", &key).unwrap();
    let enroll_with = |reg: &Registrar, peer: &DevicePeer, csr: &[u8]| {
        enroll(
            reg,
            peer,
            Some(record.clone()),
            csr,
            &BINDING,
            NOW,
            entropy(1),
        )
    };
    // Over QUIC: the voucher first.
    assert_eq!(
        enroll_with(&kit.registrar, &quic, &kit.csr("SN-1", &key))
            .unwrap_err()
            .code(),
        ErrorCode::WrongState
    );
    // Over HTTPS, unbound: enrolled, the IDevID pinned, the way it came audited.
    let d = enroll_with(&kit.registrar, &https, &unbound).unwrap();
    let written = d.write.unwrap();
    assert_eq!(written.state, crate::core::DeviceState::Onboarding);
    assert_eq!(written.idevid_key.as_deref(), Some(quic.public_key.raw()));
    assert_eq!(written.certificates.len(), 1);
    assert_eq!(d.events[0].action, "est-enrollment");
    assert!(matches!(d.response, Response::Enrolled(_)));
    // The owner may require the binding; a bound CSR passes, an unbound one does not.
    kit.registrar.policy.require_csr_binding = true;
    assert_eq!(
        enroll_with(&kit.registrar, &https, &unbound)
            .unwrap_err()
            .code(),
        ErrorCode::StaleRequest
    );
    assert!(enroll_with(&kit.registrar, &https, &kit.csr("SN-1", &key)).is_ok());
    // Nor once the owner's expectation (the voucher) lapsed.
    let mut lapsed = record.clone();
    lapsed.voucher_expires_on = Some(NOW - 1);
    assert_eq!(
        enroll(
            &kit.registrar,
            &https,
            Some(lapsed),
            &unbound,
            &BINDING,
            NOW,
            entropy(1)
        )
        .unwrap_err()
        .code(),
        ErrorCode::VoucherExpired
    );
    // A stranger's IDevID over HTTPS is no more welcome than over QUIC.
    assert_eq!(
        enroll(
            &kit.registrar,
            &https,
            None,
            &unbound,
            &BINDING,
            NOW,
            entropy(1)
        )
        .unwrap_err()
        .code(),
        ErrorCode::UnknownDevice
    );
}
