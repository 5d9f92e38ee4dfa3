//! `device-agent`: the reference Linux daemon. Onboards the device if needed, then keeps an
//! operational session with the onboarder and answers its commands, until SIGTERM or SIGINT.
//! Configured by flags, environment variables and a TOML file (see the README); speaks
//! systemd's notification protocol when run as a `Type=notify` service.

mod config;
use device_agent::systemd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::{Overrides, Settings, Store};
use device_agent::{Agent, AgentOptions};

/// Device agent for the onboarder.
///
/// Examples:
///   device-agent run --server onboarder.example.com:4433 --identity /etc/device-agent/identity
///   device-agent run --transport coap --server onboarder.example.com:5684
///   device-agent run --config /etc/device-agent/agent.toml
///   device-agent make-key --serial SN-000042 --csr device.csr    (then: factory certify)
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Onboard if needed, then stay connected and answer commands until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        settings: Overrides,
    },
    /// Onboard if needed and exit; prints the resulting state as JSON.
    Onboard {
        #[command(flatten)]
        settings: Overrides,
    },
    /// Make the device's birth key in its key store (a PKCS#11 token, or the identity
    /// directory) and write a CSR for the factory to certify (`factory certify`).
    MakeKey {
        #[command(flatten)]
        settings: Overrides,
        /// The serial the factory assigned to this device.
        #[arg(long)]
        serial: String,
        /// Where to write the CSR (PEM).
        #[arg(long)]
        csr: PathBuf,
    },
}

fn logging(filter: Option<&str>) {
    let filter = std::env::var("DEVICE_AGENT_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .or_else(|| filter.map(str::to_string))
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { settings } => {
            let settings = Settings::resolve(&settings)?;
            logging(settings.log.as_deref());
            run(&settings).await
        }
        Command::Onboard { settings } => {
            let settings = Settings::resolve(&settings)?;
            logging(settings.log.as_deref());
            let agent = agent(&settings).await?;
            let s = agent.onboard().await?;
            println!(
                "{}",
                serde_json::json!({
                    "serial": agent.serial(),
                    "phase": s.phase,
                    "firmware_version": s.firmware_version,
                })
            );
            Ok(())
        }
        Command::MakeKey {
            settings,
            serial,
            csr,
        } => {
            let settings = Settings::resolve(&settings)?;
            logging(settings.log.as_deref());
            make_key(&settings, &serial, &csr)
        }
    }
}

async fn agent(settings: &Settings) -> Result<Agent> {
    let server = settings.server()?;
    let identity = certs::Identity::load(&settings.identity, certs::unix_now())
        .with_context(|| format!("loading the identity in {}", settings.identity.display()))?;
    certs::files::create_private_dir(&settings.state)
        .with_context(|| format!("creating {}", settings.state.display()))?;
    let kind = match settings.keys.kind {
        Some(_) => settings.key_kind()?,
        None => identity.key_kind(),
    };
    let platform = settings.platform(kind)?;
    let endpoint = device_agent::transport::Endpoint::for_server(server.first().await?)?;
    Ok(Agent::new(
        Arc::new(identity),
        platform,
        server.clone(),
        endpoint,
        AgentOptions {
            firmware_version: settings.firmware_version.clone(),
            hardware: settings.hardware.clone(),
            timeouts: settings.timeouts,
            transport: settings.transport,
            https_url: settings.https.clone(),
            ..AgentOptions::default()
        },
    ))
}

async fn run(settings: &Settings) -> Result<()> {
    let agent = Arc::new(agent(settings).await?);
    tracing::info!(
        serial = agent.serial(),
        "device-agent {} for {}",
        device_agent::driver::AGENT_VERSION,
        settings.server()?
    );
    systemd::notify("READY=1");
    if let Some(every) = systemd::watchdog_interval() {
        let agent = agent.clone();
        tokio::spawn(async move {
            loop {
                let stats = agent.stats();
                systemd::notify(&format!(
                    "WATCHDOG=1\nSTATUS=sessions {}, renewals {}, updates {}, failures {}",
                    stats.sessions.load(Ordering::Relaxed),
                    stats.renewals.load(Ordering::Relaxed),
                    stats.updates.load(Ordering::Relaxed),
                    stats.failures.load(Ordering::Relaxed),
                ));
                tokio::time::sleep(every).await;
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop = async move {
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!("{signal}: stopping");
        systemd::notify("STOPPING=1");
    };
    agent.run(stop).await?;
    // The session is gone with the run loop; let its close reach the onboarder.
    let _ = tokio::time::timeout(Duration::from_secs(2), agent.wait_idle()).await;
    tracing::info!("stopped");
    Ok(())
}

fn make_key(settings: &Settings, serial: &str, csr: &std::path::Path) -> Result<()> {
    certs::profile::validate_serial(serial)?;
    let kind = settings.key_kind()?;
    let key: Arc<dyn device_agent::platform::DeviceKey> = match settings.keys.store {
        Store::Files => {
            let path = settings.identity.join(certs::identity::layout::IDEVID_KEY);
            anyhow::ensure!(
                !path.exists(),
                "{} exists: this device has its birth key",
                path.display()
            );
            let key = certs::KeyPair::generate(kind)?;
            certs::files::write_secret(&path, key.to_pem().as_bytes())?;
            Arc::new(key)
        }
        #[cfg(feature = "pkcs11")]
        Store::Pkcs11 => settings.pkcs11(kind)?.make_idevid_key()?,
        #[cfg(not(feature = "pkcs11"))]
        Store::Pkcs11 => anyhow::bail!("this device-agent was built without the pkcs11 feature"),
    };
    let signer = device_agent::platform::key::CsrSigner::new(key.as_ref())?;
    let der = certs::csr::build_birth_csr(serial, &signer)?;
    certs::files::write_public(
        csr,
        certs::files::pem_block("CERTIFICATE REQUEST", &der).as_bytes(),
    )?;
    tracing::info!("birth key made for {serial}; CSR in {}", csr.display());
    Ok(())
}
