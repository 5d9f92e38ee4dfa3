//! Certificate lifecycle: renewal with re-key, rotation on demand, revocation, CA rollover.

use certs::crl::Reason;
use device_agent::platform::KeyStore;
use device_agent::platform::files::FileKeyStore;
use device_agent::platform::key::CsrSigner;
use device_agent::{AgentError, CredentialRefusal};
use onboarder::core::{CertStatus, DeviceState};
use protocol::message::{ErrorCode, Request};
use std::sync::atomic::Ordering;

use crate::harness::*;

fn reenroll(csr: Vec<u8>) -> Request {
    Request::Reenroll { csr }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_renewals_are_refused_and_change_nothing() {
    let world = World::new().await;
    let device = world.device("SN-RENEW");
    world.expect(&["SN-RENEW"], 30).await;
    let agent = world.agent(&device);
    agent.onboard().await.unwrap();
    let session = agent.connect().await.unwrap();
    let before = world.record("SN-RENEW").unwrap();
    let binding = session.binding().unwrap();
    let fresh = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();

    // Another subject.
    let csr = certs::csr::build_csr("SN-SOMEONE", &fresh, &binding).unwrap();
    let r = session.exchange(&reenroll(csr)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrPolicy);
    // The old key again: no re-key.
    let keys = FileKeyStore::new(
        &device.identity_dir,
        &device.state_dir,
        certs::KeyKind::P256,
    );
    let old = keys.ldevid_key().unwrap().unwrap();
    let csr = certs::csr::build_csr("SN-RENEW", &CsrSigner::new(old.as_ref()).unwrap(), &binding)
        .unwrap();
    let r = session.exchange(&reenroll(csr)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrPolicy);
    // The IDevID's key.
    let csr = certs::csr::build_csr("SN-RENEW", &device.birth().key, &binding).unwrap();
    let r = session.exchange(&reenroll(csr)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::CsrPolicy);
    // Made for another session (exporter mismatch; a session without a hello, since a hello
    // would replace this one).
    let other = world.ldevid_session(&device).await;
    let csr = certs::csr::build_csr("SN-RENEW", &fresh, &other.binding().unwrap()).unwrap();
    let r = session.exchange(&reenroll(csr)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::StaleRequest);
    other.close();
    // Over an IDevID session.
    let idevid = world.raw_session(&device).await;
    let csr = certs::csr::build_csr("SN-RENEW", &fresh, &idevid.binding().unwrap()).unwrap();
    let r = idevid.exchange(&reenroll(csr)).await.unwrap();
    assert_eq!(code_of(&r), ErrorCode::Unauthorized);
    assert_eq!(world.record("SN-RENEW").unwrap(), before);

    // A quarantined device cannot rotate.
    world
        .server
        .control()
        .quarantine(&world.id("SN-RENEW"), "under investigation")
        .await
        .unwrap();
    let quarantined = world.record("SN-RENEW").unwrap();
    let session = agent.connect().await;
    match session {
        Err(AgentError::Refused { code, .. }) => assert_eq!(code, ErrorCode::Quarantined),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let raw = world.ldevid_session(&device).await;
    let csr = certs::csr::build_csr("SN-RENEW", &fresh, &raw.binding().unwrap()).unwrap();
    assert_eq!(
        code_of(&raw.exchange(&reenroll(csr)).await.unwrap()),
        ErrorCode::Quarantined
    );
    assert_eq!(world.record("SN-RENEW").unwrap(), quarantined);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_at_the_handshake_and_listed_in_the_crl() {
    let world = World::new().await;
    let device = world.device("SN-STOLEN");
    let bystander = world.device("SN-HONEST");
    world.expect(&["SN-STOLEN", "SN-HONEST"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    world.agent(&bystander).onboard().await.unwrap();
    let running = Running::start(world.agent(&device));
    eventually(10, "the session", || {
        world.server.sessions().is_connected(&world.id("SN-STOLEN"))
    })
    .await;
    let first_crl = world.server.control().crls()[0].number;

    let record = world
        .server
        .control()
        .revoke(&world.id("SN-STOLEN"), Reason::KeyCompromise)
        .await
        .unwrap();
    assert_eq!(record.state, DeviceState::Quarantined);
    assert!(record.certificates.iter().all(|c| matches!(
        c.status,
        CertStatus::Revoked {
            reason: Reason::KeyCompromise,
            ..
        }
    )));
    // The live session was ended; a new one is refused during the handshake.
    eventually(10, "the end of the session", || {
        !world.server.sessions().is_connected(&world.id("SN-STOLEN"))
    })
    .await;
    running.stop().await;
    let before = world.record("SN-STOLEN").unwrap();
    match world.agent(&device).connect().await {
        Err(AgentError::CredentialRefused {
            reason: CredentialRefusal::Revoked,
            ..
        }) => {}
        other => panic!("expected a handshake refusal, got {other:?}"),
    }
    assert_eq!(world.record("SN-STOLEN").unwrap(), before);
    world.agent(&bystander).connect().await.unwrap().close();

    // The CRL lists it, with a higher CRL number.
    let revoked_serial = before.certificates[0].serial.clone();
    eventually(10, "a new CRL", || {
        world.server.control().crls()[0].number > first_crl
    })
    .await;
    let crl = world.server.control().crls().remove(0);
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
    let listed: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| certs::inspect::hex(r.raw_serial()))
        .collect();
    assert_eq!(listed, vec![revoked_serial]);
    // The CRL file on disk is the one served (a publication writes the file, then serves it).
    eventually(10, "the same CRL on disk", || {
        let on_disk = std::fs::read_to_string(world.data.join("crl/issuing-ca-1.crl")).unwrap();
        let served = world.server.control().crls().remove(0);
        on_disk == certs::files::pem_block("X509 CRL", &served.der)
    })
    .await;
}

/// One order revokes several devices through the service's one loop: the TLS verifier refuses
/// each of them at the next handshake and the CRL publisher, told by the same commit, lists
/// every one of their certificates in the next CRL; the others are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_revocation_reaches_the_tls_verifier_and_the_next_crl() {
    let world = World::new().await;
    let serials: Vec<String> = (0..6).map(|i| format!("SN-BATCH-{i}")).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    world.expect(&refs, 30).await;
    let devices: Vec<Device> = serials.iter().map(|s| world.device(s)).collect();
    for d in &devices {
        world.agent(d).onboard().await.unwrap();
    }
    let first_crl = world.server.control().crls()[0].number;
    let (revoked, kept) = devices.split_at(4);
    let ids: Vec<_> = serials[..4].iter().map(|s| world.id(s)).collect();

    let report = world
        .server
        .service()
        .revoke_all(&ids, Reason::KeyCompromise)
        .await
        .unwrap();
    assert_eq!(report.accepted, ids);
    assert!(report.refused.is_empty());

    let trust = world.server.service().trust();
    let mut serials_revoked = Vec::new();
    for d in revoked {
        let record = world.record(&d.serial()).unwrap();
        assert_eq!(record.state, DeviceState::Quarantined);
        for c in &record.certificates {
            assert!(
                trust.is_revoked(&c.serial, world.clock.now()),
                "{}",
                c.serial
            );
            serials_revoked.push(c.serial.clone());
        }
        match world.agent(d).connect().await {
            Err(AgentError::CredentialRefused {
                reason: CredentialRefusal::Revoked,
                ..
            }) => {}
            other => panic!(
                "{}: expected a handshake refusal, got {other:?}",
                d.serial()
            ),
        }
    }
    for d in kept {
        world.agent(d).connect().await.unwrap().close();
    }
    // The publisher was told by the commit: no one asks it here.
    eventually(10, "a new CRL", || {
        world.server.control().crls()[0].number > first_crl
    })
    .await;
    let crl = world.server.control().crls().remove(0);
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
    let mut listed: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| certs::inspect::hex(r.raw_serial()))
        .collect();
    listed.sort();
    serials_revoked.sort();
    assert_eq!(listed, serials_revoked);
}

/// A device offline through its whole renewal window comes back with an expired LDevID: the
/// onboarder refuses it as expired, and the agent enrolls again with its pinned IDevID (no
/// voucher: the registrar must chain to the owner CA it pinned), audited on the server. When
/// the owner's policy says no, the re-enrollment is refused and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ldevid_expired_offline_is_replaced_through_the_idevid_when_the_policy_allows() {
    for allowed in [true, false] {
        let world = World::with_config(|c| {
            c.policy.ldevid_lifetime = DAY;
            c.policy.reenroll_expired = allowed;
        })
        .await;
        let device = world.device("SN-LATE");
        world.expect(&["SN-LATE"], 30).await;
        world.agent(&device).onboard().await.unwrap();
        let first = world.record("SN-LATE").unwrap().certificates[0]
            .serial
            .clone();

        // Two days without a connection.
        world.advance_clock(2 * DAY);
        let agent = world.agent(&device);
        match agent.connect().await {
            Err(AgentError::CredentialRefused {
                reason: CredentialRefusal::Expired,
                ..
            }) => {}
            other => panic!("expected the expired LDevID refused, got {other:?}"),
        }
        let before = world.record("SN-LATE").unwrap();
        let state_before = agent.load_state().unwrap();
        let running = Running::start(world.agent(&device));
        if allowed {
            eventually(20, "a new LDevID in use", || {
                running.agent.stats().sessions.load(Ordering::Relaxed) >= 1
            })
            .await;
            running.stop().await;
            let record = world.record("SN-LATE").unwrap();
            assert_eq!(record.state, DeviceState::Active);
            let live: Vec<_> = record
                .certificates
                .iter()
                .filter(|c| c.status == CertStatus::Active && c.not_after > world.clock.now())
                .collect();
            assert_eq!(live.len(), 1);
            assert_ne!(live[0].serial, first);
            assert!(
                world
                    .actions("SN-LATE")
                    .contains(&"reenrolled-with-idevid".to_string())
            );
        } else {
            // The agent keeps trying, slowly; the onboarder's records do not move.
            eventually(20, "a refused attempt", || {
                running.agent.stats().failures.load(Ordering::Relaxed) >= 1
            })
            .await;
            running.stop().await;
            let after = world.record("SN-LATE").unwrap();
            assert_eq!(after, before);
            assert_eq!(world.agent(&device).load_state().unwrap(), state_before);
            assert!(
                !world
                    .actions("SN-LATE")
                    .contains(&"reenrolled-with-idevid".to_string())
            );
        }
    }
}

/// The agent dies at each step of a renewal; a fresh agent on the same disk recovers, and the
/// server ends with exactly one live certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_interrupted_at_any_step_recovers_with_one_live_certificate() {
    let world = World::new().await;
    for step in ["before-request", "after-issued", "after-stored"] {
        let serial = format!("SN-CRASH-{}", step.to_uppercase());
        let device = world.device(&serial);
        world.expect(&[&serial], 30).await;
        let onboarded_key = {
            let agent = world.agent(&device);
            agent.onboard().await.unwrap();
            let key = device_key(&device);
            let session = agent.connect().await.unwrap();
            match step {
                "before-request" => {}
                "after-issued" => {
                    agent.request_renewal(&session).await.unwrap();
                }
                _ => {
                    let e = agent.request_renewal(&session).await.unwrap();
                    agent.store_renewal(e).await.unwrap();
                }
            }
            session.close();
            key
            // The agent is gone here, as if killed.
        };
        let issued_in_crash = world
            .record(&serial)
            .unwrap()
            .pending_certificate()
            .map(|c| c.serial.clone());
        let agent = world.agent(&device);
        let mut session = agent.connect().await.unwrap();
        if step != "after-stored" {
            session = agent.renew(session).await.unwrap();
        }
        session.close();
        let record = world.record(&serial).unwrap();
        let live: Vec<_> = record.live_certificates().collect();
        assert_eq!(live.len(), 1, "{step}: {:?}", record.certificates);
        assert_ne!(device_key(&device), onboarded_key, "{step}: no re-key");
        assert_eq!(
            live[0].public_key,
            device_key(&device).raw(),
            "{step}: the device holds the live certificate"
        );
        if let Some(issued) = issued_in_crash {
            assert_eq!(
                live[0].serial, issued,
                "{step}: the retry got the same certificate"
            );
        }
        assert!(
            record
                .certificates
                .iter()
                .any(|c| matches!(c.status, CertStatus::Superseded { .. })),
            "{step}"
        );
    }
}

