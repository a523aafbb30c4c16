//! latchkey: a LAN gateway that pairs phones, keeps them in sync and lets them through doors.
//!
//! The domain (`registry`, `pairing`, `admin`, `events`, `store`) knows nothing of HTTP,
//! WebSockets or BlueZ; `web`, `ws` and `ble` are adapters over it. `run` takes its listener and
//! shutdown signal from the caller, so tests drive the real server on `127.0.0.1:0`.

pub mod access;
pub mod admin;
pub mod backup;
pub mod ble;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod clocktrust;
pub mod config;
pub mod control;
pub mod crypto;
pub mod datadir;
pub mod discovery;
pub mod events;
pub mod grants;
pub mod listener;
pub mod names;
pub mod net;
pub mod nodes;
pub mod notify;
pub mod pairing;
pub mod qr;
pub mod ratelimit;
pub mod registry;
pub mod rotation;
pub mod secret;
pub mod setup;
pub mod slots;
pub mod state;
pub mod store;
pub mod web;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::state::{App, AppState, Metrics};

pub use datadir::{check_data_dir, open_store, DB_FILE};

/// Failed admin logins per minute from all addresses together; past it every login waits.
const LOGIN_GLOBAL_PER_MINUTE: usize = 30;
/// argon2 runs at once: each takes 19 MiB, and the Pi has a few hundred to spare at most.
const PASSWORD_CHECKS: usize = 2;
/// `POST /device/register` and `/device/refresh` per device and minute, together.
const TOOL_REQUESTS_PER_MINUTE: usize = 10;
/// Shutdown must finish well inside systemd's and the contract's 5 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Builds the shared application state from a resolved configuration.
pub fn build_state(config: Config, port: u16) -> anyhow::Result<AppState> {
    let (store, master) = open_store(&config.data_dir, config.credentials_dir.as_deref())?;
    let gateway_id = store
        .read_blocking(|c| store::meta_get(c, "gateway_id"))?
        .context("database has no gateway id")?;
    let advertise_host = net::advertise_host(config.advertise_host.as_deref(), config.listen);
    let advertised = serde_json::json!({ "host": advertise_host, "port": port }).to_string();
    // One synced transaction at start: the log must be marked open on disk before any event.
    let skipped = store.write_durable_blocking(|tx| {
        // Recorded so `latchkey pair`, run beside this daemon, prints the address it serves.
        store::meta_set(tx, "advertise", &advertised)?;
        // No node is connected before this process accepts its session.
        nodes::reset_online(tx)?;
        events::open_log(tx)
    })?;
    if skipped > 0 {
        tracing::warn!(
            skip = events::SEQ_SKIP_AFTER_UNCLEAN_STOP,
            "the last run did not stop cleanly; event numbers skip ahead so none is issued twice"
        );
    }
    let node_hub = Arc::new(nodes::NodeHub::new(store.clone(), config.clock.clone()));
    Ok(Arc::new(App {
        nodes: node_hub,
        clock: config.clock.clone(),
        store,
        master,
        bus: events::EventBus::new(),
        gateway_id,
        advertise_host,
        port,
        login_limit: ratelimit::RateLimiter::new(5, 60),
        login_global: ratelimit::RateLimiter::new(LOGIN_GLOBAL_PER_MINUTE, 60),
        password_checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS),
        ws_devices: slots::Slots::new(config.http.ws_per_device, usize::MAX),
        pair_limit: ratelimit::RateLimiter::new(10, 60),
        tool_limit: ratelimit::RateLimiter::new(TOOL_REQUESTS_PER_MINUTE, 60),
        pairing_session_limit: ratelimit::RateLimiter::new(web::vehicles::SESSIONS_PER_MINUTE, 60),
        publish_budget: budget::Budgets::new(config.publish_rate, config.publish_burst),
        metrics: Metrics::default(),
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        ble: ble::BleStatus::default(),
        clock_trust: clocktrust::ClockTrust::new(),
        setup: setup::SetupCode::default(),
        config,
    }))
}

/// Runs the gateway on `listener` until `shutdown` resolves, then stops within 5 s: no new
/// connections, WebSockets closed with 1001, everything committed.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    // Before anything touches the registry: a second daemon on this data dir stops here.
    let socket = control::server::bind(&config)?;
    let state = tokio::task::block_in_place(|| build_state(config, local.port()))?;
    serve_on(state, listener, socket, shutdown).await
}

/// Like `run`, with state the caller built (tests keep a handle on it).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let socket = control::server::bind(&state.config)?;
    serve_on(state, listener, socket, shutdown).await
}

