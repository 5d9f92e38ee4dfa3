//! The manufacturer's voucher service (MASA, RFC 8995 5.5 and 5.8) as a decision, without the
//! network: a registrar's CMS-signed voucher request in, a nonced voucher out, each voucher
//! noted in an audit log that the registrar can read back. `factory masa serve` puts it on
//! HTTPS ([`serve`], feature `masa-server`).
//!
//! Who may ask: a registrar whose certificate chains to an owner root the manufacturer
//! registered (its sales records say the owner bought devices from it). The voucher pins that
//! owner root. Which devices: any device of this manufacturer; the pledge's own signed request
//! (carried in the registrar's) proves that the device asked, and its nonce makes the voucher
//! good for that request only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::CertInfo;
use crate::brski;
use crate::chain::{self, Usage};
use crate::factory::Manufacturer;

#[cfg(feature = "masa-server")]
pub mod serve;

/// Largest audit log kept per device: older entries are counted, not listed (RFC 8995 5.8.1
/// truncation).
const MAX_LOG_PER_DEVICE: usize = 64;

/// Why a MASA refused a request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MasaError {
    /// The request could not be read or its signature does not verify.
    #[error("bad voucher request: {0}")]
    BadRequest(String),
    /// The registrar's certificate chains to no owner this manufacturer knows.
    #[error("the registrar is not one of a known owner: {0}")]
    UnknownRegistrar(String),
    /// The pledge is not one of this manufacturer's devices, or its request does not match.
    #[error("refused: {0}")]
    Refused(String),
    /// The log could not be written.
    #[error("the MASA could not record the voucher: {0}")]
    Unavailable(String),
}

impl MasaError {
    /// The HTTP status that says it.
    pub fn status(&self) -> u16 {
        match self {
            MasaError::BadRequest(_) => 400,
            MasaError::UnknownRegistrar(_) | MasaError::Refused(_) => 403,
            MasaError::Unavailable(_) => 503,
        }
    }
}

/// One voucher as the MASA's audit log keeps it (RFC 8995 5.8.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The device's serial number.
    pub serial: String,
    /// When the voucher was made (RFC 3339).
    pub date: String,
    /// The owner it pins: the base64 subject key identifier of its root.
    #[serde(rename = "domainID")]
    pub domain_id: String,
    /// The nonce it answered (base64).
    pub nonce: Option<String>,
    /// Its assertion.
    pub assertion: String,
}

/// A manufacturer answering registrars.
pub struct MasaService {
    manufacturer: Manufacturer,
    owners: Vec<Vec<u8>>,
    log: Mutex<Vec<LogEntry>>,
    log_path: Option<PathBuf>,
}

impl MasaService {
    /// The MASA of `manufacturer` for the owners whose root certificates (DER) are `owners`,
    /// keeping its log in `log_path` (JSON lines, appended; read back at start) if given.
    pub fn new(
        manufacturer: Manufacturer,
        owners: Vec<Vec<u8>>,
        log_path: Option<&Path>,
    ) -> Result<MasaService, crate::CertError> {
        let mut log = Vec::new();
        if let Some(path) = log_path
            && path.exists()
        {
            let text = crate::files::read_limited(path, 64 * 1024 * 1024)?;
            for line in String::from_utf8_lossy(&text).lines() {
                // A torn last line (a crash while appending) is left out.
                if let Ok(entry) = serde_json::from_str(line) {
                    log.push(entry);
                }
            }
        }
        Ok(MasaService {
            manufacturer,
            owners,
            log: Mutex::new(log),
            log_path: log_path.map(Path::to_path_buf),
        })
    }

    /// The manufacturer.
    pub fn manufacturer(&self) -> &Manufacturer {
        &self.manufacturer
    }

