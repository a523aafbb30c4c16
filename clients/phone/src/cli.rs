//! The `latchkey phone …` commands: their arguments ([`PhoneCmd`], which the gateway binary
//! mounts under `latchkey phone`) and the output around the library functions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use super::credentials;
use super::tool::{self, ToolError};
use super::unlock::{self, Protocol, Stage, Timeouts};
use super::Credentials;

#[derive(Debug, Subcommand)]
pub enum PhoneCmd {
    /// Pair with a gateway from its QR code (the payload JSON or a picture of it)
    Pair {
        /// The QR payload JSON
        #[arg(
            long,
            conflicts_with = "qr_image",
            required_unless_present = "qr_image"
        )]
        payload: Option<String>,
        /// A PNG showing the QR code
        #[arg(long, value_name = "FILE.png")]
        qr_image: Option<PathBuf>,
        /// The name the gateway shows for this phone
        #[arg(long, default_value = "latchkey phone")]
        name: String,
        /// Device type
        #[arg(long = "type", default_value = "mobile")]
        kind: String,
        #[command(flatten)]
        creds: CredentialsArg,
    },
    /// Open a door over Bluetooth LE: a node of the endpoint or the gateway, whichever is heard
    /// first (a node wins within about a second), with door protocol version 2 when the
    /// phone holds an access tool for that door, else version 1 at the gateway
    Unlock {
        /// Endpoint id [default: the access tool's first endpoint, else the gateway's default]
        #[arg(conflicts_with = "endpoint_id")]
        endpoint: Option<String>,
        /// Endpoint id (the same as the positional argument)
        #[arg(long = "endpoint", value_name = "ID")]
        endpoint_id: Option<String>,
        /// Which door: auto, gateway, node (any node of the endpoint) or a node id
        #[arg(long, default_value = "auto", value_name = "auto|gateway|node|NODE_ID")]
        door: unlock::DoorChoice,
        /// Open this vehicle with its vehicle key (`phone pair-vehicle`), offline
        #[arg(long, value_name = "VEHICLE_ID", conflicts_with_all = ["endpoint", "endpoint_id", "door"])]
        vehicle: Option<uuid::Uuid>,
        /// Refresh the access tool first when it expires within this many seconds
        #[arg(long, value_name = "SECS", default_value_t = tool::DEFAULT_REFRESH_WITHIN)]
        refresh_within: u64,
        /// Bluetooth adapter [default: the system's default]
        #[arg(long)]
        adapter: Option<String>,
        /// Print the outcome and stage timings as JSON
        #[arg(long)]
        json: bool,
        /// Stage timeouts in seconds: scan, connect, challenge, server
        #[arg(long, value_delimiter = ',', value_name = "S,S,S,S")]
        timeouts: Option<Vec<f64>>,
        #[command(flatten)]
        creds: CredentialsArg,
    },
    /// Pair with a vehicle over Bluetooth LE and get its vehicle key from the gateway (seed
    /// 000): scan, connect, read its pairing challenge, approve, open a pairing session at the
    /// gateway, write the gateway's answer to the vehicle, store the key
    #[command(after_help = PAIR_VEHICLE_HELP)]
    PairVehicle {
        /// The vehicle's node id
        vehicle_id: uuid::Uuid,
        /// Approve key issuance without asking (needed when stdin is not a terminal)
        #[arg(long)]
        yes: bool,
        /// Print the pairing context (seed 000's PairingContext, step, steps) as JSON
        #[arg(long)]
        json: bool,
        /// Bluetooth adapter [default: the system's default]
        #[arg(long)]
        adapter: Option<String>,
        /// Stage timeouts in seconds: scan, connect, challenge, server [default: 10,15,10,15]
        #[arg(long, value_delimiter = ',', value_name = "S,S,S,S")]
        timeouts: Option<Vec<f64>>,
        #[command(flatten)]
        creds: CredentialsArg,
    },
    /// Print the gateway's events as JSON lines, reconnecting and resuming as needed
    Listen {
        /// Start after this seq [default: the last one printed before, else now]
        #[arg(long, value_name = "N")]
        since: Option<u64>,
        #[command(flatten)]
        creds: CredentialsArg,
    },
    /// Publish an event; prints its seq once the gateway has committed it
    Publish {
        /// Topic, e.g. ui.sync (device., access., node. and gateway. are the gateway's own)
        topic: String,
        /// The event's data, a JSON value
        #[arg(value_parser = parse_json)]
        data: serde_json::Value,
        #[command(flatten)]
        creds: CredentialsArg,
    },
    /// Add an endpoint node: token from the gateway, Wi-Fi details to the node's setup access
    /// point, then wait until the node is online
    #[command(after_help = ADD_NODE_HELP)]
    AddNode(Box<AddNodeArgs>),
}

