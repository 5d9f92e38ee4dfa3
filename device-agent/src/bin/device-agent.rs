//! `device-agent`: the reference Linux daemon. Onboards the device if needed, then keeps an
//! operational session with the onboarder and answers its commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use device_agent::{Agent, AgentOptions};

/// Device agent for the onboarder.
///
/// Example:
///   device-agent run --identity ./devices/SN-000001 --state ./state/SN-000001 --server 127.0.0.1:4433
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Onboard if needed, then stay connected and answer commands until interrupted.
    Run {
        /// Factory identity directory (idevid.pem, idevid.key, manufacturer anchors).
        #[arg(long)]
        identity: PathBuf,
        /// Directory for the agent's own state (LDevID, keys, network credentials).
        #[arg(long)]
        state: PathBuf,
        /// Onboarder address (host:port, UDP).
        #[arg(long)]
        server: SocketAddr,
    },
    /// Onboard if needed and exit; prints the resulting state as JSON.
    Onboard {
        /// Factory identity directory.
        #[arg(long)]
        identity: PathBuf,
        /// State directory.
        #[arg(long)]
        state: PathBuf,
        /// Onboarder address.
        #[arg(long)]
        server: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            identity,
            state,
            server,
        } => {
            let agent = agent(&identity, &state, server)?;
            agent
                .run(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
        Command::Onboard {
            identity,
            state,
            server,
        } => {
            let agent = agent(&identity, &state, server)?;
            let s = agent.onboard().await?;
            println!(
                "{}",
                serde_json::json!({
                    "serial": agent.serial(),
                    "phase": s.phase,
                    "firmware_version": s.firmware_version,
                })
            );
        }
    }
    Ok(())
}

fn agent(identity: &std::path::Path, state: &std::path::Path, server: SocketAddr) -> Result<Agent> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let endpoint = device_agent::transport::quic::endpoint_for(server)?;
    Agent::with_files(identity, state, server, endpoint, AgentOptions::default())
        .with_context(|| format!("loading the identity in {}", identity.display()))
}
