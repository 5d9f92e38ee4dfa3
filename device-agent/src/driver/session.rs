//! The operational session: repairing what a crash left (keys, a trial boot), opening it with
//! the right certificate (a renewed one first: using it confirms it), delivering what is
//! pending, and serving commands until something ends it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::message::{Command, Hello, NetworkProfile, Request, Response, anchors_digest};

use super::{AGENT_VERSION, Agent, Presented, Stop, Trust, blocking, unexpected};
use crate::error::{AgentError, PlatformError};
use crate::machine::recovery::{self, KeyRepair};
use crate::machine::renewal;
use crate::machine::session::{self, Credential, Delivery};
use crate::machine::{AgentState, Phase, Renewal};
use crate::machine::{anchors, commands};
use crate::platform::DeviceKey;
use crate::transport::Session;

impl Agent {
    /// Finishes what a crash interrupted in the key store: a key promotion (the stored LDevID
    /// must have its key current), or a return to the factory state after a wipe (`state`
    /// becomes the factory one).
    pub(super) fn recover_keys(&self, state: &mut AgentState) -> Result<(), AgentError> {
        let current = self.keys.ldevid_key()?.map(|k| k.public_key());
        let pending = self.keys.pending_ldevid_key()?.map(|k| k.public_key());
        match recovery::keys(state, current.as_ref(), pending.as_ref())? {
            KeyRepair::None => Ok(()),
            KeyRepair::PromotePending => Ok(self.keys.commit_pending_ldevid_key()?),
            KeyRepair::FinishReset => {
                tracing::warn!(
                    serial = self.serial(),
                    "finishing the return to the factory state a crash interrupted"
                );
                let factory = crate::machine::decommission::factory_after(state);
                self.state.reset(&factory)?;
                *state = factory;
                Ok(())
            }
        }
    }

    /// A trial boot that this agent is not running was interrupted (the device restarted in
    /// it): go back to the previous image, as a bootloader's watchdog would.
    async fn recover_firmware(&self, state: &mut AgentState) -> Result<(), AgentError> {
        let updating = self.updating.load(Ordering::SeqCst);
        let Some(back) = recovery::interrupted_trial(state, updating) else {
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
        *state = back;
        self.save(state).await
    }

    async fn open(
        &self,
        state: &AgentState,
        ldevid: &[u8],
        chain: &[serde_bytes::ByteBuf],
        key: Arc<dyn DeviceKey>,
    ) -> Result<Session, AgentError> {
        let roots = state.roots();
        let (false, Some(config)) = (roots.is_empty(), &state.config) else {
            return Err(AgentError::Protocol("the device is not onboarded".into()));
        };
        let mut presented = vec![ldevid.to_vec()];
        presented.extend(chain.iter().take(1).map(|c| c.to_vec()));
        let timeouts = self
            .options
            .timeouts
            .with_heartbeat(Duration::from_secs(config.heartbeat_secs.into()));
        let credential = Presented {
            chain: presented,
            key,
            trust: Trust::Roots {
                roots: roots.clone(),
                server_name: config.server_name.clone(),
            },
        };
        let session = self.connect_to(credential, timeouts).await?;
        let mut commands = self.hello(&session, state, &roots).await?;
        // New owner roots come first in a welcome. Once they are taken, a second hello says
        // so on the same session (the server records what the device trusts from its hello),
        // and its welcome replaces the first.
        if let Some(Command::TrustAnchors { anchors }) = commands.first() {
            let anchors: Vec<Vec<u8>> = anchors.iter().map(|a| a.to_vec()).collect();
            let mut presented = vec![ldevid.to_vec()];
            presented.extend(chain.iter().map(|c| c.to_vec()));
            match self.take_roots(&session, &anchors, &presented).await {
                Ok(()) => commands = self.hello(&session, state, &anchors).await?,
                Err(e) => tracing::warn!(serial = self.serial(), "{e}"),
            }
        }
        if state.phase == (Phase::Enrolled { confirmed: false }) {
            // The welcome answered a hello on the new LDevID: the server confirmed the
            // enrollment by that use.
            let mut state = self.load_state()?;
            state.phase = Phase::Enrolled { confirmed: true };
            self.save(&state).await?;
            tracing::info!(
                serial = self.serial(),
                "onboarded: the enrollment is confirmed"
            );
        }
        *self.welcome.lock().unwrap_or_else(|e| e.into_inner()) = commands;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(serial = self.serial(), "session open");
        Ok(session)
    }

    /// Says hello on `session`, trusting `roots`: the commands of the welcome.
    async fn hello(
        &self,
        session: &Session,
        state: &AgentState,
        roots: &[Vec<u8>],
    ) -> Result<Vec<Command>, AgentError> {
        let answer = session
            .call(&Request::Hello(Hello {
                agent_version: AGENT_VERSION.into(),
                firmware_version: state.firmware_version.clone(),
                firmware_sequence: state.firmware_sequence,
                class_id: self.identity.product.class_id.clone(),
                hardware: self.options.hardware.clone(),
                anchors: Some(anchors_digest(roots).to_vec().into()),
            }))
            .await?;
        match answer {
            Response::Welcome(w) => Ok(w.commands),
            other => Err(unexpected("a welcome", &other)),
        }
    }

    /// Trusts the owner roots `roots` from now on, if they pass the checks of
    /// [`anchors::check`] against the server of `session` and the device's certificate
    /// `presented` (leaf first); stored before anyone is told.
    async fn take_roots(
        &self,
        session: &Session,
        roots: &[Vec<u8>],
        presented: &[Vec<u8>],
    ) -> Result<(), AgentError> {
        anchors::check(roots, &session.server_chain(), presented, self.now())?;
        let mut state = self.load_state()?;
        state.owner_roots = roots.iter().cloned().map(Into::into).collect();
        self.save(&state).await?;
        self.stats.root_updates.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            serial = self.serial(),
            roots = roots.len(),
            "owner roots updated"
        );
        Ok(())
    }

