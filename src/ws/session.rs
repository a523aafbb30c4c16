//! One WebSocket connection: a reader task that parses what the client sends, and the
//! outbound half (this task) that alone writes to the socket.
//!
//! The outbound half owns the connection's place in the event log (`cursor`: the newest seq
//! it delivered or deliberately skipped) and its bounded queue of live events (`pending`). It
//! subscribes to the bus *before* it reads the log, so every event committed after a log read
//! is also in its queue; anything at or below the cursor is skipped, and a hole above it (a
//! lagged bus, a queue that overflowed during a replay) is filled from the log. That is what
//! makes resume exact: no gap, no duplicate, in order, while events keep arriving.
//!
//! Writes never block the fan-out: the bus is a broadcast ring that nobody waits on, and while
//! a write to this socket is in progress the outbound half keeps draining the bus into its own
//! queue. A live queue that overflows, or a write that stalls, means a slow reader: close 1008.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio::time::{sleep, Instant, MissedTickBehavior};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::auth::Principal;
use super::frames::{self, code, ClientFrame, Filter, FrameError};
use crate::budget::TokenBucket;
use crate::events::{self, Event};
use crate::registry;
use crate::state::AppState;
use crate::web::auth::Admin;

/// Live events a connection may have waiting while its socket is busy; beyond that it is too
/// slow (close 1008). Events are shared `Arc`s, so this bounds delay, not copies.
pub const QUEUE: usize = 1024;
/// Events read from the log per replay step.
const REPLAY_BATCH: i64 = 256;
/// Most events written before one flush (the benchmark's bare server batches the same way).
pub const WRITE_BATCH: usize = 64;
/// Until the client resumes (or this passes), live events are held, never dropped: a client
/// that sends `resume` right after connecting gets its replay before any live event.
pub const HOLD: Duration = Duration::from_secs(1);
/// Server pings every 20 s and drops a peer that missed two (CONTRACT §4).
pub const PING_EVERY: Duration = Duration::from_secs(20);
const MISSED_PONGS: u32 = 2;
/// A write that makes no progress for this long belongs to a peer that stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close frame may take to get out, and how long we wait for the peer's reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// During shutdown everything has to fit in the daemon's 4 s grace.
const SHUTDOWN_STEP: Duration = Duration::from_millis(1000);
/// Bad frames: a burst of 20, then 2 a second; past that the connection closes with 1008.
const BAD_BURST: f64 = 20.0;
const BAD_PER_SEC: f64 = 2.0;
/// `lastSeen` is written on connect and then at most once a minute.
const LAST_SEEN_EVERY: i64 = 60;
/// Messages between the reader and the outbound half.
const CONTROL_QUEUE: usize = 64;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const BAD_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const ERROR: u16 = 1011;
    pub const SESSION_ENDED: u16 = 4401;
    pub const REVOKED: u16 = 4403;
}

/// What one connection knows about itself, shared by its two halves.
pub struct Conn {
    pub state: AppState,
    pub principal: Principal,
    /// Whose publish budget and retention quota this connection's publishes count against:
    /// the device (or admin credential), shared by all its sockets.
    pub publisher: String,
    /// Recorded as the origin of this connection's publishes; unique per connection, so the
    /// publisher's own events can be recognised (and not echoed back to it).
    pub origin: String,
    /// Pings sent since the peer last showed a sign of life.
    outstanding: AtomicU32,
    /// A child of the daemon's shutdown token: checking it takes this connection's own lock,
    /// not one shared by every connection.
    shutdown: CancellationToken,
}

impl Conn {
    pub fn new(state: AppState, principal: Principal) -> Self {
        let publisher = principal.origin();
        let origin = format!("{publisher}/ws:{:016x}", rand::random::<u64>());
        let shutdown = state.shutdown.child_token();
        Self {
            state,
            principal,
            publisher,
            origin,
            outstanding: AtomicU32::new(0),
            shutdown,
        }
    }
}

