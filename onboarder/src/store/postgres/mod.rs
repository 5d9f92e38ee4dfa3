//! The store on PostgreSQL, for several onboarders on one database (replicas) or a database
//! the operator already runs and backs up. Behaves as the sled store does (the same battery of
//! tests), with the same group commit: one writer per process takes every change waiting
//! (up to [`MAX_GROUP`](super::group::MAX_GROUP)) and applies them in one transaction.
//!
//! In that transaction each change sits in a savepoint, so a change whose device versions
//! moved (another change of the group, or another replica, got there first) is undone alone
//! and refused with [`StoreError::Conflict`], which the service's loop decides again. Device
//! versions are checked by the writes themselves: an insert of a new device does nothing if
//! the device exists, an update names the version it was decided on; no row is read first.
//!
//! The audit log stays one hash chain across replicas: a batch starts by locking the chain's
//! head row (`SELECT ... FOR UPDATE`), links its entries to it and moves it at the end, so
//! batches that write audit entries commit one after another, whichever replica made them.
//! What that costs per batch: one row lock held for the batch's transaction, so the database
//! commits of all replicas are serialised (each is a group of up to
//! [`MAX_GROUP`](super::group::MAX_GROUP) changes).
//!
//! Reads are synchronous (the [`Store`] trait's): they run on the store's own runtime, which
//! owns the connections, and the caller waits for the answer (a loopback query takes a
//! fraction of a millisecond, as a sled read from disk would).

mod schema;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls, Statement, Transaction};

use super::group::{self, Committer, Group, Groups};
use super::seal::{RecordCodec, SealingKey};
use super::{Anchor, Change, CommitFuture, Expect, Revocation, Store, StoreError};
use crate::audit::{AuditEntry, GENESIS};
use crate::core::campaign::Campaign;
use crate::core::release::{FirmwareKey, Release};
use crate::core::{DeviceId, DeviceRecord};

/// Largest stored value decoded.
const MAX_VALUE: usize = super::seal::MAX_RECORD;

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Io(format!("PostgreSQL: {e}"))
}

fn corrupt(key: String, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key,
        detail: detail.to_string(),
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, StoreError> {
    protocol::cbor::from_slice(value, MAX_VALUE).map_err(|e| corrupt(key.to_string(), e))
}

/// An image kept in memory: its digest and bytes.
type HotImage = (Vec<u8>, Arc<[u8]>);

/// The PostgreSQL store. Dropping it stops its writer after the queued changes.
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    reader: Arc<Client>,
    /// The read of one device record (every request makes it), prepared once.
    read_device: Statement,
    /// Relayed messages on their way to the database, sent in order by one task so that the
    /// sender does not wait for them.
    notices: mpsc::UnboundedSender<String>,
    /// The channel of this schema's replicas.
    relay: String,
    url: String,
    codec: Arc<RecordCodec>,
    queue: Committer,
    commits: std::sync::Arc<crate::metrics::Commits>,
    /// The image last read, whole (a campaign serves one image to every device, chunk by
    /// chunk): digest and bytes.
    hot: std::sync::Mutex<Option<HotImage>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Connects to `url`, with the connection's driver on `runtime`.
async fn connect(url: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| StoreError::Io(format!("connecting to PostgreSQL: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!("PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}

/// Applies the migrations this database has not seen, under an advisory lock.
async fn migrate(client: &mut Client, codec: &RecordCodec) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::MIGRATION_LOCK],
    )
    .await
    .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS onboarder_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db)?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM onboarder_migrations",
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    let known = schema::MIGRATIONS.len() as i32;
    if applied > known {
        return Err(StoreError::Io(format!(
            "the database has schema version {applied}; this onboarder knows up to {known}"
        )));
    }
    let mut derive = false;
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO onboarder_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(db)?;
        derive |= schema::DERIVED.contains(&(i + 1));
    }
    if derive {
        derive_from_devices(&tx, codec).await?;
    }
    tx.commit().await.map_err(db)
}

