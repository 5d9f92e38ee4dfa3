//! Onboarding decisions (DESIGN 3, RFC 8995): voucher request -> voucher, CSR -> LDevID,
//! status reports, and the hello that opens an operational session.
//!
//! Each function takes the device's record as read from the store and returns a [`Decision`]:
//! the record to write (if anything changed), the audit events, and the response. The caller
//! commits record and events in one atomic write before replying. Retrying a request gives the
//! same answer and writes nothing new.

use std::collections::BTreeMap;

use certs::brski::Encoding;
use protocol::message::{
    Command, Hello, MAX_HARDWARE_FACT_LEN, MAX_HARDWARE_FACTS, Request, Response, Status, Welcome,
};
use protocol::voucher::{CLOCK_SKEW, VoucherRequest};

use super::access::{check_pinned_idevid, known, ldevid, truncate, usable};
use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::DeviceId;
use super::issue::issue;
use super::peer::{CredentialKind, DevicePeer};
use super::policy::{Entropy, Registrar};
use super::record::{CertStatus, DeviceRecord, RotationState};
use super::state::DeviceState;
use crate::audit::AuditEvent;

/// RFC 8995 5.1-5.5: checks a signed voucher request and answers with a voucher: `nonced`, the
/// one the maker's MASA just made for this very request, or else the one on file (imported in
/// bulk).
///
/// A nonced voucher is fresh by the device's nonce and the request is bound to this TLS
/// session, so the request's own creation time is not held against it: that is how a device
/// whose clock is wrong (years off, or never set) onboards, and takes its time from the
/// voucher. With a bulk voucher, the request must be of now, give or take the clock skew.
///
/// Nothing is written: the device has not shown yet that it accepts the voucher, so nothing is
/// pinned to its key and a device that is not the rightful one (it will refuse the voucher)
/// leaves the record as it was. The audit event is a note, not a state change.
pub fn voucher_request(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    signed: &[u8],
    session_binding: &[u8],
    now: u64,
    nonced: Option<Vec<u8>>,
) -> Result<Decision, LifecycleError> {
    let (record, request) = check_voucher_request(reg, peer, record, signed, session_binding)?;
    if let Some(voucher) = nonced {
        let made = certs::brski::parse_voucher_unverified(&voucher)?;
        if made.nonce.as_deref() != Some(request.nonce.as_slice())
            || made.serial_number != peer.id.serial
        {
            return Err(LifecycleError::Unavailable(
                "the MASA's voucher does not answer this request".into(),
            ));
        }
        let issued = AuditEvent::device(
            &peer.id,
            "voucher-issued",
            format!(
                "nonced, from the MASA, to IDevID certificate {}",
                peer.cert_serial
            ),
            now,
        );
        let Some(_) = record else {
            return admit_vouched(reg, peer, voucher, &made, issued, now);
        };
        return Ok(Decision {
            write: None,
            events: vec![issued],
            response: Response::Voucher(voucher),
        });
    }
    let record = known(&peer.id, record)?;
    if request.created_on.abs_diff(now) > CLOCK_SKEW {
        return Err(LifecycleError::StaleRequest(format!(
            "the voucher request was created at {}, now is {now}",
            request.created_on
        )));
    }
    let voucher = record
        .voucher
        .clone()
        .ok_or_else(|| LifecycleError::NoVoucher(record.id.clone()))?;
    if let Some(expires_on) = record.voucher_expires_on
        && expires_on <= now
    {
        return Err(LifecycleError::VoucherExpired {
            device: record.id,
            expires_on,
        });
    }
    // A BRSKI pledge (a CMS request) reads CMS vouchers only; our agent (COSE requests) reads
    // both, so one voucher format serves a mixed fleet.
    if Encoding::of(signed) == Encoding::Cms && Encoding::of(&voucher) == Encoding::Cose {
        return Err(LifecycleError::BadRequest(format!(
            "the voucher imported for {} is {:?} and the request {:?}: import one in the \
             pledge's encoding (`factory voucher --format`)",
            record.id,
            Encoding::of(&voucher),
            Encoding::of(signed)
        )));
    }
    // The voucher is for IDevIDs of one issuer (RFC 8366 idevid-issuer): the device's.
    if let Some(issuer) = certs::brski::parse_voucher_unverified(&voucher)?.idevid_issuer
        && peer.issuer_key_id.as_deref() != Some(issuer.as_slice())
    {
        return Err(protocol::voucher::VoucherError::WrongIssuer.into());
    }
    Ok(Decision {
        write: None,
        events: vec![AuditEvent::device(
            &peer.id,
            "voucher-issued",
            format!("to IDevID certificate {}", peer.cert_serial),
            now,
        )],
        response: Response::Voucher(voucher),
    })
}

