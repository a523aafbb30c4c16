//! The one entry point every board calls: [`run`]. Four sub-loops joined in one future, nothing
//! spawned, no `Send` bounds (mini-redis's `run(listener, shutdown)` signature, trouble's
//! board-agnostic app body):
//!
//! - the **controller** acts on the lifecycle state: open the setup access point and wait for a
//!   provisioning request, join Wi-Fi, register, hold the gateway session with reconnects;
//! - the **AP server** serves [`crate::ap::router`] on [`crate::ap::WORKERS`] connections at a
//!   time while the access point is up, and drops connections otherwise;
//! - the **relay driver** releases the relay at its deadline;
//! - the **door** starts the BLE radio once the node is registered and serves the door service
//!   v2 from its grants, with or without a gateway session (NODES.md §8); every decision goes to
//!   the decision ring, which the controller's session uploads.
//!
//! Shared state lives in `RefCell`s that are never borrowed across an `.await`. The store sits
//! behind an async mutex shared by the controller and the door; flash writes are never raced
//! against a timer (a cancelled write could leave a half-written item for the next boot to
//! repair). Errors from the radio or the network are
//! logged and retried after a documented wait; only a flash that cannot be read at boot ends
//! `run` with an error.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::convert::Infallible;
use core::future::Future;

use embassy_futures::join::join;
use embassy_futures::select::{select, select4, Either, Either4};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_sync::signal::Signal;
use zeroize::Zeroizing;

use crate::ap::{self, ApShared};
use crate::backoff::Backoff;
use crate::board::{
    ApListener, Board, Clock, ConnectError, DoorRadio, HttpClient, Relay, Rng, Wifi, WifiError,
    WsConn, WsConnector, WsMessage,
};
use crate::board::{ConnId, DoorEvent};
use crate::door::{Door, DoorAction};
use crate::grants::{self, GrantStore};
use crate::identity::Identity;
use crate::lifecycle::{Event, Failure, Lifecycle, State};
use crate::pairing::Pairing;
use crate::register::{self, Step};
use crate::relay::{RelayEffect, RelayEvent, RelayTimer};
use crate::ring::DecisionRing;
use crate::session::{Session, SessionEffect, SessionEvent};
use crate::storage::{CredentialStore, Credentials, DecisionStore, GrantBlobStore, StoreError};
use crate::time::{Instant, WallClock};
use crate::Kind;

/// After a 202 the access point stays up this long so the answer reaches the phone.
pub const AP_CLOSE_GRACE_MS: u64 = 1_000;
/// Longest wait for joining a network (association, handshake, DHCP).
pub const JOIN_TIMEOUT_MS: u64 = 30_000;
/// Longest wait for a WebSocket connect (TCP + upgrade).
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Failed connects in a row before the node looks for its gateway at another address.
pub const LOCATE_AFTER_FAILURES: u32 = 2;
/// Longest wait for one frame to go out; a gateway that stops reading gets a reconnect.
pub const SEND_TIMEOUT_MS: u64 = 5_000;
/// Wait before retrying a failed access point start or accept.
const RADIO_RETRY_MS: u64 = 5_000;

/// What the board's `main` decides.
pub struct Config {
    /// Door or vehicle.
    pub kind: Kind,
    /// The setup access point's SSID ([`crate::setup_code::ssid`]).
    pub setup_ssid: String,
    /// The label's setup code: the access point's passphrase.
    pub setup_code: Zeroizing<String>,
    /// Erase credentials and key pair before starting (factory reset).
    pub factory_reset: bool,
}

/// Why `run` stopped before its shutdown signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunError {
    /// The node's flash cannot be used.
    Storage(StoreError),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        RunError::Storage(e)
    }
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

