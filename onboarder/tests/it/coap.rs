//! CoAP over DTLS (RFC 9148's EST-coaps) with independent clients: Debian's libcoap
//! `coap-client-openssl` and `coap-client-gnutls` discover the resources and enroll a device
//! with its IDevID as DTLS client certificate and an openssl-made CSR; `openssl verify` accepts
//! the certificate. A client certificate of no maker we know is refused in the handshake, and
//! datagrams that are not a good ClientHello make no session.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;

use onboarder::config::layout;

use crate::harness::*;

async fn world() -> World {
    World::with_config(|c| c.coap_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

fn coap_addr(world: &World) -> SocketAddr {
    world.server.coap().unwrap().local_addr().unwrap()
}

/// Runs a libcoap client (`openssl` or `gnutls` build) with `args`; returns whether it
/// succeeded, and what it printed.
fn coap_client(build: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(format!("coap-client-{build}"))
        .args(["-B", "10", "-v", "6"])
        .args(args)
        .output()
        .expect("libcoap3-bin is installed by scripts/test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An openssl-made CSR (DER) for `serial`, its key beside it.
fn openssl_csr(dir: &Path, serial: &str) -> std::path::PathBuf {
    let csr = dir.join(format!("{serial}.csr"));
    let key = dir.join(format!("{serial}.key"));
    let (ok, text) = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        p(&key),
        "-subj",
        &format!("/serialNumber={serial}/CN={serial}"),
        "-outform",
        "DER",
        "-out",
        p(&csr),
    ]);
    assert!(ok, "{text}");
    csr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_clients_discover_and_enroll_over_est_coaps() {
    let world = world().await;
    let addr = coap_addr(&world);
    let dir = tempfile::tempdir().unwrap();
    let owner_root = world.data.join(layout::OWNER_ROOT);
    for build in ["openssl", "gnutls"] {
        let serial = format!("SN-COAP-{}", build.to_uppercase());
        world.expect(&[serial.as_str()], 30).await;
        let device = world.device(&serial);
        let cert = device.identity_dir.join("idevid.pem");
        let key = device.identity_dir.join("idevid.key");
        let client = ["-c", p(&cert), "-j", p(&key), "-R", p(&owner_root)];

        // Discovery.
        let mut args = client.to_vec();
        let core = format!("coaps://{addr}/.well-known/core");
        args.extend(["-m", "get", core.as_str()]);
        let (ok, text) = coap_client(build, &args);
        assert!(ok, "{build}: {text}");
        assert!(text.contains("rt=\"ace.est.sen\""), "{build}: {text}");

        // Enrollment: an openssl CSR (286) in, PKCS#7 (281) out.
        let csr = openssl_csr(dir.path(), &serial);
        let out = dir.path().join(format!("{serial}.p7"));
        let sen = format!("coaps://{addr}/.well-known/est/sen");
        let mut args = client.to_vec();
        args.extend([
            "-m",
            "post",
            "-t",
            "286",
            "-A",
            "281",
            "-f",
            p(&csr),
            "-o",
            p(&out),
            sen.as_str(),
        ]);
        let (ok, text) = coap_client(build, &args);
        assert!(ok, "{build}: {text}");
        assert!(out.exists(), "{build}: nothing received: {text}");
        let pem = dir.path().join(format!("{serial}.pem"));
        let (ok, text) = openssl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            p(&out),
            "-print_certs",
            "-out",
            p(&pem),
        ]);
        assert!(ok, "{build}: {text}");
        let (ok, text) = openssl(&[
            "verify",
            "-CAfile",
            p(&owner_root),
            "-untrusted",
            p(&world.data.join(layout::ISSUING_CA)),
            p(&pem),
        ]);
        assert!(ok, "{build}: {text}");
        let record = world.record(&serial).unwrap();
        assert_eq!(record.certificates.len(), 1, "{build}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_certificate_is_refused_in_the_dtls_handshake() {
    let world = world().await;
    let addr = coap_addr(&world);
    let dir = tempfile::tempdir().unwrap();
    // A self-signed certificate, and a device of a maker we never imported.
    let key = dir.path().join("self.key");
    let cert = dir.path().join("self.pem");
    let (ok, text) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        p(&key),
        "-out",
        p(&cert),
        "-subj",
        "/serialNumber=SN-SELF/CN=SN-SELF",
        "-days",
        "1",
    ]);
    assert!(ok, "{text}");
    let stranger = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Strangers"),
        now(),
    )
    .unwrap();
    let other = Device::mint(&stranger, dir.path(), "SN-STRANGER");
    let other_cert = other.identity_dir.join("idevid.pem");
    let other_key = other.identity_dir.join("idevid.key");
    let owner_root = world.data.join(layout::OWNER_ROOT);
    let listener = world.server.coap().unwrap().clone();
    for (cert, key) in [(&cert, &key), (&other_cert, &other_key)] {
        let before = listener.stats.handshakes_failed.load(Ordering::SeqCst);
        let core = format!("coaps://{addr}/.well-known/core");
        let (ok, text) = coap_client(
            "openssl",
            &[
                "-B",
                "3",
                "-c",
                p(cert),
                "-j",
                p(key),
                "-R",
                p(&owner_root),
                "-m",
                "get",
                &core,
            ],
        );
        assert!(!ok || !text.contains("ace.est"), "{text}");
        assert!(
            listener.stats.handshakes_failed.load(Ordering::SeqCst) > before,
            "refused in the handshake"
        );
    }
    assert_eq!(
        world
            .server
            .service()
            .store()
            .devices(None, 10)
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_a_flood_of_client_hellos_make_no_session() {
    let world = world().await;
    let addr = coap_addr(&world);
    let listener = world.server.coap().unwrap().clone();
    // Garbage, a truncated record, a CoAP message in the clear.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for datagram in [
        &b"garbage"[..],
        &[22, 0xfe, 0xfd, 0, 0][..],
        &[0x40, 0x01, 0x00, 0x01, 0xb4, b't', b'e', b's', b't'][..],
    ] {
        socket.send_to(datagram, addr).await.unwrap();
    }
    // ClientHellos from 100 ports, 100 each: each is answered with a cookie, none makes a
    // session.
    let hello = client_hello();
    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    for _ in 0..100 {
        for s in &sockets {
            s.send_to(&hello, addr).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    eventually(30, "the flood answered", || {
        listener.stats.cookies_sent.load(Ordering::SeqCst) >= 9_000
    })
    .await;
    assert_eq!(listener.sessions(), 0);
    assert!(listener.stats.dropped.load(Ordering::SeqCst) >= 3);
    // A real device enrolls right after.
    world.expect(&["SN-COAP-AFTER"], 30).await;
    let device = world.device("SN-COAP-AFTER");
    let dir = tempfile::tempdir().unwrap();
    let csr = openssl_csr(dir.path(), "SN-COAP-AFTER");
    let out = dir.path().join("after.p7");
    let sen = format!("coaps://{addr}/.well-known/est/sen");
    let (ok, text) = coap_client(
        "openssl",
        &[
            "-c",
            p(&device.identity_dir.join("idevid.pem")),
            "-j",
            p(&device.identity_dir.join("idevid.key")),
            "-R",
            p(&world.data.join(layout::OWNER_ROOT)),
            "-m",
            "post",
            "-t",
            "286",
            "-f",
            p(&csr),
            "-o",
            p(&out),
            &sen,
        ],
    );
    assert!(ok, "{text}");
    assert!(std::fs::metadata(&out).unwrap().len() > 100);
}

/// A DTLS 1.2 ClientHello without a cookie, as a client's first flight.
fn client_hello() -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0xc0, 0x2b, 1, 0]);
    let len = (body.len() as u32).to_be_bytes();
    let mut hs = vec![1, len[1], len[2], len[3], 0, 0, 0, 0, 0];
    hs.extend_from_slice(&len[1..]);
    hs.extend_from_slice(&body);
    let rlen = (hs.len() as u16).to_be_bytes();
    let mut out = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&rlen);
    out.extend_from_slice(&hs);
    out
}
