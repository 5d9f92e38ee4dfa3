//! A device's whole history in one file anyone can verify offline with the owner root alone:
//! its audit entries, its IDevID key and voucher, every LDevID, its firmware manifests, its
//! wipe attestation and certificate of sanitization, and a statement signed by the issuing CA
//! (COSE_Sign1) that names the log head at export and the hash of every entry and part.
//!
//! The statement is what binds the bundle: change a byte of any part or entry, drop an entry or
//! reorder them, and the hashes no longer match the signed list. Entries of the device that
//! follow each other in the log also prove their link directly (each names the hash of the one
//! before). Entries of other devices in between are left out (they are other owners'
//! business), so between two of the device's entries the chain is vouched for by the
//! signature rather than shown; `interop-tests/python/verify_history.py` checks all of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{OperatorError, Service};
use crate::core::DeviceId;

/// The bundle's format name.
pub const HISTORY_FORMAT: &str = "onboarder-device-history/1";
/// Content type of the signed statement.
pub const STATEMENT_CONTENT_TYPE: &str = "application/vnd.onboarder.history-statement+cbor";

/// What the issuing CA signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// [`HISTORY_FORMAT`].
    pub format: String,
    /// The device, `MAKER/SERIAL`.
    pub device: String,
    /// When the bundle was made (seconds since the epoch).
    pub issued_at: u64,
    /// The audit log's head then: its sequence number and hash.
    pub log_head: (u64, ByteBuf),
    /// Each of the device's entries: its sequence number and the SHA-256 of its stored bytes.
    pub entries: Vec<(u64, ByteBuf)>,
    /// Each part by kind: the SHA-256 of each of its items, in order.
    pub parts: BTreeMap<String, Vec<ByteBuf>>,
}

/// The exported history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryBundle {
    /// [`HISTORY_FORMAT`].
    pub format: String,
    /// The device, `MAKER/SERIAL`.
    pub device: String,
    /// The [`Statement`], COSE_Sign1 by the issuing CA's key.
    pub statement: ByteBuf,
    /// The certificate of that key (the issuing CA), DER: it chains to the owner root.
    pub signer: ByteBuf,
    /// The device's audit entries, as stored (their hashes are over these bytes), oldest first.
    pub entries: Vec<ByteBuf>,
    /// The parts by kind: `idevid-key` (raw public key), `voucher` (COSE_Sign1), `ldevid`
    /// (DER, oldest first), `firmware-manifest` (COSE_Sign1), `wipe-attestation`
    /// (COSE_Sign1) and `sanitization-certificate` (JSON), where the device has them.
    pub parts: BTreeMap<String, Vec<ByteBuf>>,
}

impl Service {
    /// The history bundle of device `id`, signed now.
    pub fn history(&self, id: &DeviceId) -> Result<HistoryBundle, OperatorError> {
        let record = self.device(id)?;
        let (head_seq, head_hash) = self.store.audit_head()?;
        let mut entries = Vec::new();
        let mut next = 1;
        while next <= head_seq {
            let page = self.audit_entries(next, 4096)?;
            let Some(last) = page.last() else { break };
            next = last.seq + 1;
            entries.extend(
                page.into_iter()
                    .filter(|e| e.seq <= head_seq && e.event.device.as_ref() == Some(id)),
            );
        }
        let mut parts: BTreeMap<String, Vec<ByteBuf>> = BTreeMap::new();
        let mut add = |kind: &str, bytes: Vec<u8>| {
            parts
                .entry(kind.to_string())
                .or_default()
                .push(ByteBuf::from(bytes));
        };
        if let Some(key) = &record.idevid_key {
            add("idevid-key", key.clone());
        }
        if let Some(voucher) = &record.voucher {
            add("voucher", voucher.clone());
        }
        for cert in &record.certificates {
            add("ldevid", cert.der.clone());
        }
        let mut manifests: Vec<Vec<u8>> = Vec::new();
        if let Ok(running) = self.running_release(id) {
            manifests.push(running.manifest);
        }
        if let Some(job) = &record.firmware_job
            && !manifests.contains(&job.manifest)
        {
            manifests.push(job.manifest.clone());
        }
        for m in manifests {
            add("firmware-manifest", m);
        }
        if let Some(attestation) = record
            .decommission
            .as_ref()
            .and_then(|d| d.attestation.clone())
        {
            add("wipe-attestation", attestation);
            let certificate = self.sanitization_certificate(id)?;
            add(
                "sanitization-certificate",
                serde_json::to_vec_pretty(&certificate)
                    .map_err(|e| OperatorError::Internal(e.to_string()))?,
            );
        }
        let sha = |b: &[u8]| ByteBuf::from(protocol::manifest::sha256(b).to_vec());
        let statement = Statement {
            format: HISTORY_FORMAT.into(),
            device: id.to_string(),
            issued_at: self.now(),
            log_head: (head_seq, ByteBuf::from(head_hash.to_vec())),
            entries: entries.iter().map(|e| (e.seq, sha(&e.stored))).collect(),
            parts: parts
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().map(|b| sha(b)).collect()))
                .collect(),
        };
        let registrar = self.registrar();
        let signed = protocol::cose::sign(
            protocol::cbor::to_vec(&statement),
            STATEMENT_CONTENT_TYPE,
            registrar.issuing.ca.key(),
        )
        .map_err(|e| OperatorError::Internal(format!("signing the history: {e}")))?;
        Ok(HistoryBundle {
            format: HISTORY_FORMAT.into(),
            device: id.to_string(),
            statement: ByteBuf::from(signed),
            signer: ByteBuf::from(registrar.issuing.ca.cert_der().to_vec()),
            entries: entries
                .into_iter()
                .map(|e| ByteBuf::from(e.stored))
                .collect(),
            parts,
        })
    }
}
