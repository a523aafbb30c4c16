//! The AP API's listener: node-core's picoserve router served on the setup access point's
//! stack, over pooled edge-nal-embassy sockets (picoserve's own embassy support wants a socket
//! that borrows its buffers; node-core's `ApListener` hands out owned ones).

use core::net::{IpAddr, SocketAddr};

use edge_nal::{TcpAccept as _, TcpBind as _, TcpShutdown as _, TcpSplit as _};
use edge_nal_embassy::{Tcp, TcpAccept, TcpBuffers, TcpError, TcpSocket};
use embassy_net::Stack;
use embedded_io_async::Write as _;
use latchkey_node_core::board::{ApListener, NetError};
use static_cell::{ConstStaticCell, StaticCell};

use crate::board::{AP_ADDR, AP_PORT, AP_TCP, TCP_RX, TCP_TX};

static AP_BUFFERS: ConstStaticCell<TcpBuffers<AP_TCP, TCP_TX, TCP_RX>> =
    ConstStaticCell::new(TcpBuffers::new());
static AP_TCP_STACK: StaticCell<Tcp<'static>> = StaticCell::new();
static AP_ACCEPT: StaticCell<TcpAccept<'static>> = StaticCell::new();

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
