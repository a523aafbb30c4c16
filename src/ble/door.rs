//! The door service's GATT behaviour, independent of how it is registered: challenge reads,
//! auth writes, result notifications (PROTOCOL.md §7 and §9).

use std::sync::Arc;

use bluer::gatt::local::{CharacteristicNotifier, ReqError, ReqResult};
use bluer::gatt::WriteOp;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use latchkey_proto::{Challenge, MAX_ATT_PAYLOAD};

use crate::access::{Challenges, Gate};
use crate::state::AppState;

/// Auth writes being decided at once; more are refused with `org.bluez.Error.InProgress`
/// (a phone retries). Each holds a database transaction for well under a millisecond, and a
/// grant may wait for its endpoint's command.
pub const MAX_INFLIGHT: usize = 16;

/// What an incoming GATT request carried (BlueZ's options, transport-neutral).
#[derive(Debug, Clone)]
pub struct Request {
    /// The peer's device object path, e.g. `/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF`.
    pub peer: String,
    pub offset: u16,
}

/// The BlueZ device object path for an adapter and a peer address.
pub fn peer_path(adapter: &str, address: bluer::Address) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{}",
        address.to_string().replace(':', "_")
    )
}

/// What both versions' attempt writes must be: one write request (with response) at offset 0,
/// at most one ATT payload, while fewer than [`MAX_INFLIGHT`] attempts are being decided.
/// Returns the permit the attempt holds until it is answered.
pub fn accept_write(
    inflight: &Arc<Semaphore>,
    value: &[u8],
    req: &Request,
    op: WriteOp,
    prepare_authorize: bool,
) -> ReqResult<OwnedSemaphorePermit> {
    if req.offset != 0 || prepare_authorize || op != WriteOp::Request {
        return Err(ReqError::NotPermitted);
    }
    if value.len() > MAX_ATT_PAYLOAD {
        return Err(ReqError::InvalidValueLength);
    }
    inflight.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!(peer = %req.peer, "too many BLE attempts at once; write refused");
        ReqError::InProgress
    })
}

/// A Result characteristic's subscription. bluetoothd calls `StartNotify` for every peer that
/// enables notifications (older versions: for the first only) and `StopNotify` only when the
/// last one leaves (src/gatt-database.c, `ccc_write_cb`); a notification reaches every
/// subscribed peer. bluer ends the previous notifier at each call, so the newest one is kept,
/// and any live one serves everybody.
#[derive(Default)]
pub struct Results(Mutex<Option<CharacteristicNotifier>>);

impl Results {
    pub async fn subscribed(&self, notifier: CharacteristicNotifier) {
        *self.0.lock().await = Some(notifier);
    }

    /// Sends `frame` to every subscriber (dropped, with a debug line, when there is none).
    pub async fn notify(&self, frame: Vec<u8>) {
        let mut guard = self.0.lock().await;
        let Some(n) = guard.as_mut() else {
            tracing::debug!("result not sent: nobody subscribed to the Result characteristic");
            return;
        };
        if n.notify(frame).await.is_err() {
            tracing::debug!("result not sent: the Result subscription ended");
            *guard = None;
        }
    }

    pub async fn clear(&self) {
        *self.0.lock().await = None;
    }
}

pub struct Door {
    state: AppState,
    gate: Gate,
    challenges: Challenges,
    result: Results,
    inflight: Arc<Semaphore>,
}

impl Door {
    pub fn new(state: AppState) -> Self {
        Self {
            gate: Gate::new(state.clone()),
            state,
            challenges: Challenges::default(),
            result: Results::default(),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn require_encryption(&self) -> bool {
        self.state.config.ble_require_encryption
    }

    /// Challenge `ReadValue`: at offset 0 a fresh nonce from the OS CSPRNG for this peer; at
    /// a non-zero offset the rest of the current challenge.
    pub fn read_challenge(&self, req: &Request) -> ReqResult<Vec<u8>> {
        let offset = usize::from(req.offset);
        if offset > Challenge::LEN {
            return Err(ReqError::InvalidOffset);
        }
        let bytes = if offset == 0 {
            let nonce = crate::secret::random_array::<16>().map_err(|_| {
                tracing::error!("the OS random number generator failed; no challenge issued");
                ReqError::Failed
            })?;
            self.challenges
                .issue(&req.peer, nonce, self.state.now())
                .to_bytes()
        } else {
            self.challenges
                .current(&req.peer)
                .ok_or(ReqError::InvalidOffset)?
                .to_bytes()
        };
        Ok(bytes.get(offset..).unwrap_or_default().to_vec())
    }

    /// Auth `WriteValue`: refuses what is not a single write request at offset 0, consumes the
    /// peer's nonce, and replies at once; the decision goes out as a Result notification.
    pub fn write_auth(
        self: &Arc<Self>,
        value: Vec<u8>,
        req: &Request,
        op: WriteOp,
        prepare_authorize: bool,
    ) -> ReqResult<()> {
        let permit = accept_write(&self.inflight, &value, req, op, prepare_authorize)?;
        let now = self.state.now();
        let nonce = self.challenges.take(&req.peer, now);
        let door = self.clone();
        let peer = req.peer.clone();
        tokio::spawn(async move {
            // Let the write's reply leave first: it is the ATT Write Response.
            tokio::task::yield_now().await;
            let outcome = door.gate.attempt(value, peer, nonce, now).await;
            door.notify_result(outcome.frame.to_vec()).await;
            drop(permit);
        });
        Ok(())
    }

    /// Result `StartNotify` (see [`Results`]).
    pub async fn result_subscribed(&self, notifier: CharacteristicNotifier) {
        self.result.subscribed(notifier).await;
    }

    async fn notify_result(&self, frame: Vec<u8>) {
        self.result.notify(frame).await;
    }

    /// A peer disconnected: its nonce is discarded.
    pub fn peer_gone(&self, peer: &str) {
        self.challenges.forget(peer);
    }

    /// BlueZ or the adapter went away: every connection and subscription with it.
    pub async fn reset(&self) {
        self.challenges.clear();
        self.result.clear().await;
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}
