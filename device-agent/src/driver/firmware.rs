//! A firmware update (SUIT order): the manifest checked before anything is downloaded, the
//! image downloaded (resuming where an earlier attempt stopped) and verified, installed into the
//! inactive slot, booted on trial, and committed after its health check or rolled back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::manifest::Manifest;
use protocol::message::{FirmwareReport, FirmwareState, Request, Response, SecurityEventKind};

use http_body_util::BodyExt;

use super::{Agent, CHUNK, blocking, unexpected};
use crate::error::{AgentError, PlatformError};
use crate::machine::AgentState;
use crate::machine::firmware::{self, UpdatePlan};
use crate::transport::Session;
use crate::transport::https::ImageSource;
use crate::transport::quic;

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
    pub async fn update(
        &self,
        session: Session,
        signed: Vec<u8>,
        url: Option<String>,
    ) -> Result<Session, AgentError> {
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
                let kind = match reason {
                    protocol::manifest::ManifestError::Rollback { .. } => {
                        SecurityEventKind::RollbackRefused
                    }
                    _ => SecurityEventKind::VerificationFailed,
                };
                self.security_event(Some(&session), kind, &format!("firmware refused: {reason}"))
                    .await?;
                return Ok(session);
            }
            UpdatePlan::Install(manifest) => manifest,
        };
        let digest = manifest.digest.clone();
        match self.download(&session, &manifest, url.as_deref()).await {
            Ok(()) => {}
            Err(AgentError::Firmware(e)) => {
                let slots = self.slots.clone();
                let d = digest.clone();
                blocking(move || slots.discard(&d)).await?;
                self.report_firmware(&session, FirmwareReport::refused(&digest, &e))
                    .await;
                self.security_event(
                    Some(&session),
                    SecurityEventKind::VerificationFailed,
                    &format!("firmware image refused: {e}"),
                )
                .await?;
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

    /// Where the staged image of `manifest` resumes (an oversized stage is discarded).
    async fn staged_offset(&self, manifest: &Manifest) -> Result<u64, AgentError> {
        let (slots, d) = (self.slots.clone(), manifest.digest.clone());
        let staged = blocking(move || slots.staged_len(&d)).await?;
        let (offset, discard) = firmware::resume_at(staged, manifest.size);
        if discard {
            let (slots, d) = (self.slots.clone(), manifest.digest.clone());
            blocking(move || slots.discard(&d)).await?;
        }
        Ok(offset)
    }

    /// Stages `piece` of the image at `offset`.
    async fn stage(&self, digest: &[u8], offset: u64, piece: Vec<u8>) -> Result<(), AgentError> {
        let (slots, d) = (self.slots.clone(), digest.to_vec());
        let len = piece.len() as u64;
        blocking(move || slots.stage(&d, offset, &piece)).await?;
        self.stats.firmware_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Downloads the image: from `url` over HTTPS when the offer gave one (falling back to
    /// the session if that fails), else over the session; then checks it against the manifest.
    async fn download(
        &self,
        session: &Session,
        manifest: &Manifest,
        url: Option<&str>,
    ) -> Result<(), AgentError> {
        let digest = manifest.digest.clone();
        let offset = self.staged_offset(manifest).await?;
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
        let over_https = match url {
            Some(url) => match self.download_https(url, manifest).await {
                Ok(beyond) => Some(beyond),
                Err(e) => {
                    tracing::warn!(
                        serial = self.serial(),
                        "firmware {}: HTTPS download failed ({e}); going on over the session",
                        manifest.version
                    );
                    None
                }
            },
            None => None,
        };
        let extra = match over_https {
            Some(beyond) => beyond,
            None => self.download_over_session(session, manifest).await?,
        };
        let (slots, d) = (self.slots.clone(), digest.clone());
        let (size, actual) = blocking(move || slots.staged_digest(&d)).await?;
        manifest.check_image(size + extra, &actual)?;
        Ok(())
    }

    /// Downloads the rest of the image in chunks over the session. Returns the bytes the
    /// server has beyond the manifest's size (which the check refuses).
    async fn download_over_session(
        &self,
        session: &Session,
        manifest: &Manifest,
    ) -> Result<u64, AgentError> {
        let mut offset = self.staged_offset(manifest).await?;
        loop {
            let want = firmware::want(offset, manifest.size, session.chunk());
            let chunk = match session
                .call(&Request::FirmwareChunk {
                    digest: manifest.digest.clone(),
                    offset,
                    length: want,
                })
                .await?
            {
                Response::Chunk(bytes) => bytes,
                other => return Err(unexpected("a firmware chunk", &other)),
            };
            if chunk.is_empty() {
                return Ok(0);
            }
            if offset >= manifest.size {
                return Ok(chunk.len() as u64);
            }
            let len = chunk.len().min(want as usize);
            self.stage(&manifest.digest, offset, chunk[..len].to_vec())
                .await?;
            offset += len as u64;
        }
    }

    /// Downloads the rest of the image from `url` over HTTPS with the device's LDevID, from
    /// where the stage stops; pieces are staged as they come, so an interrupted download
    /// resumes (with `Range`) where it stopped. Returns the bytes the server sent beyond the
    /// manifest's size (which the check refuses).
    async fn download_https(&self, url: &str, manifest: &Manifest) -> Result<u64, AgentError> {
        let state = self.load_state()?;
        let Some(ldevid) = &state.ldevid else {
            return Err(AgentError::Protocol("the device is not onboarded".into()));
        };
        let key = self
            .keys
            .ldevid_key()?
            .ok_or_else(|| PlatformError::Key("no LDevID key".into()))?;
        let mut chain = vec![ldevid.clone()];
        chain.extend(state.chain.iter().take(1).map(|c| c.to_vec()));
        let tls = quic::operational_tls(&chain, key, &state.roots(), &self.options.clock)?;
        let mut source = ImageSource::open(url, tls).await?;
        let mut offset = self.staged_offset(manifest).await?;
        let mut beyond = 0u64;
        loop {
            let (mut body, mut skip) = source.get(offset).await?;
            let mut pending: Vec<u8> = Vec::with_capacity(CHUNK as usize);
            let mut received = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| AgentError::Connection(format!("{url}: {e}")))?;
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                let skipped = data.len().min(usize::try_from(skip).unwrap_or(usize::MAX));
                skip -= skipped as u64;
                let _ = data.split_to(skipped);
                received += data.len() as u64;
                let room = manifest.size.saturating_sub(offset + pending.len() as u64);
                let keep = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                beyond += (data.len() - keep) as u64;
                pending.extend_from_slice(&data[..keep]);
                if pending.len() >= CHUNK as usize {
                    let len = pending.len() as u64;
                    self.stage(&manifest.digest, offset, std::mem::take(&mut pending))
                        .await?;
                    self.stats
                        .firmware_bytes_https
                        .fetch_add(len, Ordering::Relaxed);
                    offset += len;
                }
            }
            if !pending.is_empty() {
                let len = pending.len() as u64;
                self.stage(&manifest.digest, offset, pending).await?;
                self.stats
                    .firmware_bytes_https
                    .fetch_add(len, Ordering::Relaxed);
                offset += len;
            }
            if offset >= manifest.size || beyond > 0 {
                return Ok(beyond);
            }
            if received == 0 {
                return Err(AgentError::Connection(format!(
                    "{url} ended at byte {offset} of {}",
                    manifest.size
                )));
            }
        }
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
                // Logged before the report: once the server knows, the device may be stopped.
                tracing::info!(
                    serial = self.serial(),
                    "firmware {} healthy and committed",
                    manifest.version
                );
                let healthy = FirmwareReport::progress(
                    &manifest.digest,
                    FirmwareState::Healthy,
                    manifest.size,
                );
                self.report_firmware(&session, healthy).await;
                self.stats.updates.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Err(reason) => {
                tracing::warn!(serial = self.serial(), "new firmware unhealthy: {reason}");
                let slots = self.slots.clone();
                blocking(move || slots.rollback()).await?;
                let now = self.load_state()?;
                let detail = format!("firmware {} rolled back: {reason}", manifest.version);
                self.save(&firmware::rolled_back(&now, manifest, reason))
                    .await?;
                self.security_event(None, SecurityEventKind::RolledBack, &detail)
                    .await?;
                // Back on the old image: a new session delivers the report.
                self.connect().await
            }
        }
    }
}
