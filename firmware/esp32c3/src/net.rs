//! The node's TCP/IP adapters on embassy-net: plain HTTP to the gateway (edge-http), the
//! gateway session (edge-ws framing), the AP API's listener (picoserve), and the tasks the two
//! network stacks need (their runners, the setup access point's DHCP server).
//!
//! TCP sockets come from edge-nal-embassy's fixed pools, so a socket owns its buffers and
//! returns them when dropped: the core's connections need no lifetime.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use edge_http::io::client::Connection;
use edge_http::Method;
use edge_nal::{TcpAccept as _, TcpBind as _, TcpConnect, TcpShutdown as _, TcpSplit as _};
use edge_nal_embassy::{Tcp, TcpAccept, TcpBuffers, TcpError, TcpSocket};
use edge_ws::{FrameHeader, FrameType};
use embassy_net::dns::DnsQueryType;
use embassy_net::Stack;
use embassy_time::{with_timeout, Duration};
use embedded_io_async::{Read, Write};
use latchkey_node_core::board::{
    ApListener, ConnectError, HttpClient, HttpResponse, NetError, WsConn, WsConnector, WsMessage,
};
use latchkey_node_core::register::MAX_ANSWER;

use static_cell::{ConstStaticCell, StaticCell};

use crate::board::{
    AP_ADDR, AP_PORT, AP_TCP, HTTP_TIMEOUT_MS, STA_TCP, TCP_RX, TCP_TX, WS_MAX_IN, WS_MAX_OUT,
};
use crate::panel::{self, Code};

/// Response headers kept from the gateway.
const MAX_HEADERS: usize = 16;
/// Buffer for a request or response head.
const HEAD_BUF: usize = 1024;

/// `http://host[:port]/path` split; `None` for anything else (the gateway speaks no TLS).
struct Url<'a> {
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url<'a>(url: &'a str, scheme: &str) -> Option<Url<'a>> {
    let rest = url.strip_prefix(scheme)?.strip_prefix("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    (!host.is_empty()).then_some(Url { host, port, path })
}

async fn resolve(stack: Stack<'static>, url: &Url<'_>) -> Result<SocketAddr, NetError> {
    let ip = match url.host.parse::<Ipv4Addr>() {
        Ok(ip) => ip,
        Err(_) => {
            let found = stack
                .dns_query(url.host, DnsQueryType::A)
                .await
                .map_err(|_| NetError)?;
            match found.first() {
                Some(embassy_net::IpAddress::Ipv4(ip)) => *ip,
                _ => return Err(NetError),
            }
        }
    };
    Ok(SocketAddr::new(IpAddr::V4(ip), url.port))
}

// Built in place (const): 12 KiB each would not fit on the stack on the way to a static.
static STA_BUFFERS: ConstStaticCell<TcpBuffers<STA_TCP, TCP_TX, TCP_RX>> =
    ConstStaticCell::new(TcpBuffers::new());
static AP_BUFFERS: ConstStaticCell<TcpBuffers<AP_TCP, TCP_TX, TCP_RX>> =
    ConstStaticCell::new(TcpBuffers::new());
static STA_TCP_STACK: StaticCell<Tcp<'static>> = StaticCell::new();
static AP_TCP_STACK: StaticCell<Tcp<'static>> = StaticCell::new();
static AP_ACCEPT: StaticCell<TcpAccept<'static>> = StaticCell::new();

/// The station's TCP factory with a `'static` pool, so connections own their sockets.
#[derive(Clone, Copy)]
pub struct StaticTcp(&'static Tcp<'static>);

impl StaticTcp {
    /// The station's factory (call once).
    pub fn station(stack: Stack<'static>) -> Self {
        Self(STA_TCP_STACK.init(Tcp::new(stack, STA_BUFFERS.take())))
    }
}

impl TcpConnect for StaticTcp {
    type Error = TcpError;
    type Socket<'a>
        = TcpSocket<'static>
    where
        Self: 'a;

