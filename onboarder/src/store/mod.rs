//! Server state behind one trait, so the lifecycle logic never sees a storage engine.
//!
//! Reads return records; every write is a [`Change`]: device records (each naming the version
//! it was decided on), trust anchors and audit events, applied atomically and durably (flushed)
//! before [`Store::commit`] resolves. A change whose device versions moved meanwhile is refused
//! with [`StoreError::Conflict`] and nothing of it is applied; the caller re-reads and decides
//! again.
//!
//! [`sled`] is the embedded default. It groups the changes of many concurrent requests into one
//! batch and one flush (group commit). Every backend encodes device records through
//! [`seal::RecordCodec`], which encrypts their network credentials. Firmware images are kept
//! apart, behind [`images::ImageStore`] (a directory by default).
//!
//! The behaviour every backend must have is one battery of tests
//! ([`sled`]'s tests run it; the next backend runs the same).

#[cfg(test)]
pub(crate) mod battery;
pub(crate) mod group;
pub mod images;
pub mod postgres;
pub mod seal;
pub mod sled;
pub mod space;

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::audit::{AuditEntry, AuditEvent};
use crate::core::campaign::Campaign;
use crate::core::release::{FirmwareKey, Release};
use crate::core::{DeviceId, DeviceRecord};

pub use crate::core::import::Anchor;

/// Why the store could not serve a request.
#[non_exhaustive]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A device changed since it was read; nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Io(String),
    /// Stored data could not be decoded.
    #[error("corrupt record {key}: {detail}")]
    Corrupt {
        /// The key.
        key: String,
        /// Decoder detail.
        detail: String,
    },
    /// The disk of the data directory is full: nothing was written (the store writes again
    /// once space returns).
    #[error(
        "the data directory's disk is full ({free} bytes free, {reserve} kept in reserve): \
         nothing was written; free space and retry"
    )]
    DiskFull {
        /// Bytes free.
        free: u64,
        /// Bytes kept free.
        reserve: u64,
    },
    /// The store has shut down.
    #[error("the store is closed")]
    Closed,
}

/// What a device write expects to find, so that concurrent decisions cannot both land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The device must not exist yet.
    Absent,
    /// The device must still be at this version.
    Version(u64),
}

impl Expect {
    /// The version a write under this expectation gives its record (every store numbers
    /// versions so): what the job index orders a device's reports by.
    pub fn written(self) -> u64 {
        match self {
            Expect::Absent => 1,
            Expect::Version(v) => v + 1,
        }
    }
}

impl From<Option<&DeviceRecord>> for Expect {
    fn from(read: Option<&DeviceRecord>) -> Self {
        read.map_or(Expect::Absent, |r| Expect::Version(r.version))
    }
}

/// A device record to write.
#[derive(Debug, Clone)]
pub struct DeviceWrite {
    /// The new record (its `version` is set by the store).
    pub record: DeviceRecord,
    /// What must be there now.
    pub expect: Expect,
}

/// A certificate that no longer authenticates its device (revoked, or superseded by a
/// renewal), indexed by certificate serial for the CRL and the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Certificate serial, hex.
    pub cert_serial: String,
    /// Key identifier of the issuing CA.
    #[serde(with = "serde_bytes")]
    pub issuer: Vec<u8>,
    /// The device.
    pub device: DeviceId,
    /// Why (RFC 5280 reason).
    pub reason: certs::crl::Reason,
    /// Revocation time as published in the CRL.
    pub revoked_at: u64,
    /// From when the certificate is refused (later than `revoked_at` for a superseded
    /// certificate's grace period).
    pub effective_at: u64,
    /// The certificate's notAfter: after it, the entry can leave the CRL.
    pub not_after: u64,
}

/// One atomic write.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Device records.
    pub devices: Vec<DeviceWrite>,
    /// Trust anchors to add (or replace, by fingerprint).
    pub anchors: Vec<Anchor>,
    /// Revocations to index (replacing an earlier entry for the same certificate).
    pub revocations: Vec<Revocation>,
    /// Serials of indexed revocations to forget (their certificates have expired: no CRL
    /// lists them and no handshake accepts them any more).
    pub forget_revocations: Vec<String>,
    /// Small named values (counters such as CRL numbers).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Firmware releases to add (or replace, by digest).
    pub releases: Vec<Release>,
    /// Campaigns to write (whole).
    pub campaigns: Vec<Campaign>,
    /// Firmware-signing keys to add (or replace, by fingerprint).
    pub firmware_keys: Vec<FirmwareKey>,
    /// Audit events to append, in order.
    pub audit: Vec<AuditEvent>,
    /// Counters to move, by name, in the same write (devices per state, certificates per
    /// status: the service derives them from the device writes), so that reading them costs
    /// one lookup whatever the fleet's size.
    pub tallies: Vec<(String, i64)>,
    /// Device index entries to put (`Some`: the device the key finds) or delete (`None`),
    /// derived by the service like the tallies (see [`crate::core::query`]).
    pub index: Vec<(String, Option<DeviceId>)>,
}

