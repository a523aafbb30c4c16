//! The gateway session: the WebSocket upgrade (edge-http's key helpers, httparse for the
//! answer) and edge-ws's framing over a pooled TCP socket. Frames up to 64 KiB in, 16 KiB out;
//! pings answered here; `recv` keeps a half-read frame in the session, so dropping it loses
//! nothing.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use edge_nal::{TcpConnect as _, TcpShutdown as _};
use edge_nal_embassy::TcpSocket;
use edge_ws::{FrameHeader, FrameType};
use embassy_net::Stack;
use embassy_time::{with_timeout, Duration};
use embedded_io_async::{Read, Write};
use latchkey_node_core::board::{ConnectError, NetError, WsConn, WsConnector, WsMessage};

use crate::board::{WS_MAX_IN, WS_MAX_OUT};
use crate::net::{parse_url, resolve, StaticTcp, HEAD_BUF, MAX_HEADERS};
use crate::panel::{self, Code};

/// Opens gateway sessions on the station.
pub struct Ws {
    stack: Stack<'static>,
    tcp: StaticTcp,
    rng: esp_hal::rng::Trng,
}

impl Ws {
    /// A connector over the station's stack and socket pool; `rng` masks frames and keys.
    pub fn new(stack: Stack<'static>, tcp: StaticTcp, rng: esp_hal::rng::Trng) -> Self {
        Self { stack, tcp, rng }
    }

    async fn open(&mut self, url: &str, node_key: &str) -> Result<WsSession, ConnectError> {
        let url = parse_url(url, "ws").ok_or(ConnectError::Net)?;
        let addr = resolve(self.stack, &url)
            .await
            .map_err(|_| ConnectError::Net)?;
        let mut socket = self
            .tcp
            .connect(addr)
            .await
            .map_err(|_| ConnectError::Net)?;
        let mut nonce = [0u8; edge_http::ws::NONCE_LEN];
        self.rng.read(&mut nonce);
        let mut key_buf = [0u8; edge_http::ws::MAX_BASE64_KEY_LEN];
        let upgrade = edge_http::ws::upgrade_request_headers(
            Some(url.host),
            None,
            None,
            &nonce,
            &mut key_buf,
        );
        // The request head: edge-http's upgrade headers plus the node's key.
        let mut head = zeroize::Zeroizing::new(String::with_capacity(HEAD_BUF));
        write!(head, "GET {} HTTP/1.1\r\n", url.path).map_err(|_| ConnectError::Net)?;
        for (name, value) in upgrade.iter().filter(|(n, _)| !n.is_empty()) {
            write!(head, "{name}: {value}\r\n").map_err(|_| ConnectError::Net)?;
        }
        write!(head, "Authorization: Node {node_key}\r\n\r\n").map_err(|_| ConnectError::Net)?;
        socket
            .write_all(head.as_bytes())
            .await
            .map_err(|_| ConnectError::Net)?;
        // Read the answer's head; bytes after it are the first frames (the gateway's hello).
        let mut buf = alloc::vec![0u8; HEAD_BUF];
        let mut filled = 0;
        let (code, head_len) = loop {
            let Some(free) = buf.get_mut(filled..).filter(|f| !f.is_empty()) else {
                return Err(ConnectError::Net);
            };
            let n = socket.read(free).await.map_err(|_| ConnectError::Net)?;
            if n == 0 {
                return Err(ConnectError::Net);
            }
            filled += n;
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut answer = httparse::Response::new(&mut headers);
            match answer.parse(buf.get(..filled).unwrap_or_default()) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = answer.code.unwrap_or(0);
                    let pairs = answer
                        .headers
                        .iter()
                        .map(|h| (h.name, core::str::from_utf8(h.value).unwrap_or("")));
                    let mut accept_buf = [0u8; edge_http::ws::MAX_BASE64_KEY_RESPONSE_LEN];
                    if code == 101
                        && !edge_http::ws::is_upgrade_accepted(code, pairs, &nonce, &mut accept_buf)
                    {
                        return Err(ConnectError::Net);
                    }
                    break (code, len);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(ConnectError::Net),
            }
        };
        if code != 101 {
            if code == 403 {
                panel::show(Code::Revoked);
            }
            return Err(ConnectError::Status(code));
        }
        let leftover = buf.get(head_len..filled).unwrap_or_default().to_vec();
        Ok(WsSession {
            socket,
            rng: self.rng.clone(),
            rx: Rx::new(leftover),
            out: Vec::new(),
            online: false,
        })
    }
}

