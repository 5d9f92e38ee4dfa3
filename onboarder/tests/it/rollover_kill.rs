//! The server is killed (SIGKILL) at each step of a CA rollover and restarted on the same
//! data directory: the rollover is finished at start, and the connected fleet ends on the new
//! CA generation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use certs::factory::{Manufacturer, ManufacturerConfig};
use onboarder::core::{CertStatus, DeviceState};
use onboarder::operator::client::ApiClient;
use onboarder::service::AnchorImport;

use crate::crash::{init, onboarder, serve, wait_ready};
use crate::harness::*;

const FLEET: usize = 20;

/// The points between the rollover's steps (onboarder/src/control/rollover.rs), in order.
const POINTS: [&str; 4] = [
    "rollover-decided",
    "rollover-files",
    "rollover-renewed",
    "rollover-ordered",
];

/// A server that stops at `point`; returns once it has reached it.
fn serve_until(dir: &Path, point: &str) -> Child {
    let mut child = onboarder()
        .args(["--dir", dir.to_str().unwrap(), "serve"])
        .env("ONBOARDER_FAILPOINT", point)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let wanted = format!("failpoint {point} reached");
    let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
    let reached = lines.any(|line| line.contains(&wanted));
    // The rest of the server runs on and may still write: keep its stderr open.
    std::thread::spawn(move || lines.for_each(drop));
    if !reached {
        let status = child.wait().unwrap();
        panic!("the server ended ({status}) without reaching {point}");
    }
    child
}

/// Blocking API calls off the async threads.
async fn api<T: Send + 'static>(
    client: &Arc<ApiClient>,
    call: impl FnOnce(&ApiClient) -> T + Send + 'static,
) -> T {
    let client = client.clone();
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .unwrap()
}

/// Whether every device is active with exactly one live certificate, of CA `generation`.
fn fleet_on(client: &ApiClient, generation: u32) -> bool {
    let Ok(devices) = client.devices() else {
        return false;
    };
    devices.len() == FLEET
        && devices.iter().all(|d| {
            let live: Vec<_> = d
                .certificates
                .iter()
                .filter(|c| matches!(c.status, CertStatus::Active | CertStatus::Issued))
                .collect();
            d.state == DeviceState::Active
                && live.len() == 1
                && live[0].generation == Some(generation)
        })
}

/// A server (a child process on a fresh data directory) with a connected fleet of [`FLEET`]
/// agents of a manufacturer named `maker`, serials `{prefix}NNN`.
struct Fleet {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    child: Child,
    client: Arc<ApiClient>,
    running: Vec<Running>,
}

