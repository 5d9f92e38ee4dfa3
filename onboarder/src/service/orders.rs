//! Operator orders about devices: revoke, quarantine, reset an onboarding, rotate, decommission.
//! Each is a core decision per device, committed through the one loop (in chunks for many).

use protocol::attestation::WipeMethod;
use serde::{Deserialize, Serialize};

use super::{OperatorError, Service};
use crate::core::{self, Decision, DeviceId, DeviceRecord, DeviceState, LifecycleError};

/// The outcome of a bulk order.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderReport {
    /// Devices the order now applies to.
    pub accepted: Vec<DeviceId>,
    /// Devices (as named) it could not apply to, with why.
    pub refused: Vec<(String, String)>,
    /// When the order was given (seconds since the epoch).
    pub at: u64,
}

/// Progress of the rotations ordered since a given time.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl Service {
    /// Applies `decide` to every device of `ids` and reports which accepted the order.
    pub(crate) async fn order(
        &self,
        ids: &[DeviceId],
        decide: impl Fn(&DeviceId, Option<DeviceRecord>, u64) -> Result<Decision, LifecycleError>,
    ) -> Result<OrderReport, OperatorError> {
        let mut report = OrderReport {
            at: self.now(),
            ..OrderReport::default()
        };
        let outcomes = self.decide_devices(ids, decide).await?;
        for (id, outcome) in ids.iter().zip(outcomes) {
            match outcome {
                Ok(_) => report.accepted.push(id.clone()),
                Err(e) => report.refused.push((id.to_string(), e.to_string())),
            }
        }
        Ok(report)
    }

    /// Decides on one device and returns its record as it is now.
    async fn order_one(
        &self,
        id: &DeviceId,
        decide: impl Fn(Option<DeviceRecord>, u64) -> Result<Decision, LifecycleError>,
    ) -> Result<DeviceRecord, OperatorError> {
        self.decide_device(id, decide).await?;
        self.device(id)
    }

    /// Revokes every certificate of `id` and quarantines it.
    pub async fn revoke(
        &self,
        id: &DeviceId,
        reason: certs::crl::Reason,
    ) -> Result<DeviceRecord, OperatorError> {
        self.order_one(id, |record, now| {
            core::revoke::revoke(id, record, reason, now)
        })
        .await
    }

    /// Revokes every certificate of each device of `ids` and quarantines them, in one order.
    pub async fn revoke_all(
        &self,
        ids: &[DeviceId],
        reason: certs::crl::Reason,
    ) -> Result<OrderReport, OperatorError> {
        self.order(ids, |id, record, now| {
            core::revoke::revoke(id, record, reason, now)
        })
        .await
    }

    /// Quarantines `id` (its certificates stay valid, its requests are refused).
    pub async fn quarantine(
        &self,
        id: &DeviceId,
        reason: &str,
    ) -> Result<DeviceRecord, OperatorError> {
        self.order_one(id, |record, now| {
            core::revoke::quarantine(id, record, reason, now)
        })
        .await
    }

    /// Puts a device stuck in onboarding back to `expected`: its IDevID pin is dropped and any
    /// certificate it was issued but never confirmed is revoked, so the rightful device can
    /// onboard.
    pub async fn reset_onboarding(
        &self,
        id: &DeviceId,
        reason: &str,
    ) -> Result<DeviceRecord, OperatorError> {
        self.order_one(id, |record, now| {
            core::revoke::reset_onboarding(id, record, reason, now)
        })
        .await
    }

    /// Orders the given devices (every active one when `None`) to re-key.
    pub async fn request_rotation(
        &self,
        devices: Option<Vec<DeviceId>>,
    ) -> Result<OrderReport, OperatorError> {
        let devices = match devices {
            Some(d) => d,
            None => self.devices_in(DeviceState::Active)?,
        };
        self.order(&devices, |id, record, now| {
            core::revoke::request_rotation(id, record, now)
        })
        .await
    }

    /// Orders devices to wipe themselves with `method`, each with its own fresh nonce; with
    /// `export_to`, to hand their application data back first, encrypted to that age
    /// recipient.
    pub async fn decommission(
        &self,
        devices: &[DeviceId],
        method: WipeMethod,
        export_to: Option<&str>,
    ) -> Result<OrderReport, OperatorError> {
        self.order(devices, |id, record, now| {
            core::decommission::order(id, record, method, export_to, &self.nonce()?, now)
        })
        .await
    }

    /// Decommissions a device that does not answer, without attestation.
    pub async fn force_decommission(
        &self,
        id: &DeviceId,
        reason: &str,
    ) -> Result<DeviceRecord, OperatorError> {
        self.order_one(id, |record, now| {
            core::decommission::force(id, record, reason, now)
        })
        .await
    }
}