/// Runs the node until `shutdown` completes (the relay is released on the way out).
pub async fn run<S, R, C, W, H, N, A, G, D>(
    board: Board<S, R, C, W, H, N, A, G, D>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError>
where
    S: CredentialStore + GrantBlobStore + DecisionStore,
    R: Relay,
    C: Clock,
    W: Wifi,
    H: HttpClient,
    N: WsConnector,
    A: ApListener,
    G: Rng,
    D: DoorRadio,
{
    let Board {
        mut store,
        relay,
        clock,
        wifi,
        http,
        ws,
        ap,
        mut rng,
        mut radio,
    } = board;
    // Make sure the relay starts released whatever the pin's reset state.
    let mut relay = relay;
    if relay.set(false).is_err() {
        log::error!("relay: cannot drive the output");
    }
    if config.factory_reset {
        store.erase().await?;
        log::info!("factory reset: credentials and key pair erased");
    }
    let identity = load_identity(&mut store, &mut rng).await?;
    let credentials = match store.credentials().await {
        Ok(c) => c,
        Err(StoreError::Corrupt) => {
            log::error!("stored credentials unreadable; starting unprovisioned");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut door = DoorShared {
        door_key: identity.door_key(),
        grants: None,
        ring: boot_ring(&mut store).await?,
        wall: WallClock::default(),
        online: false,
    };
    if let Some(c) = &credentials {
        if let Some(grants) = open_grants(c, identity.door_key(), &mut store).await {
            door.install(grants);
        }
    }
    let shared = RefCell::new(ApShared {
        lifecycle: Lifecycle::boot(credentials),
        networks: Vec::new(),
        kind: config.kind,
        pubkey: identity.public_base64(),
    });
    log::info!("node starts {}", shared.borrow().lifecycle.state().as_str());
    let ctx = Ctx {
        clock: &clock,
        shared: &shared,
        relay: RefCell::new(RelayCtl {
            timer: RelayTimer::default(),
            pin: relay,
        }),
        relay_wake: Signal::new(),
        relay_changed: Signal::new(),
        accepted: Signal::new(),
        ap_up: Cell::new(false),
        ap_ready: [Signal::new(), Signal::new()],
        door: RefCell::new(door),
        door_ready: Signal::new(),
        decided: Signal::new(),
    };
    let store = Mutex::new(store);
    let rng = RefCell::new(rng);
    let mut parts = Parts {
        store: &store,
        wifi,
        http,
        ws,
        rng: &rng,
    };
    let outcome = select(
        shutdown,
        select4(
            controller(&ctx, config, &mut parts),
            join(serve_ap(&ctx, &ap, 0), serve_ap(&ctx, &ap, 1)),
            drive_relay(&ctx),
            serve_door(&ctx, config.kind, &mut radio, &store, &rng),
        ),
    )
    .await;
    if ctx.relay.borrow_mut().pin.set(false).is_err() {
        log::error!("relay: cannot release on shutdown");
    }
    match outcome {
        Either::First(()) => Ok(()),
        Either::Second(Either4::First(Err(e))) => Err(e),
        Either::Second(Either4::First(Ok(never))) => match never {},
        Either::Second(
            Either4::Second((never, _)) | Either4::Third(never) | Either4::Fourth(never),
        ) => match never {},
    }
}

/// The decision ring as stored; an unreadable ring starts empty (its entries are lost).
async fn boot_ring(store: &mut impl DecisionStore) -> Result<DecisionRing, RunError> {
    let meta = unless_corrupt(store.ring_meta().await, "decision ring bookkeeping")?;
    let entries = unless_corrupt(store.ring_entries().await, "decision ring")?;
    let ring = DecisionRing::boot(&entries, meta);
    if !ring.is_empty() {
        log::info!("decision ring: {} decisions to upload", ring.len());
    }
    Ok(ring)
}

/// A stored item that cannot be decoded is logged and replaced by its default (an empty ring,
/// numbering from the newest stored entry); a flash that fails ends `run`.
fn unless_corrupt<T: Default>(read: Result<T, StoreError>, what: &str) -> Result<T, RunError> {
    match read {
        Err(StoreError::Corrupt) => {
            log::error!("{what} unreadable; starting without it");
            Ok(T::default())
        }
        other => Ok(other?),
    }
}

/// The door's side of the shared state: grants, ring, wall time, and whether a gateway session
/// is up (a decision made without one is marked offline).
struct DoorShared {
    door_key: p256::SecretKey,
    grants: Option<GrantStore>,
    ring: DecisionRing,
    wall: WallClock,
    online: bool,
}

impl DoorShared {
    /// Takes the grant store of a registered node into use; the wall clock's floor rises to its
    /// snapshot's `issued_at`, the time itself stays unknown until a `hello`.
    fn install(&mut self, grants: GrantStore) {
        let issued = i64::try_from(grants.set().issued_at()).unwrap_or(i64::MAX);
        self.wall.raise_floor(issued, Instant::default());
        self.grants = Some(grants);
    }
}

/// Opens the grant store of a registered node and re-applies the stored grants (NODES.md §8).
async fn open_grants(
    credentials: &Credentials,
    door_key: p256::SecretKey,
    store: &mut impl GrantBlobStore,
) -> Option<GrantStore> {
    let Some(mut grants) = GrantStore::new(credentials, door_key) else {
        log::error!("door: stored node id or gateway key unreadable; door off");
        return None;
    };
    match store.grant_blob().await {
        Ok(Some(blob)) => match grants.boot(&blob) {
            Ok(applied) => log::info!(
                "door: {} stored grants re-applied ({} ECDH)",
                applied.grants,
                applied.new_keys
            ),
            Err(e) => log::error!("door: stored grants refused ({e}); none held"),
        },
        Ok(None) => {}
        Err(e) => log::error!("door: stored grants unreadable ({e}); none held"),
    }
    Some(grants)
}

async fn load_identity(
    store: &mut impl CredentialStore,
    rng: &mut impl Rng,
) -> Result<Identity, RunError> {
    match store.identity().await {
        Ok(Some(identity)) => return Ok(identity),
        Ok(None) => {}
        Err(StoreError::Corrupt) => {
            // A key pair that cannot be read is useless; a new one needs a new registration.
            log::error!("stored key pair unreadable; erasing and starting unprovisioned");
            store.erase().await?;
        }
        Err(e) => return Err(e.into()),
    }
    let identity = Identity::generate(rng);
    store.save_identity(&identity).await?;
    log::info!("new node key pair made");
    Ok(identity)
}

struct RelayCtl<R> {
    timer: RelayTimer,
    pin: R,
}

struct Ctx<'a, C, R> {
    clock: &'a C,
    shared: &'a RefCell<ApShared>,
    relay: RefCell<RelayCtl<R>>,
    /// The relay's deadline changed.
    relay_wake: Signal<NoopRawMutex, ()>,
    /// The relay went active (`true`) or idle: the session reports it.
    relay_changed: Signal<NoopRawMutex, bool>,
    /// The AP API accepted a provisioning request.
    accepted: Signal<NoopRawMutex, ()>,
    /// The setup access point is up (the AP API serves only then).
    ap_up: Cell<bool>,
    /// Raised when `ap_up` becomes true, one per AP worker (a `Signal` wakes one waiter).
    ap_ready: [Signal<NoopRawMutex, ()>; ap::WORKERS],
    /// Grants, decision ring, wall time.
    door: RefCell<DoorShared>,
    /// The grant store exists (the node is registered): the door may start.
    door_ready: Signal<NoopRawMutex, ()>,
    /// A decision was recorded: the session uploads it.
    decided: Signal<NoopRawMutex, ()>,
}

impl<C: Clock, R: Relay> Ctx<'_, C, R> {
    async fn sleep_ms(&self, ms: u64) {
        self.clock.sleep_until(self.clock.now() + ms).await;
    }

    fn state(&self) -> State {
        self.shared.borrow().lifecycle.state()
    }

    fn event(&self, event: Event) {
        let mut s = self.shared.borrow_mut();
        let before = s.lifecycle.state();
        match s.lifecycle.on(event) {
            Ok(after) if after != before => {
                log::info!("node {} → {}", before.as_str(), after.as_str())
            }
            Ok(_) => {}
            Err(refused) => log::warn!("event ignored in state {}", refused.0.as_str()),
        }
    }

    /// Starts (or restarts) a pulse; `false` if the pin could not be driven.
    fn pulse(&self, ms: u32, now: Instant) -> bool {
        let mut r = self.relay.borrow_mut();
        let was_active = r.timer.is_active();
        if r.timer.on(RelayEvent::Pulse { ms }, now) == Some(RelayEffect::Energise)
            && r.pin.set(true).is_err()
        {
            r.timer.abort();
            log::error!("relay: cannot energise");
            return false;
        }
        drop(r);
        self.relay_wake.signal(());
        if !was_active {
            self.relay_changed.signal(true);
        }
        true
    }
}

struct Parts<'a, S, W, H, N, G> {
    store: &'a Mutex<NoopRawMutex, S>,
    wifi: W,
    http: H,
    ws: N,
    rng: &'a RefCell<G>,
}

