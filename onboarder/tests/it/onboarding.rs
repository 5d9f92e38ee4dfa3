//! Onboarding end to end, and its idempotence under retries.

use certs::CertInfo;
use certs::chain::{self, Usage};
use device_agent::machine::Phase;
use onboarder::core::{CertStatus, DeviceState};
use protocol::message::{Command, CommandReply, NetworkProfile, Request, Response, Status};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_onboards_and_opens_an_operational_session() {
    let world = World::new().await;
    let device = world.device("SN-000001");
    world.expect(&["SN-000001"], 30).await;
    assert_eq!(
        world.record("SN-000001").unwrap().state,
        DeviceState::Expected
    );

    let agent = world.agent(&device);
    let state = agent.onboard().await.unwrap();
    assert_eq!(state.phase, Phase::Enrolled { confirmed: true });

    // The device holds an LDevID for its serial that chains to the owner root it pinned.
    let ldevid = state.ldevid.clone().unwrap();
    let info = CertInfo::parse(&ldevid).unwrap();
    assert_eq!(info.subject_serial.as_deref(), Some("SN-000001"));
    assert_eq!(state.owner_ca.as_deref(), Some(world.owner_root.as_slice()));
    let chain: Vec<Vec<u8>> = state.chain.iter().map(|c| c.to_vec()).collect();
    chain::verify(
        &ldevid,
        &chain,
        std::slice::from_ref(&world.owner_root),
        now(),
        Usage::ClientAuth,
    )
    .unwrap();
    // ...with a fresh key, not the IDevID's.
    assert_ne!(info.public_key, device.birth().key.public_key());
    // ...and a unique Wi-Fi passphrase, applied to the network configuration.
    let Some(NetworkProfile::Wifi { psk, .. }) = &state.network else {
        panic!("no Wi-Fi profile")
    };
    assert_eq!(psk.len(), 32);
    let applied = std::fs::read_to_string(device.state_dir.join("network.json")).unwrap();
    assert!(applied.contains(psk.as_str()));

    // The server agrees: active, one active certificate, the same one.
    let record = world.record("SN-000001").unwrap();
    assert_eq!(record.state, DeviceState::Active);
    let live: Vec<_> = record.live_certificates().collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].der, ldevid);
    assert_eq!(live[0].status, CertStatus::Active);
    assert_eq!(
        world.actions("SN-000001"),
        [
            "voucher-imported",
            "voucher-issued",
            "voucher-accepted",
            "certificate-issued",
            "enrolled"
        ]
    );

    // Operational session: the server can push a command and gets the answer.
    let session = agent.connect().await.unwrap();
    let serve = async { agent.serve(&session).await };
    let push = async {
        for _ in 0..50 {
            if world.server.sessions().is_connected(&world.id("SN-000001")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let reply = world
            .server
            .sessions()
            .push(&world.id("SN-000001"), &Command::Ping { nonce: 42 })
            .await
            .unwrap();
        session.close();
        reply
    };
    let (served, reply) = tokio::join!(serve, push);
    assert_eq!(served.unwrap(), device_agent::driver::Stop::Closed);
    assert_eq!(reply, CommandReply::Pong { nonce: 42 });
    let record = world.record("SN-000001").unwrap();
    assert_eq!(
        record.agent_version.as_deref(),
        Some(device_agent::driver::AGENT_VERSION)
    );
    assert_eq!(record.firmware_version.as_deref(), Some("1.0.0"));

    // Onboarding again is a no-op.
    assert_eq!(agent.onboard().await.unwrap(), state);
    assert_eq!(world.record("SN-000001").unwrap().certificates.len(), 1);
}

/// The onboarding of the run loop (and of `fleet`): the voucher request, the CSR carrying the
/// voucher's acceptance, and the hello that confirms the enrollment by using it. Three requests
/// on two handshakes, where a voucher status and an enrollment status of their own made five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onboarding_is_three_requests_the_hello_confirming_the_enrollment() {
    let world = World::new().await;
    let device = world.device("SN-FOLD");
    world.expect(&["SN-FOLD"], 30).await;
    let agent = world.agent(&device);

    let state = agent.enroll_once().await.unwrap();
    assert_eq!(state.phase, Phase::Enrolled { confirmed: false });
    let record = world.record("SN-FOLD").unwrap();
    assert_eq!(record.state, DeviceState::Onboarding);
    assert_eq!(record.certificates[0].status, CertStatus::Issued);
    assert_eq!(
        world.actions("SN-FOLD"),
        [
            "voucher-imported",
            "voucher-issued",
            "voucher-accepted",
            "certificate-issued"
        ]
    );
    // Enrolled again before connecting (a crash, a retry): nothing is asked of the server.
    assert_eq!(agent.enroll_once().await.unwrap(), state);

    agent.connect().await.unwrap().close();
    let state = agent.load_state().unwrap();
    assert_eq!(state.phase, Phase::Enrolled { confirmed: true });
    let record = world.record("SN-FOLD").unwrap();
    assert_eq!(record.state, DeviceState::Active);
    assert_eq!(record.certificates[0].status, CertStatus::Active);
    assert_eq!(
        world.actions("SN-FOLD").last().map(String::as_str),
        Some("enrolled")
    );

    let answered = world.server.service().metrics().answered();
    let asked: Vec<(&str, u64)> = answered.into_iter().collect();
    assert_eq!(asked, [("enroll", 1), ("hello", 1), ("voucher_request", 1)]);
}