/// The seed 004 error table as the command reports it.
const ADD_NODE_HELP: &str = "\
The Wi-Fi password is read from --wifi-password-file (its first line), else from stdin (prompted
without echo on a terminal); never give it on the command line. Prefer LATCHKEY_ADMIN_TOKEN to
--admin-token for the same reason.

On success the node id is printed on stdout, alone on one line, and the exit status is 0.
Exit status 2: usage error. Exit status 1: any other failure, with one line on stderr,
`latchkey: CODE: message`:
  LOGIN_REQUIRED            Please log in again (the gateway refused the admin token: 401/403)
  GATEWAY_UNREACHABLE       Please connect to your home WiFi first (token request failed to connect)
  TOKEN_REFRESH_FAILED      Provisioning token expired. Please try again. (refresh before sending failed)
  TOKEN_EXPIRED_AFTER_SEND  Provisioning failed. Please restart the node and try again.
                            (the token expired after it was sent, before the node registered)
  PROVISIONING_REJECTED     Provisioning failed. Please try again. (the node or the gateway refused it)
  NOT_READY                 Provisioning not ready. Please try again. (no token to send)
  TOKEN_REFUSED             the gateway refused the token request (e.g. --node-id of a registered node)
  NODE_UNREACHABLE          the node's setup access point does not answer at --node-url
  NODE_BUSY                 the node is not waiting to be provisioned
  UNKNOWN_NETWORK           the node does not see the --ssid network
  BAD_PASSWORD              the Wi-Fi password is not 8 to 63 printable ASCII characters
  WIFI_FAILED               the node could not join the network (wrong password?): run again with
                            --node-id ID and the right password; the node needs no reset
  TIMEOUT                   the node was not online within --timeout seconds
  PROTOCOL                  the gateway or the node answered something unexpected
A token that expires before it is sent (checked against its expires_at, with a 2-minute margin)
is refreshed for the same node id without asking.";

/// `phone pair-vehicle`'s codes.
const PAIR_VEHICLE_HELP: &str = "\
Stages (on stderr, and in --json as step/steps): idle, scanning, deviceSelected, connecting,
challenge, registering, completing, completed, or error. On success the key is stored in the
credentials and its id printed on stdout (or the JSON). Exit status 1 on failure, with
`latchkey: CODE: message` on stderr:
  TIMEOUT_SCAN       the vehicle was not heard (scan timeout)
  TIMEOUT_CONNECT    the vehicle did not accept the connection (connect timeout)
  TIMEOUT_CHALLENGE  the vehicle did not hand out its pairing challenge (challenge timeout)
  TIMEOUT_SERVER     the gateway or the vehicle did not answer (server timeout)
  DECLINED           key issuance was not approved (no terminal and no --yes, or answered no)
  NO_VEHICLE         the device heard is not that vehicle, or offers no pairing service
  SERVER             the gateway refused (its code follows, e.g. PAIRING_SESSION_EXPIRED)
  VEHICLE_REFUSED    the vehicle refused the gateway's pairing response
  NO_PHONE_KEY       the phone has no registered phone key (no access tool from the gateway)
  BLUETOOTH, BLUETOOTH_OFF, PROTOCOL, CANCELLED (SIGINT/SIGTERM)
Every exit stops the scan, disconnects, and cancels the gateway's pairing session unless the
vehicle accepted the key.";

