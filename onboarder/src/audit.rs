//! The tamper-evident audit log: each entry carries the SHA-256 of the previous one.
//!
//! The store appends entries in the same atomic write as the state change they describe, and
//! assigns sequence numbers and hashes itself, so the chain has no gaps and no forks. Anyone with
//! the entries can re-check the chain with [`verify_chain`].
//!
//! An entry's hash is over the bytes it was stored as, not over a re-encoding of what this build
//! decodes from them: an entry written by an older or newer build (a field this one does not
//! know, or lacks) still verifies. Entries carry their layout's version (`format`).

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::core::DeviceId;

/// Hash that the first entry names as its predecessor.
pub const GENESIS: [u8; 32] = [0; 32];

/// What happened, by whom, to which device.
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    fn by(
        actor: String,
        device: Option<&DeviceId>,
        action: &str,
        detail: impl Into<String>,
        at: u64,
    ) -> Self {
        AuditEvent {
            at,
            actor,
            device: device.cloned(),
            action: action.to_string(),
            detail: detail.into(),
        }
    }

    /// An event caused by a device.
    pub fn device(id: &DeviceId, action: &str, detail: impl Into<String>, at: u64) -> Self {
        AuditEvent::by(format!("device:{id}"), Some(id), action, detail, at)
    }

    /// An event the onboarder caused on its own (a date passed, a sweep).
    pub fn system(
        device: Option<&DeviceId>,
        action: &str,
        detail: impl Into<String>,
        at: u64,
    ) -> Self {
        AuditEvent::by("system".into(), device, action, detail, at)
    }

    /// An event caused by the operator.
    pub fn operator(
        device: Option<&DeviceId>,
        action: &str,
        detail: impl Into<String>,
        at: u64,
    ) -> Self {
        AuditEvent::by("operator".into(), device, action, detail, at)
    }
}

/// Layout of the entries this build writes: 2 records its version; 1 is the layout before
/// (no `format` field).
pub const FORMAT: u8 = 2;

/// Largest stored audit entry decoded (a wipe attestation is the largest detail).
const MAX_ENTRY: usize = 1024 * 1024;

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
    /// The layout it was written in ([`FORMAT`]; 1 when absent).
    #[serde(default = "format_1")]
    pub format: u8,
    /// The bytes it was stored as (its hash is over them); empty for an entry not stored yet.
    #[serde(skip)]
    pub stored: Vec<u8>,
}

fn format_1() -> u8 {
    1
}

impl AuditEntry {
    /// A new entry `seq` after the entry whose hash is `prev`, with its stored form.
    pub fn new(seq: u64, prev: [u8; 32], event: AuditEvent) -> Self {
        let mut entry = AuditEntry {
            seq,
            prev: prev.to_vec(),
            event,
            format: FORMAT,
            stored: Vec::new(),
        };
        entry.stored = protocol::cbor::to_vec(&entry);
        entry
    }

    /// An entry read back from its stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, protocol::DecodeError> {
        let mut entry: AuditEntry = protocol::cbor::from_slice(bytes, MAX_ENTRY)?;
        entry.stored = bytes.to_vec();
        Ok(entry)
    }

    /// The entry's hash: SHA-256 of its stored bytes (of its encoding, if not stored yet).
    pub fn hash(&self) -> [u8; 32] {
        let encoded;
        let bytes = if self.stored.is_empty() {
            encoded = protocol::cbor::to_vec(self);
            &encoded
        } else {
            &self.stored
        };
        let d = digest(&SHA256, bytes);
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
#[derive(utoipa::ToSchema, Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            let e = AuditEntry::new(
                seq,
                prev,
                AuditEvent::operator(None, "enrolled", format!("#{seq}"), seq),
            );
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

    /// An entry is hashed over the bytes it was stored as: one written before the format was
    /// recorded, or by a build that knows a field this one does not, still verifies.
    #[test]
    fn entries_of_other_layouts_still_verify() {
        #[derive(Serialize)]
        struct Old<'a> {
            seq: u64,
            #[serde(with = "serde_bytes")]
            prev: &'a [u8],
            event: AuditEvent,
        }
        #[derive(Serialize)]
        struct Newer<'a> {
            seq: u64,
            #[serde(with = "serde_bytes")]
            prev: &'a [u8],
            event: AuditEvent,
            format: u8,
            witness: &'a str,
        }
        let event = AuditEvent::operator(None, "enrolled", "x", 1);
        let old = protocol::cbor::to_vec(&Old {
            seq: 1,
            prev: &GENESIS,
            event: event.clone(),
        });
        let first = AuditEntry::decode(&old).unwrap();
        assert_eq!(first.format, 1);
        let h1 = first.hash();
        let newer = protocol::cbor::to_vec(&Newer {
            seq: 2,
            prev: &h1,
            event,
            format: 3,
            witness: "a field this build does not know",
        });
        let second = AuditEntry::decode(&newer).unwrap();
        let head: [u8; 32] = digest(&SHA256, &newer).as_ref().try_into().unwrap();
        assert_eq!(second.hash(), head);
        assert_eq!(verify_chain([first, second], &head).unwrap().entries, 2);
    }

    #[test]
    fn tampering_removal_and_truncation_are_detected() {
        // Someone rewrote the stored bytes of entry 3.
        let (mut entries, head) = chain(5);
        entries[2].event.detail = "changed".into();
        entries[2].stored = protocol::cbor::to_vec(&entries[2]);
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
