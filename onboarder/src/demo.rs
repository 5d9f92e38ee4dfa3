//! `onboarder demo`: the whole product on embedded defaults, against the real server and real
//! agents over real QUIC connections on loopback.
//!
//! It creates a manufacturer and N devices, an owner (onboarder data directory) that imports
//! the manufacturer's anchor and vouchers through the admin API, starts the server, runs every
//! lifecycle phase that exists with N agents, and reports per phase. Everything is left in the
//! output directory for anyone to check with standard tools:
//!
//! ```text
//! OUT/manufacturer/                 root-ca.pem, masa.pem, firmware.pub (+ keys, 0600)
//! OUT/onboarder/                    the server's data directory (see config.rs): ca/, tls/, store/
//! OUT/devices/<serial>/identity/    idevid.pem, idevid.key, manufacturer-root.pem, masa.pem
//! OUT/devices/<serial>/state/       state.cbor, ldevid.pem, chain.pem, ldevid.key, network.json
//! OUT/vouchers.cbor                 the voucher bundle the owner imported
//! OUT/sanitization/<serial>.json|.html  certificate of sanitization of a decommissioned device
//! OUT/report.json                   the report printed last
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{KeyKind, files};
use device_agent::{Agent, AgentOptions};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::config::{Config, layout};
use crate::operator::client::ApiClient;
use crate::server::{Listen, Server};

/// How long one device may take for one phase before it counts as failed.
const DEVICE_DEADLINE: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of devices.
    pub devices: usize,
    /// Where to keep everything; a temporary directory when `None`.
    pub out: Option<PathBuf>,
    /// Devices working at the same time.
    pub concurrency: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Percentage of the fleet decommissioned at the end.
    pub decommission_percent: u8,
}

/// Results of one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// Devices that completed the phase.
    pub ok: usize,
    /// Devices that did not.
    pub failed: usize,
    /// Wall-clock duration of the phase.
    pub seconds: f64,
    /// Completed devices per second.
    pub per_second: f64,
    /// Median latency of one device's phase, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Bytes transferred, for phases that move data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl PhaseReport {
    fn new(latencies: &mut [Duration], failed: usize, elapsed: Duration) -> Self {
        latencies.sort();
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            round(latencies[i].as_secs_f64() * 1000.0)
        };
        let seconds = elapsed.as_secs_f64();
        PhaseReport {
            ok: latencies.len(),
            failed,
            seconds: round(seconds),
            per_second: round(latencies.len() as f64 / seconds.max(1e-9)),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            bytes: None,
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The demo's report: `{"devices": N, "phases": {"onboard": {...}, ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoReport {
    /// Number of devices.
    pub devices: usize,
    /// Results per phase.
    pub phases: BTreeMap<String, PhaseReport>,
    /// Where everything was left (absent when it was a temporary directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
}

