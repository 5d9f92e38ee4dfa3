//! Onboarding decisions (DESIGN 3, RFC 8995): voucher request -> voucher, CSR -> LDevID,
//! status reports, and the hello that opens an operational session.
//!
//! Each function takes the device's record as read from the store and returns a [`Decision`]:
//! the record to write (if anything changed), the audit events, and the response. The caller
//! commits record and events in one atomic write before replying. Retrying a request gives the
//! same answer and writes nothing new.

use protocol::message::{DeviceConfig, Enrollment, Hello, NetworkProfile, Response, Status};
use protocol::voucher::{CLOCK_SKEW, VoucherRequest};
use serde_bytes::ByteBuf;

use super::device::{CertStatus, DeviceRecord, DeviceState, IssuedCert};
use super::error::LifecycleError;
use super::peer::{CredentialKind, DevicePeer};
use super::policy::{Entropy, NetworkPolicy, Registrar};
use crate::audit::AuditEvent;

/// Longest reason from a device that goes into the audit log.
const MAX_REASON: usize = 256;

/// The outcome of a request that was accepted.
#[derive(Debug)]
pub struct Decision {
    /// The device record to write, if it changed.
    pub write: Option<DeviceRecord>,
    /// Audit events to append in the same write.
    pub events: Vec<AuditEvent>,
    /// The answer to the device.
    pub response: Response,
}

impl Decision {
    fn reply(response: Response) -> Self {
        Decision {
            write: None,
            events: Vec::new(),
            response,
        }
    }
}

/// The record of an authenticated device that may still act: known and not quarantined.
fn usable(peer: &DevicePeer, record: Option<DeviceRecord>) -> Result<DeviceRecord, LifecycleError> {
    let record = record.ok_or_else(|| LifecycleError::UnknownDevice(peer.serial.clone()))?;
    if record.state == DeviceState::Quarantined {
        return Err(LifecycleError::Quarantined(record.serial));
    }
    Ok(record)
}

/// Refuses an IDevID other than the one the device first onboarded with.
fn check_pinned_idevid(peer: &DevicePeer, record: &DeviceRecord) -> Result<(), LifecycleError> {
    match &record.idevid_key {
        Some(pinned) if pinned.as_slice() != peer.public_key.raw() => {
            Err(LifecycleError::Unauthorized(format!(
                "the IDevID presented for {} is not the one on record",
                peer.serial
            )))
        }
        _ => Ok(()),
    }
}

fn truncate(reason: Option<String>) -> String {
    let mut r = reason.unwrap_or_default();
    if r.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r.truncate(cut);
    }
    r
}

/// RFC 8995 5.1-5.5: checks a signed voucher request and answers with the voucher on file.
pub fn voucher_request(
    reg: &Registrar,
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    signed: &[u8],
    session_binding: &[u8],
    now: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Idevid, "a voucher request")?;
    let mut record = usable(peer, record)?;
    if !matches!(
        record.state,
        DeviceState::Expected | DeviceState::Onboarding
    ) {
        return Err(LifecycleError::WrongState {
            serial: record.serial,
            state: record.state,
            action: "a voucher request",
        });
    }
    check_pinned_idevid(peer, &record)?;
    let request = VoucherRequest::open(signed, &peer.public_key)?;
    if request.serial_number != peer.serial {
        return Err(LifecycleError::WrongSerial {
            expected: peer.serial.clone(),
            found: request.serial_number,
        });
    }
    if request.proximity_registrar_cert != reg.registrar_cert {
        return Err(LifecycleError::ProximityMismatch);
    }
    if request.session_binding != session_binding {
        return Err(LifecycleError::StaleRequest(
            "the voucher request was made in another TLS session".into(),
        ));
    }
    if request.created_on.abs_diff(now) > CLOCK_SKEW {
        return Err(LifecycleError::StaleRequest(format!(
            "the voucher request was created at {}, now is {now}",
            request.created_on
        )));
    }
    let voucher = record
        .voucher
        .clone()
        .ok_or_else(|| LifecycleError::NoVoucher(record.serial.clone()))?;
    if let Some(expires_on) = record.voucher_expires_on
        && expires_on <= now
    {
        return Err(LifecycleError::VoucherExpired {
            serial: record.serial,
            expires_on,
        });
    }
    if record.state == DeviceState::Onboarding {
        // A retry: same answer, nothing new to record.
        return Ok(Decision::reply(Response::Voucher(voucher)));
    }
    record.transition(DeviceState::Onboarding, "a voucher request", now)?;
    record.idevid_key = Some(peer.public_key.raw().to_vec());
    Ok(Decision {
        events: vec![AuditEvent::device(
            &peer.serial,
            "voucher-issued",
            format!("IDevID certificate {}", peer.cert_serial),
            now,
        )],
        write: Some(record),
        response: Response::Voucher(voucher),
    })
}