/// From the reader to the outbound half.
#[derive(Debug)]
enum Control {
    /// An `ack` or `error` frame.
    Frame(String),
    Subscribe(Filter),
    Resume(i64),
    Close(u16, &'static str),
}

/// Why the outbound half stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    Shutdown,
    Slow,
    Revoked,
    Close(u16, &'static str),
    Internal,
    /// The peer went away (read side ended, or the socket failed).
    Gone,
}

/// Runs a connection to its end. `bus` must have been subscribed before this is called.
pub async fn run<S, R>(sink: S, stream: R, bus: broadcast::Receiver<Arc<Event>>, conn: Arc<Conn>)
where
    S: Sink<Message, Error = axum::Error> + Unpin + Send,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin + Send + 'static,
{
    let _gauge = Gauge::new(&conn.state);
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let mut reader = tokio::spawn(read_loop(stream, ctl_tx, conn.clone()));
    let wait = Outbound::new(sink, bus, ctl_rx, conn.clone()).run().await;
    // Let the reader see the peer's close reply, so the socket ends cleanly.
    if tokio::time::timeout(wait, &mut reader).await.is_err() {
        reader.abort();
    }
}

/// Counts the connection in `/metrics` for exactly as long as it lives.
struct Gauge(AppState);

impl Gauge {
    fn new(state: &AppState) -> Self {
        state.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
        state
            .metrics
            .ws_connections_total
            .fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0
            .metrics
            .ws_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

/// Bad frames allowed, on tokio's clock (node sessions use it too; per socket, so the injected wall clock has no say).
pub(super) struct BadFrames {
    bucket: TokenBucket,
    start: Instant,
}

impl BadFrames {
    pub(super) fn new() -> Self {
        Self {
            bucket: TokenBucket::new(BAD_PER_SEC, BAD_BURST, 0),
            start: Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
        let ms = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.bucket.take(ms).is_ok()
    }
}

async fn read_loop<R>(mut stream: R, ctl: mpsc::Sender<Control>, conn: Arc<Conn>)
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let shutdown = conn.shutdown.clone();
    let mut bad = BadFrames::new();
    loop {
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            m = stream.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                if let Some((code, reason)) = violation(&e) {
                    let _ = ctl.send(Control::Close(code, reason)).await;
                }
                break;
            }
            None => break,
        };
        conn.outstanding.store(0, Ordering::Relaxed);
        let outcome = match msg {
            Message::Text(text) => handle_text(text.as_str(), &conn).await,
            Message::Binary(_) => Err(FrameError::new(
                code::BINARY_UNSUPPORTED,
                "frames are JSON text; binary frames are not accepted",
            )),
            Message::Ping(_) | Message::Pong(_) => Ok(None),
            Message::Close(_) => break,
        };
        let reply = match outcome {
            Ok(None) => continue,
            Ok(Some(c)) => c,
            // Neither is the client's fault as a malformed frame is: a refused publish over
            // budget costs the client its event, not its socket.
            Err(e) if e.code == code::INTERNAL || e.code == code::RATE_LIMITED => {
                Control::Frame(e.render())
            }
            Err(e) => {
                if !bad.take() {
                    let _ = ctl
                        .send(Control::Close(close::POLICY, "too many bad frames"))
                        .await;
                    break;
                }
                Control::Frame(e.render())
            }
        };
        if ctl.send(reply).await.is_err() {
            break;
        }
    }
    drop(ctl);
    // Keep reading (and discarding) so the peer's close reply is seen and answered.
    while let Some(Ok(_)) = stream.next().await {}
}

/// The RFC 6455 close code for what tungstenite refused to read (it stops reading but leaves
/// the closing handshake to us): 1007 for a text frame that is not UTF-8, 1009 for a frame or
/// message beyond `MAX_MESSAGE`, 1002 for any other violation (unmasked client frame, reserved
/// opcode or bits, a control frame over 125 bytes or fragmented, a stray continuation).
/// `None`: the peer is simply gone (reset, I/O error), so there is nobody to tell.
pub(super) fn violation(e: &axum::Error) -> Option<(u16, &'static str)> {
    use std::error::Error as _;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.source().and_then(|s| s.downcast_ref::<WsError>())? {
        WsError::Utf8(_) => Some((close::BAD_DATA, "text frame is not UTF-8")),
        WsError::Capacity(_) => Some((close::TOO_BIG, "frame too large")),
        WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => None,
        WsError::Protocol(_) => Some((close::PROTOCOL, "protocol violation")),
        _ => None,
    }
}

/// Handles one text frame: `Ok(Some)` is something for the outbound half to do.
async fn handle_text(text: &str, conn: &Conn) -> Result<Option<Control>, FrameError> {
    match frames::parse(text)? {
        ClientFrame::Subscribe(filter) => Ok(Some(Control::Subscribe(filter))),
        ClientFrame::Resume { since } => Ok(Some(Control::Resume(since))),
        ClientFrame::Publish { id, topic, data } => {
            let ts = conn.state.clock.now_ms();
            if let Err(wait) = conn.state.publish_budget.take(&conn.publisher, ts) {
                conn.state
                    .metrics
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return Err(FrameError::rate_limited(&id, wait));
            }
            let (publisher, origin) = (conn.publisher.clone(), conn.origin.clone());
            let result = conn
                .state
                .store
                .write(move |tx| events::publish(tx, &topic, &data, &publisher, &origin, ts))
                .await;
            match result {
                Ok(seq) => Ok(Some(Control::Frame(frames::ack(&id, seq)))),
                Err(e) => {
                    tracing::warn!(error = %e, "could not record a published event");
                    Err(FrameError::new(
                        code::INTERNAL,
                        "the event was not recorded; publish it again",
                    )
                    .with_id(&id))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound

/// The bus side of the outbound half: live events waiting to go out, and the mode that decides
/// what an overflow means.
struct Intake {
    bus: broadcast::Receiver<Arc<Event>>,
    bus_open: bool,
    pending: VecDeque<Arc<Event>>,
    /// False until the client resumed or `HOLD` passed.
    live: bool,
    /// The log must be read from the cursor before live delivery continues.
    need_log: bool,
    /// Events were dropped from `pending` since the last log read began.
    overflowed: bool,
    conn: Arc<Conn>,
}

impl Intake {
    fn take(&mut self, r: Result<Arc<Event>, broadcast::error::RecvError>) -> Result<(), Stop> {
        use broadcast::error::RecvError;
        match r {
            Ok(ev) => {
                if self.conn.principal.revoked_by(&ev) {
                    return Err(Stop::Revoked);
                }
                if self.pending.len() >= QUEUE {
                    if self.live && !self.need_log {
                        return Err(Stop::Slow);
                    }
                    // Replaying or holding: the log has this event; read it from there.
                    self.overflowed = true;
                    self.need_log = true;
                } else {
                    self.pending.push_back(ev);
                }
            }
            // The bus ring moved past us; the log still has everything.
            Err(RecvError::Lagged(_)) => {
                self.pending.clear();
                self.overflowed = true;
                self.need_log = true;
            }
            Err(RecvError::Closed) => self.bus_open = false,
        }
        Ok(())
    }

    /// Takes whatever else is already waiting on the bus, up to a batch.
    fn take_ready(&mut self) -> Result<(), Stop> {
        for _ in 0..WRITE_BATCH {
            match self.bus.try_recv() {
                Ok(ev) => self.take(Ok(ev))?,
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.take(Err(broadcast::error::RecvError::Lagged(n)))?
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    self.take(Err(broadcast::error::RecvError::Closed))?
                }
            }
        }
        Ok(())
    }
}

struct Outbound<S> {
    sink: S,
    intake: Intake,
    ctl: mpsc::Receiver<Control>,
    conn: Arc<Conn>,
    cursor: i64,
    filter: Filter,
    /// Fires when holding ends (see `HOLD`).
    hold: Pin<Box<tokio::time::Sleep>>,
    last_touch: i64,
    ticker: tokio::time::Interval,
    /// Registered once on the connection's shutdown token, not once per loop turn.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Loop turns spent delivering without waiting (pings are checked every few of them).
    busy_turns: u32,
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

/// An event's pre-rendered frame. Copied (it is small, and tungstenite copies it into its
/// buffer anyway) rather than shared: a shared reference count touched by every connection
/// costs more than the copy.
fn event_message(ev: &Event) -> Option<Message> {
    if ev.frame.is_empty() {
        return None;
    }
    Some(Message::Text(Utf8Bytes::from(String::from(&*ev.frame))))
}

/// Writes `msgs` (one flush) while still draining the bus into `intake`, so a socket that
/// will not take our bytes never holds up what the connection must notice meanwhile
/// (revocation, overflow, shutdown).
async fn write_draining<S>(
    sink: &mut S,
    intake: &mut Intake,
    msgs: Vec<Message>,
) -> Result<(), Stop>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    let write = async {
        for m in msgs {
            sink.feed(m).await?;
        }
        sink.flush().await
    };
    tokio::pin!(write);
    // The common case: the socket takes it at once, no timer needed.
    if let Some(r) = (&mut write).now_or_never() {
        return r.map_err(|_| Stop::Gone);
    }
    let shutdown = intake.conn.shutdown.clone();
    let deadline = sleep(SEND_TIMEOUT);
    tokio::pin!(deadline);
    let mut shutting = false;
    loop {
        tokio::select! {
            biased;
            r = &mut write => return r.map_err(|_| Stop::Gone),
            _ = shutdown.cancelled(), if !shutting => {
                shutting = true;
                deadline.as_mut().reset(Instant::now() + SHUTDOWN_STEP);
            }
            r = intake.bus.recv(), if intake.bus_open => intake.take(r)?,
            _ = &mut deadline => return Err(if shutting { Stop::Gone } else { Stop::Slow }),
        }
    }
}

impl<S> Outbound<S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    fn new(
        sink: S,
        bus: broadcast::Receiver<Arc<Event>>,
        ctl: mpsc::Receiver<Control>,
        conn: Arc<Conn>,
    ) -> Self {
        let mut ticker = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            sink,
            intake: Intake {
                bus,
                bus_open: true,
                pending: VecDeque::new(),
                live: false,
                need_log: false,
                overflowed: false,
                conn: conn.clone(),
            },
            ctl,
            conn: conn.clone(),
            cursor: 0,
            filter: Filter::default(),
            hold: Box::pin(sleep(HOLD)),
            last_touch: 0,
            ticker,
            shutdown: Box::pin(conn.shutdown.clone().cancelled_owned()),
            busy_turns: 0,
        }
    }

    /// Runs until the connection ends; returns how long to wait for the reader afterwards.
    async fn run(mut self) -> Duration {
        let stop = match self.start().await {
            Ok(()) => loop {
                if let Err(stop) = self.step().await {
                    break stop;
                }
            },
            Err(stop) => stop,
        };
        self.finish(stop).await
    }

    /// `hello`, after the bus subscription and one consistent read of where the log stands.
    async fn start(&mut self) -> Result<(), Stop> {
        let device = self.conn.principal.device_id().cloned();
        let probe = device.clone();
        let (latest, revoked) = self
            .conn
            .state
            .store
            .read(move |c| {
                let revoked = match &probe {
                    Some(id) => registry::get(c, id)?.is_none_or(|d| d.revoked),
                    None => false,
                };
                Ok((events::latest_seq(c)?, revoked))
            })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "websocket: cannot read the event log");
                Stop::Internal
            })?;
        // Revoked between the upgrade and our subscription: the bus cannot tell us any more.
        if revoked {
            return Err(Stop::Revoked);
        }
        self.cursor = latest;
        self.touch_last_seen().await;
        let hello = frames::hello(device.as_ref(), latest);
        self.write(vec![text(hello)]).await
    }