/// Fills the tallies and the device index from the device records, replacing what was there
/// (the records stay still meanwhile: replicas of an earlier version still running would not
/// move them).
async fn derive_from_devices(tx: &Transaction<'_>, codec: &RecordCodec) -> Result<(), StoreError> {
    tx.batch_execute(
        "LOCK TABLE devices IN SHARE MODE; DELETE FROM tallies; DELETE FROM device_index",
    )
    .await
    .map_err(db)?;
    let rows = tx
        .query("SELECT maker, serial, record FROM devices", &[])
        .await
        .map_err(db)?;
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = format!("d/{}/{}", row.get::<_, &str>(0), row.get::<_, &str>(1));
        records.push(codec.decode(key.as_bytes(), row.get::<_, &[u8]>(2))?);
    }
    let (tallies, index) = super::derive_all(&records);
    let put_tally = tx
        .prepare("INSERT INTO tallies (name, n) VALUES ($1, $2)")
        .await
        .map_err(db)?;
    for (name, n) in tallies {
        tx.execute(&put_tally, &[&name, &n]).await.map_err(db)?;
    }
    let put_index = tx
        .prepare("INSERT INTO device_index (key, device) VALUES ($1, $2)")
        .await
        .map_err(db)?;
    for (key, id) in index {
        tx.execute(&put_index, &[&key, &id.to_string()])
            .await
            .map_err(db)?;
    }
    Ok(())
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host/db`, or `host=/run/dir
    /// dbname=...`), applies the schema's migrations, and starts the writer. Secrets are sealed
    /// with `key`, which every replica must share.
    pub fn open(url: &str, key: SealingKey) -> Result<PgStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("starting the store's runtime: {e}")))?;
        let connect_url = url.to_string();
        let codec = Arc::new(RecordCodec::new(key));
        let migrating = codec.clone();
        let (reader, writer, read_device, relay) = run_on(&runtime, async move {
            let url = connect_url;
            let mut writer = connect(&url).await?;
            migrate(&mut writer, &migrating).await?;
            let reader = connect(&url).await?;
            let read_device = reader
                .prepare("SELECT record FROM devices WHERE maker = $1 AND serial = $2")
                .await
                .map_err(db)?;
            let schema: String = reader
                .query_one("SELECT current_schema()", &[])
                .await
                .map_err(db)?
                .get(0);
            Ok((
                Arc::new(reader),
                writer,
                read_device,
                relay_channel(&schema),
            ))
        })?;
        let (notices, mut pending) = mpsc::unbounded_channel::<String>();
        let (notifier, channel) = (reader.clone(), relay.clone());
        runtime.spawn(async move {
            while let Some(payload) = pending.recv().await {
                if let Err(e) = notifier
                    .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                    .await
                {
                    tracing::warn!("telling the other replicas: {e}");
                }
            }
        });
        let commits = std::sync::Arc::new(crate::metrics::Commits::default());
        let (queue, groups) = group::queue(commits.clone());
        let writer_codec = codec.clone();
        runtime.spawn(async move {
            match Writer::new(writer, writer_codec).await {
                Ok(w) => w.run(groups).await,
                Err(e) => {
                    tracing::error!("the PostgreSQL store's writer did not start: {e}");
                    let mut groups = groups;
                    while let Some(group) = groups.next().await {
                        let refused = vec![Err(e.clone()); group.len()];
                        group.finish(refused);
                    }
                }
            }
        });
        Ok(PgStore {
            runtime: Some(runtime),
            reader,
            read_device,
            notices,
            relay,
            url: url.to_string(),
            codec,
            queue,
            commits,
            hot: std::sync::Mutex::new(None),
        })
    }

    /// Runs a read on the store's runtime and waits for it.
    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(
            Arc<Client>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().ok_or(StoreError::Closed)?;
        run_on(runtime, read(self.reader.clone()))
    }

    /// Every value of a one-column listing.
    fn values<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        sql: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let rows =
            self.read(move |c| Box::pin(async move { c.query(sql, &[]).await.map_err(db) }))?;
        rows.iter()
            .map(|row| decode(table, row.get::<_, &[u8]>(0)))
            .collect()
    }
}

