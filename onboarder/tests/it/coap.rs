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

pub(crate) async fn world() -> World {
    World::with_config(|c| c.coap_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

pub(crate) fn coap_addr(world: &World) -> SocketAddr {
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
pub fn openssl_csr(dir: &Path, serial: &str) -> std::path::PathBuf {
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

/// libcoap's `build` enrolls `device` at `url` with the DER CSR `csr`, the answer to `out`,
/// trusting `root`, waiting at most `wait` seconds.
pub fn coap_enroll(
    build: &str,
    device: &Device,
    root: &Path,
    csr: &Path,
    out: &Path,
    url: &str,
    wait: u32,
) -> (bool, String) {
    let wait = wait.to_string();
    let cert = device.identity_dir.join("idevid.pem");
    let key = device.identity_dir.join("idevid.key");
    coap_client(
        build,
        &[
            "-B",
            &wait,
            "-c",
            p(&cert),
            "-j",
            p(&key),
            "-R",
            p(root),
            "-m",
            "post",
            "-t",
            "286",
            "-A",
            "281",
            "-f",
            p(csr),
            "-o",
            p(out),
            url,
        ],
    )
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
        let (ok, text) = coap_enroll(build, &device, &owner_root, &csr, &out, &sen, 10);
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
        // coap-client may give up before the server has read its last flight.
        eventually(5, "refused in the handshake", || {
            listener.stats.handshakes_failed.load(Ordering::SeqCst) > before
        })
        .await;
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
    assert!(
        world
            .server
            .service()
            .metrics()
            .snapshot()
            .handshakes_refused
            >= 2
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
    // ClientHellos from 1,000 addresses (127.0.X.Y), 10 each: each is answered with a cookie
    // (stateless), none makes a session. A real device enrolls in the middle of it.
    let hello = client_hello();
    let flood = tokio::spawn(async move {
        let mut sockets = Vec::new();
        for i in 0..1_000u32 {
            let from =
                std::net::SocketAddr::from(([127, 0, 4 + (i / 250) as u8, 1 + (i % 250) as u8], 0));
            sockets.push(tokio::net::UdpSocket::bind(from).await.unwrap());
        }
        for _ in 0..10 {
            for s in &sockets {
                s.send_to(&hello, addr).await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    eventually(30, "the flood under way", || {
        listener.stats.cookies_sent.load(Ordering::SeqCst) >= 1_000
    })
    .await;
    assert_eq!(listener.sessions(), 0);
    world.expect(&["SN-COAP-AFTER"], 30).await;
    let device = world.device("SN-COAP-AFTER");
    let dir = tempfile::tempdir().unwrap();
    let csr = openssl_csr(dir.path(), "SN-COAP-AFTER");
    let out = dir.path().join("after.p7");
    let sen = format!("coaps://{addr}/.well-known/est/sen");
    let root = world.data.join(layout::OWNER_ROOT);
    let began = std::time::Instant::now();
    let (ok, text) = tokio::task::block_in_place(|| {
        coap_enroll("openssl", &device, &root, &csr, &out, &sen, 10)
    });
    let took = began.elapsed();
    let cookies_then = listener.stats.cookies_sent.load(Ordering::SeqCst);
    flood.await.unwrap();
    eventually(30, "the flood answered", || {
        listener.stats.cookies_sent.load(Ordering::SeqCst) >= 9_000
    })
    .await;
    assert!(ok, "{text}");
    assert!(std::fs::metadata(&out).unwrap().len() > 100);
    assert!(listener.stats.dropped.load(Ordering::SeqCst) >= 3);
    // Only the real device ever had a session.
    assert!(listener.sessions() <= 1, "{}", listener.sessions());
    eprintln!(
        "DTLS flood: {} ClientHellos answered with a cookie, no session; a real enrollment \
         (libcoap's coap-client) took {:.0} ms during it ({cookies_then} cookies sent by then)",
        listener.stats.cookies_sent.load(Ordering::SeqCst),
        took.as_secs_f64() * 1e3
    );
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

/// A UDP relay between one client and `server` that drops about one datagram in five in each
/// direction (a fixed pseudo-random sequence, so a run is repeatable in what it drops).
async fn lossy_relay(server: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    lossy_relay_with(server, Default::default()).await
}

/// [`lossy_relay`], which drops everything while `cut` is set. Its client is the last address
/// that sent to it (a device that reconnects comes from a new port).
pub(crate) async fn lossy_relay_with(
    server: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut state: u32 = 0x2545_f491;
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let dropped = state.is_multiple_of(5);
            let to = if from == server {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server
            };
            if !dropped && !cut.load(Ordering::SeqCst) {
                let _ = socket.send_to(&buf[..n], to).await;
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_completes_through_a_link_that_loses_a_fifth_of_its_datagrams() {
    let world = world().await;
    let (relay, task) = lossy_relay(coap_addr(&world)).await;
    world.expect(&["SN-COAP-LOSSY"], 30).await;
    let device = world.device("SN-COAP-LOSSY");
    let dir = tempfile::tempdir().unwrap();
    let csr = openssl_csr(dir.path(), "SN-COAP-LOSSY");
    let out = dir.path().join("lossy.p7");
    let sen = format!("coaps://{relay}/.well-known/est/sen");
    let owner_root = world.data.join(layout::OWNER_ROOT);
    let (ok, text) = tokio::task::spawn_blocking(move || {
        coap_enroll("openssl", &device, &owner_root, &csr, &out, &sen, 90)
    })
    .await
    .unwrap();
    assert!(ok, "{text}");
    let record = world.record("SN-COAP-LOSSY").unwrap();
    assert_eq!(
        record.certificates.len(),
        1,
        "one certificate, however many retransmissions"
    );
    task.abort();
}

/// A DTLS client of our own for the refusal tests (OpenSSL over a connected UDP socket),
/// sending CoAP messages as built here, good or bad. The socket sends its first `.1`
/// datagrams and drops the rest without a word (`usize::MAX`: all): a client behind one that
/// sends two begins a session (its ClientHello, then the one with our cookie) and never
/// finishes it.
struct Udp(std::net::UdpSocket, usize);

impl std::io::Read for Udp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
}

impl std::io::Write for Udp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.1 == 0 {
            return Ok(buf.len());
        }
        self.1 -= 1;
        self.0.send(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn dtls_client(addr: SocketAddr, device: &Device, root: &Path) -> openssl::ssl::SslStream<Udp> {
    dtls_client_with(
        addr,
        &device.identity_dir.join("idevid.pem"),
        &device.identity_dir.join("idevid.key"),
        root,
    )
}

fn dtls_client_with(
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    root: &Path,
) -> openssl::ssl::SslStream<Udp> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    dtls_handshake(dtls_ssl(cert, key, root), socket, addr)
}

/// A DTLS client's SSL with `cert` and `key`, trusting `root`.
fn dtls_ssl(cert: &Path, key: &Path, root: &Path) -> openssl::ssl::Ssl {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    let mut b = SslConnector::builder(SslMethod::dtls()).unwrap();
    b.set_certificate_file(cert, SslFiletype::PEM).unwrap();
    b.set_private_key_file(key, SslFiletype::PEM).unwrap();
    b.set_ca_file(root).unwrap();
    let mut ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("127.0.0.1")
        .unwrap();
    ssl.set_mtu(1152).unwrap();
    ssl
}

fn dtls_handshake(
    ssl: openssl::ssl::Ssl,
    socket: std::net::UdpSocket,
    addr: SocketAddr,
) -> openssl::ssl::SslStream<Udp> {
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut stream = openssl::ssl::SslStream::new(ssl, Udp(socket, usize::MAX)).unwrap();
    stream.connect().unwrap();
    stream
}

/// Sends `message` and reads the answer, if one comes within the socket's timeout.
fn exchange(
    stream: &mut openssl::ssl::SslStream<Udp>,
    message: &[u8],
) -> Option<coap_lite::Packet> {
    stream.ssl_write(message).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.ssl_read(&mut buf).ok()?;
    coap_lite::Packet::from_bytes(&buf[..n]).ok()
}

fn coap_request(
    id: u16,
    method: coap_lite::RequestType,
    path: &str,
    format: Option<u8>,
    body: &[u8],
) -> coap_lite::Packet {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
    let mut p = Packet::new();
    p.header.set_type(MessageType::Confirmable);
    p.header.message_id = id;
    p.header.code = MessageClass::Request(method);
    p.set_token(vec![id as u8]);
    for s in path.trim_start_matches('/').split('/') {
        p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
    }
    if let Some(f) = format {
        p.add_option(CoapOption::ContentFormat, vec![f]);
    }
    p.payload = body.to_vec();
    p
}

fn code(p: &coap_lite::Packet) -> coap_lite::ResponseType {
    match p.header.code {
        coap_lite::MessageClass::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_coap_requests_are_refused_with_their_code_and_change_nothing() {
    use coap_lite::{CoapOption, RequestType, ResponseType};
    let world = world().await;
    let addr = coap_addr(&world);
    world.expect(&["SN-COAP-BAD"], 30).await;
    let device = world.device("SN-COAP-BAD");
    let root = world.data.join(layout::OWNER_ROOT);
    let before = world.record("SN-COAP-BAD").unwrap();
    let fresh = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let good_csr = certs::csr::build_birth_csr("SN-COAP-BAD", &fresh).unwrap();
    let other_csr = certs::csr::build_birth_csr("SN-SOMEONE-ELSE", &fresh).unwrap();
    let refusals = tokio::task::spawn_blocking(move || {
        let mut s = dtls_client(addr, &device, &root);
        let mut got = Vec::new();
        // An unknown critical option: 4.02.
        let mut p = coap_request(1, RequestType::Get, "/.well-known/core", None, b"");
        p.add_option(CoapOption::Unknown(65001), vec![1]);
        got.push((
            "critical option",
            code(&exchange(&mut s, &p.to_bytes().unwrap()).unwrap()),
        ));
        // A truncated message gets nothing, and the session goes on.
        let whole = coap_request(2, RequestType::Get, "/.well-known/core", None, b"");
        let bytes = whole.to_bytes().unwrap();
        assert!(
            exchange(&mut s, &bytes[..3]).is_none(),
            "no answer to a truncated message"
        );
        got.push((
            "after a truncated one",
            code(&exchange(&mut s, &bytes).unwrap()),
        ));
        // Another content format: 4.15.
        let p = coap_request(
            3,
            RequestType::Post,
            "/.well-known/est/sen",
            Some(60),
            &good_csr,
        );
        got.push((
            "content format",
            code(&exchange(&mut s, &p.to_bytes().unwrap()).unwrap()),
        ));
        // Not a CSR, and a CSR for another device: 4.00.
        let p = coap_request(4, RequestType::Post, "/.well-known/est/sen", Some(0), b"");
        let mut p = p;
        p.clear_option(CoapOption::ContentFormat);
        p.add_option(CoapOption::ContentFormat, vec![0x01, 0x1e]); // 286
        p.payload = b"not DER".to_vec();
        got.push((
            "not a CSR",
            code(&exchange(&mut s, &p.to_bytes().unwrap()).unwrap()),
        ));
        p.header.message_id = 5;
        p.payload = other_csr.clone();
        got.push((
            "another subject",
            code(&exchange(&mut s, &p.to_bytes().unwrap()).unwrap()),
        ));
        // Block1 that skips a block, then one that repeats one: 4.08.
        let block = |id: u16, num: u32, more: bool| {
            let mut p = coap_request(
                id,
                RequestType::Post,
                "/.well-known/est/sen",
                None,
                &[7; 16],
            );
            p.add_option(CoapOption::ContentFormat, vec![0x01, 0x1e]);
            let v = (num << 4) | (u32::from(more) << 3);
            p.add_option(CoapOption::Block1, vec![v as u8]);
            p.to_bytes().unwrap()
        };
        assert_eq!(
            code(&exchange(&mut s, &block(6, 0, true)).unwrap()),
            ResponseType::Continue
        );
        got.push((
            "a skipped block",
            code(&exchange(&mut s, &block(7, 2, true)).unwrap()),
        ));
        assert_eq!(
            code(&exchange(&mut s, &block(8, 0, true)).unwrap()),
            ResponseType::Continue
        );
        assert_eq!(
            code(&exchange(&mut s, &block(9, 1, true)).unwrap()),
            ResponseType::Continue
        );
        got.push((
            "a repeated block",
            code(&exchange(&mut s, &block(10, 1, true)).unwrap()),
        ));
        // A body past the limit, in blocks of 1024: 4.13.
        let mut last = ResponseType::Continue;
        for num in 0..80u32 {
            let mut p = coap_request(
                100 + num as u16,
                RequestType::Post,
                "/.well-known/est/sen",
                None,
                &[7; 1024],
            );
            p.add_option(CoapOption::ContentFormat, vec![0x01, 0x1e]);
            let v = (num << 4) | 0x8 | 6;
            let bytes = v.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            p.add_option(CoapOption::Block1, bytes[skip..].to_vec());
            last = code(&exchange(&mut s, &p.to_bytes().unwrap()).unwrap());
            if last != ResponseType::Continue {
                break;
            }
        }
        got.push(("too large", last));
        got
    })
    .await
    .unwrap();
    let expected = [
        ("critical option", ResponseType::BadOption),
        ("after a truncated one", ResponseType::Content),
        ("content format", ResponseType::UnsupportedContentFormat),
        ("not a CSR", ResponseType::BadRequest),
        ("another subject", ResponseType::BadRequest),
        ("a skipped block", ResponseType::RequestEntityIncomplete),
        ("a repeated block", ResponseType::RequestEntityIncomplete),
        ("too large", ResponseType::RequestEntityTooLarge),
    ];
    assert_eq!(refusals, expected);
    assert_eq!(world.record("SN-COAP-BAD").unwrap(), before);
    // Each is counted in /v1/stats, by the transport or by the service.
    let counted: u64 = world
        .server
        .service()
        .metrics()
        .snapshot()
        .refusals
        .values()
        .sum();
    assert!(counted >= 7, "{counted} refusals counted");
}

/// Reads the next CoAP message, if one comes within the socket's timeout.
fn receive(stream: &mut openssl::ssl::SslStream<Udp>) -> Option<coap_lite::Packet> {
    let mut buf = vec![0u8; 4096];
    let n = stream.ssl_read(&mut buf).ok()?;
    coap_lite::Packet::from_bytes(&buf[..n]).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_onboards_over_coap_and_takes_a_command_it_observes() {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
    use protocol::message::{
        self, Command as Order, CommandReply, Hello, Request as Req, Response, Status,
    };
    let world = world().await;
    let addr = coap_addr(&world);
    world.expect(&["SN-COAP-DOOR"], 30).await;
    let device = world.device("SN-COAP-DOOR");
    let birth = device.birth();
    let root = world.data.join(layout::OWNER_ROOT);
    let registrar = certs::files::read_certs(&world.data.join(layout::SERVER_CERT))
        .unwrap()
        .remove(0);
    let dir = tempfile::tempdir().unwrap();
    let (ldevid_cert, ldevid_key) = (dir.path().join("ldevid.pem"), dir.path().join("ldevid.key"));
    let id = world.id("SN-COAP-DOOR");
    let (cert, key) = (ldevid_cert.clone(), ldevid_key.clone());
    let door = |s: &mut openssl::ssl::SslStream<Udp>, mid: u16, request: &Req| -> Response {
        let p = coap_request(
            mid,
            RequestType::Post,
            "/.well-known/onboarder/request",
            Some(60),
            &message::encode(request),
        );
        let mut answer = exchange(s, &p.to_bytes().unwrap()).unwrap();
        assert_eq!(code(&answer), ResponseType::Changed);
        // A long answer comes in Block2 pieces: ask for the next until the last.
        let mut body = answer.payload.clone();
        let mut num = 0u32;
        while answer
            .get_option(CoapOption::Block2)
            .and_then(|v| v.front())
            .and_then(|v| v.last())
            .is_some_and(|last| last & 0x8 != 0)
        {
            num += 1;
            let mut next = coap_request(
                mid + 1000 * num as u16,
                RequestType::Post,
                "/.well-known/onboarder/request",
                Some(60),
                b"",
            );
            next.add_option(CoapOption::Block2, vec![((num << 4) | 6) as u8]);
            answer = exchange(s, &next.to_bytes().unwrap()).unwrap();
            body.extend_from_slice(&answer.payload);
        }
        message::decode(&body, message::MAX_RESPONSE).unwrap()
    };
    let onboarding = tokio::task::spawn_blocking(move || {
        // Onboarding with the IDevID: voucher, its status, enrollment, its status.
        let mut s = dtls_client(addr, &device, &root);
        let request = device_agent::machine::onboarding::voucher_request(
            &birth.identity,
            &[4; 16],
            &registrar,
            &[],
            now(),
        )
        .sign(&birth.key)
        .unwrap();
        assert!(matches!(
            door(&mut s, 1, &Req::VoucherRequest(request)),
            Response::Voucher(_)
        ));
        let ok = Status {
            ok: true,
            reason: None,
        };
        assert!(matches!(
            door(&mut s, 2, &Req::VoucherStatus(ok.clone())),
            Response::Ack
        ));
        let key_pair = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
        let csr = certs::csr::build_birth_csr("SN-COAP-DOOR", &key_pair).unwrap();
        let Response::Enrolled(enrolled) = door(&mut s, 3, &Req::enroll(csr)) else {
            panic!("not enrolled");
        };
        std::fs::write(&cert, certs::files::cert_pem(&enrolled.certificate)).unwrap();
        std::fs::write(&key, key_pair.to_pem()).unwrap();
        assert!(matches!(
            door(&mut s, 4, &Req::EnrollStatus(ok)),
            Response::Ack
        ));
        // With the LDevID: observing commands before the hello is refused; the hello opens
        // the session; then the observation is taken.
        let mut s = dtls_client_with(addr, &cert, &key, &root);
        let mut observe = coap_request(
            10,
            RequestType::Get,
            "/.well-known/onboarder/commands",
            None,
            b"",
        );
        observe.add_option(CoapOption::Observe, vec![]);
        let refused = exchange(&mut s, &observe.to_bytes().unwrap()).unwrap();
        assert_eq!(code(&refused), ResponseType::Forbidden);
        let hello = Req::Hello(Hello {
            agent_version: "coap-test".into(),
            firmware_version: "1.0.0".into(),
            firmware_sequence: 0,
            class_id: String::new(),
            hardware: Default::default(),
            anchors: None,
        });
        assert!(matches!(door(&mut s, 11, &hello), Response::Welcome(_)));
        observe.header.message_id = 12;
        let taken = exchange(&mut s, &observe.to_bytes().unwrap()).unwrap();
        assert_eq!(code(&taken), ResponseType::Content);
        assert!(taken.get_option(CoapOption::Observe).is_some());
        // Observing again (a device that restarted its observation) replaces the observation:
        // notifications carry the new token.
        let mut again = coap_request(
            14,
            RequestType::Get,
            "/.well-known/onboarder/commands",
            None,
            b"",
        );
        again.add_option(CoapOption::Observe, vec![]);
        let taken = exchange(&mut s, &again.to_bytes().unwrap()).unwrap();
        assert_eq!(code(&taken), ResponseType::Content);
        s
    })
    .await
    .unwrap();
    assert_eq!(
        world.record("SN-COAP-DOOR").unwrap().state,
        onboarder::core::DeviceState::Active
    );
    assert!(world.server.sessions().is_connected(&id));

    // A ping pushed to the session arrives as a notification; the device acknowledges it and
    // posts its reply, which the push returns.
    let sessions = world.server.sessions().clone();
    let pushed = tokio::spawn(async move { sessions.push(&id, &Order::Ping { nonce: 77 }).await });
    let mut s = onboarding;
    tokio::task::spawn_blocking(move || {
        let notification = loop {
            if let Some(p) = receive(&mut s) {
                break p;
            }
        };
        assert_eq!(notification.header.get_type(), MessageType::Confirmable);
        assert_eq!(
            notification.get_token(),
            &[14],
            "the latest observation's token"
        );
        let command: Order = message::decode(&notification.payload, message::MAX_RESPONSE).unwrap();
        assert_eq!(command, Order::Ping { nonce: 77 });
        let mut ack = Packet::new();
        ack.header.set_type(MessageType::Acknowledgement);
        ack.header.message_id = notification.header.message_id;
        ack.header.code = MessageClass::Empty;
        s.ssl_write(&ack.to_bytes().unwrap()).unwrap();
        let reply = coap_request(
            13,
            RequestType::Post,
            "/.well-known/onboarder/reply",
            Some(60),
            &message::encode(&CommandReply::Pong { nonce: 77 }),
        );
        let answer = exchange(&mut s, &reply.to_bytes().unwrap()).unwrap();
        assert_eq!(code(&answer), ResponseType::Changed);
    })
    .await
    .unwrap();
    assert_eq!(
        pushed.await.unwrap().unwrap(),
        CommandReply::Pong { nonce: 77 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_restarts_on_the_same_port_gets_a_new_session() {
    use coap_lite::{RequestType, ResponseType};
    let world = world().await;
    let addr = coap_addr(&world);
    world.expect(&["SN-COAP-AGAIN"], 30).await;
    let device = world.device("SN-COAP-AGAIN");
    let root = world.data.join(layout::OWNER_ROOT);
    let listener = world.server.coap().unwrap().clone();
    tokio::task::spawn_blocking(move || {
        let first = dtls_client(addr, &device, &root);
        let port = first.get_ref().0.local_addr().unwrap();
        drop(first); // the device restarts: no close_notify, the same port
        let socket = std::net::UdpSocket::bind(port).unwrap();
        let ssl = dtls_ssl(
            &device.identity_dir.join("idevid.pem"),
            &device.identity_dir.join("idevid.key"),
            &root,
        );
        let mut again = dtls_handshake(ssl, socket, addr);
        let p = coap_request(1, RequestType::Get, "/.well-known/core", None, b"");
        let answer = exchange(&mut again, &p.to_bytes().unwrap()).unwrap();
        assert_eq!(code(&answer), ResponseType::Content);
    })
    .await
    .unwrap();
    assert_eq!(
        listener.sessions(),
        1,
        "the new session replaced the old one"
    );
}

/// Handshakes in progress from one address are bounded (a sixteenth of the connections an
/// address may hold); sessions that opened do not count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_at_once_from_one_address_are_bounded_and_open_sessions_do_not_count() {
    let world = World::with_config(|c| {
        c.coap_listen = Some("127.0.0.1:0".parse().unwrap());
        c.limits.max_connections_per_address = 32; // two handshakes at once
    })
    .await;
    let addr = coap_addr(&world);
    world.expect(&["SN-COAP-BUSY"], 30).await;
    let device = world.device("SN-COAP-BUSY");
    let root = world.data.join(layout::OWNER_ROOT);
    let listener = world.server.coap().unwrap().clone();
    let dropped = || listener.stats.dropped.load(Ordering::SeqCst);
    let (open, sessions_open, _held) = tokio::task::spawn_blocking({
        let listener = listener.clone();
        move || {
            // Three sessions that open, one after the other: none is refused.
            let open: Vec<_> = (0..3).map(|_| dtls_client(addr, &device, &root)).collect();
            let sessions = listener.sessions();
            // Three that begin and stall: the first two are taken, the third is not.
            let mut held = Vec::new();
            for _ in 0..3 {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(addr).unwrap();
                socket
                    .set_read_timeout(Some(std::time::Duration::from_millis(300)))
                    .unwrap();
                let ssl = dtls_ssl(
                    &device.identity_dir.join("idevid.pem"),
                    &device.identity_dir.join("idevid.key"),
                    &root,
                );
                let mut stream = openssl::ssl::SslStream::new(ssl, Udp(socket, 2)).unwrap();
                assert!(stream.connect().is_err(), "a muted client cannot finish");
                held.push(stream);
            }
            (open, sessions, held)
        }
    })
    .await
    .unwrap();
    assert_eq!(open.len(), 3);
    assert_eq!(sessions_open, 3);
    eventually(5, "the third stalled handshake dropped", || dropped() >= 1).await;
    assert_eq!(listener.sessions(), 5, "three open, two handshaking");
}
