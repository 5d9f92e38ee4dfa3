//! End of life: wipe, signed attestation, revocation, certificate of sanitization, resale.

use std::sync::Arc;

use certs::crl::Reason;
use device_agent::platform::KeyStore;
use device_agent::platform::files::FileKeyStore;
use device_agent::platform::wiper::Vault;
use device_agent::{AgentError, CredentialRefusal};
use onboarder::core::{CertStatus, DeviceState, LifecycleError};
use onboarder::service::OperatorError;
use protocol::attestation::{NONCE_LEN, WipeAttestation, WipeMethod, WipedTarget};
use protocol::message::{ErrorCode, NetworkProfile, Request};

use crate::harness::*;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_wipes_itself_attests_and_is_revoked_and_certified() {
    let world = World::new().await;
    let device = world.device("SN-EOL");
    world.expect(&["SN-EOL"], 30).await;
    world.agent(&device).onboard().await.unwrap();

    // The device's life: application data, credentials, keys.
    let secret = b"patient-42 heart rate 71 bpm; the owner's secret data".repeat(200);
    let vault = Vault::new(&device.state_dir);
    vault.put("readings", &secret).unwrap();
    let ciphertext = std::fs::read(device.state_dir.join("data/readings.enc")).unwrap();
    let dek = std::fs::read(device.state_dir.join("data/dek.key")).unwrap();
    let ldevid_key = std::fs::read(device.state_dir.join("ldevid.key")).unwrap();
    let ldevid_der = {
        let keys = FileKeyStore::new(
            &device.identity_dir,
            &device.state_dir,
            certs::KeyKind::P256,
        );
        keys.ldevid_key().unwrap().unwrap();
        certs::files::read_key(&device.state_dir.join("ldevid.key"))
            .unwrap()
            .pkcs8_der()
            .to_vec()
    };
    let psk = match world.record("SN-EOL").unwrap().network {
        Some(NetworkProfile::Wifi { psk, .. }) => psk,
        other => panic!("{other:?}"),
    };
    // Keep what the old credential needs to try the handshake later.
    let keep = tempfile::tempdir().unwrap();
    for f in ["ldevid.key", "state.cbor"] {
        std::fs::copy(device.state_dir.join(f), keep.path().join(f)).unwrap();
    }

    let running = Running::start(world.agent(&device));
    eventually(10, "the session", || {
        world.server.sessions().is_connected(&world.id("SN-EOL"))
    })
    .await;
    let order = world
        .server
        .control()
        .decommission(
            vec![world.id("SN-EOL")],
            WipeMethod::PurgeCryptographicErase,
        )
        .await
        .unwrap();
    assert_eq!(order.accepted, [world.id("SN-EOL")]);
    eventually(20, "the attestation", || {
        world.record("SN-EOL").unwrap().state == DeviceState::Decommissioned
    })
    .await;
    // The server commits before it answers; the device forgets its owner once the answer is
    // in. Stopping it in between is safe (it delivers again on its next start) but is not what
    // this test looks at.
    eventually(10, "the device back in the factory state", || {
        running
            .agent
            .load_state()
            .is_ok_and(|s| s.phase == device_agent::machine::Phase::Factory)
    })
    .await;
    running.stop().await;

    // The server: revoked, no credential left, evidence in the audit log, on the CRL.
    let record = world.record("SN-EOL").unwrap();
    assert!(record.network.is_none());
    assert!(record.certificates.iter().all(|c| matches!(
        c.status,
        CertStatus::Revoked {
            reason: Reason::CessationOfOperation,
            ..
        }
    )));
    let actions = world.actions("SN-EOL");
    assert!(
        actions.ends_with(&["wipe-attested".to_string(), "decommissioned".to_string()]),
        "{actions:?}"
    );
    world.server.control().publish_crls().await.unwrap();
    let crl = world.server.control().crls().remove(0);
    let (_, parsed) = x509_parser::parse_x509_crl(&crl.der).unwrap();
    let listed: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| certs::inspect::hex(r.raw_serial()))
        .collect();
    for c in &record.certificates {
        assert!(listed.contains(&c.serial), "{} not on the CRL", c.serial);
    }

    // The device: nothing of the data or the keys can be found in its storage; only the birth
    // identity remains.
    assert!(vault.get("readings").unwrap().is_none());
    let state = world.agent(&device).load_state().unwrap();
    assert_eq!(state.phase, device_agent::machine::Phase::Factory);
    assert!(state.ldevid.is_none() && state.network.is_none() && state.owner_ca.is_none());
    let storage = files_under(device.identity_dir.parent().unwrap());
    for (name, bytes) in &storage {
        for (what, needle) in [
            ("the data", &secret[..64]),
            ("its ciphertext", &ciphertext[20..84]),
            ("the data key", &dek[..]),
            ("the LDevID key (PEM)", &ldevid_key[40..100]),
            ("the LDevID key (DER)", &ldevid_der[..]),
            ("the Wi-Fi passphrase", psk.as_bytes()),
        ] {
            assert!(
                !contains(bytes, needle),
                "{what} found in {}",
                name.display()
            );
        }
    }
    assert!(device.identity_dir.join("idevid.key").exists());
    device.identity();

    // The old LDevID is refused at the handshake.
    let old_state: device_agent::machine::AgentState = {
        use device_agent::platform::StateStore;
        device_agent::platform::files::FileStateStore::new(keep.path())
            .load()
            .unwrap()
            .unwrap()
    };
    let old_key: Arc<dyn device_agent::platform::DeviceKey> =
        Arc::new(certs::files::read_key(&keep.path().join("ldevid.key")).unwrap());
    let config = device_agent::transport::quic::operational_config(
        &[
            old_state.ldevid.clone().unwrap(),
            old_state.chain[0].to_vec(),
        ],
        old_key,
        &old_state.roots(),
        Default::default(),
        &world.clock,
    )
    .unwrap();
    let session = device_agent::transport::quic::Session::connect(
        &world.endpoint,
        config,
        world.server.quic_addr(),
        Some(&old_state.config.unwrap().server_name),
    )
    .await
    .unwrap();
    match session
        .call(&Request::Hello(protocol::message::Hello {
            agent_version: "x".into(),
            firmware_version: "y".into(),
            firmware_sequence: 0,
            class_id: "sensor-1".into(),
            hardware: Default::default(),
            anchors: None,
        }))
        .await
    {
        Err(AgentError::CredentialRefused {
            reason: CredentialRefusal::Revoked,
            ..
        }) => {}
        other => panic!("expected a handshake refusal, got {other:?}"),
    }

    // The certificate of sanitization, from the verified evidence.
    let certificate = world
        .server
        .service()
        .sanitization_certificate(&world.id("SN-EOL"))
        .unwrap();
    assert_eq!(certificate.serial_number, "SN-EOL");
    assert_eq!(certificate.sanitization_method, "Purge");
    assert!(certificate.verified);
    assert!(
        certificate
            .sanitization_description
            .iter()
            .any(|d| d.contains("data-encryption-key"))
    );
    let signed = certs::inspect::unhex(&certificate.attestation).unwrap();
    let signer = certs::files::certs_from_pem(&certificate.signer_certificate)
        .unwrap()
        .remove(0);
    let key = certs::CertInfo::parse(&signer).unwrap().public_key;
    let attestation = WipeAttestation::open(&signed, &key).unwrap();
    assert_eq!(attestation.serial, "SN-EOL");
    let html = certificate.to_html();
    assert!(html.contains("Certificate of Sanitization") && html.contains("SN-EOL"));
    world.assert_tallies_agree();
}