/// The node's setup access point, where the node serves its AP API (docs/NODES.md §4).
pub const DEFAULT_NODE_URL: &str = "http://192.168.4.1";

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    /// The gateway, e.g. http://192.168.1.42:8080
    #[arg(long, env = "LATCHKEY_GATEWAY", value_name = "URL", value_parser = http_url)]
    pub gateway: String,
    /// An admin API token (`latchkey admin token`)
    #[arg(
        long,
        env = "LATCHKEY_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: String,
    /// The node's setup API, reached over its access point
    #[arg(long, value_name = "URL", default_value = DEFAULT_NODE_URL, value_parser = http_url)]
    pub node_url: String,
    /// The room the node is in
    #[arg(long)]
    pub room: String,
    /// The node's name at the gateway [default: the gateway's choice]
    #[arg(long)]
    pub name: Option<String>,
    /// Household id (seed 004's household_id)
    #[arg(long, default_value = "")]
    pub household_id: String,
    /// The Wi-Fi network the node joins (one it sees) [default: asked on a terminal]
    #[arg(long)]
    pub ssid: Option<String>,
    /// A file whose first line is the Wi-Fi password [default: stdin]
    #[arg(long, value_name = "FILE")]
    pub wifi_password_file: Option<PathBuf>,
    /// The gateway URL as the node reaches it [default: --gateway]
    #[arg(long, value_name = "URL", value_parser = http_url)]
    pub command_center_url: Option<String>,
    /// Continue with a node the gateway holds as pending (a new token for its id)
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Seconds to wait for the node's access point, and again for the node to come online
    #[arg(long, value_name = "S", default_value_t = 180)]
    pub timeout: u64,
}

fn http_url(s: &str) -> Result<String, String> {
    crate::provisioning::base_url("the URL", s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct CredentialsArg {
    /// Credentials file [default: ~/.config/latchkey/phone.json]
    #[arg(long, env = "LATCHKEY_PHONE_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

impl CredentialsArg {
    pub fn path(&self) -> PathBuf {
        self.credentials
            .clone()
            .unwrap_or_else(credentials::default_path)
    }
}

/// Runs one `latchkey phone …` command on a runtime of its own.
pub fn run(cmd: PhoneCmd) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cmd {
            PhoneCmd::Pair {
                payload,
                qr_image,
                name,
                kind,
                creds,
            } => pair(payload, qr_image, &name, &kind, &creds.path()).await,
            PhoneCmd::Unlock {
                endpoint,
                endpoint_id,
                door,
                vehicle,
                refresh_within,
                adapter,
                json,
                timeouts,
                creds,
            } => {
                let how = UnlockArgs {
                    endpoint: endpoint.or(endpoint_id),
                    door,
                    vehicle,
                    refresh_within,
                    adapter,
                    json,
                };
                unlock(how, timeouts, &creds.path()).await
            }
            PhoneCmd::PairVehicle {
                vehicle_id,
                yes,
                json,
                adapter,
                timeouts,
                creds,
            } => {
                let how = PairVehicleArgs { yes, json, adapter };
                pair_vehicle(vehicle_id, how, timeouts, &creds.path()).await
            }
            PhoneCmd::Listen { since, creds } => listen(&creds.path(), since).await,
            PhoneCmd::Publish { topic, data, creds } => publish(&creds.path(), &topic, data).await,
            PhoneCmd::AddNode(args) => {
                let id = crate::add_node::run(*args)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
                println!("{id}");
                Ok(())
            }
        }
    })
}

