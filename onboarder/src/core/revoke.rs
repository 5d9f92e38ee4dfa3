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
    record.mud_url = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testkit::{Kit, NOW};
    use protocol::message::ErrorCode;

    #[test]
    fn revocation_revokes_every_live_certificate_once() {
        let kit = Kit::new();
        let (record, _, _) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let d = revoke(&id, Some(record), Reason::KeyCompromise, NOW).unwrap();
        let revoked = d.write.unwrap();
        assert_eq!(revoked.state, DeviceState::Quarantined);
        assert!(revoked.live_certificates().next().is_none());
        // Again: nothing left to revoke, nothing written.
        let again = revoke(&id, Some(revoked), Reason::KeyCompromise, NOW).unwrap();
        assert!(again.write.is_none());
        assert_eq!(
            revoke(&kit.id("SN-NONE"), None, Reason::KeyCompromise, NOW)
                .unwrap_err()
                .code(),
            ErrorCode::UnknownDevice
        );
    }

    #[test]
    fn rotations_are_for_active_devices_and_ordered_once() {
        let kit = Kit::new();
        let (record, _, _) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let ordered = request_rotation(&id, Some(record), NOW)
            .unwrap()
            .write
            .unwrap();
        assert_eq!(
            ordered.rotation.as_ref().unwrap().state,
            RotationState::Pending
        );
        assert!(
            request_rotation(&id, Some(ordered.clone()), NOW + 1)
                .unwrap()
                .write
                .is_none()
        );
        let expected = kit.expected("SN-2");
        assert_eq!(
            request_rotation(&expected.id.clone(), Some(expected), NOW)
                .unwrap_err()
                .code(),
            ErrorCode::WrongState
        );
        let quarantined = quarantine(&id, Some(ordered), "test", NOW)
            .unwrap()
            .write
            .unwrap();
        assert_eq!(quarantined.state, DeviceState::Quarantined);
    }

    #[test]
    fn a_reset_undoes_an_onboarding_and_nothing_further() {
        let kit = Kit::new();
        let (_, peer) = kit.device("SN-1");
        let record = kit.expected("SN-1");
        let ok = protocol::message::Status {
            ok: true,
            reason: None,
        };
        let onboarding = crate::core::onboard::voucher_status(&peer, Some(record), ok, NOW)
            .unwrap()
            .write
            .unwrap();
        let id = onboarding.id.clone();
        let reset = reset_onboarding(&id, Some(onboarding), "clone", NOW).unwrap();
        let back = reset.write.unwrap();
        assert_eq!(back.state, DeviceState::Expected);
        assert!(back.idevid_key.is_none());
        assert_eq!(reset.events[0].action, "onboarding-reset");
        // An expected device: nothing to do. An active one: refused (that is revocation).
        assert!(
            reset_onboarding(&id, Some(back), "again", NOW)
                .unwrap()
                .write
                .is_none()
        );
        let (active, _, _) = kit.onboarded("SN-2");
        assert_eq!(
            reset_onboarding(&active.id.clone(), Some(active), "no", NOW)
                .unwrap_err()
                .code(),
            ErrorCode::WrongState
        );
    }
}
