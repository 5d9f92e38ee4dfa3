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
    ///
    /// With `export_to`, the application data goes to the owner first: a tar archive of it,
    /// encrypted to that age recipient, handed to the server piece by piece; the attestation
    /// names its digest. The wipe does not start before the server has all of it.
    pub async fn decommission(
        &self,
        session: &Session,
        nonce: Vec<u8>,
        method: protocol::attestation::WipeMethod,
        export_to: Option<String>,
    ) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let started_on = self.now();
        let exported = match export_to {
            Some(recipient) => Some(self.hand_back(session, &recipient).await?),
            None => None,
        };
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
                exported,
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

    /// Archives the application data (tar), encrypts it to the owner's age `recipient` and
    /// hands it to the server in pieces; what the attestation says of it.
    async fn hand_back(
        &self,
        session: &Session,
        recipient: &str,
    ) -> Result<protocol::attestation::ExportedData, AgentError> {
        let to: age::x25519::Recipient = recipient
            .parse()
            .map_err(|e| AgentError::Protocol(format!("the owner's recipient {recipient}: {e}")))?;
        let wiper = self.wiper.clone();
        let ciphertext = blocking(move || {
            let mut archive = tar::Builder::new(Vec::new());
            for (name, data) in wiper.export()? {
                let mut header = tar::Header::new_ustar();
                header.set_size(data.len() as u64);
                header.set_mode(0o600);
                header.set_cksum();
                archive
                    .append_data(&mut header, &name, data.as_slice())
                    .map_err(|e| PlatformError::Wipe(format!("archiving {name}: {e}")))?;
            }
            let archive = archive
                .into_inner()
                .map_err(|e| PlatformError::Wipe(format!("archiving: {e}")))?;
            age::encrypt(&to, &archive)
                .map_err(|e| PlatformError::Wipe(format!("encrypting to the owner: {e}")))
        })
        .await?;
        let total = ciphertext.len() as u64;
        if total > protocol::message::MAX_EXPORT {
            return Err(AgentError::Protocol(format!(
                "{total} bytes of data to hand back; the server takes at most {}",
                protocol::message::MAX_EXPORT
            )));
        }
        let digest = protocol::manifest::sha256(&ciphertext).to_vec();
        let mut offset = 0usize;
        for piece in ciphertext.chunks(protocol::message::MAX_EXPORT_CHUNK) {
            let request = Request::DataExport(protocol::message::DataChunk {
                digest: digest.clone(),
                total,
                offset: offset as u64,
                bytes: piece.to_vec(),
            });
            match session.call(&request).await? {
                protocol::message::Response::Ack => {}
                other => return Err(super::unexpected("an acknowledgement", &other)),
            }
            offset += piece.len();
        }
        tracing::info!(
            serial = self.serial(),
            "application data handed back: {total} bytes encrypted to {recipient}"
        );
        Ok(protocol::attestation::ExportedData {
            recipient: recipient.to_string(),
            sha256: digest,
            bytes: total,
        })
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
        self.forget_owner(state).await
    }

    /// Destroys the LDevID keys and resets the state to the factory one (the IDevID and the
    /// firmware stay).
    pub(super) async fn forget_owner(&self, state: &mut AgentState) -> Result<(), AgentError> {
        let keys = self.keys.clone();
        blocking(move || keys.destroy_ldevid_keys()).await?;
        let factory = decommission::factory_after(state);
        let (store, fresh) = (self.state.clone(), factory.clone());
        blocking(move || store.reset(&fresh)).await?;
        *state = factory;
        Ok(())
    }
}
