//! Adding an endpoint node, seed 004's mobile flow (docs/NODES.md §3 and §4):
//!
//! 1. while on the home network, ask the gateway for a provisioning token
//!    (`POST /api/v0/provisioning/token`, admin Bearer); the gateway makes the node's id;
//! 2. on the node's setup access point: `GET /api/v1/info`, `GET /api/v1/networks`;
//! 3. check the token's `expires_at` against our clock and, when it is over or within
//!    [`REFRESH_MARGIN_SECS`], get a new token for the same node id;
//! 4. `POST /api/v1/provision` with exactly seed 004's seven fields;
//! 5. poll the node (while its access point answers) and the gateway
//!    (`GET /api/v0/nodes/{node_id}`) until the node is online.
//!
//! [`Provisioning`] holds the token between the steps as the seed's `useProvisioning` hook does;
//! [`AddNodeError`] carries seed 004's error table (its messages are the user's).
//! Functions that judge time take `now` (Unix seconds) from the caller.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secret::SecretString;

/// A token is refreshed before sending when it has less than this left: the node still has
/// to join the Wi-Fi network and register with it.
pub const REFRESH_MARGIN_SECS: i64 = 120;
/// Per-request limit for the gateway (seed 004's 10 s).
pub const GATEWAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request limit for the node's access point (a small board on a local link).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer body read from the gateway or a node.
const MAX_BODY: usize = 64 * 1024;
/// WPA2 passphrases: 8 to 63 printable ASCII characters (empty for an open network), the
/// node's own rule (docs/NODES.md §4), checked here so a typo fails before the node sees it.
const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=63;

/// Seed 004's error table, plus what a command line adds (the node unreachable, a network it
/// cannot see, a timeout). `Display` is the message for the user; [`AddNodeError::code`] a
/// stable word for scripts.
#[derive(Debug, thiserror::Error)]
pub enum AddNodeError {
    /// Token request answered 401/403.
    #[error("Please log in again: the gateway refused the admin token")]
    LoginRequired,
    /// Token request could not reach the gateway.
    #[error(
        "Please connect to your home WiFi first: the gateway at {url} does not answer ({reason})"
    )]
    GatewayUnreachable { url: String, reason: String },
    /// The refresh before sending failed.
    #[error("Provisioning token expired. Please try again. ({0})")]
    TokenRefreshFailed(String),
    /// The node could not register because the token expired after it was sent.
    #[error("Provisioning failed. Please restart the node and try again. (the provisioning token expired before node {node_id} could register)")]
    TokenExpiredAfterSend { node_id: String },
    /// The node (or, through it, the gateway) rejected the request or the token.
    #[error("Provisioning failed. Please try again. ({0})")]
    Rejected(String),
    /// Provisioning was attempted without a token.
    #[error("Provisioning not ready. Please try again. (no provisioning token)")]
    NotReady,
    /// The gateway refused the token request for another reason (a bad field, an unknown or
    /// registered node id).
    #[error("the gateway refused the provisioning token: {code}: {message}")]
    TokenRefused { code: String, message: String },
    #[error("the node does not answer at {url} ({reason}): connect to its setup access point (latchkey-setup-…, the code on its label is the Wi-Fi password)")]
    NodeUnreachable { url: String, reason: String },
    #[error("the node is {state}, not waiting to be provisioned (a registered node is added again only after a factory reset)")]
    NodeBusy { state: String },
    #[error("the node does not see a network named {ssid:?}; it sees: {seen}")]
    UnknownNetwork { ssid: String, seen: String },
    #[error("the Wi-Fi password must be 8 to 63 printable ASCII characters")]
    BadPassword,
    #[error("the node could not join {ssid:?}: {code}: {message}")]
    WifiFailed {
        ssid: String,
        code: String,
        message: String,
    },
    #[error("the node was not online after {secs} s (last seen: {last})")]
    Timeout { secs: u64, last: String },
    #[error("{0} answered something unexpected: {1}")]
    Protocol(String, String),
    #[error("{0}")]
    Usage(String),
}