    async fn connect(&self, remote: SocketAddr) -> Result<TcpSocket<'static>, TcpError> {
        let tcp: &'static Tcp<'static> = self.0;
        tcp.connect(remote).await
    }
}

/// HTTP client on the station.
pub struct Http {
    stack: Stack<'static>,
    tcp: StaticTcp,
}

impl Http {
    /// A client over the station's stack and socket pool.
    pub fn new(stack: Stack<'static>, tcp: StaticTcp) -> Self {
        Self { stack, tcp }
    }

    async fn post(&mut self, url: &str, body: &[u8]) -> Result<HttpResponse, NetError> {
        let url = parse_url(url, "http").ok_or(NetError)?;
        let addr = resolve(self.stack, &url).await?;
        let mut buf = alloc::vec![0u8; HEAD_BUF];
        let mut conn: Connection<'_, StaticTcp, MAX_HEADERS> =
            Connection::new(&mut buf, &self.tcp, addr);
        let mut len = heapless::String::<10>::new();
        write!(len, "{}", body.len()).map_err(|_| NetError)?;
        let headers = [
            ("Host", url.host),
            ("Content-Type", "application/json"),
            ("Content-Length", len.as_str()),
            ("Connection", "close"),
        ];
        conn.initiate_request(true, Method::Post, url.path, &headers)
            .await
            .map_err(|_| NetError)?;
        conn.write_all(body).await.map_err(|_| NetError)?;
        conn.initiate_response().await.map_err(|_| NetError)?;
        let head = conn.headers().map_err(|_| NetError)?;
        let status = head.code;
        let retry_after = head
            .headers
            .get("Retry-After")
            .and_then(|v| v.trim().parse().ok());
        // At most MAX_ANSWER bytes: a gateway cannot make the node buffer without bound.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = conn.read(&mut chunk).await.map_err(|_| NetError)?;
            let Some(read) = chunk.get(..n).filter(|r| !r.is_empty()) else {
                break;
            };
            answer.extend_from_slice(read);
            if answer.len() >= MAX_ANSWER {
                answer.truncate(MAX_ANSWER);
                break;
            }
        }
        Ok(HttpResponse {
            status,
            retry_after,
            body: answer,
        })
    }
}

impl HttpClient for Http {
    async fn post_json(&mut self, url: &str, body: &[u8]) -> Result<HttpResponse, NetError> {
        panel::show(Code::Busy);
        with_timeout(Duration::from_millis(HTTP_TIMEOUT_MS), self.post(url, body))
            .await
            .map_err(|_| NetError)?
    }
}

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

/// The AP API's listener on the access point's stack.
pub struct Ap {
    accept: &'static TcpAccept<'static>,
}

impl Ap {
    /// Listens on port 80 of the access point's address (call once).
    pub async fn listen(stack: Stack<'static>) -> Result<Self, TcpError> {
        let tcp: &'static Tcp<'static> = AP_TCP_STACK.init(Tcp::new(stack, AP_BUFFERS.take()));
        let accept = tcp
            .bind(SocketAddr::new(IpAddr::V4(AP_ADDR), AP_PORT))
            .await?;
        Ok(Self {
            accept: AP_ACCEPT.init(accept),
        })
    }
}

/// An accepted AP API connection (it owns its pooled buffers).
pub struct ApSocket(TcpSocket<'static>);

/// The write half for picoserve, which formats into a lent buffer.
pub struct ApWriter<'a>(edge_nal_embassy::TcpSocketWrite<'a>);

impl embedded_io_async::ErrorType for ApWriter<'_> {
    type Error = TcpError;
}

impl embedded_io_async::Write for ApWriter<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TcpError> {
        self.0.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), TcpError> {
        self.0.flush().await
    }
}

