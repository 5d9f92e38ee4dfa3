//! `fleet`: the fleet simulator. Runs the onboarder as its own process and N real agents (in
//! memory, in this process) through every lifecycle phase over loopback QUIC, and reports per
//! phase the devices done and failed, throughput, latency percentiles, and the server's CPU time
//! per operation from the server process's own accounting; plus the server's peak RSS and its
//! memory and CPU per connected idle device.
//!
//!     cargo build --release --workspace && target/release/fleet --devices 10000 --json
//!
//! With `--transport coap` the agents speak CoAP over DTLS to the onboarder's CoAPS listener
//! (`https`: our protocol over HTTPS), through the same phases.
//!
//! With `--store postgres://...` the state is in PostgreSQL (a fresh schema per run), and with
//! `--replicas N` N onboarder processes share it, the devices spread over them; the server's
//! CPU and memory are then the replicas' sums (the database's own are not counted).
//!
//! With `--est` the devices are EST clients instead (RFC 7030 over HTTPS, a TLS connection per
//! request as a standard client makes): phases `est_enroll` (simpleenroll with the IDevID) and
//! `est_reenroll` (simplereenroll with the new LDevID).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benches::ceiling::Cost;
use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{Birth, KeyKind, unix_now};
use clap::Parser;
use device_agent::platform::Platform;
use device_agent::transport::Transport;
use device_agent::{Agent, AgentOptions};
use onboarder::config::Config;
use onboarder::exercise::{Exercise, Fleet, PhaseReport, incompressible_image};
use onboarder::operator::client::ApiClient;
use serde::Serialize;

/// Fleet simulator for the onboarder.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Number of devices.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Devices onboarding at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Size of the firmware image in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    image: usize,
    /// Percentage of the fleet decommissioned at the end.
    #[arg(long, default_value_t = 10)]
    decommission: u8,
    /// The onboarder binary (default: next to this one).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Print the report as JSON (the last line of stdout).
    #[arg(long)]
    json: bool,
    /// The devices enroll and re-enroll over EST (HTTPS) instead of living their lifecycle
    /// over QUIC.
    #[arg(long)]
    est: bool,
    /// How the devices reach the onboarder: quic, https (our protocol over HTTPS) or coap
    /// (CoAP over DTLS, as constrained devices do).
    #[arg(long, default_value_t = Transport::Quic)]
    transport: Transport,
    /// Keep the state in this PostgreSQL database (a fresh schema of it for this run) instead
    /// of the embedded store.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Server processes on the one database (needs --store); devices are spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    replicas: u16,
}

/// One phase, with the server's cost.
#[derive(Serialize)]
struct Phase {
    #[serde(flatten)]
    report: PhaseReport,
    /// Server CPU time (user + system) per completed device, milliseconds.
    server_cpu_ms_per_op: f64,
    /// Server resident memory at the end of the phase, MiB.
    server_rss_mib: f64,
    /// The rate the phase's cryptography alone would allow on this machine's cores (both
    /// sides' share of it, timed in this run; see [`Ceiling`]), per second; absent for a phase
    /// that needs none.
    #[serde(skip_serializing_if = "Option::is_none")]
    ceiling_per_second: Option<f64>,
    /// The phase's rate over that ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_to_ceiling: Option<f64>,
    /// The server's CPU per device over the server's share of the ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_to_ceiling: Option<f64>,
}

impl Phase {
    /// `report` with the server's CPU spent on it (seconds) and its memory now, beside the
    /// phase's ceiling.
    fn new(
        name: &str,
        report: PhaseReport,
        server_cpu_seconds: f64,
        server: &Proc,
        ceiling: &Ceiling,
        image_mib: f64,
    ) -> Phase {
        let server_cpu_ms_per_op = server_cpu_seconds * 1000.0 / report.ok.max(1) as f64;
        let cost = ceiling.of(name, image_mib);
        let ceiling_per_second = cost
            .filter(|c| c.both_ms() > 0.0)
            .map(|c| ceiling.cores as f64 * 1000.0 / c.both_ms());
        Phase {
            ceiling_per_second: ceiling_per_second.map(round),
            rate_to_ceiling: ceiling_per_second.map(|c| round(report.per_second / c)),
            server_cpu_to_ceiling: cost
                .filter(|c| c.server_ms > 0.0)
                .map(|c| round(server_cpu_ms_per_op / c.server_ms)),
            server_cpu_ms_per_op: round(server_cpu_ms_per_op),
            server_rss_mib: round(server.status_kib("VmRSS:") / 1024.0),
            report,
        }
    }
}