async fn pair(
    payload: Option<String>,
    qr_image: Option<PathBuf>,
    name: &str,
    kind: &str,
    path: &Path,
) -> anyhow::Result<()> {
    use super::pair;
    let text = match (payload, qr_image) {
        (Some(p), _) => p,
        (None, Some(img)) => pair::decode_qr_image(&img)?,
        (None, None) => bail!("give --payload or --qr-image"),
    };
    let payload = pair::parse_payload(&text)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let mut c = pair::redeem(&http, &payload, name, kind, crate::clock::unix_now()).await?;
    c.save(path)?;
    // The phone key and its access tool (door protocol version 2); without them the phone
    // still opens the gateway's door with version 1.
    keep_tool(&mut c, path, 0, tool::PAIR_HTTP_TIMEOUT).await;
    // A fresh pairing starts its event history and TOTP steps afresh.
    let _ = std::fs::remove_file(Credentials::seq_path(path));
    let _ = std::fs::remove_file(Credentials::step_path(path));
    eprintln!(
        "paired as {:?}: device {} (credentials in {})",
        c.name,
        c.device_id,
        path.display()
    );
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT; the handlers are in place once this returns, so a
/// signal that arrives early is a clean stop.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Parses the JSON argument of `phone publish` (a usage error when it is not JSON).
pub fn parse_json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn unix_now() -> u64 {
    u64::try_from(crate::clock::unix_now()).unwrap_or(0)
}

fn timeouts(given: Option<Vec<f64>>) -> anyhow::Result<Timeouts> {
    let Some(t) = given else {
        return Ok(Timeouts::default());
    };
    let d = |s: f64| Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero());
    match t.as_slice() {
        [a, b, c, e] => {
            let (Some(scan), Some(connect), Some(challenge), Some(server)) =
                (d(*a), d(*b), d(*c), d(*e))
            else {
                bail!("--timeouts takes four positive numbers of seconds");
            };
            Ok(Timeouts {
                scan,
                connect,
                challenge,
                server,
            })
        }
        _ => bail!("--timeouts takes four numbers: scan,connect,challenge,server"),
    }
}

/// The TOTP step for this attempt; waits for the next period when both codes of this one
/// were already sent.
async fn choose_step(path: &Path) -> u64 {
    let last = credentials::load_step(path);
    loop {
        let now = unix_now();
        if let Some(step) = unlock::next_step(last, now) {
            return step;
        }
        let wait = latchkey_proto::TOTP_PERIOD_SECS - now % latchkey_proto::TOTP_PERIOD_SECS;
        eprintln!(
            "latchkey: both codes of this TOTP period were used; waiting {wait} s for the next"
        );
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

/// `phone unlock`'s choices.
struct UnlockArgs {
    endpoint: Option<String>,
    door: unlock::DoorChoice,
    vehicle: Option<uuid::Uuid>,
    refresh_within: u64,
    adapter: Option<String>,
    json: bool,
}

/// Gives the credentials a phone key, then registers or refreshes its access tool and
/// refreshes its vehicle keys as needed, within `limit` each, saving what changed. Best
/// effort: a gateway that does not answer leaves the stored tool and keys in place (opening a
/// door offline is the point), with a line on stderr.
async fn keep_tool(creds: &mut Credentials, path: &Path, within: u64, limit: Duration) {
    keep_access_tool(creds, path, within, limit).await;
    if creds.vehicle_keys.is_empty() {
        return;
    }
    let done = tokio::time::timeout(
        limit,
        crate::vehicle::maintain(creds, crate::clock::unix_now(), within, limit),
    )
    .await;
    // Whatever was refreshed or dropped before a failure is kept.
    let upkept = match done {
        Ok(Ok(u)) => Some(u),
        Ok(Err(e)) => {
            eprintln!("latchkey: vehicle keys not refreshed ({e}); going on with the stored ones");
            None
        }
        Err(_) => {
            eprintln!(
                "latchkey: vehicle keys not refreshed (no answer within {} s); going on with the stored ones",
                limit.as_secs()
            );
            None
        }
    };
    if upkept.is_none_or(|u| u != crate::vehicle::Upkept::default()) {
        if let Err(e) = creds.save(path) {
            eprintln!("latchkey: cannot keep the vehicle keys: {e}");
        }
    }
}

async fn keep_access_tool(creds: &mut Credentials, path: &Path, within: u64, limit: Duration) {
    match tool::ensure_key(creds) {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = creds.save(path) {
                eprintln!("latchkey: cannot keep the new phone key: {e}");
                return;
            }
        }
        Err(e) => {
            eprintln!("latchkey: no phone key: {e}");
            return;
        }
    }
    let had = creds.access_tool.is_some();
    let done = tokio::time::timeout(
        limit,
        tool::maintain(creds, crate::clock::unix_now(), within, limit),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ToolError::Unreachable {
            url: creds.base_url(),
            reason: format!("no answer within {} s", limit.as_secs()),
        })
    });
    match done {
        Ok(tool::Done::Kept) => {}
        Ok(done) => {
            tracing::debug!(?done, "access tool");
            if let Err(e) = creds.save(path) {
                eprintln!("latchkey: cannot keep the access tool: {e}");
            }
        }
        Err(ToolError::NotFound) if !had => {
            eprintln!(
                "latchkey: the gateway issues no access tools (404): door protocol version 1 only"
            );
        }
        Err(e) if had => {
            eprintln!("latchkey: access tool not refreshed ({e}); going on with the stored one");
        }
        Err(e) => eprintln!("latchkey: no access tool ({e}); door protocol version 1 only"),
    }
}