impl Change {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
            && self.anchors.is_empty()
            && self.revocations.is_empty()
            && self.forget_revocations.is_empty()
            && self.meta.is_empty()
            && self.releases.is_empty()
            && self.campaigns.is_empty()
            && self.firmware_keys.is_empty()
            && self.audit.is_empty()
            && self.tallies.is_empty()
            && self.index.is_empty()
    }
}

/// The name of the tally of devices in `state`.
pub fn state_tally(state: &crate::core::DeviceState) -> String {
    crate::core::query::term("state", &state.to_string())
}

/// The name of the tally of live certificates expiring on `day` (days since the epoch).
pub fn expiry_tally(day: u64) -> String {
    format!("{EXPIRES_ON}{day:08}")
}

/// Prefix of the tallies of live certificates by day of expiry.
pub const EXPIRES_ON: &str = "expires-on/";

/// The tallies `record` counts in: each of its index terms (state, class, firmware, tags,
/// attributes), its certificates' statuses (`certificates/<status>`, one per certificate) and
/// the day its newest live certificate expires.
pub(crate) fn tallies_of(record: &DeviceRecord) -> Vec<String> {
    let mut names = crate::core::query::terms_of(record);
    names.extend(
        record
            .certificates
            .iter()
            .map(|c| format!("certificates/{}", c.status.name())),
    );
    if let Some(at) = crate::core::query::expiry(record) {
        names.push(expiry_tally(at / 86_400));
    }
    names
}

/// The tallies and index entries of `records`: what a store that has none yet starts from.
pub fn derive_all<'a>(
    records: impl IntoIterator<Item = &'a DeviceRecord>,
) -> (
    std::collections::BTreeMap<String, i64>,
    Vec<(String, DeviceId)>,
) {
    let mut tallies = std::collections::BTreeMap::new();
    let mut index = Vec::new();
    for record in records {
        for name in tallies_of(record) {
            *tallies.entry(name).or_insert(0) += 1;
        }
        index.extend(
            crate::core::query::index_keys(record)
                .into_iter()
                .map(|k| (k, record.id.clone())),
        );
    }
    (tallies, index)
}

/// Resolves once a change is durable (or refused).
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// Server state.
pub trait Store: Send + Sync + 'static {
    /// One device.
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
    /// The devices `ids` names, in the same order (`None` for one that does not exist). One
    /// read each unless the backend can do better (PostgreSQL: one query).
    fn devices_by_id(&self, ids: &[DeviceId]) -> Result<Vec<Option<DeviceRecord>>, StoreError> {
        ids.iter().map(|id| self.device(id)).collect()
    }
    /// Devices in id order (maker, then serial), starting after `after`.
    fn devices(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Number of devices.
    fn device_count(&self) -> Result<u64, StoreError>;
    /// Imported trust anchors.
    fn anchors(&self) -> Result<Vec<Anchor>, StoreError>;
    /// Every indexed revocation.
    fn revocations(&self) -> Result<Vec<Revocation>, StoreError>;
    /// A named value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Named values whose name starts with `prefix`, in name order.
    fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// One release, by the SHA-256 of its image.
    fn release(&self, digest: &[u8]) -> Result<Option<Release>, StoreError>;
    /// Every release.
    fn releases(&self) -> Result<Vec<Release>, StoreError>;
    /// One campaign.
    fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError>;
    /// Every campaign.
    fn campaigns(&self) -> Result<Vec<Campaign>, StoreError>;
    /// Every firmware-signing key.
    fn firmware_keys(&self) -> Result<Vec<FirmwareKey>, StoreError>;
    /// Audit entries from sequence number `from` (1-based), at most `limit`.
    fn audit(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
    /// Sequence number and hash of the last audit entry.
    fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError>;
    /// How this store's group commits went: changes per group, seconds per commit.
    fn commits(&self) -> std::sync::Arc<crate::metrics::Commits>;
    /// Every counter moved by [`Change::tallies`], by name (a counter never moved is absent).
    fn tallies(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError>;
    /// Device index entries whose key starts with `prefix`, in key order, after the key
    /// `after` (see [`crate::core::query`]).
    fn index(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeviceId)>, StoreError>;
    /// Applies a change atomically and durably.
    fn commit(&self, change: Change) -> CommitFuture;
    /// Takes or renews the lease `name` for `holder` for `ttl_secs`: whether `holder` holds it
    /// now. A lease held by another is taken only once it expired. Background work that must
    /// run once among replicas runs under one. A store only one process opens grants it always.
    fn lease(&self, _name: &str, _holder: &str, _ttl_secs: u64) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// Messages between the onboarders that share a store (replicas): what one of them must tell
/// the others (a command for a device connected elsewhere, a revocation). Text payloads, at
/// most [`MAX_RELAYED`] bytes; delivered to every replica, the sender included, at most once.
pub trait Relay: Send + Sync + 'static {
    /// Sends `payload` to every replica; may return before it is sent (in order, after the
    /// earlier ones).
    fn publish(&self, payload: String) -> Result<(), StoreError>;
    /// The payloads sent from now on.
    fn subscribe(&self) -> Result<tokio::sync::mpsc::UnboundedReceiver<String>, StoreError>;
}

/// Largest relayed payload (PostgreSQL's NOTIFY takes up to 8,000 bytes).
pub const MAX_RELAYED: usize = 7_900;
