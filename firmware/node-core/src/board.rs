//! What a board provides: small traits the core's [`crate::run`] is generic over. A board crate
//! implements them and nothing else; no rule lives behind them.
//!
//! Every `async fn` here is awaited from a single-threaded executor (tokio current-thread on
//! Linux, embassy on the ESP32): no `Send` bounds. `recv`/`accept`/`sleep_until` futures may be
//! dropped before they finish (the core `select`s over them), so they must be cancel-safe.
#![allow(async_fn_in_trait)]

use alloc::string::String;
use alloc::vec::Vec;

use crate::time::Instant;

/// The board's CSPRNG (the OS on Linux, the radio's TRNG on the ESP32).
pub trait Rng {
    /// Fills `buf` with random bytes.
    fn fill_bytes(&mut self, buf: &mut [u8]);

    /// A random `u32` (backoff jitter).
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
}

/// The monotonic clock and timer.
pub trait Clock {
    /// Milliseconds since boot.
    fn now(&self) -> Instant;
    /// Completes at or after `at`.
    async fn sleep_until(&self, at: Instant);
}

/// The relay could not be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardwareError;

/// The relay output.
pub trait Relay {
    /// Energises (`true`) or releases the relay.
    fn set(&mut self, energised: bool) -> Result<(), HardwareError>;
}

/// One network from a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// Its SSID.
    pub ssid: String,
    /// Signal strength, dBm.
    pub rssi: i16,
    /// Whether it needs a password.
    pub secure: bool,
}

/// Why joining a Wi-Fi network failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WifiError {
    /// The network refused the password (the 4-way handshake failed).
    WrongPassword,
    /// No network with that SSID is in range.
    NotFound,
    /// Anything else (radio error, DHCP timeout).
    Failed,
}

/// The Wi-Fi radio: the setup access point and the station.
pub trait Wifi {
    /// Networks in range, strongest first.
    async fn scan(&mut self) -> Result<Vec<Network>, WifiError>;
    /// Opens the setup access point, WPA2-PSK (WPA3-SAE where the radio can) with `passphrase`.
    async fn open_setup_ap(&mut self, ssid: &str, passphrase: &str) -> Result<(), WifiError>;
    /// Closes it.
    async fn close_setup_ap(&mut self);
    /// Joins a network as a station and waits for an address.
    async fn join(&mut self, ssid: &str, password: &str) -> Result<(), WifiError>;
}

/// A network failure talking to the gateway (connect, timeout, reset): worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetError;

/// An HTTP answer, its body cut at the board's limit.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Retry-After`, seconds, if present.
    pub retry_after: Option<u32>,
    /// Body bytes (at most [`crate::register::MAX_ANSWER`]).
    pub body: Vec<u8>,
}

/// Plain HTTP/1.1 to the gateway (the LAN gateway speaks no TLS).
pub trait HttpClient {
    /// `POST url` with a JSON body; a bounded time (the board's timeout) to answer.
    async fn post_json(&mut self, url: &str, body: &[u8]) -> Result<HttpResponse, NetError>;
}

/// Why a WebSocket connect failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// The gateway answered the upgrade with this HTTP status (401 unknown key, 403 revoked).
    Status(u16),
    /// Network failure.
    Net,
}

/// What a WebSocket connection received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text frame.
    Text(String),
    /// A ping, pong or binary frame: proof of life, nothing else.
    Activity,
    /// The peer closed, with its close code if it gave one.
    Close(Option<u16>),
}

/// Opens WebSocket connections to the gateway.
pub trait WsConnector {
    /// One connection.
    type Conn: WsConn;
    /// `GET url` upgraded, with `Authorization: Node <node_key>`.
    async fn connect(&mut self, url: &str, node_key: &str) -> Result<Self::Conn, ConnectError>;
    /// Where the gateway `gateway_id` is now (its `ws://host:port/ws`), for a board that can
    /// look it up (DNS-SD over mDNS, `latchkey_proto::dns_sd`); asked after the stored address
    /// stopped answering. Only a record whose id is `gateway_id` may answer
    /// ([`latchkey_proto::dns_sd::is_paired_gateway`]). Boards that cannot look: `None`.
    async fn locate(&mut self, gateway_id: &str) -> Option<String> {
        let _ = gateway_id;
        None
    }
}

/// One WebSocket connection; the board answers pings itself and caps incoming messages at
/// [`crate::session::MAX_FRAME`] (64 KiB: a `grants` frame of 256 grants is ~51 KB). The node
/// sends frames of at most [`crate::session::MAX_SEND_FRAME`] (16 KiB).
pub trait WsConn {
    /// Sends a text frame.
    async fn send_text(&mut self, text: &str) -> Result<(), NetError>;
    /// The next message; `Close(None)` when the connection is gone. Cancel-safe.
    async fn recv(&mut self) -> WsMessage;
    /// Sends a close frame with `code` and drops the connection.
    async fn close(&mut self, code: u16);
}

