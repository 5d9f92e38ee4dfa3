//! An embedding whose keys live in a PKCS#11 token (a secure element, an HSM, SoftHSM2): the
//! identity directory holds certificates only, and every signature is made by the token.
//!
//!     DEVICE_AGENT_PKCS11_PIN=1234 cargo run -p device-agent --example pkcs11 -- \
//!         /usr/lib/softhsm/libsofthsm2.so device IDENTITY_DIR STATE_DIR onboarder.example.com:4433
//!
//! Give the device its birth key first: `device-agent make-key` with `[keys] store = "pkcs11"`,
//! then `factory certify` at the factory.

use std::sync::Arc;

use device_agent::platform::Platform;
use device_agent::platform::pkcs11::{Pkcs11Config, Pkcs11KeyStore};
use device_agent::transport::{Endpoint, ServerAddress};
use device_agent::{Agent, AgentOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, token, identity, state, server] = args.as_slice() else {
        return Err("usage: pkcs11 MODULE TOKEN IDENTITY_DIR STATE_DIR HOST:PORT".into());
    };
    let identity_dir = std::path::Path::new(identity);
    let state_dir = std::path::Path::new(state);
    let identity = certs::Identity::load(identity_dir, certs::unix_now())?;
    let kind = identity.key_kind();
    // The file platform, with the key store replaced by the token.
    let mut platform = Platform::files(identity_dir, state_dir, kind);
    platform.keys = Arc::new(Pkcs11KeyStore::open(
        &Pkcs11Config {
            module: module.into(),
            token: token.clone(),
            pin: std::env::var("DEVICE_AGENT_PKCS11_PIN")?,
        },
        kind,
    )?);
    let server: ServerAddress = server.parse()?;
    let endpoint = Endpoint::for_server(server.first().await?)?;
    let agent = Agent::new(
        Arc::new(identity),
        platform,
        server,
        endpoint,
        AgentOptions::default(),
    );
    let state = agent.onboard().await?;
    println!("onboarded: {:?}", state.phase);
    Ok(())
}
