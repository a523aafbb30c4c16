//! The event log: every gateway event and every client publish is a row with a gateway-wide,
//! strictly increasing `seq`, committed before anyone sees it.
//!
//! Two kinds share the one sequence. The gateway's own events (topics under `device.`,
//! `access.`, `node.`, `gateway.`, `vehicle.`) are the audit log; client publishes are everything else.
//! The pruner keeps them apart (`Retention`, `prune`):
//! - the audit log keeps its newest `audit` events (and, if set, none older than
//!   `audit_max_age_ms`); no publish ever counts against it;
//! - publishes are pruned only when there are more than `publishes` of them, or the log's
//!   `data` exceeds `max_bytes` (the audit log's bytes count, but are never pruned for it).
//!   Then, first, publishers holding more than their quota (their newest `per_publisher`
//!   events and a proportional share of `max_bytes`) lose their oldest events beyond it,
//!   oldest first, just enough to fit: one device flooding only ever trims its own past, and
//!   a device within its quota loses nothing however much others publish. Only when every
//!   publisher is within its quota and the log is still over do the oldest publishes go,
//!   whoever's.
//!
//! `horizon` is what `resume` compares with: the highest seq the audit rule or the last rule
//! above ever pruned. Below it the log no longer holds everything, so a resume from there gets
//! `reset`. Trimming a publisher beyond its quota does not move it: a client resuming from
//! before the trim gets that publisher's retained (newest) events, in order, without a reset.
//!
//! One tailer task reads newly committed rows in `seq` order and fans them out on a broadcast
//! channel. Because delivery always comes from the committed log (never straight from a
//! writer), live delivery has the same order as replay, and events written by other processes
//! on the same database (CLI commands) reach connected clients too.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::{rfc3339_ms, SharedClock};
use crate::store::{Store, StoreError};

/// Largest `data` we accept for one event, serialized.
pub const MAX_EVENT_DATA: usize = 32 * 1024;
/// How often the tailer looks for rows committed by other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Rows read per tailer query.
const TAIL_BATCH: i64 = 512;

/// Topic prefixes only the gateway may publish under (CONTRACT §4).
pub const RESERVED_PREFIXES: &[&str] = &["device.", "access.", "node.", "gateway.", "vehicle."];

pub fn is_reserved(topic: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| topic.starts_with(p))
}

/// Gateway events about one device (its `deviceId`), which that device may see.
const DEVICE_SCOPED_PREFIXES: &[&str] = &["device.", "access.", "vehicle."];

pub fn is_device_scoped(topic: &str) -> bool {
    DEVICE_SCOPED_PREFIXES.iter().any(|p| topic.starts_with(p))
}

/// How often the pruner runs: the log may exceed its bounds by what arrives in this time.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// What the pruner keeps (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Client publishes kept, all publishers together.
    pub publishes: u64,
    /// Client publishes kept per publisher.
    pub per_publisher: u64,
    /// Bytes of `data` in the whole log.
    pub max_bytes: u64,
    /// Gateway (audit) events kept.
    pub audit: u64,
    /// Audit events older than this go even within `audit`.
    pub audit_max_age_ms: Option<i64>,
}

impl Retention {
    /// A publisher's share of `max_bytes`: the same fraction as `per_publisher` of `publishes`.
    pub fn per_publisher_bytes(&self) -> u64 {
        let share = u128::from(self.max_bytes) * u128::from(self.per_publisher)
            / u128::from(self.publishes.max(1));
        u64::try_from(share).unwrap_or(u64::MAX)
    }
}

/// How many rows one `prune` removed, by rule.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub audit: usize,
    pub quota: usize,
    pub publishes: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.audit + self.quota + self.publishes
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub topic: String,
    pub ts_ms: i64,
    pub origin: String,
    /// For a gateway event about one device (`device.*`, `access.*`): that device's id, read
    /// once here so that per-connection visibility checks never parse JSON.
    pub subject: Option<String>,
    /// The `data` object as JSON text.
    pub data: Arc<str>,
    /// The complete `{"type":"event",…}` frame, rendered once and shared by every recipient.
    pub frame: Arc<str>,
}

