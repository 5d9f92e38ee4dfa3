//! The single writer of the sled store: group commit.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    HEAD_KEY, audit_key, campaign_key, device_key, firmware_key_key, index_key, io, read_head,
    read_tally, release_key, tally_key,
};
use crate::audit::AuditEntry;
use crate::core::DeviceId;
use crate::store::group::{Group, Groups};
use crate::store::seal::RecordCodec;
use crate::store::{Change, Expect, StoreError};

/// The single writer: owns the audit head and every write.
pub(super) struct Writer {
    /// The store's directory (its disk's free space is checked before each batch).
    pub(super) dir: std::path::PathBuf,
    pub(super) db: sled::Db,
    pub(super) codec: Arc<RecordCodec>,
    pub(super) head: (u64, [u8; 32]),
    /// Versions of the devices written or read so far. The writer is the only one who writes,
    /// so this stays true, and a version check does not decode a whole record.
    pub(super) versions: HashMap<DeviceId, u64>,
    /// Tallies read or written so far (true for the same reason).
    pub(super) tallies: HashMap<String, i64>,
}

/// What the changes of a group wrote so far, which later changes of the group must see.
#[derive(Default)]
struct Written {
    versions: HashMap<DeviceId, u64>,
    tallies: HashMap<String, i64>,
}

impl Writer {
    pub(super) fn run(mut self, mut groups: Groups) {
        while let Some(group) = groups.blocking_next() {
            self.commit_group(group);
        }
    }

    fn commit_group(&mut self, group: Group) {
        let mut batch = sled::Batch::default();
        let mut written = Written::default();
        let mut head = self.head;
        let mut results = Vec::with_capacity(group.len());
        for change in group.changes() {
            let result = self.stage(change, &mut batch, &mut written, &mut head);
            results.push(result);
        }
        let durable = if results.iter().any(Result::is_ok) {
            let mut head_value = head.0.to_be_bytes().to_vec();
            head_value.extend_from_slice(&head.1);
            batch.insert(HEAD_KEY, head_value);
            crate::store::space::check(&self.dir, 0).and_then(|()| {
                self.db
                    .apply_batch(batch)
                    .and_then(|()| self.db.flush().map(|_| ()))
                    .map_err(io)
            })
        } else {
            Ok(())
        };
        match durable {
            Ok(()) => {
                self.head = head;
                self.versions.extend(written.versions);
                self.tallies.extend(written.tallies);
            }
            Err(e) => {
                // The batch may or may not be on disk: trust only what the disk says.
                self.head = read_head(&self.db).unwrap_or(self.head);
                self.versions.clear();
                self.tallies.clear();
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
            }
        }
        group.finish(results);
    }

    /// Checks one change against the store and the group so far; if it holds, adds all its
    /// writes to the batch. A refused change adds nothing.
    fn stage(
        &self,
        change: &Change,
        batch: &mut sled::Batch,
        written: &mut Written,
        head: &mut (u64, [u8; 32]),
    ) -> Result<(), StoreError> {
        let mut next_versions = Vec::with_capacity(change.devices.len());
        for w in &change.devices {
            let id = &w.record.id;
            if next_versions.iter().any(|(s, _)| s == id) {
                return Err(StoreError::Conflict(format!(
                    "{id} written twice in one change"
                )));
            }
            let current = match written.versions.get(id) {
                Some(v) => Some(*v),
                None => self.device_version(id)?,
            };
            let next = match (w.expect, current) {
                (Expect::Absent, None) => w.expect.written(),
                (Expect::Version(v), Some(c)) if v == c => w.expect.written(),
                (expect, current) => {
                    return Err(StoreError::Conflict(format!(
                        "{id}: expected {expect:?}, found version {current:?}"
                    )));
                }
            };
            next_versions.push((id.clone(), next));
        }
        let mut encoded = Vec::with_capacity(next_versions.len());
        for (w, (_, version)) in change.devices.iter().zip(&next_versions) {
            let mut record = w.record.clone();
            record.version = *version;
            encoded.push(self.codec.encode(&record)?);
        }
        let mut tallies = Vec::with_capacity(change.tallies.len());
        for (name, delta) in &change.tallies {
            let now = match written.tallies.get(name) {
                Some(n) => *n,
                None => self.tally(name)?,
            };
            tallies.push((name.clone(), now + delta));
        }
        // Nothing below can refuse the change: its writes join the batch.
        for ((id, version), bytes) in next_versions.into_iter().zip(encoded) {
            batch.insert(device_key(&id), bytes);
            written.versions.insert(id, version);
        }
        for (name, n) in tallies {
            batch.insert(tally_key(&name), &n.to_be_bytes());
            written.tallies.insert(name, n);
        }
        for (key, device) in &change.index {
            match device {
                Some(id) => batch.insert(index_key(key), id.to_string().as_bytes()),
                None => batch.remove(index_key(key)),
            }
        }
        for anchor in &change.anchors {
            let key = format!("t/{}", anchor.fingerprint);
            batch.insert(key.as_bytes(), protocol::cbor::to_vec(anchor));
        }
        for r in &change.revocations {
            let key = format!("r/{}", r.cert_serial);
            batch.insert(key.as_bytes(), protocol::cbor::to_vec(r));
        }
        for serial in &change.forget_revocations {
            batch.remove(format!("r/{serial}").as_bytes());
        }
        for (name, value) in &change.meta {
            batch.insert(format!("m/{name}").as_bytes(), value.as_slice());
        }
        for release in &change.releases {
            batch.insert(
                release_key(&release.digest),
                protocol::cbor::to_vec(release),
            );
        }
        for campaign in &change.campaigns {
            batch.insert(campaign_key(&campaign.id), protocol::cbor::to_vec(campaign));
        }
        for key in &change.firmware_keys {
            batch.insert(
                firmware_key_key(&key.fingerprint),
                protocol::cbor::to_vec(key),
            );
        }
        for event in &change.audit {
            let entry = AuditEntry::new(head.0 + 1, head.1, event.clone());
            let hash = entry.hash();
            batch.insert(audit_key(entry.seq), entry.stored);
            *head = (entry.seq, hash);
        }
        Ok(())
    }

    fn tally(&self, name: &str) -> Result<i64, StoreError> {
        if let Some(n) = self.tallies.get(name) {
            return Ok(*n);
        }
        read_tally(&self.db, name)
    }

    fn device_version(&self, id: &DeviceId) -> Result<Option<u64>, StoreError> {
        if let Some(v) = self.versions.get(id) {
            return Ok(Some(*v));
        }
        let key = device_key(id);
        match self.db.get(&key).map_err(io)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.codec.version(&key, &v)?)),
        }
    }
}