/// A device no voucher was imported for, admitted because its maker's MASA vouched for it
/// (`policy.admit_vouched`): its record is made from the voucher, which must pin our root.
fn admit_vouched(
    reg: &Registrar,
    peer: &DevicePeer,
    voucher: Vec<u8>,
    made: &protocol::voucher::Voucher,
    issued: AuditEvent,
    now: u64,
) -> Result<Decision, LifecycleError> {
    if !reg.roots.trusts(&made.pinned_domain_cert) {
        return Err(LifecycleError::Unavailable(
            "the MASA's voucher pins another owner's root".into(),
        ));
    }
    let record = DeviceRecord::expected(peer.id.clone(), voucher.clone(), None, now);
    Ok(Decision {
        write: Some(record),
        events: vec![
            AuditEvent::device(
                &peer.id,
                "admitted-by-masa",
                "no voucher was imported; its maker's MASA vouched for it",
                now,
            ),
            issued,
        ],
        response: Response::Voucher(voucher),
    })
}

/// What makes a voucher request worth answering, whoever answers it: an expected device
/// with the IDevID on record (or, when the policy admits devices the MASA vouches for, one
/// without a record), asking in this TLS session through this registrar. The service asks a
/// MASA only for a request that passes (a stranger costs the maker no signature).
pub fn check_voucher_request(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    signed: &[u8],
    session_binding: &[u8],
) -> Result<(Option<DeviceRecord>, VoucherRequest), LifecycleError> {
    peer.require(CredentialKind::Idevid, "a voucher request")?;
    let record = match record {
        None if reg.policy.admit_vouched => None,
        record => Some(usable(peer, record)?),
    };
    if let Some(record) = &record {
        record.require_state(
            &[DeviceState::Expected, DeviceState::Onboarding],
            "a voucher request",
        )?;
        check_pinned_idevid(peer, record)?;
    }
    let request = certs::brski::open_request(signed, &peer.public_key)?;
    if request.serial_number != peer.id.serial {
        return Err(LifecycleError::WrongSerial {
            expected: peer.id.serial.clone(),
            found: request.serial_number,
        });
    }
    let seen = &request.proximity_registrar_cert;
    if *seen != reg.registrar_cert && reg.previous_registrar_cert.as_ref() != Some(seen) {
        return Err(LifecycleError::ProximityMismatch);
    }
    // A BRSKI pledge's JSON request has no binding (RFC 8995 has none): over HTTPS its TLS
    // client certificate, nonce and creation time make it fresh. Over QUIC one is required.
    let unbound = peer.channel.is_standard() && request.session_binding.is_empty();
    if !unbound && request.session_binding != session_binding {
        return Err(LifecycleError::StaleRequest(
            "the voucher request was made in another TLS session".into(),
        ));
    }
    Ok((record, request))
}

/// RFC 8995 5.7: the device's verdict on the voucher. Acceptance starts the onboarding: the
/// device moves to `onboarding` and its IDevID key is pinned; a rejection is only noted.
pub fn voucher_status(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    status: Status,
    now: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Idevid, "a voucher status")?;
    let mut record = usable(peer, record)?;
    check_pinned_idevid(peer, &record)?;
    if !status.ok {
        return Ok(Decision {
            write: None,
            events: vec![AuditEvent::device(
                &peer.id,
                "voucher-rejected",
                truncate(status.reason),
                now,
            )],
            response: Response::Ack,
        });
    }
    record.require_state(
        &[DeviceState::Expected, DeviceState::Onboarding],
        "a voucher status",
    )?;
    if record.state == DeviceState::Onboarding {
        // Already onboarding with this IDevID (checked above): a repeat says nothing.
        return Ok(Decision::reply(Response::Ack));
    }
    record.transition(DeviceState::Onboarding, "accepting a voucher", now)?;
    pin_idevid(&mut record, peer);
    let event = AuditEvent::device(
        &peer.id,
        "voucher-accepted",
        format!("IDevID certificate {} pinned", peer.cert_serial),
        now,
    );
    Ok(Decision::ack(record, vec![event]))
}