    /// Checks a registrar voucher request: the registrar is a known owner's, the pledge one
    /// of ours that asked with this nonce. Returns the request, the pledge's IDevID and the
    /// owner root to pin.
    fn check(
        &self,
        signed: &[u8],
        now: u64,
    ) -> Result<(brski::RegistrarRequest, Vec<u8>, Vec<u8>), MasaError> {
        let opened = brski::open_registrar_request(signed)
            .map_err(|e| MasaError::BadRequest(e.to_string()))?;
        let owner = self
            .owners
            .iter()
            .find(|root| {
                chain::verify(
                    &opened.signer,
                    &opened.certificates,
                    std::slice::from_ref(*root),
                    now,
                    Usage::ServerAuth,
                )
                .is_ok()
            })
            .ok_or_else(|| {
                let who = CertInfo::parse(&opened.signer)
                    .map(|i| i.subject)
                    .unwrap_or_default();
                MasaError::UnknownRegistrar(who)
            })?
            .clone();
        let request = opened.request;
        let prior = &request.prior_signed_voucher_request;
        let root = [self.manufacturer.root_cert().to_vec()];
        let idevid = brski::request_certificates(prior)
            .into_iter()
            .chain(opened.certificates)
            .find(|c| {
                chain::verify(c, &[], &root, now, Usage::ClientAuth).is_ok()
                    && CertInfo::parse(c)
                        .is_ok_and(|i| brski::open_request(prior, &i.public_key).is_ok())
            })
            .ok_or_else(|| {
                MasaError::Refused(
                    "no IDevID of this manufacturer signed the pledge's voucher request".into(),
                )
            })?;
        let info = CertInfo::parse(&idevid).map_err(|e| MasaError::Refused(e.to_string()))?;
        let pledge = brski::open_request(prior, &info.public_key)
            .map_err(|e| MasaError::Refused(e.to_string()))?;
        let serial = info
            .device_serial()
            .map_err(|e| MasaError::Refused(e.to_string()))?;
        if request.serial_number != serial || pledge.serial_number != serial {
            return Err(MasaError::Refused(format!(
                "the request names {:?} and the pledge {:?}; its IDevID is {serial:?}",
                request.serial_number, pledge.serial_number
            )));
        }
        if pledge.nonce.is_empty() || request.nonce != pledge.nonce {
            return Err(MasaError::Refused(
                "the registrar's nonce is not the pledge's".into(),
            ));
        }
        Ok((request, idevid, owner))
    }

    /// Answers a registrar voucher request (RFC 8995 5.5) with a nonced voucher in the
    /// encoding of the pledge's request, and logs it.
    pub fn request_voucher(&self, signed: &[u8], now: u64) -> Result<Vec<u8>, MasaError> {
        let (request, idevid, owner) = self.check(signed, now)?;
        let voucher = self
            .manufacturer
            .nonced_voucher(&idevid, &request.prior_signed_voucher_request, &owner, now)
            .map_err(|e| MasaError::Refused(e.to_string()))?;
        let domain_id = CertInfo::parse(&owner)
            .ok()
            .and_then(|i| i.subject_key_id)
            .map(|k| B64.encode(k))
            .unwrap_or_default();
        let entry = LogEntry {
            serial: request.serial_number,
            date: crate::rfc3339(now),
            domain_id,
            nonce: Some(B64.encode(&request.nonce)),
            assertion: "proximity".into(),
        };
        self.append(entry)?;
        Ok(voucher)
    }

    fn append(&self, entry: LogEntry) -> Result<(), MasaError> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.log_path {
            let line =
                serde_json::to_string(&entry).map_err(|e| MasaError::Unavailable(e.to_string()))?;
            let unavailable =
                |e: std::io::Error| MasaError::Unavailable(format!("{}: {e}", path.display()));
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(unavailable)?;
            file.write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(unavailable)?;
        }
        log.push(entry);
        Ok(())
    }

    /// The audit log of the device a registrar request names (RFC 8995 5.8.1), for the
    /// registrar that sends the same request it sent for the voucher.
    pub fn audit_log(&self, signed: &[u8], now: u64) -> Result<Vec<u8>, MasaError> {
        let (request, _, _) = self.check(signed, now)?;
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<&LogEntry> = log
            .iter()
            .filter(|e| e.serial == request.serial_number)
            .collect();
        let dropped = entries.len().saturating_sub(MAX_LOG_PER_DEVICE);
        let events: Vec<serde_json::Value> = entries[dropped..]
            .iter()
            .map(|e| {
                serde_json::json!({
                    "date": e.date,
                    "domainID": e.domain_id,
                    "nonce": e.nonce,
                    "assertion": e.assertion,
                    "truncated": 0,
                })
            })
            .collect();
        let mut answer = serde_json::json!({ "version": "1", "events": events });
        if dropped > 0 {
            answer["truncation"] = serde_json::json!({ "nonced duplicates": dropped });
        }
        Ok(answer.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests;
