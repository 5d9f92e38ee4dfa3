//! The embedded store on sled, with group commit.
//!
//! Layout, in one tree so that one `apply_batch` covers a whole change:
//!
//! ```text
//! d/<maker>/<serial> device record (CBOR, network credentials sealed: see super::seal)
//! t/<sha256 hex>  trust anchor (CBOR)
//! r/<cert serial> revocation (CBOR)
//! m/<name>        named values (CRL numbers, ...)
//! a/<seq u64 BE>  audit entry (CBOR)
//! m/audit-head    seq (8 bytes BE) || hash (32 bytes) of the last audit entry
//! m/format        layout version (one byte); a store of another layout is not opened
//! ```
//!
//! One writer thread owns every write. It takes all changes waiting in its queue (up to
//! [`MAX_GROUP`]), checks each against the stored versions, applies the accepted ones in one
//! atomic batch, flushes once, and then answers every waiter. Many devices therefore share one
//! flush instead of paying one each.
//!
//! Durability: sled's flush writes its log with `sync_file_range`, which survives a process
//! crash (the kill tests check this) but is weaker than `fsync` against power loss.

use std::collections::HashMap;
use std::path::Path;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::seal::{RecordCodec, SealingKey};
use super::{Anchor, Change, CommitFuture, Expect, Revocation, Store, StoreError};
use crate::audit::{AuditEntry, GENESIS};
use crate::core::{DeviceId, DeviceRecord};

/// Most changes applied in one batch and flush.
pub const MAX_GROUP: usize = 1024;
/// Changes waiting for the writer before committers wait for room.
const QUEUE: usize = 16 * 1024;
/// Largest stored value decoded.
const MAX_VALUE: usize = super::seal::MAX_RECORD;

const HEAD_KEY: &[u8] = b"m/audit-head";
const FORMAT_KEY: &[u8] = b"m/format";
/// Layout 2: devices keyed by maker and serial, network credentials sealed.
const FORMAT: u8 = 2;

struct Job {
    change: Change,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The sled store. Dropping it stops the writer after the queued changes.
pub struct SledStore {
    db: sled::Db,
    codec: std::sync::Arc<RecordCodec>,
    queue: mpsc::Sender<Job>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn device_key(id: &DeviceId) -> Vec<u8> {
    format!("d/{id}").into_bytes()
}

fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    protocol::cbor::from_slice(value, MAX_VALUE).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

fn read_head(db: &sled::Db) -> Result<(u64, [u8; 32]), StoreError> {
    match db.get(HEAD_KEY).map_err(io)? {
        None => Ok((0, GENESIS)),
        Some(v) if v.len() == 40 => {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&v[..8]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&v[8..]);
            Ok((u64::from_be_bytes(seq), hash))
        }
        Some(_) => Err(StoreError::Corrupt {
            key: "m/audit-head".into(),
            detail: "wrong length".into(),
        }),
    }
}

/// Refuses a store written in another layout, and marks a new one.
fn check_format(db: &sled::Db) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY).map_err(io)? {
        Some(v) if v.as_ref() == [FORMAT] => Ok(()),
        Some(v) => Err(StoreError::Io(format!(
            "the store has layout {:?}; this onboarder reads layout {FORMAT}",
            v.as_ref()
        ))),
        None if db.scan_prefix(b"d/").next().is_some() => Err(StoreError::Io(
            "the store was written by an onboarder that keyed devices by serial alone; \
             it cannot be read by this one (start from a new data directory)"
                .into(),
        )),
        None => {
            db.insert(FORMAT_KEY, &[FORMAT]).map_err(io)?;
            db.flush().map_err(io)?;
            Ok(())
        }
    }
}

