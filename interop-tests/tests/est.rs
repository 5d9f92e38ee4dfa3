//! EST (RFC 7030) against clients we did not write: curl and openssl, driven by
//! `scripts/est-client.sh`, enroll and re-enroll a device over HTTPS; the onboarder's record
//! and audit show the same history as for a QUIC device, and once the operator revokes the
//! device its certificate is refused in the TLS handshake.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use certs::factory::{Manufacturer, ManufacturerConfig};
use onboarder::core::DeviceState;
use onboarder::server::{Listen, Server};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// openssl's output (stdout and stderr), asserting it succeeded.
fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_enroll_and_reenroll_over_est_and_are_refused_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("onboarder");
    let mut config = onboarder::config::Config::new("EST Owner");
    config.quic_listen = "127.0.0.1:0".parse().unwrap();
    config.api_listen = "127.0.0.1:0".parse().unwrap();
    // The CRL distribution point names the HTTPS port, so it is chosen before the start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    config.policy.crl_url = Some(format!("https://localhost:{port}/crl"));
    let now = certs::unix_now();
    onboarder::pki::init(&data, &config, now).unwrap();
    let server = Server::start(
        &data,
        Listen {
            https: Some(format!("127.0.0.1:{port}").parse().unwrap()),
            ..Listen::default()
        },
    )
    .await
    .unwrap();
    let service = server.service().clone();
    let maker =
        Arc::new(Manufacturer::create(ManufacturerConfig::new("EST Devices"), now).unwrap());
    service
        .import_anchor(&onboarder::service::AnchorImport {
            pem: certs::files::cert_pem(maker.root_cert()),
            masa_pem: Some(certs::files::cert_pem(maker.masa_cert())),
            name: Some("est".into()),
        })
        .await
        .unwrap();
    let owner_root = data.join(onboarder::config::layout::OWNER_ROOT);
    let voucher = maker
        .voucher(
            "SN-EST",
            &certs::files::read_cert(&owner_root).unwrap(),
            now,
            now + 86_400,
        )
        .unwrap();
    service
        .import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
        .await
        .unwrap();
    let identity = dir.path().join("identity");
    maker
        .mint("SN-EST", certs::KeyKind::P256, now)
        .unwrap()
        .save(&identity)
        .unwrap();
    let work = dir.path().join("client");
    std::fs::create_dir_all(&work).unwrap();
    let est = format!("https://localhost:{port}/.well-known/est");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/est-client.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("EST", &est)
        .env("OWNER_ROOT", &owner_root)
        .env("IDEVID_CERT", identity.join("idevid.pem"))
        .env("IDEVID_KEY", identity.join("idevid.key"))
        .env("SERIAL", "SN-EST")
        .env("WORK", &work)
        .output()
        .expect("bash, curl and openssl are installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");

    // The record: active on the renewed certificate, which the client holds.
    let id = service.resolve("est/SN-EST").unwrap();
    let record = service.device(&id).unwrap();
    assert_eq!(record.state, DeviceState::Active);
    assert_eq!(record.certificates.len(), 2, "{record:?}");
    let renewed = std::fs::read_to_string(work.join("renewed.pem")).unwrap();
    assert!(
        text.to_lowercase()
            .contains(&format!("serial={}", record.certificates[1].serial).to_lowercase()),
        "{text}"
    );
    assert!(renewed.contains("BEGIN CERTIFICATE"));
    // The audit: the same steps as a QUIC device's, with how it enrolled.
    let actions: Vec<String> = service
        .audit_entries(1, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.event.device.as_ref() == Some(&id))
        .map(|e| e.event.action)
        .collect();
    for expected in ["est-enrollment", "certificate-issued", "enrolled"] {
        assert!(actions.iter().any(|a| a == expected), "{actions:?}");
    }

    // Revoked: its certificate is refused in the handshake (curl: exit 35 or 56).
    server
        .control()
        .revoke(&id, certs::crl::Reason::KeyCompromise)
        .await
        .unwrap();
    let refused = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(&owner_root)
        .args(["--cert", path(&work.join("renewed.pem"))])
        .args(["--key", path(&work.join("renewed.key"))])
        .args(["-H", "Content-Type: application/pkcs10"])
        .args([
            "--data-binary",
            &format!("@{}", path(&work.join("renewed.csr.b64"))),
        ])
        .arg(format!("{est}/simplereenroll"))
        .output()
        .unwrap();
    let code = refused.status.code();
    assert!(
        matches!(code, Some(35 | 56)),
        "{code:?}: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert_eq!(service.device(&id).unwrap().certificates.len(), 2);

    // Relying parties find the CRL where the certificate says, and it lists the certificate.
    let text = openssl(&[
        "x509",
        "-in",
        path(&work.join("renewed.pem")),
        "-noout",
        "-text",
    ]);
    let url = format!("https://localhost:{port}/crl/issuing-ca-1.crl");
    assert!(text.contains(&format!("URI:{url}")), "{text}");
    let crl = work.join("crl.der");
    let fetched = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(&owner_root)
        .arg("-o")
        .arg(&crl)
        .arg(&url)
        .status()
        .unwrap();
    assert!(fetched.success());
    let listed = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        path(&crl),
        "-CAfile",
        path(&work.join("cacerts.pem")),
        "-noout",
        "-text",
    ]);
    let serial = record.certificates[1].serial.to_uppercase();
    assert!(listed.contains("verify OK"), "{listed}");
    assert!(listed.contains(&serial), "{serial} not in {listed}");
    server.shutdown().await;
}
