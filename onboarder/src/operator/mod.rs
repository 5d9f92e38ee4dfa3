//! What an operator can do, as methods of the [`Service`]; the HTTP API and the CLI are thin
//! layers over these.

pub mod api;
pub mod client;
pub mod control;
pub mod firmware;
pub mod orders;
pub mod sanitization;
pub mod views;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::audit::{AuditEntry, AuditError, AuditEvent, ChainSummary, ChainVerifier};
use crate::core::{DeviceRecord, DeviceState};
use crate::service::Service;
use crate::store::{Anchor, Change, DeviceWrite, Expect, StoreError};

/// Vouchers committed per atomic write during a bulk import.
const IMPORT_CHUNK: usize = 1000;
/// Audit entries read per page while verifying the chain.
const AUDIT_PAGE: usize = 4096;

/// Why an operator request failed.
#[non_exhaustive]
#[derive(Debug, Error)]
pub enum OperatorError {
    /// The input is not acceptable.
    #[error("{0}")]
    BadInput(String),
    /// No such thing.
    #[error("{0} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit chain is broken.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The lifecycle rules refuse the order.
    #[error(transparent)]
    Refused(crate::core::LifecycleError),
    /// The onboarder could not carry the order out (its PKI files, a background task): nothing
    /// in the order was wrong.
    #[error("{0}")]
    Internal(String),
}

/// The outcome of a bulk voucher import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// New devices now expected.
    pub imported: usize,
    /// Devices whose voucher was replaced (for example a renewed voucher).
    pub updated: usize,
    /// Vouchers already on file.
    pub unchanged: usize,
    /// Vouchers refused, with why.
    pub rejected: Vec<Rejected>,
}

/// One refused voucher of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Position in the bundle.
    pub index: usize,
    /// Serial, when the voucher could be read.
    pub serial: Option<String>,
    /// Why.
    pub reason: String,
}

enum Planned {
    Write(Box<DeviceWrite>, AuditEvent, bool),
    Unchanged,
    Rejected(Rejected),
}

impl Service {
    /// Imports a manufacturer root CA (PEM, one or more certificates) as a trust anchor for
    /// IDevIDs.
    pub async fn import_anchor(&self, pem: &str) -> Result<Vec<Anchor>, OperatorError> {
        let ders = certs::files::certs_from_pem(pem)
            .map_err(|e| OperatorError::BadInput(e.to_string()))?;
        if ders.is_empty() {
            return Err(OperatorError::BadInput(
                "no CERTIFICATE in the input".into(),
            ));
        }
        let now = self.now();
        let existing = self.store.anchors()?;
        let mut anchors = Vec::new();
        for der in ders {
            let info =
                certs::CertInfo::parse(&der).map_err(|e| OperatorError::BadInput(e.to_string()))?;
            if !info.is_ca {
                return Err(OperatorError::BadInput(format!(
                    "{} is not a CA certificate",
                    info.subject
                )));
            }
            crate::trust::TrustStore::check_anchor(&der).map_err(OperatorError::BadInput)?;
            let fingerprint = sha256_hex(&der);
            if existing.iter().any(|a| a.fingerprint == fingerprint) {
                continue;
            }
            anchors.push(Anchor {
                fingerprint,
                subject: info.subject,
                der,
                added_at: now,
            });
        }
        let audit = anchors
            .iter()
            .map(|a| {
                AuditEvent::operator(
                    None,
                    "anchor-imported",
                    format!("{} sha256:{}", a.subject, a.fingerprint),
                    now,
                )
            })
            .collect();
        self.store
            .commit(Change {
                anchors: anchors.clone(),
                audit,
                ..Change::default()
            })
            .await?;
        self.reload_trust()?;
        Ok(anchors)
    }

    /// Imports a bundle of vouchers (see [`protocol::voucher::encode_bundle`]). Each voucher
    /// must pin our owner root, name a valid serial and not have expired; the registrar does
    /// not check the manufacturer's signature (RFC 8995 5.6 leaves that to the device, which
    /// holds the manufacturer's key).
    pub async fn import_vouchers(&self, bundle: &[u8]) -> Result<ImportReport, OperatorError> {
        let vouchers = protocol::voucher::decode_bundle(bundle)
            .map_err(|e| OperatorError::BadInput(format!("voucher bundle: {e}")))?;
        let mut report = ImportReport::default();
        let numbered: Vec<(usize, Vec<u8>)> = vouchers.into_iter().enumerate().collect();
        for chunk in numbered.chunks(IMPORT_CHUNK) {
            self.import_chunk(chunk, &mut report).await?;
        }
        Ok(report)
    }