/// RFC 8995 5.7: the device's verdict on the voucher. Recorded in the audit log only.
pub fn voucher_status(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    status: Status,
    now: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Idevid, "a voucher status")?;
    let record = usable(peer, record)?;
    check_pinned_idevid(peer, &record)?;
    let event = if status.ok {
        AuditEvent::device(&peer.serial, "voucher-accepted", "", now)
    } else {
        AuditEvent::device(
            &peer.serial,
            "voucher-rejected",
            truncate(status.reason),
            now,
        )
    };
    Ok(Decision {
        write: None,
        events: vec![event],
        response: Response::Ack,
    })
}

/// EST simpleenroll: checks the CSR and issues the LDevID with network credentials.
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
    if record.state != DeviceState::Onboarding {
        return Err(LifecycleError::WrongState {
            serial: record.serial,
            state: record.state,
            action: "enrollment",
        });
    }
    check_pinned_idevid(peer, &record)?;
    let checked = certs::csr::check_csr(
        csr,
        &certs::csr::CsrPolicy {
            serial: &peer.serial,
            binding: session_binding,
            forbidden_keys: std::slice::from_ref(&peer.public_key),
        },
    )?;
    // Credentials are made once per device, so a retry gets the same passphrase.
    let network = record
        .network
        .get_or_insert_with(|| network_profile(reg, &peer.serial, &entropy))
        .clone();
    let mut events = Vec::new();
    if let Some(pending) = record.pending_certificate() {
        if pending.public_key == checked.public_key.raw() {
            // The device retries with the key it already has a certificate for: same answer.
            return Ok(Decision::reply(enrollment_response(reg, network, pending)));
        }
        // A new key replaces an unconfirmed certificate; the old one must never be used.
        let old = pending.serial.clone();
        for cert in record.certificates.iter_mut().filter(|c| c.serial == old) {
            cert.status = CertStatus::Revoked {
                reason: "superseded".into(),
                at: now,
            };
        }
        events.push(AuditEvent::device(
            &peer.serial,
            "certificate-superseded",
            format!("unconfirmed certificate {old} replaced by a request with a new key"),
            now,
        ));
    }
    let validity = certs::Validity::starting(now, reg.policy.ldevid_lifetime);
    let der = certs::profile::issue_ldevid(
        &reg.issuing,
        &peer.serial,
        &reg.policy.organization,
        &checked.spki_der,
        validity,
        &entropy.cert_serial,
    )
    .map_err(|e| LifecycleError::Unavailable(format!("issuing the LDevID: {e}")))?;
    let cert = IssuedCert {
        serial: certs::inspect::hex(&entropy.cert_serial),
        der,
        public_key: checked.public_key.raw().to_vec(),
        issued_at: now,
        not_after: validity.not_after,
        status: CertStatus::Issued,
    };
    events.push(AuditEvent::device(
        &peer.serial,
        "certificate-issued",
        format!("LDevID {} valid until {}", cert.serial, cert.not_after),
        now,
    ));
    let response = enrollment_response(reg, network, &cert);
    record.certificates.push(cert);
    record.updated_at = now;
    Ok(Decision {
        write: Some(record),
        events,
        response,
    })
}

