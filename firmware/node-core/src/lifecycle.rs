//! The node's lifecycle (NODES.md §1).
//!
//! ```text
//!  unprovisioned ──provision──▶ joining ──Wi-Fi up──▶ registering ──201──▶ online ⇄ offline
//!        ▲                        │                      │                (session up / down)
//!        │                        ▼ join failed          ▼ refused             │ 4403 / 403
//!        │                   wifi_failed            register_failed            ▼
//!        │                        └── both: AP open again, a corrected     revoked
//!        │                            provision is accepted (→ joining)
//!        └───────────── factory reset (from any state) ──────────────────────────┘
//! ```
//!
//! The AP API is served only in `unprovisioned`, `wifi_failed` and `register_failed`
//! ([`Lifecycle::ap_open`]). No transition waits on time, so the machine takes no `now`; the
//! timed parts (registration retries, session liveness and backoff) are in [`crate::run`],
//! [`crate::session`] and [`crate::backoff`].

use alloc::string::String;

use crate::board::WifiError;
use crate::provision::ProvisionRequest;
use crate::storage::Credentials;

/// The states, as `GET /api/v1/info` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No credentials; the setup access point is open.
    Unprovisioned,
    /// Joining the Wi-Fi network from the provisioning request.
    Joining,
    /// Redeeming the provisioning token at the gateway.
    Registering,
    /// Joining failed; the access point is open again.
    WifiFailed,
    /// The gateway refused the registration; the access point is open again.
    RegisterFailed,
    /// Registered, session up.
    Online,
    /// Registered, session down (reconnecting).
    Offline,
    /// The gateway revoked the node; only a factory reset leaves this state.
    Revoked,
}

impl State {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Unprovisioned => "unprovisioned",
            State::Joining => "joining",
            State::Registering => "registering",
            State::WifiFailed => "wifi_failed",
            State::RegisterFailed => "register_failed",
            State::Online => "online",
            State::Offline => "offline",
            State::Revoked => "revoked",
        }
    }
}

/// Why the last attempt failed, shown in `GET /api/v1/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `WIFI_WRONG_PASSWORD`, `WIFI_NOT_FOUND`, `WIFI_FAILED`, or the gateway's code.
    pub code: String,
    /// Human-readable.
    pub message: String,
}

/// Inputs.
#[derive(Debug)]
pub enum Event {
    /// A valid provisioning request from the AP API.
    Provision(ProvisionRequest),
    /// The station joined the network.
    WifiJoined,
    /// Joining failed.
    WifiFailed(WifiError),
    /// Registration succeeded and the credentials are stored.
    Registered(Credentials),
    /// Registration refused (or unreachable after the retries).
    RegisterFailed(Failure),
    /// The gateway session is up (hello received).
    SessionUp,
    /// The gateway session ended.
    SessionDown,
    /// The gateway closed with 4403 or refused the upgrade with 403.
    Revoked,
    /// Credentials erased.
    FactoryReset,
}

/// An event that the current state does not take (the AP API answers 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(pub State);

/// The lifecycle machine.
#[derive(Debug)]
pub struct Lifecycle {
    state: State,
    failure: Option<Failure>,
    pending: Option<ProvisionRequest>,
    credentials: Option<Credentials>,
}

