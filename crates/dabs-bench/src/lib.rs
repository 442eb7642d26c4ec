//! Transport benchmark harness.
//!
//! Measures loopback round-trip latency (p50/p99) and throughput of echo
//! exchanges over several transports, all driven by one runner in one process:
//!
//! * [`udp::UdpEcho`] — raw UDP echo, one datagram per request (the ceiling);
//! * [`tcp::TcpFramed`] — tokio TCP, `TCP_NODELAY`, u32 big-endian length-prefixed frames;
//! * [`quic::Quic`] — quinn (QUIC), self-signed certificate, either one
//!   bidirectional stream per request or one long-lived stream with
//!   length-prefixed frames (see [`quic::QuicMode`]);
//! * [`mp::MpEcho`] — MP, the project's own protocol, through `dabs-net`'s
//!   tokio driver, with and without the CRC byte, in clear and encrypted, and over TCP
//!   (interop.md's length-prefixed frames, `mp/tcp`).
//!
//! Another transport plugs in as one more implementation of [`Transport`] +
//! [`Client`]; see `README.md` for the recipe.
//!
//! Every implementation must be an *echo*: the server sends back exactly the
//! bytes of each request, and the client's [`Client::round_trip`] returns when
//! the whole echo of that request has arrived. The runner checks the echo
//! against what it sent and times each round trip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use async_trait::async_trait;
use tokio::task::JoinHandle;

pub mod mp;
pub mod placement;
pub mod quic;
pub mod report;
pub mod runner;
pub mod tcp;
pub mod udp;

/// Largest request or echo any implementation has to carry, in bytes.
/// Frame-based implementations reject longer length prefixes.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// One transport under test: knows how to start an echo server on loopback and
/// how to open a client connection to it.
///
/// Implementations must only bind and connect to loopback addresses
/// (127.0.0.1), and must be cheap to call repeatedly: the runner starts one
/// server per benchmark cell and opens one client per simulated user.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Short name used in the table, e.g. `"udp"`, `"tcp"`, `"mp+crc"`.
    fn name(&self) -> String;

    /// One line saying how this transport is used (framing, streams, options);
    /// printed under the table. Empty by default.
    fn description(&self) -> String {
        String::new()
    }

    /// Start an echo server on `127.0.0.1:0` and return its address and a
    /// handle that stops it.
    async fn start_server(&self) -> anyhow::Result<ServerHandle>;

    /// Open one client connection (or socket, or session) to `server`.
    async fn connect(&self, server: SocketAddr) -> anyhow::Result<Box<dyn Client>>;
}

/// One client of a [`Transport`]: one connection, used by one task, one
/// request in flight at a time.
#[async_trait]
pub trait Client: Send {
    /// Send `payload` as one request and wait for its echo, which is written
    /// into `reply` (cleared first; its capacity is reused across calls).
    ///
    /// Must not time out by itself: the runner puts a timeout around each call
    /// and, after any error or timeout, drops this client and connects anew.
    async fn round_trip(&mut self, payload: &[u8], reply: &mut Vec<u8>) -> anyhow::Result<()>;

    /// Close the connection gracefully. Called once at the end of a cell;
    /// the default does nothing (dropping is enough).
    async fn close(&mut self) {}
}

/// A running echo server: its bound address and what stops it.
///
/// Dropping the handle aborts the server's tasks; [`ServerHandle::shutdown`]
/// also runs the shutdown hook first and waits for the tasks to end.
pub struct ServerHandle {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    on_shutdown: Option<Box<dyn FnOnce() + Send>>,
}

impl ServerHandle {
    /// A handle for a server listening on `addr`, with no tasks yet.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, tasks: Vec::new(), on_shutdown: None }
    }

    /// Add a task to abort at shutdown. Tasks should own (e.g. in a
    /// `tokio::task::JoinSet`) any per-connection tasks they spawn, so that
    /// aborting them stops everything.
    pub fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.tasks.push(task);
        self
    }

    /// Run `hook` at the start of [`ServerHandle::shutdown`] (e.g. close an
    /// endpoint gracefully). Not run on plain drop.
    pub fn on_shutdown(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.on_shutdown = Some(Box::new(hook));
        self
    }

    /// The address the server is bound to (always on 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop the server: run the hook, abort its tasks and wait (bounded) for them.
    pub async fn shutdown(mut self) {
        if let Some(hook) = self.on_shutdown.take() {
            hook();
        }
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The transports measured by default, in table order. Raw UDP comes first:
/// it is the reference the ratio columns divide by.
pub fn default_transports() -> anyhow::Result<Vec<Arc<dyn Transport>>> {
    Ok(vec![
        Arc::new(udp::UdpEcho::new()),
        Arc::new(tcp::TcpFramed::new()),
        Arc::new(quic::Quic::new(quic::QuicMode::StreamPerRequest)?),
        Arc::new(quic::Quic::new(quic::QuicMode::FramedStream)?),
        Arc::new(mp::MpEcho::new(false)),
        Arc::new(mp::MpEcho::new(true)),
        Arc::new(mp::MpEcho::encrypted(false)),
        Arc::new(mp::MpEcho::encrypted(true)),
        Arc::new(mp::MpEcho::over_tcp()),
    ])
}

/// A bounded functional check for one transport: start its server, connect
/// one client, echo one payload of each size in `sizes`, and check the echo.
/// Meant for unit tests of new implementations.
pub async fn smoke_test(transport: &dyn Transport, sizes: &[usize]) -> anyhow::Result<()> {
    let limit = Duration::from_secs(10);
    let server = tokio::time::timeout(limit, transport.start_server()).await??;
    anyhow::ensure!(server.addr().ip().is_loopback(), "server bound to non-loopback {}", server.addr());
    let mut client = tokio::time::timeout(limit, transport.connect(server.addr())).await??;
    let mut reply = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let payload = runner::make_payload(size, i as u64);
        tokio::time::timeout(limit, client.round_trip(&payload, &mut reply)).await??;
        anyhow::ensure!(reply == payload, "{}: echo of {size} bytes differs", transport.name());
    }
    client.close().await;
    server.shutdown().await;
    Ok(())
}

/// Bind a tokio UDP socket on `addr` with generous kernel buffers, so that a
/// burst from 32 clients is not dropped for want of socket buffer space.
pub(crate) fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// `127.0.0.1:0`.
pub(crate) fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