/// EST simpleenroll: checks the CSR and issues the LDevID with network credentials. A device
/// that accepted its voucher (and so is onboarding, its IDevID pinned) may enroll; so may an
/// active device whose every LDevID expired while it was offline, with its pinned IDevID, if
/// the owner's policy allows it (`reenroll_expired`). A standard EST client (over HTTPS) of an
/// expected device may enroll without the voucher exchange, which plain EST does not have: its
/// IDevID authenticated it, the owner expects it, and asking for a certificate is its
/// acceptance, so its IDevID is pinned then.
pub fn enroll(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    csr: &[u8],
    session_binding: &[u8],
    now: u64,
    entropy: Entropy,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Idevid, "enrollment")?;
    let mut record = usable(peer, record)?;
    let reenrolling = record.state == DeviceState::Active;
    let without_voucher = record.state == DeviceState::Expected && peer.channel.is_standard();
    if reenrolling {
        check_reenrollment(reg, &record, now)?;
    } else if without_voucher {
        // The owner expects the device as long as its voucher is good, on either transport.
        if let Some(expires_on) = record.voucher_expires_on
            && expires_on <= now
        {
            return Err(LifecycleError::VoucherExpired {
                device: record.id,
                expires_on,
            });
        }
    } else {
        record.require_state(&[DeviceState::Onboarding], "enrollment")?;
    }
    check_pinned_idevid(peer, &record)?;
    let checked = certs::csr::check_csr(
        csr,
        &certs::csr::CsrPolicy {
            serial: &peer.id.serial,
            binding: session_binding,
            binding_required: peer.binding_required(&reg.policy),
            forbidden_keys: std::slice::from_ref(&peer.public_key),
        },
    )?;
    let mut pinned = Vec::new();
    if without_voucher {
        record.transition(DeviceState::Onboarding, "enrolling over EST", now)?;
        pin_idevid(&mut record, peer);
        pinned.push(AuditEvent::device(
            &peer.id,
            "est-enrollment",
            format!(
                "an expected device enrolls over EST without a voucher exchange; IDevID certificate {} pinned",
                peer.cert_serial
            ),
            now,
        ));
    }
    let mut issued = issue(reg, &mut record, &checked, "LDevID", now, &entropy)?;
    pinned.append(&mut issued.events);
    issued.events = pinned;
    if reenrolling && issued.changed {
        issued.events.push(AuditEvent::device(
            &peer.id,
            "reenrolled-with-idevid",
            "every LDevID had expired; a new one was issued on the pinned IDevID",
            now,
        ));
    }
    Ok(Decision {
        write: issued.changed.then_some(record),
        events: issued.events,
        response: issued.response,
    })
}

/// RFC 8995 5.7 and EST simpleenroll in one request: the device accepts its voucher and asks
/// for its LDevID with the same message (one round trip and one write fewer than a voucher
/// status of its own). Decided as the two would be one after the other, and written together:
/// if the enrollment is refused, the acceptance is not recorded either.
pub fn accept_voucher_and_enroll(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    csr: &[u8],
    session_binding: &[u8],
    now: u64,
    entropy: Entropy,
) -> Result<Decision, LifecycleError> {
    let accepted = Status {
        ok: true,
        reason: None,
    };
    voucher_status(peer, record.clone(), accepted, now)?.then(record, |record| {
        enroll(reg, peer, record, csr, session_binding, now, entropy)
    })
}