/// The cryptography each phase cannot do without, timed in this run before the phases (the
/// machine otherwise idle): a mutual-TLS QUIC handshake against the server itself, each side's
/// CPU from the processes' own accounting, and the rest in this process
/// ([`benches::ceiling`]).
#[derive(Serialize, Clone, Copy)]
struct Ceiling {
    /// Cores the two processes share.
    cores: usize,
    handshake: Cost,
    #[serde(flatten)]
    crypto: benches::ceiling::CryptoCosts,
}

impl Ceiling {
    /// The cryptography of one device's turn in `phase` (an image of `image_mib` MiB).
    fn of(&self, phase: &str, image_mib: f64) -> Option<Cost> {
        let (hs, c) = (self.handshake, &self.crypto);
        Some(match phase {
            // Two sessions (birth certificate, then operational), the voucher, the enrollment.
            "onboard" => hs.times_plus(2.0, c.voucher + c.enroll),
            // A new key and certificate, then a session with it.
            "rotate" | "root_rollover" => hs + c.enroll,
            "firmware" => c.image_mib.times_plus(image_mib, Cost::default()),
            // Plus the HTTPS connection's handshake (counted as a QUIC one).
            "firmware_https" => c.image_mib.times_plus(image_mib, hs),
            "decommission" => c.attestation,
            // A TLS connection per request (counted as a QUIC handshake) and the enrollment.
            "est_enroll" | "est_reenroll" => hs + c.enroll,
            _ => return None,
        })
    }
}

#[derive(Serialize)]
struct ServerReport {
    /// Peak resident set size of the server process, MiB.
    peak_rss_mib: f64,
    /// Server memory per connected idle device (RSS with the fleet connected minus without),
    /// KiB.
    rss_per_idle_device_kib: f64,
    /// Server CPU with the whole fleet connected and nothing to do (keep-alives, timers),
    /// percent of one core, over [`IDLE_WINDOW`].
    idle_cpu_percent: f64,
    /// Server CPU time over the whole run, seconds.
    cpu_seconds: f64,
}

/// The simulator's own memory: what the simulated devices cost this process.
#[derive(Serialize)]
struct SimulatorReport {
    /// Peak resident set size of this process, MiB.
    peak_rss_mib: f64,
    /// Resident memory per simulated device with the whole fleet minted, onboarded and
    /// connected (RSS then minus RSS before minting), KiB: keys, state, slots and the device's
    /// side of its QUIC connection.
    rss_per_device_kib: f64,
}

#[derive(Serialize)]
struct Report {
    devices: usize,
    phases: BTreeMap<String, Phase>,
    ceiling: Option<Ceiling>,
    server: ServerReport,
    simulator: SimulatorReport,
    /// All phases together, seconds.
    total_seconds: f64,
}

/// What /proc says about the server processes, summed.
struct Proc(Vec<u32>);

impl Proc {
    fn cpu_seconds(&self) -> f64 {
        self.0.iter().map(|pid| cpu_seconds(*pid)).sum()
    }