    /// Records that security updates end on `ends_on`, says so to the device's user (the log),
    /// and confirms it to the server once it is stored.
    async fn record_support_notice(
        &self,
        session: &Session,
        ends_on: u64,
    ) -> Result<(), AgentError> {
        let mut state = self.load_state()?;
        if state.support_ends_on != Some(ends_on) {
            state.support_ends_on = Some(ends_on);
            self.save(&state).await?;
        }
        let when = crate::clock::rfc3339(ends_on);
        if ends_on <= self.now() {
            tracing::warn!(
                serial = self.serial(),
                "security updates for this device ended on {when}"
            );
        } else {
            tracing::warn!(
                serial = self.serial(),
                "security updates for this device end on {when}"
            );
        }
        // A refusal (the owner changed the date meanwhile) is not worth ending the session:
        // the next welcome brings the notice in force.
        match session
            .call(&Request::SupportNoticeRecorded { ends_on })
            .await?
        {
            Response::Ack => {}
            other => tracing::warn!(
                serial = self.serial(),
                "support notice not confirmed: {}",
                unexpected("an acknowledgement", &other)
            ),
        }
        Ok(())
    }

    /// Opens the operational session and says hello. A renewal stored but not yet confirmed
    /// is completed first: opening a session with the new certificate is the confirmation, as
    /// it is for the first LDevID of an onboarding.
    /// What a crash left undelivered (a wipe attestation, a firmware report) goes first.
    pub async fn connect(&self) -> Result<Session, AgentError> {
        let session = self.open_session().await?;
        let mut state = self.load_state()?;
        match session::pending(&state) {
            Delivery::Attestation(_) => {
                // Wiped before a crash: finish delivering the evidence, then the device is
                // bare.
                self.deliver_attestation(&session, &mut state).await?;
                session.close();
                return Err(AgentError::Protocol(
                    "the device was decommissioned; it is back in its factory state".into(),
                ));
            }
            Delivery::Report(report) => {
                session.call(&Request::FirmwareStatus(report)).await?;
                state.pending_report = None;
                self.save(&state).await?;
            }
            Delivery::Nothing => {}
        }
        self.forward_security_events(&session).await;
        Ok(session)
    }