/// Runs `future` on `runtime` from any thread (an async one included: the caller's thread only
/// waits) and returns its output.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    let wait = || rx.recv().map_err(|_| StoreError::Closed);
    // On a worker of a multi-threaded runtime, the worker's other tasks move to another thread
    // while this one waits for the database (a read takes a round trip, not a page-cache
    // lookup as on sled); elsewhere the thread just waits.
    let on_worker = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if on_worker {
        tokio::task::block_in_place(wait)?
    } else {
        wait()?
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Every commit was awaited by its caller; the runtime goes without blocking (a store
        // may be dropped from async code).
        self.queue.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The statements the writer uses, prepared once.
struct Statements {
    insert_device: Statement,
    update_device: Statement,
    device_version: Statement,
    put_anchor: Statement,
    put_revocation: Statement,
    forget_revocation: Statement,
    put_meta: Statement,
    put_release: Statement,
    put_campaign: Statement,
    put_firmware_key: Statement,
    put_audit: Statement,
    move_tally: Statement,
    put_index: Statement,
    drop_index: Statement,
    lock_head: Statement,
    move_head: Statement,
}

/// The single writer of this process: group commit.
struct Writer {
    client: Client,
    codec: Arc<RecordCodec>,
    sql: Statements,
}

impl Writer {
    async fn new(client: Client, codec: Arc<RecordCodec>) -> Result<Writer, StoreError> {
        let upsert = |table: &str, key: &str, value: &str| {
            format!(
                "INSERT INTO {table} ({key}, {value}) VALUES ($1, $2) \
                 ON CONFLICT ({key}) DO UPDATE SET {value} = EXCLUDED.{value}"
            )
        };
        let p = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await.map_err(db) }
        };
        let sql = Statements {
            insert_device: p("INSERT INTO devices (maker, serial, version, record) VALUES ($1, $2, 1, $3) ON CONFLICT (maker, serial) DO NOTHING".into()).await?,
            update_device: p("UPDATE devices SET version = $3, record = $4 WHERE maker = $1 AND serial = $2 AND version = $5".into()).await?,
            device_version: p("SELECT version FROM devices WHERE maker = $1 AND serial = $2".into()).await?,
            put_anchor: p(upsert("anchors", "fingerprint", "value")).await?,
            put_revocation: p(upsert("revocations", "cert_serial", "value")).await?,
            forget_revocation: p("DELETE FROM revocations WHERE cert_serial = $1".into()).await?,
            put_meta: p(upsert("meta", "name", "value")).await?,
            put_release: p(upsert("releases", "digest", "value")).await?,
            put_campaign: p(upsert("campaigns", "id", "value")).await?,
            put_firmware_key: p(upsert("firmware_keys", "fingerprint", "value")).await?,
            put_audit: p("INSERT INTO audit (seq, entry) VALUES ($1, $2)".into()).await?,
            move_tally: p("INSERT INTO tallies (name, n) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET n = tallies.n + EXCLUDED.n".into()).await?,
            put_index: p(upsert("device_index", "key", "device")).await?,
            drop_index: p("DELETE FROM device_index WHERE key = $1".into()).await?,
            lock_head: p("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE".into()).await?,
            move_head: p("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1".into()).await?,
        };
        Ok(Writer { client, codec, sql })
    }

    async fn run(mut self, mut groups: Groups) {
        while let Some(group) = groups.next().await {
            let results = match self.commit_group(&group).await {
                Ok(results) => results,
                Err(e) => vec![Err(e); group.len()],
            };
            group.finish(results);
        }
    }

    /// One transaction for the group: each change in a savepoint, undone alone if refused.
    async fn commit_group(
        &mut self,
        group: &Group,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let Writer { client, codec, sql } = self;
        let tx = client.transaction().await.map_err(db)?;
        let row = tx.query_one(&sql.lock_head, &[]).await.map_err(db)?;
        let seq: i64 = row.get(0);
        let hash: &[u8] = row.get(1);
        let mut head = (
            u64::try_from(seq).map_err(|_| corrupt("audit_head".into(), "negative seq"))?,
            <[u8; 32]>::try_from(hash).map_err(|_| corrupt("audit_head".into(), "hash length"))?,
        );
        let mut results = Vec::with_capacity(group.len());
        for change in group.changes() {
            tx.batch_execute("SAVEPOINT change").await.map_err(db)?;
            let before = head;
            match stage(&tx, sql, codec, change, &mut head).await {
                Ok(()) => {
                    tx.batch_execute("RELEASE SAVEPOINT change")
                        .await
                        .map_err(db)?;
                    results.push(Ok(()));
                }
                Err(e @ StoreError::Conflict(_)) => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT change")
                        .await
                        .map_err(db)?;
                    head = before;
                    results.push(Err(e));
                }
                Err(e) => return Err(e),
            }
        }
        let seq =
            i64::try_from(head.0).map_err(|_| corrupt("audit_head".into(), "seq overflow"))?;
        tx.execute(&sql.move_head, &[&seq, &head.1.as_slice()])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(results)
    }
}

