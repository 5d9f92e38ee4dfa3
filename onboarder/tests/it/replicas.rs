//! Several onboarders on one PostgreSQL database (`ONBOARDER_TEST_POSTGRES`, which
//! `scripts/test` provides), acting as one: an order given on one replica reaches a device
//! connected to another, and the work that runs once moves to another replica when its
//! leader stops.

use std::sync::Arc;

use onboarder::core::DeviceState;
use onboarder::server::{Backends, Options, Server};
use protocol::attestation::WipeMethod;

use crate::harness::*;

/// A fresh schema of the test database, or `None` (and the test says it did not run).
fn database() -> Option<String> {
    let Ok(base) = std::env::var("ONBOARDER_TEST_POSTGRES") else {
        eprintln!("ONBOARDER_TEST_POSTGRES is not set: replicas are not tested");
        return None;
    };
    Some(onboarder::store::postgres::fresh_schema(&base).unwrap())
}

/// Another replica of `world`'s onboarder: the same data directory and database.
async fn replica(world: &World, url: &str) -> Server {
    let clock = world.clock.clone();
    Server::start_with(
        &world.data,
        Options {
            clock: Some(Arc::new(move || clock.now())),
            backends: Some(Backends::postgres(&world.data, url).unwrap()),
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_given_on_one_replica_reaches_a_device_connected_to_another() {
    let Some(url) = database() else { return };
    let store = url.clone();
    let world = World::with_config(move |c| c.store = Some(store)).await;
    let b = replica(&world, &url).await;
    // The world's server started first: it leads.
    eventually(10, "a leader", || world.server.control().is_leader()).await;
    assert!(!b.control().is_leader());

    world.expect(&["SN-REPL"], 30).await;
    let device = world.device("SN-REPL");
    let id = world.id("SN-REPL");
    world.agent(&device).onboard().await.unwrap();
    let running = Running::start(world.agent(&device));
    eventually(10, "the session on the first replica", || {
        world.server.sessions().is_connected(&id)
    })
    .await;
    assert!(!b.sessions().is_connected(&id));

    // The order is given on B; the device, connected to A, wipes itself and attests.
    b.control()
        .decommission(vec![id.clone()], WipeMethod::Clear)
        .await
        .unwrap();
    eventually(20, "the decommissioning", || {
        b.service()
            .device(&id)
            .is_ok_and(|r| r.state == DeviceState::Decommissioned)
    })
    .await;
    eventually(10, "the device's reset", || {
        world
            .agent(&device)
            .load_state()
            .is_ok_and(|s| s.phase == device_agent::machine::Phase::Factory && s.ldevid.is_none())
    })
    .await;
    // Its revocation reached B's verifier and B serves the leader's CRLs listing it.
    let record = b.service().device(&id).unwrap();
    let trust = b.service().trust();
    eventually(10, "B's verifier", || {
        record
            .certificates
            .iter()
            .all(|c| trust.is_revoked(&c.serial, now()))
    })
    .await;
    eventually(10, "B's CRLs", || {
        b.control().crls().iter().any(|c| c.entries > 0)
    })
    .await;
    running.stop().await;

    // The leader stops: B takes over the work that runs once.
    world.server.shutdown().await;
    eventually(onboarder::control::LEASE_TTL + 10, "B's leadership", || {
        b.control().is_leader()
    })
    .await;
    b.shutdown().await;
    drop(world.dir);
}