/// An active device may enroll again with its IDevID only if the policy allows it and none of
/// its certificates works any more (otherwise it renews with the one it has).
fn check_reenrollment(
    reg: &Registrar,
    record: &DeviceRecord,
    now: u64,
) -> Result<(), LifecycleError> {
    let refused = |action| LifecycleError::WrongState {
        device: record.id.clone(),
        state: record.state,
        action,
    };
    if !reg.policy.reenroll_expired {
        return Err(refused(
            "enrolling again with the IDevID (the owner's policy does not allow it)",
        ));
    }
    if record
        .certificates
        .iter()
        .any(|c| c.status == CertStatus::Active && c.not_after > now)
    {
        return Err(refused(
            "enrolling again with the IDevID while an LDevID is valid",
        ));
    }
    Ok(())
}

/// The device stored its enrollment (or failed to). Success activates the device.
pub fn enroll_status(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    status: Status,
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = usable(peer, record)?;
    if peer.kind == CredentialKind::Idevid {
        check_pinned_idevid(peer, &record)?;
    }
    if !status.ok {
        let reason = truncate(status.reason);
        let mut write = None;
        if let Some(rotation) = &mut record.rotation
            && rotation.state == RotationState::Pending
        {
            rotation.state = RotationState::Failed {
                reason: reason.clone(),
            };
            write = Some(record);
        }
        return Ok(Decision {
            write,
            events: vec![AuditEvent::device(&peer.id, "enroll-failed", reason, now)],
            response: Response::Ack,
        });
    }
    if record.state == DeviceState::Active && record.pending_certificate().is_none() {
        return Ok(Decision::reply(Response::Ack));
    }
    let pending = record
        .pending_certificate()
        .map(|c| c.serial.clone())
        .ok_or_else(|| record.wrong_state("confirming an enrollment without a certificate"))?;
    let mut events = vec![AuditEvent::device(
        &peer.id,
        "enrolled",
        format!("LDevID {pending} confirmed"),
        now,
    )];
    events.extend(activation_events(
        &peer.id,
        record.activate(&pending, now)?,
        now,
    ));
    Ok(Decision::ack(record, events))
}

/// Using a certificate not yet confirmed confirms it (the device evidently stored it): the
/// device becomes active on it. Nothing happens for a confirmed one.
pub(crate) fn confirm_by_use(
    peer: &DevicePeer,
    record: &mut DeviceRecord,
    cert: &super::record::IssuedCert,
    now: u64,
) -> Result<Vec<AuditEvent>, LifecycleError> {
    if cert.status != CertStatus::Issued {
        return Ok(Vec::new());
    }
    let changes = record.activate(&cert.serial, now)?;
    let mut events = vec![AuditEvent::device(
        &peer.id,
        "enrolled",
        format!("LDevID {} confirmed by use", cert.serial),
        now,
    )];
    events.extend(activation_events(&peer.id, changes, now));
    Ok(events)
}

fn activation_events(id: &DeviceId, changes: Vec<(String, String)>, now: u64) -> Vec<AuditEvent> {
    changes
        .into_iter()
        .map(|(action, detail)| AuditEvent::device(id, &action, detail, now))
        .collect()
}

/// Hardware facts are the device's word, kept on its record: bounded in number and size so a
/// device cannot grow its record (and every read of it) at will.
fn check_hardware(facts: &BTreeMap<String, String>) -> Result<(), LifecycleError> {
    if facts.len() > MAX_HARDWARE_FACTS {
        return Err(LifecycleError::BadRequest(format!(
            "{} hardware facts; at most {MAX_HARDWARE_FACTS}",
            facts.len()
        )));
    }
    match facts.iter().find(|(k, v)| {
        k.is_empty() || k.len() > MAX_HARDWARE_FACT_LEN || v.len() > MAX_HARDWARE_FACT_LEN
    }) {
        Some((name, _)) => Err(LifecycleError::BadRequest(format!(
            "hardware fact {:?}: names of 1 to {MAX_HARDWARE_FACT_LEN} bytes and values of at most {MAX_HARDWARE_FACT_LEN}",
            name.chars().take(32).collect::<String>()
        ))),
        None => Ok(()),
    }
}