    async fn write(&mut self, msgs: Vec<Message>) -> Result<(), Stop> {
        write_draining(&mut self.sink, &mut self.intake, msgs).await
    }

    /// One turn of the loop: catch up from the log, deliver what is queued, or wait.
    async fn step(&mut self) -> Result<(), Stop> {
        if self.intake.live && (self.intake.need_log || !self.intake.pending.is_empty()) {
            let replaying = self.intake.need_log;
            if replaying {
                self.catch_up_step().await?;
            } else {
                self.deliver_pending().await?;
            }
            // However busy the stream, shutdown, acks and pings still get their turn.
            self.busy_turns = self.busy_turns.wrapping_add(1);
            if replaying || self.busy_turns.is_multiple_of(32) {
                if self.conn.shutdown.is_cancelled() {
                    return Err(Stop::Shutdown);
                }
                if self.ticker.tick().now_or_never().is_some() {
                    self.heartbeat().await?;
                }
            }
            return match self.ctl.try_recv() {
                Ok(c) => self.on_control(c).await,
                Err(mpsc::error::TryRecvError::Empty) => Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => Err(Stop::Gone),
            };
        }
        let holding = !self.intake.live;
        // Shutdown is polled last: checking it takes a lock, and it is seen anyway whenever
        // the connection goes idle (and every few busy turns above).
        tokio::select! {
            biased;
            c = self.ctl.recv() => match c {
                Some(c) => self.on_control(c).await,
                None => Err(Stop::Gone),
            },
            r = self.intake.bus.recv(), if self.intake.bus_open => {
                self.intake.take(r)?;
                self.intake.take_ready()
            }
            _ = self.ticker.tick() => self.heartbeat().await,
            _ = &mut self.hold, if holding => {
                self.intake.live = true;
                Ok(())
            }
            _ = &mut self.shutdown => Err(Stop::Shutdown),
        }
    }

