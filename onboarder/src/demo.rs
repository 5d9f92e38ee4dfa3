//! `onboarder demo`: the whole product on embedded defaults, against the real server and real
//! agents over real QUIC connections on loopback (or, with `--transport`, our protocol over
//! HTTPS, or CoAP over DTLS as constrained devices speak it).
//!
//! It creates a manufacturer and N devices, an owner (onboarder data directory) that imports
//! the manufacturer's anchor and vouchers through the admin API, starts the server, and runs
//! every lifecycle phase of [`crate::exercise`] with N agents on files. Everything is left in
//! the output directory for anyone to check with standard tools:
//!
//! ```text
//! OUT/manufacturer/                 root-ca.pem, masa.pem, firmware.pub (+ keys, 0600)
//! OUT/onboarder/                    the server's data directory (see config.rs): ca/, crl/, tls/, store/
//! OUT/devices/<serial>/identity/    idevid.pem, idevid.key, manufacturer-root.pem, masa.pem, ...
//! OUT/devices/<serial>/state/       state.cbor, ldevid.pem, chain.pem, ldevid.key, network.json, data/, firmware/
//! OUT/vouchers.cbor                 the voucher bundle the owner imported
//! OUT/sanitization/<serial>.json|.html  certificate of sanitization of a decommissioned device
//! OUT/freeradius/                   a FreeRADIUS configuration for this owner (`freeradius -C -d`
//!                                   checks it); ca/ holds the CAs and CRLs it would verify with
//! OUT/report.json                   the report printed last
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{KeyKind, files};
use device_agent::transport::Transport;
use device_agent::{Agent, AgentOptions};
use serde::Serialize;

use crate::config::{Config, layout};
use crate::exercise::{Exercise, Fleet, PhaseReport, incompressible_image, mac_of};
use crate::operator::client::ApiClient;
use crate::server::{Listen, Server};

/// Size of the demo's firmware image.
const IMAGE_SIZE: usize = 1024 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of devices.
    pub devices: usize,
    /// Where to keep everything; a temporary directory when `None`.
    pub out: Option<PathBuf>,
    /// Devices onboarding at the same time.
    pub concurrency: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Percentage of the fleet decommissioned at the end.
    pub decommission_percent: u8,
    /// How the devices reach the onboarder.
    pub transport: Transport,
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
    if options.devices == 0 {
        return Err(Error::Config("--devices must be at least 1".into()));
    }
    let temp;
    let out = match &options.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(Error::Config(format!(
                    "{} is not empty; the demo needs a fresh directory",
                    dir.display()
                )));
            }
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().map_err(|e| Error::os("a temporary directory", e))?;
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
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.quic_listen = loopback;
    // The admin API's port is in the RADIUS server's configuration, so it is chosen first.
    config.api_listen = std::net::TcpListener::bind(loopback)
        .and_then(|l| l.local_addr())
        .map_err(|e| crate::error::Error::os("choosing the API port", e))?;
    // Every agent connects from this machine's one address.
    config.limits = crate::transport::limits::Limits::single_host();
    // The HTTPS listener, for the firmware phase over HTTPS: its port is in the offers' URLs,
    // so it is chosen before the start.
    let https = std::net::TcpListener::bind(loopback)
        .and_then(|l| l.local_addr())
        .map_err(|e| crate::error::Error::os("choosing the HTTPS port", e))?;
    config.https_listen = Some(https);
    config.policy.firmware_url = Some(format!("https://localhost:{}/firmware", https.port()));
    if options.transport == Transport::Coap {
        config.coap_listen = Some(loopback);
    }
    crate::pki::init(&data, &config, now)?;
    // A FreeRADIUS configuration for this owner (not run here; `freeradius -C -d
    // OUT/freeradius` checks it), which turns the onboarder's RADIUS endpoints on.
    crate::radius::freeradius::init(
        &data,
        &out.join("freeradius"),
        &crate::radius::freeradius::InitOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 1812)),
            clients: vec![crate::radius::freeradius::RadiusClient {
                network: "127.0.0.1".into(),
                secret: crate::pki::new_token()?,
            }],
            names: vec!["radius.local".into()],
            fail_open_verified: false,
        },
        now,
    )?;
    let server = Server::start(&data, Listen::default()).await?;
    let access = Arc::new(crate::radius::client::AccessClient::new(
        &format!("http://{}", server.api_addr()),
        crate::radius::token(&data)?,
    ));
    let (address, agent_options) = agent_settings(&server, options.transport, https)?;
    let api = Arc::new(ApiClient::new(
        &format!("http://{}", server.api_addr()),
        crate::pki::token(&data)?,
    ));

    let devices = mint(manufacturer.clone(), &out, options.devices, now).await?;
    import(&manufacturer, &api, &data, &out, &devices, now).await?;

    let endpoints = (0..2)
        .map(|_| device_agent::transport::quic::endpoint_for(server.quic_addr()))
        .collect::<Result<Vec<_>, _>>()?;
    let agents = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut options = agent_options.clone();
            options
                .hardware
                .insert(crate::core::network_access::MAC_FACT.into(), mac_of(i));
            Agent::with_files(
                &d.identity,
                &d.state,
                address,
                endpoints[i % endpoints.len()].clone(),
                options,
            )
            .map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let exercise = Exercise {
        api: api.clone(),
        manufacturer,
        concurrency: options.concurrency,
        progress: options.progress,
    };

    let mut phases = BTreeMap::new();
    phases.insert("onboard".to_string(), exercise.onboard(&agents).await?);
    // Each device collects some data of its owner (encrypted at rest), which the
    // decommissioning must destroy.
    for d in &devices {
        device_agent::platform::wiper::Vault::new(&d.state)
            .put(
                "telemetry",
                format!("{} readings ", d.serial).repeat(256).as_bytes(),
            )
            .map_err(device_agent::AgentError::from)?;
    }
    let fleet = Fleet::start(&agents);
    exercise.connected(agents.len()).await?;
    phases.insert("rotate".to_string(), exercise.rotate(&agents).await?);
    phases.insert(
        "root_rollover".to_string(),
        exercise.root_rollover(&agents).await?,
    );
    // The same fleet updated twice: over the QUIC session, then from the HTTPS listener.
    phases.insert(
        "firmware".to_string(),
        exercise
            .firmware(&agents, incompressible_image(IMAGE_SIZE, 1), 1, false)
            .await?,
    );
    phases.insert(
        "firmware_https".to_string(),
        exercise
            .firmware(&agents, incompressible_image(IMAGE_SIZE, 2), 2, true)
            .await?,
    );
    phases.insert(
        "support_notice".to_string(),
        exercise.support_notice(&agents).await?,
    );
    let count = (agents.len() * usize::from(options.decommission_percent)).div_ceil(100);
    let leaving = &agents[agents.len() - count..];
    phases.insert(
        "decommission".to_string(),
        exercise.decommission(leaving).await?,
    );
    phases.insert(
        "network_access".to_string(),
        exercise.network_access(access, &agents, count).await?,
    );
    fleet.stop().await;
    if let Some(agent) = leaving.first() {
        certify(&server, agent.serial(), &out)?;
    }
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

