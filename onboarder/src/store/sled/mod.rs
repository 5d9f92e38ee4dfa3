//! The embedded store on sled, with group commit.
//!
//! Layout, in one tree so that one `apply_batch` covers a whole change:
//!
//! ```text
//! d/<maker>/<serial> device record (CBOR, network credentials sealed: see super::seal)
//! t/<sha256 hex>  trust anchor (CBOR)
//! r/<cert serial> revocation (CBOR)
//! R/<sha256 hex>  firmware release (CBOR)
//! C/<id>          campaign (CBOR)
//! K/<sha256 hex>  firmware-signing key (CBOR)
//! m/<name>        named values (CRL numbers, ...)
//! a/<seq u64 BE>  audit entry (CBOR)
//! n/<name>        tally (i64 BE): devices per index term, certificates per status
//! x/<index key>   device index entry (see crate::core::query): the device id, as text
//! m/audit-head    seq (8 bytes BE) || hash (32 bytes) of the last audit entry
//! m/format        layout version (one byte); a store of another layout is not opened
//! ```
//!
//! One writer thread owns every write. It takes all changes waiting in its queue (up to
//! [`MAX_GROUP`](super::group::MAX_GROUP)), checks each against the stored versions, applies
//! the accepted ones in one atomic batch, flushes once, and then answers every waiter. Many
//! devices therefore share one flush instead of paying one each.
//!
//! Durability: sled's flush writes its log with `sync_file_range`, which survives a process
//! crash (the kill tests check this) but is weaker than `fsync` against power loss.

use std::collections::HashMap;
use std::path::Path;
use std::thread::JoinHandle;

mod writer;

use super::group::{self, Committer};
use super::seal::{RecordCodec, SealingKey};
use super::{Anchor, Change, CommitFuture, Revocation, Store, StoreError};
use crate::audit::{AuditEntry, GENESIS};
use crate::core::campaign::Campaign;
use crate::core::release::{FirmwareKey, Release};
use crate::core::{DeviceId, DeviceRecord};
use writer::Writer;

/// Largest stored value decoded.
const MAX_VALUE: usize = super::seal::MAX_RECORD;

pub(super) const HEAD_KEY: &[u8] = b"m/audit-head";
const FORMAT_KEY: &[u8] = b"m/format";
/// Layout 5: devices keyed by maker and serial, network credentials sealed, releases,
/// campaigns and firmware keys in their own key spaces, tallies and the device index.
const FORMAT: u8 = 5;
/// Layouts 3 (no tallies) and 4 (tallies of states and certificates, no index) lack only
/// what is derived from the records: they are upgraded in place.
const FORMATS_WITHOUT_INDEX: [u8; 2] = [3, 4];

