//! The agent's async loop: it reads and writes state through the platform traits, talks to the
//! onboarder through [`crate::transport::quic`], and asks [`crate::machine`] what to accept.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certs::{CertInfo, Identity};
use protocol::manifest::Manifest;
use protocol::message::{
    Command, Enrollment, FirmwareReport, FirmwareState, Hello, Request, Response, Status,
};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{AgentError, PlatformError};
use crate::machine::commands::{self, Action};
use crate::machine::{AgentState, Phase, Renewal, Trial, firmware, onboarding, renewal};
use crate::platform::{
    DeviceKey, FirmwareSlots, KeyStore, NetworkApplier, Platform, StateStore, Wiper,
};
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

/// What an agent did, for operators and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Operational sessions opened.
    pub sessions: AtomicU64,
    /// Attempts of the run loop that failed (each is followed by a backoff).
    pub failures: AtomicU64,
    /// Renewals completed.
    pub renewals: AtomicU64,
    /// Duration of the last renewal in microseconds, from the decision to renew to the
    /// confirming session.
    pub last_renewal_us: AtomicU64,
    /// Firmware updates that ended healthy.
    pub updates: AtomicU64,
    /// Firmware bytes downloaded.
    pub firmware_bytes: AtomicU64,
    /// Duration of the last firmware update in microseconds, from the offer to the health
    /// report.
    pub last_update_us: AtomicU64,
    /// Duration of the decommissioning in microseconds, from the order to the server's
    /// acknowledgement of the attestation.
    pub decommission_us: AtomicU64,
}

/// How long a freshly booted image may take to reach the onboarder before it counts as
/// unhealthy.
const HEALTH_DEADLINE: Duration = Duration::from_secs(120);

/// Bytes asked for per firmware chunk.
pub const CHUNK: u32 = protocol::message::MAX_CHUNK;

/// Why [`Agent::serve`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The session closed.
    Closed,
    /// The LDevID must be renewed (it is due, or the server asked).
    Renew,
    /// A firmware update was offered (the signed manifest).
    Update(Vec<u8>),
    /// The owner decommissions the device.
    Decommission {
        /// The server's nonce.
        nonce: Vec<u8>,
        /// The method asked for.
        method: protocol::attestation::WipeMethod,
    },
}

/// One device's agent.
pub struct Agent {
    identity: Arc<Identity>,
    keys: Arc<dyn KeyStore>,
    state: Arc<dyn StateStore>,
    network: Arc<dyn NetworkApplier>,
    slots: Arc<dyn FirmwareSlots>,
    wiper: Arc<dyn Wiper>,
    server: SocketAddr,
    endpoint: quinn::Endpoint,
    options: AgentOptions,
    rng: SystemRandom,
    /// Set while this agent itself runs a trial boot (so it is not taken for a crash).
    updating: std::sync::atomic::AtomicBool,
    /// Commands from the last welcome, carried out before anything pushed.
    welcome: Mutex<Vec<Command>>,
    stats: AgentStats,
}

