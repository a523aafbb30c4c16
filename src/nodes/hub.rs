//! The live node sessions: node id → the session's command queue. A door on a node sends
//! `unlock` through here and waits, bounded, for the node's `result`; the outcome is recorded
//! as `node.command`. A node has one session: attaching a newer one tells the older to go
//! (close 4409). Commands are never queued for an offline node: a late unlock is worse than
//! none.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CommandRecord, NodeId};
use crate::clock::SharedClock;
use crate::events::Event;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

/// NODES.md §5: the gateway waits at most 5 s for a result.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// NODES.md §5: a ping every 20 s; two missed pongs and the node is offline.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Commands waiting to be written to one session; beyond that the node is busy.
const QUEUE: usize = 16;

/// One command for a session to send.
#[derive(Debug)]
pub struct Command {
    pub id: u64,
    pub command: &'static str,
    pub pulse_ms: u64,
    /// The node's answer: `None` for ok, else its error code.
    pub reply: oneshot::Sender<Option<String>>,
}

/// Why a command did not succeed (the reason recorded in `access.*` and `node.command`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnlockError {
    #[error("node is offline")]
    Offline,
    #[error("node is busy")]
    Busy,
    #[error("node did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("node went offline before answering")]
    Closed,
    #[error("node refused: {0}")]
    Refused(String),
}

impl UnlockError {
    /// The `error` of a `node.command` event.
    pub fn code(&self) -> &str {
        match self {
            Self::Offline => "OFFLINE",
            Self::Busy => "BUSY",
            Self::Timeout(_) => "TIMEOUT",
            Self::Closed => "CLOSED",
            Self::Refused(c) => c,
        }
    }
}

struct Entry {
    serial: u64,
    commands: mpsc::Sender<Command>,
    replaced: CancellationToken,
    revoked: CancellationToken,
    grants: Arc<Notify>,
}

/// What a new session gets from [`NodeHub::attach`].
pub struct Attached {
    pub serial: u64,
    pub commands: mpsc::Receiver<Command>,
    /// Cancelled when a newer session of the same node attaches.
    pub replaced: CancellationToken,
    /// Cancelled when the node is revoked (see [`NodeHub::watch_events`]).
    pub revoked: CancellationToken,
    /// The session this one replaced: it is gone once this sender's `closed()` resolves.
    pub previous: Option<mpsc::Sender<Command>>,
    /// Woken when the node's grants may have changed (see [`NodeHub::watch_events`]).
    pub grants: Arc<Notify>,
}