/// Writes one change inside the group's transaction; a device whose version moved refuses it.
async fn stage(
    tx: &Transaction<'_>,
    sql: &Statements,
    codec: &RecordCodec,
    change: &Change,
    head: &mut (u64, [u8; 32]),
) -> Result<(), StoreError> {
    for (i, w) in change.devices.iter().enumerate() {
        let id = &w.record.id;
        if change.devices[..i].iter().any(|o| &o.record.id == id) {
            return Err(StoreError::Conflict(format!(
                "{id} written twice in one change"
            )));
        }
        let (maker, serial) = (id.maker.to_string(), id.serial.clone());
        let mut record = w.record.clone();
        record.version = w.expect.written();
        let written = match w.expect {
            Expect::Absent => {
                let bytes = codec.encode(&record)?;
                tx.execute(&sql.insert_device, &[&maker, &serial, &bytes])
                    .await
                    .map_err(db)?
            }
            Expect::Version(v) => {
                let bytes = codec.encode(&record)?;
                let (next, expected) = (version_i64(record.version)?, version_i64(v)?);
                tx.execute(
                    &sql.update_device,
                    &[&maker, &serial, &next, &bytes, &expected],
                )
                .await
                .map_err(db)?
            }
        };
        if written != 1 {
            let current: Option<i64> = tx
                .query_opt(&sql.device_version, &[&maker, &serial])
                .await
                .map_err(db)?
                .map(|r| r.get(0));
            let current = current.map(|v| v as u64);
            return Err(StoreError::Conflict(format!(
                "{id}: expected {:?}, found version {current:?}",
                w.expect
            )));
        }
    }
    for anchor in &change.anchors {
        tx.execute(
            &sql.put_anchor,
            &[&anchor.fingerprint, &protocol::cbor::to_vec(anchor)],
        )
        .await
        .map_err(db)?;
    }
    for r in &change.revocations {
        tx.execute(
            &sql.put_revocation,
            &[&r.cert_serial, &protocol::cbor::to_vec(r)],
        )
        .await
        .map_err(db)?;
    }
    for serial in &change.forget_revocations {
        tx.execute(&sql.forget_revocation, &[serial])
            .await
            .map_err(db)?;
    }
    for (name, value) in &change.meta {
        tx.execute(&sql.put_meta, &[name, value])
            .await
            .map_err(db)?;
    }
    for release in &change.releases {
        tx.execute(
            &sql.put_release,
            &[&release.digest, &protocol::cbor::to_vec(release)],
        )
        .await
        .map_err(db)?;
    }
    for campaign in &change.campaigns {
        tx.execute(
            &sql.put_campaign,
            &[&campaign.id, &protocol::cbor::to_vec(campaign)],
        )
        .await
        .map_err(db)?;
    }
    for key in &change.firmware_keys {
        tx.execute(
            &sql.put_firmware_key,
            &[&key.fingerprint, &protocol::cbor::to_vec(key)],
        )
        .await
        .map_err(db)?;
    }
    for (name, delta) in &change.tallies {
        tx.execute(&sql.move_tally, &[name, delta])
            .await
            .map_err(db)?;
    }
    for (key, device) in &change.index {
        match device {
            Some(id) => tx.execute(&sql.put_index, &[key, &id.to_string()]).await,
            None => tx.execute(&sql.drop_index, &[key]).await,
        }
        .map_err(db)?;
    }
    for event in &change.audit {
        let entry = AuditEntry::new(head.0 + 1, head.1, event.clone());
        let hash = entry.hash();
        tx.execute(&sql.put_audit, &[&version_i64(entry.seq)?, &entry.stored])
            .await
            .map_err(db)?;
        *head = (entry.seq, hash);
    }
    Ok(())
}

