//! The gateway's own door, version 2 (PROTOCOL.md §16–§20): the same protocol a node speaks,
//! so a phone needs one protocol for every door. The gateway's GATT database holds this
//! service beside version 1 (the advertisement stays version 1's, with the gateway's tag).
//!
//! Its grants are the registry's (door id = `gatewayId`, every endpoint a device may open),
//! signed and applied with `latchkey_proto::v2` like a node's. The set is brought up to date
//! before every challenge and every decision when an event that changes grants was committed
//! since it was built (`grants::snapshot::changed_since`: an indexed read), so a revoke, a new
//! key or a refresh — by this process or by the CLI — counts from the next attempt on.
//! Per peer one live challenge (30 s, single-use, dropped on disconnect); a granted request
//! runs the endpoint's action through the same actions as version 1.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bluer::gatt::local::{CharacteristicNotifier, ReqError, ReqResult};
use bluer::gatt::WriteOp;
use tokio::sync::{Mutex, Semaphore};

use latchkey_proto::v2::{decide, Challenge, GrantSet, IssuedChallenge, Status};

use super::door::{Door, Request, Results};
use crate::access::action::Grantee;
use crate::grants::decisions::{append_access, Access, DoorKind};
use crate::grants::{snapshot, tools};
use crate::state::AppState;

/// Peers with a live challenge at most; an attempt to exceed it drops expired ones first.
const MAX_PEERS: usize = 256;

struct Held {
    set: GrantSet,
    /// The event seq the set is current to (`None`: never built).
    built: Option<i64>,
}

struct Live {
    challenge: IssuedChallenge,
    frame: [u8; Challenge::LEN],
}

pub struct DoorV2 {
    state: AppState,
    v1: Arc<Door>,
    held: Mutex<Held>,
    challenges: std::sync::Mutex<HashMap<String, Live>>,
    result: Results,
    inflight: Arc<Semaphore>,
}

fn mono(state: &AppState) -> u64 {
    u64::try_from(state.now()).unwrap_or(0)
}

impl DoorV2 {
    pub fn new(state: AppState, v1: Arc<Door>) -> Self {
        let door_id = snapshot::gateway_door_id(&state.gateway_id);
        Self {
            state,
            v1,
            held: Mutex::new(Held {
                set: GrantSet::new(door_id),
                built: None,
            }),
            challenges: std::sync::Mutex::new(HashMap::new()),
            result: Results::default(),
            inflight: Arc::new(Semaphore::new(super::door::MAX_INFLIGHT)),
        }
    }

    fn challenges(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.challenges.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The grant set, rebuilt first if the registry changed since it was built. On a failed
    /// rebuild the old set is kept (and the failure logged): the next attempt tries again.
    async fn current(&self) -> tokio::sync::MutexGuard<'_, Held> {
        let mut held = self.held.lock().await;
        let since = held.built.unwrap_or(-1);
        let checked = self
            .state
            .store
            .read(move |c| snapshot::changed_since(c, since))
            .await;
        let latest = match checked {
            Ok((changed, latest)) if changed || held.built.is_none() => latest,
            Ok(_) => return held,
            Err(e) => {
                tracing::warn!(error = %e, "BLE v2: cannot check the grants");
                return held;
            }
        };
        let (st, version, now) = (self.state.clone(), held.set.version() + 1, self.state.now());
        let built = self
            .state
            .store
            .write(move |tx| {
                Ok(snapshot::gateway(
                    tx,
                    &st.master,
                    &st.config.endpoints,
                    &st.gateway_id,
                    version,
                    now,
                ))
            })
            .await;
        match built {
            Ok(Ok(g)) => match held.set.apply(&g.snapshot, &g.gateway_key, &g.door_key) {
                Ok(applied) => {
                    held.built = Some(latest);
                    tracing::debug!(
                        grants = applied.grants,
                        new_keys = applied.new_keys,
                        "BLE v2 grants rebuilt"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = ?e, "BLE v2: the gateway's own grants do not apply")
                }
            },
            Ok(Err(e)) => tracing::warn!(error = %e, "BLE v2: cannot build the grants"),
            Err(e) => tracing::warn!(error = %e, "BLE v2: cannot build the grants"),
        }
        held
    }

    /// Challenge `ReadValue`: at offset 0 a fresh challenge for this peer (replacing its
    /// previous one); at a non-zero offset the rest of the current one.
    pub async fn read_challenge(&self, req: &Request) -> ReqResult<Vec<u8>> {
        let offset = usize::from(req.offset);
        if offset > Challenge::LEN {
            return Err(ReqError::InvalidOffset);
        }
        if offset > 0 {
            let frame = self
                .challenges()
                .get(&req.peer)
                .map(|l| l.frame)
                .ok_or(ReqError::InvalidOffset)?;
            return Ok(frame.get(offset..).unwrap_or_default().to_vec());
        }
        let nonce = crate::secret::random_array::<16>().map_err(|_| {
            tracing::error!("the OS random number generator failed; no challenge issued");
            ReqError::Failed
        })?;
        let now = mono(&self.state);
        let (challenge, frame) = {
            let held = self.current().await;
            IssuedChallenge::issue(&held.set, nonce, now, Some(now))
        };
        let mut table = self.challenges();
        if table.len() >= MAX_PEERS && !table.contains_key(&req.peer) {
            table.retain(|_, l| l.challenge.is_live(now));
            if table.len() >= MAX_PEERS {
                tracing::warn!("BLE v2: too many peers with a live challenge; read refused");
                return Err(ReqError::Failed);
            }
        }
        table.insert(req.peer.clone(), Live { challenge, frame });
        Ok(frame.to_vec())
    }

