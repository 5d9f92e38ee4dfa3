//! Network access through FreeRADIUS, the RADIUS server behind the owner's Wi-Fi access points
//! and 802.1X switches: the edge between it and the service (the rules are in
//! [`crate::core::network_access`]).
//!
//! Two paths, so that a revocation does not wait for a CRL reload:
//! - [`ca_dir`]: the directory its EAP-TLS module verifies certificates with (owner roots,
//!   issuing CAs, current CRLs), rewritten whole at every CRL publication; FreeRADIUS reloads
//!   it on a timer (`ca_path_reload_interval`), so nothing needs to signal it.
//! - [`api`]: at every login it asks the onboarder (its `rest` module) whether the device may
//!   on and where it goes, and reports what it refused on its own. The onboarder unreachable
//!   means no (fail closed), unless the operator chose to let in certificates FreeRADIUS
//!   verified itself (`radius init --fail-open-verified`).
//!
//! [`freeradius`] writes the configuration that does all this (`onboarder radius init`).

pub mod api;
pub mod ca_dir;
pub mod client;
pub mod freeradius;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, layout};
use crate::error::{Error, Result};

/// The onboarder's side of a RADIUS integration (`radius` in `onboarder.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RadiusSettings {
    /// The CA directory FreeRADIUS's EAP-TLS module reads (`ca_path`), kept by the onboarder.
    pub ca_dir: PathBuf,
}

/// The token FreeRADIUS presents (HTTP Basic password), made on first use (0600).
pub fn token(dir: &Path) -> Result<String> {
    let path = dir.join(layout::RADIUS_TOKEN);
    if !path.exists() {
        let token = crate::pki::new_token()?;
        certs::files::write_secret(&path, token.as_bytes())?;
    }
    let bytes = certs::files::read_limited(&path, 1024)?;
    Ok(String::from_utf8(bytes)
        .map_err(|_| Error::Config(format!("{} is not text", path.display())))?
        .trim()
        .to_string())
}

/// Rewrites the CA directory of `settings` from `registrar` (the owner roots in force, the
/// issuing CAs under them) and the CRLs of the generations (DER by generation).
pub fn write_ca_dir(
    settings: &RadiusSettings,
    registrar: &crate::core::Registrar,
    crls: &[(u32, Vec<u8>)],
) -> Result<()> {
    let roots: Vec<&[u8]> = registrar.roots.trusted.iter().map(Vec::as_slice).collect();
    let issuing: Vec<ca_dir::CaWithCrl<'_>> = registrar
        .trusted_generations()
        .map(|g| ca_dir::CaWithCrl {
            cert: g.ca.cert_der(),
            crl: crls
                .iter()
                .find(|(generation, _)| *generation == g.generation)
                .map(|(_, der)| der.as_slice()),
        })
        .collect();
    ca_dir::write(&settings.ca_dir, &roots, &issuing)
}

/// [`write_ca_dir`] from the data directory alone (the CRLs last written there), for when no
/// onboarder runs.
pub fn write_ca_dir_from_disk(
    dir: &Path,
    config: &Config,
    settings: &RadiusSettings,
) -> Result<()> {
    let pki = crate::pki::load(dir, config)?;
    let mut crls = Vec::new();
    for g in pki.registrar.generations() {
        let path = dir.join(layout::crl(g.generation));
        if path.exists() {
            let text = certs::files::read_pem_text(&path)?;
            if let Some(der) = certs::files::pem_blocks(&text, "X509 CRL")?
                .into_iter()
                .next()
            {
                crls.push((g.generation, der));
            }
        }
    }
    write_ca_dir(settings, &pki.registrar, &crls)
}
