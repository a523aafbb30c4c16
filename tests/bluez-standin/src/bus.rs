//! A private D-Bus message bus for tests: `dbus-daemon` with a minimal configuration of our
//! own when it is installed, else the `busd` crate in-process. It lives until the process
//! exits (a `dbus-daemon` child is told to die with us).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// Which broker runs the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    DbusDaemon,
    Busd,
}

/// A running private bus.
#[derive(Debug, Clone)]
pub struct PrivateBus {
    pub address: String,
    pub broker: Broker,
}

const CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#;

impl PrivateBus {
    /// Starts a bus: `dbus-daemon` if it is on the PATH (or `LATCHKEY_TEST_BROKER=busd` says
    /// otherwise), else busd.
    pub fn start() -> Result<Self, Error> {
        let forced_busd = std::env::var("LATCHKEY_TEST_BROKER").is_ok_and(|v| v == "busd");
        if !forced_busd && find_on_path("dbus-daemon") {
            Self::dbus_daemon()
        } else {
            Self::busd()
        }
    }

    /// `dbus-daemon --nofork --print-address --config-file=<ours>`, started from a thread
    /// that never ends, so that its parent-death signal fires only when the process exits.
    pub fn dbus_daemon() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("latchkey-bus-")
            .tempdir()
            .map_err(|e| Error::Bus(format!("tempdir: {e}")))?
            .keep();
        let socket = dir.join("bus");
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            CONFIG.replace("@SOCKET@", &socket.display().to_string()),
        )
        .map_err(|e| Error::Bus(format!("writing {}: {e}", config.display())))?;
        let (tx, rx) = mpsc::channel::<Result<String, String>>();
        std::thread::Builder::new()
            .name("private-dbus".into())
            .spawn(move || {
                let mut cmd = Command::new("dbus-daemon");
                cmd.arg("--nofork")
                    .arg("--print-address")
                    .arg(format!("--config-file={}", config.display()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                // SAFETY: prctl(2) is async-signal-safe; it only asks the kernel to signal
                // the child when this (never-ending) thread's process goes away.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                        Ok(())
                    });
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(format!("dbus-daemon: {e}")));
                        return;
                    }
                };
                let line = child.stdout.take().and_then(|out| {
                    let mut line = String::new();
                    BufReader::new(out).read_line(&mut line).ok()?;
                    Some(line.trim().to_owned())
                });
                let _ = tx.send(
                    line.filter(|l| !l.is_empty())
                        .ok_or_else(|| "dbus-daemon printed no address".to_owned()),
                );
                let _ = child.wait();
                // Keep the thread (the parent of the child) alive for the whole process.
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| Error::Bus(format!("thread: {e}")))?;
        let address = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::Bus("dbus-daemon did not start within 10 s".into()))?
            .map_err(Error::Bus)?;
        Ok(Self {
            address,
            broker: Broker::DbusDaemon,
        })
    }

    /// busd on a thread and runtime of its own.
    pub fn busd() -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("latchkey-busd-")
            .tempdir()
            .map_err(|e| Error::Bus(format!("tempdir: {e}")))?
            .keep();
        let address = format!("unix:path={}", dir.join("bus").display());
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let addr = address.clone();
        std::thread::Builder::new()
            .name("private-busd".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match busd::bus::Bus::for_address(Some(&addr)).await {
                        Ok(mut bus) => {
                            let _ = tx.send(Ok(()));
                            let _ = bus.run().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                });
            })
            .map_err(|e| Error::Bus(format!("thread: {e}")))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| Error::Bus("busd did not start within 10 s".into()))?
            .map_err(Error::Bus)?;
        Ok(Self {
            address,
            broker: Broker::Busd,
        })
    }
}

fn find_on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
    })
}