/// One voucher format serves a mixed fleet: our agent takes a CMS-signed JSON voucher (RFC
/// 8366), the format BRSKI pledges need, as well as COSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_onboards_with_a_cms_voucher() {
    let world = World::new().await;
    let device = world.device("SN-CMS");
    let service = world.server.service();
    service
        .import_anchor(&anchor_import(&world.manufacturer))
        .await
        .unwrap();
    let voucher = world
        .manufacturer
        .voucher_in(
            certs::brski::Encoding::Cms,
            "SN-CMS",
            &world.owner_root,
            now(),
            now() + DAY,
        )
        .unwrap();
    let report = service
        .import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
        .await
        .unwrap();
    assert_eq!(report.imported, 1, "{report:?}");
    let state = world.agent(&device).onboard().await.unwrap();
    assert!(matches!(state.phase, Phase::Enrolled { .. }));
    assert_eq!(world.record("SN-CMS").unwrap().state, DeviceState::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_devices_and_eap_tls_policy_work_too() {
    let world = World::with_config(|c| {
        c.policy.network = onboarder::core::NetworkPolicy::EapTls {
            ssid: "corp-iot".into(),
        }
    })
    .await;
    let dir = world.dir.path().join("ed");
    let identity = world
        .manufacturer
        .mint("SN-ED25519", certs::KeyKind::Ed25519, now())
        .unwrap();
    identity.save(&dir.join("identity")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let device = Device::at("SN-ED25519", dir.join("identity"), dir.join("state"));
    world.expect(&["SN-ED25519"], 30).await;
    let agent = world.agent(&device);
    let state = agent.onboard().await.unwrap();
    let info = CertInfo::parse(state.ldevid.as_ref().unwrap()).unwrap();
    assert!(matches!(
        info.public_key,
        protocol::keys::PublicKey::Ed25519(_)
    ));
    match state.network.unwrap() {
        NetworkProfile::EapTls {
            ssid,
            identity,
            ca_chain,
        } => {
            assert_eq!(ssid, "corp-iot");
            // The EAP-TLS identity names the device whole: maker and serial.
            assert_eq!(identity, world.id("SN-ED25519").to_string());
            assert_eq!(
                ca_chain.last().map(|c| c.to_vec()),
                Some(world.owner_root.clone())
            );
        }
        other => panic!("{other:?}"),
    }
    agent.connect().await.unwrap().close();
}

/// A device with P-384 keys onboards, opens its session and renews: its LDevID keys are of the
/// IDevID's kind, and every signature (voucher request, CSR, TLS, COSE) is ES384.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p384_devices_onboard_and_renew() {
    let world = World::new().await;
    let dir = world.dir.path().join("p384");
    world
        .manufacturer
        .mint("SN-P384", certs::KeyKind::P384, now())
        .unwrap()
        .save(&dir.join("identity"))
        .unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let device = Device::at("SN-P384", dir.join("identity"), dir.join("state"));
    world.expect(&["SN-P384"], 30).await;
    let agent = world.agent(&device);
    let state = agent.onboard().await.unwrap();
    let first = CertInfo::parse(state.ldevid.as_ref().unwrap()).unwrap();
    assert!(matches!(
        first.public_key,
        protocol::keys::PublicKey::P384(_)
    ));
    let session = agent.connect().await.unwrap();
    let session = agent.renew(session).await.unwrap();
    session.close();
    let renewed = agent.load_state().unwrap();
    let second = CertInfo::parse(renewed.ldevid.as_ref().unwrap()).unwrap();
    assert!(matches!(
        second.public_key,
        protocol::keys::PublicKey::P384(_)
    ));
    assert_ne!(first.public_key, second.public_key);
    assert_eq!(
        world.record("SN-P384").unwrap().state,
        onboarder::core::DeviceState::Active
    );
}

/// The connection drops after the server issued the LDevID but before the device stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_enrollment_completes_on_retry_without_duplicates() {
    let world = World::new().await;
    let device = world.device("SN-DROP");
    world.expect(&["SN-DROP"], 30).await;
    let birth = device.birth();

    // By hand: voucher, then a CSR for the key the agent will find pending; then the
    // connection is gone before anything is stored.
    let keys = device_agent::platform::files::FileKeyStore::new(
        &device.identity_dir,
        &device.state_dir,
        certs::KeyKind::P256,
    );
    let pending = device_agent::platform::KeyStore::create_pending_ldevid_key(&keys).unwrap();
    let session = world.raw_session(&device).await;
    assert!(matches!(
        session
            .call(&voucher_request(&birth, &session))
            .await
            .unwrap(),
        Response::Voucher(_)
    ));
    accept_voucher(&session).await;
    let csr = certs::csr::build_csr(
        "SN-DROP",
        &device_agent::platform::key::CsrSigner::new(pending.as_ref()).unwrap(),
        &session.binding().unwrap(),
    )
    .unwrap();
    let Response::Enrolled(first) = session.call(&Request::enroll(csr)).await.unwrap() else {
        panic!("not enrolled")
    };
    session.close();
    assert_eq!(
        world.record("SN-DROP").unwrap().state,
        DeviceState::Onboarding
    );

    // The agent retries: same key, so the same certificate; one record, one live certificate.
    let state = world.agent(&device).onboard().await.unwrap();
    assert_eq!(state.ldevid.as_deref(), Some(first.certificate.as_slice()));
    let record = world.record("SN-DROP").unwrap();
    assert_eq!(record.state, DeviceState::Active);
    assert_eq!(record.certificates.len(), 1);
    assert_eq!(record.live_certificates().count(), 1);
    assert_eq!(world.server.service().store().device_count().unwrap(), 1);
}

