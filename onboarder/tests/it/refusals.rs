//! Hostile and broken inputs: each is refused with a typed error, and nothing changes on
//! either side (DESIGN 7).

use device_agent::{AgentError, CredentialRefusal};
use onboarder::core::{DeviceId, DeviceRecord, DeviceState};
use onboarder::store::{Change, DeviceWrite, Expect};
use protocol::message::{ErrorCode, Hello, Request, Response};
use protocol::voucher::{Assertion, Voucher, VoucherError};
use protocol::{SignatureError, frame, message};

use crate::harness::*;

/// Puts a record with the given voucher bytes straight into the store, as a registrar with a
/// bad database (or a rogue one) would have it.
async fn file_voucher(world: &World, id: DeviceId, voucher: Vec<u8>) {
    let record = DeviceRecord::expected(id, voucher, Some(now() + 30 * DAY), now());
    world
        .server
        .service()
        .store()
        .commit(Change {
            devices: vec![DeviceWrite {
                record,
                expect: Expect::Absent,
            }],
            ..Change::default()
        })
        .await
        .unwrap();
}

fn voucher_for(world: &World, serial: &str, pinned: &[u8], signer: &certs::KeyPair) -> Vec<u8> {
    Voucher {
        created_on: now(),
        expires_on: Some(now() + 30 * DAY),
        assertion: Assertion::Verified,
        serial_number: serial.to_string(),
        idevid_issuer: certs::CertInfo::parse(world.manufacturer.root_cert())
            .unwrap()
            .subject_key_id,
        pinned_domain_cert: pinned.to_vec(),
        nonce: None,
    }
    .sign(signer)
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_serial_is_refused() {
    let world = World::new().await;
    let device = world.device("SN-NOBODY");
    world.expect(&["SN-SOMEONE"], 30).await;
    let code = refused(world.agent(&device).onboard().await);
    assert_eq!(code, ErrorCode::UnknownDevice);
    assert!(world.record("SN-NOBODY").is_none());
    assert!(device.is_factory_fresh());
    assert_eq!(world.actions("SN-NOBODY"), ["refused"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idevid_of_an_unknown_manufacturer_is_refused_at_the_handshake() {
    let world = World::new().await;
    world.expect(&["SN-CLONE"], 30).await;
    let before = world.record("SN-CLONE").unwrap();
    // A counterfeit: same serial, birth certificate from a manufacturer nobody imported.
    let rogue = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Test Devices"),
        now(),
    )
    .unwrap();
    let device = Device::mint(&rogue, &world.dir.path().join("rogue"), "SN-CLONE");
    match world.agent(&device).onboard().await {
        // The counterfeit maker took the genuine one's name, so its birth certificate names an
        // issuer the server knows, whose signature it does not bear (decrypt_error).
        Err(AgentError::CredentialRefused {
            reason: CredentialRefusal::Rejected,
            ..
        }) => {}
        other => panic!("expected a handshake refusal, got {other:?}"),
    }
    assert_eq!(world.record("SN-CLONE").unwrap(), before);
    assert!(device.is_factory_fresh());
    // Refused handshakes leave no audit entry, but they are counted.
    assert!(
        world
            .server
            .service()
            .metrics()
            .snapshot()
            .handshakes_refused
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voucher_signed_by_the_wrong_key_is_refused_by_the_device() {
    let world = World::new().await;
    let device = world.device("SN-FORGED");
    world.expect(&[], 30).await;
    let forger = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let forged = voucher_for(&world, "SN-FORGED", &world.owner_root, &forger);
    // The registrar knows the maker's voucher signer, so an import refuses it ...
    let report = world
        .server
        .service()
        .import_vouchers(&protocol::voucher::encode_bundle(std::slice::from_ref(
            &forged,
        )))
        .await
        .unwrap();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(world.record("SN-FORGED").is_none());
    // ... and a registrar with a bad database serves it anyway: the device refuses it.
    file_voucher(&world, world.id("SN-FORGED"), forged).await;
    let before = world.record("SN-FORGED").unwrap();
    let audit_before = world.actions("SN-FORGED");
    match world.agent(&device).onboard().await {
        Err(AgentError::Voucher(VoucherError::Signature(SignatureError::Invalid))) => {}
        other => panic!("{other:?}"),
    }
    assert!(device.is_factory_fresh());
    // Nothing was pinned, moved or issued; the request and the device's verdict are noted.
    assert_eq!(world.record("SN-FORGED").unwrap(), before);
    let actions = world.actions("SN-FORGED");
    assert_eq!(
        actions[audit_before.len()..],
        ["voucher-issued", "voucher-rejected"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_voucher_is_refused() {
    let world = World::new().await;
    let device = world.device("SN-LATE");
    world.expect(&[], 30).await;
    // A voucher that expires a minute from now, imported while still valid.
    let voucher = world
        .manufacturer
        .voucher("SN-LATE", &world.owner_root, now(), now() + 60)
        .unwrap();
    let report = world
        .server
        .service()
        .import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
        .await
        .unwrap();
    assert_eq!(report.imported, 1);
    let before = world.record("SN-LATE").unwrap();
    world.advance_clock(61);
    // (The device's own expiry check is covered in protocol::voucher.)
    let code = refused(world.agent(&device).onboard().await);
    assert_eq!(code, ErrorCode::VoucherExpired);
    assert_eq!(world.record("SN-LATE").unwrap(), before);
    assert!(device.is_factory_fresh());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voucher_for_another_serial_is_refused_by_the_device() {
    let world = World::new().await;
    let device = world.device("SN-MINE");
    world.expect(&[], 30).await;
    let theirs = world
        .manufacturer
        .voucher("SN-THEIRS", &world.owner_root, now(), now() + DAY)
        .unwrap();
    file_voucher(&world, world.id("SN-MINE"), theirs).await;
    let before = world.record("SN-MINE").unwrap();
    let audit_before = world.actions("SN-MINE");
    match world.agent(&device).onboard().await {
        Err(AgentError::Voucher(VoucherError::WrongSerial { .. })) => {}
        other => panic!("{other:?}"),
    }
    assert!(device.is_factory_fresh());
    assert!(world.record("SN-MINE").unwrap().certificates.is_empty());
    // Nothing was pinned or moved.
    assert_eq!(world.record("SN-MINE").unwrap(), before);
    assert_eq!(
        world.actions("SN-MINE")[audit_before.len()..],
        ["voucher-issued", "voucher-rejected"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_replayed_voucher_requests_are_refused() {
    let world = World::new().await;
    let device = world.device("SN-REPLAY");
    world.expect(&["SN-REPLAY"], 30).await;
    let birth = device.birth();
    let before = world.record("SN-REPLAY").unwrap();

    // Captured in one session, replayed in another.
    let first = world.raw_session(&device).await;
    let captured = voucher_request(&birth, &first);
    first.close();
    let second = world.raw_session(&device).await;
    let code = code_of(&second.exchange(&captured).await.unwrap());
    assert_eq!(code, ErrorCode::StaleRequest);

    // Made an hour ago (a stale nonce), in this very session.
    let registrar = second.server_chain()[0].clone();
    let mut old = device_agent::machine::onboarding::voucher_request(
        &birth.identity,
        &[1; 16],
        &registrar,
        &second.binding().unwrap(),
        now() - 3600,
    );
    let stale = Request::VoucherRequest(old.sign(&birth.key).unwrap());
    assert_eq!(
        code_of(&second.exchange(&stale).await.unwrap()),
        ErrorCode::StaleRequest
    );

    // Naming another serial than the certificate's.
    old.created_on = now();
    old.serial_number = "SN-SOMEONE-ELSE".into();
    let wrong = Request::VoucherRequest(old.sign(&birth.key).unwrap());
    assert_eq!(
        code_of(&second.exchange(&wrong).await.unwrap()),
        ErrorCode::WrongSerial
    );

    // Signed by another key than the IDevID's.
    old.serial_number = "SN-REPLAY".into();
    let other = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let forged = Request::VoucherRequest(old.sign(&other).unwrap());
    assert_eq!(
        code_of(&second.exchange(&forged).await.unwrap()),
        ErrorCode::BadSignature
    );

    assert_eq!(world.record("SN-REPLAY").unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proximity_mismatch_is_refused() {
    let world = World::new().await;
    let device = world.device("SN-FAR");
    world.expect(&["SN-FAR"], 30).await;
    let birth = device.birth();
    let before = world.record("SN-FAR").unwrap();
    let session = world.raw_session(&device).await;
    // The device claims to have seen another registrar's certificate.
    let req = device_agent::machine::onboarding::voucher_request(
        &birth.identity,
        &[1; 16],
        &world.owner_root,
        &session.binding().unwrap(),
        now(),
    );
    let response = session
        .exchange(&Request::VoucherRequest(req.sign(&birth.key).unwrap()))
        .await
        .unwrap();
    assert_eq!(code_of(&response), ErrorCode::ProximityMismatch);
    assert_eq!(world.record("SN-FAR").unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_registrar_gets_no_csr() {
    let world = World::new().await;
    let device = world.device("SN-VICTIM");
    world.expect(&["SN-VICTIM"], 30).await;
    // Another onboarder, with its own owner CA, serving the genuine (stolen) voucher.
    let rogue = World::new().await;
    rogue
        .server
        .service()
        .import_anchor(&anchor_import(&world.manufacturer))
        .await
        .unwrap();
    let stolen = world.record("SN-VICTIM").unwrap().voucher.unwrap();
    let victim = world.id("SN-VICTIM");
    file_voucher(&rogue, victim.clone(), stolen).await;
    let at_rogue_before = rogue.record_of(&victim).unwrap();
    let rogue_audit_before = rogue.actions_of(&victim);
    let real_before = world.record("SN-VICTIM").unwrap();
    let real_audit_before = world.actions("SN-VICTIM");
    let agent = device.agent(rogue.server.quic_addr(), &rogue.endpoint);
    match agent.onboard().await {
        Err(AgentError::RogueRegistrar(_)) => {}
        other => panic!("{other:?}"),
    }
    assert!(device.is_factory_fresh());
    let at_rogue = rogue.record_of(&victim).unwrap();
    // Not even the rogue pinned the device's IDevID: it never accepted the voucher.
    assert_eq!(at_rogue, at_rogue_before);
    assert_eq!(
        rogue.actions_of(&victim)[rogue_audit_before.len()..],
        ["voucher-issued", "voucher-rejected"]
    );
    assert_eq!(world.record("SN-VICTIM").unwrap(), real_before);
    assert_eq!(world.actions("SN-VICTIM"), real_audit_before);
    assert!(
        at_rogue.certificates.is_empty(),
        "the rogue issued something"
    );
    assert!(
        !rogue
            .actions_of(&victim)
            .iter()
            .any(|a| a.starts_with("certificate"))
    );
    assert_eq!(
        world.record("SN-VICTIM").unwrap().state,
        DeviceState::Expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csrs_are_refused() {
    let world = World::new().await;
    let device = world.device("SN-CSR");
    world.expect(&["SN-CSR"], 30).await;
    let birth = device.birth();
    let session = world.raw_session(&device).await;
    session
        .call(&voucher_request(&birth, &session))
        .await
        .unwrap();
    accept_voucher(&session).await;
    let before = world.record("SN-CSR").unwrap();
    let binding = session.binding().unwrap();
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let enroll = Request::enroll;

    let wrong_subject = certs::csr::build_csr("SN-OTHER", &key, &binding).unwrap();
    let r = session.exchange(&enroll(wrong_subject)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrPolicy);

    let good = certs::csr::build_csr("SN-CSR", &key, &binding).unwrap();
    let mut tampered = good.clone();
    let at = tampered.windows(6).position(|w| w == b"SN-CSR").unwrap();
    tampered[at + 5] = b'X';
    let r = session.exchange(&enroll(tampered)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrInvalid);

    let idevid_key = certs::csr::build_csr("SN-CSR", &birth.key, &binding).unwrap();
    let r = session.exchange(&enroll(idevid_key)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrPolicy);

    let other_session = certs::csr::build_csr("SN-CSR", &key, &[0; 32]).unwrap();
    let r = session.exchange(&enroll(other_session)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::StaleRequest);

    let r = session
        .exchange(&enroll(b"not a csr".to_vec()))
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrInvalid);

    assert_eq!(world.record("SN-CSR").unwrap(), before);
    // And the good one is still accepted afterwards.
    assert!(matches!(
        session.call(&enroll(good)).await.unwrap(),
        Response::Enrolled(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_truncated_garbage_and_future_frames_are_refused() {
    let world = World::new().await;
    let device = world.device("SN-FUZZ");
    world.expect(&["SN-FUZZ"], 30).await;
    let before = world.record("SN-FUZZ").unwrap();
    let session = world.raw_session(&device).await;

    // A header announcing 10 MB: refused before anything is buffered.
    let mut huge = (10u32 * 1024 * 1024).to_be_bytes().to_vec();
    huge.extend_from_slice(&[0; 100]);
    let r = session.exchange_raw(&huge).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::TooLarge);

    // A frame shorter than announced.
    let mut short = 100u32.to_be_bytes().to_vec();
    short.extend_from_slice(&[0x82; 10]);
    let r = session.exchange_raw(&short).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::BadRequest);

    // Well-framed garbage.
    let r = session
        .exchange_raw(&frame::encode(b"\xff\xfe garbage \x00\x01").unwrap())
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::BadRequest);

    // A message from a future protocol version.
    let future = protocol::cbor::to_vec(&(2u16, "voucher-request"));
    let r = session
        .exchange_raw(&frame::encode(&future).unwrap())
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::UnsupportedVersion);

    // A request over the size limit, well framed.
    let big = message::encode(&Request::enroll(vec![0; message::MAX_REQUEST]));
    let r = session
        .exchange_raw(&frame::encode(&big).unwrap())
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::TooLarge);

    assert_eq!(world.record("SN-FUZZ").unwrap(), before);
    // The connection is still usable for a proper request.
    assert!(matches!(
        session
            .call(&voucher_request(&device.birth(), &session))
            .await
            .unwrap(),
        Response::Voucher(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_only_good_for_their_own_requests() {
    let world = World::new().await;
    let device = world.device("SN-ROLE");
    world.expect(&["SN-ROLE"], 30).await;
    let session = world.raw_session(&device).await;
    let hello = Request::Hello(Hello {
        agent_version: "x".into(),
        firmware_version: "y".into(),
        firmware_sequence: 0,
        class_id: "sensor-1".into(),
        hardware: Default::default(),
        anchors: None,
    });
    let before = world.record("SN-ROLE").unwrap();
    assert_eq!(
        code_of(&session.exchange(&hello).await.unwrap()),
        ErrorCode::Unauthorized
    );
    // Enrolling before the voucher is a state error.
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = certs::csr::build_csr("SN-ROLE", &key, &session.binding().unwrap()).unwrap();
    assert_eq!(
        code_of(&session.exchange(&Request::enroll(csr)).await.unwrap()),
        ErrorCode::WrongState
    );
    assert_eq!(world.record("SN-ROLE").unwrap(), before);
    session.close();

    // An onboarded device cannot ask for a voucher again with its IDevID, nor with its LDevID.
    let agent = world.agent(&device);
    agent.onboard().await.unwrap();
    let session = world.raw_session(&device).await;
    let r = session
        .exchange(&voucher_request(&device.birth(), &session))
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::WrongState);
    let op = agent.connect().await.unwrap();
    let r = op
        .exchange(&voucher_request_for(
            &device.birth(),
            &op.server_chain()[0],
            &op.binding().unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::Unauthorized);
}