/// The TCP listener of the setup access point's HTTP API (picoserve serves each connection).
pub trait ApListener {
    /// picoserve's runtime marker for this board.
    type Runtime;
    /// picoserve's timer for this board.
    type Timer: picoserve::Timer<Self::Runtime>;
    /// An accepted connection.
    type Socket: picoserve::io::Socket<Self::Runtime>;
    /// The next connection. Cancel-safe. Called from [`crate::ap::WORKERS`] loops at once.
    async fn accept(&self) -> Result<Self::Socket, NetError>;
    /// A timer for picoserve's timeouts.
    fn timer(&self) -> Self::Timer;
}

/// Everything a board hands to [`crate::run`].
pub struct Board<S, R, C, W, H, N, A, G, D> {
    /// Persistent state ([`crate::storage::FlashStore`] over the board's flash and range).
    pub store: S,
    /// The relay output.
    pub relay: R,
    /// The monotonic clock.
    pub clock: C,
    /// The Wi-Fi radio.
    pub wifi: W,
    /// HTTP to the gateway.
    pub http: H,
    /// WebSocket to the gateway.
    pub ws: N,
    /// The AP API's listener.
    pub ap: A,
    /// The CSPRNG.
    pub rng: G,
    /// The door's BLE radio ([`NoRadio`] on a board without one).
    pub radio: D,
}

/// A BLE connection as the board's radio numbers it (any value unique among live connections;
/// BlueZ boards map the peer's address to one).
pub type ConnId = u32;

/// Largest Request write a board passes on; longer writes are refused by the board (the
/// version-2 request is 83 bytes, PROTOCOL.md §17.2).
pub const MAX_WRITE: usize = 512;

/// What a central did to the door's GATT service version 2 (PROTOCOL.md §16), or to a
/// vehicle's pairing service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorEvent {
    /// A central read the Challenge characteristic at offset 0. The core answers with
    /// [`DoorRadio::reply_read`] for `conn` (a read at another offset the board answers itself
    /// from the last value it gave that connection, or with an error when there is none).
    ReadChallenge {
        /// The connection.
        conn: ConnId,
    },
    /// A central wrote the Request characteristic: a write with response, offset 0, the whole
    /// value at most [`MAX_WRITE`] bytes (the board refuses other writes itself).
    Request {
        /// The connection.
        conn: ConnId,
        /// The bytes written.
        value: Vec<u8>,
    },
    /// A central read the vehicle's Pairing Challenge at offset 0 (only a radio started with
    /// the pairing service sends it). The core answers with [`DoorRadio::reply_read`] for
    /// `conn`; a read at another offset the board answers itself, as for the Challenge.
    PairingChallenge {
        /// The connection.
        conn: ConnId,
    },
    /// A central wrote the vehicle's Pairing Response: a write with response, offset 0, at
    /// most [`MAX_WRITE`] bytes (the board refuses other writes itself). The core answers with
    /// [`DoorRadio::reply_write`] for `conn`; the board holds the ATT Write Response until then.
    PairingResponse {
        /// The connection.
        conn: ConnId,
        /// The bytes written.
        value: Vec<u8>,
    },
    /// The connection ended (its challenge dies with it).
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
}

/// The door's BLE side: advertising and the GATT service version 2 (Challenge read+notify,
/// Request write, Result notify; PROTOCOL.md §16). The board owns the stack; the core decides.
pub trait DoorRadio {
    /// Starts (or restarts with new data) connectable advertising with the version-2 service
    /// UUID and manufacturer data `0xFFFF`: `0x02 ‖ door_tag` (PROTOCOL.md §16), and serves the
    /// GATT service. `door_tag` is `latchkey_proto::v2::door_tag` of the node's id. With
    /// `pairing` (a node of kind vehicle) the GATT database also holds the vehicle pairing
    /// service (`latchkey_proto::v2::pairing`: Pairing Challenge read, Pairing Response write).
    async fn start(&mut self, door_tag: [u8; 5], pairing: bool) -> Result<(), HardwareError>;
    /// The next event. Cancel-safe.
    async fn next(&mut self) -> DoorEvent;
    /// The value for a pending [`DoorEvent::ReadChallenge`] or [`DoorEvent::PairingChallenge`]
    /// of `conn` (a central has one ATT request outstanding at a time).
    async fn reply_read(&mut self, conn: ConnId, value: &[u8]);
    /// The answer to a pending [`DoorEvent::PairingResponse`] of `conn`: the ATT Write
    /// Response when `ok`, else an ATT error (an application error, or `Failed` on BlueZ).
    async fn reply_write(&mut self, conn: ConnId, ok: bool);
    /// Notifies `value` on the Result characteristic to `conn` (a board whose stack notifies
    /// every subscriber, as BlueZ does, may do that: results carry their nonce).
    async fn notify(&mut self, conn: ConnId, value: &[u8]);
}

/// A board without a BLE radio (or with BLE off): never yields an event. The node still
/// keeps its grants; only the door service is not offered.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRadio;

impl DoorRadio for NoRadio {
    async fn start(&mut self, _door_tag: [u8; 5], _pairing: bool) -> Result<(), HardwareError> {
        Ok(())
    }

    async fn next(&mut self) -> DoorEvent {
        core::future::pending().await
    }

    async fn reply_read(&mut self, _conn: ConnId, _value: &[u8]) {}

    async fn reply_write(&mut self, _conn: ConnId, _ok: bool) {}

    async fn notify(&mut self, _conn: ConnId, _value: &[u8]) {}
}
