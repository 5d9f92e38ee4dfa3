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
