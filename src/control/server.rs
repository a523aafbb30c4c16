//! The daemon's end of the control socket (an adapter, like `web` and `ws`).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{execute, peer_allowed, remove_stale, socket_path, Advertised, Failure, Peer, Request};
use crate::state::AppState;

/// Connections served at once; more are told `RATE_LIMITED` (the CLI is run by hand).
const MAX_CONNECTIONS: usize = 16;
/// An answer line must be taken within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A backup's bytes must all be taken within this (a few MiB over a local socket).
const STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// The bound socket, with the data dir marked as served by this process.
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
    _mark: std::fs::File,
}

/// Marks the data dir as served (refusing if another daemon serves it), replaces a stale
/// socket file, and listens on the socket with mode 0660.
pub fn bind(config: &crate::config::Config) -> anyhow::Result<Bound> {
    let path = socket_path(config);
    let mark = crate::datadir::mark_daemon(&config.data_dir, &path)?;
    remove_stale(&path)?;
    // Until the chmod the socket has the umask's mode (0700 under the CLI and the unit): no
    // wider than 0660 for connecting, which needs write permission.
    let std_listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod 660 {}", path.display()))?;
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    Ok(Bound {
        listener,
        path,
        _mark: mark,
    })
}

/// Serves the socket until the daemon stops; then removes it and releases the data dir (the
/// task's end, which `serve` awaits, so a restart on the same data dir finds it free).
pub fn spawn(state: AppState, bound: Bound) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The whole of it (not only the listener it reads) lives as long as the task.
        let bound = bound;
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let stop = state.shutdown.clone();
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = bound.listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let state = state.clone();
            match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        connection(&state, stream).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let busy = Failure::refused("RATE_LIMITED", "too many control connections");
                        let _ = send(&mut stream, &busy.to_json()).await;
                    });
                }
            }
        }
        drop(bound);
    })
}

/// The socket file goes with the listener (a daemon that fails to start leaves none), then the
/// data dir's mark.
impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn connection(state: &AppState, stream: UnixStream) {
    let peer = match peer(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "control socket: cannot read the peer's credentials");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if !peer_allowed(&peer, uid, gid) {
        tracing::warn!(
            uid = peer.uid,
            "control socket: refused a user outside the service's group"
        );
        let no = Failure::refused(
            "FORBIDDEN",
            "only root, the service user and members of its group may use this socket",
        );
        let _ = send(&mut write, &no.to_json()).await;
        return;
    }
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(super::MAX_REQUEST));
    let timeout = state.config.control_timeout;
    let line = match tokio::time::timeout(timeout, lines.next()).await {
        Ok(Some(Ok(line))) => line,
        Ok(None) | Ok(Some(Err(LinesCodecError::Io(_)))) => return,
        Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
            let big = Failure::refused(
                "PAYLOAD_TOO_LARGE",
                format!(
                    "a request is one line of at most {} bytes",
                    super::MAX_REQUEST
                ),
            );
            let _ = send(&mut write, &big.to_json()).await;
            return;
        }
        Err(_) => {
            let slow = Failure::refused(
                "BAD_REQUEST",
                format!("no request within {} s", timeout.as_secs_f32()),
            );
            let _ = send(&mut write, &slow.to_json()).await;
            return;
        }
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(_) => {
            let bad = Failure::refused(
                "BAD_REQUEST",
                "not a request: one JSON object with a known \"command\" and its fields",
            );
            let _ = send(&mut write, &bad.to_json()).await;
            return;
        }
    };
    tracing::info!(
        command = request.name(),
        uid = peer.uid,
        "control socket command"
    );
    if let Request::Backup {} = request {
        stream_backup(state, &mut write).await;
        return;
    }
    let answer = run(state, request).await;
    let _ = send(&mut write, &answer).await;
}

/// Runs a command on the daemon's registry, off the runtime; the answer line.
async fn run(state: &AppState, request: Request) -> Value {
    // argon2 takes 19 MiB a hash: the same bound as web logins.
    let _permit = match request {
        Request::AdminPassword { .. } => state.password_checks.acquire().await.ok(),
        _ => None,
    };
    let store = state.store.clone();
    let now = state.now();
    let ttl = state.config.pair_token_ttl_secs;
    let at = Advertised {
        host: state.advertise_host.clone(),
        port: state.port,
    };
    let done = tokio::task::spawn_blocking(move || execute(&store, request, now, ttl, &at)).await;
    match done {
        Ok(Ok(v)) => json!({ "ok": v }),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(Failure::Internal(e.into())),
    }
}

fn failed(e: Failure) -> Value {
    if let Failure::Internal(cause) = &e {
        tracing::warn!(error = %format!("{cause:#}"), "control socket command failed");
    }
    e.to_json()
}

/// `backup`: a snapshot made by the daemon (it holds the key), sent as an answer line with its
/// size and then the file's bytes; the CLI writes them where its user asked. The daemon never
/// writes outside its data dir (under systemd it could not: `ProtectHome=`, `PrivateTmp=`).
async fn stream_backup(state: &AppState, out: &mut (impl AsyncWrite + Unpin)) {
    let now = state.now();
    let app = state.clone();
    let made = tokio::task::spawn_blocking(move || {
        let dir = crate::backup::dir(&app.config.data_dir);
        crate::backup::snapshot(&app.store, &app.master, now, &dir)
    })
    .await;
    let snapshot = match made {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = send(out, &failed(Failure::Internal(e))).await;
            return;
        }
        Err(e) => {
            let _ = send(out, &failed(Failure::Internal(e.into()))).await;
            return;
        }
    };
    let sent = async {
        let mut file = tokio::fs::File::open(snapshot.path()).await?;
        let header = crate::backup::header();
        let bytes = header.len() as u64 + file.metadata().await?.len();
        send(
            out,
            &json!({ "ok": { "bytes": bytes, "createdAt": crate::clock::rfc3339(now) } }),
        )
        .await?;
        tokio::time::timeout(STREAM_TIMEOUT, async {
            out.write_all(&header).await?;
            tokio::io::copy(&mut file, out).await?;
            out.flush().await
        })
        .await
        .map_err(std::io::Error::other)?
    };
    if let Err(e) = sent.await {
        tracing::warn!(error = %e, "control socket: the backup was not taken in full");
    }
    drop(snapshot);
}

async fn send(out: &mut (impl AsyncWrite + Unpin), v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    tokio::time::timeout(WRITE_TIMEOUT, out.write_all(line.as_bytes()))
        .await
        .map_err(std::io::Error::other)?
}

/// `SO_PEERGROUPS` from asm-generic/socket.h (x86, ARM, AArch64, RISC-V); libc does not export it.
const SO_PEERGROUPS: libc::c_int = 59;

/// The peer's uid, gid and supplementary groups as of its `connect()`.
fn peer(stream: &UnixStream) -> std::io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let groups = peer_groups(stream).unwrap_or_else(|e| {
        // Without them only the uid and primary gid count: stricter, never looser.
        tracing::warn!(error = %e, "control socket: SO_PEERGROUPS failed");
        Vec::new()
    });
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
    })
}

fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd;
    /// NGROUPS_MAX on Linux.
    const MAX: usize = 65_536;
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * 4).unwrap_or(libc::socklen_t::MAX);
        // SAFETY: getsockopt(2) writes at most `len` bytes into `groups`, which has them.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / 4;
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        // ERANGE: the buffer was short; `len` says what it needs.
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= MAX {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}
