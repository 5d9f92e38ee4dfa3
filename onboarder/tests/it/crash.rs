//! The server is killed (SIGKILL) while a fleet onboards, and restarted on the same store.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use certs::factory::{Manufacturer, ManufacturerConfig};
use device_agent::machine::{AgentState, Phase};
use device_agent::platform::{Platform, StateStore};
use device_agent::{Agent, PlatformError};
use onboarder::core::DeviceState;
use onboarder::operator::client::ApiClient;

use crate::harness::*;

const FLEET: usize = 1000;

pub(crate) fn onboarder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onboarder"))
}

fn run(args: &[&str]) -> String {
    let out = onboarder().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "onboarder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn free_ports() -> (SocketAddr, SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    (udp, tcp)
}

/// `onboarder init` of a data directory in `root`, on free loopback ports: the directory, the
/// QUIC address and the admin API address. Devices are told to send a keep-alive every second,
/// so they notice a dead connection quickly.
pub(crate) fn init(root: &Path) -> (PathBuf, SocketAddr, SocketAddr) {
    init_on(root, None)
}

/// [`init`] with the state in the PostgreSQL database `store` names, if any.
pub(crate) fn init_on(root: &Path, store: Option<&str>) -> (PathBuf, SocketAddr, SocketAddr) {
    let data = root.join("onboarder");
    let (quic, api) = free_ports();
    let mut args = vec![
        "init".to_string(),
        data.to_str().unwrap().to_string(),
        "--listen".into(),
        quic.to_string(),
        "--api".into(),
        api.to_string(),
        // Tests run side by side: no fixed HTTPS port.
        "--https".into(),
        "off".into(),
        "--coap".into(),
        "off".into(),
    ];
    if let Some(store) = store {
        args.extend(["--store".to_string(), store.to_string()]);
    }
    run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut config = onboarder::config::Config::load(&data).unwrap();
    config.policy.heartbeat_secs = 1;
    config.save(&data).unwrap();
    (data, quic, api)
}