    async fn import_chunk(
        &self,
        chunk: &[(usize, Vec<u8>)],
        report: &mut ImportReport,
    ) -> Result<(), OperatorError> {
        for _ in 0..8 {
            let now = self.now();
            let mut seen = std::collections::HashSet::new();
            let mut planned = Vec::with_capacity(chunk.len());
            for (index, bytes) in chunk {
                planned.push(self.plan_voucher(*index, bytes, now, &mut seen)?);
            }
            let mut change = Change::default();
            let mut partial = ImportReport::default();
            for p in planned {
                match p {
                    Planned::Write(write, event, is_new) => {
                        change.devices.push(*write);
                        change.audit.push(event);
                        if is_new {
                            partial.imported += 1;
                        } else {
                            partial.updated += 1;
                        }
                    }
                    Planned::Unchanged => partial.unchanged += 1,
                    Planned::Rejected(r) => partial.rejected.push(r),
                }
            }
            match self.store.commit(change).await {
                Ok(()) => {
                    report.imported += partial.imported;
                    report.updated += partial.updated;
                    report.unchanged += partial.unchanged;
                    report.rejected.extend(partial.rejected);
                    return Ok(());
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("devices kept changing during the import".into()).into())
    }

    fn plan_voucher(
        &self,
        index: usize,
        bytes: &[u8],
        now: u64,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<Planned, OperatorError> {
        let reject = |serial: Option<String>, reason: String| {
            Ok(Planned::Rejected(Rejected {
                index,
                serial,
                reason,
            }))
        };
        let voucher = match protocol::voucher::Voucher::parse_unverified(bytes) {
            Ok(v) => v,
            Err(e) => return reject(None, e.to_string()),
        };
        let serial = voucher.serial_number.clone();
        if let Err(e) = certs::profile::validate_serial(&serial) {
            return reject(Some(serial), e.to_string());
        }
        if voucher.pinned_domain_cert != self.owner_root {
            return reject(Some(serial), "the voucher pins another owner's CA".into());
        }
        match voucher.expires_on {
            Some(e) if e <= now => return reject(Some(serial), format!("expired at {e}")),
            None => return reject(Some(serial), "a bulk voucher needs an expiry".into()),
            Some(_) => {}
        }
        if !seen.insert(serial.clone()) {
            return reject(Some(serial), "duplicate serial in the bundle".into());
        }
        let record = self.store.device(&serial)?;
        let expect = Expect::from(record.as_ref());
        match record {
            None => Ok(Planned::Write(
                Box::new(DeviceWrite {
                    record: DeviceRecord::expected(
                        &serial,
                        bytes.to_vec(),
                        voucher.expires_on,
                        now,
                    ),
                    expect,
                }),
                AuditEvent::operator(Some(&serial), "voucher-imported", "", now),
                true,
            )),
            Some(r) if r.voucher.as_deref() == Some(bytes) => Ok(Planned::Unchanged),
            Some(mut r) if matches!(r.state, DeviceState::Expected | DeviceState::Onboarding) => {
                r.voucher = Some(bytes.to_vec());
                r.voucher_expires_on = voucher.expires_on;
                r.updated_at = now;
                Ok(Planned::Write(
                    Box::new(DeviceWrite { record: r, expect }),
                    AuditEvent::operator(Some(&serial), "voucher-replaced", "", now),
                    false,
                ))
            }
            Some(r) => reject(Some(serial), format!("the device is {}", r.state)),
        }
    }

    /// One device.
    pub fn device(&self, serial: &str) -> Result<DeviceRecord, OperatorError> {
        self.store
            .device(serial)?
            .ok_or_else(|| OperatorError::NotFound(format!("device {serial}")))
    }

    /// Devices in serial order after `after`.
    pub fn devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, OperatorError> {
        Ok(self.store.devices(after, limit)?)
    }

    /// Number of devices in each state.
    pub fn state_counts(&self) -> Result<std::collections::BTreeMap<String, u64>, OperatorError> {
        let mut counts = std::collections::BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.devices(after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.serial.clone());
            for d in &page {
                *counts.entry(d.state.to_string()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    /// Imported manufacturer anchors.
    pub fn anchors(&self) -> Result<Vec<Anchor>, OperatorError> {
        Ok(self.store.anchors()?)
    }

    /// Audit entries from `from`.
    pub fn audit(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, OperatorError> {
        Ok(self.store.audit(from, limit)?)
    }

    /// Verifies the whole audit chain against the recorded head.
    pub fn verify_audit(&self) -> Result<ChainSummary, OperatorError> {
        let (_, head) = self.store.audit_head()?;
        let mut verifier = ChainVerifier::default();
        let mut from = 1;
        loop {
            let page = self.store.audit(from, AUDIT_PAGE)?;
            for entry in &page {
                verifier.push(entry)?;
            }
            match page.last() {
                Some(last) if page.len() == AUDIT_PAGE => from = last.seq + 1,
                _ => break,
            }
        }
        Ok(verifier.finish(&head)?)
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    certs::inspect::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
