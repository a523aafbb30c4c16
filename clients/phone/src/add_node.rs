//! `latchkey phone add-node`: seed 004's mobile flow ([`crate::provisioning`]) as a command,
//! with progress on stderr. The clock, the terminal and the waits live here; the rules in
//! `provisioning`.

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::AddNodeArgs;
use crate::clock::{rfc3339, unix_now};
use crate::provisioning::{
    choose, poll, AddNodeError, GatewayApi, Network, NodeAp, NodeInfo, Progress, Provisioning,
};
use crate::secret::SecretString;

/// Sends of the provisioning request (a corrected password, a fresh token) before giving up.
const MAX_SENDS: u32 = 3;
/// Pause between two looks at the node and the gateway.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Longest line read for a password or a network name.
const MAX_LINE: u64 = 1024;

fn say(msg: &str) {
    eprintln!("add-node: {msg}");
}

/// Runs the flow; returns the node id once the gateway has the node online.
pub async fn run(a: AddNodeArgs) -> Result<String, AddNodeError> {
    let gateway = GatewayApi::new(&a.gateway, SecretString::new(a.admin_token))?;
    let node = NodeAp::new(&a.node_url)?;
    let cc_url = a
        .command_center_url
        .unwrap_or_else(|| gateway.base().to_owned());
    let limit = Duration::from_secs(a.timeout.max(1));
    let mut flow = Provisioning::new(gateway, a.household_id, a.room, a.name);
    if let Some(id) = a.node_id {
        flow = flow.for_node(id);
    }

    // On the home network: the token (and the node's id) first.
    let t = flow.fetch_token().await?;
    say(&format!(
        "provisioning token for node {} (valid until {})",
        t.node_id,
        rfc3339(t.expires_at)
    ));

    say(&format!(
        "looking for the node at {} (join its setup access point, latchkey-setup-…)",
        node.base()
    ));
    let info = wait_for_node(&node, limit).await?;
    say(&format!(
        "found a {} node (firmware {}), {}",
        info.kind, info.firmware, info.state
    ));
    if !info.accepts_provisioning() {
        return Err(AddNodeError::NodeBusy { state: info.state });
    }
    let networks = node.networks().await?;
    let ssid = match a.ssid {
        Some(s) => s,
        None => ask_ssid(&networks)?,
    };
    let mut input = PasswordSource::new(a.wifi_password_file);
    let secure = networks.iter().any(|n| n.ssid == ssid && n.secure);
    let password = if secure {
        Some(input.read(&ssid)?)
    } else {
        None
    };
    let mut wifi = choose(&networks, &ssid, password)?;

    let mut sends = 0;
    loop {
        sends += 1;
        let node_id = flow
            .start_provisioning(&node, &wifi, &cc_url, unix_now())
            .await?;
        say(&format!(
            "sent the Wi-Fi details; node {node_id} now joins {ssid:?} and registers \
             (switch back to the home network if the access point drops you)"
        ));
        match wait_online(flow.gateway(), &node, &node_id, limit).await? {
            Progress::Online => {
                say(&format!("node {node_id} is online"));
                return Ok(node_id);
            }
            Progress::WifiFailed { code, message } => {
                if sends < MAX_SENDS && input.interactive() {
                    say(&format!(
                        "the node could not join {ssid:?} ({code}: {message}); try the password again"
                    ));
                    wifi = choose(&networks, &ssid, Some(input.read(&ssid)?))?;
                    continue;
                }
                return Err(AddNodeError::WifiFailed {
                    ssid,
                    code,
                    message: format!(
                        "{message}; run again with --node-id {node_id} and the right password (the node needs no reset)"
                    ),
                });
            }
            Progress::RegisterFailed { code, message } => {
                if code != "PROVISIONING_TOKEN_EXPIRED" {
                    return Err(AddNodeError::Rejected(format!("{code}: {message}")));
                }
                // The node reopened its access point: a fresh token for the same id mends it.
                if sends < MAX_SENDS && flow.refresh_token().await.is_ok() {
                    say("the token expired before the node registered; sending a fresh one");
                    continue;
                }
                return Err(AddNodeError::TokenExpiredAfterSend { node_id });
            }
            // `wait_online` returns only outcomes.
            Progress::Waiting(last) => {
                return Err(AddNodeError::Timeout {
                    secs: limit.as_secs(),
                    last,
                })
            }
        }
    }
}

