//! The schema, as numbered migrations applied in order at start, each once, in one transaction
//! under an advisory lock (so replicas starting together do not race).
//!
//! Values are the same CBOR as in the sled store (device records with their network
//! credentials sealed); keys are columns, text keys in the "C" collation so that every listing
//! comes in the byte order sled gives.

/// The migrations; the position is the version (1-based). Never edit one that shipped: add the
/// next.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first layout.
    r#"
    CREATE TABLE devices (
        maker TEXT COLLATE "C" NOT NULL,
        serial TEXT COLLATE "C" NOT NULL,
        version BIGINT NOT NULL,
        record BYTEA NOT NULL,
        PRIMARY KEY (maker, serial)
    );
    CREATE TABLE anchors (fingerprint TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE revocations (cert_serial TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE meta (name TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE releases (digest BYTEA PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE campaigns (id TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE firmware_keys (fingerprint TEXT COLLATE "C" PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE audit (seq BIGINT PRIMARY KEY, entry BYTEA NOT NULL);
    CREATE TABLE audit_head (
        id INT PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL,
        hash BYTEA NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
    CREATE TABLE images (digest BYTEA PRIMARY KEY, image BYTEA NOT NULL);
    "#,
    // 2: leases of the work that runs on one replica at a time.
    r#"
    CREATE TABLE leases (
        name TEXT COLLATE "C" PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    "#,
    // 3: tallies (devices per state), moved in the same transaction as the devices; filled
    // from the records when the migration runs (see `TALLIES`).
    r#"
    CREATE TABLE tallies (name TEXT COLLATE "C" PRIMARY KEY, n BIGINT NOT NULL);
    "#,
    // 4: the device index (see crate::core::query), moved in the same transaction as the
    // devices; tallies of every index term. Both derived again from the records (`DERIVED`).
    r#"
    CREATE TABLE device_index (
        key TEXT COLLATE "C" NOT NULL,
        device TEXT NOT NULL,
        PRIMARY KEY (key) INCLUDE (device)
    );
    "#,
];

/// Migrations after which the tallies and the device index are derived again from the records
/// (records are CBOR, which SQL cannot read).
pub(super) const DERIVED: [usize; 2] = [3, 4];

/// The advisory lock key migrations take ("onboard" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x006f_6e62_6f61_7264;
