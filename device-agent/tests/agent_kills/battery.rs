//! The agent's side of the crash battery: 20 daemons (the shipped `device-agent` binary), each
//! killed (SIGKILL) once at its own random moment of a phase and started again on the same
//! files: during its renewal, during a firmware update (download, install, trial boot, health
//! check), during its decommissioning (wipe, attestation, delivery). Each phase then ends as
//! its orders imply, checked by the one checker (`onboarder::exercise::invariants`) on the
//! server and on every device's disk; where each kill landed is read from the device's files
//! and printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certs::factory::FirmwareRelease;
use device_agent::platform::StateStore;
use device_agent::platform::files::FileStateStore;
use onboarder::core::DeviceState;
use onboarder::core::campaign::CampaignOrder;
use onboarder::exercise::invariants::{self, Expected};
use onboarder::operator::client::ApiClient;
use onboarder::service::{CampaignSpec, Target};

use onboarder::core::record::JobState;

use super::{Owner, daemon, staged};

const DEVICES: usize = 20;

/// A daemon and its files.
struct Daemon {
    serial: String,
    root: PathBuf,
    config: PathBuf,
    child: Child,
    runs: usize,
}

impl Daemon {
    fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    fn slots(&self) -> PathBuf {
        self.root.join("slots")
    }

    fn restart(&mut self) {
        self.runs += 1;
        let log = self.root.join(format!("run-{}.log", self.runs));
        self.child = daemon(&self.config, &log);
    }

    /// SIGKILL, and what the device's files say it was doing.
    fn kill(&mut self) -> &'static str {
        let before = self.ldevid();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        moment(&self.state(), &self.slots(), before.as_deref())
    }

    fn ldevid(&self) -> Option<Vec<u8>> {
        FileStateStore::new(&self.state()).load().ok()??.ldevid
    }
}

/// What a device was doing, from its files alone (`ldevid`: its certificate when the phase
/// began).
fn moment(state_dir: &Path, slots: &Path, ldevid: Option<&[u8]>) -> &'static str {
    let Ok(Some(state)) = FileStateStore::new(state_dir).load() else {
        return "bare";
    };
    if state.pending_attestation.is_some() {
        "attestation-pending"
    } else if state.ldevid.is_none() {
        "bare"
    } else if state.renewal.is_some() {
        "renewal-stored"
    } else if state.trial.is_some() {
        "trial-boot"
    } else if state.pending_report.is_some() {
        "report-pending"
    } else if staged(slots) > 0 {
        "downloading"
    } else if state_dir
        .join(device_agent::platform::layout::PENDING_KEY)
        .exists()
    {
        "new-key-made"
    } else if (1..DATA_ITEMS).contains(&items(state_dir)) {
        "wiping"
    } else if state.ldevid.as_deref() != ldevid {
        "renewed"
    } else if state.firmware_version == "2.0.0" && items(state_dir) == 0 {
        "updated"
    } else {
        "not-begun"
    }
}

/// Application data items each device holds before its decommissioning.
const DATA_ITEMS: usize = 4;

/// The application data items a device holds.
fn items(state_dir: &Path) -> usize {
    std::fs::read_dir(state_dir.join("data")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "enc"))
            .count()
    })
}

/// A random generator (xorshift) with its seed printed, for a replay.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

async fn api<T: Send + 'static>(
    client: &Arc<ApiClient>,
    call: impl FnOnce(&ApiClient) -> T + Send + 'static,
) -> T {
    let client = client.clone();
    tokio::task::spawn_blocking(move || call(&client))
        .await
        .unwrap()
}

