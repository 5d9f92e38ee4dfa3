//! The agent's async side: it reads and writes state through the platform traits, talks to the
//! onboarder through a [`crate::transport::Session`], and asks [`crate::machine`] what to accept and
//! what comes next. By job: `onboard` (voucher, checks, enrollment), `session` (the
//! operational session, crash recovery, serving commands), `renew`, `firmware` (update,
//! trial boot), `decommission` and `run` (the loop that ties them, with its backoff).

mod decommission;
mod firmware;
mod onboard;
mod renew;
mod run;
mod security;
mod session;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::Identity;
use protocol::message::{Command, Response, Status};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{AgentError, PlatformError};
use crate::machine::{AgentState, renewal};
use crate::platform::{FirmwareSlots, KeyStore, NetworkApplier, Platform, StateStore, Wiper};
use crate::transport::Session;
use crate::transport::coap::{self, CoapSession};
use crate::transport::https::HttpsSession;
use crate::transport::quic::{self, Timeouts};
use crate::transport::{Endpoint, ServerAddress, Transport};

/// Version of this agent, reported to the server.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use crate::machine::backoff::Backoff;
pub use crate::machine::session::Stop;

/// Settings of an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Firmware version string reported until a firmware update changes it.
    pub firmware_version: String,
    /// Connection timeouts.
    pub timeouts: Timeouts,
    /// Retry delays.
    pub backoff: Backoff,
    /// Wall-clock time (the system's by default).
    pub clock: crate::Clock,
    /// Hardware facts reported at each session (see [`hardware_facts`] for what the system
    /// says; the device maker adds its own, such as `board` or `ram-mb`).
    pub hardware: std::collections::BTreeMap<String, String>,
    /// How sessions reach the onboarder.
    pub transport: Transport,
    /// The onboarder's HTTPS listener (`https://HOST:PORT`): the same protocol over HTTPS,
    /// used when QUIC cannot connect (a network that blocks UDP), or always with
    /// [`Transport::Https`].
    pub https_url: Option<String>,
}

/// What the running system says about the hardware: `arch`, `os` and, on Linux, `kernel`.
pub fn hardware_facts() -> std::collections::BTreeMap<String, String> {
    let mut facts = std::collections::BTreeMap::new();
    facts.insert("arch".into(), std::env::consts::ARCH.into());
    facts.insert("os".into(), std::env::consts::OS.into());
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        facts.insert("kernel".into(), release.trim().to_string());
    }
    facts
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            firmware_version: "1.0.0".into(),
            timeouts: Timeouts::default(),
            backoff: Backoff::default(),
            clock: crate::Clock::system(),
            hardware: hardware_facts(),
            transport: Transport::Quic,
            https_url: None,
        }
    }
}

/// What an agent did, for operators and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Operational sessions opened.
    pub sessions: AtomicU64,
    /// Attempts of the run loop that failed (each is followed by a backoff).
    pub failures: AtomicU64,
    /// Renewals completed.
    pub renewals: AtomicU64,
    /// Sets of owner roots taken (an owner-root rollover gives two: old and new, then new).
    pub root_updates: AtomicU64,
    /// Duration of the last renewal in microseconds, from the decision to renew to the
    /// confirming session.
    pub last_renewal_us: AtomicU64,
    /// Firmware updates that ended healthy.
    pub updates: AtomicU64,
    /// Firmware bytes downloaded (over either path).
    pub firmware_bytes: AtomicU64,
    /// Of those, the bytes downloaded over HTTPS (the offer named a URL).
    pub firmware_bytes_https: AtomicU64,
    /// Duration of the last firmware update in microseconds, from the offer to the health
    /// report.
    pub last_update_us: AtomicU64,
    /// Duration of the decommissioning in microseconds, from the order to the server's
    /// acknowledgement of the attestation.
    pub decommission_us: AtomicU64,
}

/// Bytes asked for per firmware chunk.
pub const CHUNK: u32 = protocol::message::MAX_CHUNK;

/// One device's agent.
pub struct Agent {
    identity: Arc<Identity>,
    keys: Arc<dyn KeyStore>,
    state: Arc<dyn StateStore>,
    network: Arc<dyn NetworkApplier>,
    slots: Arc<dyn FirmwareSlots>,
    wiper: Arc<dyn Wiper>,
    server: ServerAddress,
    endpoint: Endpoint,
    options: AgentOptions,
    rng: SystemRandom,
    /// Set while this agent itself runs a trial boot (so it is not taken for a crash).
    updating: std::sync::atomic::AtomicBool,
    /// Commands from the last welcome, carried out before anything pushed.
    welcome: Mutex<Vec<Command>>,
    stats: AgentStats,
}

