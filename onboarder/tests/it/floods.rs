//! Floods against the server (a child process, so its memory is its own): QUIC handshakes
//! from 2,000 source addresses that never answer (as forged sources cannot), and many idle
//! connections from one address. A real device onboards during each, and what it took and
//! what the server held are printed.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::rollover_kill::{api, fleet};

/// The server's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `n` first datagrams of QUIC connection attempts (Initials carrying a device's TLS
/// ClientHello, each with its own connection ID), caught on a socket that never answers.
async fn initials(device: &Device, n: usize) -> Vec<Vec<u8>> {
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = catcher.local_addr().unwrap();
    let endpoint = device_agent::transport::quic::endpoint_for(to).unwrap();
    let config = idevid_config(device);
    let mut attempts = Vec::new();
    let mut caught = std::collections::HashSet::new();
    let mut buf = vec![0u8; 2048];
    while caught.len() < n {
        attempts.push(
            endpoint
                .connect_with(config.clone(), to, "onboarder.invalid")
                .unwrap(),
        );
        let (len, _) = tokio::time::timeout(Duration::from_secs(10), catcher.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        caught.insert(buf[..len].to_vec());
    }
    endpoint.close(0u32.into(), b"");
    caught.into_iter().collect()
}

/// Mints a device, imports its voucher and onboards it; returns how long onboarding took.
async fn onboard_one(fleet: &crate::rollover_kill::Fleet, serial: &str) -> Duration {
    let device = Device::mint(&fleet.maker, &fleet.root, serial);
    let owner_root =
        certs::files::read_cert(&fleet.data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let voucher = fleet
        .maker
        .voucher(serial, &owner_root, now(), now() + DAY)
        .unwrap();
    api(&fleet.client, move |c| {
        c.import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
            .unwrap()
    })
    .await;
    let endpoint = device_agent::transport::quic::endpoint_for(fleet.quic).unwrap();
    let agent = device.agent(fleet.quic, &endpoint);
    let start = Instant::now();
    agent
        .retrying(Duration::from_secs(60), || agent.onboard())
        .await
        .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_from_forged_addresses_is_answered_with_retries() {
    let mut fleet = fleet("Flood Devices", "SN-FL", 0).await;
    let pid = fleet.child.id();
    let quiet = onboard_one(&fleet, "SN-FL-QUIET").await;
    let rss_before = rss_kib(pid);

    // 2,000 source addresses (127.0.X.Y), each sending a real device's connection attempt
    // (its own Initial) and never reading what comes back, as a forged source cannot.
    let device = Device::mint(&fleet.maker, &fleet.root, "SN-FL-X");
    let initials = initials(&device, 2_000).await;
    let server = fleet.quic;
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        for (i, initial) in initials.iter().enumerate() {
            let (x, y) = (1 + (i / 250) as u8, 1 + (i % 250) as u8);
            let from = SocketAddr::from((Ipv4Addr::new(127, 0, x, y), 40_000));
            let Ok(socket) = std::net::UdpSocket::bind(from) else {
                continue;
            };
            if socket.send_to(initial, server).is_ok() {
                sent += 1;
            }
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        sent
    });
    // A real device onboards in the middle of it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = onboard_one(&fleet, "SN-FL-DURING").await;
    let sent = flood.await.unwrap();
    let mut rss_peak = rss_kib(pid);
    let stats = api(&fleet.client, |c| c.stats().unwrap()).await;
    // Memory comes back once the attempts time out.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rss_after = rss_kib(pid);
    while rss_after > rss_before + 64 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_after = rss_kib(pid);
        rss_peak = rss_peak.max(rss_after);
    }
    eprintln!(
        "QUIC flood: {sent} connection attempts from as many addresses; {} answered with a Retry, {} refused; \
         a real onboarding took {:.0} ms during it ({:.0} ms before); server resident \
         {} MiB before, {} MiB at the peak, {} MiB after",
        stats.metrics.handshakes_retried,
        stats.metrics.connections_refused,
        during.as_secs_f64() * 1e3,
        quiet.as_secs_f64() * 1e3,
        rss_before / 1024,
        rss_peak / 1024,
        rss_after / 1024
    );
    assert!(sent >= 1_900, "{sent} sent");
    // Past 256 handshakes in progress, attempts from unproven addresses get a Retry.
    assert!(
        stats.metrics.handshakes_retried >= 500,
        "{:?}",
        stats.metrics
    );
    assert!(during < Duration::from_secs(10), "{during:?}");
    assert!(
        rss_peak < rss_before + 256 * 1024,
        "{rss_before} KiB before, {rss_peak} KiB at the peak"
    );
    // The device onboarded during the flood is active.
    let view = api(&fleet.client, |c| c.device("SN-FL-DURING").unwrap()).await;
    assert_eq!(view.state, onboarder::core::DeviceState::Active);
    fleet.child.kill().unwrap();
    fleet.child.wait().unwrap();
}

/// A TLS client that presents `device`'s IDevID and takes any server (as a pledge does before
/// its voucher), speaking HTTP/1.1.
fn tls_client(device: &Device) -> tokio_rustls::TlsConnector {
    let birth = device.birth();
    let key: std::sync::Arc<dyn device_agent::platform::DeviceKey> = std::sync::Arc::new(birth.key);
    let mut tls = device_agent::transport::quic::provisional_tls(
        std::slice::from_ref(&birth.identity.idevid),
        key,
    )
    .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
}

/// Reads until the server closes; what it sent, and when it closed (since `start`).
async fn until_closed(
    mut stream: impl tokio::io::AsyncRead + Unpin,
    start: Instant,
) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut got)).await;
    (got, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_stalled_https_clients_are_cut_and_devices_still_onboard() {
    use tokio::io::AsyncWriteExt;
    let world = World::new().await;
    let https = world.server.https_addr().unwrap();
    world.expect(&["SN-SLOW-CLIENT", "SN-HTTPS-REAL"], 30).await;
    let slow = world.device("SN-SLOW-CLIENT");
    let connector = tls_client(&slow);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let start = Instant::now();
    let mut clients = Vec::new();
    // 100 connections that never begin their TLS handshake.
    for _ in 0..100 {
        let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
        clients.push(("no handshake", tokio::spawn(until_closed(tcp, start))));
    }
    // 50 that send half a request line and stop.
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        tls.write_all(b"POST /.well-known/est/simpleenroll HT")
            .await
            .unwrap();
        clients.push(("half a header", tokio::spawn(until_closed(tls, start))));
    }
    // 50 that announce a 4 KiB body and send 16 bytes of it.
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
        tls.write_all(
            b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/pkcs10\r\nContent-Length: 4096\r\n\r\nMIIBIjANBgkqhkiG",
        )
        .await
        .unwrap();
        clients.push(("a trickled body", tokio::spawn(until_closed(tls, start))));
    }
    // One that sends a body larger than any route takes.
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut big = connector.connect(name.clone(), tcp).await.unwrap();
    big.write_all(
        b"POST /.well-known/onboarder/request HTTP/1.1\r\nHost: localhost\r\n\
          Content-Type: application/cbor\r\nContent-Length: 1048576\r\n\r\n",
    )
    .await
    .unwrap();
    let _ = big.write_all(&vec![0u8; 1 << 20]).await;
    let (answer, _) = until_closed(big, start).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A device whose network blocks UDP onboards over HTTPS while they hang.
    let real = world.device("SN-HTTPS-REAL");
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let agent = real.agent_with(
        blackhole.local_addr().unwrap(),
        &world.endpoint,
        device_agent::AgentOptions {
            clock: world.clock.clone(),
            https_url: Some(format!("https://localhost:{}", https.port())),
            transport: device_agent::transport::Transport::Https,
            ..fast_options()
        },
    );
    let began = Instant::now();
    agent.onboard().await.unwrap();
    let onboarding = began.elapsed();
    assert_eq!(
        world.record("SN-HTTPS-REAL").unwrap().state,
        onboarder::core::DeviceState::Active
    );

    let mut cut: std::collections::BTreeMap<&str, (Duration, Duration, usize)> = Default::default();
    for (kind, client) in clients {
        let (got, after) = client.await.unwrap();
        let text = String::from_utf8_lossy(&got);
        if kind == "a trickled body" {
            assert!(text.starts_with("HTTP/1.1 408"), "{kind}: {text}");
        }
        let e = cut
            .entry(kind)
            .or_insert((Duration::MAX, Duration::ZERO, 0));
        e.0 = e.0.min(after);
        e.1 = e.1.max(after);
        e.2 += 1;
    }
    for (kind, (first, last, n)) in &cut {
        eprintln!(
            "HTTPS flood: {n} clients with {kind} cut after {:.1}-{:.1} s",
            first.as_secs_f64(),
            last.as_secs_f64()
        );
    }
    eprintln!(
        "HTTPS flood: a real onboarding over HTTPS took {:.0} ms during it",
        onboarding.as_secs_f64() * 1e3
    );
    // Cut by the handshake and header deadline (10 s) and the body deadline (20 s), not by
    // the test's own 60 s.
    let within = |kind: &str, limit: Duration| cut[kind].1 < limit + Duration::from_secs(5);
    assert!(within("no handshake", Duration::from_secs(10)), "{cut:?}");
    assert!(within("half a header", Duration::from_secs(10)), "{cut:?}");
    assert!(
        within("a trickled body", onboarder::transport::https::BODY_TIMEOUT),
        "{cut:?}"
    );
    assert!(onboarding < Duration::from_secs(10), "{onboarding:?}");
}