impl<S, W, H, N, G: Rng> Parts<'_, S, W, H, N, G> {
    fn random(&self) -> u32 {
        self.rng.borrow_mut().next_u32()
    }
}

async fn drive_relay<C: Clock, R: Relay>(ctx: &Ctx<'_, C, R>) -> Infallible {
    loop {
        let deadline = ctx.relay.borrow().timer.next_deadline();
        match deadline {
            None => ctx.relay_wake.wait().await,
            Some(at) => {
                select(ctx.relay_wake.wait(), ctx.clock.sleep_until(at)).await;
            }
        }
        let now = ctx.clock.now();
        let mut r = ctx.relay.borrow_mut();
        if r.timer.on(RelayEvent::Tick, now) == Some(RelayEffect::Release) {
            if r.pin.set(false).is_err() {
                log::error!("relay: cannot release");
            }
            drop(r);
            ctx.relay_changed.signal(false);
        }
    }
}

// `run` joins exactly this many `serve_ap` workers.
const _: () = assert!(ap::WORKERS == 2);

/// AP API worker number `worker`; [`ap::WORKERS`] of them run joined.
async fn serve_ap<C: Clock, R: Relay, A: ApListener>(
    ctx: &Ctx<'_, C, R>,
    ap: &A,
    worker: usize,
) -> Infallible {
    let Some(ready) = ctx.ap_ready.get(worker) else {
        return core::future::pending().await;
    };
    let app = ap::router(ctx.shared, &ctx.accepted);
    let config = picoserve::Config::new(picoserve::Timeouts {
        start_read_request: picoserve::time::Duration::from_secs(5),
        persistent_start_read_request: picoserve::time::Duration::from_secs(1),
        read_request: picoserve::time::Duration::from_secs(3),
        write: picoserve::time::Duration::from_secs(3),
    });
    let mut buf = vec![0u8; ap::HTTP_BUFFER];
    loop {
        if ctx.shared.borrow().lifecycle.ap_open() && !ctx.ap_up.get() {
            // About to open: let early clients wait in the backlog rather than be dropped.
            ready.wait().await;
            continue;
        }
        let socket = match ap.accept().await {
            Ok(s) => s,
            Err(_) => {
                log::warn!("ap: accept failed");
                ctx.sleep_ms(100).await;
                continue;
            }
        };
        if !(ctx.ap_up.get() && ctx.shared.borrow().lifecycle.ap_open()) {
            // Registered, or mid-attempt: the AP API is closed.
            drop(socket);
            continue;
        }
        if let Err(e) = picoserve::Server::custom(&app, ap.timer(), &config, &mut buf)
            .serve(socket)
            .await
        {
            log::debug!("ap: connection ended: {e:?}");
        }
    }
}

