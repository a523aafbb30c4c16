//! The node's TCP/IP plumbing on embassy-net: gateway URLs, the station's pooled TCP sockets,
//! and the tasks the two network stacks need (their runners, the setup access point's DHCP
//! server). The adapters over it: [`crate::http`], [`crate::ws`], [`crate::ap`].
//!
//! TCP sockets come from edge-nal-embassy's fixed pools, so a socket owns its buffers and
//! returns them when dropped: the core's connections need no lifetime.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use edge_nal::TcpConnect;
use edge_nal_embassy::{Tcp, TcpBuffers, TcpError, TcpSocket};
use embassy_net::dns::DnsQueryType;
use embassy_net::Stack;
use embassy_time::Duration;
use latchkey_node_core::board::NetError;
use static_cell::{ConstStaticCell, StaticCell};

use crate::board::{AP_ADDR, STA_TCP, TCP_RX, TCP_TX};

/// Response headers kept from the gateway.
pub const MAX_HEADERS: usize = 16;
/// Buffer for a request or response head.
pub const HEAD_BUF: usize = 1024;

/// `http://host[:port]/path` split; `None` for anything else (the gateway speaks no TLS).
pub struct Url<'a> {
    /// Host name or IPv4 address.
    pub host: &'a str,
    /// Port (80 when absent).
    pub port: u16,
    /// Path, `/` when absent.
    pub path: &'a str,
}

/// Splits `scheme://host[:port][/path]`.
pub fn parse_url<'a>(url: &'a str, scheme: &str) -> Option<Url<'a>> {
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

/// The gateway's address: an IPv4 literal, or a DNS lookup on the station.
pub async fn resolve(stack: Stack<'static>, url: &Url<'_>) -> Result<SocketAddr, NetError> {
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
static STA_TCP_STACK: StaticCell<Tcp<'static>> = StaticCell::new();

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
