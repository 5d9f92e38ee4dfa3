//! A firmware update (SUIT order): the manifest checked before anything is downloaded, the
//! image downloaded (resuming where an earlier attempt stopped) and verified, installed into the
//! inactive slot, booted on trial, and committed after its health check or rolled back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::manifest::Manifest;
use protocol::message::{FirmwareReport, FirmwareState, Request, Response};

use super::{Agent, CHUNK, blocking, unexpected};
use crate::error::AgentError;
use crate::machine::AgentState;
use crate::machine::firmware::{self, UpdatePlan};
use crate::transport::quic::Session;

/// How long a freshly booted image may take to reach the onboarder before it counts as
/// unhealthy.
const HEALTH_DEADLINE: Duration = Duration::from_secs(120);

impl Agent {
    /// Reports on a firmware update (best effort: a lost report is repeated by the next state
    /// change or by the next offer).
    async fn report_firmware(&self, session: &Session, report: FirmwareReport) {
        if let Err(e) = session.call(&Request::FirmwareStatus(report)).await {
            tracing::debug!(serial = self.serial(), "firmware report not delivered: {e}");
        }
    }

    /// Installs the firmware of a signed manifest. A refused manifest or image is reported and
    /// nothing is installed; the session goes on. Returns the session to continue with (a new
    /// one after the trial boot).
    pub async fn update(&self, session: Session, signed: Vec<u8>) -> Result<Session, AgentError> {
        let started = std::time::Instant::now();
        let state = self.load_state()?;
        let manifest = match firmware::plan(&signed, &self.identity.product, &state, self.now()) {
            UpdatePlan::AlreadyRunning { digest, size } => {
                let healthy = FirmwareReport::progress(&digest, FirmwareState::Healthy, size);
                self.report_firmware(&session, healthy).await;
                return Ok(session);
            }
            UpdatePlan::Refuse { digest, reason } => {
                if let Some(digest) = digest {
                    self.report_firmware(&session, FirmwareReport::refused(&digest, &reason))
                        .await;
                }
                tracing::warn!(serial = self.serial(), "{}", AgentError::from(reason));
                return Ok(session);
            }
            UpdatePlan::Install(manifest) => manifest,
        };
        let digest = manifest.digest.clone();
        match self.download(&session, &manifest).await {
            Ok(()) => {}
            Err(AgentError::Firmware(e)) => {
                let slots = self.slots.clone();
                let d = digest.clone();
                blocking(move || slots.discard(&d)).await?;
                self.report_firmware(&session, FirmwareReport::refused(&digest, &e))
                    .await;
                return Ok(session);
            }
            Err(e) => return Err(e),
        }
        let verified = FirmwareReport::progress(&digest, FirmwareState::Verified, manifest.size);
        self.report_firmware(&session, verified).await;
        let (slots, d, m) = (self.slots.clone(), digest.clone(), signed.clone());
        blocking(move || slots.install(&d, &m)).await?;
        tracing::info!(
            serial = self.serial(),
            "firmware {} installed; booting it on trial",
            manifest.version
        );
        let installed = FirmwareReport::progress(&digest, FirmwareState::Installed, manifest.size);
        self.report_firmware(&session, installed).await;

        // "Reboot" into the new image, on trial.
        self.updating.store(true, Ordering::SeqCst);
        let result = self.trial_boot(session, state, &manifest).await;
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
        let staged = blocking(move || slots.staged_len(&d)).await?;
        let (mut offset, discard) = firmware::resume_at(staged, manifest.size);
        if discard {
            let (slots, d) = (self.slots.clone(), digest.clone());
            blocking(move || slots.discard(&d)).await?;
        }
        if offset > 0 {
            tracing::info!(
                serial = self.serial(),
                "firmware {}: resuming the download at byte {offset} of {}",
                manifest.version,
                manifest.size
            );
        }
        let downloading = FirmwareReport::progress(&digest, FirmwareState::Downloading, offset);
        self.report_firmware(session, downloading).await;
        let mut extra = 0u64;
        loop {
            let want = firmware::want(offset, manifest.size, CHUNK);
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
        state: AgentState,
        manifest: &Manifest,
    ) -> Result<Session, AgentError> {
        let trial = firmware::on_trial(&state, manifest);
        self.save(&trial).await?;
        let slots = self.slots.clone();
        blocking(move || slots.boot_trial()).await?;
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
                // The state as the session left it (a renewal may have been promoted).
                let now = self.load_state()?;
                self.save(&firmware::committed(&now, manifest)).await?;
                let healthy = FirmwareReport::progress(
                    &manifest.digest,
                    FirmwareState::Healthy,
                    manifest.size,
                );
                self.report_firmware(&session, healthy).await;
                tracing::info!(
                    serial = self.serial(),
                    "firmware {} healthy and committed",
                    manifest.version
                );
                self.stats.updates.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Err(reason) => {
                tracing::warn!(serial = self.serial(), "new firmware unhealthy: {reason}");
                let slots = self.slots.clone();
                blocking(move || slots.rollback()).await?;
                let now = self.load_state()?;
                self.save(&firmware::rolled_back(&now, manifest, reason))
                    .await?;
                // Back on the old image: a new session delivers the report.
                self.connect().await
            }
        }
    }
}
