//! The HTTP listener: accepts connections, caps them, times them out, and serves each with
//! hyper's HTTP/1 (WebSocket upgrades included) until shutdown.
//!
//! A connection holds a place in [`Slots`] keyed by its source address from accept until it
//! closes or is upgraded to a WebSocket (upgrades happen only after `/ws` authenticated the
//! peer; those sockets are capped per device in `ws`). The caps sit below the process's fd
//! limit, so one client holding half-sent requests cannot use up the descriptors everyone
//! else needs. A connection over its address's cap (or the total) is answered 429 by a small
//! refusal service of its own, itself capped; beyond that it is closed at once.
//!
//! Timeouts: hyper's header-read timer runs whenever a connection waits for a request (also
//! between keep-alive requests), so it doubles as the idle timeout; request bodies are read
//! under a deadline of their own (`web::read_body`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpLimits;
use crate::slots::{Full, Slot, Slots};
use crate::web::error::ApiError;

/// Descriptors kept back from connections: the database (three connections, WAL, SHM), the
/// log, D-Bus, BLE, GPIO and command actions, plus slack for accept itself.
const FD_RESERVE: u64 = 64;
/// Request head (request line and headers) at most; beyond it hyper answers 431.
const MAX_HEAD: usize = 16 * 1024;
/// Connections answered 429 at once (each only until its request head is read).
const REFUSALS: usize = 32;
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Accept errors (EMFILE, ENFILE, ENOBUFS…) back off from this up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning about accept errors per this period; the rest go to debug.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(60);

/// How many not-yet-upgraded connections may be open, in total and per source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_address: usize,
}

impl Caps {
    /// Half of what the fd limit leaves after the reserve goes to such connections (the rest
    /// is for authenticated WebSockets), a quarter of that to one address; configured values
    /// win.
    pub fn derive(fd_limit: u64, limits: &HttpLimits) -> Self {
        let usable = usize::try_from(fd_limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        let total = limits
            .max_connections
            .unwrap_or((usable / 2).clamp(16, 16_384));
        let per_address = limits
            .max_connections_per_address
            .unwrap_or((total / 4).clamp(8, 512))
            .min(total);
        Self { total, per_address }
    }
}

impl Caps {
    /// The caps for this process's fd limit, logged once.
    pub fn for_this_process(limits: &HttpLimits) -> Self {
        let fds = fd_limit();
        let caps = Self::derive(fds, limits);
        tracing::info!(
            fd_limit = fds,
            max_connections = caps.total,
            max_connections_per_address = caps.per_address,
            ws_per_device = limits.ws_per_device,
            header_timeout_secs = limits.header_timeout.as_secs(),
            body_timeout_secs = limits.body_timeout.as_secs(),
            "connection limits"
        );
        caps
    }
}

/// The soft `RLIMIT_NOFILE` this process runs under.
// `rlim_t` is u64 on 64-bit targets but u32 on armhf (32-bit Raspberry Pi OS).
#[allow(clippy::useless_conversion)]
pub fn fd_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and has no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc == 0 {
        u64::from(rl.rlim_cur)
    } else {
        1024
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled; then stops accepting, lets
/// in-flight requests finish and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    caps: Caps,
    shutdown: CancellationToken,
) {
    let slots = Slots::<IpAddr>::new(caps.per_address, caps.total);
    let refusals = Slots::<()>::new(REFUSALS, REFUSALS);
    let conns = TaskTracker::new();
    let mut backoff = MIN_BACKOFF;
    let mut last_warn: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => {
                backoff = MIN_BACKOFF;
                a
            }
            Err(e) => {
                if last_warn.is_none_or(|t| t.elapsed() >= ACCEPT_WARN_EVERY) {
                    tracing::warn!(error = %e, "cannot accept connections; backing off");
                    last_warn = Some(Instant::now());
                } else {
                    tracing::debug!(error = %e, "accept failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Small WebSocket frames must go out at once, not wait on Nagle for the previous ACK.
        let _ = tcp.set_nodelay(true);
        match slots.try_take(&peer.ip()) {
            Ok(slot) => {
                conns.spawn(connection(
                    tcp,
                    peer,
                    app.clone(),
                    limits.header_timeout,
                    slot,
                    shutdown.clone(),
                ));
            }
            Err(full) => {
                tracing::debug!(client = %peer.ip(), ?full, "connection over its cap");
                if let Ok(place) = refusals.try_take(&()) {
                    conns.spawn(refuse(tcp, full, place, shutdown.clone()));
                }
                // Else `tcp` drops here: closed at once.
            }
        }
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

fn builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD);
    b
}

/// One connection, holding its `slot` until it closes or becomes a WebSocket.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    slot: Slot<IpAddr>,
    shutdown: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let conn = builder(header_timeout)
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // The connection future ends when the socket closes or when it is handed to a WebSocket
    // session (after `/ws` authenticated it); either way its place is free again.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    drop(slot);
    if let Err(e) = result {
        tracing::debug!(client = %peer.ip(), error = %e, "connection ended");
    }
}

/// Reads the request head (briefly) and answers 429 `RATE_LIMITED`, then closes.
async fn refuse(tcp: TcpStream, full: Full, place: Slot<()>, shutdown: CancellationToken) {
    let message = match full {
        Full::Key => "too many connections from this address; retry later",
        Full::Total => "too many connections; retry later",
    };
    let svc = hyper::service::service_fn(move |_req: hyper::Request<Incoming>| async move {
        let mut resp = axum::response::IntoResponse::into_response(ApiError {
            message: message.to_owned(),
            ..ApiError::rate_limited(1)
        });
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        Ok::<_, Infallible>(resp)
    });
    let mut b = builder(REFUSAL_TIMEOUT);
    b.keep_alive(false);
    let conn = b.serve_connection(TokioIo::new(tcp), svc);
    tokio::select! {
        _ = conn => {}
        _ = shutdown.cancelled() => {}
    }
    drop(place);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_follow_the_fd_limit_unless_configured() {
        let d = HttpLimits::default();
        assert_eq!(
            Caps::derive(1024, &d),
            Caps {
                total: 480,
                per_address: 120
            }
        );
        let big = Caps::derive(65_536, &d);
        assert_eq!(big.total, 16_384);
        assert_eq!(big.per_address, 512);
        assert!(Caps::derive(10, &d).total >= 16);
        let set = HttpLimits {
            max_connections: Some(100),
            max_connections_per_address: Some(500),
            ..d
        };
        assert_eq!(
            Caps::derive(1024, &set),
            Caps {
                total: 100,
                per_address: 100
            }
        );
    }
}