fn version_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Io(format!("version {v} out of range")))
}

impl Store for PgStore {
    fn device(&self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let (maker, serial) = (id.maker.to_string(), id.serial.clone());
        let statement = self.read_device.clone();
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_opt(&statement, &[&maker, &serial])
                    .await
                    .map_err(db)
            })
        })?;
        row.map(|r| {
            self.codec
                .decode(format!("d/{id}").as_bytes(), r.get::<_, &[u8]>(0))
        })
        .transpose()
    }

    fn devices(
        &self,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let after = after.map(|a| (a.maker.to_string(), a.serial.clone()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(move |c| {
            Box::pin(async move {
                match after {
                    Some((maker, serial)) => c
                        .query(
                            "SELECT maker, serial, record FROM devices WHERE (maker, serial) > ($1, $2) \
                             ORDER BY maker, serial LIMIT $3",
                            &[&maker, &serial, &limit],
                        )
                        .await,
                    None => c
                        .query(
                            "SELECT maker, serial, record FROM devices ORDER BY maker, serial LIMIT $1",
                            &[&limit],
                        )
                        .await,
                }
                .map_err(db)
            })
        })?;
        rows.iter()
            .map(|r| {
                let key = format!("d/{}/{}", r.get::<_, &str>(0), r.get::<_, &str>(1));
                self.codec.decode(key.as_bytes(), r.get::<_, &[u8]>(2))
            })
            .collect()
    }

    fn devices_by_id(&self, ids: &[DeviceId]) -> Result<Vec<Option<DeviceRecord>>, StoreError> {
        let makers: Vec<String> = ids.iter().map(|id| id.maker.to_string()).collect();
        let serials: Vec<String> = ids.iter().map(|id| id.serial.clone()).collect();
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT d.maker, d.serial, d.record FROM devices d \
                     JOIN unnest($1::text[], $2::text[]) AS w(maker, serial) \
                     ON d.maker = w.maker AND d.serial = w.serial",
                    &[&makers, &serials],
                )
                .await
                .map_err(db)
            })
        })?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let key = format!("d/{}/{}", r.get::<_, &str>(0), r.get::<_, &str>(1));
            let record = self.codec.decode(key.as_bytes(), r.get::<_, &[u8]>(2))?;
            found.insert(record.id.clone(), record);
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    fn device_count(&self) -> Result<u64, StoreError> {
        let count: i64 = self.read(|c| {
            Box::pin(async move {
                c.query_one("SELECT count(*) FROM devices", &[])
                    .await
                    .map(|r| r.get(0))
                    .map_err(db)
            })
        })?;
        Ok(count.max(0) as u64)
    }

    fn anchors(&self) -> Result<Vec<Anchor>, StoreError> {
        self.values("anchors", "SELECT value FROM anchors ORDER BY fingerprint")
    }

    fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        self.values(
            "revocations",
            "SELECT value FROM revocations ORDER BY cert_serial",
        )
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        self.read(move |c| {
            Box::pin(async move {
                c.query_opt("SELECT value FROM meta WHERE name = $1", &[&key])
                    .await
                    .map(|r| r.map(|r| r.get::<_, Vec<u8>>(0)))
                    .map_err(db)
            })
        })
    }

    fn meta_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT name, value FROM meta WHERE left(name, length($1)) = $1 ORDER BY name",
                    &[&prefix],
                )
                .await
                .map_err(db)
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
    }

    fn release(&self, digest: &[u8]) -> Result<Option<Release>, StoreError> {
        let digest = digest.to_vec();
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_opt("SELECT value FROM releases WHERE digest = $1", &[&digest])
                    .await
                    .map_err(db)
            })
        })?;
        row.map(|r| decode("releases", r.get::<_, &[u8]>(0)))
            .transpose()
    }

    fn releases(&self) -> Result<Vec<Release>, StoreError> {
        self.values("releases", "SELECT value FROM releases ORDER BY digest")
    }

    fn campaign(&self, id: &str) -> Result<Option<Campaign>, StoreError> {
        let id = id.to_string();
        let row = self.read(move |c| {
            Box::pin(async move {
                c.query_opt("SELECT value FROM campaigns WHERE id = $1", &[&id])
                    .await
                    .map_err(db)
            })
        })?;
        row.map(|r| decode("campaigns", r.get::<_, &[u8]>(0)))
            .transpose()
    }

    fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        self.values("campaigns", "SELECT value FROM campaigns ORDER BY id")
    }

    fn firmware_keys(&self) -> Result<Vec<FirmwareKey>, StoreError> {
        self.values(
            "firmware_keys",
            "SELECT value FROM firmware_keys ORDER BY fingerprint",
        )
    }

    fn audit(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let from = i64::try_from(from.max(1)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(move |c| {
            Box::pin(async move {
                c.query(
                    "SELECT seq, entry FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&from, &limit],
                )
                .await
                .map_err(db)
            })
        })?;
        rows.iter()
            .map(|r| {
                AuditEntry::decode(r.get::<_, &[u8]>(1))
                    .map_err(|e| corrupt(format!("audit/{}", r.get::<_, i64>(0)), e))
            })
            .collect()
    }

    fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        let row = self.read(|c| {
            Box::pin(async move {
                c.query_opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
                    .await
                    .map_err(db)
            })
        })?;
        match row {
            None => Ok((0, GENESIS)),
            Some(r) => {
                let seq: i64 = r.get(0);
                let hash: &[u8] = r.get(1);
                Ok((
                    seq.max(0) as u64,
                    <[u8; 32]>::try_from(hash)
                        .map_err(|_| corrupt("audit_head".into(), "hash length"))?,
                ))
            }
        }
    }

    fn commits(&self) -> std::sync::Arc<crate::metrics::Commits> {
        self.commits.clone()
    }

    fn tallies(&self) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows = self.read(|c| {
            Box::pin(async move {
                c.query("SELECT name, n FROM tallies", &[])
                    .await
                    .map_err(db)
            })
        })?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect())
    }

    fn index(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, DeviceId)>, StoreError> {
        // One range, so the planner walks the index in order and stops at the limit (with a
        // range and a separate cursor it read every entry of the prefix, then sorted them).
        let (from, after_from) = match after {
            Some(a) if a.starts_with(prefix) => (a.to_string(), true),
            _ => (prefix.to_string(), false),
        };
        // Keys in [prefix, prefix + U+10FFFF): every key that starts with the prefix.
        let upper = format!("{prefix}\u{10FFFF}");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(move |c| {
            Box::pin(async move {
                let sql = if after_from {
                    "SELECT key, device FROM device_index WHERE key > $1 AND key < $2 \
                     ORDER BY key LIMIT $3"
                } else {
                    "SELECT key, device FROM device_index WHERE key >= $1 AND key < $2 \
                     ORDER BY key LIMIT $3"
                };
                c.query(sql, &[&from, &upper, &limit]).await.map_err(db)
            })
        })?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let id = r
                    .get::<_, &str>(1)
                    .parse::<DeviceId>()
                    .map_err(|_| corrupt(format!("device_index {key}"), "not a device id"))?;
                Ok((key, id))
            })
            .collect()
    }

    fn lease(&self, name: &str, holder: &str, ttl_secs: u64) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let ttl = f64::from(u32::try_from(ttl_secs).unwrap_or(u32::MAX));
        self.read(move |c| {
            Box::pin(async move {
                // The database's clock decides expiry, so replicas' clocks need not agree.
                c.query_opt(
                    "INSERT INTO leases (name, holder, expires_at) \
                     VALUES ($1, $2, now() + make_interval(secs => $3)) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                     WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < now() \
                     RETURNING holder",
                    &[&name, &holder, &ttl],
                )
                .await
                .map(|row| row.is_some())
                .map_err(db)
            })
        })
    }

    fn commit(&self, change: Change) -> CommitFuture {
        self.queue.commit(change)
    }
}

