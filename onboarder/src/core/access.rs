//! Who may act on a device record: the checks every request starts with.

use super::error::LifecycleError;
use super::identity::DeviceId;
use super::peer::DevicePeer;
use super::record::{DeviceRecord, IssuedCert};
use super::state::DeviceState;

/// The record of `id`, or the refusal of a device we do not know.
pub(crate) fn known(
    id: &DeviceId,
    record: Option<DeviceRecord>,
) -> Result<DeviceRecord, LifecycleError> {
    record.ok_or_else(|| LifecycleError::UnknownDevice(id.clone()))
}

/// The record of an authenticated device that may still act: known and not quarantined.
pub(crate) fn usable(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
) -> Result<DeviceRecord, LifecycleError> {
    let record = known(&peer.id, record)?;
    if record.state == DeviceState::Quarantined {
        return Err(LifecycleError::Quarantined(record.id));
    }
    Ok(record)
}

/// Refuses an IDevID other than the one the device first onboarded with (a clone).
pub(crate) fn check_pinned_idevid(
    peer: &DevicePeer,
    record: &DeviceRecord,
) -> Result<(), LifecycleError> {
    match &record.idevid_key {
        Some(pinned) if pinned.as_slice() != peer.public_key.raw() => {
            Err(LifecycleError::Unauthorized(format!(
                "the IDevID presented for {} is not the one on record",
                peer.id
            )))
        }
        _ => Ok(()),
    }
}

/// The certificate an LDevID peer authenticated with, if the device may still use it. It must
/// be, byte for byte, a certificate we issued to this device.
pub(crate) fn ldevid<'a>(
    peer: &DevicePeer,
    record: &'a DeviceRecord,
    now: u64,
    grace: u64,
) -> Result<&'a IssuedCert, LifecycleError> {
    let cert = record
        .certificate(&peer.cert_serial)
        .filter(|c| {
            ring::digest::digest(&ring::digest::SHA256, &c.der).as_ref() == peer.cert_sha256
        })
        .ok_or_else(|| {
            LifecycleError::Unauthorized(format!(
                "certificate {} was not issued to {}",
                peer.cert_serial, peer.id
            ))
        })?;
    if !cert.accepted_at(now, grace) {
        return Err(LifecycleError::Unauthorized(format!(
            "certificate {} of {} is no longer accepted",
            peer.cert_serial, peer.id
        )));
    }
    Ok(cert)
}

/// Shortens a reason given by a device before it goes into the audit log.
pub(crate) fn truncate(reason: Option<String>) -> String {
    const MAX_REASON: usize = 256;
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
