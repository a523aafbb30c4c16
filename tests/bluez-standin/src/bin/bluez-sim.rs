//! `bluez-sim`: the BlueZ stand-in with its simulated radio as a process, for demos and for
//! tests that run the gateway and the phone as separate processes.
//!
//! ```text
//! bluez-sim [--bus ADDRESS] [--adapter hciN]...
//! ```
//!
//! Without `--bus` it starts a private bus (dbus-daemon, else busd) that lives as long as it
//! does. It owns `org.bluez` there with the given adapters (default `hci0` and `hci1`),
//! powered on, exports the `org.latchkey.Sim1` controls at `/org/latchkey/sim`, prints the
//! bus address alone on one line and runs until SIGTERM or SIGINT. Point the gateway and the
//! phone at it with `DBUS_SYSTEM_BUS_ADDRESS=<address>`.

use std::io::Write;

use latchkey_bluez_standin::{PrivateBus, Standin};

const USAGE: &str = "usage: bluez-sim [--bus ADDRESS] [--adapter hciN]...";

struct Args {
    bus: Option<String>,
    adapters: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        bus: None,
        adapters: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bus" => args.bus = Some(it.next().ok_or("--bus needs an address")?),
            "--adapter" => {
                let name = it.next().ok_or("--adapter needs a name")?;
                let valid = name
                    .strip_prefix("hci")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if !valid {
                    return Err(format!("adapter {name:?} must look like hci0"));
                }
                args.adapters.push(name);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.adapters.is_empty() {
        args.adapters = vec!["hci0".into(), "hci1".into()];
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bluez-sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let address = match args.bus {
        Some(a) => a,
        None => PrivateBus::start().map_err(|e| e.to_string())?.address,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let sim = Standin::start(&address)
            .await
            .map_err(|e| format!("cannot own org.bluez on {address}: {e}"))?;
        for name in &args.adapters {
            let a = sim.add_adapter(name).await.map_err(|e| e.to_string())?;
            a.set_powered(true);
        }
        sim.serve_control().await.map_err(|e| e.to_string())?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{address}").map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
        eprintln!(
            "bluez-sim: org.bluez with {} on {address}",
            args.adapters.join(", ")
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        sim.stop().await.map_err(|e| e.to_string())
    })
}
