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

/// curl at `https://localhost:PORT/.well-known/{resource}` (`est/cacerts`), with the IDevID or
/// LDevID `client` if given, trusting the owner root.
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
        .arg(format!("https://localhost:{port}/.well-known/{resource}"))
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
        curl(&world, "est/simpleenroll", client, &args)
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
    let reply = curl(&world, "est/simpleenroll", idevid, &args);
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
    let reply = curl(&world, "est/cacerts", None, &[]);
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
        "est/serverkeygen",
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
        "est/simpleenroll",
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
        let media = format!("Content-Type: {media}");
        let args = ["-H", &media, "--data-binary", body];
        curl(&world, &format!("brski/{resource}"), client, &args).status
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

/// A pledge's CMS voucher request for `serial`, signed with `key` (its IDevID's, or not),
/// naming `registrar` as the certificate it saw, made at `created`.
fn pledge_request(
    birth: &certs::Birth,
    key: &certs::KeyPair,
    serial: &str,
    registrar: &[u8],
    created: u64,
) -> Vec<u8> {
    let request = protocol::voucher::VoucherRequest {
        created_on: created,
        assertion: protocol::voucher::Assertion::Proximity,
        serial_number: serial.into(),
        nonce: vec![5; 16],
        proximity_registrar_cert: registrar.to_vec(),
        session_binding: Vec::new(),
    };
    certs::cms::sign(
        certs::brski::OID_JSON_VOUCHER,
        &certs::brski::request_json(&request),
        key,
        &birth.identity.idevid,
        &[],
        now(),
    )
    .unwrap()
}

/// BRSKI requestvoucher refuses what RFC 8995 and HTTP say to refuse, and a refusal changes
/// nothing: another media type (415), too large (413), not CMS (400), signed by a key that
/// is not the IDevID's (400), for another serial (400), made long ago (400), naming another
/// registrar (400), asking CMS when a COSE voucher was imported (400), no client certificate
/// (401). Then the same device's good request gets its CMS voucher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_voucher_requests_are_refused_with_their_status_and_change_nothing() {
    let world = World::new().await;
    let service = world.server.service();
    service
        .import_anchor(&anchor_import(&world.manufacturer))
        .await
        .unwrap();
    let voucher = |serial: &str, encoding| {
        world
            .manufacturer
            .voucher_in(encoding, serial, &world.owner_root, now(), now() + DAY)
            .unwrap()
    };
    service
        .import_vouchers(&protocol::voucher::encode_bundle(&[
            voucher("SN-PVR", certs::brski::Encoding::Cms),
            voucher("SN-COSE", certs::brski::Encoding::Cose),
        ]))
        .await
        .unwrap();
    let (device, cose_device) = (world.device("SN-PVR"), world.device("SN-COSE"));
    let before = world.record("SN-PVR").unwrap();
    let birth = device.birth();
    let registrar =
        certs::files::read_certs(&world.data.join(onboarder::config::layout::SERVER_CERT))
            .unwrap()
            .remove(0);
    let good = pledge_request(&birth, &birth.key, "SN-PVR", &registrar, now());
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        format!("@{}", path.display())
    };
    let cert = device.identity_dir.join("idevid.pem");
    let key = device.identity_dir.join("idevid.key");
    let idevid = Some((cert.as_path(), key.as_path()));
    let post = |client, media: &str, body: &str| {
        let media = format!("Content-Type: {media}");
        let args = [
            "-H",
            &media,
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            body,
        ];
        curl(&world, "brski/requestvoucher", client, &args)
    };
    let cms = certs::brski::VOUCHER_CMS;
    let stranger_key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let other_registrar =
        certs::files::read_cert(&world.data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let cases = [
        (
            "media",
            idevid,
            "application/json",
            file("good", &good),
            415,
            "",
        ),
        (
            "large",
            idevid,
            cms,
            file("large", &vec![0x30; 100 * 1024]),
            413,
            "larger",
        ),
        (
            "garbage",
            idevid,
            cms,
            file("garbage", b"0garbage"),
            400,
            "malformed",
        ),
        (
            "signer",
            idevid,
            cms,
            file(
                "signer",
                &pledge_request(&birth, &stranger_key, "SN-PVR", &registrar, now()),
            ),
            400,
            "signature",
        ),
        (
            "serial",
            idevid,
            cms,
            file(
                "serial",
                &pledge_request(&birth, &birth.key, "SN-OTHER", &registrar, now()),
            ),
            400,
            "SN-OTHER",
        ),
        (
            "stale",
            idevid,
            cms,
            file(
                "stale",
                &pledge_request(&birth, &birth.key, "SN-PVR", &registrar, now() - DAY),
            ),
            400,
            "created",
        ),
        (
            "proximity",
            idevid,
            cms,
            file(
                "proximity",
                &pledge_request(&birth, &birth.key, "SN-PVR", &other_registrar, now()),
            ),
            400,
            "proximity",
        ),
        ("anonymous", None, cms, file("anonymous", &good), 401, ""),
    ];
    for (what, client, media, body, status, says) in cases {
        let reply = post(client, media, &body);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(reply.body.contains(says), "{what}: {}", reply.body);
        assert_eq!(world.record("SN-PVR").unwrap(), before, "{what}");
    }
    // A COSE voucher was imported for this one: a CMS request cannot be answered with it.
    let cose_birth = cose_device.birth();
    let cose_cert = cose_device.identity_dir.join("idevid.pem");
    let cose_key = cose_device.identity_dir.join("idevid.key");
    let reply = post(
        Some((cose_cert.as_path(), cose_key.as_path())),
        cms,
        &file(
            "cose",
            &pledge_request(&cose_birth, &cose_birth.key, "SN-COSE", &registrar, now()),
        ),
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("format"), "{}", reply.body);
    assert!(
        !world
            .actions("SN-PVR")
            .iter()
            .any(|a| a == "voucher-issued")
    );

    // The good request: the voucher imported for it, as CMS (binary, so curl writes it
    // itself); still nothing written.
    let answer = std::process::Command::new("curl")
        .args(["--silent", "--fail", "--cacert"])
        .arg(world.data.join(onboarder::config::layout::OWNER_ROOT))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args([
            "-H",
            &format!("Content-Type: {cms}"),
            "--data-binary",
            &file("good3", &good),
        ])
        .arg(format!(
            "https://localhost:{}/.well-known/brski/requestvoucher",
            world.server.https_addr().unwrap().port()
        ))
        .output()
        .unwrap();
    assert!(answer.status.success());
    let v = certs::brski::open_voucher(&answer.stdout, &world.manufacturer.masa_key().public_key())
        .unwrap();
    assert_eq!(v.serial_number, "SN-PVR");
    assert_eq!(world.record("SN-PVR").unwrap(), before);
    assert!(
        world
            .actions("SN-PVR")
            .iter()
            .any(|a| a == "voucher-issued")
    );
}