impl WsConnector for Ws {
    type Conn = WsSession;

    async fn connect(&mut self, url: &str, node_key: &str) -> Result<WsSession, ConnectError> {
        self.open(url, node_key).await
    }
}

/// A frame being read: kept in the session so that a dropped `recv` loses nothing.
struct Rx {
    /// Bytes read past the upgrade answer, consumed first.
    pending: Vec<u8>,
    head: [u8; FrameHeader::MAX_LEN],
    head_len: usize,
    header: Option<FrameHeader>,
    payload: Vec<u8>,
    /// A fragmented text message being assembled.
    message: Option<Vec<u8>>,
}

impl Rx {
    fn new(pending: Vec<u8>) -> Self {
        Self {
            pending,
            head: [0; FrameHeader::MAX_LEN],
            head_len: 0,
            header: None,
            payload: Vec::new(),
            message: None,
        }
    }
}

/// One gateway session.
pub struct WsSession {
    socket: TcpSocket<'static>,
    rng: esp_hal::rng::Trng,
    rx: Rx,
    /// Control frames (pongs) not yet written, sent before anything else.
    out: Vec<u8>,
    online: bool,
}

/// What one complete frame means.
enum Got {
    Message(WsMessage),
    /// A control frame handled here, or a fragment: read on.
    Nothing,
}

impl WsSession {
    fn mask(&mut self) -> u32 {
        self.rng.random()
    }

    /// Serialises one masked frame into `out`.
    fn frame(&mut self, frame_type: FrameType, payload: &[u8], out: &mut Vec<u8>) {
        let header = FrameHeader {
            frame_type,
            payload_len: payload.len() as u64,
            mask_key: Some(self.mask()),
        };
        let mut head = [0u8; FrameHeader::MAX_LEN];
        let Ok(n) = header.serialize(&mut head) else {
            return;
        };
        out.extend_from_slice(head.get(..n).unwrap_or_default());
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(body) = out.get_mut(start..) {
            header.mask(body, 0);
        }
    }

    /// Writes the queued control frames (a write that stops half-way resumes next time).
    async fn flush_out(&mut self) -> Result<(), NetError> {
        while !self.out.is_empty() {
            let n = self.socket.write(&self.out).await.map_err(|_| NetError)?;
            if n == 0 {
                return Err(NetError);
            }
            self.out.drain(..n.min(self.out.len()));
        }
        Ok(())
    }

    /// Up to `want` bytes, from the leftover of the upgrade first, never past what the frame
    /// needs. One `read` per call: embassy-net's read is cancel-safe, so this is too.
    async fn fill(&mut self, want: usize) -> Result<Vec<u8>, NetError> {
        if !self.rx.pending.is_empty() {
            let n = want.min(self.rx.pending.len());
            return Ok(self.rx.pending.drain(..n).collect());
        }
        let mut chunk = alloc::vec![0u8; want.min(1024)];
        let n = self.socket.read(&mut chunk).await.map_err(|_| NetError)?;
        if n == 0 {
            return Err(NetError);
        }
        chunk.truncate(n);
        Ok(chunk)
    }

    /// Reads until one frame is complete.
    async fn next_frame(&mut self) -> Result<Got, NetError> {
        loop {
            let Some(header) = self.rx.header.clone() else {
                // The header: 2 bytes, then as many more as it says.
                let need = match FrameHeader::deserialize(
                    self.rx.head.get(..self.rx.head_len).unwrap_or_default(),
                ) {
                    Ok((header, _)) => {
                        if header.payload_len > WS_MAX_IN as u64 {
                            log::warn!("ws: frame over {WS_MAX_IN} bytes; closing");
                            return Err(NetError);
                        }
                        let mut payload = Vec::new();
                        // A big frame must not abort the node: refuse it when the heap is short.
                        payload
                            .try_reserve_exact(header.payload_len as usize)
                            .map_err(|_| NetError)?;
                        self.rx.payload = payload;
                        self.rx.header = Some(header);
                        self.rx.head_len = 0;
                        continue;
                    }
                    Err(edge_ws::Error::Incomplete(more)) => more,
                    Err(_) => return Err(NetError),
                };
                let got = self.fill(need).await?;
                let end = self.rx.head_len + got.len();
                let dst = self
                    .rx
                    .head
                    .get_mut(self.rx.head_len..end)
                    .ok_or(NetError)?;
                dst.copy_from_slice(&got);
                self.rx.head_len = end;
                continue;
            };
            let missing = header.payload_len as usize - self.rx.payload.len();
            if missing > 0 {
                let got = self.fill(missing).await?;
                self.rx.payload.extend_from_slice(&got);
                continue;
            }
            self.rx.header = None;
            let mut payload = core::mem::take(&mut self.rx.payload);
            // Frames from a server are unmasked; unmask anyway if one says otherwise.
            header.mask(&mut payload, 0);
            return Ok(self.on_frame(header.frame_type, payload));
        }
    }