/// A re-key hands the device the operational settings in force, as its enrollment did: a
/// device onboarded under one heartbeat takes the owner's new one with its new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_hands_the_device_the_policy_in_force() {
    let world = World::new().await;
    let device = world.device("SN-POLICY");
    world.expect(&["SN-POLICY"], 30).await;
    let agent = world.agent(&device);
    agent.onboard().await.unwrap();
    let heartbeat =
        |a: &device_agent::Agent| a.load_state().unwrap().config.map(|c| c.heartbeat_secs);
    assert_eq!(heartbeat(&agent), Some(1));
    // The owner changes the policy (as a restart with an edited onboarder.json would).
    let mut config = onboarder::config::Config::load(&world.data).unwrap();
    config.policy.heartbeat_secs = 2;
    let service = world.server.service();
    service
        .set_registrar(
            onboarder::pki::load(&world.data, &config)
                .unwrap()
                .registrar,
        )
        .unwrap();
    let running = Running::start(agent);
    eventually(10, "the session", || world.server.sessions().len() == 1).await;
    let key = device_key(&device);
    let order = world
        .server
        .control()
        .rotate(Some(vec![world.id("SN-POLICY")]), None)
        .await
        .unwrap();
    assert_eq!(order.accepted, [world.id("SN-POLICY")]);
    eventually(
        20,
        "the new certificate stored with the new heartbeat",
        || device_key(&device) != key && heartbeat(&running.agent) == Some(2),
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_demand_reaches_live_and_offline_devices() {
    let world = World::new().await;
    let serials = ["SN-ROT-A", "SN-ROT-B", "SN-ROT-C"];
    let devices: Vec<Device> = serials.iter().map(|s| world.device(s)).collect();
    world.expect(&serials, 30).await;
    let mut keys = Vec::new();
    for d in &devices {
        world.agent(d).onboard().await.unwrap();
        keys.push(device_key(d));
    }
    let a = Running::start(world.agent(&devices[0]));
    let b = Running::start(world.agent(&devices[1]));
    eventually(10, "sessions", || world.server.sessions().len() == 2).await;
    let control = world.server.control();

    // One device.
    let order = control
        .rotate(Some(vec![world.id("SN-ROT-A")]), None)
        .await
        .unwrap();
    assert_eq!(order.accepted, [world.id("SN-ROT-A")]);
    eventually(20, "the rotation of A", || {
        world
            .server
            .service()
            .rotation_status(order.at)
            .unwrap()
            .rotated
            == 1
    })
    .await;
    // The server counts a rotation when the new certificate opens a session; the device stores
    // it as current a moment later.
    eventually(5, "A stores its new certificate", || {
        device_key(&devices[0]) != keys[0]
    })
    .await;
    assert_eq!(device_key(&devices[1]), keys[1]);
    keys[0] = device_key(&devices[0]);

    // The whole fleet, with C offline: it rotates when it next connects.
    let order = control.rotate(None, Some(100)).await.unwrap();
    assert_eq!(order.accepted.len(), 3);
    eventually(20, "A and B", || {
        world
            .server
            .service()
            .rotation_status(order.at)
            .unwrap()
            .rotated
            == 2
    })
    .await;
    let status = world.server.service().rotation_status(order.at).unwrap();
    assert_eq!(status.pending_devices, [world.id("SN-ROT-C")]);
    let c = Running::start(world.agent(&devices[2]));
    eventually(20, "C", || {
        world
            .server
            .service()
            .rotation_status(order.at)
            .unwrap()
            .pending
            == 0
    })
    .await;
    for (d, old) in devices.iter().zip(&keys) {
        eventually(5, "the new certificate stored", || &device_key(d) != old).await;
        let record = world.record(&d.serial()).unwrap();
        assert_eq!(record.live_certificates().count(), 1);
    }
    for r in [a, b, c] {
        assert_eq!(r.agent.stats().failures.load(Ordering::Relaxed), 0);
        r.stop().await;
    }
    // Ordering a quarantined or unknown device is refused, per device.
    control
        .quarantine(&world.id("SN-ROT-C"), "test")
        .await
        .unwrap();
    let order = control
        .rotate(Some(vec![world.id("SN-ROT-C"), world.id("SN-NONE")]), None)
        .await
        .unwrap();
    assert!(order.accepted.is_empty());
    assert_eq!(order.refused.len(), 2);
}

/// A revoked certificate leaves the CRL and the store's index once it has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_of_expired_certificates_are_forgotten() {
    let world = World::with_config(|c| c.policy.ldevid_lifetime = DAY).await;
    let device = world.device("SN-SHORT");
    world.expect(&["SN-SHORT"], 30).await;
    let agent = world.agent(&device);
    agent.onboard().await.unwrap();
    let control = world.server.control();
    let record = control
        .revoke(&world.id("SN-SHORT"), Reason::KeyCompromise)
        .await
        .unwrap();
    let serial = record.certificates[0].serial.clone();
    let indexed = |world: &World| {
        world
            .server
            .service()
            .store()
            .revocations()
            .unwrap()
            .iter()
            .any(|r| r.cert_serial == serial)
    };
    assert!(indexed(&world));
    assert_eq!(control.crls()[0].entries, 1);
    // Expired: the next publication drops it from the CRL and from the disk.
    world.advance_clock(DAY + 1);
    control.publish_crls().await.unwrap();
    assert_eq!(control.crls()[0].entries, 0);
    assert!(!indexed(&world));
}

