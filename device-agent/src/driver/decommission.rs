//! Decommissioning on the owner's order: wipe, sign the attestation bound to the server's
//! nonce, deliver it, and only then forget the owner's keys and return to the factory state.

use std::sync::atomic::Ordering;

use protocol::message::Request;

use super::{AGENT_VERSION, Agent, blocking, off_thread};
use crate::error::{AgentError, PlatformError};
use crate::machine::AgentState;
use crate::machine::decommission::{self, Wiped};
use crate::transport::Session;

impl Agent {
    /// Decommissions the device on the owner's order: wipes the owner's data and network
    /// credentials (through the [`crate::platform::Wiper`]), signs a wipe attestation bound to
    /// `nonce` with the LDevID key, stores it, delivers it on `session`, and only then destroys
    /// the LDevID keys and returns to the factory state (the IDevID and the firmware stay).
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
        let state = self.load_state()?;
        let attestation = decommission::attestation(
            &state,
            Wiped {
                identity: &self.identity,
                agent_version: AGENT_VERSION,
                nonce,
                method,
                targets,
                started_on,
                finished_on: self.now(),
            },
        );
        let key = self
            .keys
            .ldevid_key()?
            .ok_or_else(|| PlatformError::Key("no LDevID key to sign the attestation".into()))?;
        let signed = off_thread(move || Ok(attestation.sign(key.as_ref())?)).await?;
        let mut state = decommission::wiped(&state, signed);
        self.save(&state).await?;
        self.deliver_attestation(session, &mut state).await?;
        tracing::info!(
            serial = self.serial(),
            "decommissioned: wiped ({method}) and attested; back in the factory state"
        );
        self.stats
            .decommission_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the stored attestation; once the server has it, destroys the LDevID keys and
    /// resets the state to the factory one.
    pub(super) async fn deliver_attestation(
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
        let factory = decommission::factory_after(state);
        let (store, fresh) = (self.state.clone(), factory.clone());
        blocking(move || store.reset(&fresh)).await?;
        *state = factory;
        Ok(())
    }
}
