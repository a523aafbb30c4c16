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
        // BLE: off until the bluer adapter is plugged in here (issue 10, Linux BLE adapter).
        radio: latchkey_node_core::board::NoRadio,
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