#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: i64,
    topic: &'a str,
    ts: String,
    data: &'a serde_json::value::RawValue,
}

/// The field that names the device a gateway event is about.
#[derive(serde::Deserialize)]
struct About {
    #[serde(rename = "deviceId")]
    device_id: Option<String>,
}

/// Which device a gateway event concerns (`device.paired`, `device.revoked` and `access.*`
/// all carry it as `deviceId`; an `access.denied` for a frame that named no known device has
/// none).
fn subject_of(topic: &str, data: &str) -> Option<String> {
    if !is_device_scoped(topic) {
        return None;
    }
    serde_json::from_str::<About>(data).ok()?.device_id
}

impl Event {
    fn from_row(seq: i64, topic: String, data: String, ts_ms: i64, origin: String) -> Self {
        let subject = subject_of(&topic, &data);
        let raw = serde_json::value::RawValue::from_string(data.clone()).ok();
        let frame = match raw.as_deref() {
            Some(raw) => serde_json::to_string(&Frame {
                kind: "event",
                seq,
                topic: &topic,
                ts: rfc3339_ms(ts_ms),
                data: raw,
            })
            .unwrap_or_default(),
            None => String::new(),
        };
        Self {
            seq,
            topic,
            ts_ms,
            origin,
            subject,
            data: data.into(),
            frame: frame.into(),
        }
    }

    pub fn data_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// Appends an event inside the caller's transaction, so it commits (or not) with the change
/// it describes. Returns its seq. A gateway module's events are under the reserved prefixes
/// (the audit log); `origin` also counts as the publisher of anything else.
pub fn append(
    tx: &Transaction<'_>,
    topic: &str,
    data: &serde_json::Value,
    origin: &str,
    ts_ms: i64,
) -> Result<i64, StoreError> {
    publish(tx, topic, data, origin, origin, ts_ms)
}

/// Appends a client publish: `publisher` is whose quota it counts against (`device:<id>`, an
/// admin credential), `origin` the connection it came from. (Under a reserved prefix it is
/// an audit event whatever the caller; only the gateway's modules write those.)
pub fn publish(
    tx: &Transaction<'_>,
    topic: &str,
    data: &serde_json::Value,
    publisher: &str,
    origin: &str,
    ts_ms: i64,
) -> Result<i64, StoreError> {
    let data = serde_json::to_string(data).map_err(|_| StoreError::Corrupt("event data"))?;
    let size = i64::try_from(data.len()).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT INTO events (topic, data, ts_ms, origin, audit, source, size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        topic,
        data,
        ts_ms,
        origin,
        is_reserved(topic),
        publisher,
        size
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Events with `seq > since`, oldest first, at most `limit`.
pub fn since(conn: &Connection, since: i64, limit: i64) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, topic, data, ts_ms, origin FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since, limit], |r| {
        Ok(Event::from_row(
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest seq ever assigned (0 when none), also after pruning.
pub fn latest_seq(conn: &Connection) -> Result<i64, StoreError> {
    let from_seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(from_seq.unwrap_or(0))
}

/// `meta` key: "1" while a daemon appends to the log, "0" once it stopped cleanly.
const APPENDING: &str = "events_appending";

/// How far the sequence skips after a daemon did not stop cleanly. Commits are synced by the
/// checkpoints (every half second after writes), so a power cut takes at most the events of
/// the last unsynced moment: thousands, not a million.
pub const SEQ_SKIP_AFTER_UNCLEAN_STOP: i64 = 1_000_000;

/// At daemon start, in a durable write. If the previous daemon did not stop cleanly, a power
/// cut may have taken the last events it committed, whose seqs clients may hold already
/// (`seq` is persisted before delivery, but only synced at checkpoints). The sequence then
/// skips ahead, so no seq is issued twice and a phone resuming from a lost one gets exactly
/// what came after. Returns the skip (0 after a clean stop).
pub fn open_log(tx: &Transaction<'_>) -> Result<i64, StoreError> {
    let running = crate::store::meta_get(tx, APPENDING)?;
    let skip = if running.as_deref() == Some("1") {
        let latest = latest_seq(tx)?;
        tx.execute("DELETE FROM sqlite_sequence WHERE name = 'events'", [])?;
        tx.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)",
            [latest + SEQ_SKIP_AFTER_UNCLEAN_STOP],
        )?;
        SEQ_SKIP_AFTER_UNCLEAN_STOP
    } else {
        0
    };
    crate::store::meta_set(tx, APPENDING, "1")?;
    Ok(skip)
}

/// At a clean stop, after the last event. Needs no sync: if a power cut takes it, the next
/// start skips ahead for nothing.
pub fn close_log(tx: &Transaction<'_>) -> Result<(), StoreError> {
    crate::store::meta_set(tx, APPENDING, "0")
}

/// The highest seq below which the log may lack events a client could see: a `resume` from
/// before it gets `reset` (see the module docs). 0 when nothing was ever pruned that way.
pub fn horizon(conn: &Connection) -> Result<i64, StoreError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM event_floors", [], |r| {
            r.get(0)
        })?,
    )
}

