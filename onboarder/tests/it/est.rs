//! EST over HTTPS refuses bad input with the status RFC 7030 and HTTP give it, and a refusal
//! changes nothing: too large (413), another media type (415), not base64 (400), a CSR for
//! another device or reusing the birth key (400), no client certificate (401), a certificate
//! of no maker we know (refused in the handshake). curl is the client.

use std::path::Path;
use std::process::Command;

use base64::Engine;

use crate::harness::*;

/// What curl got: its exit code, the HTTP status (0 when there was none) and the body.
struct Reply {
    exit: Option<i32>,
    status: u16,
    body: String,
}

fn curl(world: &World, resource: &str, client: Option<(&Path, &Path)>, args: &[&str]) -> Reply {
    let port = world.server.https_addr().unwrap().port();
    let owner_root = world.data.join(onboarder::config::layout::OWNER_ROOT);
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--write-out", "\n%{http_code}"])
        .arg("--cacert")
        .arg(&owner_root);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .args(args)
        .arg(format!(
            "https://localhost:{port}/.well-known/est/{resource}"
        ))
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        exit: out.status.code(),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_est_requests_are_refused_with_their_status_and_change_nothing() {
    let world = World::new().await;
    world.expect(&["SN-EST-BAD"], 30).await;
    let device = world.device("SN-EST-BAD");
    let before = world.record("SN-EST-BAD").unwrap();
    let cert = device.identity_dir.join("idevid.pem");
    let key = device.identity_dir.join("idevid.key");
    let idevid = Some((cert.as_path(), key.as_path()));
    let fresh = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let good_csr = b64(&certs::csr::build_birth_csr("SN-EST-BAD", &fresh).unwrap());
    let post = |body: &str, media: &str| -> Vec<String> {
        vec![
            "-H".into(),
            format!("Content-Type: {media}"),
            "--data-binary".into(),
            body.into(),
        ]
    };
    let send = |client, body: &str, media: &str| {
        let args = post(body, media);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&world, "simpleenroll", client, &args)
    };

    // Too large for any CSR: refused before it is read whole.
    let big = "A".repeat(200 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let big_file = dir.path().join("big.b64");
    std::fs::write(&big_file, &big).unwrap();
    // (curl waits for the verdict before sending a body it announced, as it may; otherwise
    // the server's early answer can meet a connection reset while curl is still sending.)
    let args = [
        "-H",
        "Content-Type: application/pkcs10",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &format!("@{}", big_file.display()),
    ];
    let reply = curl(&world, "simpleenroll", idevid, &args);
    assert_eq!(reply.status, 413, "{}", reply.body);
    // Another media type.
    let reply = send(idevid, &good_csr, "text/plain");
    assert_eq!(reply.status, 415, "{}", reply.body);
    // Not base64; base64 but not DER.
    let reply = send(idevid, "not base64 at all!", "application/pkcs10");
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("not base64"), "{}", reply.body);
    let reply = send(idevid, &b64(b"garbage"), "application/pkcs10");
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("malformed CSR"), "{}", reply.body);
    // A CSR for another device; one for the birth key itself.
    let other = b64(&certs::csr::build_birth_csr("SN-OTHER", &fresh).unwrap());
    let reply = send(idevid, &other, "application/pkcs10");
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("SN-OTHER"), "{}", reply.body);
    let birth = device.birth();
    let reuse = b64(&certs::csr::build_birth_csr("SN-EST-BAD", &birth.key).unwrap());
    let reply = send(idevid, &reuse, "application/pkcs10");
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("reuses"), "{}", reply.body);
    // No client certificate.
    let reply = send(None, &good_csr, "application/pkcs10");
    assert_eq!(reply.status, 401, "{}", reply.body);
    // A certificate of a maker the owner never imported: no HTTP at all.
    let stranger = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Stranger"),
        now(),
    )
    .unwrap();
    let stranger_dir = dir.path().join("stranger");
    stranger
        .mint("SN-EST-BAD", certs::KeyKind::P256, now())
        .unwrap()
        .save(&stranger_dir)
        .unwrap();
    let (stranger_cert, stranger_key) = (
        stranger_dir.join("idevid.pem"),
        stranger_dir.join("idevid.key"),
    );
    let reply = send(
        Some((stranger_cert.as_path(), stranger_key.as_path())),
        &good_csr,
        "application/pkcs10",
    );
    assert_eq!(reply.status, 0);
    assert!(matches!(reply.exit, Some(35 | 56)), "{:?}", reply.exit);

    // Nothing changed, nothing was issued; every refusal is counted (the 413, the 415, two 400s
    // of the transport, two of the core, the 401).
    let counted = world.server.service().metrics().snapshot().refusals;
    let count = |code: &str| counted.get(code).copied().unwrap_or(0);
    assert!(count("BadRequest") >= 2, "{counted:?}");
    assert!(count("Unauthorized") >= 1, "{counted:?}");
    assert!(count("TooLarge") >= 1, "{counted:?}");
    assert_eq!(world.record("SN-EST-BAD").unwrap(), before);
    let actions = world.actions("SN-EST-BAD");
    assert!(
        !actions.iter().any(|a| a == "certificate-issued"),
        "{actions:?}"
    );

    // The same device with a good request is enrolled (the refusals locked nothing).
    let reply = send(idevid, &good_csr, "application/pkcs10");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let p7 = base64::engine::general_purpose::STANDARD
        .decode(reply.body.split_whitespace().collect::<String>())
        .unwrap();
    let issued = certs::pkcs7::certificates(&p7).unwrap();
    assert_eq!(issued.len(), 1);
    let info = certs::CertInfo::parse(&issued[0]).unwrap();
    assert_eq!(info.public_key, fresh.public_key());
    // Anyone may read the CA certificates.
    let reply = curl(&world, "cacerts", None, &[]);
    assert_eq!(reply.status, 200);
}

