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
    // 3: the event log's two kinds, pruned apart (events.rs): `audit` marks the gateway's own
    // events, `source` is the publisher a client event counts against, `size` the bytes of its
    // `data`. The indexes cover every pruning query, so none reads a row's (large) data.
    // `event_floors` remembers how far each rule pruned, since the log may now have holes; an
    // old log was pruned from the front, so both start just below its oldest row. Topics are
    // matched case-sensitively (GLOB): `DEVICE.x` was a client's, not the gateway's.
    r#"
    ALTER TABLE events ADD COLUMN audit INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE events ADD COLUMN source TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE events SET
        audit = (topic GLOB 'device.*' OR topic GLOB 'access.*'
                 OR topic GLOB 'node.*' OR topic GLOB 'gateway.*'),
        source = CASE WHEN instr(origin, '/') > 0
                      THEN substr(origin, 1, instr(origin, '/') - 1) ELSE origin END,
        size = length(CAST(data AS BLOB));
    CREATE INDEX events_kind ON events (audit);
    CREATE INDEX events_source ON events (audit, source, size);

    CREATE TABLE event_floors (
        kind TEXT PRIMARY KEY,
        seq  INTEGER NOT NULL
    ) STRICT;
    INSERT INTO event_floors (kind, seq)
        SELECT kind, COALESCE((SELECT MIN(seq) - 1 FROM events),
                              (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)
        FROM (SELECT 'audit' AS kind UNION ALL SELECT 'publish');
    "#,
    // 4: endpoint nodes (docs/NODES.md): pending, registered and revoked nodes, and
    // their one-time provisioning tokens.
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
    // 5: offline access (issue 10): each device's phone key, its access tools (at most one
    // live per device, enforced by the partial unique index too), and per node the grants
    // state: the last signed snapshot with its version and revocation epoch, what the node
    // said it applied, and the highest decision seq recorded from it.
    r#"
    CREATE TABLE phone_keys (
        device_id     TEXT PRIMARY KEY REFERENCES devices(id),
        pubkey        BLOB NOT NULL,
        registered_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE access_tools (
        id         TEXT PRIMARY KEY,
        device_id  TEXT NOT NULL REFERENCES devices(id),
        pubkey     BLOB NOT NULL,
        issued_at  INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        voided_at  INTEGER
    ) STRICT;
    CREATE UNIQUE INDEX access_tools_live ON access_tools(device_id) WHERE voided_at IS NULL;

    CREATE TABLE node_grants (
        node_id         TEXT PRIMARY KEY REFERENCES nodes(id),
        version         INTEGER NOT NULL DEFAULT 0,
        epoch           INTEGER NOT NULL DEFAULT 0,
        snapshot        BLOB,
        pulse_ms        INTEGER NOT NULL DEFAULT 0,
        grant_count     INTEGER NOT NULL DEFAULT 0,
        applied_version INTEGER,
        applied_count   INTEGER,
        decisions_seq   INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    "#,
    // 6: vehicle keys (issue 12): an access tool with a `vehicle_id` is a key for that vehicle
    // node; a device holds at most one live tool per (device, vehicle or none). Pairing
    // sessions: one per vehicle challenge (its nonce unique, so a challenge opens one session
    // ever), `state` started → completed | cancelled | failed | expired.
    r#"
    ALTER TABLE access_tools ADD COLUMN vehicle_id TEXT REFERENCES nodes(id);
    DROP INDEX access_tools_live;
    CREATE UNIQUE INDEX access_tools_live ON access_tools(device_id, COALESCE(vehicle_id, ''))
        WHERE voided_at IS NULL;
    CREATE INDEX access_tools_vehicle ON access_tools(vehicle_id) WHERE vehicle_id IS NOT NULL;

    CREATE TABLE pairing_sessions (
        id         TEXT PRIMARY KEY,
        device_id  TEXT NOT NULL REFERENCES devices(id),
        vehicle_id TEXT NOT NULL REFERENCES nodes(id),
        challenge  BLOB NOT NULL,
        nonce      BLOB NOT NULL UNIQUE,
        -- the challenge's timestamp (0: the vehicle's wall time was unknown)
        challenge_ts INTEGER NOT NULL,
        rssi       INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        failures   INTEGER NOT NULL DEFAULT 0,
        state      TEXT NOT NULL DEFAULT 'started',
        ended_at   INTEGER,
        key_id     TEXT
    ) STRICT;
    CREATE INDEX pairing_sessions_open ON pairing_sessions(expires_at) WHERE state = 'started';
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written before migration 3 (pruned from the front, as it was then) is sorted
    /// into its two kinds, by publisher, with the floors just below its oldest row.
    #[test]
    fn migration_3_sorts_an_old_log() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute_batch(
            r#"
            INSERT INTO events (topic, data, ts_ms, origin) VALUES
                ('ui.gone', '{}', 0, 'device:a/ws:01'),
                ('access.granted', '{"deviceId":"a"}', 0, 'ble'),
                ('ui.sync', '{"x":"yz"}', 0, 'device:a/ws:02'),
                ('DEVICE.paired', '{}', 0, 'device:b/ws:03'),
                ('gateway.admin_token_revoked', '{}', 0, 'admin-token:1');
            DELETE FROM events WHERE seq = 1;
            "#,
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let rows: Vec<(i64, bool, String, i64)> = conn
            .prepare("SELECT seq, audit, source, size FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (2, true, "ble".into(), 16),
                (3, false, "device:a".into(), 10),
                (4, false, "device:b".into(), 2),
                (5, true, "admin-token:1".into(), 2),
            ]
        );
        let floors: Vec<(String, i64)> = conn
            .prepare("SELECT kind, seq FROM event_floors ORDER BY kind")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(floors, vec![("audit".into(), 1), ("publish".into(), 1)]);
    }
}