struct Device {
    serial: String,
    identity: PathBuf,
    state: PathBuf,
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> Result<DemoReport> {
    anyhow::ensure!(options.devices > 0, "--devices must be at least 1");
    let temp;
    let out = match &options.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            anyhow::ensure!(
                std::fs::read_dir(dir)?.next().is_none(),
                "{} is not empty; the demo needs a fresh directory",
                dir.display()
            );
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let now = certs::unix_now();
    let manufacturer = Arc::new(Manufacturer::create(
        ManufacturerConfig::new("Example Devices"),
        now,
    )?);
    manufacturer.save(&out.join("manufacturer"))?;

    let data = out.join("onboarder");
    let mut config = Config::new("Example Owner");
    config.quic_listen = "127.0.0.1:0".parse()?;
    config.api_listen = "127.0.0.1:0".parse()?;
    crate::pki::init(&data, &config, now)?;
    let server = Server::start(&data, Listen::default()).await?;

    let t = Instant::now();
    let devices = mint(manufacturer.clone(), &out, options.devices, now).await?;
    tracing::info!("minted {} devices in {:.2?}", devices.len(), t.elapsed());
    let t = Instant::now();
    import(&manufacturer, &server, &data, &out, &devices, now).await?;
    tracing::info!("imported the anchor and vouchers in {:.2?}", t.elapsed());

    let endpoints = (0..2)
        .map(|_| device_agent::transport::quic::endpoint_for(server.quic_addr()))
        .collect::<Result<Vec<_>, _>>()?;
    let agents = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Agent::with_files(
                &d.identity,
                &d.state,
                server.quic_addr(),
                endpoints[i % endpoints.len()].clone(),
                AgentOptions::default(),
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut phases = BTreeMap::new();
    let report = onboard_phase(&agents, &options).await?;
    phases.insert("onboard".to_string(), report);
    // Each device collects some data of its owner (encrypted at rest), which the
    // decommissioning must destroy.
    for d in &devices {
        device_agent::platform::wiper::Vault::new(&d.state).put(
            "telemetry",
            format!("{} readings ", d.serial).repeat(256).as_bytes(),
        )?;
    }
    let fleet = Fleet::start(&agents);
    let connected = wait_for(DEVICE_DEADLINE, || server.sessions().len() >= agents.len()).await;
    anyhow::ensure!(
        connected,
        "only {} of {} devices connected",
        server.sessions().len(),
        agents.len()
    );
    let report = rotate_phase(&server, &agents, &options).await?;
    phases.insert("rotate".to_string(), report);
    let report = firmware_phase(&manufacturer, &server, &data, &agents, &options).await?;
    phases.insert("firmware".to_string(), report);
    let report = decommission_phase(&server, &agents, &out, &options).await?;
    phases.insert("decommission".to_string(), report);
    fleet.stop().await;
    server.shutdown().await;

    let report = DemoReport {
        devices: options.devices,
        phases,
        out: options.out.clone(),
    };
    files::write_public(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Mints the devices' birth identities, in parallel on the blocking pool.
async fn mint(m: Arc<Manufacturer>, out: &Path, count: usize, now: u64) -> Result<Vec<Device>> {
    let serials: Vec<String> = (1..=count).map(|i| format!("SN-{i:06}")).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = count.div_ceil(workers);
    let mut tasks = Vec::new();
    for part in serials.chunks(chunk) {
        let (part, m, out) = (part.to_vec(), m.clone(), out.to_path_buf());
        tasks.push(tokio::task::spawn_blocking(
            move || -> Result<Vec<Device>> {
                part.into_iter()
                    .map(|serial| {
                        let dir = out.join("devices").join(&serial);
                        let identity = dir.join("identity");
                        m.mint(&serial, KeyKind::P256, now)?.save(&identity)?;
                        Ok(Device {
                            serial,
                            identity,
                            state: dir.join("state"),
                        })
                    })
                    .collect()
            },
        ));
    }
    let mut devices = Vec::with_capacity(count);
    for t in tasks {
        devices.extend(t.await??);
    }
    Ok(devices)
}

/// The owner imports the manufacturer's anchor and the vouchers, through the admin API.
async fn import(
    m: &Manufacturer,
    server: &Server,
    data: &Path,
    out: &Path,
    devices: &[Device],
    now: u64,
) -> Result<()> {
    let owner_root = files::read_cert(&data.join(layout::OWNER_ROOT))?;
    let vouchers = devices
        .iter()
        .map(|d| m.voucher(&d.serial, &owner_root, now, now + 7 * 86_400))
        .collect::<Result<Vec<_>, _>>()?;
    let bundle = protocol::voucher::encode_bundle(&vouchers);
    files::write_public(&out.join("vouchers.cbor"), &bundle)?;
    let anchor = files::cert_pem(m.root_cert());
    let client = ApiClient::new(
        &format!("http://{}", server.api_addr()),
        crate::pki::token(data)?,
    );
    let report = tokio::task::spawn_blocking(move || -> Result<_> {
        client.import_anchor(&anchor)?;
        client.import_vouchers(&bundle)
    })
    .await??;
    anyhow::ensure!(
        report.rejected.is_empty() && report.imported == devices.len(),
        "voucher import: {report:?}"
    );
    Ok(())
}

fn progress_bar(options: &DemoOptions, phase: &str) -> indicatif::ProgressBar {
    if !options.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(options.devices as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(phase.to_string());
    bar
}

/// Every device onboards (voucher, checks, CSR, LDevID) and opens its operational session.
async fn onboard_phase(agents: &[Arc<Agent>], options: &DemoOptions) -> Result<PhaseReport> {
    let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let bar = progress_bar(options, "onboard");
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(agents.len());
    for agent in agents {
        let (agent, limit, bar) = (agent.clone(), limit.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await.ok()?;
            let t0 = Instant::now();
            let result = async {
                agent.retrying(DEVICE_DEADLINE, || agent.onboard()).await?;
                let session = agent.retrying(DEVICE_DEADLINE, || agent.connect()).await?;
                session.close();
                Ok::<_, device_agent::AgentError>(())
            }
            .await;
            bar.inc(1);
            match result {
                Ok(()) => Some(t0.elapsed()),
                Err(e) => {
                    tracing::warn!(serial = agent.serial(), "onboarding failed: {e}");
                    None
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(agents.len());
    let mut failed = 0;
    for t in tasks {
        match t.await? {
            Some(l) => latencies.push(l),
            None => failed += 1,
        }
    }
    bar.finish_and_clear();
    Ok(PhaseReport::new(&mut latencies, failed, start.elapsed()))
}

/// The LDevID public key a device holds now.
fn current_key(agent: &Agent) -> Option<Vec<u8>> {
    let state = agent.load_state().ok()?;
    let info = certs::CertInfo::parse(state.ldevid.as_ref()?).ok()?;
    Some(info.public_key.raw().to_vec())
}

/// With every device in its operational session, the operator orders the whole fleet to
/// re-key; each device renews its LDevID with a fresh key and reconnects with it. A device
/// counts as rotated once the server confirmed it and it no longer holds its old key.
async fn rotate_phase(
    server: &Server,
    agents: &[Arc<Agent>],
    options: &DemoOptions,
) -> Result<PhaseReport> {
    let before: Vec<Option<Vec<u8>>> = agents.iter().map(|a| current_key(a)).collect();
    let bar = progress_bar(options, "rotate");
    let start = Instant::now();
    let order = server.control().rotate(None, None).await?;
    let service = server.service().clone();
    wait_for(DEVICE_DEADLINE, || {
        let status = service.rotation_status(order.at).unwrap_or_default();
        bar.set_position((status.rotated + status.failed) as u64);
        status.pending == 0
    })
    .await;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let status = service.rotation_status(order.at)?;
    let unfinished: std::collections::HashSet<&str> = status
        .pending_serials
        .iter()
        .map(String::as_str)
        .chain(status.failures.iter().map(|(s, _)| s.as_str()))
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for (agent, old) in agents.iter().zip(before) {
        if unfinished.contains(agent.serial()) || current_key(agent) == old {
            tracing::warn!(serial = agent.serial(), "did not rotate");
            failed += 1;
            continue;
        }
        let us = agent
            .stats()
            .last_renewal_us
            .load(std::sync::atomic::Ordering::Relaxed);
        latencies.push(Duration::from_micros(us));
    }
    Ok(PhaseReport::new(&mut latencies, failed, elapsed))
}

/// Every agent running its loop (sessions, commands, renewals, updates) in the background.
struct Fleet {
    stop: tokio::sync::watch::Sender<bool>,
    runners: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn start(agents: &[Arc<Agent>]) -> Fleet {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runners = agents
            .iter()
            .map(|agent| {
                let (agent, mut stopped) = (agent.clone(), stopped.clone());
                tokio::spawn(async move {
                    let _ = agent
                        .run(async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        })
                        .await;
                })
            })
            .collect();
        Fleet { stop, runners }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for r in self.runners {
            let _ = r.await;
        }
    }
}

/// Size of the demo's firmware image.
const IMAGE_SIZE: usize = 1024 * 1024;

/// A 1 MiB image whose bytes do not compress (xorshift), so the transfer is honest.
fn demo_image() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut image = Vec::with_capacity(IMAGE_SIZE);
    while image.len() < IMAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        image.extend_from_slice(&x.to_le_bytes());
    }
    image.truncate(IMAGE_SIZE);
    image
}

/// The manufacturer signs a 1 MiB release; the owner trusts its firmware key, uploads the
/// release and rolls it out to the connected fleet in waves of 1 %, 10 % and 100 %. A device
/// counts once it runs the new version after its health check; its latency runs from the offer
/// to its health report, and `bytes` adds up what every device downloaded.
async fn firmware_phase(
    m: &Manufacturer,
    server: &Server,
    data: &Path,
    agents: &[Arc<Agent>],
    options: &DemoOptions,
) -> Result<PhaseReport> {
    use crate::core::campaign::CampaignState;
    use crate::operator::firmware::{CampaignSpec, Target};
    const VERSION: &str = "1.1.0";
    let image = demo_image();
    let manifest = m.sign_firmware(
        &image,
        &certs::factory::FirmwareRelease {
            version: VERSION,
            sequence: 1,
            class_id: None,
            expires_on: None,
            sbom: None,
        },
        certs::unix_now(),
    )?;
    let client = ApiClient::new(
        &format!("http://{}", server.api_addr()),
        crate::pki::token(data)?,
    );
    let (vendor, key_pem) = (m.config.name.clone(), m.firmware_key().public_pem());
    let release = tokio::task::spawn_blocking(move || -> Result<_> {
        client.import_firmware_key(&vendor, &key_pem)?;
        client.upload_release(&manifest, &image)
    })
    .await??;
    let service = server.service().clone();
    let bytes_before: u64 = agents
        .iter()
        .map(|a| {
            a.stats()
                .firmware_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let bar = progress_bar(options, "firmware");
    let start = Instant::now();
    let campaign = service
        .create_campaign(CampaignSpec {
            release: release.digest,
            target: Target::All,
            waves: vec![1, 10, 100],
            failure_threshold: 5,
            rate: None,
        })
        .await?;
    service.order_campaign(&campaign.id, "start").await?;
    wait_for(DEVICE_DEADLINE * 2, || {
        match service.campaign_status(&campaign.id) {
            Ok(s) => {
                bar.set_position((s.total.healthy + s.total.failed) as u64);
                !matches!(s.state, CampaignState::Running)
            }
            Err(_) => false,
        }
    })
    .await;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let status = service.campaign_status(&campaign.id)?;
    let mut latencies = Vec::new();
    let mut failed = 0;
    for (agent, progress) in agents.iter().zip(&status.devices) {
        let runs = service.device(agent.serial())?.firmware_version;
        if progress.state == "healthy" && runs.as_deref() == Some(VERSION) {
            let us = agent
                .stats()
                .last_update_us
                .load(std::sync::atomic::Ordering::Relaxed);
            latencies.push(Duration::from_micros(us));
        } else {
            tracing::warn!(
                serial = agent.serial(),
                state = progress.state,
                "not updated"
            );
            failed += 1;
        }
    }
    let bytes: u64 = agents
        .iter()
        .map(|a| {
            a.stats()
                .firmware_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum::<u64>()
        - bytes_before;
    let mut report = PhaseReport::new(&mut latencies, failed, elapsed);
    report.bytes = Some(bytes);
    Ok(report)
}

/// The operator decommissions a share of the connected fleet: each device wipes itself, signs
/// an attestation bound to the server's nonce, and is decommissioned by the server. A device
/// counts once its record says so, its certificates are on the CRL, the server holds no network
/// credential for it, and the device is back in its factory state.
async fn decommission_phase(
    server: &Server,
    agents: &[Arc<Agent>],
    out: &Path,
    options: &DemoOptions,
) -> Result<PhaseReport> {
    use crate::core::DeviceState;
    let count = (agents.len() * usize::from(options.decommission_percent)).div_ceil(100);
    let chosen: Vec<&Arc<Agent>> = agents.iter().rev().take(count).collect();
    let serials: Vec<String> = chosen.iter().map(|a| a.serial().to_string()).collect();
    let service = server.service().clone();
    let bar = progress_bar(options, "decommission");
    let start = Instant::now();
    server
        .control()
        .decommission(
            serials.clone(),
            protocol::attestation::WipeMethod::PurgeCryptographicErase,
        )
        .await?;
    // Done when the server has ruled and the device has finished its side (it resets itself
    // after the server acknowledged its attestation).
    wait_for(DEVICE_DEADLINE, || {
        let done = chosen
            .iter()
            .filter(|a| {
                let ruled = service
                    .device(a.serial())
                    .is_ok_and(|d| d.state != DeviceState::Decommissioning);
                let finished = a
                    .stats()
                    .decommission_us
                    .load(std::sync::atomic::Ordering::Relaxed)
                    > 0;
                ruled
                    && (finished
                        || service
                            .device(a.serial())
                            .is_ok_and(|d| d.state != DeviceState::Decommissioned))
            })
            .count();
        bar.set_position(done as u64);
        done == serials.len()
    })
    .await;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    // The CRL as a relying party would fetch it now.
    server.control().publish_crls().await?;
    let mut on_crl = std::collections::HashSet::new();
    for crl in server.control().crls() {
        if let Ok((_, parsed)) = x509_parser::parse_x509_crl(&crl.der) {
            on_crl.extend(
                parsed
                    .iter_revoked_certificates()
                    .map(|r| certs::inspect::hex(r.raw_serial())),
            );
        }
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for agent in chosen {
        let record = service.device(agent.serial())?;
        let certs_listed = record
            .certificates
            .iter()
            .filter(|c| c.not_after > certs::unix_now())
            .all(|c| on_crl.contains(&c.serial));
        let device = agent.load_state()?;
        let factory =
            device.phase == device_agent::machine::Phase::Factory && device.ldevid.is_none();
        if record.state == DeviceState::Decommissioned
            && certs_listed
            && record.network.is_none()
            && factory
        {
            let us = agent
                .stats()
                .decommission_us
                .load(std::sync::atomic::Ordering::Relaxed);
            latencies.push(Duration::from_micros(us));
        } else {
            tracing::warn!(
                serial = agent.serial(),
                state = %record.state,
                certs_listed,
                factory,
                "not decommissioned"
            );
            failed += 1;
        }
    }
    if let Some(serial) = serials.first()
        && let Ok(certificate) = service.sanitization_certificate(serial)
    {
        let dir = out.join("sanitization");
        files::write_public(
            &dir.join(format!("{serial}.json")),
            serde_json::to_string_pretty(&certificate)?.as_bytes(),
        )?;
        files::write_public(
            &dir.join(format!("{serial}.html")),
            certificate.to_html().as_bytes(),
        )?;
    }
    Ok(PhaseReport::new(&mut latencies, failed, elapsed))
}

/// Polls `done` every 50 ms for at most `limit`; whether it came true.
async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
