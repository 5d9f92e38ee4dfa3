//! Onboarding (DESIGN 3): the provisional session, the voucher and its checks, the CSR with
//! the voucher's acceptance, the enrollment stored in one write. The first hello on the new
//! LDevID (`session.rs`) confirms it.

use protocol::message::{Request, Response};
use ring::rand::SecureRandom;

use super::{Agent, Presented, Trust, blocking, failure, off_thread, unexpected};
use crate::error::AgentError;
use crate::machine::onboarding::{self, Remaining};
use crate::machine::{AgentState, Phase};
use crate::platform::ClientCredential;
use crate::transport::Session;

impl Agent {
    pub(super) async fn provisional_session(&self) -> Result<Session, AgentError> {
        let credential = Presented {
            chain: vec![self.identity.idevid.clone()],
            key: self.birth_key()?,
            trust: Trust::Provisional,
        };
        self.connect_to(credential, self.options.timeouts).await
    }

    /// Onboards the device if it is not onboarded yet (DESIGN 3), and returns its state once
    /// the server has confirmed the enrollment. Safe to call again after any failure or
    /// crash: it resumes where the device stands. A caller that opens the operational session
    /// next anyway (the run loop) calls [`Agent::enroll_once`] and then [`Agent::connect`]:
    /// the same onboarding with one handshake fewer.
    pub async fn onboard(&self) -> Result<AgentState, AgentError> {
        let state = self.enroll_once().await?;
        if onboarding::remaining(&state) == Remaining::Nothing {
            return Ok(state);
        }
        self.connect().await?.close();
        self.load_state()
    }

