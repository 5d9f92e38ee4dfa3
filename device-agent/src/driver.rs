//! The agent's async loop: it reads and writes state through the platform traits, talks to the
//! onboarder through [`crate::transport::quic`], and asks [`crate::machine`] what to accept.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certs::{CertInfo, Identity};
use protocol::message::{Hello, Request, Response, Status};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{AgentError, PlatformError};
use crate::machine::{AgentState, Phase, commands, onboarding};
use crate::platform::files::{FileKeyStore, FileNetwork, FileStateStore};
use crate::platform::{KeyStore, NetworkApplier, StateStore};
use crate::transport::quic::{self, Session, Timeouts};

/// Version of this agent, reported to the server.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How the agent retries after failures.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Settings of an agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Firmware version string reported until a firmware update changes it.
    pub firmware_version: String,
    /// Connection timeouts.
    pub timeouts: Timeouts,
    /// Retry delays.
    pub backoff: Backoff,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            firmware_version: "1.0.0".into(),
            timeouts: Timeouts::default(),
            backoff: Backoff::default(),
        }
    }
}

/// One device's agent.
pub struct Agent {
    identity: Arc<Identity>,
    keys: Arc<dyn KeyStore>,
    state: Arc<dyn StateStore>,
    network: Arc<dyn NetworkApplier>,
    server: SocketAddr,
    endpoint: quinn::Endpoint,
    options: AgentOptions,
    rng: SystemRandom,
}

impl Agent {
    /// An agent over the given platform, talking to `server` through `endpoint`.
    pub fn new(
        identity: Arc<Identity>,
        keys: Arc<dyn KeyStore>,
        state: Arc<dyn StateStore>,
        network: Arc<dyn NetworkApplier>,
        server: SocketAddr,
        endpoint: quinn::Endpoint,
        options: AgentOptions,
    ) -> Agent {
        Agent {
            identity,
            keys,
            state,
            network,
            server,
            endpoint,
            options,
            rng: SystemRandom::new(),
        }
    }

    /// An agent on the reference file platform: the factory identity in `identity_dir`, its own
    /// state in `state_dir`.
    pub fn with_files(
        identity_dir: &std::path::Path,
        state_dir: &std::path::Path,
        server: SocketAddr,
        endpoint: quinn::Endpoint,
        options: AgentOptions,
    ) -> Result<Agent, AgentError> {
        let identity = Identity::load(identity_dir, certs::unix_now())?;
        let kind = identity.key.kind();
        Ok(Agent::new(
            Arc::new(identity),
            Arc::new(FileKeyStore::new(identity_dir, state_dir, kind)),
            Arc::new(FileStateStore::new(state_dir)),
            Arc::new(FileNetwork::new(state_dir)),
            server,
            endpoint,
            options,
        ))
    }

    /// The device serial.
    pub fn serial(&self) -> &str {
        &self.identity.serial
    }

    /// The saved state, or the factory state.
    pub fn load_state(&self) -> Result<AgentState, AgentError> {
        Ok(self
            .state
            .load()?
            .unwrap_or_else(|| AgentState::factory(&self.options.firmware_version)))
    }

    fn now(&self) -> u64 {
        certs::unix_now()
    }

    /// Saves the state off the async threads: storage may be slow (flash, fsync), and an
    /// agent embedded in a busy process must not stall its other tasks.
    async fn save(&self, state: &AgentState) -> Result<(), AgentError> {
        let (store, state) = (self.state.clone(), state.clone());
        blocking(move || store.save(&state)).await
    }

    /// Finishes a key promotion a crash interrupted: the stored LDevID must have its key
    /// current.
    fn recover_keys(&self, state: &AgentState) -> Result<(), AgentError> {
        let Some(cert) = &state.ldevid else {
            return Ok(());
        };
        let wanted = CertInfo::parse(cert)?.public_key;
        if self.keys.ldevid_key()?.map(|k| k.public_key()).as_ref() == Some(&wanted) {
            return Ok(());
        }
        match self.keys.pending_ldevid_key()? {
            Some(p) if p.public_key() == wanted => Ok(self.keys.commit_pending_ldevid_key()?),
            _ => Err(PlatformError::Key("no key for the stored LDevID".into()).into()),
        }
    }