impl Agent {
    /// An agent over the given platform, talking to `server` (an address, or a DNS name
    /// resolved at each connection) through `endpoint`.
    pub fn new(
        identity: Arc<Identity>,
        platform: Platform,
        server: impl Into<ServerAddress>,
        endpoint: impl Into<Endpoint>,
        options: AgentOptions,
    ) -> Agent {
        Agent {
            identity,
            keys: platform.keys,
            state: platform.state,
            network: platform.network,
            slots: platform.slots,
            wiper: platform.wiper,
            updating: std::sync::atomic::AtomicBool::new(false),
            server: server.into(),
            endpoint: endpoint.into(),
            options,
            rng: SystemRandom::new(),
            welcome: Mutex::new(Vec::new()),
            stats: AgentStats::default(),
        }
    }

    /// An agent on the reference file platform: the factory identity in `identity_dir`, its own
    /// state in `state_dir`.
    pub fn with_files(
        identity_dir: &std::path::Path,
        state_dir: &std::path::Path,
        server: impl Into<ServerAddress>,
        endpoint: impl Into<Endpoint>,
        options: AgentOptions,
    ) -> Result<Agent, AgentError> {
        let identity = Identity::load(identity_dir, options.clock.now())?;
        let kind = identity.key_kind();
        Ok(Agent::new(
            Arc::new(identity),
            Platform::files(identity_dir, state_dir, kind),
            server,
            endpoint,
            options,
        ))
    }

    /// Waits until every connection of the agent's socket has closed (after the run loop
    /// ended, so the onboarder hears the close).
    pub async fn wait_idle(&self) {
        self.endpoint.quinn().wait_idle().await;
    }

    /// The device serial.
    pub fn serial(&self) -> &str {
        &self.identity.serial
    }

    /// What the agent did so far.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// The saved state, or the factory state.
    pub fn load_state(&self) -> Result<AgentState, AgentError> {
        Ok(self
            .state
            .load()?
            .unwrap_or_else(|| AgentState::factory(&self.options.firmware_version)))
    }

    pub(crate) fn now(&self) -> u64 {
        self.options.clock.now()
    }

    /// Saves the state off the async threads: storage may be slow (flash, fsync), and an
    /// agent embedded in a busy process must not stall its other tasks.
    pub(crate) async fn save(&self, state: &AgentState) -> Result<(), AgentError> {
        let (store, state) = (self.state.clone(), state.clone());
        blocking(move || store.save(&state)).await
    }

    /// A session presenting `credential`, over the transport of the options: QUIC (falling
    /// back to HTTPS when QUIC cannot connect and the options name the onboarder's HTTPS
    /// listener), HTTPS, or CoAP. A refusal of the device's credential is final either way.
    pub(crate) async fn connect_to(
        &self,
        credential: Presented,
        timeouts: Timeouts,
    ) -> Result<Session, AgentError> {
        if self.options.transport == Transport::Coap {
            return self
                .connect_coap(&credential, timeouts)
                .await
                .map(Box::new)
                .map(Session::Coap);
        }
        let tls = match &credential.trust {
            Trust::Provisional => quic::provisional_tls(&credential.chain, credential.key.clone())?,
            Trust::Roots { roots, .. } => quic::operational_tls(
                &credential.chain,
                credential.key.clone(),
                roots,
                &self.options.clock,
            )?,
        };
        let server_name = credential.server_name();
        let quic = if self.options.transport == Transport::Https {
            Err(AgentError::Connection(
                "QUIC is not tried (transport https)".into(),
            ))
        } else {
            let config = quic::quic_config(tls.clone(), timeouts)?;
            self.connect_quic(config, server_name).await
        };
        let Some(url) = &self.options.https_url else {
            return quic.map(Session::Quic);
        };
        match quic {
            Ok(session) => Ok(Session::Quic(session)),
            Err(e @ AgentError::CredentialRefused { .. }) => Err(e),
            Err(e) => {
                tracing::info!(serial = self.serial(), "QUIC: {e}; trying HTTPS at {url}");
                let connect = HttpsSession::connect(url, tls, server_name);
                match tokio::time::timeout(timeouts.connect, connect).await {
                    Ok(result) => result.map(|s| Session::Https(Box::new(s))),
                    Err(_) => Err(AgentError::Connection(format!(
                        "no answer from {url} within {:?}",
                        timeouts.connect
                    ))),
                }
            }
        }
    }