/// Waits (bounded) until the node's access point answers.
async fn wait_for_node(node: &NodeAp, limit: Duration) -> Result<NodeInfo, AddNodeError> {
    let deadline = Instant::now() + limit;
    loop {
        match node.info().await {
            Ok(i) => return Ok(i),
            Err(e @ AddNodeError::NodeUnreachable { .. }) if Instant::now() >= deadline => {
                return Err(e)
            }
            Err(AddNodeError::NodeUnreachable { .. }) => tokio::time::sleep(POLL_EVERY).await,
            Err(e) => return Err(e),
        }
    }
}

/// Polls until an outcome, or [`AddNodeError::Timeout`]; prints each new stage.
async fn wait_online(
    gateway: &GatewayApi,
    node: &NodeAp,
    node_id: &str,
    limit: Duration,
) -> Result<Progress, AddNodeError> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match poll(gateway, node, node_id).await? {
            Progress::Waiting(now) => {
                if now != last {
                    say(&now);
                    last = now;
                }
            }
            outcome => return Ok(outcome),
        }
        if Instant::now() >= deadline {
            return Err(AddNodeError::Timeout {
                secs: limit.as_secs(),
                last,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// One line without its end; the buffer is handed on, not copied (it may be a password).
fn read_line(r: impl Read) -> std::io::Result<String> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::BufReader::new(r.take(MAX_LINE)).read_line(&mut line)?;
    let end = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(end);
    Ok(std::mem::take(&mut *line))
}

/// Asks for the network on a terminal; elsewhere `--ssid` is needed.
fn ask_ssid(networks: &[Network]) -> Result<String, AddNodeError> {
    let seen: Vec<&str> = networks.iter().map(|n| n.ssid.as_str()).collect();
    if !std::io::stdin().is_terminal() {
        return Err(AddNodeError::Usage(format!(
            "give --ssid; the node sees: {}",
            seen.join(", ")
        )));
    }
    for (i, n) in networks.iter().enumerate() {
        let lock = if n.secure { "" } else { " (open)" };
        eprintln!("  {}. {} {} dBm{lock}", i + 1, n.ssid, n.rssi);
    }
    eprint!("Network (number or name): ");
    let answer = read_line(std::io::stdin().lock())
        .map_err(|e| AddNodeError::Usage(format!("cannot read the network: {e}")))?;
    let picked = answer
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| seen.get(i).map(|s| (*s).to_owned()));
    Ok(picked.unwrap_or(answer))
}

/// Where the Wi-Fi password comes from: a file, a terminal prompt without echo, or stdin.
struct PasswordSource {
    file: Option<PathBuf>,
    tty: bool,
}

impl PasswordSource {
    fn new(file: Option<PathBuf>) -> Self {
        Self {
            tty: file.is_none() && std::io::stdin().is_terminal(),
            file,
        }
    }

    /// Whether a second password can be asked for.
    fn interactive(&self) -> bool {
        self.tty
    }

    fn read(&mut self, ssid: &str) -> Result<SecretString, AddNodeError> {
        let failed =
            |e: std::io::Error| AddNodeError::Usage(format!("cannot read the Wi-Fi password: {e}"));
        let line = match (&self.file, self.tty) {
            (Some(path), _) => {
                let f = std::fs::File::open(path).map_err(|e| {
                    AddNodeError::Usage(format!("cannot read {}: {e}", path.display()))
                })?;
                read_line(f).map_err(failed)?
            }
            (None, true) => rpassword::prompt_password(format!("Wi-Fi password for {ssid:?}: "))
                .map_err(failed)?,
            (None, false) => read_line(std::io::stdin().lock()).map_err(failed)?,
        };
        Ok(SecretString::new(line))
    }
}