    pub(super) async fn open_session(&self) -> Result<Session, AgentError> {
        let mut state = self.load_state()?;
        self.recover_keys(&mut state)?;
        self.recover_firmware(&mut state).await?;
        if let Credential::Renewal(renewal) = session::credential(&state)? {
            let key = self
                .keys
                .pending_ldevid_key()?
                .ok_or_else(|| PlatformError::Key("the renewal's key is missing".into()))?;
            match self
                .open(&state, &renewal.ldevid, &renewal.chain, key)
                .await
            {
                Ok(session) => {
                    self.promote(&state, renewal).await?;
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
    async fn promote(&self, state: &AgentState, renewal: Renewal) -> Result<(), AgentError> {
        let not_after = certs::CertInfo::parse(&renewal.ldevid)?.not_after;
        let next = session::promoted(state, renewal, self.renew_at(not_after));
        self.save(&next).await?;
        self.commit_pending_key().await?;
        if matches!(next.network, Some(NetworkProfile::EapTls { .. })) {
            self.apply_network(&next).await?;
        }
        tracing::info!(
            serial = self.serial(),
            "renewed: a new LDevID until {}",
            crate::clock::rfc3339(not_after)
        );
        self.stats.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Answers commands on `session` until it closes, the LDevID must be renewed, or a
    /// command asks for work (an update, a decommissioning).
    pub async fn serve(&self, session: &Session) -> Result<Stop, AgentError> {
        let welcome = std::mem::take(&mut *self.welcome.lock().unwrap_or_else(|e| e.into_inner()));
        for command in &welcome {
            if let Command::SupportNotice { ends_on, .. } = command {
                self.record_support_notice(session, *ends_on).await?;
            }
        }
        if let Some(stop) = session::welcome(&welcome) {
            return Ok(stop);
        }
        let state = self.load_state()?;
        let not_after = state
            .ldevid
            .as_deref()
            .and_then(|c| certs::CertInfo::parse(c).ok())
            .map_or(0, |info| info.not_after);
        let due = async {
            match state.renew_at {
                Some(at) => {
                    let clock = &self.options.clock;
                    clock.sleep_until(at).await;
                    let now = clock.now();
                    let extra = renewal::spread_after(now, at, not_after, self.unit_jitter());
                    if extra > 0 {
                        tracing::info!(
                            serial = self.serial(),
                            "renewal {}s late (the clock moved?): spread over {extra}s",
                            now - at
                        );
                        let detail = format!(
                            "the clock jumped: renewal due at {} found at {}",
                            crate::clock::rfc3339(at),
                            crate::clock::rfc3339(now)
                        );
                        if let Err(e) = self
                            .security_event(
                                Some(session),
                                protocol::message::SecurityEventKind::ClockJump,
                                &detail,
                            )
                            .await
                        {
                            tracing::warn!(serial = self.serial(), "{e}");
                        }
                        clock.sleep_until(now + extra).await;
                    }
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
                    let (mut reply, action) = match command {
                        Ok(command) => commands::handle(&command),
                        Err(e) => (commands::unsupported(&e.to_string()), commands::Action::None),
                    };
                    if let commands::Action::TrustAnchors(roots) = &action {
                        let state = self.load_state()?;
                        let mut presented: Vec<Vec<u8>> = state.ldevid.iter().cloned().collect();
                        presented.extend(state.chain.iter().map(|c| c.to_vec()));
                        if let Err(e) = self.take_roots(session, roots, &presented).await {
                            reply = commands::refused(&e);
                            self.security_event(
                                Some(session),
                                protocol::message::SecurityEventKind::CommandRefused,
                                &format!("owner roots refused: {e}"),
                            )
                            .await?;
                        }
                    }
                    session.reply(send, &reply).await?;
                    if let commands::Action::SupportNotice { ends_on } = action {
                        self.record_support_notice(session, ends_on).await?;
                    }
                    if let Some(stop) = session::stop_for(action) {
                        return Ok(stop);
                    }
                }
            }
        }
    }
}