async fn controller<C, R, S, W, H, N, G>(
    ctx: &Ctx<'_, C, R>,
    config: &Config,
    parts: &mut Parts<'_, S, W, H, N, G>,
) -> Result<Infallible, RunError>
where
    C: Clock,
    R: Relay,
    S: CredentialStore + GrantBlobStore + DecisionStore,
    W: Wifi,
    H: HttpClient,
    N: WsConnector,
    G: Rng,
{
    // Whether the station is on the home network (after `join`, or rejoined after a reboot).
    let mut station_up = false;
    let mut rejoin = Backoff::default();
    loop {
        match ctx.state() {
            State::Unprovisioned | State::WifiFailed | State::RegisterFailed => {
                setup_ap(ctx, config, &mut parts.wifi).await;
            }
            State::Joining => station_up = join_provisioned(ctx, &mut parts.wifi).await,
            State::Registering => register(ctx, config, parts).await?,
            State::Online | State::Offline if !station_up => {
                station_up = rejoin_stored(ctx, &mut parts.wifi).await;
                if !station_up {
                    let ms = rejoin.next_delay_ms(parts.random());
                    log::info!("wifi: rejoining in {ms} ms");
                    ctx.sleep_ms(u64::from(ms)).await;
                }
            }
            State::Online | State::Offline => hold_session(ctx, config, parts).await?,
            State::Revoked => {
                log::warn!("node revoked by the gateway; a factory reset is the way out");
                core::future::pending::<()>().await;
            }
        }
    }
}

async fn setup_ap<C: Clock, R: Relay>(ctx: &Ctx<'_, C, R>, config: &Config, wifi: &mut impl Wifi) {
    // Scan first: a single radio cannot scan while it serves the access point.
    match wifi.scan().await {
        Ok(mut networks) => {
            networks.truncate(ap::MAX_NETWORKS * 2);
            ctx.shared.borrow_mut().networks = networks;
        }
        Err(e) => log::warn!("wifi: scan failed: {e:?}"),
    }
    if let Err(e) = wifi
        .open_setup_ap(&config.setup_ssid, &config.setup_code)
        .await
    {
        log::error!("wifi: cannot open the setup access point: {e:?}");
        ctx.sleep_ms(RADIO_RETRY_MS).await;
        return;
    }
    log::info!("setup access point {} open", config.setup_ssid);
    ctx.ap_up.set(true);
    for ready in &ctx.ap_ready {
        ready.signal(());
    }
    while ctx.shared.borrow().lifecycle.ap_open() {
        ctx.accepted.wait().await;
    }
    ctx.sleep_ms(AP_CLOSE_GRACE_MS).await;
    ctx.ap_up.set(false);
    wifi.close_setup_ap().await;
}

