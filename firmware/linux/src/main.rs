//! `latchkey-node`: the latchkey endpoint node on a Linux board. Adapters only; every rule is in
//! `latchkey-node-core`, which this hands a board and calls once.

mod clock;
mod flash;
mod label;
mod net;
mod nm;
mod relay;
mod wifi;

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use latchkey_node_core::board::Board;
use latchkey_node_core::storage::FlashStore;
use latchkey_node_core::{Config, Kind};

#[derive(Parser)]
#[command(
    name = "latchkey-node",
    version,
    about = "latchkey endpoint node (Linux board)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the node keeps its flash file and label (created 0700).
    #[arg(long, global = true, default_value = "/var/lib/latchkey-node")]
    state_dir: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the label: the setup network's name and the setup code.
    Label,
}

#[derive(clap::Args)]
struct RunArgs {
    /// What the relay drives.
    #[arg(long, value_enum, default_value = "door")]
    kind: KindArg,
    /// Address of the AP API (the setup access point's HTTP server).
    #[arg(long, default_value = "0.0.0.0:80")]
    ap_listen: SocketAddr,
    /// Stand-in Wi-Fi: a JSON list of networks with their passwords (default: host-managed).
    #[arg(long, conflicts_with = "wifi_nm")]
    wifi_sim: Option<PathBuf>,
    /// Wi-Fi through NetworkManager on this interface (e.g. wlan0): the setup access point is an
    /// NM hotspot, joining an NM station connection (default: host-managed).
    #[arg(long, value_name = "IFACE")]
    wifi_nm: Option<String>,
    /// GPIO chip of the relay line, e.g. /dev/gpiochip0.
    #[arg(long, requires = "relay_line", conflicts_with = "relay_sim")]
    relay_chip: Option<String>,
    /// GPIO line offset of the relay.
    #[arg(long, requires = "relay_chip")]
    relay_line: Option<u32>,
    /// Stand-in relay: append `on <ms>`/`off <ms>` lines to this file.
    #[arg(long)]
    relay_sim: Option<PathBuf>,
    /// Erase credentials and key pair, then start unprovisioned.
    #[arg(long)]
    factory_reset: bool,
    /// Bluetooth adapter of the BLE door (default: the first one BlueZ lists). Without BlueZ
    /// or an adapter the door's BLE is off (one log line) and the node works over Wi-Fi.
    #[arg(long, value_name = "hciN", value_parser = parse_adapter)]
    ble_adapter: Option<String>,
}

/// `hci` followed by a number: what BlueZ names adapters.
fn parse_adapter(s: &str) -> Result<String, String> {
    match s.strip_prefix("hci") {
        Some(n) if !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(s.to_owned())
        }
        _ => Err("expected an adapter name such as hci0".into()),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Door,
    Vehicle,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cli.state_dir)
        .with_context(|| format!("creating {}", cli.state_dir.display()))?;
    let (label, new) = label::Label::load_or_create(&cli.state_dir)?;
    if let Some(Command::Label) = cli.command {
        label.print();
        return Ok(());
    }
    if new {
        // Printed once, like a label at the factory; `latchkey-node label` shows it again.
        label.print();
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cli.state_dir, cli.run, label))
}

async fn run(state_dir: PathBuf, args: RunArgs, label: label::Label) -> anyhow::Result<()> {
    let clock = clock::TokioClock::new();
    let relay = match (&args.relay_chip, args.relay_line, args.relay_sim) {
        (Some(chip), Some(line), _) => relay::AnyRelay::Gpio(relay::GpioRelay::open(chip, line)?),
        (_, _, Some(path)) => relay::AnyRelay::Sim(relay::SimRelay::new(path, clock)),
        _ => anyhow::bail!("give a relay: --relay-chip and --relay-line, or --relay-sim FILE"),
    };
    let wifi = match (args.wifi_sim, args.wifi_nm) {
        (Some(path), _) => wifi::AnyWifi::Sim(wifi::SimWifi::new(path)),
        (None, Some(iface)) => wifi::AnyWifi::Nm(
            nm::NmWifi::connect(&iface)
                .await
                .with_context(|| format!("NetworkManager device {iface}"))?,
        ),
        (None, None) => wifi::AnyWifi::Host(wifi::HostWifi),
    };
    let flash = flash::FileFlash::open(&state_dir.join("flash.bin"))?;
    let store = FlashStore::new(
        flash,
        flash::FileFlash::range(),
        flash::FileFlash::ring_range(),
    )
    .map_err(|e| anyhow::anyhow!("flash: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.ap_listen).await?;
    // One machine-readable line, so a supervisor (or a test) finds the bound port.
    println!("ap_api=http://{}", listener.local_addr()?);
    let board = Board {
        store,
        relay,
        clock,
        wifi,
        http: net::Http::new()?,
        ws: net::Ws,
        ap: net::Ap(listener),
        rng: clock::OsRng,
        // The door's radio (issue 10): it registers when the core starts it, once the node has
        // an id; without BlueZ it logs that BLE is off and the node goes on over Wi-Fi.
        radio: latchkey_node::ble::BluezRadio::new(latchkey_node::ble::BleConfig::new(
            args.ble_adapter,
            &label.ssid(),
        )),
    };
    let config = Config {
        kind: match args.kind {
            KindArg::Door => Kind::Door,
            KindArg::Vehicle => Kind::Vehicle,
        },
        setup_ssid: label.ssid(),
        setup_code: label.code,
        factory_reset: args.factory_reset,
    };
    latchkey_node_core::run(board, &config, shutdown())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ble_adapter_names_are_checked() {
        assert_eq!(parse_adapter("hci0").as_deref(), Ok("hci0"));
        assert_eq!(parse_adapter("hci12").as_deref(), Ok("hci12"));
        for bad in ["", "hci", "hci-1", "eth0", "hci0/dev", "hci1234"] {
            assert!(parse_adapter(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["latchkey-node", "--ble-adapter", "wlan0"]).is_err());
        let cli = Cli::try_parse_from(["latchkey-node", "--ble-adapter", "hci1"]).unwrap();
        assert_eq!(cli.run.ble_adapter.as_deref(), Some("hci1"));
    }
}
