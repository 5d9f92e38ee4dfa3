//! End of life (NIST IR 8259 Rev. 1, NIST SP 800-88): the order to wipe, the device's signed
//! attestation, and the forced decommissioning of a device that never answers.
//!
//! The attestation is accepted only from the device itself (its LDevID session, its signature
//! with the certificate on record), for the order outstanding (the server's nonce, not older than
//! [`ORDER_LIFETIME`]), with every target verified. Then, in one atomic step, every certificate is
//! revoked, the network credentials are deleted, the device becomes `decommissioned`, and the
//! attestation goes into the audit log.

use certs::crl::Reason;
use protocol::attestation::{WipeAttestation, WipeMethod};
use protocol::message::Response;

use super::access::{known, ldevid};
use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::DeviceId;
use super::peer::{CredentialKind, DevicePeer};
use super::record::Decommission;
use super::record::{CertStatus, DeviceRecord};
use super::state::DeviceState;
use crate::audit::AuditEvent;

/// How long a decommission order (its nonce) stays valid.
pub const ORDER_LIFETIME: u64 = 7 * 86_400;

/// Orders an active device to wipe itself. Ordering again while the order is outstanding
/// changes nothing (the nonce stays).
pub fn order(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    method: WipeMethod,
    nonce: &[u8],
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    if record.state == DeviceState::Decommissioning {
        return Ok(Decision::reply(Response::Ack));
    }
    record.transition(DeviceState::Decommissioning, "a decommission order", now)?;
    record.decommission = Some(Decommission {
        nonce: nonce.to_vec(),
        method,
        requested_at: now,
        attestation: None,
        signer: None,
        attested_at: None,
        forced: None,
    });
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "decommission-ordered",
            format!("method {method}"),
            now,
        )],
    ))
}

/// Revokes every certificate that could still be used, and deletes the network credentials.
fn strip(record: &mut DeviceRecord, now: u64) -> Vec<String> {
    let mut revoked = Vec::new();
    for cert in &mut record.certificates {
        if !matches!(cert.status, CertStatus::Revoked { .. }) && cert.not_after > now {
            cert.status = CertStatus::Revoked {
                reason: Reason::CessationOfOperation,
                at: now,
            };
            revoked.push(cert.serial.clone());
        }
    }
    record.network = None;
    record.rotation = None;
    record.updated_at = now;
    revoked
}

/// Verifies a wipe attestation and, if it holds, decommissions the device.
pub fn attest(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    signed: &[u8],
    now: u64,
    grace: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "a wipe attestation")?;
    let mut record = known(&peer.id, record)?;
    let order = match (&record.state, &record.decommission) {
        (DeviceState::Decommissioning, Some(order)) => order.clone(),
        _ => {
            return Err(record.wrong_state("a wipe attestation"));
        }
    };
    let cert = ldevid(peer, &record, now, grace)?.clone();
    let key = protocol::keys::PublicKey::p256(&cert.public_key)
        .or_else(|_| protocol::keys::PublicKey::ed25519(&cert.public_key))
        .map_err(LifecycleError::BadSignature)?;
    let attestation = WipeAttestation::open(signed, &key).map_err(|e| match e {
        protocol::attestation::AttestationError::Decode(d) => LifecycleError::Decode(d),
        protocol::attestation::AttestationError::Signature(s) => LifecycleError::BadSignature(s),
        other => LifecycleError::BadRequest(other.to_string()),
    })?;
    if attestation.serial != record.id.serial {
        return Err(LifecycleError::WrongSerial {
            expected: record.id.serial,
            found: attestation.serial,
        });
    }
    if attestation.nonce != order.nonce {
        return Err(LifecycleError::StaleRequest(
            "the attestation is not bound to the outstanding decommission order".into(),
        ));
    }
    if now > order.requested_at.saturating_add(ORDER_LIFETIME) {
        return Err(LifecycleError::StaleRequest(
            "the decommission order has expired; order it again".into(),
        ));
    }
    if !attestation.all_verified() {
        return Err(LifecycleError::BadRequest(
            "the attestation reports a target that failed verification".into(),
        ));
    }
    let revoked = strip(&mut record, now);
    record.transition(
        DeviceState::Decommissioned,
        "an attested decommissioning",
        now,
    )?;
    let digest = certs::inspect::hex(&protocol::manifest::sha256(signed));
    if let Some(d) = &mut record.decommission {
        d.attestation = Some(signed.to_vec());
        d.signer = Some(cert.der.clone());
        d.attested_at = Some(now);
    }
    let targets: Vec<String> = attestation
        .targets
        .iter()
        .map(|t| {
            format!(
                "{} ({} bytes, {}, {})",
                t.target, t.bytes, t.method, t.verification
            )
        })
        .collect();
    Ok(Decision::ack(
        record,
        vec![
            AuditEvent::device(
                &peer.id,
                "wipe-attested",
                format!(
                    "attestation sha256:{digest} signed by {}: {}; COSE_Sign1 {}",
                    cert.serial,
                    targets.join(", "),
                    certs::inspect::hex(signed)
                ),
                now,
            ),
            AuditEvent::device(
                &peer.id,
                "decommissioned",
                format!(
                    "certificates revoked: {}; network credentials deleted",
                    revoked.join(", ")
                ),
                now,
            ),
        ],
    ))
}