pub struct NodeHub {
    sessions: Mutex<HashMap<NodeId, Entry>>,
    next: AtomicU64,
    store: Store,
    clock: SharedClock,
    ping_every_ms: AtomicU64,
    command_timeout_ms: AtomicU64,
    /// 10 invalid provisioning tokens a minute per address (like pair tokens).
    pub register_limit: RateLimiter<IpAddr>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl NodeHub {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            store,
            clock,
            ping_every_ms: AtomicU64::new(millis(PING_EVERY)),
            command_timeout_ms: AtomicU64::new(millis(COMMAND_TIMEOUT)),
            register_limit: RateLimiter::new(10, 60),
        }
    }

    /// Shorter bounds for tests and benchmarks (the defaults are NODES.md's).
    pub fn set_timings(&self, ping_every: Duration, command_timeout: Duration) {
        self.ping_every_ms
            .store(millis(ping_every).max(1), Ordering::Relaxed);
        self.command_timeout_ms
            .store(millis(command_timeout).max(1), Ordering::Relaxed);
    }

    pub fn ping_every(&self) -> Duration {
        Duration::from_millis(self.ping_every_ms.load(Ordering::Relaxed))
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms.load(Ordering::Relaxed))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new session of `id`, replacing (and telling) any older one.
    pub fn attach(&self, id: &NodeId) -> Attached {
        let (tx, rx) = mpsc::channel(QUEUE);
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let revoked = CancellationToken::new();
        let grants = Arc::new(Notify::new());
        let old = self.sessions().insert(
            id.clone(),
            Entry {
                serial,
                commands: tx,
                replaced: replaced.clone(),
                revoked: revoked.clone(),
                grants: grants.clone(),
            },
        );
        let previous = old.map(|e| {
            e.replaced.cancel();
            e.commands
        });
        Attached {
            serial,
            commands: rx,
            replaced,
            revoked,
            previous,
            grants,
        }
    }

    /// Tells `id`'s session (if any) that the node is revoked: it closes with 4403 at once.
    pub fn revoke(&self, id: &NodeId) {
        if let Some(e) = self.sessions().get(id) {
            e.revoked.cancel();
        }
    }

    /// Tells every session that its node's grants may have changed: each re-checks its own
    /// (a wake-up is remembered until the session gets to it; several coalesce into one).
    pub fn grants_changed(&self) {
        for e in self.sessions().values() {
            e.grants.notify_one();
        }
    }

    /// Follows the event log (written by the API, the page or the CLI in another process):
    /// `node.revoked` cuts the node's session off; a change of what doors honour
    /// ([`crate::grants::is_trigger`]) makes every session re-check its grants, so a node
    /// has its new snapshot well within the 2 s CONTRACT §6 allows. One task for every
    /// session, rather than every session waking for every event. A session checks the
    /// registry itself right after it attaches, so a change committed before that is not
    /// missed either.
    pub fn watch_events(
        self: &Arc<Self>,
        mut bus: broadcast::Receiver<Arc<Event>>,
        shutdown: CancellationToken,
    ) {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = bus.recv() => r,
                };
                match r {
                    Ok(ev) => {
                        if ev.topic == "node.revoked" {
                            let id = ev.data_json()["nodeId"].as_str().and_then(NodeId::parse);
                            if let Some(id) = id {
                                hub.revoke(&id);
                            }
                        }
                        if crate::grants::is_trigger(&ev.topic) {
                            hub.grants_changed();
                        }
                    }
                    // Events went by unseen: ask the registry about every connected node.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        hub.grants_changed();
                        match hub.store.read(super::list).await {
                            Ok(all) => all
                                .iter()
                                .filter(|n| n.revoked)
                                .for_each(|n| hub.revoke(&n.node_id)),
                            Err(e) => tracing::warn!(error = %e, "cannot check revoked nodes"),
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Removes a session, unless a newer one of the same node has taken its place.
    pub fn detach(&self, id: &NodeId, serial: u64) {
        let mut s = self.sessions();
        if s.get(id).is_some_and(|e| e.serial == serial) {
            s.remove(id);
        }
    }

    pub fn is_online(&self, id: &NodeId) -> bool {
        self.sessions().contains_key(id)
    }

    /// Sessions attached now.
    pub fn connected(&self) -> usize {
        self.sessions().len()
    }

    /// Sends one command and waits (bounded) for the node's answer. Returns the command id
    /// (0 if none was sent) with the outcome.
    async fn command(&self, id: &NodeId, pulse_ms: u64) -> (u64, Result<(), UnlockError>) {
        let Some(tx) = self.sessions().get(id).map(|e| e.commands.clone()) else {
            return (0, Err(UnlockError::Offline));
        };
        let cid = self.next.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let cmd = Command {
            id: cid,
            command: "unlock",
            pulse_ms,
            reply,
        };
        if let Err(e) = tx.try_send(cmd) {
            return match e {
                mpsc::error::TrySendError::Full(_) => (0, Err(UnlockError::Busy)),
                mpsc::error::TrySendError::Closed(_) => (0, Err(UnlockError::Offline)),
            };
        }
        let bound = self.command_timeout();
        let outcome = match tokio::time::timeout(bound, answer).await {
            Err(_) => Err(UnlockError::Timeout(bound)),
            Ok(Err(_)) => Err(UnlockError::Closed),
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(code))) => Err(UnlockError::Refused(code)),
        };
        (cid, outcome)
    }

    /// Opens a door on a node: `unlock` with `pulse_ms`, the answer awaited at most the command
    /// timeout, the outcome recorded as `node.command` (by `origin`, for `endpoint`). Returns
    /// the round trip in milliseconds.
    pub async fn unlock(
        &self,
        node: &str,
        pulse_ms: u64,
        endpoint: &str,
        origin: &str,
    ) -> Result<u64, UnlockError> {
        let Some(id) = NodeId::parse(node) else {
            return Err(UnlockError::Offline);
        };
        let started = Instant::now();
        let (command_id, outcome) = self.command(&id, pulse_ms).await;
        let ms = millis(started.elapsed());
        let error = outcome.as_ref().err().map(|e| e.code().to_owned());
        let (endpoint, origin) = (endpoint.to_owned(), origin.to_owned());
        let now_ms = self.clock.now_ms();
        let recorded = self
            .store
            .write(move |tx| {
                super::record_command(
                    tx,
                    &CommandRecord {
                        node_id: &id,
                        command_id,
                        command: "unlock",
                        endpoint: &endpoint,
                        error: error.as_deref(),
                        ms,
                    },
                    &origin,
                    now_ms,
                )
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "could not record a node command");
        }
        outcome.map(|()| ms)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn hub() -> (tempfile::TempDir, Arc<NodeHub>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        (dir, Arc::new(NodeHub::new(store, ManualClock::new(1_000))))
    }

    fn commands(hub: &NodeHub) -> Vec<serde_json::Value> {
        hub.store
            .read_blocking(|c| crate::events::since(c, 0, 100))
            .unwrap()
            .into_iter()
            .filter(|e| e.topic == "node.command")
            .map(|e| e.data_json())
            .collect()
    }

    #[tokio::test]
    async fn a_newer_session_replaces_the_older() {
        let (_d, hub) = hub();
        let id = NodeId::new_random().unwrap();
        let first = hub.attach(&id);
        assert!(first.previous.is_none());
        let second = hub.attach(&id);
        assert!(first.replaced.is_cancelled());
        assert!(!second.replaced.is_cancelled());
        assert!(second.previous.is_some());
        // The older one leaving does not take the newer one with it.
        hub.detach(&id, first.serial);
        assert!(hub.is_online(&id));
        hub.revoke(&id);
        assert!(second.revoked.is_cancelled());
        hub.detach(&id, second.serial);
        assert!(!hub.is_online(&id));
        assert_eq!(hub.connected(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unlock_outcomes_are_bounded_and_recorded() {
        let (_d, hub) = hub();
        let id = NodeId::new_random().unwrap();
        // Offline: at once, nothing sent.
        let e = hub.unlock(id.as_str(), 3000, "front", "test").await;
        assert_eq!(e, Err(UnlockError::Offline));

        // A session that answers.
        let mut s = hub.attach(&id);
        let answering = tokio::spawn(async move {
            let c = s.commands.recv().await.unwrap();
            assert_eq!((c.command, c.pulse_ms), ("unlock", 3000));
            let _ = c.reply.send(None);
            let c = s.commands.recv().await.unwrap();
            let _ = c.reply.send(Some("HARDWARE".into()));
            // The third one is never answered: the bound applies.
            let c = s.commands.recv().await.unwrap();
            (s, c)
        });
        assert!(hub.unlock(id.as_str(), 3000, "front", "test").await.is_ok());
        assert_eq!(
            hub.unlock(id.as_str(), 3000, "front", "test").await,
            Err(UnlockError::Refused("HARDWARE".into()))
        );
        let silent = hub.unlock(id.as_str(), 3000, "front", "test").await;
        assert_eq!(silent, Err(UnlockError::Timeout(COMMAND_TIMEOUT)));
        let (_s, _unanswered) = answering.await.unwrap();

        let recorded = commands(&hub);
        let errors: Vec<_> = recorded.iter().map(|c| c["error"].clone()).collect();
        assert_eq!(
            errors,
            vec![
                serde_json::json!("OFFLINE"),
                serde_json::Value::Null,
                serde_json::json!("HARDWARE"),
                serde_json::json!("TIMEOUT")
            ]
        );
        assert_eq!(recorded[0]["commandId"], 0);
        assert_eq!(recorded[1]["ok"], true);
        assert!(recorded[1]["commandId"].as_u64().unwrap() > 0);
    }
}
