//! Operator orders that change devices: revocation, rotation, and the CRLs they produce.

use serde::{Deserialize, Serialize};

use super::OperatorError;
use crate::core::{self, DeviceId, DeviceRecord, LifecycleError, RotationState};
use crate::service::Service;
use crate::store::{Change, DeviceWrite, Expect, StoreError};

/// Devices decided on per atomic write in a bulk order.
const CHUNK: usize = 1000;

/// Progress of the rotations ordered since a given time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    /// Devices that re-keyed.
    pub rotated: usize,
    /// Devices that have not yet (offline ones rotate when they next connect).
    pub pending: usize,
    /// Devices that could not.
    pub failed: usize,
    /// Devices still pending.
    pub pending_devices: Vec<DeviceId>,
    /// Devices that failed, with why.
    pub failures: Vec<(DeviceId, String)>,
}

/// The outcome of a bulk order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReport {
    /// Devices the order now applies to.
    pub accepted: Vec<DeviceId>,
    /// Devices (as named) it could not apply to, with why.
    pub refused: Vec<(String, String)>,
    /// When the order was given (seconds since the epoch).
    pub at: u64,
}

/// One CRL as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crl {
    /// Issuing CA generation.
    pub generation: u32,
    /// CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: u64,
    /// nextUpdate.
    pub next_update: u64,
    /// Number of entries.
    pub entries: usize,
    /// The CRL, DER.
    #[serde(skip)]
    pub der: Vec<u8>,
}

impl From<LifecycleError> for OperatorError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::UnknownDevice(id) => OperatorError::NotFound(format!("device {id}")),
            other => OperatorError::Refused(other),
        }
    }
}

impl Service {
    /// Revokes every certificate of `id` and quarantines it.
    pub async fn revoke(
        &self,
        id: &DeviceId,
        reason: certs::crl::Reason,
    ) -> Result<DeviceRecord, OperatorError> {
        self.decide_and_commit(id, |record, now| {
            core::revoke::revoke(id, record, reason, now)
        })
        .await?;
        self.device(id)
    }

    /// Quarantines `id` (its certificates stay valid, its requests are refused).
    pub async fn quarantine(
        &self,
        id: &DeviceId,
        reason: &str,
    ) -> Result<DeviceRecord, OperatorError> {
        self.decide_and_commit(id, |record, now| {
            core::revoke::quarantine(id, record, reason, now)
        })
        .await?;
        self.device(id)
    }

    /// Puts a device stuck in onboarding back to `expected`: its IDevID pin is dropped and any
    /// certificate it was issued but never confirmed is revoked, so the rightful device can
    /// onboard.
    pub async fn reset_onboarding(
        &self,
        id: &DeviceId,
        reason: &str,
    ) -> Result<DeviceRecord, OperatorError> {
        self.decide_and_commit(id, |record, now| {
            core::revoke::reset_onboarding(id, record, reason, now)
        })
        .await?;
        self.device(id)
    }

    /// Orders the given devices (all active ones when `None`) to re-key.
    pub async fn request_rotation(
        &self,
        devices: Option<Vec<DeviceId>>,
    ) -> Result<OrderReport, OperatorError> {
        let devices = match devices {
            Some(d) => d,
            None => self.active_devices()?,
        };
        let mut report = OrderReport {
            at: self.now(),
            ..OrderReport::default()
        };
        for chunk in devices.chunks(CHUNK) {
            self.order_chunk(chunk, &mut report, |id, record, now| {
                core::revoke::request_rotation(id, record, now)
            })
            .await?;
        }
        Ok(report)
    }

