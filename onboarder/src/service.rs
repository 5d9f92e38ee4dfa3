//! The service: load record -> core decides -> one atomic commit -> reply.
//!
//! Transports call [`Service::handle`] with an authenticated peer and a decoded request. The
//! service reads the device's record, asks the core for a decision, commits the decision's
//! record, the revocations it implies and its audit events in one durable write, and only then
//! returns the response. When a concurrent request changed the same device in between, the
//! store refuses the commit and the service decides again on the fresh record. Every refusal is
//! answered with a typed error and recorded in the audit log.

use std::sync::{Arc, RwLock};

use protocol::message::{Request, Response};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;

use crate::audit::AuditEvent;
use crate::core::audit_budget::AuditBudget;
use crate::core::{self, CertStatus, Decision, DevicePeer, DeviceRecord, Entropy, LifecycleError};
use crate::core::{DeviceId, Registrar, renew};
use crate::metrics::Metrics;
use crate::store::images::Images;
use crate::store::{Change, DeviceWrite, Expect, Revocation, Store, StoreError};
use crate::trust::TrustStore;

/// How many times a decision is retried when concurrent requests keep changing the device.
const MAX_ATTEMPTS: usize = 8;

/// Where the service reads the time: the system clock, or another one in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The onboarder's one entry point for devices and operators.
pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    registrar: RwLock<Arc<Registrar>>,
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) owner_root: Vec<u8>,
    /// Signalled after a commit that revoked or superseded certificates (the CRL publisher
    /// waits on it).
    pub(crate) revocations_changed: Notify,
    /// Signalled after a firmware report (the campaign engine waits on it).
    pub(crate) firmware_changed: Notify,
    /// Serialises campaign read-modify-writes (operator orders and the engine).
    pub(crate) campaigns: tokio::sync::Mutex<()>,
    /// Firmware job states by campaign and serial, kept current by every commit, so the
    /// campaign engine does not read every device record at every tick.
    pub(crate) jobs: std::sync::Mutex<JobIndex>,
    pub(crate) images: Images,
    /// What was refused and shed.
    pub(crate) metrics: Metrics,
    /// The audit entries devices may cause without changing anything.
    budget: std::sync::Mutex<AuditBudget>,
    clock: Clock,
    rng: SystemRandom,
}

impl Service {
    /// A service over `store`, issuing with `registrar`. The trust store is filled with the
    /// owner root, the manufacturer anchors and the revocations on record.
    pub fn new(
        store: Arc<dyn Store>,
        registrar: Registrar,
        owner_root: Vec<u8>,
        images: Images,
        clock: Clock,
    ) -> Result<Service, StoreError> {
        let service = Service {
            firmware_changed: Notify::new(),
            jobs: std::sync::Mutex::new(JobIndex::default()),
            campaigns: tokio::sync::Mutex::new(()),
            images,
            trust: Arc::new(TrustStore::default()),
            registrar: RwLock::new(Arc::new(registrar)),
            store,
            owner_root,
            revocations_changed: Notify::new(),
            metrics: Metrics::default(),
            budget: std::sync::Mutex::new(AuditBudget::default()),
            clock,
            rng: SystemRandom::new(),
        };
        service.reload_trust()?;
        service.trust.revoke(service.store.revocations()?);
        Ok(service)
    }

    /// The current time.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The trust anchors and revocations for client certificates (shared with the TLS
    /// verifier).
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The firmware image repository.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The counters of refusals and shed load.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The registrar context in force.
    pub fn registrar(&self) -> Arc<Registrar> {
        self.registrar
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the registrar context (after a CA rollover).
    pub fn set_registrar(&self, registrar: Registrar) -> Result<(), StoreError> {
        *self.registrar.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registrar);
        self.reload_trust()
    }

    /// Rebuilds the anchors: the manufacturers' roots, the owner root, and our own issuing
    /// CAs (trusting them directly spares every LDevID handshake the check of the issuing CA's
    /// own signature, which we made ourselves).
    pub(crate) fn reload_trust(&self) -> Result<(), StoreError> {
        let makers: Vec<_> = self
            .store
            .anchors()?
            .into_iter()
            .map(|a| (a.maker, a.der))
            .collect();
        let mut ours = vec![self.owner_root.clone()];
        ours.extend(
            self.registrar()
                .generations()
                .map(|g| g.ca.cert_der().to_vec()),
        );
        self.trust.replace(&makers, &ours);
        Ok(())
    }