    /// Marks `ev` as passed and returns its frame if this client is to get it.
    fn admit(&mut self, ev: &Event) -> Option<Message> {
        self.cursor = ev.seq;
        let wanted = self.conn.principal.may_see(ev)
            && self.filter.matches(&ev.topic)
            && ev.origin != self.conn.origin;
        if wanted {
            event_message(ev)
        } else {
            None
        }
    }

    async fn deliver_pending(&mut self) -> Result<(), Stop> {
        let mut out = Vec::new();
        while let Some(ev) = self.intake.pending.pop_front() {
            if ev.seq <= self.cursor {
                continue;
            }
            if ev.seq != self.cursor + 1 {
                // A hole (the ring lagged or overflowed): the log fills it, then we go on.
                self.intake.pending.push_front(ev);
                self.intake.need_log = true;
                break;
            }
            if let Some(m) = self.admit(&ev) {
                out.push(m);
                if out.len() >= WRITE_BATCH {
                    break;
                }
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        self.write(out).await
    }

    /// One batch of the log from the cursor, written with backpressure: the next batch is read
    /// only once this one is in the socket, so the replay goes at the pace the client reads.
    /// Live events meanwhile wait in the log, not in the queue, so a long catch-up is never a
    /// reason to drop the client; only a write that stalls (`SEND_TIMEOUT`) or pruning that
    /// overtakes the cursor (the client fell out of retention) is.
    async fn catch_up_step(&mut self) -> Result<(), Stop> {
        self.intake.overflowed = false;
        let cursor = self.cursor;
        // The horizon is read after the batch: a prune that commits in between is seen.
        let (batch, horizon) = self
            .conn
            .state
            .store
            .read(move |c| Ok((events::since(c, cursor, REPLAY_BATCH)?, events::horizon(c)?)))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "websocket: cannot replay the event log");
                Stop::Internal
            })?;
        if cursor < horizon {
            // What it has not read yet is gone; on reconnect its resume gets `reset`.
            return Err(Stop::Slow);
        }
        let full = batch.len() as i64 == REPLAY_BATCH;
        let mut out = Vec::with_capacity(batch.len());
        for ev in &batch {
            if self.conn.principal.revoked_by(ev) {
                return Err(Stop::Revoked);
            }
            if let Some(m) = self.admit(ev) {
                out.push(m);
            }
        }
        if !out.is_empty() {
            self.write(out).await?;
        }
        if !full && !self.intake.overflowed {
            self.intake.need_log = false;
        }
        Ok(())
    }

    async fn on_control(&mut self, c: Control) -> Result<(), Stop> {
        match c {
            Control::Frame(f) => self.write(vec![text(f)]).await,
            Control::Subscribe(f) => {
                self.filter = f;
                Ok(())
            }
            Control::Resume(since) => self.resume(since).await,
            Control::Close(code, reason) => Err(Stop::Close(code, reason)),
        }
    }

    /// Every retained event after `since`, then live; `reset` if the log was pruned past
    /// `since` (below `events::horizon`), or `since` is not a seq this gateway ever issued. A
    /// second resume rewinds.
    async fn resume(&mut self, since: i64) -> Result<(), Stop> {
        let (latest, horizon) = self
            .conn
            .state
            .store
            .read(|c| Ok((events::latest_seq(c)?, events::horizon(c)?)))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "websocket: cannot read the event log");
                Stop::Internal
            })?;
        let missed = since > latest || since < horizon;
        self.intake.live = true;
        self.intake.need_log = true;
        if missed {
            self.cursor = latest;
            self.write(vec![text(frames::reset(latest))]).await
        } else {
            self.cursor = since;
            Ok(())
        }
    }

    async fn heartbeat(&mut self) -> Result<(), Stop> {
        if self.conn.outstanding.fetch_add(1, Ordering::Relaxed) >= MISSED_PONGS {
            return Err(Stop::Close(close::ERROR, "ping timeout"));
        }
        self.write(vec![Message::Ping(Bytes::new())]).await?;
        self.touch_last_seen().await;
        if let Principal::Admin(Admin::Session(sid)) = &self.conn.principal {
            let (sid, now) = (sid.clone(), self.conn.state.now());
            let valid = self
                .conn
                .state
                .store
                .read(move |c| crate::admin::session_valid(c, &sid, now))
                .await
                .unwrap_or(true);
            if !valid {
                return Err(Stop::Close(close::SESSION_ENDED, "session ended"));
            }
        }
        Ok(())
    }

    async fn touch_last_seen(&mut self) {
        let Some(id) = self.conn.principal.device_id().cloned() else {
            return;
        };
        let now = self.conn.state.now();
        if self.last_touch != 0 && now - self.last_touch < LAST_SEEN_EVERY {
            return;
        }
        self.last_touch = now;
        let r = self
            .conn
            .state
            .store
            .write(move |tx| registry::touch_last_seen(tx, &id, now))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record lastSeen");
        }
    }

    /// Says goodbye with the right close code; returns how long to wait for the reader.
    async fn finish(mut self, stop: Stop) -> Duration {
        let (code, reason, grace) = match stop {
            Stop::Gone => return Duration::ZERO,
            Stop::Shutdown => {
                self.flush_acks().await;
                (close::GOING_AWAY, "gateway shutting down", SHUTDOWN_STEP)
            }
            Stop::Slow => {
                self.conn
                    .state
                    .metrics
                    .ws_dropped_slow
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(origin = %self.conn.origin, "websocket too slow; closing");
                (close::POLICY, "too slow; resume on reconnect", CLOSE_GRACE)
            }
            Stop::Revoked => (close::REVOKED, "revoked", CLOSE_GRACE),
            Stop::Close(code, reason) => (code, reason, CLOSE_GRACE),
            Stop::Internal => (close::ERROR, "internal error", CLOSE_GRACE),
        };
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let shutdown = self.conn.shutdown.clone();
        let sent = tokio::select! {
            biased;
            r = tokio::time::timeout(grace, self.sink.send(frame)) => matches!(r, Ok(Ok(()))),
            // A close that is still stuck when the daemon stops must not hold it up.
            _ = async { shutdown.cancelled().await; sleep(SHUTDOWN_STEP).await } => false,
        };
        match (sent, code) {
            (false, _) => Duration::ZERO,
            (true, close::GOING_AWAY) => SHUTDOWN_STEP,
            (true, _) => CLOSE_WAIT,
        }
    }

    /// On shutdown: whatever the reader has acknowledged still goes out before 1001.
    async fn flush_acks(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_STEP;
        let mut out = Vec::new();
        while let Ok(Some(c)) = tokio::time::timeout_at(deadline, self.ctl.recv()).await {
            if let Control::Frame(f) = c {
                out.push(text(f));
            }
        }
        if !out.is_empty() {
            let _ = tokio::time::timeout_at(deadline, async {
                for m in out {
                    self.sink.feed(m).await?;
                }
                self.sink.flush().await
            })
            .await;
        }
    }
}