    fn on_frame(&mut self, frame_type: FrameType, payload: Vec<u8>) -> Got {
        match frame_type {
            FrameType::Text(false) => Got::Message(text(payload)),
            FrameType::Text(true) => {
                self.rx.message = Some(payload);
                Got::Nothing
            }
            FrameType::Continue(last) => {
                let Some(mut message) = self.rx.message.take() else {
                    return Got::Message(WsMessage::Activity);
                };
                if message.len() + payload.len() > WS_MAX_IN {
                    log::warn!("ws: message over {WS_MAX_IN} bytes; closing");
                    return Got::Message(WsMessage::Close(None));
                }
                // As for single frames: a message the heap cannot hold ends the session.
                if message.try_reserve(payload.len()).is_err() {
                    return Got::Message(WsMessage::Close(None));
                }
                message.extend_from_slice(&payload);
                if last {
                    Got::Message(text(message))
                } else {
                    self.rx.message = Some(message);
                    Got::Nothing
                }
            }
            FrameType::Binary(_) | FrameType::Pong => Got::Message(WsMessage::Activity),
            FrameType::Ping => {
                let mut out = core::mem::take(&mut self.out);
                self.frame(FrameType::Pong, &payload, &mut out);
                self.out = out;
                Got::Message(WsMessage::Activity)
            }
            FrameType::Close => {
                let code = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                Got::Message(WsMessage::Close(code))
            }
        }
    }
}

fn text(payload: Vec<u8>) -> WsMessage {
    match String::from_utf8(payload) {
        Ok(t) => WsMessage::Text(t),
        // Not UTF-8: a protocol error (RFC 6455 §8.1); the core reconnects.
        Err(_) => WsMessage::Close(None),
    }
}

impl WsConn for WsSession {
    async fn send_text(&mut self, text: &str) -> Result<(), NetError> {
        if text.len() > WS_MAX_OUT {
            return Err(NetError);
        }
        self.flush_out().await?;
        let mut frame = Vec::with_capacity(text.len() + FrameHeader::MAX_LEN);
        self.frame(FrameType::Text(false), text.as_bytes(), &mut frame);
        self.socket.write_all(&frame).await.map_err(|_| NetError)?;
        self.socket.flush().await.map_err(|_| NetError)
    }

    async fn recv(&mut self) -> WsMessage {
        loop {
            if self.flush_out().await.is_err() {
                return WsMessage::Close(None);
            }
            match self.next_frame().await {
                Ok(Got::Message(m)) => {
                    if let WsMessage::Close(code) = m {
                        panel::show(if code == Some(4403) {
                            Code::Revoked
                        } else {
                            Code::Offline
                        });
                    } else if !self.online {
                        self.online = true;
                        panel::show(Code::Online);
                    }
                    return m;
                }
                Ok(Got::Nothing) => {}
                Err(NetError) => {
                    panel::show(Code::Offline);
                    return WsMessage::Close(None);
                }
            }
        }
    }

    async fn close(&mut self, code: u16) {
        let mut frame = Vec::new();
        self.frame(FrameType::Close, &code.to_be_bytes(), &mut frame);
        let _ = with_timeout(Duration::from_secs(1), async {
            let _ = self.socket.write_all(&frame).await;
            let _ = self.socket.flush().await;
            let _ = self.socket.close(edge_nal::Close::Both).await;
        })
        .await;
        panel::show(Code::Offline);
    }
}
