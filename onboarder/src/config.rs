//! The onboarder's data directory and settings.
//!
//! ```text
//! DIR/onboarder.json      settings (listen addresses, names, policy)
//! DIR/admin-token         bearer token of the admin API (0600)
//! DIR/radius-token        FreeRADIUS's token for the RADIUS endpoints (0600), once set up
//! DIR/ca/owner-root.pem   owner root CA         (+ .key, 0600; keep offline once set up)
//! DIR/ca/issuing-ca-N.pem every generation N of the online issuing CA (+ .key, 0600)
//! DIR/ca/issuing.json     the generations and when each was retired
//! DIR/ca/issuing-ca.pem   copy of the current issuing CA
//! DIR/ca/chain.pem        current issuing CA then owner root, for `openssl verify -untrusted`
//! DIR/crl/issuing-ca-N.crl the CRL of generation N (PEM), rewritten at every publication
//! DIR/tls/server.pem      registrar certificate and issuing CA (+ server.key, 0600)
//! DIR/store/              the sled database
//! DIR/store.key           the key sealing network credentials in the store (0600)
//! DIR/firmware/<sha256>   firmware images, content-addressed
//! ```
//!
//! Every directory is 0700 and every file 0600, whatever the umask: the directory holds keys,
//! and the store holds every device's (sealed) credentials.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::core::{NetworkPolicy, Policy};
use crate::error::{Error, Result};

/// `Ok` if `condition` holds, else the settings error `why`.
fn ensure(condition: bool, why: &str) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(Error::Config(why.to_string()))
    }
}

/// File names inside the data directory.
pub mod layout {
    /// Settings.
    pub const CONFIG: &str = "onboarder.json";
    /// Admin API token.
    pub const TOKEN: &str = "admin-token";
    /// The token FreeRADIUS presents to the RADIUS endpoints.
    pub const RADIUS_TOKEN: &str = "radius-token";
    /// Copy of the owner root in force: the one the issuing CA chains to, which vouchers pin.
    pub const OWNER_ROOT: &str = "ca/owner-root.pem";
    /// The owner roots devices trust: one, or the old and the new during a root rollover.
    pub const OWNER_ROOTS: &str = "ca/owner-roots.pem";
    /// Owner root generations.
    pub const ROOT_GENERATIONS: &str = "ca/roots.json";
    /// Certificate of owner root generation `n`.
    pub fn root_cert(n: u32) -> String {
        format!("ca/owner-root-{n}.pem")
    }
    /// Key of owner root generation `n` (deleted when it retires).
    pub fn root_key(n: u32) -> String {
        format!("ca/owner-root-{n}.key")
    }
    /// Cross-certificate of root `subject`'s key signed by root `issuer` (RFC 7030 4.1.3:
    /// NewWithOld when `subject` is the newer).
    pub fn root_link(subject: u32, issuer: u32) -> String {
        format!("ca/owner-root-{subject}-by-{issuer}.pem")
    }
    /// The first root's key in data directories made before root generations (its
    /// certificate is then [`OWNER_ROOT`]).
    pub const LEGACY_ROOT_KEY: &str = "ca/owner-root.key";
    /// Copy of the current issuing CA certificate.
    pub const ISSUING_CA: &str = "ca/issuing-ca.pem";
    /// Issuing CA generations.
    pub const ISSUING_GENERATIONS: &str = "ca/issuing.json";
    /// Certificate of issuing CA generation `n`.
    pub fn issuing_ca(n: u32) -> String {
        format!("ca/issuing-ca-{n}.pem")
    }
    /// Key of issuing CA generation `n`.
    pub fn issuing_ca_key(n: u32) -> String {
        format!("ca/issuing-ca-{n}.key")
    }
    /// CRL of issuing CA generation `n`.
    pub fn crl(n: u32) -> String {
        format!("crl/issuing-ca-{n}.crl")
    }
    /// Issuing CA then owner root.
    pub const CHAIN: &str = "ca/chain.pem";
    /// Registrar certificate chain.
    pub const SERVER_CERT: &str = "tls/server.pem";
    /// Registrar key.
    pub const SERVER_KEY: &str = "tls/server.key";
    /// QUIC's stateless reset key (0600): kept across restarts so a restarted server can tell
    /// devices at once that their old connections are gone (RFC 9000 10.3).
    pub const RESET_KEY: &str = "tls/reset.key";
    /// Key of signed firmware URLs (0600), kept across restarts so offered URLs stay good.
    pub const URL_KEY: &str = "tls/url.key";
    /// sled database.
    pub const STORE: &str = "store";
    /// Key that seals network credentials in the store (0600), kept outside it.
    pub const STORE_KEY: &str = "store.key";
    /// Firmware images, by SHA-256.
    pub const FIRMWARE: &str = "firmware";
}

/// How the registrar reaches manufacturers' MASAs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineMasa {
    /// The MASA asked for a device whose IDevID names none (`https://HOST:PORT`).
    #[serde(default)]
    pub url: Option<String>,
}