/// Joins the provisioned network; `true` if the station is up.
async fn join_provisioned<C: Clock, R: Relay>(ctx: &Ctx<'_, C, R>, wifi: &mut impl Wifi) -> bool {
    let Some((ssid, password)) = ctx
        .shared
        .borrow()
        .lifecycle
        .pending()
        .map(|p| (p.wifi_ssid.clone(), p.wifi_password.clone()))
    else {
        // Unreachable by construction (joining always has a request); start over.
        ctx.event(Event::WifiFailed(WifiError::Failed));
        return false;
    };
    match join_network(ctx, wifi, &ssid, &password).await {
        Ok(()) => {
            ctx.event(Event::WifiJoined);
            true
        }
        Err(e) => {
            ctx.event(Event::WifiFailed(e));
            false
        }
    }
}

/// Rejoins the stored network after a reboot; `true` if the station is up.
async fn rejoin_stored<C: Clock, R: Relay>(ctx: &Ctx<'_, C, R>, wifi: &mut impl Wifi) -> bool {
    let stored = ctx
        .shared
        .borrow()
        .lifecycle
        .credentials()
        .map(|c| (c.wifi_ssid.clone(), c.wifi_password.clone()));
    match stored {
        Some((ssid, password)) => join_network(ctx, wifi, &ssid, &password).await.is_ok(),
        None => false,
    }
}

async fn join_network<C: Clock, R: Relay>(
    ctx: &Ctx<'_, C, R>,
    wifi: &mut impl Wifi,
    ssid: &str,
    password: &str,
) -> Result<(), WifiError> {
    log::info!("wifi: joining {ssid}");
    let deadline = ctx.clock.now() + JOIN_TIMEOUT_MS;
    let result = match select(wifi.join(ssid, password), ctx.clock.sleep_until(deadline)).await {
        Either::First(r) => r,
        Either::Second(()) => Err(WifiError::Failed),
    };
    if let Err(e) = result {
        log::warn!("wifi: joining {ssid} failed: {e:?}");
    }
    result
}

async fn register<C, R, S, W, H, N, G>(
    ctx: &Ctx<'_, C, R>,
    config: &Config,
    parts: &mut Parts<'_, S, W, H, N, G>,
) -> Result<(), RunError>
where
    C: Clock,
    R: Relay,
    S: CredentialStore + GrantBlobStore,
    H: HttpClient,
    G: Rng,
{
    let Some(req) = ctx.shared.borrow().lifecycle.pending().cloned() else {
        ctx.event(Event::RegisterFailed(failure(
            register::BAD_ANSWER,
            "no request",
        )));
        return Ok(());
    };
    let pubkey = ctx.shared.borrow().pubkey.clone();
    let url = register::url(&req);
    let body = register::request_body(&req, &pubkey, config.kind);
    let mut attempts = register::Attempts::default();
    loop {
        log::info!("register: posting to {url}");
        let answer = parts.http.post_json(&url, &body).await;
        let random = parts.random();
        match attempts.next(&req, answer.as_ref().map_err(|e| *e), random) {
            Step::Registered(credentials) => {
                // Stored before anything reports success (NODES.md §3.2).
                let saved = parts
                    .store
                    .lock()
                    .await
                    .save_credentials(&credentials)
                    .await;
                if let Err(e) = saved {
                    log::error!("register: cannot store credentials: {e}");
                    ctx.event(Event::RegisterFailed(failure(
                        "STORAGE",
                        "the node could not store its credentials",
                    )));
                    return Ok(());
                }
                log::info!("register: registered as {}", credentials.node_id);
                let door_key = ctx.door.borrow().door_key.clone();
                let grants = {
                    let mut store = parts.store.lock().await;
                    open_grants(&credentials, door_key, &mut *store).await
                };
                if let Some(grants) = grants {
                    ctx.door.borrow_mut().install(grants);
                    ctx.door_ready.signal(());
                }
                ctx.event(Event::Registered(credentials));
                return Ok(());
            }
            Step::Failed { code, message } => {
                log::warn!("register: failed with {code}");
                ctx.event(Event::RegisterFailed(Failure { code, message }));
                return Ok(());
            }
            Step::Wait(ms) => ctx.sleep_ms(u64::from(ms)).await,
        }
    }
}

fn failure(code: &str, message: &str) -> Failure {
    Failure {
        code: String::from(code),
        message: String::from(message),
    }
}

enum SessionEnd {
    Closed,
    Revoked,
}

