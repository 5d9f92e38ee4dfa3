//! The daemon's settings: flags, then environment variables, then the configuration file
//! (TOML), then defaults. The README documents the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use device_agent::platform::hooks::{HookNetwork, HookedSlots, HookedWiper, Hooks};
use device_agent::platform::slots::FileSlots;
use device_agent::platform::{KeyStore, Platform};
use device_agent::transport::quic::Timeouts;
use device_agent::transport::{ServerAddress, Transport};
use serde::Deserialize;

/// Where the configuration file is looked for when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/device-agent/agent.toml";
/// Largest configuration file read.
const MAX_CONFIG: u64 = 64 * 1024;

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The onboarder: `host:port` or an address.
    pub server: Option<String>,
    /// How sessions go: `quic`, `https` or `coap`.
    pub transport: Option<String>,
    /// The onboarder's HTTPS listener (`https://host:8443`): the same protocol over HTTPS,
    /// used when QUIC cannot connect (a network that blocks UDP), or always with
    /// `transport = "https"`.
    pub https: Option<String>,
    /// The factory identity directory.
    pub identity: Option<PathBuf>,
    /// The agent's own state directory (made 0700).
    pub state: Option<PathBuf>,
    /// Where the firmware slots live (default: STATE/firmware).
    pub firmware_dir: Option<PathBuf>,
    /// Version of the firmware the device shipped with.
    pub firmware_version: Option<String>,
    /// A file whose first line is the running firmware's version, as the platform keeps it
    /// (`/etc/sw-version`, ...); it wins over `firmware_version`.
    pub firmware_version_file: Option<PathBuf>,
    /// The maker's hardware facts (`board = "rev-c"`), added to those the system gives
    /// (`arch`, `os`, `kernel`) and reported at each session.
    #[serde(default)]
    pub hardware: std::collections::BTreeMap<String, String>,
    /// Log filter (`info`, `device_agent=debug`, ...).
    pub log: Option<String>,
    /// Where the keys live.
    #[serde(default)]
    pub keys: Keys,
    /// Connection timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// The device maker's hooks.
    #[serde(default)]
    pub hooks: Hooks,
}

/// The key store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
pub struct Keys {
    /// `files` (the default: keys in the identity and state directories) or `pkcs11`.
    #[serde(default)]
    pub store: Store,
    /// The PKCS#11 module.
    pub module: Option<PathBuf>,
    /// The PKCS#11 token's label.
    pub token: Option<String>,
    /// A file holding the user PIN (DEVICE_AGENT_PKCS11_PIN takes precedence).
    pub pin_file: Option<PathBuf>,
    /// Kind of the keys the device makes: `p256` (default), `p384` or `ed25519` (files only).
    pub kind: Option<String>,
}

/// Which key store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Store {
    /// Files.
    #[default]
    Files,
    /// A PKCS#11 token.
    Pkcs11,
}

/// Timeouts, in seconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Handshake.
    pub connect_secs: Option<u64>,
    /// Idle connection.
    pub idle_secs: Option<u64>,
    /// Keep-alive until the onboarder sets its own.
    pub keep_alive_secs: Option<u64>,
    /// First retransmission timeout of a CoAP message, in milliseconds.
    pub coap_ack_ms: Option<u64>,
}