    fn active_devices(&self) -> Result<Vec<DeviceId>, OperatorError> {
        let mut out = Vec::new();
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self.store.devices(after.as_ref(), CHUNK)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            out.extend(
                page.iter()
                    .filter(|d| d.state == core::DeviceState::Active)
                    .map(|d| d.id.clone()),
            );
        }
        Ok(out)
    }

    /// Applies `decide` to each device of `chunk` and commits all the changes at once.
    pub(crate) async fn order_chunk(
        &self,
        chunk: &[DeviceId],
        report: &mut OrderReport,
        decide: impl Fn(&DeviceId, Option<DeviceRecord>, u64) -> Result<core::Decision, LifecycleError>,
    ) -> Result<(), OperatorError> {
        for _ in 0..8 {
            let now = self.now();
            let mut change = Change::default();
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            for id in chunk {
                let record = self.store.device(id)?;
                let expect = Expect::from(record.as_ref());
                match decide(id, record, now) {
                    Ok(decision) => {
                        accepted.push(id.clone());
                        change.audit.extend(decision.events);
                        if let Some(record) = decision.write {
                            change.devices.push(DeviceWrite { record, expect });
                        }
                    }
                    Err(e) => refused.push((id.to_string(), e.to_string())),
                }
            }
            let written: Vec<DeviceRecord> =
                change.devices.iter().map(|w| w.record.clone()).collect();
            match self.store.commit(change).await {
                Ok(()) => {
                    self.note_jobs(&written);
                    report.accepted.extend(accepted);
                    report.refused.extend(refused);
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("devices kept changing; retry the order".into()).into())
    }

    /// How the rotations ordered at or after `since` went.
    pub fn rotation_status(&self, since: u64) -> Result<RotationStatus, OperatorError> {
        let mut status = RotationStatus::default();
        let mut after: Option<DeviceId> = None;
        loop {
            let page = self.store.devices(after.as_ref(), CHUNK)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            for d in &page {
                let Some(r) = d.rotation.as_ref().filter(|r| r.requested_at >= since) else {
                    continue;
                };
                match &r.state {
                    RotationState::Done { .. } => status.rotated += 1,
                    RotationState::Pending => {
                        status.pending += 1;
                        status.pending_devices.push(d.id.clone());
                    }
                    RotationState::Failed { reason } => {
                        status.failed += 1;
                        status.failures.push((d.id.clone(), reason.clone()));
                    }
                }
            }
        }
        Ok(status)
    }

    /// Builds a fresh CRL for every issuing CA generation still responsible for live
    /// certificates, each with a CRL number one higher than the last, valid for `validity`
    /// seconds. Also returns when a grace period next ends (the next time the CRL changes by
    /// itself).
    pub async fn build_crls(
        &self,
        validity: u64,
    ) -> Result<(Vec<Crl>, Option<u64>), OperatorError> {
        let now = self.now();
        let registrar = self.registrar();
        let horizon = registrar.policy.ldevid_lifetime + registrar.policy.superseded_grace;
        let mut change = Change {
            forget_revocations: self.trust.expire(now),
            ..Change::default()
        };
        let (revocations, next_change) = self.trust.revocations(now);
        let mut crls = Vec::new();
        for generation in registrar.generations() {
            if generation
                .retired_at
                .is_some_and(|at| now > at.saturating_add(horizon))
            {
                continue;
            }
            let key = format!("crl-number/{}", generation.generation);
            let number = self
                .store
                .meta(&key)?
                .and_then(|v| v.try_into().ok())
                .map_or(0, u64::from_be_bytes)
                + 1;
            change.meta.push((key, number.to_be_bytes().to_vec()));
            let mut entries: Vec<certs::crl::RevokedCert> = revocations
                .iter()
                .filter(|r| r.issuer == generation.key_id)
                .filter_map(|r| {
                    Some(certs::crl::RevokedCert {
                        serial: certs::inspect::unhex(&r.cert_serial)?,
                        revoked_at: r.revoked_at,
                        reason: r.reason,
                    })
                })
                .collect();
            entries.sort_by(|a, b| a.serial.cmp(&b.serial));
            let der = certs::crl::build(&generation.ca, &entries, number, now, now + validity)
                .map_err(|e| OperatorError::BadInput(format!("signing the CRL: {e}")))?;
            crls.push(Crl {
                generation: generation.generation,
                number,
                this_update: now,
                next_update: now + validity,
                entries: entries.len(),
                der,
            });
        }
        // The numbers are durable before any CRL carrying them leaves this function.
        self.store.commit(change).await?;
        Ok((crls, next_change))
    }
}