/// A fleet renews by itself, spread in time, never without a valid credential: two whole
/// certificate lifetimes lived on the world's clock, moved forward a step at a time, each step
/// waiting until every renewal that fell due is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_renews_before_expiry_spread_in_time() {
    const FLEET: usize = 100;
    const LIFETIME: u64 = 30 * DAY;
    const STEP: u64 = LIFETIME / 24;
    let world = World::with_config(|c| {
        c.policy.ldevid_lifetime = LIFETIME;
        c.policy.superseded_grace = 60;
    })
    .await;
    let serials: Vec<String> = (0..FLEET).map(|i| format!("SN-FLEET-{i:03}")).collect();
    let devices: Vec<Device> = serials.iter().map(|s| world.device(s)).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    world.expect(&refs, 30).await;
    let running: Vec<Running> = devices
        .iter()
        .map(|d| Running::start(world.agent(d)))
        .collect();
    eventually(60, "the fleet connected", || {
        running
            .iter()
            .all(|r| r.agent.stats().sessions.load(Ordering::Relaxed) >= 1)
    })
    .await;
    let renewed_twice = || {
        running
            .iter()
            .all(|r| r.agent.stats().renewals.load(Ordering::Relaxed) >= 2)
    };
    let mut lived = 0;
    while !renewed_twice() {
        assert!(
            lived < 3 * LIFETIME,
            "the fleet did not renew twice in three lifetimes"
        );
        world.advance_clock(STEP);
        lived += STEP;
        let now = world.clock.now();
        // A renewal woken this late waits a random part of an hour more (no storm after a
        // clock jump): the clock moves on by ten minutes at each look until all are done.
        eventually(60, "the renewals due now", || {
            let done = running.iter().all(|r| {
                let state = r.agent.load_state().unwrap();
                state.renewal.is_none() && state.renew_at.is_some_and(|at| at > now)
            });
            if !done {
                world.advance_clock(600);
            }
            done
        })
        .await;
    }
    let mut first_renewals = Vec::new();
    for (r, s) in running.iter().zip(&serials) {
        assert_eq!(r.agent.stats().failures.load(Ordering::Relaxed), 0, "{s}");
        let record = world.record(s).unwrap();
        // Each certificate was replaced before it expired: never a moment without one.
        for pair in record.certificates.windows(2) {
            assert!(
                pair[1].issued_at < pair[0].not_after,
                "{s}: renewed at {} after expiry at {}",
                pair[1].issued_at,
                pair[0].not_after
            );
        }
        first_renewals.push(record.certificates[1].issued_at - record.certificates[0].issued_at);
    }
    for r in running {
        r.stop().await;
    }
    // Spread: the first renewals did not all happen at the same moment.
    let (min, max) = (
        first_renewals.iter().min().unwrap(),
        first_renewals.iter().max().unwrap(),
    );
    assert!(
        max - min >= LIFETIME / 6,
        "renewals between {min}s and {max}s after enrollment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rollover_moves_a_connected_fleet_to_the_new_ca() {
    const FLEET: usize = 200;
    let world = World::new().await;
    let serials: Vec<String> = (0..FLEET).map(|i| format!("SN-ROLL-{i:03}")).collect();
    let devices: Vec<Device> = serials.iter().map(|s| world.device(s)).collect();
    let refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    world.expect(&refs, 30).await;
    let running: Vec<Running> = devices
        .iter()
        .map(|d| Running::start(world.agent(d)))
        .collect();
    eventually(60, "the fleet connected", || {
        world.server.sessions().len() == FLEET
            && running
                .iter()
                .all(|r| r.agent.stats().sessions.load(Ordering::SeqCst) == 1)
    })
    .await;
    let sessions_before: Vec<u64> = running
        .iter()
        .map(|r| r.agent.stats().sessions.load(Ordering::Relaxed))
        .collect();
    // A device in the middle of its onboarding when the rollover happens.
    let late = world.device("SN-ROLL-LATE");
    world.expect(&["SN-ROLL-LATE"], 30).await;
    let midway = world.raw_session(&late).await;
    let old_registrar = midway.server_chain()[0].clone();

    let report = world.server.control().rollover(None).await.unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(report.rotation.accepted.len(), FLEET);
    eventually(60, "the whole fleet on the new CA", || {
        world
            .server
            .service()
            .rotation_status(report.rotation.at)
            .unwrap()
            .rotated
            == FLEET
    })
    .await;
    let new_ca = world.server.service().registrar().issuing.key_id.clone();
    // The agents count a session once they have the server's welcome.
    eventually(10, "every agent in its new session", || {
        running
            .iter()
            .zip(&sessions_before)
            .all(|(r, b)| r.agent.stats().sessions.load(Ordering::SeqCst) > *b)
    })
    .await;
    for ((r, s), before) in running.iter().zip(&serials).zip(sessions_before) {
        let record = world.record(s).unwrap();
        let active = record.active_certificate().unwrap();
        assert_eq!(active.issuer, new_ca, "{s}");
        assert_eq!(record.live_certificates().count(), 1, "{s}");
        // The only session each lost was the planned switch to the new certificate.
        let stats = r.agent.stats();
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0, "{s}");
        assert_eq!(stats.sessions.load(Ordering::Relaxed), before + 1, "{s}");
    }
    eventually(10, "every device back in session", || {
        world.server.sessions().len() == FLEET
    })
    .await;
    // Both generations publish CRLs: the old one until its certificates have expired.
    let generations: Vec<u32> = world
        .server
        .control()
        .crls()
        .iter()
        .map(|c| c.generation)
        .collect();
    assert_eq!(generations, [1, 2]);

    // The registrar's own certificate moved to the new generation, on disk and on the wire;
    // the device that saw the old one still gets its voucher, and a new one onboards.
    let on_disk =
        certs::files::read_certs(&world.data.join(onboarder::config::layout::SERVER_CERT)).unwrap();
    let leaf = certs::CertInfo::parse(&on_disk[0]).unwrap();
    assert_eq!(leaf.authority_key_id.as_deref(), Some(new_ca.as_slice()));
    assert_ne!(on_disk[0], old_registrar);
    let renewals = world
        .audit()
        .iter()
        .filter(|e| e.event.action == "registrar-renewed")
        .count();
    assert_eq!(renewals, 1);
    let response = midway
        .exchange(&voucher_request(&late.birth(), &midway))
        .await
        .unwrap();
    assert!(
        matches!(response, protocol::message::Response::Voucher(_)),
        "{response:?}"
    );
    midway.close();
    let fresh = world.raw_session(&late).await;
    assert_eq!(fresh.server_chain()[0], on_disk[0]);
    fresh.close();
    let agent = world.agent(&late);
    agent.onboard().await.unwrap();
    agent.connect().await.unwrap().close();
    assert_eq!(
        world.record("SN-ROLL-LATE").unwrap().state,
        DeviceState::Active
    );
    for r in running {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registrar_renews_its_own_certificate_when_two_thirds_have_passed() {
    use onboarder::server::Server;
    let dir = tempfile::tempdir().unwrap();
    let mut config = onboarder::config::Config::new("Test Owner");
    config.quic_listen = "127.0.0.1:0".parse().unwrap();
    config.api_listen = "127.0.0.1:0".parse().unwrap();
    onboarder::pki::init(dir.path(), &config, now()).unwrap();
    let cert_path = dir.path().join(onboarder::config::layout::SERVER_CERT);
    let before = certs::files::read_certs(&cert_path).unwrap();
    // Started again 250 days later (its certificate lives 365).
    let later = now() + 250 * 86_400;
    let server = Server::start_with(
        dir.path(),
        onboarder::server::Options {
            clock: Some(std::sync::Arc::new(move || later)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually(10, "the renewal", || {
        server.service().registrar().registrar_cert != before[0]
    })
    .await;
    let after = certs::files::read_certs(&cert_path).unwrap();
    assert_eq!(server.service().registrar().registrar_cert, after[0]);
    let leaf = certs::CertInfo::parse(&after[0]).unwrap();
    assert!(leaf.not_before >= later - 3600 && leaf.not_after > later + 300 * 86_400);
    // Once renewed, not again.
    assert!(!server.control().renew_registrar().await.unwrap());
    server.shutdown().await;
}