/// Many idle connections: one device's credentials open 40 operational sessions, and each
/// new one evicts the one before; one address opens connections up to its limit and no
/// further (an agent there hears "busy" and backs off accordingly), while a device from
/// another address still onboards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_bounded_per_device_and_per_address() {
    const PER_ADDRESS: usize = 30;
    let world = World::with_config(|c| {
        c.limits.max_connections_per_address = PER_ADDRESS;
        c.limits.max_connections = 100;
    })
    .await;
    world.expect(&["SN-IDLE", "SN-OTHER-ADDRESS"], 30).await;
    let device = world.device("SN-IDLE");
    world.agent(&device).onboard().await.unwrap();
    let hello = protocol::message::Request::Hello(protocol::message::Hello {
        agent_version: "test".into(),
        firmware_version: "1.0.0".into(),
        firmware_sequence: 0,
        class_id: String::new(),
        hardware: Default::default(),
        anchors: None,
    });
    let mut sessions = Vec::new();
    for _ in 0..40 {
        let session = world.ldevid_session(&device).await;
        session.exchange(&hello).await.unwrap();
        sessions.push(session);
    }
    // Each session was closed by the next: one is left.
    let last = sessions.pop().unwrap();
    for s in &sessions {
        let why = tokio::time::timeout(Duration::from_secs(10), s.closed())
            .await
            .expect("an older session left open");
        assert!(why.contains("replaced by a newer session"), "{why}");
    }
    assert!(
        last.exchange(&hello).await.is_ok(),
        "the newest session serves"
    );
    assert!(world.server.sessions().is_connected(&world.id("SN-IDLE")));

    // One address: connections up to its limit (the IDevID's onboarding connections, which
    // are not sessions), the next refused before any handshake.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..PER_ADDRESS + 10 {
        match tokio::time::timeout(Duration::from_secs(5), world.try_raw_connection(&device)).await
        {
            Ok(Ok(conn)) => held.push(conn),
            _ => refused += 1,
        }
    }
    let stats = world.server.service().metrics().snapshot();
    eprintln!(
        "idle connections: 39 older sessions of one device evicted; from one address {} held, \
         {refused} refused ({} counted)",
        held.len(),
        stats.connections_refused
    );
    assert!(held.len() < PER_ADDRESS, "{} held", held.len());
    assert!(refused >= 10 && stats.connections_refused >= 10);
    // The agent takes that refusal as a busy server: it tries again, but not before
    // `Backoff::busy` (1 s in these tests) where other connection trouble waits 100 ms first.
    let agent = world.agent(&device);
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let busy = agent
        .retrying(Duration::from_secs(3), || {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            agent.connect()
        })
        .await
        .unwrap_err();
    assert!(matches!(busy, device_agent::AgentError::Busy(_)), "{busy}");
    let attempts = attempts.into_inner();
    assert!((2..=3).contains(&attempts), "{attempts} attempts in 3 s");
    // Another address is not affected.
    let other = world.device("SN-OTHER-ADDRESS");
    let endpoint = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let began = Instant::now();
    other
        .agent(world.server.quic_addr(), &endpoint)
        .onboard()
        .await
        .unwrap();
    eprintln!(
        "idle connections: a device from another address onboarded in {:.0} ms",
        began.elapsed().as_secs_f64() * 1e3
    );
}