impl AddNodeError {
    /// A stable word for each row, printed before the message.
    pub fn code(&self) -> &'static str {
        match self {
            AddNodeError::LoginRequired => "LOGIN_REQUIRED",
            AddNodeError::GatewayUnreachable { .. } => "GATEWAY_UNREACHABLE",
            AddNodeError::TokenRefreshFailed(_) => "TOKEN_REFRESH_FAILED",
            AddNodeError::TokenExpiredAfterSend { .. } => "TOKEN_EXPIRED_AFTER_SEND",
            AddNodeError::Rejected(_) => "PROVISIONING_REJECTED",
            AddNodeError::NotReady => "NOT_READY",
            AddNodeError::TokenRefused { .. } => "TOKEN_REFUSED",
            AddNodeError::NodeUnreachable { .. } => "NODE_UNREACHABLE",
            AddNodeError::NodeBusy { .. } => "NODE_BUSY",
            AddNodeError::UnknownNetwork { .. } => "UNKNOWN_NETWORK",
            AddNodeError::BadPassword => "BAD_PASSWORD",
            AddNodeError::WifiFailed { .. } => "WIFI_FAILED",
            AddNodeError::Timeout { .. } => "TIMEOUT",
            AddNodeError::Protocol(..) => "PROTOCOL",
            AddNodeError::Usage(_) => "USAGE",
        }
    }
}

