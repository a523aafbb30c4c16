//! The event log: every gateway event and every client publish is a row with a gateway-wide,
//! strictly increasing `seq`, committed before anyone sees it.
//!
//! One tailer task reads newly committed rows in `seq` order and fans them out on a broadcast
//! channel. Because delivery always comes from the committed log (never straight from a
//! writer), live delivery has the same order as replay, and events written by other processes
//! on the same database (CLI commands) reach connected clients too.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, Transaction};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::clock::rfc3339_ms;
use crate::store::{Store, StoreError};

/// Largest `data` we accept for one event, serialized.
pub const MAX_EVENT_DATA: usize = 32 * 1024;
/// How often the tailer looks for rows committed by other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Rows read per tailer query.
const TAIL_BATCH: i64 = 512;

/// Topic prefixes only the gateway may publish under (CONTRACT §4).
pub const RESERVED_PREFIXES: &[&str] = &["device.", "access.", "node.", "gateway."];

pub fn is_reserved(topic: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| topic.starts_with(p))
}

#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub topic: String,
    pub ts_ms: i64,
    pub origin: String,
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

impl Event {
    fn from_row(seq: i64, topic: String, data: String, ts_ms: i64, origin: String) -> Self {
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
            data: data.into(),
            frame: frame.into(),
        }
    }

    pub fn data_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// Appends an event inside the caller's transaction, so it commits (or not) with the change
/// it describes. Returns its seq.
pub fn append(
    tx: &Transaction<'_>,
    topic: &str,
    data: &serde_json::Value,
    origin: &str,
    ts_ms: i64,
) -> Result<i64, StoreError> {
    let data = serde_json::to_string(data).map_err(|_| StoreError::Corrupt("event data"))?;
    tx.execute(
        "INSERT INTO events (topic, data, ts_ms, origin) VALUES (?1, ?2, ?3, ?4)",
        params![topic, data, ts_ms, origin],
    )?;
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
    use rusqlite::OptionalExtension;
    let from_seq: Option<i64> = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(from_seq.unwrap_or(0))
}

/// The oldest seq still retained, or `None` if the log is empty.
pub fn oldest_seq(conn: &Connection) -> Result<Option<i64>, StoreError> {
    Ok(conn.query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))?)
}

/// Deletes all but the newest `keep` events. Returns how many went.
pub fn prune(tx: &Transaction<'_>, keep: u64) -> Result<usize, StoreError> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    Ok(tx.execute(
        "DELETE FROM events WHERE seq <= (SELECT COALESCE(MAX(seq), 0) FROM events) - ?1",
        [keep],
    )?)
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

/// Keeps the log to `keep` events, checking once a minute.
pub fn spawn_pruner(store: Store, keep: u64, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match store.write(move |tx| prune(tx, keep)).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "event log pruned"),
                Err(e) => tracing::warn!(error = %e, "event log prune failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn seq_survives_pruning_and_frames_render() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        for i in 0..5 {
            store
                .write(move |tx| append(tx, "ui.sync", &json!({ "i": i }), "test", 1_000))
                .await
                .unwrap();
        }
        assert_eq!(store.write(|tx| prune(tx, 2)).await.unwrap(), 3);
        assert_eq!(store.read(latest_seq).await.unwrap(), 5);
        assert_eq!(store.read(oldest_seq).await.unwrap(), Some(4));
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
    async fn tailer_delivers_in_order_including_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = Store::open(&path).unwrap();
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        let stop = CancellationToken::new();
        bus.start_tailer(store.clone(), stop.clone()).await.unwrap();
        store
            .write(|tx| append(tx, "a.one", &json!({}), "t", 0))
            .await
            .unwrap();
        // A second handle stands in for a CLI process writing to the same file.
        let other = Store::open(&path).unwrap();
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