    async fn provisional_session(&self) -> Result<Session, AgentError> {
        let config = quic::provisional_config(
            std::slice::from_ref(&self.identity.idevid),
            self.keys.idevid_key()?,
            self.options.timeouts,
        )?;
        Session::connect(&self.endpoint, config, self.server, None).await
    }

    /// Onboards the device if it is not onboarded yet (DESIGN 3), and returns its state.
    /// Safe to call again after any failure or crash: it resumes where the device stands.
    pub async fn onboard(&self) -> Result<AgentState, AgentError> {
        let mut state = self.load_state()?;
        self.recover_keys(&state)?;
        match state.phase {
            Phase::Enrolled { confirmed: true } => return Ok(state),
            Phase::Enrolled { confirmed: false } => {
                let session = self.provisional_session().await?;
                self.confirm(&session, &mut state).await?;
                session.close();
                return Ok(state);
            }
            _ => {}
        }
        let session = self.provisional_session().await?;
        let result = self.enroll(&session, &mut state).await;
        session.close();
        result.map(|()| state)
    }

    async fn enroll(&self, session: &Session, state: &mut AgentState) -> Result<(), AgentError> {
        let now = self.now();
        let presented = session.server_chain();
        let registrar = presented
            .first()
            .ok_or_else(|| AgentError::RogueRegistrar("no registrar certificate".into()))?;
        let binding = session.binding()?;
        let mut nonce = [0u8; 16];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| AgentError::Protocol("no randomness".into()))?;
        let request = onboarding::voucher_request(&self.identity, &nonce, registrar, &binding, now)
            .sign(self.keys.idevid_key()?.as_ref())?;
        let signed_voucher = match session.call(&Request::VoucherRequest(request)).await? {
            Response::Voucher(v) => v,
            other => {
                return Err(AgentError::Protocol(format!(
                    "expected a voucher, got {other:?}"
                )));
            }
        };
        // Voucher first, then the registrar against the CA it pins (RFC 8995 5.6).
        let checked = onboarding::accept_voucher(&self.identity, &signed_voucher, &nonce, now)
            .and_then(|voucher| {
                onboarding::check_registrar(&voucher.pinned_domain_cert, &presented, now)
                    .map(|()| voucher)
            });
        let voucher = match checked {
            Ok(v) => v,
            Err(e) => {
                self.report(session, Request::VoucherStatus(failure(&e)))
                    .await;
                return Err(e);
            }
        };
        session
            .call(&Request::VoucherStatus(Status {
                ok: true,
                reason: None,
            }))
            .await?;
        // Reuse a pending key from an interrupted attempt: the server then answers with the
        // certificate it may already have issued for it.
        let keys = self.keys.clone();
        let key = blocking(move || match keys.pending_ldevid_key()? {
            Some(k) => Ok(k),
            None => keys.create_pending_ldevid_key(),
        })
        .await?;
        let csr = certs::csr::build_csr(
            &self.identity.serial,
            &crate::platform::key::CsrSigner::new(key.as_ref()),
            &binding,
        )?;
        let enrollment = match session.call(&Request::Enroll { csr }).await? {
            Response::Enrolled(e) => e,
            other => {
                return Err(AgentError::Protocol(format!(
                    "expected an enrollment, got {other:?}"
                )));
            }
        };
        if let Err(e) = onboarding::check_enrollment(
            &enrollment,
            &self.identity.serial,
            &key.public_key(),
            &voucher.pinned_domain_cert,
            now,
        ) {
            self.report(session, Request::EnrollStatus(failure(&e)))
                .await;
            return Err(e);
        }
        // Store everything in one write, then promote the key: a crash in between is repaired
        // by `recover_keys`.
        state.phase = Phase::Enrolled { confirmed: false };
        state.owner_ca = Some(voucher.pinned_domain_cert);
        state.ldevid = Some(enrollment.certificate);
        state.chain = enrollment.chain;
        state.network = Some(enrollment.network);
        state.config = Some(enrollment.config);
        self.save(state).await?;
        let keys = self.keys.clone();
        blocking(move || keys.commit_pending_ldevid_key()).await?;
        self.confirm(session, state).await
    }

    /// Applies the network credentials and tells the server the enrollment is stored.
    async fn confirm(&self, session: &Session, state: &mut AgentState) -> Result<(), AgentError> {
        if let Some(network) = state.network.clone() {
            let applier = self.network.clone();
            blocking(move || applier.apply(&network)).await?;
        }
        session
            .call(&Request::EnrollStatus(Status {
                ok: true,
                reason: None,
            }))
            .await?;
        state.phase = Phase::Enrolled { confirmed: true };
        self.save(state).await
    }

    /// Best-effort status report: the device is already refusing, so a lost report changes
    /// nothing.
    async fn report(&self, session: &Session, request: Request) {
        if let Err(e) = session.call(&request).await {
            tracing::debug!("status report not delivered: {e}");
        }
    }

    /// Opens the operational session (LDevID) and says hello.
    pub async fn connect(&self) -> Result<Session, AgentError> {
        let state = self.load_state()?;
        let (Some(ldevid), Some(owner_ca), Some(config)) =
            (&state.ldevid, &state.owner_ca, &state.config)
        else {
            return Err(AgentError::Protocol("the device is not onboarded".into()));
        };
        let key = self
            .keys
            .ldevid_key()?
            .ok_or_else(|| PlatformError::Key("no LDevID key".into()))?;
        let mut chain = vec![ldevid.clone()];
        chain.extend(state.chain.iter().take(1).map(|c| c.to_vec()));
        let mut timeouts = self.options.timeouts;
        timeouts.keep_alive =
            Duration::from_secs(config.heartbeat_secs.max(1).into()).min(timeouts.keep_alive);
        let tls = quic::operational_config(&chain, key, owner_ca, timeouts)?;
        let session =
            Session::connect(&self.endpoint, tls, self.server, Some(&config.server_name)).await?;
        session
            .call(&Request::Hello(Hello {
                agent_version: AGENT_VERSION.into(),
                firmware_version: state.firmware_version.clone(),
            }))
            .await?;
        Ok(session)
    }

    /// Answers commands on `session` until it closes.
    pub async fn serve_commands(&self, session: &Session) -> Result<(), AgentError> {
        while let Some(next) = session.next_command().await {
            let (command, send) = next?;
            let reply = commands::reply(&command);
            Session::reply(send, &reply).await?;
        }
        Ok(())
    }

    /// Runs `op`, retrying transient failures (see [`AgentError::is_transient`]) with jittered
    /// exponential backoff until `deadline` has passed.
    pub async fn retrying<T, F, Fut>(&self, deadline: Duration, mut op: F) -> Result<T, AgentError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AgentError>>,
    {
        let start = tokio::time::Instant::now();
        let mut delay = self.options.backoff.initial;
        loop {
            match op().await {
                Err(e) if e.is_transient() && start.elapsed() + delay < deadline => {
                    tracing::debug!(serial = self.serial(), "retrying: {e}");
                    tokio::time::sleep(self.jitter(delay)).await;
                    delay = (delay * 2).min(self.options.backoff.max);
                }
                other => return other,
            }
        }
    }

    /// Runs the device forever: onboard, keep the operational session, answer commands, and
    /// reconnect with backoff, until `shutdown` completes.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut delay = self.options.backoff.initial;
        loop {
            let attempt = async {
                self.onboard().await?;
                let session = self.connect().await?;
                tracing::info!(serial = self.serial(), "operational session open");
                let served = self.serve_commands(&session).await;
                tracing::info!(
                    serial = self.serial(),
                    "session closed: {}",
                    session.closed().await
                );
                served
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = attempt => match result {
                    Ok(()) => delay = self.options.backoff.initial,
                    Err(e) => {
                        tracing::warn!(serial = self.serial(), "{e}; retrying in {delay:?}");
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(self.jitter(delay)) => {}
                        }
                        delay = (delay * 2).min(self.options.backoff.max);
                    }
                }
            }
        }
    }

    /// `delay` scaled by a random factor in [0.5, 1.5), so a fleet does not retry in step.
    fn jitter(&self, delay: Duration) -> Duration {
        let mut b = [0u8; 1];
        let _ = self.rng.fill(&mut b);
        delay.mul_f64(0.5 + f64::from(b[0]) / 256.0)
    }
}

/// Runs a platform call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PlatformError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            AgentError::Platform(PlatformError::Key(format!("platform task failed: {e}")))
        })?
        .map_err(AgentError::Platform)
}

fn failure(e: &AgentError) -> Status {
    Status {
        ok: false,
        reason: Some(e.to_string()),
    }
}