    fn status_kib(&self, field: &str) -> f64 {
        self.0.iter().map(|pid| status_kib(*pid, field)).sum()
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    {
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
        // utime and stime, in clock ticks of 1/100 s on Linux.
        (ticks(11) + ticks(12)) / 100.0
    }
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// How long the connected fleet is left idle to measure what idling costs the server: two
/// heartbeats of the default policy, so that every device's keep-alives fall in it.
const IDLE_WINDOW: Duration = Duration::from_secs(50);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the admin API answers.
async fn wait_for_api(api: &ApiClient) -> Result<()> {
    for _ in 0..400 {
        if api.stats().is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the onboarder did not come up")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let progress = std::io::stderr().is_terminal();
    let dir = tempfile::tempdir()?;
    let now = unix_now();
    let manufacturer = Arc::new(Manufacturer::create(
        ManufacturerConfig::new("Fleet Devices"),
        now,
    )?);

    // The server, in its own process.
    let data = dir.path().join("onboarder");
    let mut config = Config::new("Fleet Owner");
    let quic: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    config.quic_listen = quic;
    config.api_listen = format!("127.0.0.1:{}", free_port()?).parse()?;
    // Every simulated device connects from this machine's one address.
    config.limits = onboarder::transport::limits::Limits::single_host();
    // The HTTPS listener: EST in --est mode, firmware images otherwise.
    let https: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    config.https_listen = Some(https);
    config.policy.firmware_url = Some(format!("https://localhost:{}/firmware", https.port()));
    let coap: std::net::SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    if cli.transport == Transport::Coap {
        config.coap_listen = Some(coap);
    }
    anyhow::ensure!(
        cli.replicas == 1 || cli.store.is_some(),
        "--replicas needs a database (--store)"
    );
    if let Some(url) = &cli.store {
        config.store = Some(onboarder::store::postgres::fresh_schema(url)?);
    }
    onboarder::pki::init(&data, &config, now)?;
    // The onboarder's RADIUS endpoints, asked as FreeRADIUS would in the network_access phase.
    onboarder::radius::freeradius::init(
        &data,
        &dir.path().join("freeradius"),
        &onboarder::radius::freeradius::InitOptions {
            listen: "127.0.0.1:1812".parse()?,
            clients: vec![onboarder::radius::freeradius::RadiusClient {
                network: "127.0.0.1".into(),
                secret: "fleet-secret".into(),
            }],
            names: vec!["radius.local".into()],
            fail_open_verified: false,
        },
        now,
    )?;
    let access = Arc::new(onboarder::radius::client::AccessClient::new(
        &format!("http://{}", config.api_listen),
        onboarder::radius::token(&data)?,
    ));
    let binary = match cli.server.clone() {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("onboarder"),
    };
    // Replica 0 on the configured addresses; the others on addresses of their own.
    let mut servers = Vec::new();
    let mut quic_addrs = vec![quic];
    let mut coap_addrs = vec![coap];
    let mut api_addrs = vec![config.api_listen];
    for r in 0..cli.replicas {
        let mut command = Command::new(&binary);
        command.args(["--dir", data.to_str().unwrap_or_default(), "serve"]);
        if r > 0 {
            let q: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let c: std::net::SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
            let a: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            api_addrs.push(a);
            command
                .args(["--listen", &q.to_string()])
                .args(["--api", &a.to_string()])
                .args(["--https", &format!("127.0.0.1:{}", free_port()?)]);
            if cli.transport == Transport::Coap {
                command.args(["--coap", &c.to_string()]);
            }
            quic_addrs.push(q);
            coap_addrs.push(c);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with cargo build --release --workspace)",
                    binary.display()
                )
            })?;
        servers.push(Server(child));
        if r == 0 && cli.replicas > 1 {
            // The first replica makes the schema before the others start.
            wait_for_api(&ApiClient::for_data_dir(&data)?).await?;
        }
    }
    let proc = Proc(servers.iter().map(|s| s.0.id()).collect());
    let api = Arc::new(ApiClient::for_data_dir(&data)?);
    wait_for_api(&api).await?;

