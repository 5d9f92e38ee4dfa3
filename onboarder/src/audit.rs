//! The tamper-evident audit log: each entry carries the SHA-256 of the previous one.
//!
//! The store appends entries in the same atomic write as the state change they describe, and
//! assigns sequence numbers and hashes itself, so the chain has no gaps and no forks. Anyone with
//! the entries can re-check the chain with [`verify_chain`].

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::DeviceId;

/// Hash that the first entry names as its predecessor.
pub const GENESIS: [u8; 32] = [0; 32];

/// What happened, by whom, to which device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (seconds since the epoch).
    pub at: u64,
    /// Who: `device:<maker>/<serial>`, `operator`, or `system`.
    pub actor: String,
    /// Which device, if any.
    #[serde(default)]
    pub device: Option<DeviceId>,
    /// What, as a stable kebab-case name (`voucher-issued`, `enrolled`, `refused`, ...).
    pub action: String,
    /// Details for a human; never key material.
    pub detail: String,
}

impl AuditEvent {
    /// An event caused by a device.
    pub fn device(id: &DeviceId, action: &str, detail: impl Into<String>, at: u64) -> Self {
        AuditEvent {
            at,
            actor: format!("device:{id}"),
            device: Some(id.clone()),
            action: action.to_string(),
            detail: detail.into(),
        }
    }

    /// An event caused by the operator.
    pub fn operator(
        device: Option<&DeviceId>,
        action: &str,
        detail: impl Into<String>,
        at: u64,
    ) -> Self {
        AuditEvent {
            at,
            actor: "operator".to_string(),
            device: device.cloned(),
            action: action.to_string(),
            detail: detail.into(),
        }
    }
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    #[serde(with = "serde_bytes")]
    pub prev: Vec<u8>,
    /// The event.
    pub event: AuditEvent,
}

impl AuditEntry {
    /// The entry's hash: SHA-256 of its CBOR encoding.
    pub fn hash(&self) -> [u8; 32] {
        let d = digest(&SHA256, &protocol::cbor::to_vec(self));
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// A broken chain.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuditError {
    /// An entry's sequence number is not its predecessor's plus one.
    #[error("audit entry {found} follows {previous}: entries are missing or reordered")]
    Gap {
        /// Sequence number of the previous entry.
        previous: u64,
        /// Sequence number found.
        found: u64,
    },
    /// An entry does not carry its predecessor's hash.
    #[error("audit entry {0} does not carry the hash of its predecessor: the log was altered")]
    BrokenLink(u64),
    /// The last entry's hash is not the recorded head.
    #[error(
        "the last audit entry does not match the recorded head: entries were removed or altered"
    )]
    HeadMismatch,
}

/// Summary of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSummary {
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last entry, hex.
    pub head: String,
}

/// Checks a log entry by entry, so a long log can be verified page by page.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    prev_hash: [u8; 32],
    prev_seq: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            prev_hash: GENESIS,
            prev_seq: 0,
        }
    }
}

impl ChainVerifier {
    /// Checks the next entry.
    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), AuditError> {
        if entry.seq != self.prev_seq + 1 {
            return Err(AuditError::Gap {
                previous: self.prev_seq,
                found: entry.seq,
            });
        }
        if entry.prev != self.prev_hash {
            return Err(AuditError::BrokenLink(entry.seq));
        }
        self.prev_hash = entry.hash();
        self.prev_seq = entry.seq;
        Ok(())
    }

    /// Checks that the last entry is the recorded head.
    pub fn finish(self, head: &[u8; 32]) -> Result<ChainSummary, AuditError> {
        if &self.prev_hash != head {
            return Err(AuditError::HeadMismatch);
        }
        Ok(ChainSummary {
            entries: self.prev_seq,
            head: certs::inspect::hex(&self.prev_hash),
        })
    }
}

/// Verifies a whole log, in order, against the recorded head hash.
pub fn verify_chain(
    entries: impl IntoIterator<Item = AuditEntry>,
    head: &[u8; 32],
) -> Result<ChainSummary, AuditError> {
    let mut verifier = ChainVerifier::default();
    for entry in entries {
        verifier.push(&entry)?;
    }
    verifier.finish(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (Vec<AuditEntry>, [u8; 32]) {
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for seq in 1..=n {
            let e = AuditEntry {
                seq,
                prev: prev.to_vec(),
                event: AuditEvent::operator(None, "enrolled", format!("#{seq}"), seq),
            };
            prev = e.hash();
            out.push(e);
        }
        (out, prev)
    }

    #[test]
    fn a_good_chain_verifies() {
        let (entries, head) = chain(5);
        assert_eq!(verify_chain(entries, &head).unwrap().entries, 5);
        assert_eq!(verify_chain(Vec::new(), &GENESIS).unwrap().entries, 0);
    }

    #[test]
    fn tampering_removal_and_truncation_are_detected() {
        let (mut entries, head) = chain(5);
        entries[2].event.detail = "changed".into();
        assert_eq!(verify_chain(entries, &head), Err(AuditError::BrokenLink(4)));
        let (mut entries, head) = chain(5);
        entries.remove(1);
        assert!(matches!(
            verify_chain(entries, &head),
            Err(AuditError::Gap { .. })
        ));
        let (mut entries, head) = chain(5);
        entries.pop();
        assert_eq!(verify_chain(entries, &head), Err(AuditError::HeadMismatch));
    }
}