impl Agent {
    /// An agent over the given platform, talking to `server` through `endpoint`.
    pub fn new(
        identity: Arc<Identity>,
        platform: Platform,
        server: SocketAddr,
        endpoint: quinn::Endpoint,
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
            server,
            endpoint,
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
        server: SocketAddr,
        endpoint: quinn::Endpoint,
        options: AgentOptions,
    ) -> Result<Agent, AgentError> {
        let identity = Identity::load(identity_dir, certs::unix_now())?;
        let kind = identity.key.kind();
        Ok(Agent::new(
            Arc::new(identity),
            Platform::files(identity_dir, state_dir, kind),
            server,
            endpoint,
            options,
        ))
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

    fn now(&self) -> u64 {
        certs::unix_now()
    }

    /// Saves the state off the async threads: storage may be slow (flash, fsync), and an
    /// agent embedded in a busy process must not stall its other tasks.
    async fn save(&self, state: &AgentState) -> Result<(), AgentError> {
        let (store, state) = (self.state.clone(), state.clone());
        blocking(move || store.save(&state)).await
    }

    /// The pending LDevID key from an interrupted attempt, or a fresh one. Reusing it makes
    /// the server answer with the certificate it may already have issued for it.
    async fn pending_key(&self) -> Result<Arc<dyn DeviceKey>, AgentError> {
        let keys = self.keys.clone();
        blocking(move || match keys.pending_ldevid_key()? {
            Some(k) => Ok(k),
            None => keys.create_pending_ldevid_key(),
        })
        .await
    }

    async fn commit_pending_key(&self) -> Result<(), AgentError> {
        let keys = self.keys.clone();
        blocking(move || keys.commit_pending_ldevid_key()).await
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

    /// When to renew a certificate valid until `not_after`, with this agent's own jitter.
    fn renew_at(&self, not_after: u64) -> u64 {
        let mut b = [0u8; 4];
        let _ = self.rng.fill(&mut b);
        let jitter = f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX) * 2.0 - 1.0;
        renewal::renew_at(self.now(), not_after, jitter)
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
            other => return Err(unexpected("a voucher", &other)),
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
        let key = self.pending_key().await?;
        let csr = certs::csr::build_csr(
            &self.identity.serial,
            &crate::platform::key::CsrSigner::new(key.as_ref()),
            &binding,
        )?;
        let enrollment = match session.call(&Request::Enroll { csr }).await? {
            Response::Enrolled(e) => e,
            other => return Err(unexpected("an enrollment", &other)),
        };
        let info = match onboarding::check_enrollment(
            &enrollment,
            &self.identity.serial,
            &key.public_key(),
            &voucher.pinned_domain_cert,
            now,
        ) {
            Ok(info) => info,
            Err(e) => {
                self.report(session, Request::EnrollStatus(failure(&e)))
                    .await;
                return Err(e);
            }
        };
        // Store everything in one write, then promote the key: a crash in between is repaired
        // by `recover_keys`.
        state.phase = Phase::Enrolled { confirmed: false };
        state.owner_ca = Some(voucher.pinned_domain_cert);
        state.ldevid = Some(enrollment.certificate);
        state.chain = enrollment.chain;
        state.network = Some(enrollment.network);
        state.config = Some(enrollment.config);
        state.renew_at = Some(self.renew_at(info.not_after));
        self.save(state).await?;
        self.commit_pending_key().await?;
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

    async fn open(
        &self,
        state: &AgentState,
        ldevid: &[u8],
        chain: &[serde_bytes::ByteBuf],
        key: Arc<dyn DeviceKey>,
    ) -> Result<Session, AgentError> {
        let (Some(owner_ca), Some(config)) = (&state.owner_ca, &state.config) else {
            return Err(AgentError::Protocol("the device is not onboarded".into()));
        };
        let mut presented = vec![ldevid.to_vec()];
        presented.extend(chain.iter().take(1).map(|c| c.to_vec()));
        let mut timeouts = self.options.timeouts;
        timeouts.keep_alive =
            Duration::from_secs(config.heartbeat_secs.max(1).into()).min(timeouts.keep_alive);
        let tls = quic::operational_config(&presented, key, owner_ca, timeouts)?;
        let session =
            Session::connect(&self.endpoint, tls, self.server, Some(&config.server_name)).await?;
        let welcome = session
            .call(&Request::Hello(Hello {
                agent_version: AGENT_VERSION.into(),
                firmware_version: state.firmware_version.clone(),
                firmware_sequence: state.firmware_sequence,
                class_id: self.identity.product.class_id.clone(),
            }))
            .await?;
        match welcome {
            Response::Welcome(w) => {
                *self.welcome.lock().unwrap_or_else(|e| e.into_inner()) = w.commands;
            }
            other => return Err(unexpected("a welcome", &other)),
        }
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(session)
    }

    /// Opens the operational session and says hello. A renewal stored but not yet confirmed
    /// is completed first: opening a session with the new certificate is the confirmation.
    pub async fn connect(&self) -> Result<Session, AgentError> {
        let session = self.open_session().await?;
        let mut state = self.load_state()?;
        if state.pending_attestation.is_some() {
            // Wiped before a crash: finish delivering the evidence, then the device is bare.
            self.deliver_attestation(&session, &mut state).await?;
            session.close();
            return Err(AgentError::Protocol(
                "the device was decommissioned; it is back in its factory state".into(),
            ));
        }
        if let Some(report) = state.pending_report.take() {
            session.call(&Request::FirmwareStatus(report)).await?;
            self.save(&state).await?;
        }
        Ok(session)
    }

    /// A trial boot that this agent is not running was interrupted (the device restarted in
    /// it): go back to the previous image, as a bootloader's watchdog would.
    async fn recover_firmware(&self, state: &mut AgentState) -> Result<(), AgentError> {
        if self.updating.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(trial) = state.trial.take() else {
            return Ok(());
        };
        let slots = self.slots.clone();
        blocking(move || {
            if slots.in_trial()? {
                slots.rollback()
            } else {
                Ok(())
            }
        })
        .await?;
        state.firmware_version = trial.previous_version;
        state.pending_report = Some(FirmwareReport {
            digest: trial.digest,
            state: FirmwareState::RolledBack,
            reason: Some("the trial boot was interrupted".into()),
            bytes: 0,
        });
        self.save(state).await
    }

    async fn open_session(&self) -> Result<Session, AgentError> {
        let mut state = self.load_state()?;
        self.recover_keys(&state)?;
        self.recover_firmware(&mut state).await?;
        if let Some(renewal) = state.renewal.clone() {
            let key = self
                .keys
                .pending_ldevid_key()?
                .ok_or_else(|| PlatformError::Key("the renewal's key is missing".into()))?;
            match self
                .open(&state, &renewal.ldevid, &renewal.chain, key)
                .await
            {
                Ok(session) => {
                    self.promote(&mut state, renewal).await?;
                    return Ok(session);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    // The server refuses the new certificate: keep the current one.
                    tracing::warn!(serial = self.serial(), "renewed certificate refused: {e}");
                    state.renewal = None;
                    self.save(&state).await?;
                }
            }
        }
        let ldevid = state
            .ldevid
            .clone()
            .ok_or_else(|| AgentError::Protocol("the device is not onboarded".into()))?;
        let key = self
            .keys
            .ldevid_key()?
            .ok_or_else(|| PlatformError::Key("no LDevID key".into()))?;
        self.open(&state, &ldevid, &state.chain, key).await
    }

    /// Makes a confirmed renewal current: state first, then the key (see `recover_keys`).
    async fn promote(&self, state: &mut AgentState, renewal: Renewal) -> Result<(), AgentError> {
        let not_after = CertInfo::parse(&renewal.ldevid)?.not_after;
        state.ldevid = Some(renewal.ldevid);
        state.chain = renewal.chain;
        state.renewal = None;
        state.renew_at = Some(self.renew_at(not_after));
        self.save(state).await?;
        self.commit_pending_key().await?;
        self.stats.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// First half of a renewal: a fresh key (or the pending one of an interrupted attempt), a
    /// CSR bound to `session`, and the server's answer, checked.
    pub async fn request_renewal(&self, session: &Session) -> Result<Enrollment, AgentError> {
        let state = self.load_state()?;
        let key = self.pending_key().await?;
        let csr = certs::csr::build_csr(
            &self.identity.serial,
            &crate::platform::key::CsrSigner::new(key.as_ref()),
            &session.binding()?,
        )?;
        let enrollment = match session.call(&Request::Reenroll { csr }).await? {
            Response::Enrolled(e) => *e,
            other => return Err(unexpected("a renewed certificate", &other)),
        };
        let anchors: Vec<Vec<u8>> = state.owner_ca.iter().cloned().collect();
        if let Err(e) = renewal::check_renewal(
            &enrollment,
            &self.identity.serial,
            &key.public_key(),
            &anchors,
            self.now(),
        ) {
            self.report(session, Request::EnrollStatus(failure(&e)))
                .await;
            return Err(e);
        }
        Ok(enrollment)
    }

    /// Second half: stores the renewed certificate next to the current one. The next
    /// [`Agent::connect`] uses and thereby confirms it.
    pub async fn store_renewal(&self, enrollment: Enrollment) -> Result<(), AgentError> {
        let mut state = self.load_state()?;
        state.renewal = Some(Renewal {
            ldevid: enrollment.certificate,
            chain: enrollment.chain,
        });
        self.save(&state).await
    }

    /// Renews the LDevID with a fresh key over `session`, and returns the session opened with
    /// the new certificate.
    pub async fn renew(&self, session: Session) -> Result<Session, AgentError> {
        let started = std::time::Instant::now();
        let enrollment = self.request_renewal(&session).await?;
        self.store_renewal(enrollment).await?;
        session.close();
        let session = self.connect().await?;
        self.stats
            .last_renewal_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(session)
    }

    /// Answers commands on `session` until it closes or the LDevID must be renewed.
    pub async fn serve(&self, session: &Session) -> Result<Stop, AgentError> {
        let welcome = std::mem::take(&mut *self.welcome.lock().unwrap_or_else(|e| e.into_inner()));
        for command in &welcome {
            match commands::handle(command).1 {
                Action::Renew => return Ok(Stop::Renew),
                Action::Update(manifest) => return Ok(Stop::Update(manifest)),
                Action::Decommission { nonce, method } => {
                    return Ok(Stop::Decommission { nonce, method });
                }
                Action::None => {}
            }
        }
        let renew_at = self.load_state()?.renew_at;
        let due = async {
            match renew_at {
                Some(at) => {
                    let wait = at.saturating_sub(self.now());
                    tokio::time::sleep(Duration::from_secs(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(due);
        loop {
            tokio::select! {
                () = &mut due => return Ok(Stop::Renew),
                next = session.next_command() => {
                    let Some(next) = next else { return Ok(Stop::Closed) };
                    let (command, send) = next?;
                    let (reply, action) = match command {
                        Ok(command) => commands::handle(&command),
                        Err(e) => (commands::unsupported(&e.to_string()), Action::None),
                    };
                    Session::reply(send, &reply).await?;
                    match action {
                        Action::Renew => return Ok(Stop::Renew),
                        Action::Update(manifest) => return Ok(Stop::Update(manifest)),
                        Action::Decommission { nonce, method } => {
                            return Ok(Stop::Decommission { nonce, method });
                        }
                        Action::None => {}
                    }
                }
            }
        }
    }

    /// Reports the progress of a firmware update (best effort: a lost report is repeated by the
    /// next state change or by the next offer).
    async fn report_firmware(
        &self,
        session: &Session,
        digest: &[u8],
        state: FirmwareState,
        reason: Option<String>,
        bytes: u64,
    ) {
        let report = FirmwareReport {
            digest: digest.to_vec(),
            state,
            reason,
            bytes,
        };
        if let Err(e) = session.call(&Request::FirmwareStatus(report)).await {
            tracing::debug!(serial = self.serial(), "firmware report not delivered: {e}");
        }
    }

    /// Installs the firmware of a signed manifest (SUIT order): verify the manifest, download
    /// the image (resuming where an earlier attempt stopped), verify size and digest, install
    /// into the inactive slot, boot it on trial, check its health, then commit or roll back.
    /// A refused manifest or image is reported and nothing is installed; the session goes on.
    /// Returns the session to continue with (a new one after the trial boot).
    pub async fn update(&self, session: Session, signed: Vec<u8>) -> Result<Session, AgentError> {
        let started = std::time::Instant::now();
        let mut state = self.load_state()?;
        let hint = Manifest::parse_unverified(&signed).map(|m| (m.digest, m.size));
        if let Ok((digest, size)) = &hint
            && state.firmware_digest.as_ref() == Some(digest)
        {
            // Offered again what already runs (a report was lost): say it is healthy.
            self.report_firmware(&session, digest, FirmwareState::Healthy, None, *size)
                .await;
            return Ok(session);
        }
        let manifest =
            match firmware::accept_manifest(&signed, &self.identity.product, &state, self.now()) {
                Ok(m) => m,
                Err(e) => {
                    if let Ok((digest, _)) = &hint {
                        let reason = Some(AgentError::from(e.clone()).to_string());
                        self.report_firmware(&session, digest, FirmwareState::Failed, reason, 0)
                            .await;
                    }
                    tracing::warn!(serial = self.serial(), "firmware refused: {e}");
                    return Ok(session);
                }
            };
        let digest = manifest.digest.clone();
        match self.download(&session, &manifest).await {
            Ok(()) => {}
            Err(AgentError::Firmware(e)) => {
                let slots = self.slots.clone();
                let d = digest.clone();
                blocking(move || slots.discard(&d)).await?;
                let reason = Some(AgentError::Firmware(e).to_string());
                self.report_firmware(&session, &digest, FirmwareState::Failed, reason, 0)
                    .await;
                return Ok(session);
            }
            Err(e) => return Err(e),
        }
        self.report_firmware(
            &session,
            &digest,
            FirmwareState::Verified,
            None,
            manifest.size,
        )
        .await;
        let (slots, d, m) = (self.slots.clone(), digest.clone(), signed.clone());
        blocking(move || slots.install(&d, &m)).await?;
        self.report_firmware(
            &session,
            &digest,
            FirmwareState::Installed,
            None,
            manifest.size,
        )
        .await;

        // "Reboot" into the new image, on trial.
        self.updating.store(true, Ordering::SeqCst);
        let result = self.trial_boot(session, &mut state, &manifest).await;
        self.updating.store(false, Ordering::SeqCst);
        let session = result?;
        self.stats
            .last_update_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(session)
    }

    async fn download(&self, session: &Session, manifest: &Manifest) -> Result<(), AgentError> {
        let digest = manifest.digest.clone();
        let (slots, d) = (self.slots.clone(), digest.clone());
        let mut offset = blocking(move || slots.staged_len(&d)).await?;
        if offset > manifest.size {
            let (slots, d) = (self.slots.clone(), digest.clone());
            blocking(move || slots.discard(&d)).await?;
            offset = 0;
        }
        self.report_firmware(session, &digest, FirmwareState::Downloading, None, offset)
            .await;
        let mut extra = 0u64;
        loop {
            // Ask one byte past the announced end too: an image with bytes appended must not
            // pass for the announced one.
            let want = manifest
                .size
                .saturating_sub(offset)
                .clamp(1, u64::from(CHUNK)) as u32;
            let chunk = match session
                .call(&Request::FirmwareChunk {
                    digest: digest.clone(),
                    offset,
                    length: want,
                })
                .await?
            {
                Response::Chunk(bytes) => bytes,
                other => return Err(unexpected("a firmware chunk", &other)),
            };
            if chunk.is_empty() {
                break;
            }
            if offset >= manifest.size {
                extra += chunk.len() as u64;
                break;
            }
            let len = chunk.len().min(want as usize);
            let (slots, d) = (self.slots.clone(), digest.clone());
            let piece = chunk[..len].to_vec();
            blocking(move || slots.stage(&d, offset, &piece)).await?;
            offset += len as u64;
            self.stats
                .firmware_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        let (slots, d) = (self.slots.clone(), digest.clone());
        let (size, actual) = blocking(move || slots.staged_digest(&d)).await?;
        manifest.check_image(size + extra, &actual)?;
        Ok(())
    }

    async fn trial_boot(
        &self,
        session: Session,
        state: &mut AgentState,
        manifest: &Manifest,
    ) -> Result<Session, AgentError> {
        let digest = manifest.digest.clone();
        let previous_version = state.firmware_version.clone();
        state.trial = Some(Trial {
            digest: digest.clone(),
            previous_version: previous_version.clone(),
        });
        self.save(state).await?;
        let slots = self.slots.clone();
        blocking(move || slots.boot_trial()).await?;
        state.firmware_version = manifest.version.clone();
        self.save(state).await?;
        session.close();

        // Health: the new image reaches the onboarder and passes its self-test. A busy or
        // briefly unreachable server is not a sick image: transient failures are retried.
        let reconnect = self.retrying(HEALTH_DEADLINE, || self.open_session()).await;
        let health = match reconnect {
            Ok(s) => self.slots.self_test().map(|()| s),
            Err(e) => Err(e.to_string()),
        };
        match health {
            Ok(session) => {
                let slots = self.slots.clone();
                blocking(move || slots.commit()).await?;
                state.firmware_sequence = manifest.sequence;
                state.firmware_digest = Some(digest.clone());
                state.trial = None;
                self.save(state).await?;
                self.report_firmware(
                    &session,
                    &digest,
                    FirmwareState::Healthy,
                    None,
                    manifest.size,
                )
                .await;
                self.stats.updates.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Err(reason) => {
                tracing::warn!(serial = self.serial(), "new firmware unhealthy: {reason}");
                let slots = self.slots.clone();
                blocking(move || slots.rollback()).await?;
                state.firmware_version = previous_version;
                state.trial = None;
                state.pending_report = Some(FirmwareReport {
                    digest,
                    state: FirmwareState::RolledBack,
                    reason: Some(reason),
                    bytes: manifest.size,
                });
                self.save(state).await?;
                // Back on the old image: a new session delivers the report.
                self.connect().await
            }
        }
    }

    /// Decommissions the device on the owner's order: wipes the owner's data and network
    /// credentials (through the [`Wiper`]), signs a wipe attestation bound to `nonce` with the
    /// LDevID key, stores it, delivers it on `session`, and only then destroys the LDevID keys
    /// and returns to the factory state (the IDevID and the firmware stay).
    pub async fn decommission(
        &self,
        session: &Session,
        nonce: Vec<u8>,
        method: protocol::attestation::WipeMethod,
    ) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let started_on = self.now();
        let wiper = self.wiper.clone();
        let targets = blocking(move || wiper.wipe(method)).await?;
        let mut state = self.load_state()?;
        let attestation = protocol::attestation::WipeAttestation {
            serial: self.identity.serial.clone(),
            manufacturer: self.identity.product.vendor_id.clone(),
            model: self.identity.product.class_id.clone(),
            firmware_version: state.firmware_version.clone(),
            agent_version: AGENT_VERSION.into(),
            nonce,
            method,
            targets,
            started_on,
            finished_on: self.now(),
        };
        let key = self
            .keys
            .ldevid_key()?
            .ok_or_else(|| PlatformError::Key("no LDevID key to sign the attestation".into()))?;
        state.pending_attestation = Some(attestation.sign(key.as_ref())?);
        state.network = None;
        self.save(&state).await?;
        self.deliver_attestation(session, &mut state).await?;
        self.stats
            .decommission_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the stored attestation; once the server has it, destroys the LDevID keys and
    /// resets the state to the factory one.
    async fn deliver_attestation(
        &self,
        session: &Session,
        state: &mut AgentState,
    ) -> Result<(), AgentError> {
        let Some(signed) = state.pending_attestation.clone() else {
            return Ok(());
        };
        session.call(&Request::WipeAttestation(signed)).await?;
        let keys = self.keys.clone();
        blocking(move || keys.destroy_ldevid_keys()).await?;
        let mut factory = AgentState::factory(&state.firmware_version);
        // The firmware is the device's, not the owner's: its anti-rollback counter survives.
        factory.firmware_sequence = state.firmware_sequence;
        factory.firmware_digest = state.firmware_digest.clone();
        let (store, fresh) = (self.state.clone(), factory.clone());
        blocking(move || store.reset(&fresh)).await?;
        *state = factory;
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

    /// Runs the device until `shutdown` completes or the owner decommissions it: onboard, keep
    /// the operational session, answer commands, renew on time, update firmware, and reconnect
    /// with backoff after failures. After a decommissioning the device is bare (factory state)
    /// and the loop ends: what comes next (a new owner) is a new provisioning.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut delay = self.options.backoff.initial;
        loop {
            let attempt = async {
                self.onboard().await?;
                let mut session = self.connect().await?;
                loop {
                    match self.serve(&session).await? {
                        Stop::Closed => {
                            tracing::info!(
                                serial = self.serial(),
                                "session closed: {}",
                                session.closed().await
                            );
                            return Ok::<bool, AgentError>(false);
                        }
                        Stop::Renew => session = self.renew(session).await?,
                        Stop::Update(manifest) => session = self.update(session, manifest).await?,
                        Stop::Decommission { nonce, method } => {
                            self.decommission(&session, nonce, method).await?;
                            session.close();
                            return Ok::<bool, AgentError>(true);
                        }
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = attempt => match result {
                    Ok(true) => {
                        tracing::info!(serial = self.serial(), "decommissioned: back in the factory state");
                        return Ok(());
                    }
                    Ok(false) => delay = self.options.backoff.initial,
                    Err(e) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
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

fn unexpected(wanted: &str, got: &Response) -> AgentError {
    AgentError::Protocol(format!("expected {wanted}, got {got:?}"))
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
