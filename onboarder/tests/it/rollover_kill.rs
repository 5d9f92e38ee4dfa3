//! The server is killed (SIGKILL) at each step of a CA rollover and restarted on the same
//! data directory: the rollover is finished at start, and the connected fleet ends on the new
//! CA generation.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use certs::factory::{Manufacturer, ManufacturerConfig};
use onboarder::core::{CertStatus, DeviceState};
use onboarder::operator::client::ApiClient;
use onboarder::service::AnchorImport;

use crate::crash::{ServerProcess, init_on, onboarder, serve, wait_ready};
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
fn serve_until(dir: &Path, point: &str) -> ServerProcess {
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
    ServerProcess(child)
}

/// Blocking API calls off the async threads.
pub(crate) async fn api<T: Send + 'static>(
    client: &Arc<ApiClient>,
    call: impl FnOnce(&ApiClient) -> T + Send + 'static,
) -> T {
    let client = client.clone();
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .unwrap()
}

/// Whether every device of a fleet of `size` is active with exactly one live certificate, of
/// CA `generation`.
pub(crate) fn fleet_on(client: &ApiClient, generation: u32, size: usize) -> bool {
    let Ok(devices) = client.devices() else {
        return false;
    };
    devices.len() == size
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

/// A server (a child process on a fresh data directory) with a connected fleet of `size`
/// agents of a manufacturer named `maker`, serials `{prefix}NNNN`.
pub(crate) struct Fleet {
    /// Kept for the fleet's life: the data directory and the devices are in it.
    _dir: tempfile::TempDir,
    pub(crate) data: std::path::PathBuf,
    pub(crate) child: ServerProcess,
    pub(crate) client: Arc<ApiClient>,
    pub(crate) running: Vec<Running>,
    pub(crate) devices: Vec<Device>,
    pub(crate) maker: Arc<Manufacturer>,
    /// The server's QUIC address.
    pub(crate) quic: std::net::SocketAddr,
    /// The fleet's directory (devices are minted under it).
    pub(crate) root: std::path::PathBuf,
}

/// On the store the battery runs on (PostgreSQL in the suite's second pass).
pub(crate) async fn fleet(maker: &str, prefix: &str, size: usize) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let (data, quic, _) = init_on(dir.path(), test_store().as_deref());
    fleet_at(dir, data, quic, maker, prefix, size).await
}

/// [`fleet`] with the server's data directory (and its embedded store) under `data_root`,
/// the devices elsewhere.
pub(crate) async fn fleet_in(
    data_root: &std::path::Path,
    maker: &str,
    prefix: &str,
    size: usize,
) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let (data, quic, _) = init_on(data_root, None);
    fleet_at(dir, data, quic, maker, prefix, size).await
}

async fn fleet_at(
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    quic: std::net::SocketAddr,
    maker: &str,
    prefix: &str,
    size: usize,
) -> Fleet {
    let m = Manufacturer::create(ManufacturerConfig::new(maker), now()).unwrap();
    let serials: Vec<String> = (0..size).map(|i| format!("{prefix}{i:04}")).collect();
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
        if size > 0 {
            c.import_vouchers(&bundle).unwrap();
        }
    })
    .await;
    let endpoint = device_agent::transport::quic::endpoint_for(quic).unwrap();
    let running: Vec<Running> = devices
        .iter()
        .map(|d| Running::start(d.agent(quic, &endpoint)))
        .collect();
    Fleet {
        quic,
        root: dir.path().to_path_buf(),
        _dir: dir,
        data,
        child,
        client,
        running,
        devices,
        maker: Arc::new(m),
    }
}

impl Fleet {
    /// Stops the server, starts it again set to stop at `point`, gives `order` and kills the
    /// server (SIGKILL) once it is there, then starts it again normally; returns what the
    /// order got.
    async fn kill_during<T: Send + 'static>(
        &mut self,
        point: &str,
        order: impl FnOnce(&ApiClient) -> T + Send + 'static,
    ) -> T {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let stopping = {
            let data = self.data.clone();
            let point = point.to_string();
            std::thread::spawn(move || serve_until(&data, &point))
        };
        api(&self.client, wait_ready).await;
        let ordering = {
            let client = self.client.clone();
            std::thread::spawn(move || order(&client))
        };
        let mut stopped = tokio::task::spawn_blocking(move || stopping.join().unwrap())
            .await
            .unwrap();
        stopped.kill().unwrap(); // SIGKILL, mid-order
        stopped.wait().unwrap();
        let answered = ordering.join().unwrap();
        self.child = serve(&self.data);
        api(&self.client, wait_ready).await;
        answered
    }

    /// Waits (polling the admin API) until `check` holds, for at most 90 s.
    pub(crate) async fn until(
        &self,
        what: &str,
        check: impl Fn(&ApiClient) -> bool + Send + Sync + 'static,
    ) {
        let check = Arc::new(check);
        for _ in 0..900 {
            let check = check.clone();
            if api(&self.client, move |c| check(c)).await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollover_killed_at_any_step_is_finished_at_start() {
    let mut fleet = fleet("Roll Devices", "SN-RK", FLEET).await;
    fleet
        .until("the fleet onboarded", |c| fleet_on(c, 1, FLEET))
        .await;
    for (i, point) in POINTS.iter().enumerate() {
        let generation = i as u32 + 2;
        let answered = fleet.kill_during(point, |c| c.rollover(None)).await;
        assert!(answered.is_err(), "the order cannot have been answered");
        // Restarted: the rollover is finished, not repeated, and the fleet follows.
        fleet
            .until("the fleet on the new CA", move |c| {
                fleet_on(c, generation, FLEET)
            })
            .await;
        // The new CA's CRL is published by the replica that finishes the rollover (on
        // PostgreSQL, the restarted server once the dead one's lease runs out).
        fleet
            .until("the new CA's CRL", move |c| {
                c.crls()
                    .is_ok_and(|crls| crls.iter().map(|c| c.generation).max() == Some(generation))
            })
            .await;
        eprintln!("killed at {point}: the fleet is on generation {generation}");
    }
    let summary = api(&fleet.client, |c| c.verify_audit().unwrap()).await;
    assert!(summary.entries > 0);
    for r in &fleet.running {
        assert!(r.agent.stats().renewals.load(Ordering::Relaxed) >= POINTS.len() as u64);
    }
    fleet.stop().await;
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
    let mut fleet = fleet("Root Devices", "SN-RR", FLEET).await;
    fleet
        .until("the fleet onboarded", |c| fleet_on(c, 1, FLEET))
        .await;
    for (i, point) in ROOT_POINTS.iter().enumerate() {
        let root = i as u32 + 2;
        let answered = fleet.kill_during(point, |c| c.root_rollover()).await;
        if *point == "root-rollover-decided" {
            assert!(answered.is_err(), "the order cannot have been answered");
        }
        // Restarted: the rollover goes on from where it was, to its end.
        fleet
            .until("the old root retired", move |c| {
                c.roots()
                    .is_ok_and(|s| s.rollover.is_none() && s.in_force == root && s.trusted == 1)
            })
            .await;
        fleet
            .until("the fleet on the new CA", move |c| fleet_on(c, root, FLEET))
            .await;
        let (data, running) = (&fleet.data, &fleet.running);
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
    let summary = api(&fleet.client, |c| c.verify_audit().unwrap()).await;
    assert!(summary.entries > 0);
    fleet.stop().await;
}

impl Fleet {
    pub(crate) async fn stop(mut self) {
        for r in self.running.drain(..) {
            r.stop().await;
        }
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}