/// Runs an upgraded axum socket.
pub async fn serve_socket(socket: axum::extract::ws::WebSocket, conn: Arc<Conn>) {
    // Subscribe before anything reads the log (see the module docs).
    let bus = conn.state.bus.subscribe();
    let (sink, stream) = socket.split();
    run(sink, stream, bus, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use serde_json::{json, Value};

    type Out = tokio::sync::mpsc::UnboundedReceiver<Message>;

    /// Runs a session over in-memory channels with its own (small) bus.
    fn session(
        state: &AppState,
        bus: broadcast::Receiver<Arc<Event>>,
    ) -> (tokio::sync::mpsc::UnboundedSender<Message>, Out) {
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let sink = Box::pin(futures_util::sink::unfold(
            out_tx,
            |tx, m: Message| async move {
                tx.send(m).map_err(axum::Error::new)?;
                Ok::<_, axum::Error>(tx)
            },
        ));
        let (in_tx, in_rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
        let stream = Box::pin(futures_util::stream::unfold(in_rx, |mut rx| async move {
            rx.recv().await.map(|m| (Ok(m), rx))
        }));
        let conn = Arc::new(Conn::new(state.clone(), Principal::Admin(Admin::Token(1))));
        tokio::spawn(run(sink, stream, bus, conn));
        (in_tx, out_rx)
    }

    async fn next_json(out: &mut Out) -> Value {
        loop {
            match out.recv().await {
                Some(Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(_) => {}
                None => panic!("session ended"),
            }
        }
    }

    /// Appends `n` events and returns them as the tailer would broadcast them.
    async fn append(state: &AppState, n: usize) -> Vec<Arc<Event>> {
        let from = state.store.read(events::latest_seq).await.unwrap();
        state
            .store
            .write(move |tx| {
                for i in 0..n {
                    events::append(tx, "ui.sync", &json!({ "i": i }), "test", 0)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let evs = state
            .store
            .read(move |c| events::since(c, from, 1000))
            .await
            .unwrap();
        evs.into_iter().map(Arc::new).collect()
    }

    #[tokio::test]
    async fn a_lagged_bus_is_refilled_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            crate::build_state(Config::for_test(dir.path(), ManualClock::new(0)), 0).unwrap();
        let (bus_tx, bus_rx) = broadcast::channel(4);
        // 30 events go out on a ring of 4 before the session reads any: it starts lagged.
        for ev in append(&state, 30).await {
            let _ = bus_tx.send(ev);
        }
        let (input, mut out) = session(&state, bus_rx);
        input
            .send(Message::Text(r#"{"type":"resume","since":0}"#.into()))
            .unwrap();
        assert_eq!(next_json(&mut out).await["type"], "hello");
        for want in 1..=30 {
            assert_eq!(next_json(&mut out).await["seq"], want);
        }
        // And live after that, again overflowing the ring between two reads.
        for ev in append(&state, 10).await {
            let _ = bus_tx.send(ev);
        }
        for want in 31..=40 {
            assert_eq!(next_json(&mut out).await["seq"], want);
        }
        drop(input);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_frame_bucket_refills() {
        let mut b = BadFrames::new();
        for _ in 0..20 {
            assert!(b.take());
        }
        assert!(!b.take());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(b.take());
        assert!(!b.take());
    }
}