/// Applies `r` (see the module docs); `now_ms` dates the audit log's age limit.
pub fn prune(tx: &Transaction<'_>, r: &Retention, now_ms: i64) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();

    // The audit log, by its own count and age only.
    let mut cut: Option<i64> = tx
        .query_row(
            "SELECT seq FROM events WHERE audit = 1 ORDER BY seq DESC LIMIT 1 OFFSET ?1",
            [to_i64(r.audit)],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(age) = r.audit_max_age_ms {
        let aged: Option<i64> = tx.query_row(
            "SELECT MAX(seq) FROM events WHERE audit = 1 AND ts_ms < ?1",
            [now_ms.saturating_sub(age)],
            |row| row.get(0),
        )?;
        cut = cut.max(aged);
    }
    if let Some(cut) = cut {
        pruned.audit = tx.execute("DELETE FROM events WHERE audit = 1 AND seq <= ?1", [cut])?;
        raise_floor(tx, "audit", cut)?;
    }

    // Publishes, only when over the total count or what the audit log leaves of `max_bytes`.
    let audit_bytes: i64 = tx.query_row(
        "SELECT COALESCE(SUM(size), 0) FROM events WHERE audit = 1",
        [],
        |row| row.get(0),
    )?;
    let room = to_i64(r.max_bytes).saturating_sub(audit_bytes).max(0);
    let (count, bytes): (i64, i64) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE audit = 0",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let (over_count, over_bytes) = (count - to_i64(r.publishes), bytes - room);
    if over_count <= 0 && over_bytes <= 0 {
        return Ok(pruned);
    }

    // First what publishers hold beyond their quota, oldest first, just enough to fit (all of
    // it if that is not enough). Nobody within their quota loses anything here.
    let (per, share) = (to_i64(r.per_publisher), to_i64(r.per_publisher_bytes()));
    let cut: Option<i64> = tx.query_row(
        &format!(
            "WITH {EXCESS}, running AS (
                 SELECT seq, ROW_NUMBER() OVER w AS k, SUM(size) OVER w AS freed
                 FROM excess WINDOW w AS (ORDER BY seq))
             SELECT MIN(seq) FROM running WHERE k >= ?3 AND freed >= ?4"
        ),
        params![per, share, over_count, over_bytes],
        |row| row.get(0),
    )?;
    pruned.quota = tx.execute(
        &format!(
            "WITH {EXCESS} DELETE FROM events WHERE seq IN (SELECT seq FROM excess WHERE seq <= ?3)"
        ),
        params![per, share, cut.unwrap_or(i64::MAX)],
    )?;

    // Still over (every publisher within its quota): the oldest publishes, whoever's.
    let cut: Option<i64> = tx
        .query_row(
            "SELECT seq FROM (
                 SELECT seq, ROW_NUMBER() OVER w AS n, SUM(size) OVER w AS bytes
                 FROM events WHERE audit = 0
                 WINDOW w AS (ORDER BY seq DESC))
             WHERE n > ?1 OR bytes > ?2 ORDER BY seq DESC LIMIT 1",
            params![to_i64(r.publishes), room],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(cut) = cut {
        pruned.publishes = tx.execute("DELETE FROM events WHERE audit = 0 AND seq <= ?1", [cut])?;
        raise_floor(tx, "publish", cut)?;
    }
    Ok(pruned)
}

