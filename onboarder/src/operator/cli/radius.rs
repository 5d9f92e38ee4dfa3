//! `onboarder radius`: setting up FreeRADIUS in front of the owner's access points.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;

use super::say;
use crate::error::{Error, Result};
use crate::radius::freeradius::{InitOptions, RadiusClient, init};

/// `onboarder radius ...`.
#[derive(Subcommand)]
pub enum RadiusCommand {
    /// Write a FreeRADIUS configuration directory for this onboarder and turn on its RADIUS
    /// endpoints (restart the onboarder after).
    ///
    /// FreeRADIUS then checks every device's LDevID (EAP-TLS) against the owner's CAs and
    /// CRLs, which the onboarder keeps in DIR/ca, and asks the onboarder at each login
    /// whether the device may on and which VLAN or filter it gets; MAC authorization requests
    /// get the device's own Wi-Fi passphrase. Refusals and admissions go to the audit log.
    ///
    /// Example:
    ///   onboarder radius init /etc/freeradius/onboarder --client 10.0.0.0/8 \
    ///       --secret-file ap-secret --name radius.example.net
    ///   onboarder serve &
    ///   freeradius -f -d /etc/freeradius/onboarder
    #[command(verbatim_doc_comment)]
    Init(InitArgs),
}

/// `onboarder radius init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// The FreeRADIUS configuration directory to write (new or empty).
    pub out: PathBuf,
    /// Where FreeRADIUS listens for authentication requests.
    #[arg(long, default_value = "0.0.0.0:1812")]
    pub listen: SocketAddr,
    /// The address or network (CIDR) of the access points and switches that may ask.
    #[arg(long, default_value = "127.0.0.1")]
    pub client: String,
    /// A file holding their shared secret (one line); without it, a random one is made and
    /// written into DIR/clients.conf only.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Names in the RADIUS server's certificate (devices see it in EAP-TLS).
    #[arg(long = "name", default_values_t = ["radius.local".to_string()])]
    pub names: Vec<String>,
    /// When the onboarder cannot be asked, accept certificates FreeRADIUS verified itself
    /// (chain and CRL) instead of refusing everyone. MAC authorization always fails closed.
    #[arg(long)]
    pub fail_open_verified: bool,
}

/// Runs `onboarder radius`.
pub fn radius(dir: PathBuf, command: RadiusCommand) -> Result<()> {
    let RadiusCommand::Init(args) = command;
    let secret = match &args.secret_file {
        Some(path) => String::from_utf8(certs::files::read_limited(path, 1024)?)
            .map_err(|_| Error::Config(format!("{} is not text", path.display())))?
            .trim()
            .to_string(),
        None => crate::pki::new_token()?,
    };
    let out = init(
        &dir,
        &args.out,
        &InitOptions {
            listen: args.listen,
            clients: vec![RadiusClient {
                network: args.client,
                secret,
            }],
            names: args.names,
            fail_open_verified: args.fail_open_verified,
        },
        certs::unix_now(),
    )?;
    say!("wrote the FreeRADIUS configuration in {}", out.display());
    say!(
        "  clients:     {} (the shared secret; mode 0600)",
        out.join("clients.conf").display()
    );
    say!(
        "  server cert: {} (issued by the owner's issuing CA)",
        out.join("certs/server.pem").display()
    );
    say!(
        "  CA and CRLs: {} (kept current by the onboarder)",
        out.join("ca").display()
    );
    say!("next: restart the onboarder (its RADIUS endpoints are now on), then");
    say!("      freeradius -f -d {}", out.display());
    Ok(())
}