/// Opens an operational session. The LDevID must be one the device may still use. Using a
/// certificate not yet confirmed confirms it (the device evidently stored it), which is how a
/// renewal completes. The welcome carries what the device missed while it was away.
pub fn hello(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    hello: Hello,
    support: Option<&super::support::SupportPeriod>,
    now: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "an operational session")?;
    let mut record = usable(peer, record)?;
    let cert = ldevid(peer, &record, now, reg.policy.superseded_grace)?.clone();
    let events = confirm_by_use(peer, &mut record, &cert, now)?;
    let mut changed = !events.is_empty();
    record.require_state(
        &[DeviceState::Active, DeviceState::Decommissioning],
        "an operational session",
    )?;
    check_hardware(&hello.hardware)?;
    let anchors = super::roots::anchors_command(reg, &hello);
    let trusts = hello.anchors.as_ref().map(|d| d.to_vec());
    if record.anchors != trusts {
        record.anchors = trusts;
        record.updated_at = now;
        changed = true;
    }
    if record.agent_version.as_deref() != Some(hello.agent_version.as_str())
        || record.firmware_version.as_deref() != Some(hello.firmware_version.as_str())
        || record.firmware_sequence != hello.firmware_sequence
        || record.class_id.as_deref() != Some(hello.class_id.as_str())
        || record.hardware != hello.hardware
    {
        record.class_id = Some(hello.class_id);
        record.hardware = hello.hardware;
        record.agent_version = Some(hello.agent_version);
        record.firmware_version = Some(hello.firmware_version);
        record.firmware_sequence = hello.firmware_sequence;
        record.updated_at = now;
        changed = true;
    }
    let mut welcome = Welcome::default();
    if let (DeviceState::Decommissioning, Some(order)) = (&record.state, &record.decommission) {
        // Nothing else matters any more.
        welcome.commands.push(Command::Decommission {
            nonce: order.nonce.clone(),
            method: order.method,
            export_to: order.export_to.clone(),
        });
        return Ok(Decision {
            write: changed.then_some(record),
            events,
            response: Response::Welcome(welcome),
        });
    }
    // The roots first: a rotation that follows may bring a certificate under a new one.
    welcome.commands.extend(anchors);
    if let Some(job) = record.firmware_job.as_ref().filter(|j| !j.state.is_final()) {
        welcome.commands.push(Command::Update {
            manifest: job.manifest.clone(),
            url: job.url.clone(),
        });
    }
    if record
        .rotation
        .as_ref()
        .is_some_and(|r| r.state == RotationState::Pending)
    {
        welcome.commands.push(Command::Rotate);
    }
    if let Some(period) = support.filter(|p| p.must_tell(&record, now)) {
        welcome.commands.push(period.command());
    }
    Ok(Decision {
        write: changed.then_some(record),
        events,
        response: Response::Welcome(welcome),
    })
}

/// Whether answering `peer` with `response` opens its operational session: a device welcomed
/// on its LDevID may be sent commands from then on.
pub fn opens_session(peer: &DevicePeer, response: &Response) -> bool {
    peer.kind == CredentialKind::Ldevid && matches!(response, Response::Welcome(_))
}

/// Whether `request` from `peer` may open its operational session (a hello on its LDevID).
/// A transport makes such a session the device's before the hello is decided, and puts back
/// the one it displaced if the answer does not open it: an order committed while the welcome
/// is being decided is then pushed to this session instead of being missed by both (the
/// welcome read the record before the order, and the push found no session, or the one about
/// to be replaced).
pub fn may_open_session(peer: &DevicePeer, request: &Request) -> bool {
    peer.kind == CredentialKind::Ldevid && matches!(request, Request::Hello(_))
}

/// Pins the IDevID `peer` onboards with (a clone is refused from then on), and keeps the MUD URL
/// it carries for the network policy.
fn pin_idevid(record: &mut DeviceRecord, peer: &DevicePeer) {
    record.idevid_key = Some(peer.public_key.raw().to_vec());
    record.mud_url = peer
        .idevid
        .as_deref()
        .and_then(|der| certs::CertInfo::parse(der).ok())
        .and_then(|info| info.mud_url);
}

#[cfg(test)]
mod tests;
