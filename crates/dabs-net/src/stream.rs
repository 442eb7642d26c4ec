//! MP over TCP (interop.md, "MP over a stream"): each MP datagram on the connection preceded
//! by its length as a big-endian u16. A connection is opened on the first datagram to a peer
//! and accepted on the endpoint's TCP listener (its MP port); the driver sees the datagrams of
//! `Addr::Tcp(peer)` as it sees UDP ones, and the core ACKs and retransmits them the same way,
//! so a connection that breaks loses nothing the protocol does not repeat.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// The longest frame accepted: an MP datagram is at most 512 bytes, a longer one is refused
/// by the codec as over UDP; beyond this the stream is not speaking MP and is closed.
pub(crate) const MAX_FRAME: usize = 2048;
/// Connections an endpoint keeps at most (accepted and opened together); one more accepted is
/// closed at once.
pub(crate) const MAX_STREAMS: usize = 4096;
/// A connection that brings nothing this long is closed (its sessions expire sooner).
const IDLE: Duration = Duration::from_secs(300);
/// Bytes gathered for one write while more datagrams are queued.
const WRITE_BATCH: usize = 64 * 1024;

/// What the connection tasks tell the driver.
#[derive(Debug)]
pub(crate) enum StreamIn {
    /// A connection was accepted from `peer`: datagrams to it go into the sender.
    Accepted(SocketAddr, u64, mpsc::UnboundedSender<Vec<u8>>),
    /// A datagram from `peer`.
    Frame(SocketAddr, Vec<u8>),
    /// Connection `id` to or from `peer` ended.
    Closed(SocketAddr, u64),
}

/// The endpoint's connections by peer address, and the channel their tasks report on.
pub(crate) struct Streams {
    writers: HashMap<SocketAddr, (u64, mpsc::UnboundedSender<Vec<u8>>)>,
    tx: mpsc::UnboundedSender<StreamIn>,
    next_id: u64,
    /// `writers.len()`, for the listener's task.
    open: Arc<AtomicUsize>,
    /// The endpoint's UDP address: connections leave from its port where they can, so a
    /// connection that breaks and is made again comes from the same address, and the server
    /// finds the same sessions (with their record of what ran).
    local: SocketAddr,
    /// A TCP socket bound to `local` and never used: while it is bound, the kernel gives the
    /// port to no other socket's `connect`, so a connection made again finds it free.
    _reserved: Option<socket2::Socket>,
}

impl Streams {
    /// Connections that report on `tx`.
    /// `reserve`: hold `local`'s TCP port for the connections this endpoint makes (not when
    /// it listens there: its listener holds the port, and connections leave from any port).
    pub(crate) fn new(tx: mpsc::UnboundedSender<StreamIn>, local: SocketAddr, reserve: bool) -> Self {
        let reserved = reserve.then(|| reserve_port(local)).and_then(|r| {
            r.map_err(|e| tracing::debug!(%local, error = %e, "MP over TCP: the endpoint's port is taken"))
                .ok()
        });
        Self { writers: HashMap::new(), tx, next_id: 1, open: Arc::default(), local, _reserved: reserved }
    }

    fn counted(&mut self) {
        self.open.store(self.writers.len(), Ordering::Relaxed);
    }

    /// Queues `datagram` for `to`, connecting first when no connection to it is open (the
    /// datagrams wait in the connection's queue meanwhile; if it fails they are lost, and the
    /// protocol's retransmission tries again, on a new connection).
    pub(crate) fn send(&mut self, to: SocketAddr, mut datagram: Vec<u8>) {
        if let Some((_, w)) = self.writers.get(&to) {
            match w.send(datagram) {
                Ok(()) => return,
                // The connection's task has ended; its Closed report is on the way.
                Err(back) => datagram = back.0,
            }
        }
        if self.writers.len() >= MAX_STREAMS {
            tracing::debug!(%to, "too many TCP connections: datagram dropped");
            return;
        }
        let (w, rx) = mpsc::unbounded_channel();
        let _ = w.send(datagram);
        let id = self.take_id();
        self.writers.insert(to, (id, w));
        self.counted();
        let (tx, local) = (self.tx.clone(), self.local);
        tokio::spawn(async move {
            match connect(local, to).await {
                Ok(stream) => serve(stream, to, id, rx, tx).await,
                Err(e) => {
                    tracing::debug!(%to, error = %e, "MP over TCP: cannot connect");
                    let _ = tx.send(StreamIn::Closed(to, id));
                }
            }
        });
    }

