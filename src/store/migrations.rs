//! Versioned schema migrations, tracked in `PRAGMA user_version`. Append only: a released
//! migration is never edited, a new one is added at the end.

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: gateway core (registry, pairing, admin) and the event log.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE devices (
        id             TEXT PRIMARY KEY,
        name           TEXT NOT NULL,
        type           TEXT NOT NULL,
        key_hash       BLOB NOT NULL UNIQUE,
        totp_sealed    BLOB NOT NULL,
        paired_at      INTEGER NOT NULL,
        last_seen      INTEGER,
        revoked_at     INTEGER,
        -- newest TOTP step accepted over BLE; a code is only taken for a newer step
        totp_last_step INTEGER NOT NULL DEFAULT 0
    ) STRICT;

    CREATE TABLE pair_tokens (
        id         INTEGER PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER,
        device_id  TEXT REFERENCES devices(id)
    ) STRICT;

    CREATE TABLE admin (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        password_hash TEXT NOT NULL,
        updated_at    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE admin_tokens (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        last_used  INTEGER,
        revoked_at INTEGER
    ) STRICT;

    CREATE TABLE sessions (
        id_hash    BLOB PRIMARY KEY,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;

    -- AUTOINCREMENT: a seq is never reused, even after the newest rows are pruned.
    CREATE TABLE events (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        topic  TEXT NOT NULL,
        data   TEXT NOT NULL,
        ts_ms  INTEGER NOT NULL,
        origin TEXT NOT NULL
    ) STRICT;

    -- BLE lockout state per subject ("device:<id>" or "peer:<address>").
    CREATE TABLE lockouts (
        subject      TEXT PRIMARY KEY,
        failures     INTEGER NOT NULL,
        level        INTEGER NOT NULL,
        locked_until INTEGER NOT NULL
    ) STRICT;

    INSERT INTO meta (key, value) VALUES ('gateway_id', lower(hex(randomblob(16))));
    "#,
    // 2: BLE door service: when a lockout row last changed, so that idle rows of peer
    // addresses (phones rotate them) can be pruned.
    r#"
    ALTER TABLE lockouts ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
    "#,
    // (nodes) Endpoint nodes (docs/NODES.md): pending, registered and revoked nodes, and
    // their one-time provisioning tokens. Self-contained so it can be renumbered at merge.
    r#"
    CREATE TABLE nodes (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL DEFAULT '',
        room          TEXT NOT NULL DEFAULT '',
        household_id  TEXT NOT NULL DEFAULT '',
        kind          TEXT,
        firmware      TEXT,
        pubkey        BLOB,
        key_hash      BLOB UNIQUE,
        -- the endpoint id a door node is opened by (unique among nodes; config ids win)
        endpoint_id   TEXT UNIQUE,
        created_at    INTEGER NOT NULL,
        registered_at INTEGER,
        revoked_at    INTEGER,
        last_seen     INTEGER,
        online        INTEGER NOT NULL DEFAULT 0
    ) STRICT;

    CREATE TABLE provisioning_tokens (
        id         INTEGER PRIMARY KEY,
        token_hash BLOB NOT NULL UNIQUE,
        node_id    TEXT NOT NULL REFERENCES nodes(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER,
        voided_at  INTEGER
    ) STRICT;
    CREATE INDEX provisioning_tokens_node ON provisioning_tokens(node_id);
    "#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Open {
            path: conn.path().unwrap_or_default().into(),
            message: format!(
                "schema version {current} is newer than this latchkey understands ({SCHEMA_VERSION}); upgrade latchkey"
            ),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        // Another process (a CLI command starting beside the daemon) may have got here first.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