/// The device lost its pending key too (for example a wiped scratch partition): the retry
/// brings a new key, and the unconfirmed certificate is revoked, never left live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_a_new_key_supersedes_the_unconfirmed_certificate() {
    let world = World::new().await;
    let device = world.device("SN-LOST");
    world.expect(&["SN-LOST"], 30).await;
    let birth = device.birth();
    let lost_key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let session = world.raw_session(&device).await;
    session
        .call(&voucher_request(&birth, &session))
        .await
        .unwrap();
    accept_voucher(&session).await;
    let csr = certs::csr::build_csr("SN-LOST", &lost_key, &session.binding().unwrap()).unwrap();
    session.call(&Request::enroll(csr)).await.unwrap();
    session.close();

    world.agent(&device).onboard().await.unwrap();
    let record = world.record("SN-LOST").unwrap();
    assert_eq!(record.certificates.len(), 2);
    assert_eq!(record.live_certificates().count(), 1);
    assert!(matches!(
        record.certificates[0].status,
        CertStatus::Revoked { .. }
    ));
    assert!(
        world
            .actions("SN-LOST")
            .contains(&"certificate-superseded".to_string())
    );
}

/// Statuses are idempotent too: a repeated confirmation changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_confirmations_change_nothing() {
    let world = World::new().await;
    let device = world.device("SN-TWICE");
    world.expect(&["SN-TWICE"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    let before = world.record("SN-TWICE").unwrap();
    let audit_before = world.audit().len();
    let session = world.raw_session(&device).await;
    let ok = Request::EnrollStatus(Status {
        ok: true,
        reason: None,
    });
    assert_eq!(session.call(&ok).await.unwrap(), Response::Ack);
    assert_eq!(session.call(&ok).await.unwrap(), Response::Ack);
    assert_eq!(world.record("SN-TWICE").unwrap(), before);
    assert_eq!(world.audit().len(), audit_before);
}

/// The agent is given the onboarder's DNS name: it resolves it at each connection and tries
/// each address (here `localhost`), onboards and opens its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reaches_the_onboarder_by_its_dns_name() {
    let world = World::new().await;
    let device = world.device("SN-DNS");
    world.expect(&["SN-DNS"], 30).await;
    let name = format!("localhost:{}", world.server.quic_addr().port());
    let server: device_agent::transport::ServerAddress = name.parse().unwrap();
    assert!(matches!(
        server,
        device_agent::transport::ServerAddress::Name(_)
    ));
    let agent = device_agent::Agent::with_files(
        &device.identity_dir,
        &device.state_dir,
        server,
        world.endpoint.clone(),
        fast_options(),
    )
    .unwrap();
    agent.onboard().await.unwrap();
    agent.connect().await.unwrap().close();
    assert_eq!(
        world.record("SN-DNS").unwrap().state,
        onboarder::core::DeviceState::Active
    );
}

