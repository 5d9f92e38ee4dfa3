//! Operator orders about a device: revoke it, or have it re-key.

use certs::crl::Reason;

use super::access::known;
use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::DeviceId;
use super::record::{CertStatus, DeviceRecord, Rotation, RotationState};
use super::state::DeviceState;
use crate::audit::AuditEvent;
use protocol::message::Response;

/// Revokes every certificate of the device that could still be used and quarantines it.
/// Revoking a quarantined device again revokes what is left and changes nothing else.
pub fn revoke(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    reason: Reason,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    let mut revoked = Vec::new();
    for cert in &mut record.certificates {
        if matches!(
            cert.status,
            CertStatus::Issued | CertStatus::Active | CertStatus::Superseded { .. }
        ) && cert.not_after > now
        {
            cert.status = CertStatus::Revoked { reason, at: now };
            revoked.push(cert.serial.clone());
        }
    }
    if record.state != DeviceState::Quarantined {
        record.transition(DeviceState::Quarantined, "revocation", now)?;
        record.quarantine_reason = Some(format!("revoked: {reason}"));
    } else if revoked.is_empty() {
        return Ok(Decision::reply(Response::Ack));
    }
    if let Some(rotation) = &mut record.rotation
        && rotation.state == RotationState::Pending
    {
        rotation.state = RotationState::Failed {
            reason: "revoked".into(),
        };
    }
    record.updated_at = now;
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "revoked",
            format!("{reason}: certificates {}", revoked.join(", ")),
            now,
        )],
    ))
}

/// Quarantines a device on an operator's order: every request of it is refused until further
/// notice; its certificates are not revoked (see [`revoke`] for that).
pub fn quarantine(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    reason: &str,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    if record.state == DeviceState::Quarantined {
        return Ok(Decision::reply(Response::Ack));
    }
    record.transition(DeviceState::Quarantined, "quarantine", now)?;
    record.quarantine_reason = Some(reason.to_string());
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(Some(id), "quarantined", reason, now)],
    ))
}

/// Orders the device to re-key. Only an active device can; asking again while a rotation is
/// pending changes nothing.
pub fn request_rotation(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    record.require_state(&[DeviceState::Active], "a rotation")?;
    if record
        .rotation
        .as_ref()
        .is_some_and(|r| r.state == RotationState::Pending)
    {
        return Ok(Decision::reply(Response::Ack));
    }
    record.rotation = Some(Rotation {
        requested_at: now,
        state: RotationState::Pending,
    });
    record.updated_at = now;
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "rotation-requested",
            "",
            now,
        )],
    ))
}

/// An operator puts a device stuck in onboarding back to `expected`: the IDevID pinned by
/// whoever accepted the voucher is forgotten, certificates issued but never confirmed are
/// revoked, and network credentials handed out with them are dropped (new ones are made at
/// the next enrollment). Resetting an expected device changes nothing.
pub fn reset_onboarding(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    reason: &str,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    if record.state == DeviceState::Expected {
        return Ok(Decision::reply(Response::Ack));
    }
    record.transition(DeviceState::Expected, "resetting an onboarding", now)?;
    let mut revoked = Vec::new();
    for cert in &mut record.certificates {
        if cert.is_live() {
            cert.status = CertStatus::Revoked {
                reason: Reason::CessationOfOperation,
                at: now,
            };
            revoked.push(cert.serial.clone());
        }
    }
    record.idevid_key = None;
    record.network = None;
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "onboarding-reset",
            format!(
                "{reason}; IDevID pin dropped; certificates revoked: {}",
                if revoked.is_empty() {
                    "none".to_string()
                } else {
                    revoked.join(", ")
                }
            ),
            now,
        )],
    ))
}