impl picoserve::io::Write for ApWriter<'_> {
    async fn write_with<F: FnOnce(picoserve::mem::BorrowedCursor<'_>) -> R, R>(
        &mut self,
        f: F,
    ) -> Result<R, TcpError> {
        let mut chunk = [0u8; 256];
        let mut buffer = picoserve::mem::BorrowedBuffer::new(&mut chunk);
        let out = f(buffer.unfilled());
        self.0.write_all(buffer.filled()).await?;
        Ok(out)
    }
}

impl picoserve::io::Socket<picoserve::EmbassyRuntime> for ApSocket {
    type Error = TcpError;
    type ReadHalf<'a> = edge_nal_embassy::TcpSocketRead<'a>;
    type WriteHalf<'a> = ApWriter<'a>;

    fn split(&mut self) -> (Self::ReadHalf<'_>, Self::WriteHalf<'_>) {
        let (r, w) = self.0.split();
        (r, ApWriter(w))
    }

    async fn abort<T: picoserve::Timer<picoserve::EmbassyRuntime>>(
        mut self,
        timeouts: &picoserve::Timeouts,
        timer: &T,
    ) -> Result<(), picoserve::Error<TcpError>> {
        timer
            .run_with_timeout(timeouts.write, self.0.abort())
            .await
            .map_err(picoserve::Error::WriteTimeout)?
            .map_err(picoserve::Error::Write)
    }

    async fn shutdown<T: picoserve::Timer<picoserve::EmbassyRuntime>>(
        mut self,
        timeouts: &picoserve::Timeouts,
        timer: &T,
    ) -> Result<(), picoserve::Error<TcpError>> {
        timer
            .run_with_timeout(timeouts.write, self.0.close(edge_nal::Close::Both))
            .await
            .map_err(picoserve::Error::WriteTimeout)?
            .map_err(picoserve::Error::Write)
    }
}

impl ApListener for Ap {
    type Runtime = picoserve::EmbassyRuntime;
    type Timer = picoserve::time::EmbassyTimer;
    type Socket = ApSocket;

    async fn accept(&self) -> Result<ApSocket, NetError> {
        let accept: &'static TcpAccept<'static> = self.accept;
        accept
            .accept()
            .await
            .map(|(_, s)| ApSocket(s))
            .map_err(|_| NetError)
    }

    fn timer(&self) -> Self::Timer {
        picoserve::time::EmbassyTimer
    }
}

/// Runs an embassy-net stack.
#[embassy_executor::task(pool_size = 2)]
pub async fn net_task(mut runner: embassy_net::Runner<'static, esp_radio::wifi::Interface>) {
    runner.run().await
}

/// The setup access point's DHCP server: phones that join it get an address in
/// 192.168.4.50–200 with the node as gateway.
#[embassy_executor::task]
pub async fn dhcp_server_task(stack: Stack<'static>) {
    use edge_nal::UdpBind as _;
    let buffers: edge_nal_embassy::UdpBuffers<1, 576, 576, 1> = edge_nal_embassy::UdpBuffers::new();
    let udp = edge_nal_embassy::Udp::new(stack, &buffers);
    let mut buf = [0u8; 576];
    let mut gateway = [Ipv4Addr::UNSPECIFIED; 1];
    let options = edge_dhcp::server::ServerOptions::new(AP_ADDR, Some(&mut gateway));
    loop {
        let bound = udp
            .bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                edge_dhcp::io::DEFAULT_SERVER_PORT,
            ))
            .await;
        match bound {
            Ok(mut socket) => {
                let mut server = edge_dhcp::server::Server::<_, 4>::new(
                    || embassy_time::Instant::now().as_secs(),
                    AP_ADDR,
                );
                if let Err(e) =
                    edge_dhcp::io::server::run(&mut server, &options, &mut socket, &mut buf).await
                {
                    log::warn!("dhcp server: {e:?}");
                }
            }
            Err(e) => log::warn!("dhcp server: bind: {e:?}"),
        }
        embassy_time::Timer::after(Duration::from_secs(1)).await;
    }
}