/// A device that cannot make a key gets one from the server (RFC 7030 4.4): the key as PKCS#8
/// and its certificate, in one multipart answer; the key is nowhere in the server's files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serverkeygen_hands_a_device_its_key_and_certificate_and_keeps_no_copy() {
    let world = World::new().await;
    world.expect(&["SN-KEYGEN"], 30).await;
    let device = world.device("SN-KEYGEN");
    let cert = device.identity_dir.join("idevid.pem");
    let key = device.identity_dir.join("idevid.key");
    let throwaway = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = b64(&certs::csr::build_birth_csr("SN-KEYGEN", &throwaway).unwrap());
    let reply = curl(
        &world,
        "serverkeygen",
        Some((cert.as_path(), key.as_path())),
        &[
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &csr,
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let parts: Vec<Vec<u8>> = reply
        .body
        .split("--est-serverkeygen-boundary")
        .filter_map(|part| part.split_once("\r\n\r\n"))
        .map(|(_, b)| {
            base64::engine::general_purpose::STANDARD
                .decode(b.split_whitespace().collect::<String>())
                .unwrap()
        })
        .collect();
    assert_eq!(parts.len(), 2, "{}", reply.body);
    let made = certs::KeyPair::from_pkcs8_der(&parts[0]).unwrap();
    let issued = certs::pkcs7::certificates(&parts[1]).unwrap();
    let info = certs::CertInfo::parse(&issued[0]).unwrap();
    assert_eq!(info.public_key, made.public_key());
    assert_ne!(info.public_key, throwaway.public_key());
    assert_eq!(info.device_serial().unwrap(), "SN-KEYGEN");
    let record = world.record("SN-KEYGEN").unwrap();
    assert_eq!(record.certificates.len(), 1);
    for (path, bytes) in files_under(&world.data) {
        assert!(
            !bytes.windows(parts[0].len()).any(|w| w == parts[0]),
            "the key is in {}",
            path.display()
        );
    }
}

/// A pledge's status reports (RFC 8995 5.7, 5.9.4) over HTTPS: its verdict on the voucher is
/// noted, and its enrollment status confirms the certificate EST gave it, which makes the
/// device active; malformed reports are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brski_status_reports_confirm_an_est_enrollment() {
    let world = World::new().await;
    world.expect(&["SN-BRSKI"], 30).await;
    let device = world.device("SN-BRSKI");
    let cert = device.identity_dir.join("idevid.pem");
    let key = device.identity_dir.join("idevid.key");
    let idevid = Some((cert.as_path(), key.as_path()));
    let fresh = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = b64(&certs::csr::build_birth_csr("SN-BRSKI", &fresh).unwrap());
    let reply = curl(
        &world,
        "simpleenroll",
        idevid,
        &[
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &csr,
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let enrolled = world.record("SN-BRSKI").unwrap();
    assert_eq!(enrolled.state, onboarder::core::DeviceState::Onboarding);

    let brski = |resource: &str, client, media: &str, body: &str| {
        let port = world.server.https_addr().unwrap().port();
        let owner_root = world.data.join(onboarder::config::layout::OWNER_ROOT);
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--write-out", "%{http_code}", "-o", "/dev/null"])
            .arg("--cacert")
            .arg(&owner_root);
        if let Some((cert, key)) = client {
            let (cert, key): (&Path, &Path) = (cert, key);
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let out = cmd
            .args([
                "-H",
                &format!("Content-Type: {media}"),
                "--data-binary",
                body,
            ])
            .arg(format!(
                "https://localhost:{port}/.well-known/brski/{resource}"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .parse::<u16>()
            .unwrap_or(0)
    };
    let ok = r#"{"version": 1, "status": true}"#;
    for (client, media, body, status) in [
        (idevid, "text/plain", ok, 415),
        (idevid, "application/json", "{not json", 400),
        (
            idevid,
            "application/json",
            r#"{"version": 2, "status": true}"#,
            400,
        ),
        (None, "application/json", ok, 401),
    ] {
        assert_eq!(brski("enrollstatus", client, media, body), status, "{body}");
    }
    assert_eq!(world.record("SN-BRSKI").unwrap(), enrolled);

    let rejected = r#"{"version":"1","status":false,"reason":"voucher for another registrar","reason-context":{"seen":"x"}}"#;
    assert_eq!(
        brski("voucher_status", idevid, "application/json", rejected),
        200
    );
    assert_eq!(world.record("SN-BRSKI").unwrap(), enrolled);
    assert_eq!(brski("enrollstatus", idevid, "application/json", ok), 200);
    let record = world.record("SN-BRSKI").unwrap();
    assert_eq!(record.state, onboarder::core::DeviceState::Active);
    let actions = world.actions("SN-BRSKI");
    for expected in ["est-enrollment", "voucher-rejected", "enrolled"] {
        assert!(actions.iter().any(|a| a == expected), "{actions:?}");
    }
}