/// Kills every daemon once, each at a random moment within `window` of now, and starts it
/// again at once; returns where each kill landed, by daemon, and a summary.
async fn kill_each(
    daemons: &mut [Daemon],
    dice: &mut Dice,
    window: Duration,
) -> (Vec<&'static str>, String) {
    let mut at: Vec<(u64, usize)> = (0..daemons.len())
        .map(|i| (dice.below(window.as_millis() as u64), i))
        .collect();
    at.sort();
    let start = Instant::now();
    let mut moments = vec![""; daemons.len()];
    for (ms, i) in at {
        let when = start + Duration::from_millis(ms);
        tokio::time::sleep_until(when.into()).await;
        moments[i] = daemons[i].kill();
        daemons[i].restart();
    }
    let mut landed: BTreeMap<&'static str, usize> = BTreeMap::new();
    for m in &moments {
        *landed.entry(m).or_default() += 1;
    }
    (moments, format!("{landed:?}"))
}

/// Waits until every invariant holds on the server, for at most `secs`.
async fn settled(client: &Arc<ApiClient>, phase: &str, expected: &Expected, secs: u64) {
    let expected = expected.clone();
    let within = Duration::from_secs(secs);
    let violations = api(client, move |c| {
        invariants::until_settled(c, &expected, within)
    })
    .await;
    assert!(violations.is_empty(), "{phase}: {violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_at_random_moments_of_renewal_update_and_decommissioning() {
    let seed = std::env::var("DEVICE_AGENT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| certs::unix_now() ^ u64::from(std::process::id()) << 20);
    eprintln!("agent crash battery seed {seed} (DEVICE_AGENT_CRASH_SEED={seed} replays it)");
    let mut dice = Dice(seed | 1);
    let owner = Owner::start().await;
    let data = owner.dir.path().join("onboarder");
    let client = Arc::new(ApiClient::new(
        &format!("http://{}", owner.server.api_addr()),
        onboarder::pki::token(&data).unwrap(),
    ));
    let mut daemons = Vec::new();
    for i in 0..DEVICES {
        let serial = format!("SN-AK{i:03}");
        let config = owner.device(&serial).await;
        let root = config.parent().unwrap().to_path_buf();
        // The version is the one the agent records (an image here does not carry a version
        // file of its own).
        let text = std::fs::read_to_string(&config).unwrap();
        let text: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("firmware_version_file"))
            .collect();
        std::fs::write(&config, text.join("\n")).unwrap();
        let child = daemon(&config, &root.join("run-0.log"));
        daemons.push(Daemon {
            serial,
            root,
            config,
            child,
            runs: 0,
        });
    }
    let mut expected = Expected {
        devices: DEVICES,
        states: daemons
            .iter()
            .map(|d| (d.serial.clone(), DeviceState::Active))
            .collect(),
        ..Expected::default()
    };
    settled(&client, "onboarding", &expected, 120).await;

    // Renewal: the fleet is told to re-key; each daemon dies once on the way.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = certs::unix_now();
    api(&client, |c| {
        c.rotate(&onboarder::operator::api::RotateRequest {
            devices: Vec::new(),
            all: true,
            rate: None,
        })
        .unwrap()
    })
    .await;
    let (_, landed) = kill_each(&mut daemons, &mut dice, Duration::from_millis(400)).await;
    for d in &daemons {
        expected.renewed.insert(d.serial.clone(), since);
    }
    settled(&client, "renewal", &expected, 120).await;
    eprintln!("renewal: {DEVICES} kills at {landed}; 0 violations");

    // A firmware update of 4 MiB; each daemon dies once between the offer and its health
    // report.
    let image = onboarder::exercise::incompressible_image(4 << 20, 3);
    let manifest = owner
        .maker
        .sign_firmware(&image, &FirmwareRelease::new("2.0.0", 2), certs::unix_now())
        .unwrap();
    api(&client, move |c| {
        let release = c.upload_release(&manifest, &image, None).unwrap();
        let campaign = c
            .create_campaign(&CampaignSpec {
                release: release.digest,
                target: Target::All,
                waves: vec![100],
                failure_threshold: 100,
                rate: None,
                wave_timeout: None,
                over_https: false,
                signed_urls: false,
                ramp: None,
            })
            .unwrap();
        c.order_campaign(&campaign.id, CampaignOrder::Start)
            .unwrap();
    })
    .await;
    let (moments, landed) = kill_each(&mut daemons, &mut dice, Duration::from_millis(2500)).await;
    // A restart in the middle of a trial boot is a failed boot: the device goes back to the
    // image it ran (A/B) and reports the update rolled back. Every other kill is resumed.
    let mut rolled_back = Vec::new();
    for (d, m) in daemons.iter().zip(&moments) {
        if *m == "trial-boot" {
            expected.firmware.insert(d.serial.clone(), "1.0.0".into());
            rolled_back.push(d.serial.clone());
        } else {
            expected.firmware.insert(d.serial.clone(), "2.0.0".into());
        }
    }
    settled(&client, "update", &expected, 180).await;
    let keys = [owner.maker.firmware_key().public_key()];
    for (d, m) in daemons.iter().zip(&moments) {
        let floor = if *m == "trial-boot" { 0 } else { 2 };
        let violations = invariants::device(&d.state(), &d.slots(), &keys, floor);
        assert!(violations.is_empty(), "{}: {violations:?}", d.serial);
        // The version a device runs reaches the server with its hello, its health report
        // just after: wait for the job to end.
        let mut job = owner.job(&d.serial);
        for _ in 0..600 {
            if matches!(job, Some(JobState::Healthy | JobState::RolledBack { .. })) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            job = owner.job(&d.serial);
        }
        if *m == "trial-boot" {
            assert!(
                matches!(job, Some(JobState::RolledBack { .. })),
                "{}: {job:?}",
                d.serial
            );
        } else {
            assert_eq!(job, Some(JobState::Healthy), "{}", d.serial);
        }
    }
    eprintln!(
        "update: {DEVICES} kills at {landed}; 0 violations: {} boot 2.0.0, {} rolled back \
         from an interrupted trial boot to 1.0.0",
        DEVICES - rolled_back.len(),
        rolled_back.len()
    );

    // Decommissioning: each daemon dies once between the order and its return to the
    // factory state. Each holds 8 MiB of application data, which its wipe clears.
    for d in &daemons {
        let vault = device_agent::platform::wiper::Vault::new(&d.state());
        for i in 0..DATA_ITEMS {
            vault
                .put(&format!("log-{i}"), &vec![i as u8; 2 << 20])
                .unwrap();
        }
    }
    let serials: Vec<String> = daemons.iter().map(|d| d.serial.clone()).collect();
    api(&client, move |c| {
        c.decommission(serials, protocol::attestation::WipeMethod::Clear, None)
            .unwrap()
    })
    .await;
    let (_, landed) = kill_each(&mut daemons, &mut dice, Duration::from_millis(600)).await;
    for d in &daemons {
        expected
            .states
            .insert(d.serial.clone(), DeviceState::Decommissioned);
    }
    expected.firmware.clear();
    settled(&client, "decommissioning", &expected, 120).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<_> = daemons
            .iter()
            .map(|d| (&d.serial, invariants::wiped(&d.state())))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = daemons
                .iter()
                .filter(|d| left.iter().any(|(s, _)| *s == &d.serial))
                .map(|d| {
                    let log = std::fs::read_to_string(d.root.join(format!("run-{}.log", d.runs)))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(8).collect();
                    format!("{}: {:?}", d.serial, tail)
                })
                .collect();
            panic!("not back in their factory state: {left:?}; logs: {logs:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for d in &daemons {
        let violations = invariants::device(&d.state(), &d.slots(), &keys, 2);
        assert!(violations.is_empty(), "{}: {violations:?}", d.serial);
    }
    eprintln!("decommissioning: {DEVICES} kills at {landed}; 0 violations");
    for d in &mut daemons {
        d.kill();
    }
    owner.server.shutdown().await;
}