    /// Takes in what a connection task reported; a datagram comes back for the core.
    pub(crate) fn on_event(&mut self, event: StreamIn) -> Option<(SocketAddr, Vec<u8>)> {
        match event {
            StreamIn::Accepted(peer, id, w) => {
                // A peer reconnecting replaces its old connection.
                self.writers.insert(peer, (id, w));
                self.counted();
                None
            }
            StreamIn::Frame(peer, data) => Some((peer, data)),
            StreamIn::Closed(peer, id) => {
                if self.writers.get(&peer).is_some_and(|(i, _)| *i == id) {
                    self.writers.remove(&peer);
                    self.counted();
                }
                None
            }
        }
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Accepts connections on `listener` until the driver is gone, each served by a task of
    /// its own; beyond [`MAX_STREAMS`] open at once, a new one is closed at once.
    pub(crate) fn listen(&self, listener: TcpListener) {
        let (tx, open) = (self.tx.clone(), self.open.clone());
        // Ids of accepted connections count down from the top, apart from those opened here.
        let mut id = u64::MAX;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, a connection reset before accept: not fatal.
                        tracing::debug!(error = %e, "MP over TCP: accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if open.load(Ordering::Relaxed) >= MAX_STREAMS {
                    tracing::debug!(%peer, "too many TCP connections: closed");
                    continue;
                }
                id -= 1;
                let (w, rx) = mpsc::unbounded_channel();
                if tx.send(StreamIn::Accepted(peer, id, w)).is_err() {
                    return;
                }
                tokio::spawn(serve(stream, peer, id, rx, tx.clone()));
            }
        });
    }
}

/// A TCP socket bound to `local` with `SO_REUSEADDR`: shareable by this endpoint's own
/// connections, and a listener's port taken again while old connections are still closing.
fn reserve_port(local: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(local), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// A TCP listener at `addr` (the endpoint's UDP address: the same port number).
pub(crate) fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = reserve_port(addr)?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `to` from `local`'s port (any port if that cannot be bound: a listener on it,
/// or the last connection to `to` from it still closing).
async fn connect(local: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    let from = match (local.ip(), to.ip()) {
        (l, t) if l.is_ipv4() == t.is_ipv4() => SocketAddr::new(l, local.port()),
        (_, t) if t.is_ipv4() => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), local.port()),
        _ => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), local.port()),
    };
    if let Err(e) = socket.bind(from) {
        tracing::debug!(%to, error = %e, "MP over TCP: not from the endpoint's own port");
        return TcpStream::connect(to).await;
    }
    // Only a port that cannot be used falls back; a connection refused or cut while it was
    // being made fails, and the next datagram tries again from the same port.
    match socket.connect(to).await {
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::debug!(%to, error = %e, "MP over TCP: the last connection from this port is still closing");
            TcpStream::connect(to).await
        }
        r => r,
    }
}

/// Runs one connection: frames read become [`StreamIn::Frame`]s, datagrams queued in `rx`
/// are written; when either side ends (or the driver is gone) it reports
/// [`StreamIn::Closed`].
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    tx: mpsc::UnboundedSender<StreamIn>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let read = async {
        loop {
            match tokio::time::timeout(IDLE, read_frame(&mut reader)).await {
                Ok(Ok(frame)) => {
                    if tx.send(StreamIn::Frame(peer, frame)).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, error = %e, "MP over TCP: connection closed");
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    };
    let write = async {
        let mut buf = Vec::with_capacity(WRITE_BATCH);
        while let Some(first) = rx.recv().await {
            push_frame(&mut buf, &first);
            while buf.len() < WRITE_BATCH
                && let Ok(more) = rx.try_recv()
            {
                push_frame(&mut buf, &more);
            }
            if writer.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
        let _ = writer.shutdown().await;
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
        _ = tx.closed() => {}
    }
    let _ = tx.send(StreamIn::Closed(peer, id));
}

/// Appends one frame: the datagram's length (big-endian u16), then the datagram.
fn push_frame(buf: &mut Vec<u8>, datagram: &[u8]) {
    let len = u16::try_from(datagram.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&datagram[..usize::from(len)]);
}

/// Reads one frame; a length of 0 or over [`MAX_FRAME`] is an error (the stream is not MP).
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes: MP datagrams are 1..={MAX_FRAME} bytes here"),
        ));
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_bad_length_is_refused() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"abc");
        push_frame(&mut buf, &[7u8; 512]);
        assert_eq!(&buf[..5], &[0, 3, b'a', b'b', b'c']);
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).await.expect("first"), b"abc");
        assert_eq!(read_frame(&mut r).await.expect("second"), vec![7u8; 512]);
        assert_eq!(read_frame(&mut r).await.expect_err("end").kind(), io::ErrorKind::UnexpectedEof);
        let mut zero: &[u8] = &[0, 0];
        assert_eq!(read_frame(&mut zero).await.expect_err("zero").kind(), io::ErrorKind::InvalidData);
        let mut long: &[u8] = &[0x10, 0x00];
        let e = read_frame(&mut long).await.expect_err("long");
        assert!(e.to_string().contains("4096 bytes"), "{e}");
    }
}
