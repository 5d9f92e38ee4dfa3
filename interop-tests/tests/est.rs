//! EST (RFC 7030) against clients we did not write: curl and openssl, driven by
//! `scripts/est-client.sh`, enroll and re-enroll a device over HTTPS; the onboarder's record
//! and audit show the same history as for a QUIC device, and once the operator revokes the
//! device its certificate is refused in the TLS handshake.

mod common;

use std::process::Command;

use certs::factory::{Manufacturer, ManufacturerConfig};
use common::{Owner, openssl, path, refused_in_handshake, script};
use onboarder::core::DeviceState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_openssl_enroll_and_reenroll_over_est_and_are_refused_once_revoked() {
    let owner = Owner::start("EST Owner").await;
    let (service, port, owner_root) = (&owner.service, owner.port, &owner.owner_root);
    let now = certs::unix_now();
    let maker = Manufacturer::create(ManufacturerConfig::new("EST Devices"), now).unwrap();
    owner.import_maker(&maker, "est").await;
    owner
        .import_voucher(
            maker
                .voucher("SN-EST", &owner.owner_root_der(), now, now + 86_400)
                .unwrap(),
        )
        .await;
    let dir = owner.dir.path();
    let identity = dir.join("identity");
    maker
        .mint("SN-EST", certs::KeyKind::P256, now)
        .unwrap()
        .save(&identity)
        .unwrap();
    let work = dir.join("client");
    std::fs::create_dir_all(&work).unwrap();
    let est = format!("https://localhost:{port}/.well-known/est");

    let text = script(
        "est-client.sh",
        &[
            ("OWNER_ROOT", owner_root),
            ("IDEVID_CERT", &identity.join("idevid.pem")),
            ("IDEVID_KEY", &identity.join("idevid.key")),
            ("WORK", &work),
        ],
        &[("EST", &est), ("SERIAL", "SN-EST")],
    );

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
    let actions = owner.actions(&id);
    for expected in ["est-enrollment", "certificate-issued", "enrolled"] {
        assert!(actions.iter().any(|a| a == expected), "{actions:?}");
    }

    // Revoked: its certificate is refused in the handshake (curl: exit 35 or 56).
    owner
        .server
        .control()
        .revoke(&id, certs::crl::Reason::KeyCompromise)
        .await
        .unwrap();
    refused_in_handshake(
        &owner,
        &work.join("renewed.pem"),
        &work.join("renewed.key"),
        &format!("{est}/simplereenroll"),
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
        .arg(owner_root)
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
    owner.server.shutdown().await;
}