    /// Reads who a client certificate chain (leaf first, already validated by TLS) belongs to.
    pub fn identify(&self, chain: &[Vec<u8>]) -> Result<DevicePeer, LifecycleError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| LifecycleError::Unauthorized("no client certificate".into()))?;
        let registrar = self.registrar();
        DevicePeer::from_certificate(
            leaf,
            |key_id| registrar.is_ours(key_id),
            || self.trust.maker_of(leaf, intermediates, self.now()),
        )
    }

    /// Handles one request from an authenticated device. `session_binding` is the TLS exporter
    /// value of the connection it arrived on.
    pub async fn handle(
        &self,
        peer: &DevicePeer,
        session_binding: &[u8],
        request: Request,
    ) -> Response {
        if let Request::FirmwareChunk {
            digest,
            offset,
            length,
        } = &request
        {
            return self.chunk(peer, digest, *offset, *length).await;
        }
        let result = self
            .decide_and_commit(&peer.id, |record, now| {
                self.decide(peer, session_binding, &request, record, now)
            })
            .await;
        if matches!(request, Request::FirmwareStatus(_)) {
            self.firmware_changed.notify_one();
        }
        match result {
            Ok(response) => response,
            Err(e) => {
                self.record_refusal(Some(peer), &e).await;
                Response::Error(e.to_wire())
            }
        }
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

    /// The entries of `events` that the audit budget admits now (each of kind `kind`), with the
    /// summaries of windows that just ended.
    fn within_budget(
        &self,
        events: Vec<AuditEvent>,
        kind: impl Fn(&AuditEvent) -> String,
        now: u64,
    ) -> Vec<AuditEvent> {
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for event in events {
            let kind = kind(&event);
            let admitted = budget.admit(event, &kind, now);
            if !admitted.iter().any(|e| e.action != "audit-suppressed") {
                self.metrics.audit_suppressed(1);
            }
            out.extend(admitted);
        }
        out
    }

    async fn commit_audit(&self, audit: Vec<AuditEvent>) {
        if audit.is_empty() {
            return;
        }
        let change = Change {
            audit,
            ..Change::default()
        };
        if let Err(e) = self.store.commit(change).await {
            tracing::warn!("could not write audit entries: {e}");
        }
    }

    /// Writes the summaries of the audit budget's windows that have ended (called now and then,
    /// so a flood that stopped is still summed up).
    pub async fn flush_audit_budget(&self) {
        let now = self.now();
        let summaries = self
            .budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush(now);
        self.commit_audit(summaries).await;
    }

    /// Reads device `id`, lets `decide` rule on it, and commits the decision; decides again if
    /// the record changed meanwhile. The events of a decision that changes nothing are notes,
    /// written within the audit budget; those of a state change are always written.
    pub(crate) async fn decide_and_commit(
        &self,
        id: &DeviceId,
        decide: impl Fn(Option<DeviceRecord>, u64) -> Result<Decision, LifecycleError>,
    ) -> Result<Response, LifecycleError> {
        for _ in 0..MAX_ATTEMPTS {
            let record = self.store.device(id).map_err(unavailable)?;
            let expect = Expect::from(record.as_ref());
            let previous = record.clone();
            let now = self.now();
            let mut decision = decide(record, now)?;
            if decision.write.is_none() && !decision.events.is_empty() {
                let notes = std::mem::take(&mut decision.events);
                decision.events = self.within_budget(notes, |e| e.action.clone(), now);
            }
            let grace = self.registrar().policy.superseded_grace;
            let revocations = match &decision.write {
                Some(new) => revocations_between(previous.as_ref(), new, grace),
                None => Vec::new(),
            };
            let written: Vec<DeviceRecord> = decision.write.iter().cloned().collect();
            let change = Change {
                devices: decision
                    .write
                    .map(|record| DeviceWrite { record, expect })
                    .into_iter()
                    .collect(),
                revocations: revocations.clone(),
                audit: decision.events,
                ..Change::default()
            };
            match self.store.commit(change).await {
                Ok(()) => {
                    self.note_jobs(&written);
                    if !revocations.is_empty() {
                        self.trust.revoke(revocations);
                        self.revocations_changed.notify_one();
                    }
                    return Ok(decision.response);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(LifecycleError::Unavailable(
            "the device record kept changing; retry".into(),
        ))
    }

    fn decide(
        &self,
        peer: &DevicePeer,
        binding: &[u8],
        request: &Request,
        record: Option<DeviceRecord>,
        now: u64,
    ) -> Result<Decision, LifecycleError> {
        let reg = self.registrar();
        let reg = reg.as_ref();
        match request {
            Request::VoucherRequest(signed) => {
                core::onboard::voucher_request(reg, peer, record, signed, binding, now)
            }
            Request::VoucherStatus(status) => {
                core::onboard::voucher_status(peer, record, status.clone(), now)
            }
            Request::Enroll { csr } => {
                core::onboard::enroll(reg, peer, record, csr, binding, now, self.entropy()?)
            }
            Request::EnrollStatus(status) => {
                core::onboard::enroll_status(peer, record, status.clone(), now)
            }
            Request::Hello(hello) => core::onboard::hello(reg, peer, record, hello.clone(), now),
            Request::Reenroll { csr } => {
                renew::reenroll(reg, peer, record, csr, binding, now, self.entropy()?)
            }
            Request::WipeAttestation(signed) => {
                core::decommission::attest(peer, record, signed, now, reg.policy.superseded_grace)
            }
            Request::FirmwareStatus(report) => core::firmware::report(
                peer,
                record,
                report.clone(),
                now,
                reg.policy.superseded_grace,
            ),
            _ => Err(LifecycleError::BadRequest(
                "request not supported by this server".into(),
            )),
        }
    }

    /// Serves a piece of an image offered to the device.
    async fn chunk(&self, peer: &DevicePeer, digest: &[u8], offset: u64, length: u32) -> Response {
        let result = async {
            let record = self.store.device(&peer.id).map_err(unavailable)?;
            let grace = self.registrar().policy.superseded_grace;
            core::firmware::authorize_download(peer, record, digest, self.now(), grace)?;
            let length = length.min(protocol::message::MAX_CHUNK);
            if let Some(bytes) = self.images.read_hot(digest, offset, length) {
                return Ok(bytes);
            }
            let images = self.images.clone();
            let digest = digest.to_vec();
            tokio::task::spawn_blocking(move || images.read(&digest, offset, length))
                .await
                .map_err(|e| LifecycleError::Unavailable(e.to_string()))?
                .map_err(unavailable)
        }
        .await;
        match result {
            Ok(bytes) => Response::Chunk(bytes),
            Err(e) => {
                self.record_refusal(Some(peer), &e).await;
                Response::Error(e.to_wire())
            }
        }
    }

    /// A fresh nonce for a decommission order.
    pub(crate) fn nonce(&self) -> Result<[u8; protocol::attestation::NONCE_LEN], LifecycleError> {
        let mut nonce = [0u8; protocol::attestation::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| LifecycleError::Unavailable("no randomness".into()))?;
        Ok(nonce)
    }

    fn entropy(&self) -> Result<Entropy, LifecycleError> {
        let mut e = Entropy {
            cert_serial: [0; 16],
            psk: [0; 16],
        };
        self.rng
            .fill(&mut e.cert_serial)
            .and_then(|()| self.rng.fill(&mut e.psk))
            .map_err(|_| LifecycleError::Unavailable("no randomness".into()))?;
        // Positive, non-zero leading byte: a valid DER INTEGER of fixed length.
        e.cert_serial[0] = (e.cert_serial[0] & 0x7f) | 0x01;
        Ok(e)
    }
}

/// Firmware job states: campaign -> device -> state.
pub(crate) type JobIndex =
    std::collections::HashMap<String, std::collections::HashMap<DeviceId, core::record::JobState>>;

impl Service {
    /// Records the firmware jobs of records just committed in the job index.
    pub(crate) fn note_jobs(&self, records: &[DeviceRecord]) {
        let mut index = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        for record in records {
            if let Some(job) = &record.firmware_job {
                index
                    .entry(job.campaign.clone())
                    .or_default()
                    .insert(record.id.clone(), job.state.clone());
            }
        }
    }
}

/// The certificates that became revoked or superseded between two versions of a record.
fn revocations_between(
    old: Option<&DeviceRecord>,
    new: &DeviceRecord,
    grace: u64,
) -> Vec<Revocation> {
    new.certificates
        .iter()
        .filter(|c| {
            old.and_then(|o| o.certificate(&c.serial))
                .map(|o| &o.status)
                != Some(&c.status)
        })
        .filter_map(|c| {
            let (reason, revoked_at, effective_at) = match c.status {
                CertStatus::Revoked { reason, at } => (reason, at, at),
                CertStatus::Superseded { at } => {
                    (certs::crl::Reason::Superseded, at, at.saturating_add(grace))
                }
                _ => return None,
            };
            Some(Revocation {
                cert_serial: c.serial.clone(),
                issuer: c.issuer.clone(),
                device: new.id.clone(),
                reason,
                revoked_at,
                effective_at,
                not_after: c.not_after,
            })
        })
        .collect()
}

fn unavailable(e: StoreError) -> LifecycleError {
    LifecycleError::Unavailable(e.to_string())
}