async fn unlock(how: UnlockArgs, given: Option<Vec<f64>>, path: &Path) -> anyhow::Result<()> {
    let mut creds = Credentials::load(path)?;
    let limits = timeouts(given)?;
    keep_tool(
        &mut creds,
        path,
        how.refresh_within,
        tool::UNLOCK_HTTP_TIMEOUT,
    )
    .await;
    // Version 1's TOTP step. Without a tool the gateway is the only door: wait for a fresh
    // step if both of this period's were sent; with one, never wait for a step we may not use.
    let step = if creds.access_tool.is_none() {
        Some(choose_step(path).await)
    } else {
        unlock::next_step(credentials::load_step(path), unix_now())
    };
    let plan = match &how.vehicle {
        Some(v) => unlock::Plan::vehicle(&creds, v, crate::clock::unix_now()),
        None => unlock::Plan::new(&creds, how.endpoint.as_deref(), &how.door, step),
    };
    let plan = match plan {
        Ok(p) => p,
        Err(e) => return report_error(&e, how.json, Duration::ZERO),
    };
    let (_session, adapter) = bluetooth(how.adapter.as_deref()).await?;
    let started = std::time::Instant::now();
    let result = unlock::unlock(
        &adapter,
        &creds,
        &plan,
        limits,
        unix_now,
        |stage, protocol| {
            tracing::debug!(stage = stage.as_str(), ?protocol, "unlock");
            if let (Stage::Completing, Some(Protocol::V1), Some(step)) = (stage, protocol, step) {
                // From here on the gateway may see (and spend) this step.
                if let Err(e) = credentials::store_step(path, step) {
                    tracing::warn!(error = %e, "cannot record the TOTP step sent");
                }
            }
        },
    )
    .await;
    let total = started.elapsed();
    let o = match result {
        Ok(o) => o,
        Err(e) => return report_error(&e, how.json, total),
    };
    let status = o.status.as_str();
    let granted = o.status == latchkey_proto::Status::Granted;
    let verified = if o.authenticated {
        "verified"
    } else {
        "unverified"
    };
    eprintln!(
        "latchkey: {} {} (door protocol {}): {verified} result",
        o.door.kind.as_str(),
        o.door.id,
        o.protocol.number()
    );
    if how.json {
        let device = json!({ "address": o.door.address, "name": o.door.name, "rssi": o.door.rssi });
        let gateway = if o.door.kind == tool::DoorKind::Gateway {
            device.clone()
        } else {
            serde_json::Value::Null
        };
        println!(
            "{}",
            json!({
                "status": status,
                "granted": granted,
                "verified": o.authenticated,
                "authenticated": o.authenticated,
                "protocol": o.protocol.number(),
                "door": { "kind": o.door.kind.as_str(), "id": o.door.id,
                          "address": o.door.address, "name": o.door.name, "rssi": o.door.rssi },
                "endpoint": plan.endpoint,
                "doorTime": o.door_time,
                "retryAfter": o.retry_after,
                "gateway": gateway,
                "attOps": o.att_ops,
                "ms": { "scan": ms(o.timings.scan), "connect": ms(o.timings.connect),
                        "challenge": ms(o.timings.challenge), "decision": ms(o.timings.decision),
                        "total": ms(total) },
            })
        );
    } else if granted {
        println!("granted");
    } else {
        let note = if o.authenticated {
            ""
        } else {
            " (unconfirmed: the door could not authenticate it)"
        };
        let retry = if o.retry_after > 0 {
            format!(", retry in {} s", o.retry_after)
        } else {
            String::new()
        };
        println!("denied: {status}{retry}{note}");
    }
    if granted {
        Ok(())
    } else {
        bail!("access denied: {status}")
    }
}