/// Makes the store's directory and files readable by their owner only. sled creates its files
/// with the process umask; the onboarder's binary sets 077, and this covers an embedder that
/// did not.
#[cfg(unix)]
fn restrict(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let set = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| StoreError::Io(format!("restricting {}: {e}", path.display())))
    };
    set(dir, 0o700)?;
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::Io(e.to_string()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        set(&path, if path.is_dir() { 0o700 } else { 0o600 })?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_dir: &Path) -> Result<(), StoreError> {
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, sealing secrets with `key`. Must be called inside
    /// a Tokio runtime's reach only for [`Store::commit`]; opening itself is synchronous.
    pub fn open(dir: &Path, key: SealingKey) -> Result<SledStore, StoreError> {
        certs::files::create_private_dir(dir).map_err(|e| StoreError::Io(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(128 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| {
                StoreError::Io(format!(
                    "opening {} (is another onboarder using it?): {e}",
                    dir.display()
                ))
            })?;
        check_format(&db)?;
        restrict(dir)?;
        let head = read_head(&db)?;
        let codec = std::sync::Arc::new(RecordCodec::new(key));
        let (queue, rx) = mpsc::channel(QUEUE);
        let writer_db = db.clone();
        let writer_codec = codec.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                Writer {
                    db: writer_db,
                    codec: writer_codec,
                    head,
                    versions: HashMap::new(),
                }
                .run(rx)
            })
            .map_err(|e| StoreError::Io(format!("starting the writer: {e}")))?;
        Ok(SledStore {
            db,
            codec,
            queue,
            writer: Some(writer),
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit.
        let (closed, _) = mpsc::channel(1);
        self.queue = closed;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Store for SledStore {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let key = device_key(id);
        self.db
            .get(&key)
            .map_err(io)?
            .map(|v| self.codec.decode(&key, &v))
            .transpose()
    }

    fn devices(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let start = match after {
            Some(a) => {
                let mut k = device_key(a);
                k.push(0);
                k
            }
            None => b"d/".to_vec(),
        };
        self.db
            .range(start..b"d0".to_vec())
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                self.codec.decode(&k, &v)
            })
            .collect()
    }

    fn device_count(&self) -> Result<u64, StoreError> {
        Ok(self.db.scan_prefix(b"d/").count() as u64)
    }

    fn anchors(&self) -> Result<Vec<Anchor>, StoreError> {
        self.db
            .scan_prefix(b"t/")
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.db
            .scan_prefix(b"r/")
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(format!("m/{key}"))
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db
            .scan_prefix(format!("m/{prefix}"))
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                let name = String::from_utf8_lossy(&k[2..]).into_owned();
                Ok((name, v.to_vec()))
            })
            .collect()
    }

    fn audit(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.db
            .range(audit_key(from.max(1))..b"a0".to_vec())
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect()
    }

    fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        read_head(&self.db)
    }

    fn commit(&self, change: Change) -> CommitFuture {
        let queue = self.queue.clone();
        Box::pin(async move {
            if change.is_empty() {
                return Ok(());
            }
            let (done, result) = oneshot::channel();
            queue
                .send(Job { change, done })
                .await
                .map_err(|_| StoreError::Closed)?;
            result.await.map_err(|_| StoreError::Closed)?
        })
    }
}