async fn fleet(maker: &str, prefix: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let (data, quic, _) = init(dir.path());
    let m = Manufacturer::create(ManufacturerConfig::new(maker), now()).unwrap();
    let serials: Vec<String> = (0..FLEET).map(|i| format!("{prefix}{i:03}")).collect();
    let devices: Vec<Device> = serials
        .iter()
        .map(|s| Device::mint(&m, dir.path(), s))
        .collect();
    let owner_root =
        certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let bundle = protocol::voucher::encode_bundle(
        &serials
            .iter()
            .map(|s| m.voucher(s, &owner_root, now(), now() + DAY).unwrap())
            .collect::<Vec<_>>(),
    );
    let anchor = AnchorImport {
        pem: certs::files::cert_pem(m.root_cert()),
        masa_pem: Some(certs::files::cert_pem(m.masa_cert())),
        name: None,
    };
    let child = serve(&data);
    let client = Arc::new(ApiClient::for_data_dir(&data).unwrap());
    api(&client, wait_ready).await;
    api(&client, move |c| {
        c.import_anchor(&anchor).unwrap();
        c.import_vouchers(&bundle).unwrap();
    })
    .await;
    let endpoint = device_agent::transport::quic::endpoint_for(quic).unwrap();
    let running: Vec<Running> = devices
        .iter()
        .map(|d| Running::start(d.agent(quic, &endpoint)))
        .collect();
    Fleet {
        dir,
        data,
        child,
        client,
        running,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_killed_at_any_step_is_finished_at_start() {
    let Fleet {
        dir: _dir,
        data,
        mut child,
        client,
        running,
    } = fleet("Roll Devices", "SN-RK").await;
    let poll = |generation: u32| {
        let client = client.clone();
        async move {
            for _ in 0..600 {
                if api(&client, move |c| fleet_on(c, generation)).await {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("the fleet did not end on CA generation {generation}");
        }
    };
    poll(1).await;

    for (i, point) in POINTS.iter().enumerate() {
        let generation = i as u32 + 2;
        // Stop the server, start it again set to stop at `point`, and roll over.
        child.kill().unwrap();
        child.wait().unwrap();
        let stopping = {
            let data = data.clone();
            let point = point.to_string();
            std::thread::spawn(move || serve_until(&data, &point))
        };
        api(&client, wait_ready).await;
        let order = {
            let client = client.clone();
            std::thread::spawn(move || client.rollover(None))
        };
        let mut stopped = tokio::task::spawn_blocking(move || stopping.join().unwrap())
            .await
            .unwrap();
        stopped.kill().unwrap(); // SIGKILL, mid-rollover
        stopped.wait().unwrap();
        assert!(
            order.join().unwrap().is_err(),
            "the order cannot have been answered"
        );
        // Restarted: the rollover is finished, not repeated, and the fleet follows.
        child = serve(&data);
        api(&client, wait_ready).await;
        poll(generation).await;
        let crls = api(&client, |c| c.crls().unwrap()).await;
        let generations: Vec<u32> = crls.iter().map(|c| c.generation).collect();
        assert_eq!(
            generations.iter().max(),
            Some(&generation),
            "killed at {point}: {generations:?}"
        );
        eprintln!("killed at {point}: the fleet is on generation {generation}");
    }
    let summary = api(&client, |c| c.verify_audit().unwrap()).await;
    assert!(summary.entries > 0);
    for r in &running {
        assert!(r.agent.stats().renewals.load(Ordering::Relaxed) >= POINTS.len() as u64);
    }
    for r in running {
        r.stop().await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The points between the owner-root rollover's steps (onboarder/src/control/roots.rs), in
/// order.
const ROOT_POINTS: [&str; 4] = [
    "root-rollover-decided",
    "root-rollover-files",
    "root-rollover-moving",
    "root-rollover-retired",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_root_rollover_killed_at_any_step_goes_on_at_start() {
    let Fleet {
        dir: _dir,
        data,
        mut child,
        client,
        running,
    } = fleet("Root Devices", "SN-RR").await;
    let until = |what: &'static str, check: Arc<dyn Fn(&ApiClient) -> bool + Send + Sync>| {
        let client = client.clone();
        async move {
            for _ in 0..900 {
                let check = check.clone();
                if api(&client, move |c| check(c)).await {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("timed out waiting for {what}");
        }
    };
    until("the fleet onboarded", Arc::new(|c| fleet_on(c, 1))).await;

    for (i, point) in ROOT_POINTS.iter().enumerate() {
        let root = i as u32 + 2;
        child.kill().unwrap();
        child.wait().unwrap();
        let stopping = {
            let data = data.clone();
            let point = point.to_string();
            std::thread::spawn(move || serve_until(&data, &point))
        };
        api(&client, wait_ready).await;
        let order = {
            let client = client.clone();
            std::thread::spawn(move || client.root_rollover())
        };
        let mut stopped = tokio::task::spawn_blocking(move || stopping.join().unwrap())
            .await
            .unwrap();
        stopped.kill().unwrap(); // SIGKILL, mid-rollover
        stopped.wait().unwrap();
        let answered = order.join().unwrap();
        if *point == "root-rollover-decided" {
            assert!(answered.is_err(), "the order cannot have been answered");
        }
        // Restarted: the rollover goes on from where it was, to its end.
        child = serve(&data);
        api(&client, wait_ready).await;
        until(
            "the old root retired",
            Arc::new(move |c| {
                c.roots()
                    .is_ok_and(|s| s.rollover.is_none() && s.in_force == root && s.trusted == 1)
            }),
        )
        .await;
        let issuing = root;
        until(
            "the fleet on the new CA",
            Arc::new(move |c| fleet_on(c, issuing)),
        )
        .await;
        let new_root =
            certs::files::read_cert(&data.join(onboarder::config::layout::root_cert(root)))
                .unwrap();
        eventually(30, "every agent trusting the new root alone", || {
            running
                .iter()
                .all(|r| r.agent.load_state().unwrap().roots() == std::slice::from_ref(&new_root))
        })
        .await;
        assert!(
            !data
                .join(onboarder::config::layout::root_key(root - 1))
                .exists()
        );
        eprintln!("killed at {point}: the fleet is under owner root {root}");
    }
    let summary = api(&client, |c| c.verify_audit().unwrap()).await;
    assert!(summary.entries > 0);
    for r in running {
        r.stop().await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
