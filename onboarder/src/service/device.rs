//! Requests of authenticated devices: a total match over [`Request`], each decided by the core
//! and committed through the one loop; firmware chunks read from the image store.

use protocol::message::{Request, Response};

use super::Service;
use crate::audit::AuditEvent;
use crate::core::{self, DeviceId, DevicePeer, DeviceRecord, LifecycleError, renew};

/// The answer to a device's request, and what the transport must do about its connection.
#[derive(Debug)]
pub struct Handled {
    /// The answer.
    pub response: Response,
    /// The device's operational session is open: commands may be pushed on this connection.
    pub opened_session: bool,
}

impl Service {
    /// Handles one request from an authenticated device. `session_binding` is the TLS exporter
    /// value of the connection it arrived on. Every refusal is counted and audited (within the
    /// audit budget) and answered with its typed wire error.
    ///
    /// `transport` (`quic`, `https`, `coap`) labels the request in the metrics.
    pub async fn handle(
        &self,
        peer: &DevicePeer,
        session_binding: &[u8],
        request: Request,
        transport: &'static str,
    ) -> Handled {
        let started = std::time::Instant::now();
        let result = match &request {
            Request::FirmwareChunk {
                digest,
                offset,
                length,
            } => self.chunk(peer, digest, *offset, *length).await,
            Request::DataExport(piece) => self.export_piece(peer, piece).await,
            Request::VoucherRequest(signed) => {
                // The MASA is asked before the decision (which does no I/O), and only for a
                // request the core would answer.
                let nonced = self.nonced_voucher(peer, signed, session_binding).await;
                self.decide_device(&peer.id, |record, now| {
                    core::onboard::voucher_request(
                        self.registrar().as_ref(),
                        peer,
                        record,
                        signed,
                        session_binding,
                        now,
                        nonced.clone(),
                    )
                })
                .await
            }
            _ => {
                self.decide_device(&peer.id, |record, now| {
                    self.decide(peer, session_binding, &request, record, now)
                })
                .await
            }
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                self.record_refusal(Some(peer), &e).await;
                Response::Error(e.to_wire())
            }
        };
        let refused = match &response {
            Response::Error(e) => Some(e.code),
            _ => None,
        };
        self.metrics
            .request(request.operation(), transport, refused, started.elapsed());
        Handled {
            opened_session: core::onboard::opens_session(peer, &response),
            response,
        }
    }

    fn decide(
        &self,
        peer: &DevicePeer,
        binding: &[u8],
        request: &Request,
        record: Option<DeviceRecord>,
        now: u64,
    ) -> Result<core::Decision, LifecycleError> {
        let reg = self.registrar();
        let reg = reg.as_ref();
        let grace = reg.policy.superseded_grace;
        match request {
            // Decided in `handle`, after the MASA was asked.
            Request::VoucherRequest(_) => Err(LifecycleError::BadRequest(
                "a voucher request is decided with its MASA answer".into(),
            )),
            Request::VoucherStatus(status) => {
                core::onboard::voucher_status(peer, record, status.clone(), now)
            }
            Request::Enroll {
                csr,
                voucher_accepted: true,
            } => core::onboard::accept_voucher_and_enroll(
                reg,
                peer,
                record,
                csr,
                binding,
                now,
                self.entropy()?,
            ),
            Request::Enroll { csr, .. } => {
                core::onboard::enroll(reg, peer, record, csr, binding, now, self.entropy()?)
            }
            Request::EnrollStatus(status) => {
                core::onboard::enroll_status(peer, record, status.clone(), now)
            }
            Request::Hello(hello) => {
                let support = self.support_of(Some(hello.class_id.as_str()));
                core::onboard::hello(reg, peer, record, hello.clone(), support.as_ref(), now)
            }
            // Decided in `handle`, once the piece is stored.
            Request::DataExport(_) => Err(LifecycleError::BadRequest(
                "a data piece is decided once it is stored".into(),
            )),
            Request::SecurityEvents(events) => {
                core::security::report(peer, record, events, now, grace)
            }
            Request::SupportNoticeRecorded { ends_on } => {
                let class = record.as_ref().and_then(|r| r.class_id.clone());
                let support = self.support_of(class.as_deref());
                core::support::recorded(peer, record, support.as_ref(), *ends_on, now)
            }
            Request::Reenroll { csr } => {
                renew::reenroll(reg, peer, record, csr, binding, now, self.entropy()?)
            }
            Request::WipeAttestation(signed) => {
                core::decommission::attest(peer, record, signed, now, grace)
            }
            Request::FirmwareStatus(report) => {
                core::firmware::report(peer, record, report.clone(), now, grace)
            }
            // Served without a decision (see `chunk`); named so the match stays total.
            Request::FirmwareChunk { .. } => Err(LifecycleError::BadRequest(
                "a firmware chunk is not a state change".into(),
            )),
            _ => Err(LifecycleError::BadRequest(
                "request not supported by this server".into(),
            )),
        }
    }

    /// A nonced voucher from the MASA of the device's maker, if the owner has one and it
    /// answers; `None` falls back to the voucher imported in bulk.
    async fn nonced_voucher(
        &self,
        peer: &DevicePeer,
        signed: &[u8],
        binding: &[u8],
    ) -> Option<Vec<u8>> {
        let (masa, idevid) = (self.masa.as_ref()?, peer.idevid.as_ref()?);
        let record = self.store.device(&peer.id).ok()?;
        core::onboard::check_voucher_request(
            self.registrar().as_ref(),
            peer,
            record,
            signed,
            binding,
        )
        .ok()?;
        let anchors: Vec<_> = self
            .store
            .anchors()
            .ok()?
            .into_iter()
            .filter(|a| a.maker == peer.id.maker)
            .collect();
        if anchors.is_empty() {
            return None;
        }
        match masa
            .voucher(&anchors, idevid, signed, &self.owner_root())
            .await
        {
            Ok(voucher) => Some(voucher),
            Err(e) => {
                tracing::warn!(device = %peer.id, "the MASA did not answer: {e}");
                None
            }
        }
    }

    /// Keeps a piece of the data a device hands back before its wipe: stored (under its
    /// SHA-256) before the decision that records it, and with the last piece the whole,
    /// checked against the digest announced. Only a device ordered to hand data back may
    /// store anything.
    async fn export_piece(
        &self,
        peer: &DevicePeer,
        piece: &protocol::message::DataChunk,
    ) -> Result<Response, LifecycleError> {
        let grace = self.registrar().policy.superseded_grace;
        let record = self.store.device(&peer.id)?;
        // A dry run on the record as it is (the whole taken as announced): nothing is stored
        // for a piece it would refuse.
        let last = piece.offset.saturating_add(piece.bytes.len() as u64) == piece.total;
        let announced = last.then_some(piece.digest.as_slice());
        core::decommission::export_piece(
            peer,
            record.clone(),
            piece,
            announced,
            self.now(),
            grace,
        )?;
        let earlier: Vec<Vec<u8>> = record
            .as_ref()
            .and_then(|r| r.decommission.as_ref())
            .and_then(|d| d.export.as_ref())
            .filter(|e| e.digest == piece.digest && piece.offset > 0)
            .map(|e| e.parts.iter().map(|p| p.to_vec()).collect())
            .unwrap_or_default();
        let images = self.images.clone();
        let bytes = piece.bytes.clone();
        let announced = piece.digest.clone();
        let whole = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
            images.put(&protocol::manifest::sha256(&bytes), &bytes)?;
            if !last {
                return Ok(None);
            }
            let mut all = Vec::new();
            for part in &earlier {
                let size = u32::try_from(protocol::message::MAX_EXPORT_CHUNK).unwrap_or(u32::MAX);
                all.extend(images.read(part, 0, size)?);
            }
            all.extend_from_slice(&bytes);
            let digest = protocol::manifest::sha256(&all).to_vec();
            if digest == announced {
                images.put(&digest, &all)?;
            }
            Ok(Some(digest))
        })
        .await
        .map_err(|e| LifecycleError::Unavailable(e.to_string()))??;
        self.decide_device(&peer.id, |record, now| {
            core::decommission::export_piece(peer, record, piece, whole.as_deref(), now, grace)
        })
        .await
    }

    /// Serves a piece of an image offered to the device.
    async fn chunk(
        &self,
        peer: &DevicePeer,
        digest: &[u8],
        offset: u64,
        length: u32,
    ) -> Result<Response, LifecycleError> {
        let record = self.store.device(&peer.id)?;
        let grace = self.registrar().policy.superseded_grace;
        core::firmware::authorize_download(peer, record, digest, self.now(), grace)?;
        Ok(Response::Chunk(
            self.read_image(digest, offset, length).await?,
        ))
    }

    /// A piece of an image, from the hot copy of the image being rolled out or the store.
    async fn read_image(
        &self,
        digest: &[u8],
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, LifecycleError> {
        let length = length.min(protocol::message::MAX_CHUNK);
        if let Some(bytes) = self.images.read_hot(digest, offset, length) {
            return Ok(bytes);
        }
        let images = self.images.clone();
        let digest = digest.to_vec();
        Ok(
            tokio::task::spawn_blocking(move || images.read(&digest, offset, length))
                .await
                .map_err(|e| LifecycleError::Unavailable(e.to_string()))??,
        )
    }

    /// `url` signed for `device` until `expires` (`?device=...&expires=...&sig=...`), so that
    /// any HTTP client can fetch the image without the device's certificate.
    pub fn sign_download_url(&self, url: &str, device: &DeviceId, expires: u64) -> String {
        let digest = url.rsplit('/').next().unwrap_or_default();
        let tag = ring::hmac::sign(
            &self.url_key,
            url_message(digest, device, expires).as_bytes(),
        );
        format!(
            "{url}?device={device}&expires={expires}&sig={}",
            hex::encode(tag.as_ref())
        )
    }

    /// A piece of the image of `digest` for a signed URL: the signature must be ours for this
    /// image, `device` and `expires`, the URL not expired, and the image the one of the
    /// device's update in progress. Counted and audited like any refusal.
    pub async fn signed_chunk(
        &self,
        signed: &SignedUrl,
        digest: &[u8],
        offset: u64,
        length: u32,
    ) -> Result<Vec<u8>, LifecycleError> {
        let result = async {
            let message = url_message(&hex::encode(digest), &signed.device, signed.expires);
            ring::hmac::verify(&self.url_key, message.as_bytes(), &signed.sig).map_err(|_| {
                LifecycleError::Unauthorized("the URL's signature is not ours".into())
            })?;
            if signed.expires <= self.now() {
                return Err(LifecycleError::Unauthorized(format!(
                    "the URL expired at {}",
                    signed.expires
                )));
            }
            let record = self.store.device(&signed.device)?;
            core::firmware::authorize_signed_download(&signed.device, record, digest)?;
            self.read_image(digest, offset, length).await
        }
        .await;
        if let Err(e) = &result {
            self.record_refusal(None, e).await;
        }
        result
    }

    /// Counts a refusal and records it in the audit log within the audit budget (best effort:
    /// a refusal must not fail louder than the request itself).
    pub async fn record_refusal(&self, peer: Option<&DevicePeer>, error: &LifecycleError) {
        let code = error.code();
        self.metrics.refused(code);
        let device = peer.map(|p| &p.id);
        let now = self.now();
        let event = AuditEvent {
            at: now,
            actor: device.map_or("unknown".into(), |d| format!("device:{d}")),
            device: device.cloned(),
            action: "refused".into(),
            detail: format!("{code:?}: {error}"),
        };
        tracing::info!(
            device = device.map(|d| d.to_string()),
            ?code,
            "refused: {error}"
        );
        let audit = self.within_budget(vec![event], |_| format!("refused:{code:?}"), now);
        self.commit_audit(audit).await;
    }
}

/// What a signed firmware URL says: for which device, until when, and its HMAC.
#[derive(Debug, Clone)]
pub struct SignedUrl {
    /// The device it was made for.
    pub device: DeviceId,
    /// Its expiry (seconds since the epoch).
    pub expires: u64,
    /// HMAC-SHA256 of the image digest, the device and the expiry.
    pub sig: Vec<u8>,
}

/// The bytes a signed URL's HMAC covers.
fn url_message(digest_hex: &str, device: &DeviceId, expires: u64) -> String {
    format!("firmware-url\n{digest_hex}\n{device}\n{expires}")
}