/// The channel the replicas of the onboarder whose tables are in `schema` talk on
/// (LISTEN/NOTIFY). Channels belong to the database, not to a schema: onboarders in other
/// schemas of the same database must not hear them.
pub fn relay_channel(schema: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, schema.as_bytes());
    format!(
        "onboarder_relay_{}",
        certs::inspect::hex(&digest.as_ref()[..8])
    )
}

/// Replicas' messages by PostgreSQL's NOTIFY, which the database delivers at commit to every
/// connection that listens: no table, nothing kept.
impl super::Relay for PgStore {
    fn publish(&self, payload: String) -> Result<(), StoreError> {
        if payload.len() > super::MAX_RELAYED {
            return Err(StoreError::Io(format!(
                "a relayed message of {} bytes (at most {})",
                payload.len(),
                super::MAX_RELAYED
            )));
        }
        self.notices.send(payload).map_err(|_| StoreError::Closed)
    }

    fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<String>, StoreError> {
        let (url, channel) = (self.url.clone(), self.relay.clone());
        let runtime = self.runtime.as_ref().ok_or(StoreError::Closed)?;
        run_on(runtime, async move {
            let (client, mut connection) = tokio_postgres::connect(&url, NoTls)
                .await
                .map_err(|e| StoreError::Io(format!("connecting to PostgreSQL: {e}")))?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (ended, end) = oneshot::channel::<()>();
            tokio::spawn(async move {
                // Dropped when the connection ends, which ends the client's keeper below.
                let _ended = ended;
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            if tx.send(n.payload().to_string()).is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::error!("the replicas' channel was lost: {e}");
                            return;
                        }
                        None => return,
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await
                .map_err(db)?;
            // The connection lives as long as its client: keep it until the connection ends
            // (the receiver then sees the channel closed).
            tokio::spawn(async move {
                let _client = client;
                let _ = end.await;
            });
            Ok(rx)
        })
    }
}

/// Firmware images in the database beside the records, so that every replica serves them.
impl super::images::ImageStore for PgStore {
    fn put(&self, digest: &[u8], image: &[u8]) -> Result<(), StoreError> {
        let (key, image) = (digest.to_vec(), image.to_vec());
        self.read(move |c| {
            Box::pin(async move {
                c.execute(
                    "INSERT INTO images (digest, image) VALUES ($1, $2) \
                     ON CONFLICT (digest) DO UPDATE SET image = EXCLUDED.image",
                    &[&key, &image],
                )
                .await
                .map(|_| ())
                .map_err(db)
            })
        })?;
        // The memory copy must never disagree with the database.
        let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.as_ref().is_some_and(|(d, _)| d == digest) {
            *hot = None;
        }
        Ok(())
    }