async fn hold_session<C, R, S, W, H, N, G>(
    ctx: &Ctx<'_, C, R>,
    config: &Config,
    parts: &mut Parts<'_, S, W, H, N, G>,
) -> Result<(), RunError>
where
    C: Clock,
    R: Relay,
    S: CredentialStore + GrantBlobStore + DecisionStore,
    N: WsConnector,
    G: Rng,
{
    let Some(mut credentials) = ctx.shared.borrow().lifecycle.credentials().cloned() else {
        ctx.event(Event::FactoryReset);
        return Ok(());
    };
    let mut backoff = Backoff::default();
    let mut failed_connects = 0u32;
    loop {
        if failed_connects >= LOCATE_AFTER_FAILURES {
            failed_connects = 0;
            relocate(ctx, parts, &mut credentials).await?;
        }
        let deadline = ctx.clock.now() + CONNECT_TIMEOUT_MS;
        let connected = select(
            parts.ws.connect(&credentials.ws_url, &credentials.node_key),
            ctx.clock.sleep_until(deadline),
        )
        .await;
        let end = match connected {
            Either::First(Ok(mut conn)) => {
                failed_connects = 0;
                let started = ctx.clock.now();
                let end = session(ctx, config, &mut conn, parts.store).await;
                {
                    let mut door = ctx.door.borrow_mut();
                    door.online = false;
                    door.ring.disconnected();
                }
                ctx.event(Event::SessionDown);
                backoff.session_ended(ctx.clock.now().millis_since(started));
                end
            }
            Either::First(Err(ConnectError::Status(403))) => SessionEnd::Revoked,
            Either::First(Err(e)) => {
                log::warn!("session: connect failed: {e:?}");
                failed_connects += 1;
                SessionEnd::Closed
            }
            Either::Second(()) => {
                log::warn!("session: connect timed out");
                failed_connects += 1;
                SessionEnd::Closed
            }
        };
        if let SessionEnd::Revoked = end {
            ctx.event(Event::Revoked);
            let revoked = ctx.shared.borrow().lifecycle.credentials().cloned();
            if let Some(c) = revoked {
                parts.store.lock().await.save_credentials(&c).await?;
            }
            return Ok(());
        }
        let ms = backoff.next_delay_ms(parts.random());
        log::info!("session: reconnecting in {ms} ms");
        ctx.sleep_ms(u64::from(ms)).await;
    }
}

/// Asks the board where the paired gateway is now; a new, well-formed address replaces the
/// stored one (in storage too, so a reboot keeps it).
async fn relocate<C, R, S, W, H, N, G>(
    ctx: &Ctx<'_, C, R>,
    parts: &mut Parts<'_, S, W, H, N, G>,
    credentials: &mut Credentials,
) -> Result<(), RunError>
where
    C: Clock,
    R: Relay,
    S: CredentialStore + GrantBlobStore + DecisionStore,
    N: WsConnector,
    G: Rng,
{
    let deadline = ctx.clock.now() + CONNECT_TIMEOUT_MS;
    let found = match select(
        parts.ws.locate(&credentials.gateway_id),
        ctx.clock.sleep_until(deadline),
    )
    .await
    {
        Either::First(found) => found,
        Either::Second(()) => None,
    };
    let Some(url) = found else {
        return Ok(());
    };
    if url == credentials.ws_url || !crate::register::ws_url_ok(&url) {
        return Ok(());
    }
    log::info!("session: gateway {} found at {url}", credentials.gateway_id);
    credentials.ws_url = url;
    ctx.shared.borrow_mut().lifecycle.moved(&credentials.ws_url);
    parts
        .store
        .lock()
        .await
        .save_credentials(credentials)
        .await?;
    Ok(())
}

/// Sends one frame within [`SEND_TIMEOUT_MS`]; `false` when the session must end.
async fn send<C: Clock, R: Relay>(ctx: &Ctx<'_, C, R>, conn: &mut impl WsConn, text: &str) -> bool {
    let deadline = ctx.clock.now() + SEND_TIMEOUT_MS;
    match select(conn.send_text(text), ctx.clock.sleep_until(deadline)).await {
        Either::First(Ok(())) => true,
        Either::First(Err(_)) => false,
        Either::Second(()) => {
            log::warn!("session: gateway not reading; reconnecting");
            false
        }
    }
}