/// The sled store. Dropping it stops the writer after the queued changes.
pub struct SledStore {
    db: sled::Db,
    codec: std::sync::Arc<RecordCodec>,
    queue: Committer,
    commits: std::sync::Arc<crate::metrics::Commits>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

pub(super) fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn device_key(id: &DeviceId) -> Vec<u8> {
    format!("d/{id}").into_bytes()
}

pub(super) fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = b"a/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    protocol::cbor::from_slice(value, MAX_VALUE).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

pub(super) fn read_head(db: &sled::Db) -> Result<(u64, [u8; 32]), StoreError> {
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
fn check_format(db: &sled::Db, codec: &RecordCodec) -> Result<(), StoreError> {
    match db.get(FORMAT_KEY).map_err(io)? {
        Some(v) if v.as_ref() == [FORMAT] => Ok(()),
        Some(v) if v.len() == 1 && FORMATS_WITHOUT_INDEX.contains(&v[0]) => derive(db, codec),
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

/// Upgrades layout 3 or 4: reads the devices once, and writes their tallies and index entries
/// (replacing any) with the new layout's number in one batch (a crash leaves the old layout,
/// derived again at the next start).
fn derive(db: &sled::Db, codec: &RecordCodec) -> Result<(), StoreError> {
    let mut records = Vec::new();
    for item in db.scan_prefix(b"d/") {
        let (key, value) = item.map_err(io)?;
        records.push(codec.decode(&key, &value)?);
    }
    let mut batch = sled::Batch::default();
    for prefix in [&b"n/"[..], b"x/"] {
        for item in db.scan_prefix(prefix) {
            batch.remove(item.map_err(io)?.0);
        }
    }
    let (tallies, index) = super::derive_all(&records);
    for (name, n) in tallies {
        batch.insert(tally_key(&name), &n.to_be_bytes());
    }
    for (key, id) in index {
        batch.insert(index_key(&key), id.to_string().as_bytes());
    }
    batch.insert(FORMAT_KEY, &[FORMAT]);
    db.apply_batch(batch).map_err(io)?;
    db.flush().map_err(io)?;
    Ok(())
}

pub(super) fn index_key(key: &str) -> Vec<u8> {
    format!("x/{key}").into_bytes()
}

pub(super) fn tally_key(name: &str) -> Vec<u8> {
    format!("n/{name}").into_bytes()
}

/// The tally `name` (0 when never moved).
pub(super) fn read_tally(db: &sled::Db, name: &str) -> Result<i64, StoreError> {
    match db.get(tally_key(name)).map_err(io)? {
        None => Ok(0),
        Some(v) => decode_tally(name, &v),
    }
}

fn decode_tally(name: &str, value: &[u8]) -> Result<i64, StoreError> {
    <[u8; 8]>::try_from(value)
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt {
            key: format!("n/{name}"),
            detail: "wrong length".into(),
        })
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
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(128 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput);
        // sled's flusher thread lets go of the lock a moment after the last handle in this
        // process is dropped: a store reopened at once (a restart in process) waits for it,
        // up to two seconds, before saying that someone else holds it.
        let mut opened = config.open();
        for _ in 0..40 {
            match &opened {
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    opened = config.open();
                }
                _ => break,
            }
        }
        let db = opened.map_err(|e| {
            StoreError::Io(format!(
                "opening {} (is another onboarder using it?): {e}",
                dir.display()
            ))
        })?;
        let codec = std::sync::Arc::new(RecordCodec::new(key));
        check_format(&db, &codec)?;
        restrict(dir)?;
        let head = read_head(&db)?;
        let commits = std::sync::Arc::new(crate::metrics::Commits::default());
        let (queue, groups) = group::queue(commits.clone());
        let writer_db = db.clone();
        let writer_dir = dir.to_path_buf();
        let writer_codec = codec.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                Writer {
                    dir: writer_dir,
                    db: writer_db,
                    codec: writer_codec,
                    head,
                    versions: HashMap::new(),
                    tallies: HashMap::new(),
                }
                .run(groups)
            })
            .map_err(|e| StoreError::Io(format!("starting the writer: {e}")))?;
        Ok(SledStore {
            db,
            codec,
            queue,
            commits,
            writer: Some(writer),
        })
    }
}

impl SledStore {
    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        self.db
            .get(key)
            .map_err(io)?
            .map(|v| decode(key, &v))
            .transpose()
    }

    fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                decode(&k, &v)
            })
            .collect()
    }
}

pub(super) fn release_key(digest: &[u8]) -> Vec<u8> {
    format!("R/{}", certs::inspect::hex(digest)).into_bytes()
}

pub(super) fn campaign_key(id: &str) -> Vec<u8> {
    format!("C/{id}").into_bytes()
}