    fn read(&self, digest: &[u8], offset: u64, length: u32) -> Result<Vec<u8>, StoreError> {
        if let Some(chunk) = self.read_hot(digest, offset, length) {
            return Ok(chunk);
        }
        let key = digest.to_vec();
        let size: Option<i32> = self.read(move |c| {
            Box::pin(async move {
                c.query_opt(
                    "SELECT octet_length(image) FROM images WHERE digest = $1",
                    &[&key],
                )
                .await
                .map(|r| r.map(|r| r.get(0)))
                .map_err(db)
            })
        })?;
        let size = size
            .ok_or_else(|| StoreError::Io(format!("no image {}", certs::inspect::hex(digest))))?;
        let key = digest.to_vec();
        if u64::try_from(size).unwrap_or(u64::MAX) > super::images::HOT_LIMIT {
            // Too large to keep: the part asked for (SQL counts from 1).
            let from = i32::try_from(offset.saturating_add(1)).unwrap_or(i32::MAX);
            let count = i32::try_from(length).unwrap_or(i32::MAX);
            return self.read(move |c| {
                Box::pin(async move {
                    c.query_one(
                        "SELECT substring(image FROM $2 FOR $3) FROM images WHERE digest = $1",
                        &[&key, &from, &count],
                    )
                    .await
                    .map(|r| r.get(0))
                    .map_err(db)
                })
            });
        }
        let image: Vec<u8> = self.read(move |c| {
            Box::pin(async move {
                c.query_one("SELECT image FROM images WHERE digest = $1", &[&key])
                    .await
                    .map(|r| r.get(0))
                    .map_err(db)
            })
        })?;
        let image: Arc<[u8]> = image.into();
        let chunk = super::images::slice(&image, offset, length).to_vec();
        *self.hot.lock().unwrap_or_else(|e| e.into_inner()) = Some((digest.to_vec(), image));
        Ok(chunk)
    }