/// Settings of one onboarder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// UDP address of the QUIC listener for devices.
    pub quic_listen: SocketAddr,
    /// TCP address of the admin API; loopback only.
    pub api_listen: SocketAddr,
    /// TCP address of the standard interfaces over HTTPS (EST), if any. `onboarder init`
    /// sets 0.0.0.0:8443; a library user opts in.
    #[serde(default)]
    pub https_listen: Option<SocketAddr>,
    /// UDP address of CoAP over DTLS (RFC 9148's EST-coaps, constrained BRSKI), if any.
    /// `onboarder init` sets 0.0.0.0:5684; a library user opts in.
    #[serde(default)]
    pub coap_listen: Option<SocketAddr>,
    /// Ask manufacturers' MASAs online (RFC 8995 5.5) for nonced vouchers, at the URL each
    /// IDevID names or else at `url`. `None`: vouchers come from imports only.
    #[serde(default)]
    pub online_masa: Option<OnlineMasa>,
    /// Names in the registrar certificate; the first is the one devices check.
    pub server_names: Vec<String>,
    /// Issuance policy.
    pub policy: Policy,
    /// CRL validity (nextUpdate - thisUpdate) in seconds; CRLs are republished at half of it,
    /// and at once after a revocation.
    #[serde(default = "default_crl_validity")]
    pub crl_validity: u64,
    /// What peers can make the device listener hold (connections, incomplete requests).
    #[serde(default)]
    pub limits: crate::transport::limits::Limits,
    /// The database of several replicas (`postgres://user@host/db`, or libpq's `host=...
    /// dbname=...`); the embedded sled store in `DIR/store` if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The RADIUS integration, once `onboarder radius init` set it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radius: Option<crate::radius::RadiusSettings>,
}

/// The keep-alive of an enrolled device's session. Under the ~30 s after which many NATs
/// forget a quiet UDP flow, and no shorter: each keep-alive wakes the server (a 10 s heartbeat
/// cost it 6.6 % of a core for 10,000 idle devices, BENCHMARKS.md).
pub const DEFAULT_HEARTBEAT_SECS: u32 = 25;

fn default_crl_validity() -> u64 {
    86_400
}

impl Config {
    /// Defaults for an organization.
    pub fn new(organization: &str) -> Self {
        Config {
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 4480)),
            https_listen: None,
            coap_listen: None,
            server_names: vec![
                "onboarder.local".into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
            policy: Policy {
                organization: organization.to_string(),
                ldevid_lifetime: 90 * 86_400,
                network: NetworkPolicy::Wifi {
                    ssid: "iot-devices".into(),
                },
                server_name: "onboarder.local".into(),
                heartbeat_secs: DEFAULT_HEARTBEAT_SECS,
                superseded_grace: 3600,
                reenroll_expired: true,
                require_csr_binding: false,
                admit_vouched: false,
                crl_url: None,
                firmware_url: None,
                root_distribution_wait: 7 * 86_400,
                network_access: Default::default(),
            },
            online_masa: None,
            crl_validity: 86_400,
            limits: crate::transport::limits::Limits::default(),
            store: None,
            radius: None,
        }
    }

    /// Reads `DIR/onboarder.json`.
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join(layout::CONFIG);
        let bytes = certs::files::read_limited(&path, 1024 * 1024)?;
        let config: Config = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.check()?;
        Ok(config)
    }

    /// Writes `DIR/onboarder.json`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.check()?;
        let json = serde_json::to_vec_pretty(self)?;
        certs::files::write_private(&dir.join(layout::CONFIG), &json)?;
        Ok(())
    }

    /// Refuses settings the onboarder cannot run with.
    pub fn check(&self) -> Result<()> {
        ensure(
            self.api_listen.ip().is_loopback(),
            "api_listen must be a loopback address: the admin API is for this machine only",
        )?;
        ensure(!self.server_names.is_empty(), "server_names is empty")?;
        // Devices take this name with every certificate and check the onboarder's for it: one
        // the certificate does not carry would cut off every device at its next re-key.
        ensure(
            self.server_names.contains(&self.policy.server_name),
            "policy.server_name must be one of server_names (the names in the onboarder's \
             certificate, which devices check for it)",
        )?;
        let most = crate::transport::quic::IDLE_TIMEOUT.as_secs() / 2;
        ensure(
            (1..=most).contains(&u64::from(self.policy.heartbeat_secs)),
            &format!(
                "policy.heartbeat_secs must be 1 to {most}: the onboarder closes a session \
                 silent for {} s",
                crate::transport::quic::IDLE_TIMEOUT.as_secs()
            ),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_the_idle_timeout_would_cut_is_refused() {
        let mut config = Config::new("Example");
        assert_eq!(config.policy.heartbeat_secs, DEFAULT_HEARTBEAT_SECS);
        config.check().unwrap();
        for refused in [0, 31, 3600] {
            config.policy.heartbeat_secs = refused;
            let e = config.check().unwrap_err().to_string();
            assert!(e.contains("policy.heartbeat_secs must be 1 to 30"), "{e}");
        }
        config.policy.heartbeat_secs = 30;
        config.check().unwrap();
    }

    #[test]
    fn a_server_name_the_certificate_does_not_carry_is_refused() {
        let mut config = Config::new("Example");
        config.policy.server_name = "onboarder.example".into();
        let e = config.check().unwrap_err().to_string();
        assert!(
            e.contains("policy.server_name must be one of server_names"),
            "{e}"
        );
        config.server_names.push("onboarder.example".into());
        config.check().unwrap();
    }
}