pub(super) fn firmware_key_key(fingerprint: &str) -> Vec<u8> {
    format!("K/{fingerprint}").into_bytes()
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit.
        self.queue.close();
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
        self.scan(b"t/")
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.scan(b"r/")
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

    fn release(&self, digest: &[u8]) -> Result<Option<Release>, StoreError> {
        self.get(&release_key(digest))
    }

    fn releases(&self) -> Result<Vec<Release>, StoreError> {
        self.scan(b"R/")
    }

    fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        self.get(&campaign_key(id))
    }

    fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        self.scan(b"C/")
    }

    fn firmware_keys(&self) -> Result<Vec<FirmwareKey>, StoreError> {
        self.scan(b"K/")
    }

    fn audit(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.db
            .range(audit_key(from.max(1))..b"a0".to_vec())
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(io)?;
                AuditEntry::decode(&v).map_err(|e| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        read_head(&self.db)
    }

    fn commits(&self) -> std::sync::Arc<crate::metrics::Commits> {
        self.commits.clone()
    }

    fn tallies(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.db.scan_prefix(b"n/") {
            let (key, value) = item.map_err(io)?;
            let name = String::from_utf8_lossy(&key[2..]).into_owned();
            let n = decode_tally(&name, &value)?;
            out.insert(name, n);
        }
        Ok(out)
    }

    fn index(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeviceId)>, StoreError> {
        let start = match after {
            Some(a) if a.starts_with(prefix) => {
                let mut k = index_key(a);
                k.push(0);
                k
            }
            _ => index_key(prefix),
        };
        let full = index_key(prefix);
        let mut out = Vec::new();
        for item in self.db.range(start..).take(limit) {
            let (k, v) = item.map_err(io)?;
            if !k.starts_with(&full) {
                break;
            }
            let key = String::from_utf8_lossy(&k[2..]).into_owned();
            let id = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<DeviceId>().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: format!("x/{key}"),
                    detail: "not a device id".into(),
                })?;
            out.push((key, id));
        }
        Ok(out)
    }

    fn commit(&self, change: Change) -> CommitFuture {
        self.queue.commit(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour every store backend must have, on sled.
    #[tokio::test]
    async fn passes_the_store_battery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        crate::store::battery::run(|| {
            Box::new(SledStore::open(&path, SealingKey::from_bytes(&[1; 32]).unwrap()).unwrap())
        })
        .await;
    }

    /// A store reopened while the previous handle is still letting go (a restart in process)
    /// waits for its lock; one held for good is refused with a clear error.
    #[test]
    fn a_reopened_store_waits_for_the_lock_its_predecessor_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let key = || SealingKey::from_bytes(&[1; 32]).unwrap();
        let first = SledStore::open(&path, key()).unwrap();
        let closing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = SledStore::open(&path, key()).unwrap();
        closing.join().unwrap();
        let Err(StoreError::Io(message)) = SledStore::open(&path, key()) else {
            panic!("a store held by another handle was opened")
        };
        assert!(
            message.contains("is another onboarder using it?"),
            "{message}"
        );
        drop(second);
    }

    #[tokio::test]
    async fn a_store_of_another_layout_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"d/SN-1", b"old".to_vec()).unwrap();
            db.flush().unwrap();
        }
        // sled's flusher may hold the lock a moment after the first handle is gone.
        let mut opened = SledStore::open(dir.path(), SealingKey::from_bytes(&[1; 32]).unwrap());
        for _ in 0..100 {
            match &opened {
                Err(StoreError::Io(m)) if m.contains("another onboarder") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    opened = SledStore::open(dir.path(), SealingKey::from_bytes(&[1; 32]).unwrap());
                }
                _ => break,
            }
        }
        assert!(matches!(opened, Err(StoreError::Io(m)) if m.contains("serial alone")));
    }

    /// Opens `path`, waiting for sled's flusher of an earlier handle to let go of it.
    async fn reopen(path: &Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(path, SealingKey::from_bytes(&[1; 32]).unwrap()) {
                Err(StoreError::Io(m)) if m.contains("another onboarder") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                opened => return opened.unwrap(),
            }
        }
        panic!("the store stayed locked");
    }

    #[tokio::test]
    async fn stores_of_layouts_3_and_4_get_their_devices_counted_and_indexed_once() {
        for layout in FORMATS_WITHOUT_INDEX {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store");
            {
                let store = reopen(&path).await;
                for i in 0..3 {
                    let id = crate::core::DeviceId::new(
                        crate::core::MakerId::of_spki(b"maker"),
                        &format!("SN-{i}"),
                    )
                    .unwrap();
                    let record = DeviceRecord::expected(id, vec![1], None, 1);
                    let change = Change {
                        devices: vec![super::super::DeviceWrite {
                            record,
                            expect: super::super::Expect::Absent,
                        }],
                        ..Change::default()
                    };
                    store.commit(change).await.unwrap();
                }
                // As the old layout left it: no index; layout 3 had no tallies, layout 4 had
                // some (made wrong here, to see them replaced).
                for key in store.db.scan_prefix(b"n/").keys() {
                    store.db.remove(key.unwrap()).unwrap();
                }
                if layout == 4 {
                    let name = super::super::state_tally(&crate::core::DeviceState::Expected);
                    store
                        .db
                        .insert(tally_key(&name), &99i64.to_be_bytes())
                        .unwrap();
                }
                store.db.insert(FORMAT_KEY, &[layout]).unwrap();
                store.db.flush().unwrap();
            }
            let store = reopen(&path).await;
            let expected = super::super::state_tally(&crate::core::DeviceState::Expected);
            assert_eq!(
                store.tallies().unwrap().get(&expected),
                Some(&3),
                "{layout}"
            );
            let found = store.index("serial/SN-", None, 10).unwrap();
            assert_eq!(found.len(), 3, "{layout}");
            let found = store.index(&format!("{expected}/"), None, 10).unwrap();
            assert_eq!(found.len(), 3, "{layout}");
            assert_eq!(
                store.db.get(FORMAT_KEY).unwrap().unwrap().as_ref(),
                [FORMAT]
            );
        }
    }
}
