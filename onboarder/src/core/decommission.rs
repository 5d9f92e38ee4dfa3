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
    export_to: Option<&str>,
    nonce: &[u8],
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = known(id, record)?;
    if let Some(recipient) = export_to {
        check_recipient(recipient)?;
    }
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
        export_to: export_to.map(str::to_string),
        export: None,
    });
    let export = export_to
        .map(|r| format!("; application data handed back first, encrypted to {r}"))
        .unwrap_or_default();
    Ok(Decision::ack(
        record,
        vec![AuditEvent::operator(
            Some(id),
            "decommission-ordered",
            format!("method {method}{export}"),
            now,
        )],
    ))
}

/// Refuses what is not an age X25519 recipient (`age1` and Bech32 data, 62 characters).
fn check_recipient(recipient: &str) -> Result<(), LifecycleError> {
    let ok = recipient.len() == 62
        && recipient.starts_with("age1")
        && recipient[4..]
            .bytes()
            .all(|b| b"qpzry9x8gf2tvdw0s3jn54khce6mua7l".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LifecycleError::BadRequest(format!(
            "{:?} is not an age X25519 recipient (age1...)",
            recipient.chars().take(70).collect::<String>()
        )))
    }
}

/// A piece of the application data the device hands back before its wipe. Pieces come in
/// order; a piece already received is acknowledged again; a new announcement (another digest,
/// from offset 0: the device restarted before its wipe and encrypted afresh) starts over, and
/// the attestation must name the export that completed last. `whole` is the SHA-256 of everything
/// received with this piece, when it is the last (the service reads the pieces back for it).
pub fn export_piece(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    piece: &protocol::message::DataChunk,
    whole: Option<&[u8]>,
    now: u64,
    grace: u64,
) -> Result<Decision, LifecycleError> {
    use protocol::message::{MAX_EXPORT, MAX_EXPORT_CHUNK};
    peer.require(CredentialKind::Ldevid, "handing data back")?;
    let mut record = known(&peer.id, record)?;
    ldevid(peer, &record, now, grace)?;
    let Some(order) = record
        .decommission
        .as_mut()
        .filter(|o| o.export_to.is_some() && record.state == DeviceState::Decommissioning)
    else {
        return Err(record.wrong_state("handing data back without an order to"));
    };
    let end = piece.offset.saturating_add(piece.bytes.len() as u64);
    if piece.digest.len() != 32
        || piece.total > MAX_EXPORT
        || piece.bytes.len() > MAX_EXPORT_CHUNK
        || piece.bytes.is_empty()
        || end > piece.total
    {
        return Err(LifecycleError::BadRequest(format!(
            "a data piece of {} bytes at {} of {} (at most {MAX_EXPORT_CHUNK} a piece, {MAX_EXPORT} in all, a SHA-256 digest)",
            piece.bytes.len(),
            piece.offset,
            piece.total
        )));
    }
    let part = protocol::manifest::sha256(&piece.bytes);
    let same = order
        .export
        .as_ref()
        .is_some_and(|e| e.digest == piece.digest && e.total == piece.total);
    if same
        && let Some(e) = &order.export
        && end <= e.received
    {
        // Sent again after a lost answer.
        return Ok(Decision::reply(Response::Ack));
    }
    let export = match &mut order.export {
        Some(e) if same && e.completed_at.is_none() && piece.offset == e.received => e,
        _ if piece.offset == 0 => order.export.insert(super::record::DataExport {
            digest: piece.digest.clone(),
            total: piece.total,
            parts: Vec::new(),
            received: 0,
            completed_at: None,
        }),
        _ => {
            return Err(LifecycleError::StaleRequest(format!(
                "a data piece at {} where the export expects {}",
                piece.offset,
                order.export.as_ref().map_or(0, |e| e.received)
            )));
        }
    };
    export.parts.push(part.to_vec().into());
    export.received = end;
    let mut events = Vec::new();
    if end == piece.total {
        if whole != Some(piece.digest.as_slice()) {
            return Err(LifecycleError::BadRequest(
                "the data handed back does not have the SHA-256 announced".into(),
            ));
        }
        export.completed_at = Some(now);
        events.push(AuditEvent::device(
            &peer.id,
            "data-exported",
            format!(
                "{} bytes sha256:{} encrypted to {}",
                piece.total,
                certs::inspect::hex(&piece.digest),
                order.export_to.clone().unwrap_or_default()
            ),
            now,
        ));
    }
    record.updated_at = now;
    Ok(Decision::ack(record, events))
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
    match (&order.export_to, &order.export, &attestation.exported) {
        (None, _, None) => {}
        (Some(to), Some(export), Some(said))
            if export.completed_at.is_some()
                && said.sha256 == export.digest
                && said.bytes == export.total
                && &said.recipient == to => {}
        _ => {
            return Err(LifecycleError::BadRequest(
                "the attestation does not name the data handed back as ordered".into(),
            ));
        }
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
        export_to: None,
        export: None,
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
            exported: None,
        }
    }

    #[test]
    fn an_attestation_is_taken_only_signed_bound_fresh_and_complete() {
        let kit = Kit::new();
        let (record, key, peer) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let nonce = [5u8; 32];
        let ordered = order(&id, Some(record), WipeMethod::Clear, None, &nonce, NOW)
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

    #[test]
    fn data_comes_back_in_order_whole_and_named_by_the_attestation() {
        use protocol::message::DataChunk;
        let kit = Kit::new();
        let (record, key, peer) = kit.onboarded("SN-1");
        let id = record.id.clone();
        let nonce = [5u8; 32];
        let to = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        assert_eq!(
            order(
                &id,
                Some(record.clone()),
                WipeMethod::Clear,
                Some("age1x"),
                &nonce,
                NOW
            )
            .unwrap_err()
            .code(),
            ErrorCode::BadRequest
        );
        let ordered = order(&id, Some(record), WipeMethod::Clear, Some(to), &nonce, NOW)
            .unwrap()
            .write
            .unwrap();
        let data = b"encrypted-application-data".to_vec();
        let digest = protocol::manifest::sha256(&data).to_vec();
        let piece = |offset: usize, end: usize| DataChunk {
            digest: digest.clone(),
            total: data.len() as u64,
            offset: offset as u64,
            bytes: data[offset..end].to_vec(),
        };
        let put = |r: &DeviceRecord, p: &DataChunk, whole: Option<&[u8]>| {
            export_piece(&peer, Some(r.clone()), p, whole, NOW, 0)
        };
        // Out of order: refused, nothing written.
        assert_eq!(
            put(&ordered, &piece(10, 20), None).unwrap_err().code(),
            ErrorCode::StaleRequest
        );
        let first = put(&ordered, &piece(0, 10), None).unwrap().write.unwrap();
        // The same piece again: acknowledged, nothing written.
        assert!(put(&first, &piece(0, 10), None).unwrap().write.is_none());
        // The last piece, but the whole is not what was announced: refused.
        let end = data.len();
        assert_eq!(
            put(&first, &piece(10, end), Some(&[0; 32]))
                .unwrap_err()
                .code(),
            ErrorCode::BadRequest
        );
        let done = put(&first, &piece(10, end), Some(&digest)).unwrap();
        assert_eq!(done.events[0].action, "data-exported");
        let done = done.write.unwrap();
        // The attestation must name it.
        let mut without = attestation("SN-1", &nonce, true);
        assert_eq!(
            attest(
                &peer,
                Some(done.clone()),
                &without.sign(&key).unwrap(),
                NOW,
                0
            )
            .unwrap_err()
            .code(),
            ErrorCode::BadRequest
        );
        without.exported = Some(protocol::attestation::ExportedData {
            recipient: to.into(),
            sha256: digest.clone(),
            bytes: data.len() as u64,
        });
        let attested = attest(&peer, Some(done), &without.sign(&key).unwrap(), NOW, 0).unwrap();
        assert_eq!(attested.write.unwrap().state, DeviceState::Decommissioned);
    }
}