async fn session<C: Clock, R: Relay, S: GrantBlobStore + DecisionStore>(
    ctx: &Ctx<'_, C, R>,
    config: &Config,
    conn: &mut impl WsConn,
    store: &Mutex<NoopRawMutex, S>,
) -> SessionEnd {
    let relay_active = ctx.relay.borrow().timer.is_active();
    let mut s = Session::new(config.kind, relay_active, ctx.clock.now());
    // A change signalled before this session is already in `relay_active`.
    ctx.relay_changed.reset();
    loop {
        let event = select4(
            conn.recv(),
            ctx.clock.sleep_until(s.next_deadline()),
            ctx.relay_changed.wait(),
            ctx.decided.wait(),
        )
        .await;
        let now = ctx.clock.now();
        let was_up = s.is_up();
        let mut effects = {
            let mut door = ctx.door.borrow_mut();
            let wall = &mut door.wall;
            match event {
                Either4::First(WsMessage::Text(text)) => s.on(SessionEvent::Text(&text), now, wall),
                Either4::First(WsMessage::Activity) => s.on(SessionEvent::Activity, now, wall),
                Either4::First(WsMessage::Close(code)) => {
                    log::info!("session: closed by the gateway ({code:?})");
                    return if code == Some(4403) {
                        SessionEnd::Revoked
                    } else {
                        SessionEnd::Closed
                    };
                }
                Either4::Second(()) => s.on(SessionEvent::Tick, now, wall),
                Either4::Third(active) => s.on(SessionEvent::RelayChanged(active), now, wall),
                // Uploaded below.
                Either4::Fourth(()) => Vec::new(),
            }
        };
        if !was_up && s.is_up() {
            ctx.door.borrow_mut().online = true;
            ctx.event(Event::SessionUp);
        }
        while !effects.is_empty() {
            let mut more = Vec::new();
            for effect in effects {
                match effect {
                    SessionEffect::Send(text) => {
                        if !send(ctx, conn, &text).await {
                            return SessionEnd::Closed;
                        }
                    }
                    SessionEffect::Pulse { id, ms } => {
                        let ok = ctx.pulse(ms, now);
                        log::info!("session: command {id} unlock {ms} ms: ok={ok}");
                        let mut door = ctx.door.borrow_mut();
                        more.extend(s.on(SessionEvent::PulseDone { id, ok }, now, &mut door.wall));
                    }
                    SessionEffect::Close => {
                        log::warn!("session: gateway silent for 60 s; reconnecting");
                        conn.close(1001).await;
                        return SessionEnd::Closed;
                    }
                    SessionEffect::Grants { snapshot, pulse_ms } => {
                        let ack = apply_grants(ctx, store, &snapshot, pulse_ms).await;
                        more.push(SessionEffect::Send(ack));
                    }
                    SessionEffect::DecisionsAck { up_to } => {
                        let writes = ctx.door.borrow_mut().ring.ack(up_to);
                        writes.store(&mut *store.lock().await).await;
                    }
                }
            }
            effects = more;
        }
        if s.is_up() {
            let upload = ctx.door.borrow_mut().ring.upload();
            if let Some(frame) = upload {
                if !send(ctx, conn, &frame).await {
                    return SessionEnd::Closed;
                }
            }
        }
    }
}

/// Applies a `grants` frame, persists what was applied, and returns the `grants_ack`. The
/// store is held from the change to its write, as for a vehicle's pairing, so that the blob
/// written last is the set held last.
async fn apply_grants<C: Clock, R: Relay, S: GrantBlobStore>(
    ctx: &Ctx<'_, C, R>,
    store: &Mutex<NoopRawMutex, S>,
    snapshot: &str,
    pulse_ms: Option<u64>,
) -> String {
    let mut store = store.lock().await;
    let outcome = {
        let mut door = ctx.door.borrow_mut();
        let door = &mut *door;
        let Some(grants) = door.grants.as_mut() else {
            // No usable node id or gateway key: nothing can be verified.
            return grants::Outcome::Refused {
                version: 0,
                why: grants::Refusal::BadSnapshot,
            }
            .ack();
        };
        let outcome = grants.apply_frame(snapshot, pulse_ms);
        let issued = i64::try_from(grants.set().issued_at()).unwrap_or(i64::MAX);
        door.wall.raise_floor(issued, ctx.clock.now());
        outcome
    };
    grants::store_outcome(&outcome, &mut *store).await;
    drop(store);
    outcome.ack()
}