    /// The enrollment of onboarding, done once: the voucher and its checks, the CSR, the
    /// LDevID and everything with it stored in one write, the network credentials applied.
    /// The server confirms the enrollment when the device first opens its operational session
    /// with the new LDevID ([`Agent::connect`]): the hello that uses it is the confirmation,
    /// as it is for a renewal, so no status report of its own is sent. Safe to call again after
    /// any failure or crash.
    pub async fn enroll_once(&self) -> Result<AgentState, AgentError> {
        let mut state = self.load_state()?;
        if let Some(floor) = state.clock_floor.filter(|floor| *floor > self.now()) {
            tracing::warn!(
                serial = self.serial(),
                was = self.now(),
                now = floor,
                "the clock reads before the last enrollment: set to it"
            );
            self.options.clock.set(floor);
        }
        self.recover_keys(&mut state)?;
        match onboarding::remaining(&state) {
            Remaining::Nothing => return Ok(state),
            Remaining::Confirm => {
                // Stored, perhaps not applied when a crash came: applying is idempotent.
                self.apply_network(&state).await?;
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
        let unsigned =
            onboarding::voucher_request(&self.identity, &nonce, registrar, &binding, now);
        let key = self.birth_key()?;
        let request = off_thread(move || Ok(unsigned.sign(key.as_ref())?)).await?;
        let signed_voucher = match session.call(&Request::VoucherRequest(request)).await? {
            Response::Voucher(v) => v,
            other => return Err(unexpected("a voucher", &other)),
        };
        // Voucher first, then the registrar against the CA it pins (RFC 8995 5.6), at the
        // time the voucher gives when the device's clock is wrong.
        let checked = onboarding::accept_voucher(&self.identity, &signed_voucher, &nonce, now)
            .and_then(|accepted| {
                let now = accepted.time.unwrap_or(now);
                let pinned = [accepted.voucher.pinned_domain_cert.clone()];
                onboarding::check_registrar(&pinned, &presented, now).map(|()| accepted)
            });
        let accepted = match checked {
            Ok(a) => a,
            Err(e) => {
                self.report(session, Request::VoucherStatus(failure(&e)))
                    .await;
                return Err(e);
            }
        };
        if let Some(time) = accepted.time {
            tracing::warn!(
                serial = self.serial(),
                was = now,
                now = time,
                "the clock was wrong: set from the nonced voucher"
            );
            self.options.clock.set(time);
        }
        // The acceptance (RFC 8995 5.7's voucher status) travels with the CSR.
        self.enroll_key(
            session,
            &binding,
            Some(accepted.voucher.pinned_domain_cert),
            state,
        )
        .await
    }

    /// Enrolls again with the IDevID, without a voucher: the LDevID expired while the device
    /// was offline (the onboarder refused it as expired). The registrar must chain to the
    /// owner roots the device trusts (the CA its voucher pinned, or those the owner gave since);
    /// the owner's policy decides whether it may.
    pub async fn reenroll(&self) -> Result<AgentState, AgentError> {
        let mut state = self.load_state()?;
        if state.roots().is_empty() {
            return Err(AgentError::Protocol("the device is not onboarded".into()));
        }
        let session = self.provisional_session().await?;
        let result = async {
            onboarding::check_registrar(&state.roots(), &session.server_chain(), self.now())?;
            let binding = session.binding()?;
            self.enroll_key(&session, &binding, None, &mut state).await
        }
        .await;
        session.close();
        tracing::info!(serial = self.serial(), "enrolled again with the IDevID");
        result.map(|()| state)
    }

    /// A fresh key, its CSR bound to `session`, the LDevID checked against the CA a voucher
    /// just pinned (`pin`, which replaces what the device trusted, and whose acceptance the
    /// request carries) or else the owner roots it trusts, and stored with everything that came
    /// with it in one write; then the network credentials applied.
    async fn enroll_key(
        &self,
        session: &Session,
        binding: &[u8],
        pin: Option<Vec<u8>>,
        state: &mut AgentState,
    ) -> Result<(), AgentError> {
        let anchors = match &pin {
            Some(pinned) => vec![pinned.clone()],
            None => state.roots(),
        };
        let now = self.now();
        let key = self.pending_key().await?;
        let csr = self.csr(key.clone(), binding.to_vec()).await?;
        let request = Request::Enroll {
            csr,
            voucher_accepted: pin.is_some(),
        };
        let enrollment = match session.call(&request).await? {
            Response::Enrolled(e) => e,
            other => return Err(unexpected("an enrollment", &other)),
        };
        let info = match onboarding::check_enrollment(
            &enrollment,
            &self.identity.serial,
            &key.public_key(),
            &anchors,
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
        if let Some(pinned) = pin {
            state.owner_ca = Some(pinned);
            state.owner_roots.clear();
        }
        state.ldevid = Some(enrollment.certificate);
        state.renewal = None;
        state.chain = enrollment.chain;
        state.network = Some(enrollment.network);
        state.config = Some(enrollment.config);
        state.renew_at = Some(self.renew_at(info.not_after));
        state.clock_floor = Some(now);
        self.save(state).await?;
        self.commit_pending_key().await?;
        self.apply_network(state).await?;
        tracing::info!(
            serial = self.serial(),
            "enrolled: LDevID until {}",
            crate::clock::rfc3339(info.not_after)
        );
        Ok(())
    }

    /// Hands the network credentials and the current LDevID to the network stack.
    pub(super) async fn apply_network(&self, state: &AgentState) -> Result<(), AgentError> {
        let (Some(network), Some(certificate)) = (state.network.clone(), state.ldevid.clone())
        else {
            return Ok(());
        };
        let client = ClientCredential {
            certificate,
            chain: state.chain.iter().map(|c| c.to_vec()).collect(),
            key: self.keys.ldevid_key_location(),
        };
        let applier = self.network.clone();
        blocking(move || applier.apply(&network, &client)).await?;
        Ok(())
    }

    /// Best-effort status report: the device is already refusing, so a lost report changes
    /// nothing.
    pub(super) async fn report(&self, session: &Session, request: Request) {
        if let Err(e) = session.call(&request).await {
            tracing::debug!("status report not delivered: {e}");
        }
    }
}
