//! The service: load record -> core decides -> one atomic commit -> reply.
//!
//! Transports call [`Service::handle`] with an authenticated peer and a decoded request. The
//! service reads the device's record, asks the core for a decision, commits the decision's
//! record and audit events in one durable write, and only then returns the response. When a
//! concurrent request changed the same device in between, the store refuses the commit and the
//! service decides again on the fresh record. Every refusal is answered with a typed error and
//! recorded in the audit log.

use std::sync::Arc;

use protocol::message::{Request, Response};
use ring::rand::{SecureRandom, SystemRandom};

use crate::audit::AuditEvent;
use crate::core::{self, Decision, DevicePeer, Entropy, LifecycleError, Registrar};
use crate::store::{Change, DeviceWrite, Expect, Store, StoreError};
use crate::trust::TrustStore;

/// How many times a decision is retried when concurrent requests keep changing the device.
const MAX_ATTEMPTS: usize = 8;

/// Where the service reads the time: the system clock, or a fixed one in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The onboarder's one entry point for devices and operators.
pub struct Service {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registrar: Registrar,
    pub(crate) trust: Arc<TrustStore>,
    pub(crate) owner_root: Vec<u8>,
    clock: Clock,
    rng: SystemRandom,
}

impl Service {
    /// A service over `store`, issuing with `registrar`. The trust store is filled with the
    /// owner root and the manufacturer anchors on record.
    pub fn new(
        store: Arc<dyn Store>,
        registrar: Registrar,
        owner_root: Vec<u8>,
        clock: Clock,
    ) -> Result<Service, StoreError> {
        let service = Service {
            store,
            registrar,
            trust: Arc::new(TrustStore::default()),
            owner_root,
            clock,
            rng: SystemRandom::new(),
        };
        service.reload_trust()?;
        Ok(service)
    }

    /// The current time.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The trust anchors for client certificates (shared with the TLS verifier).
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn reload_trust(&self) -> Result<(), StoreError> {
        let mut anchors: Vec<Vec<u8>> = self.store.anchors()?.into_iter().map(|a| a.der).collect();
        anchors.push(self.owner_root.clone());
        self.trust.replace(&anchors);
        Ok(())
    }

    /// Reads who a client certificate (already validated by TLS) belongs to.
    pub fn identify(&self, leaf_der: &[u8]) -> Result<DevicePeer, LifecycleError> {
        DevicePeer::from_certificate(leaf_der, &self.registrar.issuer_key_ids)
    }

    /// Handles one request from an authenticated device. `session_binding` is the TLS exporter
    /// value of the connection it arrived on.
    pub async fn handle(
        &self,
        peer: &DevicePeer,
        session_binding: &[u8],
        request: Request,
    ) -> Response {
        match self
            .decide_and_commit(peer, session_binding, &request)
            .await
        {
            Ok(response) => response,
            Err(e) => {
                self.record_refusal(Some(peer), &e).await;
                Response::Error(e.to_wire())
            }
        }
    }

    /// Records a refusal in the audit log (best effort: a refusal must not fail louder than
    /// the request itself).
    pub async fn record_refusal(&self, peer: Option<&DevicePeer>, error: &LifecycleError) {
        let serial = peer.map(|p| p.serial.as_str());
        let event = AuditEvent {
            at: self.now(),
            actor: serial.map_or("unknown".into(), |s| format!("device:{s}")),
            serial: serial.map(str::to_string),
            action: "refused".into(),
            detail: format!("{:?}: {error}", error.code()),
        };
        tracing::info!(serial, code = ?error.code(), "refused: {error}");
        let change = Change {
            audit: vec![event],
            ..Change::default()
        };
        if let Err(e) = self.store.commit(change).await {
            tracing::warn!("could not audit a refusal: {e}");
        }
    }

    async fn decide_and_commit(
        &self,
        peer: &DevicePeer,
        binding: &[u8],
        request: &Request,
    ) -> Result<Response, LifecycleError> {
        for _ in 0..MAX_ATTEMPTS {
            let record = self.store.device(&peer.serial).map_err(unavailable)?;
            let expect = Expect::from(record.as_ref());
            let decision = self.decide(peer, binding, request, record)?;
            let change = Change {
                devices: decision
                    .write
                    .map(|record| DeviceWrite { record, expect })
                    .into_iter()
                    .collect(),
                anchors: Vec::new(),
                audit: decision.events,
            };
            match self.store.commit(change).await {
                Ok(()) => return Ok(decision.response),
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
        record: Option<core::DeviceRecord>,
    ) -> Result<Decision, LifecycleError> {
        let now = self.now();
        let reg = &self.registrar;
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
            Request::Hello(hello) => core::onboard::hello(peer, record, hello.clone(), now),
            _ => Err(LifecycleError::BadRequest(
                "request not supported by this server".into(),
            )),
        }
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

fn unavailable(e: StoreError) -> LifecycleError {
    LifecycleError::Unavailable(e.to_string())
}