/// Decommissions a device without its attestation (it never answers): every credential revoked,
/// marked `decommissioned-unattested`.
pub fn force(
    id: &DeviceId,
    record: Option<DeviceRecord>,
    reason: &str,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    if record.state == DeviceState::DecommissionedUnattested {
        return Ok(Decision::reply(Response::Ack));
    }
    let revoked = strip(&mut record, now);
    record.transition(
        DeviceState::DecommissionedUnattested,
        "a forced decommissioning",
        now,
    )?;
    let order = record.decommission.get_or_insert(Decommission {
        nonce: Vec::new(),
        method: WipeMethod::Clear,
        requested_at: now,
        attestation: None,
        signer: None,
        attested_at: None,
        forced: None,
    });
    order.forced = Some(reason.to_string());
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "decommissioned-unattested",
            format!(
                "{reason}; certificates revoked: {}; network credentials deleted",
                revoked.join(", ")
            ),
            now,
        )],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testkit::{Kit, NOW};
    use protocol::attestation::WipedTarget;
    use protocol::message::ErrorCode;

    fn attestation(serial: &str, nonce: &[u8], verified: bool) -> WipeAttestation {
        WipeAttestation {
            serial: serial.into(),
            manufacturer: "Kit Devices".into(),
            model: "sensor-1".into(),
            firmware_version: "1.0.0".into(),
            agent_version: "0.1.0".into(),
            nonce: nonce.to_vec(),
            method: WipeMethod::Clear,
            targets: vec![WipedTarget {
                target: "application-data".into(),
                bytes: 10,
                method: WipeMethod::Clear,
                verification: "read-back".into(),
                verified,
            }],
            started_on: NOW,
            finished_on: NOW,
        }
    }

    #[test]
    fn an_attestation_is_taken_only_signed_bound_fresh_and_complete() {
        let kit = Kit::new();
        let (record, key, peer) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let nonce = [5u8; 32];
        let ordered = order(&id, Some(record), WipeMethod::Clear, &nonce, NOW)
            .unwrap()
            .write
            .unwrap();
        assert_eq!(ordered.state, DeviceState::Decommissioning);
        let signed = |a: WipeAttestation, k: &certs::KeyPair| a.sign(k).unwrap();
        let code = |r: Result<Decision, LifecycleError>| r.unwrap_err().code();
        let att =
            |r: &DeviceRecord, bytes: Vec<u8>, now| attest(&peer, Some(r.clone()), &bytes, now, 0);
        // Another order's nonce: a replay.
        assert_eq!(
            code(att(
                &ordered,
                signed(attestation("SN-1", &[6; 32], true), &key),
                NOW
            )),
            ErrorCode::StaleRequest
        );
        // Signed by another key than the certificate's.
        let other = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
        assert_eq!(
            code(att(
                &ordered,
                signed(attestation("SN-1", &nonce, true), &other),
                NOW
            )),
            ErrorCode::BadSignature
        );
        // Another device's.
        assert_eq!(
            code(att(
                &ordered,
                signed(attestation("SN-2", &nonce, true), &key),
                NOW
            )),
            ErrorCode::WrongSerial
        );
        // A target that failed its check.
        assert_eq!(
            code(att(
                &ordered,
                signed(attestation("SN-1", &nonce, false), &key),
                NOW
            )),
            ErrorCode::BadRequest
        );
        // Older than the order's lifetime (7 days).
        let good = signed(attestation("SN-1", &nonce, true), &key);
        assert_eq!(
            code(att(&ordered, good.clone(), NOW + ORDER_LIFETIME + 1)),
            ErrorCode::StaleRequest
        );
        // In time: decommissioned, every certificate revoked, credentials gone.
        let done = att(&ordered, good.clone(), NOW + ORDER_LIFETIME - 1).unwrap();
        let done = done.write.unwrap();
        assert_eq!(done.state, DeviceState::Decommissioned);
        assert!(done.live_certificates().next().is_none() && done.network.is_none());
        // Nothing more is accepted from it.
        assert_eq!(code(att(&done, good, NOW)), ErrorCode::WrongState);
    }

    #[test]
    fn a_forced_decommissioning_revokes_without_the_device() {
        let kit = Kit::new();
        let (record, _, _) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let forced = force(&id, Some(record), "stolen", NOW)
            .unwrap()
            .write
            .unwrap();
        assert_eq!(forced.state, DeviceState::DecommissionedUnattested);
        assert!(forced.live_certificates().next().is_none());
        assert!(
            force(&id, Some(forced), "again", NOW)
                .unwrap()
                .write
                .is_none()
        );
    }
}