fn network_profile(reg: &Registrar, serial: &str, entropy: &Entropy) -> NetworkProfile {
    match &reg.policy.network {
        NetworkPolicy::Wifi { ssid } => NetworkProfile::Wifi {
            ssid: ssid.clone(),
            // 128 random bits as 32 hex characters: a valid WPA passphrase (8-63 characters).
            psk: certs::inspect::hex(&entropy.psk),
        },
        NetworkPolicy::EapTls { ssid } => NetworkProfile::EapTls {
            ssid: ssid.clone(),
            identity: serial.to_string(),
            ca_chain: reg.chain.iter().cloned().map(ByteBuf::from).collect(),
        },
    }
}

fn enrollment_response(reg: &Registrar, network: NetworkProfile, cert: &IssuedCert) -> Response {
    Response::Enrolled(Box::new(Enrollment {
        certificate: cert.der.clone(),
        chain: reg.chain.iter().cloned().map(ByteBuf::from).collect(),
        network,
        config: DeviceConfig {
            server_name: reg.policy.server_name.clone(),
            heartbeat_secs: reg.policy.heartbeat_secs,
        },
    }))
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
        return Ok(Decision {
            write: None,
            events: vec![AuditEvent::device(
                &peer.serial,
                "enroll-failed",
                truncate(status.reason),
                now,
            )],
            response: Response::Ack,
        });
    }
    if record.state == DeviceState::Active && record.pending_certificate().is_none() {
        return Ok(Decision::reply(Response::Ack));
    }
    let pending = record
        .pending_certificate()
        .map(|c| c.serial.clone())
        .ok_or_else(|| LifecycleError::WrongState {
            serial: record.serial.clone(),
            state: record.state,
            action: "confirming an enrollment without a certificate",
        })?;
    activate(&mut record, &pending, now)?;
    Ok(Decision {
        events: vec![AuditEvent::device(
            &peer.serial,
            "enrolled",
            format!("LDevID {pending} confirmed"),
            now,
        )],
        write: Some(record),
        response: Response::Ack,
    })
}

/// Marks certificate `serial` active and the device active.
fn activate(record: &mut DeviceRecord, serial: &str, now: u64) -> Result<(), LifecycleError> {
    if record.state == DeviceState::Onboarding {
        record.transition(DeviceState::Active, "confirming an enrollment", now)?;
    }
    for cert in &mut record.certificates {
        if cert.serial == serial {
            cert.status = CertStatus::Active;
        }
    }
    record.updated_at = now;
    Ok(())
}

/// Opens an operational session: the LDevID must be one of the device's live certificates.
/// Using a certificate not yet confirmed confirms it (the device evidently stored it).
pub fn hello(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    hello: Hello,
    now: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "an operational session")?;
    let mut record = usable(peer, record)?;
    let cert = record
        .certificate(&peer.cert_serial)
        .filter(|c| c.is_live())
        .cloned()
        .ok_or_else(|| {
            LifecycleError::Unauthorized(format!(
                "certificate {} is not a live certificate of {}",
                peer.cert_serial, peer.serial
            ))
        })?;
    let mut events = Vec::new();
    let mut changed = false;
    if cert.status == CertStatus::Issued {
        activate(&mut record, &cert.serial, now)?;
        events.push(AuditEvent::device(
            &peer.serial,
            "enrolled",
            format!("LDevID {} confirmed by use", cert.serial),
            now,
        ));
        changed = true;
    }
    if record.state != DeviceState::Active {
        return Err(LifecycleError::WrongState {
            serial: record.serial,
            state: record.state,
            action: "an operational session",
        });
    }
    if record.agent_version.as_deref() != Some(hello.agent_version.as_str())
        || record.firmware_version.as_deref() != Some(hello.firmware_version.as_str())
    {
        record.agent_version = Some(hello.agent_version);
        record.firmware_version = Some(hello.firmware_version);
        record.updated_at = now;
        changed = true;
    }
    Ok(Decision {
        write: changed.then_some(record),
        events,
        response: Response::Ack,
    })
}
