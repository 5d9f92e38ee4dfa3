//! OpenSSL checks the demo's output: every LDevID against the owner chain kept in the output
//! directory, every IDevID against the manufacturer root, and the key files it leaves.

use std::path::Path;
use std::process::Command;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command is installed by .ci/run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_output_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let report = onboarder::demo::run(onboarder::demo::DemoOptions {
        devices: 20,
        out: Some(out.clone()),
        concurrency: 8,
        progress: false,
        // Every device keeps its LDevID (decommissioning is checked below, on the CRL).
        decommission_percent: 0,
        transport: Default::default(),
    })
    .await
    .unwrap();
    assert_eq!(report.phases["onboard"].ok, 20);
    // The fleet updated twice: over its QUIC sessions, then from the HTTPS listener.
    for phase in ["firmware", "firmware_https"] {
        let r = &report.phases[phase];
        assert_eq!((r.ok, r.failed), (20, 0), "{phase}");
    }

    let owner_root = out.join("onboarder/ca/owner-root.pem");
    let issuing = out.join("onboarder/ca/issuing-ca.pem");
    let manufacturer = out.join("manufacturer/root-ca.pem");
    let mut devices: Vec<_> = std::fs::read_dir(out.join("devices"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    devices.sort();
    assert_eq!(devices.len(), 20);
    for d in &devices {
        let ldevid = d.join("state/ldevid.pem");
        let (ok, text) = openssl(&[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            path(&owner_root),
            "-untrusted",
            path(&issuing),
            path(&ldevid),
        ]);
        assert!(ok && text.contains(": OK"), "{text}");
        // The chain the device keeps is the same chain.
        let (ok, text) = openssl(&[
            "verify",
            "-CAfile",
            path(&owner_root),
            "-untrusted",
            path(&d.join("state/chain.pem")),
            path(&ldevid),
        ]);
        assert!(ok, "{text}");
        let (ok, text) = openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            path(&manufacturer),
            path(&d.join("identity/idevid.pem")),
        ]);
        assert!(ok && text.contains(": OK"), "{text}");
        // An LDevID does not verify against the manufacturer, nor an IDevID against the owner.
        let (ok, _) = openssl(&["verify", "-CAfile", path(&manufacturer), path(&ldevid)]);
        assert!(!ok);
        let (ok, _) = openssl(&[
            "verify",
            "-CAfile",
            path(&owner_root),
            path(&d.join("identity/idevid.pem")),
        ]);
        assert!(!ok);
        for key in ["identity/idevid.key", "state/ldevid.key"] {
            let (ok, text) = openssl(&["pkey", "-in", path(&d.join(key)), "-noout"]);
            assert!(ok, "{key}: {text}");
        }
    }

    // The IDevID profile as another implementation reads it.
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        path(&devices[0].join("identity/idevid.pem")),
        "-noout",
        "-text",
    ]);
    assert!(ok);
    assert!(
        text.contains("Not After : Dec 31 23:59:59 9999 GMT"),
        "{text}"
    );
    assert!(text.contains("serialNumber = SN-000001"), "{text}");
    assert!(text.contains("1.3.6.1.5.5.7.8.4"), "{text}");
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        path(&out.join("onboarder/tls/server.pem")),
        "-noout",
        "-ext",
        "extendedKeyUsage",
    ]);
    assert!(ok);
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("CMC Registration Authority"), "{text}");
}

#[test]
fn ed25519_keys_are_readable_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let key = certs::KeyPair::generate(certs::KeyKind::Ed25519).unwrap();
    let file = dir.path().join("ed.key");
    certs::files::write_secret(&file, key.to_pem().as_bytes()).unwrap();
    let (ok, text) = openssl(&["pkey", "-in", path(&file), "-pubout"]);
    assert!(ok, "{text}");
    assert_eq!(text, key.public_pem());
}

/// A revoked LDevID: the CRL verifies with `openssl crl -verify`, and `openssl verify
/// -crl_check` refuses the revoked certificate and accepts the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crl_verifies_and_lists_the_revoked_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    // The demo leaves a server data directory and enrolled devices; serve it again.
    onboarder::demo::run(onboarder::demo::DemoOptions {
        devices: 3,
        out: Some(out.clone()),
        concurrency: 3,
        progress: false,
        decommission_percent: 10,
        transport: Default::default(),
    })
    .await
    .unwrap();
    let data = out.join("onboarder");
    // The generation the devices' certificates come from (the demo rolls the CAs over).
    let current = onboarder::pki::current_generation(&data).unwrap();
    let server = onboarder::server::Server::start(&data, Default::default())
        .await
        .unwrap();
    let device = server.service().resolve("SN-000002").unwrap();
    server
        .control()
        .revoke(&device, certs::crl::Reason::KeyCompromise)
        .await
        .unwrap();
    server.control().publish_crls().await.unwrap();
    // After a rollover the retired generation keeps publishing; each generation's CRL verifies
    // against its own issuing CA (the README's check), whatever generation is current.
    server.control().rollover(None).await.unwrap();
    server.shutdown().await;

    for generation in 1..=current + 1 {
        let (ok, text) = openssl(&[
            "crl",
            "-in",
            path(&data.join(format!("crl/issuing-ca-{generation}.crl"))),
            "-CAfile",
            path(&data.join(format!("ca/issuing-ca-{generation}.pem"))),
            "-noout",
            "-verify",
        ]);
        assert!(
            ok && text.contains("verify OK"),
            "generation {generation}: {text}"
        );
    }
    let crl = data.join(format!("crl/issuing-ca-{current}.crl"));
    let (ok, text) = openssl(&["crl", "-in", path(&crl), "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");

    let verify = |device: &str| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            path(&crl),
            "-CAfile",
            path(&data.join("ca/owner-root.pem")),
            "-untrusted",
            path(&data.join(format!("ca/issuing-ca-{current}.pem"))),
            path(&out.join(format!("devices/{device}/state/ldevid.pem"))),
        ])
    };
    let (ok, text) = verify("SN-000002");
    assert!(!ok && text.contains("certificate revoked"), "{text}");
    let (ok, text) = verify("SN-000001");
    assert!(ok && text.contains(": OK"), "{text}");
}
