//! The CLI's end of the control socket: whether to ask a daemon, and asking it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{Request, SOCKET_FILE, SYSTEMD_SOCKET};
use crate::config::Config;
use crate::datadir::Daemon;

/// The daemon may queue a command behind other writes, or hash a password: generous, but bounded.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// A device or node list of 10,000 entries is a few MiB.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Where a CLI command runs.
pub enum Route {
    /// A daemon serves the data dir: it runs the command.
    Daemon(UnixStream),
    /// None does: the CLI opens the registry itself.
    Direct,
}

/// Asks the data dir's lock whether a daemon runs. When this user cannot read the data dir (an
/// admin in the service's group), the socket in `$RUNTIME_DIRECTORY` or systemd's
/// `/run/latchkey` is the only way in.
pub fn route(config: &Config) -> anyhow::Result<Route> {
    match crate::datadir::daemon(&config.data_dir)? {
        Daemon::Stopped => Ok(Route::Direct),
        Daemon::Running { socket } => connect(&socket).map(Route::Daemon).with_context(|| {
            format!(
                "latchkey serve is running on {} but its control socket {} does not answer",
                config.data_dir.display(),
                socket.display()
            )
        }),
        Daemon::Unreadable(why) => {
            let runtime = config.runtime_dir.as_ref().map(|d| d.join(SOCKET_FILE));
            let candidates: Vec<&Path> = runtime
                .as_deref()
                .into_iter()
                .chain([Path::new(SYSTEMD_SOCKET)])
                .collect();
            for socket in &candidates {
                match connect(socket) {
                    Ok(s) => return Ok(Route::Daemon(s)),
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                        "cannot use the daemon's control socket {}: permission denied (add \
                         this user to the service's group: usermod -aG latchkey USER, then log \
                         in again)",
                        socket.display()
                    ),
                    Err(_) => {}
                }
            }
            bail!(
                "no latchkey daemon answers on {}, and this user cannot open the data directory \
                 {} itself ({why}); start the daemon, or run this as the service user",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
                config.data_dir.display()
            )
        }
    }
}

fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(s)
}

/// Sends `request` and reads the answer line: the `ok` value, or the daemon's error message.
pub fn call(stream: UnixStream, request: &Request) -> anyhow::Result<Value> {
    answer(&mut send(stream, request)?)
}

/// `backup` through the daemon: its answer line, then the file's bytes, written to `target`.
pub fn backup(stream: UnixStream, target: &Path) -> anyhow::Result<u64> {
    let mut sent = send(stream, &Request::Backup {})?;
    let ok = answer(&mut sent)?;
    let bytes = ok["bytes"]
        .as_u64()
        .context("the daemon's backup answer has no size")?;
    crate::backup::receive(sent.reader, bytes, target)
}

/// Sends the request line. A daemon that refuses the peer answers and closes before reading
/// it, so a failed write is reported only if no answer explains it.
fn send(mut stream: UnixStream, request: &Request) -> anyhow::Result<Sent> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let failed = stream.write_all(&line).err();
    Ok(Sent {
        reader: BufReader::new(stream),
        failed,
    })
}

struct Sent {
    reader: BufReader<UnixStream>,
    failed: Option<std::io::Error>,
}

fn answer(sent: &mut Sent) -> anyhow::Result<Value> {
    let mut line = Vec::new();
    let read = sent
        .reader
        .by_ref()
        .take(MAX_ANSWER)
        .read_until(b'\n', &mut line);
    if line.last() != Some(&b'\n') {
        if let Some(e) = sent.failed.take() {
            return Err(e).context("cannot send the command to the daemon");
        }
        read.context("no answer from the daemon")?;
        bail!("the daemon's answer was cut short");
    }
    let mut v: Value = serde_json::from_slice(&line).context("the daemon's answer is not JSON")?;
    if let Some(e) = v.get("error") {
        let message = e["message"].as_str().unwrap_or("unknown error");
        bail!("{message}");
    }
    match v.get_mut("ok") {
        Some(ok) => Ok(ok.take()),
        None => bail!("the daemon's answer has neither ok nor error"),
    }
}