/// The agent of `device` in `world`, on its own clock set to read `at`.
fn agent_at(world: &World, device: &Device, at: u64) -> (device_agent::Agent, device_agent::Clock) {
    let clock = device_agent::Clock::system();
    clock.set(at);
    let options = device_agent::AgentOptions {
        clock: clock.clone(),
        ..fast_options()
    };
    let agent = device.agent_with(world.server.quic_addr(), &world.endpoint, options);
    (agent, clock)
}

/// A device whose clock is wrong (no battery-backed clock, or one reset to years ago, or
/// years ahead) onboards when the owner asks the maker's MASA for a voucher bound to the
/// device's nonce: fresh by the nonce, its creation time sets the device's clock, which holds
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_wrong_clock_onboards_with_a_nonced_voucher_and_takes_its_time() {
    const YEAR: u64 = 365 * DAY;
    let world = World::with_masa().await;
    world.expect(&["SN-BEHIND", "SN-AHEAD"], 30).await;
    for (serial, wrong) in [
        ("SN-BEHIND", now() - 3 * YEAR),
        ("SN-AHEAD", now() + 2 * YEAR),
    ] {
        let device = world.device(serial);
        let (agent, clock) = agent_at(&world, &device, wrong);
        agent.onboard().await.unwrap();
        assert!(
            clock.now().abs_diff(now()) <= 5,
            "{serial}: the clock was set"
        );
        agent.connect().await.unwrap().close();
        assert_eq!(world.record(serial).unwrap().state, DeviceState::Active);
        let id = world.id(serial);
        let issued = world
            .audit()
            .into_iter()
            .map(|e| e.event)
            .find(|e| e.action == "voucher-issued" && e.device.as_ref() == Some(&id))
            .unwrap();
        assert!(issued.detail.contains("nonced"), "{issued:?}");

        // After a restart the system clock is as wrong as before: behind, it is moved up to
        // the time of the enrollment and the operational session opens.
        if wrong < now() {
            let (agent, clock) = agent_at(&world, &device, wrong);
            agent.onboard().await.unwrap();
            assert!(
                clock.now() + 60 >= now(),
                "{serial}: the clock was moved up"
            );
            agent.connect().await.unwrap().close();
        }
    }
}

/// Without a MASA the onboarder has only vouchers imported in bulk, which prove nothing
/// about now: a device whose clock is years off is refused, typed, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_masa_a_device_with_a_wrong_clock_is_refused_and_nothing_changes() {
    let world = World::new().await;
    world.expect(&["SN-BEHIND"], 30).await;
    let device = world.device("SN-BEHIND");
    let before = world.record("SN-BEHIND").unwrap();
    let (agent, clock) = agent_at(&world, &device, now() - 3 * 365 * DAY);
    match agent.onboard().await {
        Err(device_agent::AgentError::Refused { code, .. }) => {
            assert_eq!(code, protocol::message::ErrorCode::StaleRequest)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(world.record("SN-BEHIND").unwrap(), before);
    assert!(clock.now() + 365 * DAY < now(), "the clock was not touched");
    assert!(
        !world
            .actions_of(&world.id("SN-BEHIND"))
            .contains(&"voucher-issued".to_string())
    );
}