/// A publisher's publishes beyond its newest `?1` or beyond `?2` bytes (newest first).
const EXCESS: &str = "excess AS (
    SELECT seq, size FROM (
        SELECT seq, size, ROW_NUMBER() OVER w AS n, SUM(size) OVER w AS held
        FROM events WHERE audit = 0
        WINDOW w AS (PARTITION BY source ORDER BY seq DESC))
    WHERE n > ?1 OR held > ?2)";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn raise_floor(tx: &Transaction<'_>, kind: &str, seq: i64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO event_floors (kind, seq) VALUES (?1, ?2)
         ON CONFLICT(kind) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        params![kind, seq],
    )?;
    Ok(())
}

/// Live fan-out of committed events, in seq order.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

/// How many events a subscriber may fall behind before it is told it lagged.
pub const BUS_CAPACITY: usize = 4096;

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        Self { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Starts the tailer: from the current end of the log, every newly committed event is
    /// broadcast exactly once, in seq order.
    pub async fn start_tailer(
        &self,
        store: Store,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let mut last = store.read(latest_seq).await?;
        let tx = self.tx.clone();
        Ok(tokio::spawn(async move {
            loop {
                loop {
                    let batch = match store.read(move |c| since(c, last, TAIL_BATCH)).await {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(error = %e, "event tailer read failed");
                            break;
                        }
                    };
                    let full = batch.len() as i64 == TAIL_BATCH;
                    for ev in batch {
                        last = ev.seq;
                        // No receivers is fine: nobody is connected.
                        let _ = tx.send(Arc::new(ev));
                    }
                    if !full {
                        break;
                    }
                }
                tokio::select! {
                    _ = store.committed() => {}
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = shutdown.cancelled() => {
                        // One last read so events committed during shutdown still go out.
                        if let Ok(batch) = store.read(move |c| since(c, last, TAIL_BATCH)).await {
                            for ev in batch {
                                let _ = tx.send(Arc::new(ev));
                            }
                        }
                        return;
                    }
                }
            }
        }))
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps the log within `retention`, checking every `PRUNE_EVERY`.
pub fn spawn_pruner(
    store: Store,
    retention: Retention,
    clock: SharedClock,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let now_ms = clock.now_ms();
            match store.write(move |tx| prune(tx, &retention, now_ms)).await {
                Ok(p) if p.total() == 0 => {}
                Ok(p) => tracing::debug!(
                    audit = p.audit,
                    quota = p.quota,
                    publishes = p.publishes,
                    "event log pruned"
                ),
                Err(e) => tracing::warn!(error = %e, "event log prune failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Small bounds, so a test can cross each of them.
    const SMALL: Retention = Retention {
        publishes: 6,
        per_publisher: 3,
        max_bytes: 1_000_000,
        audit: 4,
        audit_max_age_ms: None,
    };

    /// The seqs still in the log.
    async fn kept(store: &Store) -> Vec<i64> {
        let evs = store.read(|c| since(c, 0, 1000)).await.unwrap();
        evs.into_iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn after_an_unclean_stop_the_sequence_skips_past_anything_a_power_cut_took() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let append_one =
            || store.write_blocking(|tx| append(tx, "ui.sync", &json!({}), "test", 1_000));
        // A first start on a new registry, then a clean stop: numbering goes on from 2.
        assert_eq!(store.write_durable_blocking(open_log).unwrap(), 0);
        assert_eq!(append_one().unwrap(), 1);
        store.write_blocking(close_log).unwrap();
        assert_eq!(store.write_durable_blocking(open_log).unwrap(), 0);
        assert_eq!(append_one().unwrap(), 2);
        // No clean stop (a kill or a power cut): the next start skips ahead.
        assert_eq!(
            store.write_durable_blocking(open_log).unwrap(),
            SEQ_SKIP_AFTER_UNCLEAN_STOP
        );
        assert_eq!(
            store.read_blocking(latest_seq).unwrap(),
            2 + SEQ_SKIP_AFTER_UNCLEAN_STOP
        );
        assert_eq!(append_one().unwrap(), 3 + SEQ_SKIP_AFTER_UNCLEAN_STOP);
        // A resume from a seq lost in the gap gets what came after it, not a reset.
        let after_lost = store.read_blocking(|c| since(c, 5, 10)).unwrap();
        assert_eq!(after_lost.len(), 1);
        assert_eq!(after_lost[0].seq, 3 + SEQ_SKIP_AFTER_UNCLEAN_STOP);
    }

    #[tokio::test]
    async fn an_unclean_stop_before_any_event_still_skips() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        store.write_durable_blocking(open_log).unwrap();
        store.write_durable_blocking(open_log).unwrap();
        let first = store
            .write_blocking(|tx| append(tx, "ui.sync", &json!({}), "test", 1_000))
            .unwrap();
        assert_eq!(first, SEQ_SKIP_AFTER_UNCLEAN_STOP + 1);
    }

    #[tokio::test]
    async fn seq_survives_pruning_and_frames_render() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        for i in 0..5 {
            store
                .write(move |tx| append(tx, "ui.sync", &json!({ "i": i }), "test", 1_000))
                .await
                .unwrap();
        }
        let r = Retention {
            per_publisher: 2,
            publishes: 2,
            ..SMALL
        };
        let p = store.write(move |tx| prune(tx, &r, 0)).await.unwrap();
        assert_eq!(p.total(), 3);
        assert_eq!(store.read(latest_seq).await.unwrap(), 5);
        let next = store
            .write(|tx| append(tx, "ui.sync", &json!({}), "test", 2_000))
            .await
            .unwrap();
        assert_eq!(next, 6);
        let evs = store.read(|c| since(c, 4, 10)).await.unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6]);
        let frame: serde_json::Value = serde_json::from_str(&evs[0].frame).unwrap();
        assert_eq!(
            frame,
            json!({"type":"event","seq":5,"topic":"ui.sync","ts":"1970-01-01T00:00:01Z","data":{"i":4}})
        );
    }

    #[tokio::test]
    async fn publishes_never_evict_the_audit_log_nor_one_publisher_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        store
            .write(|tx| {
                append(tx, "access.granted", &json!({"deviceId": "d1"}), "ble", 0)?; // 1
                publish(tx, "ui.a", &json!({}), "device:a", "device:a/ws:1", 0)?; // 2
                publish(tx, "ui.a", &json!({}), "device:a", "device:a/ws:1", 0)?; // 3
                for _ in 0..20 {
                    publish(tx, "ui.spam", &json!({}), "device:x", "device:x/ws:9", 0)?;
                    // 4..=23
                }
                append(
                    tx,
                    "device.paired",
                    &json!({"deviceId": "d2"}),
                    "gateway",
                    0,
                )?; // 24
                Ok(())
            })
            .await
            .unwrap();
        let p = store.write(|tx| prune(tx, &SMALL, 0)).await.unwrap();
        // 22 publishes, 6 fit: the spammer's oldest beyond its quota go; nobody else's.
        assert_eq!((p.audit, p.quota, p.publishes), (0, 16, 0));
        assert_eq!(kept(&store).await, vec![1, 2, 3, 20, 21, 22, 23, 24]);
        // A quota trim is no reason for a reset.
        assert_eq!(store.read(horizon).await.unwrap(), 0);

        // More publishers than the total holds: the spammer's last excess goes, then the
        // oldest publishes, whoever's; the horizon moves, and the audit events stay.
        store
            .write(|tx| {
                for who in ["b", "c"] {
                    for _ in 0..2 {
                        publish(tx, "ui.b", &json!({}), who, who, 0)?; // 25..=28
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        let p = store.write(|tx| prune(tx, &SMALL, 0)).await.unwrap();
        assert_eq!((p.audit, p.quota, p.publishes), (0, 1, 3));
        assert_eq!(kept(&store).await, vec![1, 22, 23, 24, 25, 26, 27, 28]);
        assert_eq!(store.read(horizon).await.unwrap(), 21);

        // The audit log by its own count, then by age.
        store
            .write(|tx| {
                for i in 0..4 {
                    append(tx, "access.denied", &json!({}), "ble", 10_000 + i)?;
                    // 29..=32
                }
                Ok(())
            })
            .await
            .unwrap();
        let p = store.write(|tx| prune(tx, &SMALL, 0)).await.unwrap();
        assert_eq!((p.audit, p.quota, p.publishes), (2, 0, 0));
        assert_eq!(store.read(horizon).await.unwrap(), 24);
        let aged = Retention {
            audit_max_age_ms: Some(1_000),
            ..SMALL
        };
        let p = store
            .write(move |tx| prune(tx, &aged, 11_002))
            .await
            .unwrap();
        assert_eq!(p.audit, 2, "{p:?}");
        assert_eq!(kept(&store).await, vec![22, 23, 25, 26, 27, 28, 31, 32]);
    }

    #[tokio::test]
    async fn bytes_are_bounded_per_publisher_and_in_total() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let pad = "p".repeat(990);
        // ~1000 bytes each: x has 5 KB, y 2 KB, and an audit event of a few bytes.
        store
            .write(move |tx| {
                for _ in 0..5 {
                    publish(tx, "ui.big", &json!({ "p": pad }), "x", "x", 0)?; // 1..=5
                }
                append(tx, "device.revoked", &json!({"deviceId": "d"}), "cli", 0)?; // 6
                for _ in 0..2 {
                    publish(tx, "ui.big", &json!({ "p": pad }), "y", "y", 0)?; // 7, 8
                }
                Ok(())
            })
            .await
            .unwrap();
        // max_bytes 4,500, a third of it per publisher: 2,502 bytes too many, taken from the
        // oldest of what x and y hold beyond 1,500 bytes each (x: 1..=4, y: 7).
        let r = Retention {
            publishes: 30,
            per_publisher: 10,
            max_bytes: 4_500,
            audit: 10,
            audit_max_age_ms: None,
        };
        let p = store.write(move |tx| prune(tx, &r, 0)).await.unwrap();
        assert_eq!((p.audit, p.quota, p.publishes), (0, 3, 0));
        assert_eq!(kept(&store).await, vec![4, 5, 6, 7, 8]);
        // A total of 1,500 bytes leaves room for one publish beside the audit event: all the
        // excess goes (4, 7), then the oldest (5).
        let r = Retention {
            max_bytes: 1_500,
            per_publisher: 30,
            ..r
        };
        let p = store.write(move |tx| prune(tx, &r, 0)).await.unwrap();
        assert_eq!((p.audit, p.quota, p.publishes), (0, 2, 1));
        assert_eq!(kept(&store).await, vec![6, 8]);
        assert_eq!(store.read(horizon).await.unwrap(), 5);
    }

    #[test]
    fn gateway_events_name_their_device() {
        assert_eq!(
            subject_of("device.paired", r#"{"deviceId":"d1","name":"x"}"#).as_deref(),
            Some("d1")
        );
        assert_eq!(
            subject_of("access.denied", r#"{"deviceId":null,"peer":"p"}"#),
            None
        );
        assert_eq!(subject_of("ui.sync", r#"{"deviceId":"d1"}"#), None);
        assert_eq!(subject_of("gateway.x", r#"{"deviceId":"d1"}"#), None);
    }

    #[tokio::test]
    async fn tailer_delivers_in_order_including_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = crate::store::testing::open(&path);
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        let stop = CancellationToken::new();
        bus.start_tailer(store.clone(), stop.clone()).await.unwrap();
        store
            .write(|tx| append(tx, "a.one", &json!({}), "t", 0))
            .await
            .unwrap();
        // A second handle stands in for a CLI process writing to the same file.
        let other = crate::store::testing::open(&path);
        other
            .write(|tx| append(tx, "a.two", &json!({}), "cli", 0))
            .await
            .unwrap();
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!((a.seq, a.topic.as_str()), (1, "a.one"));
        assert_eq!((b.seq, b.topic.as_str()), (2, "a.two"));
        stop.cancel();
    }

    #[test]
    fn reserved_topics() {
        assert!(is_reserved("device.paired"));
        assert!(is_reserved("gateway.x"));
        assert!(!is_reserved("ui.sync"));
        assert!(!is_reserved("devices"));
    }
}
