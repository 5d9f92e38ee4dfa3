//! A device whose keys never leave its secure element: SoftHSM2 (Debian `softhsm2`, an
//! independent PKCS#11 implementation) holds the birth key the device made itself (certified
//! by the factory from its CSR) and every operational key, as sensitive, non-extractable
//! objects. The device onboards, renews and is decommissioned; no private key is ever on its
//! disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use device_agent::Agent;
use device_agent::platform::pkcs11::{self, Pkcs11Config, Pkcs11KeyStore};
use device_agent::platform::{KeyStore, Platform};
use onboarder::core::DeviceState;
use protocol::attestation::WipeMethod;

use crate::harness::*;

/// Where Debian puts SoftHSM2's module.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A fresh SoftHSM2 token labelled `label`. SoftHSM2 reads its configuration from
/// SOFTHSM2_CONF when the module is first initialized in this process, so the variable is set
/// once, before that, and every token of this test binary lives in one temporary directory.
fn token(label: &str) -> Pkcs11Config {
    assert!(
        Path::new(MODULE).exists(),
        "SoftHSM2 is not installed ({MODULE}); ./scripts/test installs it"
    );
    static CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let conf = CONF.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("onboarder-softhsm-{}", std::process::id()));
        std::fs::create_dir_all(root.join("tokens")).unwrap();
        let conf = root.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                root.join("tokens").display()
            ),
        )
        .unwrap();
        // SAFETY: set once, before the module is loaded; nothing else in this test binary reads
        // or writes this variable.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        conf
    });
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", "1234", "--so-pin", "5678"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Pkcs11Config {
        module: MODULE.into(),
        token: label.into(),
        pin: "1234".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_its_keys_in_a_token_onboards_renews_and_is_decommissioned() {
    let world = World::with_config(|c| {
        c.policy.network = onboarder::core::NetworkPolicy::EapTls {
            ssid: "corp-iot".into(),
        }
    })
    .await;
    let config = token("sn-hsm");
    let store = Arc::new(Pkcs11KeyStore::open(&config, certs::KeyKind::P256).unwrap());

    // At the factory: the device makes its birth key in the token and prints a CSR; the
    // factory certifies it. The identity directory holds certificates only.
    let born = store.make_idevid_key().unwrap();
    assert!(matches!(
        store.make_idevid_key(),
        Err(device_agent::PlatformError::Key(_))
    ));
    let csr = certs::csr::build_birth_csr(
        "SN-HSM",
        &device_agent::platform::key::CsrSigner::new(born.as_ref()).unwrap(),
    )
    .unwrap();
    let identity = world.manufacturer.certify(&csr, now()).unwrap();
    let dir = world.dir.path().join("hsm-device");
    identity.save(&dir.join("identity")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    assert!(store.protected(pkcs11::IDEVID).unwrap());

    let agent = || {
        let mut platform = Platform::files(
            &dir.join("identity"),
            &dir.join("state"),
            certs::KeyKind::P256,
        );
        platform.keys = store.clone();
        Agent::new(
            Arc::new(identity.clone()),
            platform,
            world.server.quic_addr(),
            world.endpoint.clone(),
            device_agent::AgentOptions {
                clock: world.clock.clone(),
                ..fast_options()
            },
        )
    };

    // The owner: onboarding with the token's birth key; the LDevID key is made in the token.
    world.expect(&["SN-HSM"], 30).await;
    let state = agent().onboard().await.unwrap();
    let first = certs::CertInfo::parse(state.ldevid.as_ref().unwrap()).unwrap();
    assert_eq!(
        Some(first.public_key.clone()),
        store.ldevid_key().unwrap().map(|k| k.public_key())
    );
    assert!(store.protected(pkcs11::LDEVID).unwrap());
    // The supplicant is told where the key is, not given it.
    let network = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("state/network.json")).unwrap()).unwrap()
    };
    assert_eq!(network()["kind"], "eap-tls");
    assert_eq!(
        network()["client_key"],
        serde_json::json!({"kind": "pkcs11", "uri": "pkcs11:token=sn-hsm;object=ldevid;type=private"})
    );
    assert_eq!(
        network()["client_cert"],
        certs::files::cert_pem(state.ldevid.as_ref().unwrap())
    );

    // Renewal: a fresh key in the token, the old one destroyed.
    let a = agent();
    let session = a.renew(a.connect().await.unwrap()).await.unwrap();
    session.close();
    let renewed = store.ldevid_key().unwrap().unwrap().public_key();
    assert_ne!(renewed, first.public_key);
    assert!(store.pending_ldevid_key().unwrap().is_none());
    assert!(store.protected(pkcs11::LDEVID).unwrap());
    // EAP-TLS was redone with the new certificate (the old one is revoked soon).
    let current = a.load_state().unwrap().ldevid.unwrap();
    assert_eq!(
        certs::CertInfo::parse(&current).unwrap().public_key,
        renewed
    );
    assert_eq!(network()["client_cert"], certs::files::cert_pem(&current));

    // Decommissioning: the operational keys are destroyed in the token; the birth key stays.
    let running = Running::start(agent());
    eventually(10, "the session", || {
        world.server.sessions().is_connected(&world.id("SN-HSM"))
    })
    .await;
    world
        .server
        .control()
        .decommission(vec![world.id("SN-HSM")], WipeMethod::Clear)
        .await
        .unwrap();
    eventually(20, "the attestation", || {
        world.record("SN-HSM").unwrap().state == DeviceState::Decommissioned
    })
    .await;
    // The agent destroys its LDevID key last, once the server acknowledged the attestation.
    eventually(5, "the LDevID key destroyed", || {
        store.ldevid_key().unwrap().is_none()
    })
    .await;
    running.stop().await;
    assert_eq!(store.idevid_key().unwrap().public_key(), born.public_key());

    // Never a private key on the device's disk.
    let on_disk = files_under(&dir);
    assert!(!on_disk.is_empty());
    for (path, bytes) in on_disk {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{} holds a private key",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".key"), "{}", path.display());
    }
}