    fn read_hot(&self, digest: &[u8], offset: u64, length: u32) -> Option<Vec<u8>> {
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        match hot.as_ref() {
            Some((d, image)) if d == digest => {
                Some(super::images::slice(image, offset, length).to_vec())
            }
            _ => None,
        }
    }
}

/// Creates a new, empty schema (`onboarder_<random>`) in the database at `url` and returns the
/// URL of a connection that works in it: a clean slate on a shared database, for tests and the
/// fleet simulator.
pub fn fresh_schema(url: &str) -> Result<String, StoreError> {
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
        .map_err(|_| StoreError::Io("no randomness".into()))?;
    let schema = format!("onboarder_{}", certs::inspect::hex(&random));
    let (create, name) = (url.to_string(), schema.clone());
    // On a thread of its own: the caller may be async, where a runtime cannot be dropped.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(e.to_string()))?;
        runtime.block_on(async move {
            let client = connect(&create).await?;
            client
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .await
                .map_err(db)
        })
    })
    .join()
    .map_err(|_| StoreError::Io("creating the schema".into()))??;
    Ok(
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let joiner = if url.contains('?') { '&' } else { '?' };
            format!("{url}{joiner}options=-csearch_path%3D{schema}")
        } else {
            format!("{url} options=-csearch_path={schema}")
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh schema of its own on the test database (`ONBOARDER_TEST_POSTGRES`, set by
    /// `scripts/test`): the URL that reaches it. `None` when no database is configured.
    pub(crate) fn test_database() -> Option<String> {
        let Ok(base) = std::env::var("ONBOARDER_TEST_POSTGRES") else {
            eprintln!("ONBOARDER_TEST_POSTGRES is not set: the PostgreSQL store is not tested");
            return None;
        };
        Some(fresh_schema(&base).expect("ONBOARDER_TEST_POSTGRES is set but cannot be reached"))
    }

    /// The behaviour every store backend must have, on PostgreSQL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_store_battery() {
        let Some(url) = test_database() else {
            return;
        };
        crate::store::battery::run(|| {
            Box::new(PgStore::open(&url, SealingKey::from_bytes(&[1; 32]).unwrap()).unwrap())
        })
        .await;
    }
}