/// A decommissioning device connected by hand (its agent not running), and what signs for it.
async fn ordered(
    world: &World,
    serial: &str,
) -> (
    Device,
    device_agent::transport::quic::Session,
    certs::KeyPair,
    Vec<u8>,
) {
    let device = world.device(serial);
    world.expect(&[serial], 30).await;
    world.agent(&device).onboard().await.unwrap();
    world
        .server
        .service()
        .decommission(&[world.id(serial)], WipeMethod::Clear, None)
        .await
        .unwrap();
    let nonce = world.record(serial).unwrap().decommission.unwrap().nonce;
    let session = world.ldevid_session(&device).await;
    let key = certs::files::read_key(&device.state_dir.join("ldevid.key")).unwrap();
    (device, session, key, nonce)
}

fn attestation(serial: &str, nonce: &[u8]) -> WipeAttestation {
    WipeAttestation {
        serial: serial.into(),
        manufacturer: "Test Devices".into(),
        model: "sensor-1".into(),
        firmware_version: "1.0.0".into(),
        agent_version: "test".into(),
        nonce: nonce.to_vec(),
        method: WipeMethod::Clear,
        targets: vec![WipedTarget {
            target: "application-data".into(),
            bytes: 1,
            method: WipeMethod::Clear,
            verification: "read-back".into(),
            verified: true,
        }],
        started_on: now(),
        finished_on: now(),
        exported: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_attestations_are_refused_and_change_nothing() {
    let world = World::new().await;
    let (_, session, key, nonce) = ordered(&world, "SN-ATT").await;
    let before = world.record("SN-ATT").unwrap();
    let send = |signed: Vec<u8>| Request::WipeAttestation(signed);

    // Bound to another nonce.
    let stale = attestation("SN-ATT", &[9; NONCE_LEN]).sign(&key).unwrap();
    assert_eq!(
        code_of(&session.exchange(&send(stale)).await.unwrap()),
        ErrorCode::StaleRequest
    );
    // Signed by another device.
    let (_, _, other_key, _) = ordered(&world, "SN-OTHER").await;
    let foreign = attestation("SN-ATT", &nonce).sign(&other_key).unwrap();
    assert_eq!(
        code_of(&session.exchange(&send(foreign)).await.unwrap()),
        ErrorCode::BadSignature
    );
    // About another device.
    let theirs = attestation("SN-OTHER", &nonce).sign(&key).unwrap();
    assert_eq!(
        code_of(&session.exchange(&send(theirs)).await.unwrap()),
        ErrorCode::WrongSerial
    );
    // One byte changed.
    let mut changed = attestation("SN-ATT", &nonce).sign(&key).unwrap();
    let at = changed.windows(6).position(|w| w == b"SN-ATT").unwrap();
    changed[at + 5] = b'X';
    assert_eq!(
        code_of(&session.exchange(&send(changed)).await.unwrap()),
        ErrorCode::BadSignature
    );
    // A target that failed its verification.
    let mut failed = attestation("SN-ATT", &nonce);
    failed.targets[0].verified = false;
    let failed = failed.sign(&key).unwrap();
    assert_eq!(
        code_of(&session.exchange(&send(failed)).await.unwrap()),
        ErrorCode::BadRequest
    );
    assert_eq!(world.record("SN-ATT").unwrap(), before);

    // The right one is accepted; replaying it changes nothing more.
    let good = attestation("SN-ATT", &nonce).sign(&key).unwrap();
    session.call(&send(good.clone())).await.unwrap();
    let done = world.record("SN-ATT").unwrap();
    assert_eq!(done.state, DeviceState::Decommissioned);
    assert_eq!(
        code_of(&session.exchange(&send(good)).await.unwrap()),
        ErrorCode::WrongState
    );
    assert_eq!(world.record("SN-ATT").unwrap(), done);

    // A device that was not asked to decommission.
    let device = world.device("SN-ALIVE");
    world.expect(&["SN-ALIVE"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    let alive = world.ldevid_session(&device).await;
    let alive_key = certs::files::read_key(&device.state_dir.join("ldevid.key")).unwrap();
    let before = world.record("SN-ALIVE").unwrap();
    let unasked = attestation("SN-ALIVE", &nonce).sign(&alive_key).unwrap();
    assert_eq!(
        code_of(&alive.exchange(&send(unasked)).await.unwrap()),
        ErrorCode::WrongState
    );
    assert_eq!(world.record("SN-ALIVE").unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_is_decommissioned_unattested() {
    let world = World::new().await;
    let device = world.device("SN-LOST");
    world.expect(&["SN-LOST"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    let control = world.server.control();
    control
        .decommission(vec![world.id("SN-LOST")], WipeMethod::Clear)
        .await
        .unwrap();
    let record = control
        .force_decommission(&world.id("SN-LOST"), "stolen from the site")
        .await
        .unwrap();
    assert_eq!(record.state, DeviceState::DecommissionedUnattested);
    assert!(record.network.is_none());
    assert!(record.live_certificates().next().is_none());
    assert!(matches!(
        world
            .server
            .service()
            .sanitization_certificate(&world.id("SN-LOST")),
        Err(OperatorError::Refused(LifecycleError::WrongState {
            state: DeviceState::DecommissionedUnattested,
            ..
        }))
    ));
    assert!(
        world
            .actions("SN-LOST")
            .contains(&"decommissioned-unattested".to_string())
    );
    // The device is refused everywhere from now on: its certificate, at the handshake.
    assert!(matches!(
        world.agent(&device).connect().await,
        Err(AgentError::CredentialRefused {
            reason: CredentialRefusal::Revoked,
            ..
        })
    ));
    world.assert_tallies_agree();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_device_is_resold_to_a_new_owner() {
    let owner_a = World::new().await;
    let device = owner_a.device("SN-RESALE");
    owner_a.expect(&["SN-RESALE"], 30).await;
    let running = Running::start(owner_a.agent(&device));
    eventually(10, "owner A's session", || {
        owner_a
            .server
            .sessions()
            .is_connected(&owner_a.id("SN-RESALE"))
    })
    .await;
    owner_a
        .server
        .control()
        .decommission(
            vec![owner_a.id("SN-RESALE")],
            WipeMethod::PurgeCryptographicErase,
        )
        .await
        .unwrap();
    eventually(20, "the decommissioning", || {
        owner_a.record("SN-RESALE").unwrap().state == DeviceState::Decommissioned
    })
    .await;
    // The server records the decommissioning before it answers the attestation: the device
    // forgets its owner once the answer is in.
    eventually(20, "the device back in its factory state", || {
        running
            .agent
            .load_state()
            .is_ok_and(|s| s.phase == device_agent::machine::Phase::Factory)
    })
    .await;
    running.stop().await;

    // Owner B, same manufacturer, gets a voucher for the device and onboards it.
    let owner_b = World::for_manufacturer(owner_a.manufacturer.clone()).await;
    owner_b.expect(&["SN-RESALE"], 30).await;
    let state = device
        .agent(owner_b.server.quic_addr(), &owner_b.endpoint)
        .onboard()
        .await
        .unwrap();
    assert_eq!(
        state.owner_ca.as_deref(),
        Some(owner_b.owner_root.as_slice())
    );
    assert_eq!(
        owner_b.record("SN-RESALE").unwrap().state,
        DeviceState::Active
    );
    device
        .agent(owner_b.server.quic_addr(), &owner_b.endpoint)
        .connect()
        .await
        .unwrap()
        .close();

    // Owner A refuses it for good: no onboarding, no new voucher.
    let before = owner_a.record("SN-RESALE").unwrap();
    let session = owner_a.raw_session(&device).await;
    let r = session
        .exchange(&voucher_request(&device.birth(), &session))
        .await
        .unwrap();
    assert_eq!(code_of(&r), ErrorCode::WrongState);
    // ... and says what its owner must do instead.
    let protocol::message::Response::Error(e) = r else {
        unreachable!()
    };
    assert!(e.message.contains("new owner onboards it"), "{}", e.message);
    let again = owner_a
        .manufacturer
        .voucher("SN-RESALE", &owner_a.owner_root, now(), now() + DAY)
        .unwrap();
    let report = owner_a
        .server
        .service()
        .import_vouchers(&protocol::voucher::encode_bundle(&[again]))
        .await
        .unwrap();
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(owner_a.record("SN-RESALE").unwrap(), before);
}

/// `decommission --export-data`: before its wipe the device hands its application data back,
/// encrypted to an age key the owner made with Debian's age-keygen; the owner decrypts it with
/// Debian's age and unpacks it with tar, and finds what the device held. The attestation and
/// the certificate of sanitization name the transfer. A piece from a device with no such order
/// is refused, typed, and changes nothing; a wrong recipient is refused when ordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_hands_its_data_back_encrypted_to_the_owner_before_its_wipe() {
    use std::process::Command as Process;
    let world = World::new().await;
    let serials = ["SN-GIVE", "SN-KEEP"];
    world.expect(&serials, 30).await;
    let device = world.device("SN-GIVE");
    world.agent(&device).onboard().await.unwrap();
    let other = world.device("SN-KEEP");
    world.agent(&other).onboard().await.unwrap();
    let vault = Vault::new(&device.state_dir);
    // More than one piece of the protocol (48 KiB), and two items.
    let readings: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 251) as u8).collect();
    vault.put("readings", &readings).unwrap();
    vault.put("settings", b"{\"alarm\": 120}").unwrap();

    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("owner.key");
    let made = Process::new("age-keygen")
        .arg("-o")
        .arg(&key_file)
        .output()
        .expect("age-keygen (Debian package age; scripts/test installs it)");
    assert!(made.status.success(), "{made:?}");
    let recipient = String::from_utf8(
        Process::new("age-keygen")
            .arg("-y")
            .arg(&key_file)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");

    // A recipient that is not one is refused when ordered.
    let refused = world
        .server
        .service()
        .decommission(
            &[world.id("SN-GIVE")],
            WipeMethod::Clear,
            Some("age1-not-a-key"),
        )
        .await
        .unwrap();
    assert!(refused.accepted.is_empty() && refused.refused.len() == 1);
    assert_eq!(world.record("SN-GIVE").unwrap().state, DeviceState::Active);

    // A device without the order cannot store anything.
    let session = world.ldevid_session(&other).await;
    let before = world.record("SN-KEEP").unwrap();
    let sneaked = session
        .call(&Request::DataExport(protocol::message::DataChunk {
            digest: vec![0; 32],
            total: 4,
            offset: 0,
            bytes: b"junk".to_vec(),
        }))
        .await;
    assert!(
        matches!(
            sneaked,
            Err(AgentError::Refused {
                code: ErrorCode::WrongState,
                ..
            })
        ),
        "{sneaked:?}"
    );
    assert_eq!(world.record("SN-KEEP").unwrap(), before);
    assert!(
        world
            .server
            .service()
            .images()
            .read(&protocol::manifest::sha256(b"junk"), 0, 4)
            .is_err()
    );

    let running = Running::start(world.agent(&device));
    eventually(10, "the session", || {
        world.server.sessions().is_connected(&world.id("SN-GIVE"))
    })
    .await;
    let order = world
        .server
        .control()
        .decommission_exporting(
            vec![world.id("SN-GIVE")],
            WipeMethod::PurgeCryptographicErase,
            Some(recipient.clone()),
        )
        .await
        .unwrap();
    assert_eq!(order.accepted, [world.id("SN-GIVE")]);
    eventually(30, "the attestation", || {
        world.record("SN-GIVE").unwrap().state == DeviceState::Decommissioned
    })
    .await;
    running.stop().await;
    assert!(vault.get("readings").unwrap().is_none(), "wiped");

    // The owner decrypts with age and unpacks with tar.
    let data = world
        .server
        .service()
        .exported_data(&world.id("SN-GIVE"))
        .unwrap();
    let encrypted = keys.path().join("data.age");
    std::fs::write(&encrypted, &data).unwrap();
    let out = keys.path().join("data");
    std::fs::create_dir(&out).unwrap();
    let script = format!(
        "age -d -i '{}' '{}' | tar -x -C '{}'",
        key_file.display(),
        encrypted.display(),
        out.display()
    );
    let unpacked = Process::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(unpacked.status.success(), "{unpacked:?}");
    assert_eq!(std::fs::read(out.join("readings")).unwrap(), readings);
    assert_eq!(
        std::fs::read(out.join("settings")).unwrap(),
        b"{\"alarm\": 120}"
    );
    // Another key cannot read it.
    let stranger = keys.path().join("stranger.key");
    Process::new("age-keygen")
        .arg("-o")
        .arg(&stranger)
        .output()
        .unwrap();
    let denied = Process::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&stranger)
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(!denied.status.success());

    // The certificate of sanitization names the transfer, as the device attested it.
    let certificate = world
        .server
        .service()
        .sanitization_certificate(&world.id("SN-GIVE"))
        .unwrap();
    let transfer = certificate.data_transfer.clone().unwrap();
    assert_eq!(transfer.recipient, recipient);
    assert_eq!(transfer.bytes, data.len() as u64);
    assert_eq!(
        transfer.sha256,
        certs::inspect::hex(&protocol::manifest::sha256(&data))
    );
    assert!(certificate.to_html().contains(&recipient));
    let actions = world.actions("SN-GIVE");
    let exported = actions.iter().position(|a| a == "data-exported").unwrap();
    let attested = actions.iter().position(|a| a == "wipe-attested").unwrap();
    assert!(exported < attested, "{actions:?}");
}