impl File {
    /// Reads `path`; a missing default file is an empty configuration.
    pub fn load(path: Option<&Path>) -> Result<File> {
        let (path, named) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        if !named && !path.exists() {
            return Ok(File::default());
        }
        let bytes = certs::files::read_limited(&path, MAX_CONFIG)
            .with_context(|| format!("reading {}", path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        toml::from_str(text).with_context(|| format!("{}", path.display()))
    }
}

/// The firmware version: the platform's file, the configured string, or 1.0.0.
fn firmware_version(file: &File) -> Result<String> {
    let Some(path) = &file.firmware_version_file else {
        return Ok(file
            .firmware_version
            .clone()
            .unwrap_or_else(|| "1.0.0".into()));
    };
    let bytes = certs::files::read_limited(path, 4096)
        .with_context(|| format!("reading the firmware version in {}", path.display()))?;
    let version = String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if version.is_empty() || version.len() > 64 {
        bail!(
            "{}: the first line should be the firmware version (1 to 64 bytes)",
            path.display()
        );
    }
    Ok(version)
}

/// The system's hardware facts with the maker's over them, within what a hello may carry.
fn hardware(
    maker: std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>> {
    use protocol::message::{MAX_HARDWARE_FACT_LEN, MAX_HARDWARE_FACTS};
    let mut facts = device_agent::hardware_facts();
    facts.extend(maker);
    if facts.len() > MAX_HARDWARE_FACTS {
        bail!(
            "{} hardware facts with the system's own; at most {MAX_HARDWARE_FACTS}",
            facts.len()
        );
    }
    if let Some((name, _)) = facts.iter().find(|(k, v)| {
        k.is_empty() || k.len() > MAX_HARDWARE_FACT_LEN || v.len() > MAX_HARDWARE_FACT_LEN
    }) {
        bail!(
            "hardware fact {name:?}: names of 1 to {MAX_HARDWARE_FACT_LEN} bytes, values of at most {MAX_HARDWARE_FACT_LEN}"
        );
    }
    Ok(facts)
}

/// What the flags and the environment say (each overrides the file).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Configuration file [default: /etc/device-agent/agent.toml if it exists].
    #[arg(long, env = "DEVICE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The onboarder, `host:port` (a DNS name, tried address by address) or an address: its
    /// QUIC port (4433), or its CoAPS port (5684) with `--transport coap`.
    #[arg(long, env = "DEVICE_AGENT_SERVER")]
    pub server: Option<String>,
    /// How sessions go: `quic` (falling back to the `https` listener when UDP is blocked and
    /// the configuration names it), `https` only, or `coap` (CoAP over DTLS, for constrained
    /// networks) [default: quic].
    #[arg(long, env = "DEVICE_AGENT_TRANSPORT")]
    pub transport: Option<device_agent::transport::Transport>,
    /// Factory identity directory (IDevID and anchors; its key, unless it is in a token).
    #[arg(long, env = "DEVICE_AGENT_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The agent's own state directory.
    #[arg(long, env = "DEVICE_AGENT_STATE")]
    pub state: Option<PathBuf>,
}

/// Everything the daemon runs with.
pub struct Settings {
    /// The onboarder (not needed to make a key).
    server: Option<ServerAddress>,
    /// How sessions go.
    pub transport: Transport,
    /// Its HTTPS listener, for the fallback.
    pub https: Option<String>,
    /// Identity directory.
    pub identity: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Firmware slots directory.
    pub firmware_dir: PathBuf,
    /// Factory firmware version.
    pub firmware_version: String,
    /// Hardware facts.
    pub hardware: std::collections::BTreeMap<String, String>,
    /// Log filter, if set.
    pub log: Option<String>,
    /// Keys.
    pub keys: Keys,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Hooks.
    pub hooks: Hooks,
}

impl Settings {
    /// Flags over the environment over the file over defaults.
    pub fn resolve(overrides: &Overrides) -> Result<Settings> {
        let file = File::load(overrides.config.as_deref())?;
        let firmware_version = firmware_version(&file)?;
        let server = match overrides.server.clone().or(file.server) {
            Some(text) => Some(text.parse::<ServerAddress>()?),
            None => None,
        };
        let state = overrides
            .state
            .clone()
            .or(file.state)
            .unwrap_or_else(|| PathBuf::from("/var/lib/device-agent"));
        let transport = match (overrides.transport, &file.transport) {
            (Some(t), _) => t,
            (None, Some(text)) => text.parse::<Transport>().map_err(anyhow::Error::msg)?,
            (None, None) => Transport::Quic,
        };
        if transport == Transport::Https && file.https.is_none() {
            bail!("transport https needs `https` (the onboarder's HTTPS listener)");
        }
        if let Some(url) = &file.https
            && !url.starts_with("https://")
        {
            bail!("https {url:?}: an https:// URL (https://host:8443)");
        }
        let defaults = Timeouts::default();
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        Ok(Settings {
            server,
            transport,
            https: file.https,
            identity: overrides
                .identity
                .clone()
                .or(file.identity)
                .unwrap_or_else(|| PathBuf::from("/etc/device-agent/identity")),
            firmware_dir: file.firmware_dir.unwrap_or_else(|| state.join("firmware")),
            state,
            firmware_version,
            hardware: hardware(file.hardware)?,
            log: file.log,
            keys: file.keys,
            timeouts: Timeouts {
                connect: secs(file.timeouts.connect_secs, defaults.connect),
                idle: secs(file.timeouts.idle_secs, defaults.idle),
                keep_alive: secs(file.timeouts.keep_alive_secs, defaults.keep_alive),
                coap_ack: file
                    .timeouts
                    .coap_ack_ms
                    .map_or(defaults.coap_ack, Duration::from_millis),
            },
            hooks: file.hooks,
        })
    }

    /// The onboarder.
    pub fn server(&self) -> Result<&ServerAddress> {
        self.server.as_ref().context(
            "no onboarder: give --server, DEVICE_AGENT_SERVER or `server` in the configuration",
        )
    }

    /// The kind of keys the device makes.
    pub fn key_kind(&self) -> Result<certs::KeyKind> {
        Ok(match self.keys.kind.as_deref() {
            None | Some("p256") => certs::KeyKind::P256,
            Some("p384") => certs::KeyKind::P384,
            Some("ed25519") => certs::KeyKind::Ed25519,
            Some(other) => bail!("keys.kind {other:?}: p256, p384 or ed25519"),
        })
    }

    /// The key store the configuration names.
    pub fn key_store(&self, kind: certs::KeyKind) -> Result<Arc<dyn KeyStore>> {
        Ok(match self.keys.store {
            Store::Files => Arc::new(device_agent::platform::files::FileKeyStore::new(
                &self.identity,
                &self.state,
                kind,
            )),
            #[cfg(feature = "pkcs11")]
            Store::Pkcs11 => Arc::new(self.pkcs11(kind)?),
            #[cfg(not(feature = "pkcs11"))]
            Store::Pkcs11 => bail!("this device-agent was built without the pkcs11 feature"),
        })
    }

    #[cfg(feature = "pkcs11")]
    /// The PKCS#11 key store.
    pub fn pkcs11(
        &self,
        kind: certs::KeyKind,
    ) -> Result<device_agent::platform::pkcs11::Pkcs11KeyStore> {
        let module = self.keys.module.clone().context("keys.module is not set")?;
        let token = self.keys.token.clone().context("keys.token is not set")?;
        let pin = match std::env::var("DEVICE_AGENT_PKCS11_PIN") {
            Ok(pin) => pin,
            Err(_) => {
                let path = self
                    .keys
                    .pin_file
                    .as_ref()
                    .context("no PIN: set DEVICE_AGENT_PKCS11_PIN or keys.pin_file")?;
                let bytes = certs::files::read_limited(path, 1024)
                    .with_context(|| format!("reading {}", path.display()))?;
                String::from_utf8(bytes)
                    .context("the PIN file is not text")?
                    .trim()
                    .to_string()
            }
        };
        let config = device_agent::platform::pkcs11::Pkcs11Config { module, token, pin };
        Ok(device_agent::platform::pkcs11::Pkcs11KeyStore::open(
            &config, kind,
        )?)
    }

    /// The platform: the key store, the state and firmware directories, the hooks.
    pub fn platform(&self, kind: certs::KeyKind) -> Result<Platform> {
        let mut platform = Platform::files(&self.identity, &self.state, kind);
        platform.keys = self.key_store(kind)?;
        let slots: Arc<dyn device_agent::platform::FirmwareSlots> =
            Arc::new(FileSlots::new(&self.firmware_dir));
        platform.slots = Arc::new(HookedSlots::new(
            slots,
            self.hooks.clone(),
            &self.firmware_dir,
        ));
        if let Some(hook) = &self.hooks.wipe {
            platform.wiper = Arc::new(HookedWiper::new(platform.wiper.clone(), hook.clone()));
        }
        if let Some(hook) = &self.hooks.network {
            platform.network = Arc::new(HookNetwork::new(hook.clone()));
        }
        Ok(platform)
    }
}