/// Where the agents reach `server` over `transport`, and their options for it.
pub fn agent_settings(
    server: &Server,
    transport: Transport,
    https: std::net::SocketAddr,
) -> Result<(std::net::SocketAddr, AgentOptions)> {
    let address = match transport {
        Transport::Coap => server
            .coap()
            .ok_or_else(|| Error::Config("no CoAPS listener".into()))?
            .local_addr()
            .map_err(|e| Error::os("the CoAPS address", e))?,
        _ => server.quic_addr(),
    };
    let options = AgentOptions {
        transport,
        https_url: (transport == Transport::Https)
            .then(|| format!("https://localhost:{}", https.port())),
        ..AgentOptions::default()
    };
    Ok((address, options))
}

/// Leaves the certificate of sanitization of `serial` in `OUT/sanitization/`, and its history
/// bundle in `OUT/history/`.
fn certify(server: &Server, serial: &str, out: &Path) -> Result<()> {
    let id = server.service().resolve(serial)?;
    let certificate = server.service().sanitization_certificate(&id)?;
    let dir = out.join("sanitization");
    files::write_public(
        &dir.join(format!("{serial}.json")),
        serde_json::to_string_pretty(&certificate)?.as_bytes(),
    )?;
    files::write_public(
        &dir.join(format!("{serial}.html")),
        certificate.to_html().as_bytes(),
    )?;
    // Its whole history, for anyone to check with the owner root alone.
    let bundle = server.service().history(&id)?;
    files::write_public(
        &out.join("history").join(format!("{serial}.cbor")),
        &protocol::cbor::to_vec(&bundle),
    )?;
    Ok(())
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
    api: &Arc<ApiClient>,
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
    let anchor = crate::operator::AnchorImport {
        pem: files::cert_pem(m.root_cert()),
        masa_pem: Some(files::cert_pem(m.masa_cert())),
        name: None,
    };
    let api = api.clone();
    let report =
        tokio::task::spawn_blocking(move || -> Result<_, crate::operator::client::ClientError> {
            api.import_anchor(&anchor)?;
            api.import_voucher_list(&vouchers)
        })
        .await??;
    if !report.rejected.is_empty() || report.imported != devices.len() {
        return Err(Error::Failed(format!("voucher import: {report:?}")));
    }
    Ok(())
}