pub(crate) fn serve(dir: &Path) -> ServerProcess {
    ServerProcess(
        onboarder()
            .args(["--dir", dir.to_str().unwrap(), "serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A server process of a test, killed when dropped: a test that fails leaves none running.
pub(crate) struct ServerProcess(pub(crate) Child);

impl std::ops::Deref for ServerProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ServerProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_ready(client: &ApiClient) {
    for _ in 0..200 {
        if client.anchors().is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the onboarder did not come up");
}

/// The state of every device, by serial, in the store of the data directory `data` (no server
/// running).
fn states_on_disk(data: &Path) -> HashMap<String, DeviceState> {
    let backends = onboarder::server::Backends::embedded(data).unwrap();
    let records = backends.store.devices(None, FLEET + 1).unwrap();
    assert_eq!(records.len(), FLEET);
    records
        .into_iter()
        .map(|r| (r.id.serial.clone(), r.state))
        .collect()
}

/// Devices whose storage holds a received enrollment back until released.
const SLOW: usize = 10;

#[derive(Default, Clone)]
struct SlowStorage {
    /// Saves held back right now.
    held: Arc<AtomicUsize>,
    released: Arc<AtomicBool>,
}

impl SlowStorage {
    fn agent(&self, d: &Device, server: SocketAddr, endpoint: &quinn::Endpoint) -> Agent {
        let identity = d.identity();
        let mut platform = Platform::files(&d.identity_dir, &d.state_dir, identity.key_kind());
        platform.state = Arc::new(SlowState {
            inner: platform.state.clone(),
            storage: self.clone(),
        });
        Agent::new(
            Arc::new(identity),
            platform,
            server,
            endpoint.clone(),
            fast_options(),
        )
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

struct SlowState {
    inner: Arc<dyn StateStore>,
    storage: SlowStorage,
}

impl StateStore for SlowState {
    fn load(&self) -> Result<Option<AgentState>, PlatformError> {
        self.inner.load()
    }

    fn save(&self, state: &AgentState) -> Result<(), PlatformError> {
        if state.phase == (Phase::Enrolled { confirmed: false }) {
            self.storage.held.fetch_add(1, Ordering::SeqCst);
            while !self.storage.released.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.storage.held.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.save(state)
    }

    fn reset(&self, state: &AgentState) -> Result<(), PlatformError> {
        self.inner.reset(state)
    }
}

/// User and system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the file, 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_restarts_and_every_device_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (data, quic, _) = init(dir.path());

    // The manufacturer's side: devices, anchor, vouchers (through the factory's library).
    let m =
        Arc::new(Manufacturer::create(ManufacturerConfig::new("Crash Devices"), now()).unwrap());
    let root_pem = dir.path().join("root-ca.pem");
    std::fs::write(&root_pem, certs::files::cert_pem(m.root_cert())).unwrap();
    let serials: Vec<String> = (0..FLEET).map(|i| format!("SN-K{i:05}")).collect();
    let devices: Vec<Device> = {
        let (m, root) = (m.clone(), dir.path().to_path_buf());
        let serials = serials.clone();
        tokio::task::spawn_blocking(move || {
            serials.iter().map(|s| Device::mint(&m, &root, s)).collect()
        })
        .await
        .unwrap()
    };
    let owner_root =
        certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let vouchers: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| m.voucher(s, &owner_root, now(), now() + DAY).unwrap())
        .collect();
    let bundle = dir.path().join("vouchers.cbor");
    std::fs::write(&bundle, protocol::voucher::encode_bundle(&vouchers)).unwrap();

    let mut child = serve(&data);
    let client = ApiClient::for_data_dir(&data).unwrap();
    let client = tokio::task::spawn_blocking(move || {
        wait_ready(&client);
        client
    })
    .await
    .unwrap();
    let dirs = ["--dir", data.to_str().unwrap()];
    run(&[&dirs[..], &["anchor", "import", root_pem.to_str().unwrap()]].concat());
    run(&[&dirs[..], &["voucher", "import", bundle.to_str().unwrap()]].concat());

    // The fleet onboards; the server dies after about a quarter of it is done.
    let endpoint = device_agent::transport::quic::endpoint_for(quic).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let limit = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::new();
    // The first devices store slowly: each holds its enrollment, received but not yet
    // saved, until the server is dead. The kill lands in the middle of their enrollment by
    // construction; the rest of the fleet is wherever the kill finds it.
    let storage = SlowStorage::default();
    for (i, d) in devices.iter().enumerate() {
        let agent = if i < SLOW {
            storage.agent(d, quic, &endpoint)
        } else {
            d.agent(quic, &endpoint)
        };
        let (done, limit) = (done.clone(), limit.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let result = async {
                let deadline = Duration::from_secs(300);
                agent.retrying(deadline, || agent.onboard()).await?;
                agent
                    .retrying(deadline, || agent.connect())
                    .await
                    .map(|s| s.close())
            }
            .await;
            done.fetch_add(1, Ordering::SeqCst);
            result.map_err(|e| format!("{}: {e}", agent.serial()))
        }));
    }
    while done.load(Ordering::SeqCst) < FLEET / 4 || storage.held() < SLOW {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_cpu = cpu_seconds(child.id());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = done.load(Ordering::SeqCst);
    // What the dead server left on disk: the kill landed mid-enrollment (devices that accepted
    // their voucher and hold no confirmed certificate yet), with others done and others not
    // started.
    let left = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || states_on_disk(&data))
            .await
            .unwrap()
    };
    let count = |s: DeviceState| left.values().filter(|&&x| x == s).count();
    eprintln!(
        "at the kill: {} expected, {} onboarding, {} active",
        count(DeviceState::Expected),
        count(DeviceState::Onboarding),
        count(DeviceState::Active)
    );
    for d in &devices[..SLOW] {
        assert_eq!(left[&d.serial()], DeviceState::Onboarding, "{}", d.serial());
    }
    assert!(count(DeviceState::Active) > 0 && count(DeviceState::Expected) > 0);
    // The slow devices store their enrollment now, and find the server gone.
    storage.release();
    let mut child = serve(&data);
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e);
        }
    }
    let second_cpu = cpu_seconds(child.id());
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    eprintln!(
        "killed after {killed_at} of {FLEET}; server CPU {:.2}s + {:.2}s = {:.2} ms per onboarding",
        first_cpu,
        second_cpu,
        (first_cpu + second_cpu) * 1000.0 / FLEET as f64
    );

    // The store opened, the chain verifies, every device is active with one live certificate.
    let (summary, devices) = tokio::task::spawn_blocking(move || {
        (client.verify_audit().unwrap(), client.devices().unwrap())
    })
    .await
    .unwrap();
    assert!(summary.entries >= 5 * FLEET as u64, "{summary:?}");
    assert_eq!(devices.len(), FLEET);
    let mut cert_serials = std::collections::HashSet::new();
    for d in &devices {
        assert_eq!(d.state, DeviceState::Active, "{}", d.serial);
        let live: Vec<_> = d
            .certificates
            .iter()
            .filter(|c| {
                matches!(
                    c.status,
                    onboarder::core::CertStatus::Active | onboarder::core::CertStatus::Issued
                )
            })
            .collect();
        assert_eq!(
            live.len(),
            1,
            "{} has {} live certificates",
            d.serial,
            live.len()
        );
        assert!(
            cert_serials.insert(live[0].serial.clone()),
            "duplicate certificate serial"
        );
    }

    // Graceful stop.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