    /// Request `WriteValue`: one write request at offset 0; the peer's challenge is consumed
    /// whatever the outcome, the write answered at once, the result notified after.
    pub fn write_request(
        self: &Arc<Self>,
        value: Vec<u8>,
        req: &Request,
        op: WriteOp,
        prepare_authorize: bool,
    ) -> ReqResult<()> {
        let permit = super::door::accept_write(&self.inflight, &value, req, op, prepare_authorize)?;
        let taken = self.challenges().remove(&req.peer).map(|l| l.challenge);
        let door = self.clone();
        let peer = req.peer.clone();
        tokio::spawn(async move {
            // Let the write's reply leave first: it is the ATT Write Response.
            tokio::task::yield_now().await;
            let frame = door.attempt(&value, taken, &peer).await;
            door.result.notify(frame).await;
            drop(permit);
        });
        Ok(())
    }

    /// Decides one request (PROTOCOL.md §20.2), runs the action on a grant, records the event.
    async fn attempt(&self, request: &[u8], taken: Option<IssuedChallenge>, peer: &str) -> Vec<u8> {
        let now = mono(&self.state);
        let decision = {
            let held = self.current().await;
            decide(&held.set, taken.as_ref(), request, now, Some(now))
        };
        let record = decision.effects.record;
        let tool_id = record
            .tool_id
            .map(|t| uuid::Uuid::from_bytes(t).hyphenated().to_string());
        let endpoint = record.endpoint.map(|e| e.as_str().to_owned());
        let st = self.state.clone();
        let tool = tool_id.clone();
        let looked_up = self
            .state
            .store
            .read(move |c| {
                let owner = match &tool {
                    Some(t) => tools::owner(c, t)?,
                    None => None,
                };
                Ok((
                    owner,
                    crate::nodes::doors::endpoints(c, &st.config.endpoints)?,
                ))
            })
            .await;
        let (owner, endpoints) = match looked_up {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "BLE v2 attempt could not be decided");
                return decision
                    .reply(Status::ActionFailed, Some(now))
                    .as_bytes()
                    .to_vec();
            }
        };
        let mut status = decision.status;
        let mut detail = None;
        if status.is_granted() {
            let target = endpoint
                .as_deref()
                .and_then(|e| endpoints.resolve(e))
                .zip(owner.as_ref())
                .filter(|(ep, (device, _))| ep.allows(device));
            status = match target {
                None => Status::EndpointDenied,
                Some((ep, (device, name))) => {
                    let who = Grantee {
                        device_id: device.clone(),
                        device_name: name.clone(),
                    };
                    match self.v1.gate().actions().run(ep, &who).await {
                        Ok(()) => Status::Granted,
                        Err(e) => {
                            tracing::warn!(endpoint = %ep.id, device = %device, error = %e, "endpoint action failed");
                            detail = Some(e.to_string());
                            Status::ActionFailed
                        }
                    }
                }
            };
        }
        let counter = if status.is_granted() {
            &self.state.metrics.access_granted
        } else {
            &self.state.metrics.access_denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(reason = %status.as_str(), endpoint = ?endpoint, %peer, "BLE v2 decision");
        let now_ms = self.state.clock.now_ms();
        let recorded = self
            .state
            .store
            .write(move |tx| {
                append_access(
                    tx,
                    &Access {
                        status,
                        device: owner.as_ref(),
                        tool_id: tool_id.as_deref(),
                        endpoint: endpoint.as_deref(),
                        phone_time: record.phone_time,
                        door_time: record.door_time,
                        door: DoorKind::Gateway,
                        offline: false,
                        detail: detail.as_deref(),
                    },
                    crate::access::verify::ORIGIN,
                    now_ms,
                )
            })
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, "BLE v2 decision could not be recorded");
        }
        decision.reply(status, Some(now)).as_bytes().to_vec()
    }

    /// Result `StartNotify` (see [`Results`]).
    pub async fn result_subscribed(&self, notifier: CharacteristicNotifier) {
        self.result.subscribed(notifier).await;
    }

    /// A peer disconnected: its challenge is discarded.
    pub fn peer_gone(&self, peer: &str) {
        self.challenges().remove(peer);
    }

    /// BlueZ or the adapter went away.
    pub async fn reset(&self) {
        self.challenges().clear();
        self.result.clear().await;
    }
}
