//! Two manufacturers whose devices share serials: a device is (its maker, its serial), and no
//! device of one maker can take the place of the other's.

use std::sync::Arc;

use certs::factory::{Manufacturer, ManufacturerConfig};
use onboarder::core::{DeviceState, LifecycleError};
use onboarder::service::OperatorError;
use protocol::message::{ErrorCode, Hello, Request, Status};

use crate::harness::*;

/// A second manufacturer; its factory numbers devices from SN-000001 too.
fn other_maker() -> Arc<Manufacturer> {
    Arc::new(Manufacturer::create(ManufacturerConfig::new("Other Devices"), now()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_of_two_makers_with_the_same_serial_each_onboard_with_their_own_voucher() {
    let world = World::new().await;
    let b = other_maker();
    let from_a = world.device("SN-000001");
    let from_b = Device::mint(&b, &world.dir.path().join("b"), "SN-000001");
    world.expect(&["SN-000001"], 30).await;
    world.expect_from(&b, &["SN-000001"], 30).await;
    let (a_id, b_id) = (world.id("SN-000001"), id_of(&b, "SN-000001"));
    assert_ne!(a_id, b_id);

    world.agent(&from_a).onboard().await.unwrap();
    world.agent(&from_b).onboard().await.unwrap();
    let (ra, rb) = (
        world.record_of(&a_id).unwrap(),
        world.record_of(&b_id).unwrap(),
    );
    assert_eq!(ra.state, DeviceState::Active);
    assert_eq!(rb.state, DeviceState::Active);
    assert_ne!(ra.idevid_key, rb.idevid_key);
    // Each LDevID names its device whole, and each device's operational session is its own.
    for (id, record) in [(&a_id, &ra), (&b_id, &rb)] {
        let cert = record.active_certificate().unwrap();
        let info = certs::CertInfo::parse(&cert.der).unwrap();
        assert_eq!(info.common_name.as_deref(), Some(id.to_string().as_str()));
        assert_eq!(info.subject_serial.as_deref(), Some("SN-000001"));
    }
    world.agent(&from_a).connect().await.unwrap().close();
    world.agent(&from_b).connect().await.unwrap().close();

    // An operator must say which one a bare serial means.
    let service = world.server.service();
    let ambiguous = service.resolve("SN-000001").unwrap_err().to_string();
    assert!(ambiguous.contains("ambiguous"), "{ambiguous}");
    assert_eq!(service.resolve(&b_id.to_string()).unwrap(), b_id);
    assert_eq!(service.resolve("other-devices/SN-000001").unwrap(), b_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_makers_device_cannot_take_the_serial_and_the_genuine_device_still_onboards() {
    let world = World::new().await;
    let b = other_maker();
    let genuine = world.device("SN-000002");
    let squatter = Device::mint(&b, &world.dir.path().join("b"), "SN-000002");
    // Both makers are trusted, but only maker A's device SN-000002 is expected.
    world.expect(&["SN-000002"], 30).await;
    world.expect_from(&b, &[], 30).await;
    let a_id = world.id("SN-000002");
    let b_id = id_of(&b, "SN-000002");
    let before = world.record_of(&a_id).unwrap();
    let audit_before = world.actions_of(&a_id);

    // Maker B's genuine device, running the stock agent.
    let code = refused(world.agent(&squatter).onboard().await);
    assert_eq!(code, ErrorCode::UnknownDevice);
    assert!(squatter.is_factory_fresh());
    // Nothing pinned, changed or locked; no record made for B's device.
    assert_eq!(world.record_of(&a_id).unwrap(), before);
    assert_eq!(world.actions_of(&a_id), audit_before);
    assert!(world.record_of(&b_id).is_none());
    assert_eq!(world.actions_of(&b_id), ["refused"]);

    // The genuine device onboards afterwards.
    world.agent(&genuine).onboard().await.unwrap();
    assert_eq!(world.record_of(&a_id).unwrap().state, DeviceState::Active);
}

/// A client speaking the protocol directly, not the stock agent, presents maker B's IDevID and
/// asks for maker A's device's voucher, an enrollment and an operational session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_built_client_with_another_makers_idevid_is_refused_at_each_step() {
    let world = World::new().await;
    let b = other_maker();
    let genuine = world.device("SN-000003");
    let squatter = Device::mint(&b, &world.dir.path().join("b"), "SN-000003");
    world.expect(&["SN-000003"], 30).await;
    world.expect_from(&b, &[], 30).await;
    let a_id = world.id("SN-000003");
    let before = world.record_of(&a_id).unwrap();
    let audit_before = world.actions_of(&a_id);

    let session = world.raw_session(&squatter).await;
    let birth = squatter.birth();
    let ask = session
        .exchange(&voucher_request(&birth, &session))
        .await
        .unwrap();
    assert_eq!(code_of(&ask), ErrorCode::UnknownDevice);
    let accept = Request::VoucherStatus(Status {
        ok: true,
        reason: None,
    });
    assert_eq!(
        code_of(&session.exchange(&accept).await.unwrap()),
        ErrorCode::UnknownDevice
    );
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = certs::csr::build_csr("SN-000003", &key, &session.binding().unwrap()).unwrap();
    assert_eq!(
        code_of(&session.exchange(&Request::enroll(csr)).await.unwrap()),
        ErrorCode::UnknownDevice
    );
    let hello = Request::Hello(Hello {
        agent_version: "x".into(),
        firmware_version: "y".into(),
        firmware_sequence: 0,
        class_id: "sensor-1".into(),
        hardware: Default::default(),
        anchors: None,
    });
    assert_eq!(
        code_of(&session.exchange(&hello).await.unwrap()),
        ErrorCode::Unauthorized
    );
    session.close();
    assert_eq!(world.record_of(&a_id).unwrap(), before);
    assert_eq!(world.actions_of(&a_id), audit_before);

    // The genuine device onboards; then a certificate made by a maker's CA that claims to be
    // its LDevID (our issuer's key id, its name in the CN) gets no operational session.
    world.agent(&genuine).onboard().await.unwrap();
    let active = world.record_of(&a_id).unwrap();
    let forged = forge_ldevid(&world, &a_id, &active).await;
    let key: Arc<dyn device_agent::platform::DeviceKey> = Arc::new(forged.1);
    let config = device_agent::transport::quic::provisional_config(
        std::slice::from_ref(&forged.0),
        key,
        Default::default(),
    )
    .unwrap();
    let session = device_agent::transport::quic::Session::connect(
        &world.endpoint,
        config,
        world.server.quic_addr(),
        None,
    )
    .await
    .unwrap();
    match session.exchange(&hello).await.unwrap() {
        protocol::message::Response::Error(e) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            // Taken for an LDevID of ours by its key id and name, then refused on its bytes.
            assert!(e.message.contains("was not issued to"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(world.record_of(&a_id).unwrap(), active);
}

/// A maker whose root key the attacker holds (imported, so its chains pass TLS) issues a
/// certificate that copies the device's LDevID serial number and names the device in its CN,
/// with our issuing CA's key id as its authority key id.
async fn forge_ldevid(
    world: &World,
    id: &onboarder::core::DeviceId,
    record: &onboarder::core::DeviceRecord,
) -> (Vec<u8>, certs::KeyPair) {
    use rcgen::{CertificateParams, CustomExtension, DnType, SerialNumber};
    let rogue = certs::Ca::root(
        &certs::CaName {
            organization: "Rogue".into(),
            common_name: "Rogue Root".into(),
        },
        certs::KeyPair::generate(certs::KeyKind::P256).unwrap(),
        certs::Validity::starting(now(), 86_400),
        &certs::ca::random_serial().unwrap(),
    )
    .unwrap();
    world
        .server
        .service()
        .import_anchor(&onboarder::operator::AnchorImport {
            pem: certs::files::cert_pem(rogue.cert_der()),
            masa_pem: None,
            name: Some("rogue".into()),
        })
        .await
        .unwrap();
    let real = record.active_certificate().unwrap();
    let real_info = certs::CertInfo::parse(&real.der).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, id.to_string());
    params.distinguished_name.push(
        DnType::CustomDnType(certs::der::OID_SERIAL_NUMBER.to_vec()),
        rcgen::DnValue::PrintableString(id.serial.as_str().try_into().unwrap()),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from_slice(
        &certs::inspect::unhex(&real.serial).unwrap(),
    ));
    let key_id = real_info.authority_key_id.clone().unwrap();
    let mut aki = vec![0x30, key_id.len() as u8 + 2, 0x80, key_id.len() as u8];
    aki.extend_from_slice(&key_id);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(&[2, 5, 29, 35], aki));
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let der = rogue.sign(&params, &key).unwrap();
    let info = certs::CertInfo::parse(&der).unwrap();
    assert_eq!(info.serial_hex, real.serial);
    assert_eq!(info.authority_key_id, real_info.authority_key_id);
    (der, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vouchers_are_checked_against_their_maker_at_import() {
    let world = World::new().await;
    let b = other_maker();
    let never_imported = other_maker();
    world.expect(&[], 30).await;
    world.expect_from(&b, &[], 30).await;
    let service = world.server.service();
    let a_voucher = world
        .manufacturer
        .voucher("SN-IMP", &world.owner_root, now(), now() + DAY)
        .unwrap();
    // Signed by B's voucher signer but naming A's IDevID issuer: refused.
    let mut crossed = protocol::voucher::Voucher::parse_unverified(&a_voucher).unwrap();
    crossed.serial_number = "SN-CROSS".into();
    let crossed = crossed.sign(b.masa_key()).unwrap();
    let stranger = never_imported
        .voucher("SN-STRANGER", &world.owner_root, now(), now() + DAY)
        .unwrap();
    let report = service
        .import_vouchers(&protocol::voucher::encode_bundle(&[
            a_voucher, crossed, stranger,
        ]))
        .await
        .unwrap();
    assert_eq!(report.imported, 1, "{report:?}");
    assert_eq!(report.rejected.len(), 2, "{report:?}");
    assert!(report.rejected[0].reason.contains("does not verify"));
    assert!(
        report.rejected[1]
            .reason
            .contains("no imported manufacturer")
    );
    assert!(world.record("SN-IMP").is_some());
    assert!(world.record("SN-CROSS").is_none());
}

/// Two birth certificates of one maker with one serial (a cloned device): the first to accept
/// the voucher is pinned, the other refused; the operator resets the onboarding and the
/// rightful device onboards, while what the clone was issued is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resets_an_onboarding_a_clone_started() {
    let world = World::new().await;
    let genuine = world.device("SN-TWIN");
    let clone = Device::mint(
        &world.manufacturer,
        &world.dir.path().join("clone"),
        "SN-TWIN",
    );
    world.expect(&["SN-TWIN"], 30).await;
    let id = world.id("SN-TWIN");

    // The clone accepts the voucher and sends a CSR, then goes quiet.
    let session = world.raw_session(&clone).await;
    session
        .call(&voucher_request(&clone.birth(), &session))
        .await
        .unwrap();
    accept_voucher(&session).await;
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = certs::csr::build_csr("SN-TWIN", &key, &session.binding().unwrap()).unwrap();
    session.call(&Request::enroll(csr)).await.unwrap();
    session.close();
    let taken = world.record_of(&id).unwrap();
    assert_eq!(taken.state, DeviceState::Onboarding);
    let clone_cert = taken.pending_certificate().unwrap().serial.clone();

    // The genuine device is refused: another IDevID is pinned.
    let code = refused(world.agent(&genuine).onboard().await);
    assert_eq!(code, ErrorCode::Unauthorized);

    let record = world
        .server
        .control()
        .reset_onboarding(&id, "clone seen at the warehouse")
        .await
        .unwrap();
    assert_eq!(record.state, DeviceState::Expected);
    assert!(record.idevid_key.is_none());
    assert!(record.network.is_none());
    assert!(record.live_certificates().next().is_none());
    assert!(
        world
            .actions_of(&id)
            .contains(&"onboarding-reset".to_string())
    );
    assert!(
        world
            .server
            .service()
            .trust()
            .is_revoked(&clone_cert, now())
    );

    world.agent(&genuine).onboard().await.unwrap();
    let record = world.record_of(&id).unwrap();
    assert_eq!(record.state, DeviceState::Active);
    assert_eq!(
        record.idevid_key.as_deref(),
        Some(genuine.birth().key.public_key().raw())
    );
    // Resetting an active device is refused: that is what revocation is for.
    assert!(matches!(
        world.server.control().reset_onboarding(&id, "again").await,
        Err(OperatorError::Refused(LifecycleError::WrongState {
            state: DeviceState::Active,
            ..
        }))
    ));
}