/// The door: waits for the grant store (a registered node), starts the radio (with the
/// pairing service on a vehicle), then serves its events for ever, online or not.
async fn serve_door<C, R, S, D, G>(
    ctx: &Ctx<'_, C, R>,
    kind: Kind,
    radio: &mut D,
    store: &Mutex<NoopRawMutex, S>,
    rng: &RefCell<G>,
) -> Infallible
where
    C: Clock,
    R: Relay,
    S: DecisionStore + GrantBlobStore,
    D: DoorRadio,
    G: Rng,
{
    let vehicle = kind == Kind::Vehicle;
    loop {
        let tag = ctx.door.borrow().grants.as_ref().map(GrantStore::door_tag);
        let Some(tag) = tag else {
            ctx.door_ready.wait().await;
            continue;
        };
        match radio.start(tag, vehicle).await {
            Ok(()) => break,
            Err(_) => {
                log::error!("door: the radio does not start; retrying");
                ctx.sleep_ms(RADIO_RETRY_MS).await;
            }
        }
    }
    if vehicle {
        log::info!("door: BLE door service v2 and vehicle pairing service up");
    } else {
        log::info!("door: BLE door service v2 up");
    }
    let mut door = Door::default();
    let mut pairing = Pairing::default();
    loop {
        let event = radio.next().await;
        let now = ctx.clock.now();
        match event {
            DoorEvent::PairingChallenge { conn } if vehicle => {
                let frame = {
                    let shared = ctx.door.borrow();
                    let Some(grants) = shared.grants.as_ref() else {
                        continue;
                    };
                    let wall = shared.wall.now(now);
                    pairing.challenge(
                        conn,
                        grants,
                        &shared.door_key,
                        now,
                        wall,
                        &mut *rng.borrow_mut(),
                    )
                };
                radio.reply_read(conn, &frame).await;
                continue;
            }
            DoorEvent::PairingResponse { conn, value } if vehicle => {
                let ok = pair(ctx, &mut pairing, conn, &value, store).await;
                radio.reply_write(conn, ok).await;
                continue;
            }
            // A door's radio serves no pairing service (the board's own timeout answers).
            DoorEvent::PairingChallenge { .. } | DoorEvent::PairingResponse { .. } => continue,
            DoorEvent::Disconnected { conn } => pairing.disconnected(conn),
            DoorEvent::ReadChallenge { .. } | DoorEvent::Request { .. } => {}
        }
        let actions = {
            let shared = ctx.door.borrow();
            let Some(grants) = shared.grants.as_ref() else {
                continue;
            };
            door.on(
                event,
                grants,
                now,
                shared.wall.now(now),
                &mut *rng.borrow_mut(),
                |ms| ctx.pulse(ms, now),
            )
        };
        for action in actions {
            match action {
                DoorAction::Reply { conn, value } => radio.reply_read(conn, &value).await,
                DoorAction::Notify { conn, value } => radio.notify(conn, &value).await,
                DoorAction::Record(record) if record.tool_id.is_none() => {
                    // No grant matched: a stranger, a revoked phone or noise (NODES.md §8).
                    log::info!("door: {} (unrecognised)", record.status.as_str());
                    ctx.door.borrow_mut().ring.note_unrecognised();
                }
                DoorAction::Record(record) => {
                    log::info!("door: {}", record.status.as_str());
                    let writes = {
                        let mut shared = ctx.door.borrow_mut();
                        let offline = !shared.online;
                        shared.ring.record(record, offline)
                    };
                    writes.store(&mut *store.lock().await).await;
                    ctx.decided.signal(());
                }
            }
        }
    }
}

/// A vehicle's pairing response on `conn`: verified, added, persisted; `true` when the key is
/// kept (the write's answer). The store is held from the change to its write (see
/// [`apply_grants`]).
async fn pair<C, R, S>(
    ctx: &Ctx<'_, C, R>,
    pairing: &mut Pairing,
    conn: ConnId,
    frame: &[u8],
    store: &Mutex<NoopRawMutex, S>,
) -> bool
where
    C: Clock,
    R: Relay,
    S: GrantBlobStore,
{
    let mut store = store.lock().await;
    let outcome = {
        let mut shared = ctx.door.borrow_mut();
        let outcome = pairing.respond(conn, frame, shared.grants.as_mut(), ctx.clock.now());
        outcome.map(|accepted| {
            let blob = shared.grants.as_ref().map(GrantStore::blob);
            (accepted, blob)
        })
    };
    match outcome {
        Ok((accepted, Some(blob))) => {
            let key = latchkey_proto::UuidText(u128::from_be_bytes(accepted.key_id));
            if let Err(e) = store.save_grant_blob(&blob).await {
                // Held until the next restart; the gateway's next snapshot carries it anyway.
                log::error!("pairing: vehicle key {key} accepted but not stored: {e}");
                return false;
            }
            log::info!(
                "pairing: vehicle key {key} accepted ({} grants)",
                accepted.applied.grants
            );
            true
        }
        Ok((_, None)) => false,
        Err(why) => {
            log::warn!("pairing: response refused: {why}");
            false
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