/// The BlueZ session and the adapter `name` (default: the system's).
async fn bluetooth(name: Option<&str>) -> anyhow::Result<(bluer::Session, bluer::Adapter)> {
    let session = bluer::Session::new()
        .await
        .context("cannot reach BlueZ on the system D-Bus")?;
    let adapter = match name {
        Some(name) => session.adapter(name)?,
        None => session
            .default_adapter()
            .await
            .context("no Bluetooth adapter")?,
    };
    Ok((session, adapter))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An unlock that ended without an answer: the JSON line (with `--json`) and the error.
fn report_error(e: &unlock::UnlockError, json: bool, total: Duration) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            json!({ "status": "ERROR", "granted": false, "code": e.code(),
                    "message": e.to_string(), "ms": { "total": ms(total) } })
        );
    }
    bail!("{}: {e}", e.code())
}

async fn listen(path: &Path, since: Option<u64>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    super::sync::listen(
        path,
        since,
        stdout.lock(),
        |msg| eprintln!("latchkey: {msg}"),
        stop_signal()?,
    )
    .await?;
    Ok(())
}

async fn publish(path: &Path, topic: &str, data: serde_json::Value) -> anyhow::Result<()> {
    let seq = super::sync::publish(path, topic, data, |msg| eprintln!("latchkey: {msg}")).await?;
    println!("{seq}");
    Ok(())
}

/// `phone pair-vehicle`'s choices.
struct PairVehicleArgs {
    yes: bool,
    json: bool,
    adapter: Option<String>,
}

/// How long the approval prompt waits for an answer: the gateway's session is not open yet,
/// but the vehicle's challenge lives 120 s and the gateway accepts it for as long.
const APPROVAL_LIMIT: Duration = Duration::from_secs(60);

/// "Approve key issuance?" on the terminal: `true` only for a yes typed there. No terminal,
/// no answer within [`APPROVAL_LIMIT`], or end of input: not approved.
async fn ask_approval(vehicle: uuid::Uuid) -> bool {
    use std::io::{BufRead, IsTerminal, Read, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("latchkey: Approve key issuance? (no terminal to ask on; --yes approves)");
        return false;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread, not spawn_blocking: an unanswered prompt must not keep the runtime
    // (and the process) alive after the timeout.
    std::thread::spawn(move || {
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "Approve key issuance? (vehicle {vehicle}) [y/N] ");
        let _ = stderr.flush();
        let mut line = String::new();
        let read = std::io::stdin().lock().take(64).read_line(&mut line);
        let _ = tx.send(read.is_ok() && matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"));
    });
    tokio::time::timeout(APPROVAL_LIMIT, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

async fn pair_vehicle(
    vehicle: uuid::Uuid,
    how: PairVehicleArgs,
    given: Option<Vec<f64>>,
    path: &Path,
) -> anyhow::Result<()> {
    use crate::pair_vehicle;
    let mut creds = Credentials::load(path)?;
    let limits = timeouts(given)?;
    // The phone key must be registered (the gateway checks it): register or refresh first.
    keep_tool(
        &mut creds,
        path,
        tool::DEFAULT_REFRESH_WITHIN,
        tool::UNLOCK_HTTP_TIMEOUT,
    )
    .await;
    let (_session, adapter) = bluetooth(how.adapter.as_deref()).await?;
    let setup = pair_vehicle::Setup {
        creds: &creds,
        vehicle,
        timeouts: limits,
    };
    let yes = how.yes;
    let (ctx, result) = pair_vehicle::pair(
        &adapter,
        &setup,
        || async move { yes || ask_approval(vehicle).await },
        |ctx| eprintln!("latchkey: pair-vehicle: {}", ctx.step.as_str()),
        async {
            match stop_signal() {
                Ok(stop) => stop.await,
                Err(_) => std::future::pending().await,
            }
        },
    )
    .await;
    let stored = match result {
        Ok(keys) => {
            let keys = pair_vehicle::usable_keys(keys, &vehicle);
            crate::vehicle::store_keys(&mut creds, &vehicle, keys);
            creds.save(path).map_err(anyhow::Error::from)
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", e.code())),
    };
    if how.json {
        println!("{}", ctx.to_json());
    } else if let (Ok(()), Some(key)) = (&stored, &ctx.result) {
        println!("{}", key.key_id);
    }
    stored
}