async fn serve_on(
    state: AppState,
    listener: TcpListener,
    socket: control::server::Bound,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let tailer = state
        .bus
        .start_tailer(state.store.clone(), state.shutdown.clone())
        .await?;
    events::spawn_pruner(
        state.store.clone(),
        state.config.retention(),
        state.clock.clone(),
        state.shutdown.clone(),
    );
    state
        .nodes
        .watch_events(state.bus.subscribe(), state.shutdown.clone());
    ble::start(&state).await?;
    web::vehicles::spawn_housekeeping(&state);

    let control_task = control::server::spawn(state.clone(), socket);
    spawn_daily_backups(&state);

    let app = web::router(state.clone(), ws::routes());
    let token = state.shutdown.clone();
    let caps = listener::Caps::for_this_process(&state.config.http);
    let server = tokio::spawn(listener::serve(
        listener,
        app,
        state.config.http.clone(),
        caps,
        token.clone(),
    ));
    // Before the ready line, so whoever waits for that line has the set-up URL too.
    announce_setup(&state).await?;
    let _mdns = announce_mdns(&state, local);
    tracing::info!(
        listen = %local,
        advertise = %state.host_port(),
        gateway_id = %state.gateway_id,
        ble = ?state.config.ble,
        "latchkey is ready"
    );
    notify::ready();
    notify::spawn_watchdog(state.store.clone(), token.clone());

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        _ = token.cancelled() => {}
    }
    notify::stopping();
    token.cancel();
    state.tasks.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = server.await;
        let _ = control_task.await;
        state.tasks.wait().await;
        let _ = tailer.await;
    })
    .await;
    if drained.is_err() {
        // Not marked clean: a late event may still commit, so the next start skips ahead.
        tracing::warn!("some connections did not close in time; exiting anyway");
    } else {
        state.store.write(events::close_log).await?;
    }
    Ok(())
}

/// Announces the gateway over mDNS unless configured off. A failure is logged, not fatal:
/// phones and nodes still reach the address they stored.
fn announce_mdns(state: &AppState, local: std::net::SocketAddr) -> Option<discovery::Announcer> {
    if !state.config.mdns {
        return None;
    }
    match discovery::announce(&state.config.name, &state.gateway_id, local, local.port()) {
        Ok(a) => {
            tracing::info!(service = discovery::SERVICE_TYPE, interfaces = %local.ip(), "announcing over mDNS");
            Some(a)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot announce over mDNS; phones will need the address");
            None
        }
    }
}

/// First run: with no admin password yet, makes this process's one-time set-up code and
/// prints its URL once, in the log and on the terminal (stderr, which systemd also journals).
async fn announce_setup(state: &AppState) -> anyhow::Result<()> {
    if state.store.read(admin::has_password).await? {
        return Ok(());
    }
    let url = setup::url(&state.host_port(), &state.setup.issue()?);
    // The code is meant to be read here (like Jenkins' initial password): it is one-time,
    // dies with this process, and only sets the password while none exists.
    tracing::warn!(%url, "no admin password yet: open the set-up URL to choose one");
    eprintln!("\n  Finish setting up latchkey in a browser:\n\n    {url}\n");
    Ok(())
}

/// Automatic backups into `<data-dir>/backups/` (`[backup]`): the clock is compared with the
/// newest one every `check_every`, so a backup follows the (injectable) clock, and a daemon
/// restarted daily neither skips one nor makes two.
fn spawn_daily_backups(state: &AppState) {
    let policy = state.config.backup.clone();
    if policy.interval_secs == 0 {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        let dir = backup::dir(&state.config.data_dir);
        let mut tick = tokio::time::interval(policy.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = state.shutdown.cancelled() => return,
            }
            let now = state.now();
            let newest = match backup::dailies(&dir) {
                Ok(all) => all.last().map(|(t, _)| *t),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot list the backups");
                    continue;
                }
            };
            if !backup::due(newest, now, policy.interval_secs) {
                continue;
            }
            let app = state.clone();
            let keep = policy.keep;
            let made = tokio::task::spawn_blocking(move || {
                backup::daily(&app.store, &app.master, now, keep)
            })
            .await;
            match made {
                Ok(Ok(path)) => tracing::info!(path = %path.display(), "daily backup written"),
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "daily backup failed"),
                Err(e) => tracing::warn!(error = %e, "daily backup failed"),
            }
        }
    });
}

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed by this call, so a
/// signal that arrives while the caller is still starting up is a clean stop, not death by
/// the default action.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