    // The devices: birth identities minted in memory, in parallel.
    let own = Proc(vec![std::process::id()]);
    let rss_before_devices = own.status_kib("VmRSS:");
    let started = Instant::now();
    let serials: Vec<String> = (1..=cli.devices).map(|i| format!("SN-{i:07}")).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut minting = Vec::new();
    for part in serials.chunks(cli.devices.div_ceil(workers).max(1)) {
        let (part, m) = (part.to_vec(), manufacturer.clone());
        minting.push(tokio::task::spawn_blocking(move || {
            part.iter()
                .map(|s| m.mint(s, KeyKind::P256, now))
                .collect::<Result<Vec<Birth>, _>>()
        }));
    }
    let mut identities = Vec::with_capacity(cli.devices);
    for m in minting {
        identities.extend(m.await??);
    }
    let owner_root = certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT))?;
    let vouchers = serials
        .iter()
        .map(|s| manufacturer.voucher(s, &owner_root, now, now + 86_400))
        .collect::<Result<Vec<_>, _>>()?;
    let anchor = onboarder::operator::AnchorImport {
        pem: certs::files::cert_pem(manufacturer.root_cert()),
        masa_pem: Some(certs::files::cert_pem(manufacturer.masa_cert())),
        name: None,
    };
    let importer = api.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        importer.import_anchor(&anchor)?;
        let report = importer.import_voucher_list(&vouchers)?;
        anyhow::ensure!(report.rejected.is_empty(), "{:?}", report.rejected.first());
        Ok(())
    })
    .await??;
    let ceiling = measure_ceiling(&proc, &own, &manufacturer, quic).await?;
    let image_mib = cli.image as f64 / (1024.0 * 1024.0);
    if cli.est {
        let est = benches::est::EstServer {
            addr: https,
            owner_root,
        };
        let all = Instant::now();
        let cpu_start = proc.cpu_seconds();
        let mut phases = BTreeMap::new();
        let mut credentials: Vec<(String, benches::est::Credential)> = identities
            .into_iter()
            .map(|birth| {
                let serial = birth.identity.serial.clone();
                let idevid = benches::est::Credential {
                    certificate: birth.identity.idevid,
                    key: birth.key,
                };
                (serial, idevid)
            })
            .collect();
        for (name, resource) in [
            ("est_enroll", "simpleenroll"),
            ("est_reenroll", "simplereenroll"),
        ] {
            let cpu = proc.cpu_seconds();
            let (report, next) = est_phase(&est, resource, credentials, cli.concurrency).await;
            credentials = next;
            let cpu = proc.cpu_seconds() - cpu;
            let phase = Phase::new(name, report, cpu, &proc, &ceiling, image_mib);
            phases.insert(name.to_string(), phase);
        }
        let report = Report {
            devices: cli.devices,
            phases,
            ceiling: Some(ceiling),
            server: ServerReport {
                peak_rss_mib: round(proc.status_kib("VmHWM:") / 1024.0),
                rss_per_idle_device_kib: 0.0,
                idle_cpu_percent: 0.0,
                cpu_seconds: round(proc.cpu_seconds() - cpu_start),
            },
            simulator: simulator_report(
                &own,
                own.status_kib("VmRSS:") - rss_before_devices,
                cli.devices,
            ),
            total_seconds: round(all.elapsed().as_secs_f64()),
        };
        return finish(&cli, report);
    }
    // One client socket per 2,000 devices (at least 4): each has its own receive buffer and
    // its own driver task, as devices on their own network stacks would.
    let endpoints = (0..(cli.devices / 2000).max(4))
        .map(|_| device_agent::transport::quic::endpoint_for(quic))
        .collect::<Result<Vec<_>, _>>()?;
    let addresses = if cli.transport == Transport::Coap {
        coap_addrs
    } else {
        quic_addrs
    };
    let options = AgentOptions {
        transport: cli.transport,
        https_url: (cli.transport == Transport::Https)
            .then(|| format!("https://localhost:{}", https.port())),
        ..AgentOptions::default()
    };
    let agents = identities
        .into_iter()
        .enumerate()
        .map(|(i, birth)| {
            let mut options = options.clone();
            options.hardware.insert(
                onboarder::core::network_access::MAC_FACT.into(),
                onboarder::exercise::mac_of(i),
            );
            Ok(Arc::new(Agent::new(
                Arc::new(birth.identity),
                Platform::memory(birth.key),
                addresses[i % addresses.len()],
                endpoints[i % endpoints.len()].clone(),
                options,
            )))
        })
        .collect::<Result<Vec<_>>>()?;
    if !cli.json {
        eprintln!(
            "{} devices minted and expected in {:.1?}",
            cli.devices,
            started.elapsed()
        );
    }

    let exercise = Exercise {
        api: api.clone(),
        manufacturer,
        concurrency: cli.concurrency,
        progress,
    };
    let mut phases = BTreeMap::new();
    let cpu_start = proc.cpu_seconds();
    let mut measure = |name: &str, report: PhaseReport, cpu_before: f64| {
        let cpu = proc.cpu_seconds() - cpu_before;
        let phase = Phase::new(name, report, cpu, &proc, &ceiling, image_mib);
        phases.insert(name.to_string(), phase);
    };
    let all_phases = Instant::now();

    let cpu = proc.cpu_seconds();
    let report = exercise.onboard(&agents).await?;
    measure("onboard", report, cpu);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_disconnected = proc.status_kib("VmRSS:");
    let fleet = Fleet::start(&agents);
    if cli.replicas == 1 {
        exercise.connected(agents.len()).await?;
    } else {
        // Each replica counts its own sessions.
        let token = onboarder::pki::token(&data)?;
        let apis: Vec<ApiClient> = api_addrs
            .iter()
            .map(|a| ApiClient::new(&format!("http://{a}"), token.clone()))
            .collect();
        let wanted = agents.len();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + onboarder::exercise::phase_deadline(wanted);
            loop {
                let connected: usize = apis
                    .iter()
                    .map(|a| a.stats().map_or(0, |s| s.sessions))
                    .sum();
                if connected >= wanted {
                    return Ok(());
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{connected} of {wanted} connected"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await??;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = proc.status_kib("VmRSS:");
    let simulator_connected = own.status_kib("VmRSS:") - rss_before_devices;
    let cpu = proc.cpu_seconds();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cpu_percent = (proc.cpu_seconds() - cpu) / IDLE_WINDOW.as_secs_f64() * 100.0;

    let cpu = proc.cpu_seconds();
    let report = exercise.rotate(&agents).await?;
    measure("rotate", report, cpu);
    let cpu = proc.cpu_seconds();
    let report = exercise.root_rollover(&agents).await?;
    measure("root_rollover", report, cpu);
    // The same fleet updated twice, the same image size: over the QUIC session, then from
    // the HTTPS listener.
    for (phase, sequence, over_https) in [("firmware", 1, false), ("firmware_https", 2, true)] {
        let cpu = proc.cpu_seconds();
        let report = exercise
            .firmware(
                &agents,
                incompressible_image(cli.image, sequence),
                sequence,
                over_https,
            )
            .await?;
        measure(phase, report, cpu);
    }
    let cpu = proc.cpu_seconds();
    let report = exercise.support_notice(&agents).await?;
    measure("support_notice", report, cpu);
    let count = (agents.len() * usize::from(cli.decommission)).div_ceil(100);
    let cpu = proc.cpu_seconds();
    let report = exercise
        .decommission(&agents[agents.len() - count..])
        .await?;
    measure("decommission", report, cpu);
    let cpu = proc.cpu_seconds();
    let report = exercise.network_access(access, &agents, count).await?;
    measure("network_access", report, cpu);
    let total = all_phases.elapsed();
    fleet.stop().await;

    let report = Report {
        devices: cli.devices,
        phases,
        ceiling: Some(ceiling),
        server: ServerReport {
            peak_rss_mib: round(proc.status_kib("VmHWM:") / 1024.0),
            rss_per_idle_device_kib: round((rss_connected - rss_disconnected) / cli.devices as f64),
            idle_cpu_percent: round(idle_cpu_percent),
            cpu_seconds: round(proc.cpu_seconds() - cpu_start),
        },
        simulator: simulator_report(&own, simulator_connected, cli.devices),
        total_seconds: round(total.as_secs_f64()),
    };
    finish(&cli, report)
}

/// Times the ceiling (see [`Ceiling`]): 800 handshakes with a device's birth certificate
/// against the server at `quic`, four at a time, each side's CPU per handshake from /proc;
/// then the rest of the cryptography in this process.
async fn measure_ceiling(
    server: &Proc,
    own: &Proc,
    manufacturer: &Arc<Manufacturer>,
    quic: std::net::SocketAddr,
) -> Result<Ceiling> {
    use device_agent::transport::quic::{Session, endpoint_for, provisional_config};
    const HANDSHAKES: usize = 800;
    let device = manufacturer.mint("SN-CEILING", KeyKind::P256, unix_now())?;
    let key: Arc<dyn device_agent::platform::DeviceKey> = Arc::new(device.key);
    let idevid = std::slice::from_ref(&device.identity.idevid);
    let config = provisional_config(idevid, key, Default::default())?;
    let endpoint = endpoint_for(quic)?;
    let handshake = || async {
        Session::connect(&endpoint, config.clone(), quic, None)
            .await
            .map(|s| s.close())
    };
    handshake().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (server_before, own_before) = (server.cpu_seconds(), own.cpu_seconds());
    for _ in 0..HANDSHAKES / 4 {
        let (a, b, c, d) = tokio::join!(handshake(), handshake(), handshake(), handshake());
        a.and(b).and(c).and(d)?;
    }
    // The server checks the last client certificates after the devices are through.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per = |seconds: f64| seconds * 1000.0 / HANDSHAKES as f64;
    let handshake = Cost {
        server_ms: per(server.cpu_seconds() - server_before),
        device_ms: per(own.cpu_seconds() - own_before),
    }
    .rounded();
    let manufacturer = manufacturer.clone();
    let crypto = tokio::task::spawn_blocking(move || {
        benches::ceiling::CryptoCosts::measure(&manufacturer, 200)
    })
    .await??;
    Ok(Ceiling {
        cores: std::thread::available_parallelism().map_or(2, |n| n.get()),
        handshake,
        crypto,
    })
}

fn simulator_report(own: &Proc, rss_devices_kib: f64, devices: usize) -> SimulatorReport {
    SimulatorReport {
        peak_rss_mib: round(own.status_kib("VmHWM:") / 1024.0),
        rss_per_device_kib: round(rss_devices_kib / devices.max(1) as f64),
    }
}

/// One EST phase over every device, `concurrency` at a time: each device's next credential
/// (the one it got, or the one it had if it failed).
async fn est_phase(
    est: &benches::est::EstServer,
    resource: &'static str,
    credentials: Vec<(String, benches::est::Credential)>,
    concurrency: usize,
) -> (PhaseReport, Vec<(String, benches::est::Credential)>) {
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (serial, credential) in credentials {
        let (est, permits) = (est.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let at = Instant::now();
            let result = est.enroll(resource, &serial, &credential).await;
            (serial, credential, result, at.elapsed())
        });
    }
    let (mut latencies, mut failed, mut next) = (Vec::new(), 0, Vec::new());
    while let Some(done) = tasks.join_next().await {
        let Ok((serial, old, result, took)) = done else {
            failed += 1;
            continue;
        };
        match result {
            Ok(new) => {
                latencies.push(took);
                next.push((serial, new));
            }
            Err(e) => {
                if failed == 0 {
                    eprintln!("{serial}: {resource}: {e:#}");
                }
                failed += 1;
                next.push((serial, old));
            }
        }
    }
    (
        PhaseReport::new(&mut latencies, failed, started.elapsed()),
        next,
    )
}

/// Prints the report (a table for people unless `--json`; the JSON line last) and fails when a
/// device failed a phase.
fn finish(cli: &Cli, report: Report) -> Result<()> {
    if !cli.json {
        for (name, p) in &report.phases {
            let r = &p.report;
            let ceiling = match (p.rate_to_ceiling, p.server_cpu_to_ceiling) {
                (Some(rate), Some(cpu)) => {
                    format!("; {rate:.2} of the ceiling's rate, server CPU {cpu:.2} x its share")
                }
                _ => String::new(),
            };
            eprintln!(
                "{name:>12}: {} ok, {} failed in {:.2}s ({:.1}/s, p50 {:.1} ms, p99 {:.1} ms, server {:.2} ms CPU each, RSS {:.0} MiB{ceiling})",
                r.ok,
                r.failed,
                r.seconds,
                r.per_second,
                r.p50_ms,
                r.p99_ms,
                p.server_cpu_ms_per_op,
                p.server_rss_mib
            );
        }
        eprintln!(
            "server: peak RSS {:.1} MiB, {:.1} KiB and {:.1} % of a core for the idle fleet; simulator: peak RSS {:.1} MiB, {:.1} KiB per device; all phases in {:.1}s",
            report.server.peak_rss_mib,
            report.server.rss_per_idle_device_kib,
            report.server.idle_cpu_percent,
            report.simulator.peak_rss_mib,
            report.simulator.rss_per_device_kib,
            report.total_seconds
        );
    }
    println!("{}", serde_json::to_string(&report)?);
    let failed: usize = report.phases.values().map(|p| p.report.failed).sum();
    anyhow::ensure!(failed == 0, "{failed} device phases failed");
    Ok(())
}