impl Lifecycle {
    /// The state at boot, from what storage holds.
    pub fn boot(credentials: Option<Credentials>) -> Self {
        let state = match &credentials {
            None => State::Unprovisioned,
            Some(c) if c.revoked => State::Revoked,
            Some(_) => State::Offline,
        };
        Self {
            state,
            failure: None,
            pending: None,
            credentials,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the last attempt failed (in `wifi_failed` and `register_failed`).
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The request being acted on (joining, registering).
    pub fn pending(&self) -> Option<&ProvisionRequest> {
        self.pending.as_ref()
    }

    /// The stored credentials (online, offline, revoked).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The gateway was found at a new address (rediscovery): the session goes there now.
    pub fn moved(&mut self, ws_url: &str) {
        if let Some(c) = self.credentials.as_mut() {
            c.ws_url = String::from(ws_url);
        }
    }

    /// The node id: from the credentials, or from the request being acted on.
    pub fn node_id(&self) -> Option<&str> {
        self.credentials
            .as_ref()
            .map(|c| c.node_id.as_str())
            .or(self.pending.as_ref().map(|p| p.node_id.as_str()))
    }

    /// Whether the AP API is served.
    pub fn ap_open(&self) -> bool {
        matches!(
            self.state,
            State::Unprovisioned | State::WifiFailed | State::RegisterFailed
        )
    }

    /// Applies an event; `Err` leaves the state unchanged.
    pub fn on(&mut self, event: Event) -> Result<State, Refused> {
        use State as S;
        let next = match (self.state, event) {
            (_, Event::FactoryReset) => {
                self.credentials = None;
                self.pending = None;
                self.failure = None;
                S::Unprovisioned
            }
            (S::Unprovisioned | S::WifiFailed | S::RegisterFailed, Event::Provision(req)) => {
                self.pending = Some(req);
                S::Joining
            }
            (S::Joining, Event::WifiJoined) => S::Registering,
            (S::Joining, Event::WifiFailed(e)) => {
                self.failure = Some(wifi_failure(e));
                S::WifiFailed
            }
            (S::Registering, Event::Registered(c)) => {
                self.credentials = Some(c);
                self.pending = None;
                self.failure = None;
                S::Offline
            }
            (S::Registering, Event::RegisterFailed(f)) => {
                self.failure = Some(f);
                S::RegisterFailed
            }
            (S::Offline, Event::SessionUp) => S::Online,
            (S::Online, Event::SessionDown) => S::Offline,
            (S::Online | S::Offline, Event::Revoked) => {
                if let Some(c) = &mut self.credentials {
                    c.revoked = true;
                }
                S::Revoked
            }
            (S::Offline, Event::SessionDown) | (S::Online, Event::SessionUp) => self.state,
            (state, _) => return Err(Refused(state)),
        };
        self.state = next;
        Ok(next)
    }
}

fn wifi_failure(e: WifiError) -> Failure {
    let (code, message) = match e {
        WifiError::WrongPassword => (
            "WIFI_WRONG_PASSWORD",
            "the network refused the password; send a corrected request",
        ),
        WifiError::NotFound => ("WIFI_NOT_FOUND", "no network with that name is in range"),
        WifiError::Failed => ("WIFI_FAILED", "joining the network failed"),
    };
    Failure {
        code: String::from(code),
        message: String::from(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn req(password: &str) -> ProvisionRequest {
        crate::provision::fixture::request(password)
    }

    fn creds() -> Credentials {
        Credentials {
            node_id: "550e8400-e29b-41d4-a716-446655440000".into(),
            node_key: Zeroizing::new("node_x".into()),
            gateway_id: "gw".into(),
            gateway_pubkey: "pk".into(),
            ws_url: "ws://10.0.0.2:8080/ws".into(),
            room: "kitchen".into(),
            wifi_ssid: "HomeWifi".into(),
            wifi_password: Zeroizing::new("password1".into()),
            revoked: false,
        }
    }

    #[test]
    fn the_happy_path_closes_the_ap_once_registered() {
        let mut l = Lifecycle::boot(None);
        assert!(l.ap_open());
        assert_eq!(l.on(Event::Provision(req("password1"))), Ok(State::Joining));
        assert!(!l.ap_open());
        assert_eq!(l.node_id(), Some("550e8400-e29b-41d4-a716-446655440000"));
        assert_eq!(l.on(Event::WifiJoined), Ok(State::Registering));
        assert_eq!(l.on(Event::Registered(creds())), Ok(State::Offline));
        assert!(l.pending().is_none());
        assert_eq!(l.on(Event::SessionUp), Ok(State::Online));
        assert_eq!(l.on(Event::SessionDown), Ok(State::Offline));
        assert!(!l.ap_open());
        assert_eq!(
            l.on(Event::Provision(req("password1"))),
            Err(Refused(State::Offline))
        );
    }

    #[test]
    fn a_wrong_password_is_retried_without_a_reset() {
        let mut l = Lifecycle::boot(None);
        l.on(Event::Provision(req("wrong-pass"))).unwrap();
        assert_eq!(
            l.on(Event::WifiFailed(WifiError::WrongPassword)),
            Ok(State::WifiFailed)
        );
        assert!(l.ap_open());
        assert_eq!(l.failure().unwrap().code, "WIFI_WRONG_PASSWORD");
        assert_eq!(
            l.on(Event::Provision(req("right-pass"))),
            Ok(State::Joining)
        );
        assert_eq!(l.pending().unwrap().wifi_password.as_str(), "right-pass");
        assert_eq!(l.on(Event::WifiJoined), Ok(State::Registering));
        l.on(Event::Registered(creds())).unwrap();
        assert!(l.failure().is_none());
    }

    #[test]
    fn a_refused_token_reopens_the_ap_with_the_gateways_code() {
        let mut l = Lifecycle::boot(None);
        l.on(Event::Provision(req("password1"))).unwrap();
        l.on(Event::WifiJoined).unwrap();
        let f = Failure {
            code: "PROVISIONING_TOKEN_EXPIRED".into(),
            message: "m".into(),
        };
        assert_eq!(l.on(Event::RegisterFailed(f)), Ok(State::RegisterFailed));
        assert!(l.ap_open());
        assert_eq!(l.failure().unwrap().code, "PROVISIONING_TOKEN_EXPIRED");
        assert_eq!(l.on(Event::Provision(req("password1"))), Ok(State::Joining));
    }

    #[test]
    fn provisioning_is_refused_while_an_attempt_is_running() {
        let mut l = Lifecycle::boot(None);
        l.on(Event::Provision(req("password1"))).unwrap();
        assert_eq!(
            l.on(Event::Provision(req("password2"))),
            Err(Refused(State::Joining))
        );
        l.on(Event::WifiJoined).unwrap();
        assert_eq!(
            l.on(Event::Provision(req("password2"))),
            Err(Refused(State::Registering))
        );
    }

    #[test]
    fn boot_state_follows_storage_and_revocation_sticks() {
        assert_eq!(Lifecycle::boot(Some(creds())).state(), State::Offline);
        let mut l = Lifecycle::boot(Some(creds()));
        assert_eq!(l.on(Event::Revoked), Ok(State::Revoked));
        assert!(l.credentials().unwrap().revoked);
        assert_eq!(l.on(Event::SessionUp), Err(Refused(State::Revoked)));
        let revoked = l.credentials().cloned();
        assert_eq!(Lifecycle::boot(revoked).state(), State::Revoked);
    }

    #[test]
    fn factory_reset_from_any_state_returns_to_unprovisioned() {
        for setup in 0..4 {
            let mut l = Lifecycle::boot(None);
            if setup >= 1 {
                l.on(Event::Provision(req("password1"))).unwrap();
            }
            if setup >= 2 {
                l.on(Event::WifiJoined).unwrap();
            }
            if setup >= 3 {
                l.on(Event::Registered(creds())).unwrap();
                l.on(Event::Revoked).unwrap();
            }
            assert_eq!(l.on(Event::FactoryReset), Ok(State::Unprovisioned));
            assert!(l.ap_open() && l.credentials().is_none() && l.node_id().is_none());
        }
    }
}