    /// A CoAP session with the onboarder: each of its addresses in turn.
    async fn connect_coap(
        &self,
        credential: &Presented,
        timeouts: Timeouts,
    ) -> Result<CoapSession, AgentError> {
        let context = coap::dtls::context(&credential.chain, credential.key.as_ref())?;
        let timing = coap::Timing {
            connect: timeouts.connect,
            ack_timeout: timeouts.coap_ack,
            give_up: timeouts.idle,
            keep_alive: timeouts.keep_alive,
        };
        let mut last = None;
        for addr in self.server.resolve(false).await? {
            let check = |chain: &[Vec<u8>]| match &credential.trust {
                Trust::Provisional => Ok(()),
                Trust::Roots { roots, server_name } => {
                    coap::dtls::check_server(chain, roots, server_name, self.now())
                }
            };
            match CoapSession::connect(addr, &context, timing, check).await {
                Ok(session) => return Ok(session),
                Err(e @ AgentError::CredentialRefused { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(serial = self.serial(), "{addr}: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| AgentError::Connection("no address to try".into())))
    }

    async fn connect_quic(
        &self,
        tls: quinn::ClientConfig,
        server_name: Option<&str>,
    ) -> Result<crate::transport::quic::Session, AgentError> {
        let connect = self.options.timeouts.connect;
        let ipv6 = self
            .endpoint
            .quinn()
            .local_addr()
            .map_err(|e| AgentError::Connection(format!("the agent's socket: {e}")))?
            .is_ipv6();
        let mut last = None;
        for addr in self.server.resolve(ipv6).await? {
            let attempt = crate::transport::quic::Session::connect(
                self.endpoint.quinn(),
                tls.clone(),
                addr,
                server_name,
            );
            let error = match tokio::time::timeout(connect, attempt).await {
                Ok(Ok(session)) => return Ok(session),
                // A refusal is the onboarder's answer: another address would say the same.
                Ok(Err(e @ AgentError::CredentialRefused { .. })) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => {
                    AgentError::Connection(format!("no answer from {addr} within {connect:?}"))
                }
            };
            tracing::debug!(serial = self.serial(), "{addr}: {error}");
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| AgentError::Connection("no address to try".into())))
    }

    /// The IDevID key from the key store, checked against the IDevID certificate.
    pub(crate) fn birth_key(&self) -> Result<Arc<dyn crate::platform::DeviceKey>, AgentError> {
        let key = self.keys.idevid_key()?;
        self.identity.check_key(&key.public_key())?;
        Ok(key)
    }

    /// A CSR for `key`, bound to `binding`, signed off the async workers.
    pub(crate) async fn csr(
        &self,
        key: Arc<dyn crate::platform::DeviceKey>,
        binding: Vec<u8>,
    ) -> Result<Vec<u8>, AgentError> {
        let serial = self.identity.serial.clone();
        off_thread(move || {
            let signer = crate::platform::key::CsrSigner::new(key.as_ref())?;
            Ok(certs::csr::build_csr(&serial, &signer, &binding)?)
        })
        .await
    }

    /// When to renew a certificate valid until `not_after`, with this agent's own jitter.
    pub(crate) fn renew_at(&self, not_after: u64) -> u64 {
        renewal::renew_at(self.now(), not_after, self.unit_jitter() * 2.0 - 1.0)
    }

    /// A random number in [0, 1).
    pub(crate) fn unit_jitter(&self) -> f64 {
        let mut b = [0u8; 4];
        let _ = self.rng.fill(&mut b);
        f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0)
    }

    /// `delay` scaled by a random factor in [0.5, 1.5), so a fleet does not retry in step.
    pub(crate) fn jitter(&self, delay: Duration) -> Duration {
        let mut b = [0u8; 1];
        let _ = self.rng.fill(&mut b);
        delay.mul_f64(0.5 + f64::from(b[0]) / 256.0)
    }
}
/// What a session presents (a certificate chain and its key) and whom it trusts.
pub(crate) struct Presented {
    /// The device's certificate chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// Its key.
    pub key: Arc<dyn crate::platform::DeviceKey>,
    /// How the server's certificate is taken.
    pub trust: Trust,
}

/// How a session takes the server's certificate.
pub(crate) enum Trust {
    /// Provisionally, until the voucher pins the registrar's CA (onboarding).
    Provisional,
    /// Only if it chains to these owner roots and names `server_name`.
    Roots {
        roots: Vec<Vec<u8>>,
        server_name: String,
    },
}

impl Presented {
    fn server_name(&self) -> Option<&str> {
        match &self.trust {
            Trust::Provisional => None,
            Trust::Roots { server_name, .. } => Some(server_name),
        }
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Response) -> AgentError {
    AgentError::Protocol(format!("expected {wanted}, got {got:?}"))
}

/// Runs work that may block for a while (a signature by a secure element or a TPM takes
/// 100-300 ms) on the blocking pool, so the agent's other tasks go on.
pub(crate) async fn off_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        AgentError::Platform(PlatformError::Key(format!("signing task failed: {e}")))
    })?
}

/// Runs a platform call on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PlatformError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            AgentError::Platform(PlatformError::Key(format!("platform task failed: {e}")))
        })?
        .map_err(AgentError::Platform)
}

pub(crate) fn failure(e: &AgentError) -> Status {
    Status {
        ok: false,
        reason: Some(e.to_string()),
    }
}
