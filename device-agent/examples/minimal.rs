//! The smallest embedding: a device whose identity and state are files, run until Ctrl-C.
//!
//!     cargo run -p device-agent --example minimal -- IDENTITY_DIR STATE_DIR onboarder.example.com:4433

use device_agent::transport::{Endpoint, ServerAddress};
use device_agent::{Agent, AgentOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [identity, state, server] = args.as_slice() else {
        return Err("usage: minimal IDENTITY_DIR STATE_DIR HOST:PORT".into());
    };
    // Where the onboarder is: a DNS name is resolved again at every connection.
    let server: ServerAddress = server.parse()?;
    let endpoint = Endpoint::for_server(server.first().await?)?;
    // The reference platform on files: the factory identity (IDevID, anchors, birth key) and
    // the agent's own state directory.
    let agent = Agent::with_files(
        identity.as_ref(),
        state.as_ref(),
        server,
        endpoint,
        AgentOptions::default(),
    )?;
    // Onboard if needed, keep the operational session, renew, update, and stop when the owner
    // decommissions the device or the future completes.
    agent
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