/// `http://host[:port]` without a trailing slash; anything else is a usage error.
pub fn base_url(what: &str, url: &str) -> Result<String, AddNodeError> {
    let u = reqwest::Url::parse(url)
        .map_err(|e| AddNodeError::Usage(format!("{what} is not a URL: {e}")))?;
    if u.scheme() != "http" || u.host_str().is_none() || u.query().is_some() {
        return Err(AddNodeError::Usage(format!(
            "{what} must be http://host[:port]"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// An HTTP answer: status and JSON body (`Null` when there was none or it was not JSON).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// Reads at most [`MAX_BODY`] bytes of the answer.
pub(crate) async fn answer(mut resp: reqwest::Response) -> Result<Answer, reqwest::Error> {
    let status = resp.status().as_u16();
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > MAX_BODY {
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    let body = serde_json::from_slice(&buf).unwrap_or(Value::Null);
    Ok(Answer { status, body })
}

/// The contract's error body, as (code, message).
pub(crate) fn error_of(a: &Answer) -> (String, String) {
    let e = &a.body["error"];
    (
        e["code"].as_str().unwrap_or("HTTP").to_owned(),
        e["message"]
            .as_str()
            .map_or_else(|| format!("HTTP {}", a.status), str::to_owned),
    )
}

/// `reqwest`'s error text without the URL (it is in our message already).
pub(crate) fn reason(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

/// Seed 004's token request; `node_id` only to refresh.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub household_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

/// A provisioning token as the gateway issued it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: SecretString,
    pub node_id: String,
    /// `expires_at` as Unix seconds.
    pub expires_at: i64,
}

impl IssuedToken {
    /// Whether it should be refreshed before it is sent at `now`.
    pub fn stale(&self, now: i64) -> bool {
        self.expires_at - now < REFRESH_MARGIN_SECS
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    node_id: String,
    expires_at: String,
}

/// What the gateway says about a node (`GET /api/v0/nodes/{node_id}`), the fields we use.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub state: String,
    #[serde(default)]
    pub online: bool,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The gateway, as an admin client.
#[derive(Debug, Clone)]
pub struct GatewayApi {
    base: String,
    admin_token: SecretString,
    http: reqwest::Client,
}

impl GatewayApi {
    pub fn new(base: &str, admin_token: SecretString) -> Result<Self, AddNodeError> {
        let http = reqwest::Client::builder()
            .timeout(GATEWAY_TIMEOUT)
            .build()
            .map_err(|e| AddNodeError::Usage(e.to_string()))?;
        Ok(Self {
            base: base_url("--gateway", base)?,
            admin_token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn auth(&self) -> Result<reqwest::header::HeaderValue, AddNodeError> {
        let mut v = reqwest::header::HeaderValue::from_str(&format!(
            "Bearer {}",
            self.admin_token.expose()
        ))
        .map_err(|_| AddNodeError::LoginRequired)?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// `POST /api/v0/provisioning/token`.
    pub async fn request_token(&self, req: &TokenRequest) -> Result<IssuedToken, AddNodeError> {
        let url = format!("{}/api/v0/provisioning/token", self.base);
        let unreachable = |e| AddNodeError::GatewayUnreachable {
            url: self.base.clone(),
            reason: reason(e),
        };
        let resp = self
            .http
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, self.auth()?)
            .json(req)
            .send()
            .await
            .map_err(unreachable)?;
        let a = answer(resp).await.map_err(unreachable)?;
        match a.status {
            201 | 200 => {}
            401 | 403 => return Err(AddNodeError::LoginRequired),
            _ => {
                let (code, message) = error_of(&a);
                return Err(AddNodeError::TokenRefused { code, message });
            }
        }
        let bad = |why: &str| AddNodeError::Protocol("the gateway".into(), why.into());
        let t: TokenAnswer =
            serde_json::from_value(a.body).map_err(|_| bad("no token, node_id or expires_at"))?;
        let expires_at =
            crate::clock::parse_rfc3339(&t.expires_at).ok_or_else(|| bad("expires_at"))?;
        Ok(IssuedToken {
            token: SecretString::new(t.token),
            node_id: t.node_id,
            expires_at,
        })
    }

    /// `GET /api/v0/nodes/{node_id}`.
    pub async fn node(&self, node_id: &str) -> Result<NodeStatus, AddNodeError> {
        let unreachable = |e| AddNodeError::GatewayUnreachable {
            url: self.base.clone(),
            reason: reason(e),
        };
        let resp = self
            .http
            .get(format!("{}/api/v0/nodes/{node_id}", self.base))
            .header(reqwest::header::AUTHORIZATION, self.auth()?)
            .send()
            .await
            .map_err(unreachable)?;
        let a = answer(resp).await.map_err(unreachable)?;
        match a.status {
            200 => serde_json::from_value(a.body)
                .map_err(|_| AddNodeError::Protocol("the gateway".into(), "node status".into())),
            401 | 403 => Err(AddNodeError::LoginRequired),
            _ => {
                let (code, message) = error_of(&a);
                Err(AddNodeError::Protocol(
                    "the gateway".into(),
                    format!("{code}: {message}"),
                ))
            }
        }
    }
}

/// `GET /api/v1/info` of a node.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub state: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub firmware: String,
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub error: Option<NodeFailure>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeFailure {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl NodeInfo {
    /// Whether the node takes a provisioning request now.
    pub fn accepts_provisioning(&self) -> bool {
        matches!(
            self.state.as_str(),
            "unprovisioned" | "wifi_failed" | "register_failed"
        )
    }
}

/// One network the node can see.
#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    pub ssid: String,
    #[serde(default)]
    pub rssi: i16,
    #[serde(default = "yes")]
    pub secure: bool,
}

fn yes() -> bool {
    true
}

/// Seed 004's `ApiProvisioningRequest`: exactly these seven fields.
#[derive(Serialize)]
pub struct ProvisionBody<'a> {
    pub wifi_ssid: &'a str,
    pub wifi_password: &'a str,
    pub room: &'a str,
    pub command_center_url: &'a str,
    pub household_id: &'a str,
    pub node_id: &'a str,
    pub provisioning_token: &'a str,
}

/// The node's setup access point API.
#[derive(Debug, Clone)]
pub struct NodeAp {
    base: String,
    http: reqwest::Client,
}

impl NodeAp {
    pub fn new(base: &str) -> Result<Self, AddNodeError> {
        let http = reqwest::Client::builder()
            .timeout(NODE_TIMEOUT)
            .build()
            .map_err(|e| AddNodeError::Usage(e.to_string()))?;
        Ok(Self {
            base: base_url("--node-url", base)?,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: reqwest::Error) -> AddNodeError {
        AddNodeError::NodeUnreachable {
            url: self.base.clone(),
            reason: reason(e),
        }
    }

    async fn get(&self, path: &str) -> Result<Value, AddNodeError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let a = answer(resp).await.map_err(|e| self.unreachable(e))?;
        if a.status != 200 {
            let (code, message) = error_of(&a);
            return Err(AddNodeError::Protocol(
                format!("the node ({path})"),
                format!("{code}: {message}"),
            ));
        }
        Ok(a.body)
    }

    /// `GET /api/v1/info`.
    pub async fn info(&self) -> Result<NodeInfo, AddNodeError> {
        serde_json::from_value(self.get("/api/v1/info").await?)
            .map_err(|_| AddNodeError::Protocol("the node".into(), "no state in its info".into()))
    }

    /// `GET /api/v1/networks`, strongest first.
    pub async fn networks(&self) -> Result<Vec<Network>, AddNodeError> {
        #[derive(Deserialize)]
        struct List {
            networks: Vec<Network>,
        }
        let mut l: List = serde_json::from_value(self.get("/api/v1/networks").await?)
            .map_err(|_| AddNodeError::Protocol("the node".into(), "no network list".into()))?;
        l.networks.sort_by_key(|n| std::cmp::Reverse(n.rssi));
        Ok(l.networks)
    }

    /// `POST /api/v1/provision`; `Ok` when the node accepted it (it then joins the network).
    pub async fn provision(&self, body: &ProvisionBody<'_>) -> Result<(), AddNodeError> {
        let resp = self
            .http
            .post(format!("{}/api/v1/provision", self.base))
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let a = answer(resp).await.map_err(|e| self.unreachable(e))?;
        if (200..300).contains(&a.status) && a.body["success"] != Value::Bool(false) {
            return Ok(());
        }
        let (code, message) = error_of(&a);
        let message = a.body["message"].as_str().unwrap_or(&message).to_owned();
        Err(AddNodeError::Rejected(format!("{code}: {message}")))
    }
}

/// The Wi-Fi network the node is to join.
pub struct WifiChoice {
    pub ssid: String,
    pub password: SecretString,
}

impl std::fmt::Debug for WifiChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WifiChoice")
            .field("ssid", &self.ssid)
            .finish_non_exhaustive()
    }
}

/// Picks `ssid` from what the node sees and checks the password against the network's kind.
pub fn choose(
    networks: &[Network],
    ssid: &str,
    password: Option<SecretString>,
) -> Result<WifiChoice, AddNodeError> {
    let Some(n) = networks.iter().find(|n| n.ssid == ssid) else {
        let seen: Vec<String> = networks.iter().map(|n| format!("{:?}", n.ssid)).collect();
        return Err(AddNodeError::UnknownNetwork {
            ssid: ssid.to_owned(),
            seen: if seen.is_empty() {
                "nothing".into()
            } else {
                seen.join(", ")
            },
        });
    };
    let password = match (n.secure, password) {
        (false, _) => SecretString::new(String::new()),
        (true, Some(p)) => p,
        (true, None) => return Err(AddNodeError::BadPassword),
    };
    check_password(&password, n.secure)?;
    Ok(WifiChoice {
        ssid: n.ssid.clone(),
        password,
    })
}

fn check_password(p: &SecretString, secure: bool) -> Result<(), AddNodeError> {
    let p = p.expose();
    let ok = if secure {
        PASSWORD_LEN.contains(&p.len()) && p.bytes().all(|b| (0x20..0x7f).contains(&b))
    } else {
        p.is_empty()
    };
    if ok {
        Ok(())
    } else {
        Err(AddNodeError::BadPassword)
    }
}

/// The flow's state between steps: the token and the node id it belongs to (seed 004's
/// `useProvisioning`: `fetchProvisioningToken`, `refreshProvisioningToken`, `startProvisioning`).
#[derive(Debug)]
pub struct Provisioning {
    gateway: GatewayApi,
    pub household_id: String,
    pub room: String,
    pub name: Option<String>,
    token: Option<IssuedToken>,
    /// A pending node to continue with (its id is kept across refreshes).
    node_id: Option<String>,
}

impl Provisioning {
    pub fn new(
        gateway: GatewayApi,
        household_id: String,
        room: String,
        name: Option<String>,
    ) -> Self {
        Self {
            gateway,
            household_id,
            room,
            name,
            token: None,
            node_id: None,
        }
    }

    /// Continue with a node the gateway already holds as pending (a new token for its id).
    pub fn for_node(mut self, node_id: String) -> Self {
        self.node_id = Some(node_id);
        self
    }

    pub fn gateway(&self) -> &GatewayApi {
        &self.gateway
    }

    pub fn token(&self) -> Option<&IssuedToken> {
        self.token.as_ref()
    }

    pub fn node_id(&self) -> Option<&str> {
        self.token
            .as_ref()
            .map(|t| t.node_id.as_str())
            .or(self.node_id.as_deref())
    }

    /// Fetches the token (on "Add Node"): a new node, or a fresh token for the one given with
    /// [`Provisioning::for_node`]. On failure no token is held, so provisioning stays blocked.
    pub async fn fetch_token(&mut self) -> Result<&IssuedToken, AddNodeError> {
        self.token = None;
        let req = TokenRequest {
            household_id: Some(self.household_id.clone()).filter(|h| !h.is_empty()),
            room: Some(self.room.clone()),
            name: self.name.clone(),
            node_id: self.node_id.clone(),
        };
        let t = self.gateway.request_token(&req).await?;
        self.node_id = Some(t.node_id.clone());
        Ok(self.token.insert(t))
    }

    /// A new token for the same node id (the old one is void at the gateway from then on).
    pub async fn refresh_token(&mut self) -> Result<&IssuedToken, AddNodeError> {
        let Some(node_id) = self.node_id().map(str::to_owned) else {
            return Err(AddNodeError::NotReady);
        };
        let req = TokenRequest {
            household_id: Some(self.household_id.clone()).filter(|h| !h.is_empty()),
            node_id: Some(node_id.clone()),
            ..TokenRequest::default()
        };
        let t = match self.gateway.request_token(&req).await {
            Ok(t) => t,
            Err(AddNodeError::LoginRequired) => return Err(AddNodeError::LoginRequired),
            Err(e) => return Err(AddNodeError::TokenRefreshFailed(e.to_string())),
        };
        if t.node_id != node_id {
            return Err(AddNodeError::Protocol(
                "the gateway".into(),
                "a refreshed token for another node id".into(),
            ));
        }
        Ok(self.token.insert(t))
    }

    /// Sends the provisioning request (refreshing the token first when it is stale at `now`).
    /// Returns the node id. Without a token nothing is sent.
    pub async fn start_provisioning(
        &mut self,
        node: &NodeAp,
        wifi: &WifiChoice,
        command_center_url: &str,
        now: i64,
    ) -> Result<String, AddNodeError> {
        let stale = match &self.token {
            None => return Err(AddNodeError::NotReady),
            Some(t) => t.stale(now),
        };
        if stale {
            self.refresh_token().await?;
        }
        let Some(t) = &self.token else {
            return Err(AddNodeError::NotReady);
        };
        node.provision(&ProvisionBody {
            wifi_ssid: &wifi.ssid,
            wifi_password: wifi.password.expose(),
            room: &self.room,
            command_center_url,
            household_id: &self.household_id,
            node_id: &t.node_id,
            provisioning_token: t.token.expose(),
        })
        .await?;
        Ok(t.node_id.clone())
    }
}

/// What one look at the node and the gateway after sending found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The gateway has the node online: done.
    Online,
    /// Still on its way; the text says where (for the user).
    Waiting(String),
    /// The node could not join the network (its access point is open again).
    WifiFailed { code: String, message: String },
    /// The node could not register (its access point is open again).
    RegisterFailed { code: String, message: String },
}

/// One poll: the gateway first (it is the goal), then the node's access point if it answers.
/// Only a refused admin token ends the wait early.
pub async fn poll(
    gateway: &GatewayApi,
    node: &NodeAp,
    node_id: &str,
) -> Result<Progress, AddNodeError> {
    let at_gateway = match gateway.node(node_id).await {
        Ok(s) if s.online => return Ok(Progress::Online),
        Ok(s) => format!("gateway: {}", s.state),
        Err(AddNodeError::LoginRequired) => return Err(AddNodeError::LoginRequired),
        Err(AddNodeError::GatewayUnreachable { .. }) => "gateway: not reachable yet".to_owned(),
        Err(e) => format!("gateway: {e}"),
    };
    Ok(match node.info().await {
        Ok(i) => {
            let failure = i.error.clone().unwrap_or(NodeFailure {
                code: "UNKNOWN".into(),
                message: String::new(),
            });
            match i.state.as_str() {
                "wifi_failed" => Progress::WifiFailed {
                    code: failure.code,
                    message: failure.message,
                },
                "register_failed" => Progress::RegisterFailed {
                    code: failure.code,
                    message: failure.message,
                },
                s => Progress::Waiting(format!("node: {s}; {at_gateway}")),
            }
        }
        // The node left its access point to join the network: expected.
        Err(_) => Progress::Waiting(format!("node: access point closed; {at_gateway}")),
    })
}
