//! Plain HTTP/1.1 to the gateway (edge-http's client; the LAN gateway speaks no TLS).

use alloc::vec::Vec;
use core::fmt::Write as _;

use edge_http::io::client::Connection;
use edge_http::Method;
use embassy_net::Stack;
use embassy_time::{with_timeout, Duration};
use embedded_io_async::{Read, Write};
use latchkey_node_core::board::{HttpClient, HttpResponse, NetError};
use latchkey_node_core::register::MAX_ANSWER;

use crate::board::HTTP_TIMEOUT_MS;
use crate::net::{parse_url, resolve, StaticTcp, HEAD_BUF, MAX_HEADERS};
use crate::panel::{self, Code};

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