/// The single writer: owns the audit head and every write.
struct Writer {
    db: sled::Db,
    codec: std::sync::Arc<RecordCodec>,
    head: (u64, [u8; 32]),
    /// Versions of the devices written or read so far. The writer is the only one who writes,
    /// so this stays true, and a version check does not decode a whole record.
    versions: HashMap<DeviceId, u64>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.commit_group(jobs);
        }
    }

    fn commit_group(&mut self, jobs: Vec<Job>) {
        let mut batch = sled::Batch::default();
        // Versions written earlier in this group, which later changes must see.
        let mut written: HashMap<DeviceId, u64> = HashMap::new();
        let mut head = self.head;
        let mut results = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let result = self.stage(&job.change, &mut batch, &mut written, &mut head);
            results.push(result);
        }
        let durable = if results.iter().any(Result::is_ok) {
            let mut head_value = head.0.to_be_bytes().to_vec();
            head_value.extend_from_slice(&head.1);
            batch.insert(HEAD_KEY, head_value);
            self.db
                .apply_batch(batch)
                .and_then(|()| self.db.flush().map(|_| ()))
                .map_err(io)
        } else {
            Ok(())
        };
        match durable {
            Ok(()) => {
                self.head = head;
                self.versions.extend(written);
            }
            Err(e) => {
                // The batch may or may not be on disk: trust only what the disk says.
                self.head = read_head(&self.db).unwrap_or(self.head);
                self.versions.clear();
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(e.clone());
                }
            }
        }
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.done.send(result);
        }
    }

    /// Checks one change against the store and the group so far; if it holds, adds all its
    /// writes to the batch. A refused change adds nothing.
    fn stage(
        &self,
        change: &Change,
        batch: &mut sled::Batch,
        written: &mut HashMap<DeviceId, u64>,
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
            let current = match written.get(id) {
                Some(v) => Some(*v),
                None => self.device_version(id)?,
            };
            let next = match (w.expect, current) {
                (Expect::Absent, None) => 1,
                (Expect::Version(v), Some(c)) if v == c => c + 1,
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
        for ((id, version), bytes) in next_versions.into_iter().zip(encoded) {
            batch.insert(device_key(&id), bytes);
            written.insert(id, version);
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
        for event in &change.audit {
            let entry = AuditEntry {
                seq: head.0 + 1,
                prev: head.1.to_vec(),
                event: event.clone(),
            };
            let hash = entry.hash();
            batch.insert(audit_key(entry.seq), protocol::cbor::to_vec(&entry));
            *head = (entry.seq, hash);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, verify_chain};
    use crate::core::MakerId;
    use crate::store::DeviceWrite;

    fn id(serial: &str) -> DeviceId {
        DeviceId::new(MakerId::of_spki(b"maker"), serial).unwrap()
    }

    fn open(dir: &Path) -> SledStore {
        SledStore::open(dir, SealingKey::from_bytes(&[1; 32]).unwrap()).unwrap()
    }

    fn change(record: DeviceRecord, expect: Expect) -> Change {
        Change {
            devices: vec![DeviceWrite { record, expect }],
            audit: vec![AuditEvent::operator(None, "test", "", 1)],
            ..Change::default()
        }
    }

    #[tokio::test]
    async fn versions_guard_concurrent_writes_and_audit_chains() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let r = DeviceRecord::expected(id("SN-1"), vec![1], None, 1);
        store
            .commit(change(r.clone(), Expect::Absent))
            .await
            .unwrap();
        assert_eq!(
            store.commit(change(r.clone(), Expect::Absent)).await,
            Err(StoreError::Conflict(format!(
                "{}: expected Absent, found version Some(1)",
                id("SN-1")
            )))
        );
        let stored = store.device(&id("SN-1")).unwrap().unwrap();
        assert_eq!(stored.version, 1);
        store
            .commit(change(stored.clone(), Expect::Version(1)))
            .await
            .unwrap();
        assert!(matches!(
            store.commit(change(stored, Expect::Version(1))).await,
            Err(StoreError::Conflict(_))
        ));
        // Two successful changes, two audit entries; refused changes left none.
        let (seq, head) = store.audit_head().unwrap();
        assert_eq!(seq, 2);
        verify_chain(store.audit(1, 100).unwrap(), &head).unwrap();
    }

    #[tokio::test]
    async fn revocations_are_indexed_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let revocation = |serial: &str| Revocation {
            cert_serial: serial.into(),
            issuer: vec![1],
            device: id("SN-1"),
            reason: certs::crl::Reason::Superseded,
            revoked_at: 1,
            effective_at: 1,
            not_after: 2,
        };
        store
            .commit(Change {
                revocations: vec![revocation("aa"), revocation("bb")],
                ..Change::default()
            })
            .await
            .unwrap();
        store
            .commit(Change {
                forget_revocations: vec!["aa".into()],
                ..Change::default()
            })
            .await
            .unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.revocations().unwrap(), [revocation("bb")]);
    }

    #[tokio::test]
    async fn reopens_with_its_data_and_head() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            for i in 0..10 {
                let r = DeviceRecord::expected(id(&format!("SN-{i}")), vec![1], None, 1);
                store.commit(change(r, Expect::Absent)).await.unwrap();
            }
        }
        let store = open(dir.path());
        assert_eq!(store.device_count().unwrap(), 10);
        assert_eq!(store.devices(Some(&id("SN-5")), 100).unwrap().len(), 4);
        let (seq, head) = store.audit_head().unwrap();
        assert_eq!(seq, 10);
        verify_chain(store.audit(1, 100).unwrap(), &head).unwrap();
    }
}
