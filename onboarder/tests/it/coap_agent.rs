//! The agent over CoAP and DTLS (`transport = coap`), against the onboarder's CoAPS listener:
//! the whole lifecycle (onboarding, a pushed renewal, a firmware campaign, decommissioning
//! with its attestation by Block1), and onboarding and a firmware download over a link that
//! loses a fifth of its datagrams both ways and goes dark half way through the download, after
//! which the download resumes where it stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use device_agent::AgentOptions;
use device_agent::transport::Transport;
use onboarder::core::DeviceState;
use onboarder::core::record::JobState;
use protocol::attestation::WipeMethod;

use crate::coap::{coap_addr, lossy_relay_with, world};
use crate::firmware::{image, job, publish, run_campaign, trust_firmware};
use crate::harness::*;

fn coap_agent(world: &World, device: &Device, server: std::net::SocketAddr) -> device_agent::Agent {
    device.agent_with(server, &world.endpoint, coap_options(world))
}

fn coap_options(world: &World) -> AgentOptions {
    AgentOptions {
        clock: world.clock.clone(),
        transport: Transport::Coap,
        ..fast_options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_coap_onboards_renews_updates_and_is_decommissioned() {
    let world = world().await;
    trust_firmware(&world).await;
    world.expect(&["SN-CONSTRAINED"], 30).await;
    let device = world.device("SN-CONSTRAINED");
    let id = world.id("SN-CONSTRAINED");

    let state = coap_agent(&world, &device, coap_addr(&world))
        .onboard()
        .await
        .unwrap();
    assert!(state.ldevid.is_some());
    let running = Running::start(coap_agent(&world, &device, coap_addr(&world)));
    eventually(10, "the session", || {
        world.server.sessions().is_connected(&id)
    })
    .await;
    assert_eq!(
        world.record("SN-CONSTRAINED").unwrap().state,
        DeviceState::Active
    );

    // A renewal the server pushes (a notification of the observed commands).
    world
        .server
        .control()
        .rotate(Some(vec![id.clone()]), None)
        .await
        .unwrap();
    eventually(20, "the renewal", || {
        running.agent.stats().renewals.load(Ordering::SeqCst) == 1
    })
    .await;
    let record = world.record("SN-CONSTRAINED").unwrap();
    assert_eq!(record.certificates.len(), 2, "{:?}", record.certificates);

    // A firmware campaign: the manifest in a notification, the image by Block2.
    let size = 100 * 1024 + 77;
    let (_, release) = publish(&world, &image(size, 9), "2.0.0", 1).await;
    run_campaign(
        &world,
        &certs::inspect::hex(&release.digest),
        &["SN-CONSTRAINED"],
        vec![100],
        50,
    )
    .await;
    eventually(60, "the update", || {
        job(&world, "SN-CONSTRAINED").is_some_and(|j| j.state == JobState::Healthy)
    })
    .await;
    assert_eq!(
        running.agent.stats().firmware_bytes.load(Ordering::SeqCst),
        size as u64
    );
    assert_eq!(
        running.agent.load_state().unwrap().firmware_version,
        "2.0.0"
    );

    // Decommissioning: the attestation goes by Block1; the device is revoked and certified.
    world
        .server
        .control()
        .decommission(vec![id.clone()], WipeMethod::PurgeCryptographicErase)
        .await
        .unwrap();
    eventually(30, "the attestation", || {
        world.record("SN-CONSTRAINED").unwrap().state == DeviceState::Decommissioned
    })
    .await;
    // The device forgets its owner once the server has the attestation.
    eventually(10, "the factory state", || {
        running.agent.load_state().unwrap().phase == device_agent::machine::Phase::Factory
    })
    .await;
    let agent = running.agent.clone();
    running.stop().await;
    let state = agent.load_state().unwrap();
    assert!(state.ldevid.is_none() && state.network.is_none() && state.owner_ca.is_none());
    let actions = world.actions("SN-CONSTRAINED");
    assert!(
        actions.ends_with(&["wipe-attested".to_string(), "decommissioned".to_string()]),
        "{actions:?}"
    );
    let certificate = world
        .server
        .service()
        .sanitization_certificate(&id)
        .unwrap();
    assert!(
        certificate.attestation.len() / 2 > device_agent::transport::coap::UPLOAD_BLOCK,
        "the attestation took more than one block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_lossy_link_an_agent_onboards_and_resumes_a_firmware_download() {
    let world = world().await;
    trust_firmware(&world).await;
    world.expect(&["SN-LOSSY-AGENT"], 30).await;
    let device = world.device("SN-LOSSY-AGENT");
    let cut = Arc::new(AtomicBool::new(false));
    let (relay, task) = lossy_relay_with(coap_addr(&world), cut.clone()).await;

    // Handshakes and messages get the time a lossy link needs (DTLS retransmits its
    // flights from one second, doubling).
    let mut options = coap_options(&world);
    options.timeouts.connect = std::time::Duration::from_secs(15);
    options.timeouts.idle = std::time::Duration::from_secs(15);
    options.timeouts.coap_ack = std::time::Duration::from_millis(300);
    let running = Running::start(device.agent_with(relay, &world.endpoint, options));
    eventually(90, "the session", || {
        world
            .server
            .sessions()
            .is_connected(&world.id("SN-LOSSY-AGENT"))
    })
    .await;
    assert_eq!(
        world.record("SN-LOSSY-AGENT").unwrap().certificates.len(),
        1,
        "one certificate, however many retransmissions"
    );

    let size = 96 * 1024;
    let (_, release) = publish(&world, &image(size, 5), "3.0.0", 1).await;
    run_campaign(
        &world,
        &certs::inspect::hex(&release.digest),
        &["SN-LOSSY-AGENT"],
        vec![100],
        50,
    )
    .await;
    // Half way, the link goes dark for longer than the agent waits: the session is lost.
    let stats = &running.agent.stats();
    eventually(120, "half the image", || {
        stats.firmware_bytes.load(Ordering::SeqCst) >= size as u64 / 2
    })
    .await;
    let sessions = stats.sessions.load(Ordering::SeqCst);
    cut.store(true, Ordering::SeqCst);
    eventually(30, "the session lost", || {
        stats.failures.load(Ordering::SeqCst) > 0
    })
    .await;
    cut.store(false, Ordering::SeqCst);
    eventually(180, "the update", || {
        job(&world, "SN-LOSSY-AGENT").is_some_and(|j| j.state == JobState::Healthy)
    })
    .await;
    assert!(stats.sessions.load(Ordering::SeqCst) > sessions);
    assert_eq!(
        stats.firmware_bytes.load(Ordering::SeqCst),
        size as u64,
        "each byte staged once: the download resumed where it stopped"
    );
    running.stop().await;
    task.abort();
}

/// `onboarder demo --transport coap`: every phase of the demo with agents over CoAP, none
/// failed, and the report's contract (the last line of stdout) kept.
#[test]
fn the_demo_runs_every_phase_over_coap() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onboarder"))
        .args(["demo", "--devices", "6", "--transport", "coap", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(report["devices"], 6);
    let phases = report["phases"].as_object().unwrap();
    for phase in [
        "onboard",
        "rotate",
        "root_rollover",
        "firmware",
        "firmware_https",
        "support_notice",
        "decommission",
        "network_access",
    ] {
        assert_eq!(phases[phase]["failed"], 0, "{phase}: {}", phases[phase]);
        assert!(phases[phase]["ok"].as_u64().unwrap() > 0, "{phase}");
    }
}
