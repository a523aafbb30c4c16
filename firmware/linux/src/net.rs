//! The node's network adapters: plain HTTP to the gateway (reqwest, no TLS: the gateway is on the
//! LAN), the gateway session (tokio-tungstenite), and the AP API's TCP listener.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use latchkey_node_core::board::{
    ApListener, ConnectError, HttpClient, HttpResponse, NetError, WsConn, WsConnector, WsMessage,
};
use latchkey_node_core::register::MAX_ANSWER;
use latchkey_node_core::session::MAX_FRAME;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Every HTTP exchange with the gateway.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a search for the gateway on the LAN lasts (inside the core's connect timeout).
const BROWSE_LIMIT: Duration = Duration::from_secs(8);

/// HTTP client.
pub struct Http(reqwest::Client);

impl Http {
    /// A client with the node's timeouts.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self(
            reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .connect_timeout(HTTP_TIMEOUT)
                .build()?,
        ))
    }
}

impl HttpClient for Http {
    async fn post_json(&mut self, url: &str, body: &[u8]) -> Result<HttpResponse, NetError> {
        let mut resp = self
            .0
            .post(url)
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                tracing::warn!("http: {}", e.without_url());
                NetError
            })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let mut body = Vec::new();
        // Read at most MAX_ANSWER bytes: a gateway cannot make the node buffer without bound.
        while let Some(chunk) = resp.chunk().await.map_err(|_| NetError)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                body.truncate(MAX_ANSWER);
                break;
            }
        }
        Ok(HttpResponse {
            status,
            retry_after,
            body,
        })
    }
}

/// Opens gateway sessions.
pub struct Ws;

/// One gateway session.
pub struct WsSession(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl WsConnector for Ws {
    type Conn = WsSession;

    async fn connect(&mut self, url: &str, node_key: &str) -> Result<WsSession, ConnectError> {
        let mut request = url.into_client_request().map_err(|_| ConnectError::Net)?;
        let auth = format!("Node {node_key}")
            .parse()
            .map_err(|_| ConnectError::Net)?;
        request.headers_mut().insert("Authorization", auth);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok((stream, _)) => Ok(WsSession(stream)),
            Err(tungstenite::Error::Http(resp)) => {
                Err(ConnectError::Status(resp.status().as_u16()))
            }
            Err(e) => {
                tracing::debug!("ws connect: {e}");
                Err(ConnectError::Net)
            }
        }
    }

    async fn locate(&mut self, gateway_id: &str) -> Option<String> {
        if !latchkey_proto::dns_sd::browsing_enabled() {
            return None;
        }
        let id = gateway_id.to_owned();
        let found =
            tokio::task::spawn_blocking(move || latchkey_proto::dns_sd::find(&id, BROWSE_LIMIT))
                .await;
        match found {
            Ok(Ok(Some(f))) => Some(match f.ip {
                std::net::IpAddr::V4(ip) => format!("ws://{ip}:{}/ws", f.port),
                std::net::IpAddr::V6(ip) => format!("ws://[{ip}]:{}/ws", f.port),
            }),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!("mDNS: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

impl WsConn for WsSession {
    async fn send_text(&mut self, text: &str) -> Result<(), NetError> {
        self.0.send(Message::text(text)).await.map_err(|_| NetError)
    }

    async fn recv(&mut self) -> WsMessage {
        match self.0.next().await {
            Some(Ok(Message::Text(t))) => WsMessage::Text(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => WsMessage::Close(frame.map(|f| u16::from(f.code))),
            Some(Ok(_)) => WsMessage::Activity,
            Some(Err(e)) => {
                tracing::debug!("ws: {e}");
                WsMessage::Close(None)
            }
            None => WsMessage::Close(None),
        }
    }

    async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.0.close(Some(frame))).await;
    }
}

/// The AP API's listener.
pub struct Ap(pub TcpListener);

impl ApListener for Ap {
    type Runtime = picoserve::TokioRuntime;
    type Timer = picoserve::time::TokioTimer;
    type Socket = TcpStream;

    async fn accept(&self) -> Result<TcpStream, NetError> {
        self.0.accept().await.map(|(s, _)| s).map_err(|_| NetError)
    }

    fn timer(&self) -> Self::Timer {
        picoserve::time::TokioTimer
    }
}
