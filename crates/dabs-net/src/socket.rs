//! The datagram socket the driver runs on: tokio's UDP socket in production, anything with
//! the same two calls under a deterministic harness (turmoil).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A datagram socket: what the driver needs from UDP.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Sends one datagram.
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send;
    /// Receives one datagram.
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Receives what is ready, at least one datagram, into `batch`. One at a time unless the
    /// socket can do better.
    fn recv_batch(&self, batch: &mut RecvBatch) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            batch.received.clear();
            let (len, from) = self.recv_from(&mut batch.data[..batch.slot]).await?;
            batch.received.push(Received { from, len, stride: len });
            Ok(())
        }
    }

    /// Sends `contents` to `to` as datagrams of `segment_size` bytes (the last may be
    /// shorter). One at a time unless the socket can do better.
    fn send_segments(
        &self,
        contents: &[u8],
        segment_size: usize,
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            for datagram in contents.chunks(segment_size.max(1)) {
                self.send_to(datagram, to).await?;
            }
            Ok(())
        }
    }

    /// How many datagrams one [`DatagramSocket::send_segments`] may carry.
    fn max_segments(&self) -> usize {
        1
    }

    /// Receive buffers sized for this socket's batches.
    fn recv_buffers(&self) -> RecvBatch {
        RecvBatch::new(1, RECV_SLOT)
    }
}

/// One receive slot's worth of what [`DatagramSocket::recv_batch`] got: `len` bytes from
/// `from`, which are datagrams of `stride` bytes each (the last may be shorter) when the
/// kernel coalesced several (GRO).
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The sender.
    pub from: SocketAddr,
    /// Bytes in the slot.
    pub len: usize,
    /// Bytes per datagram.
    pub stride: usize,
}

/// Receive buffers for one batch: `slots` slots of `slot` bytes, allocated once per socket.
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    received: Vec<Received>,
}

impl RecvBatch {
    /// Buffers for `slots` receives of up to `slot` bytes each.
    pub fn new(slots: usize, slot: usize) -> Self {
        Self { data: vec![0; slots.max(1) * slot], slot, received: Vec::with_capacity(slots.max(1)) }
    }

    /// Every datagram of the last batch, with its sender, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received.iter().zip(self.data.chunks(self.slot)).flat_map(|(r, slot)| {
            let stride = r.stride.max(1);
            slot[..r.len.min(slot.len())].chunks(stride).map(move |d| (r.from, d))
        })
    }
}

/// A UDP socket driven through `quinn-udp`: `recvmmsg` and GRO on receive, GSO on send,
/// where the kernel has them (one datagram per system call where it has not). Registered
/// with tokio as an [`AsyncFd`](tokio::io::unix::AsyncFd). (Marking a socket drained after a
/// batch of one, to save the `recvmmsg` that finds nothing, cost a 1000-client farm a fifth of
/// its calls per second: docs/benchmarks.md.)
pub struct BatchUdp {
    io: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
    state: quinn_udp::UdpSocketState,
}

impl BatchUdp {
    /// Takes over a bound tokio socket.
    pub fn new(socket: tokio::net::UdpSocket) -> io::Result<Self> {
        let socket = socket.into_std()?;
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        // SAFETY: the AsyncFd owns the std socket, which owns its descriptor: it stays open and
        // the same until the AsyncFd is dropped.
        let io = unsafe { tokio::io::unix::AsyncFd::register(socket) }?;
        Ok(Self { io, state })
    }
}

/// Bytes a receive slot takes at least: MP datagrams are at most 512, and a longer one must
/// arrive whole enough for the codec to refuse it by its length.
pub const RECV_SLOT: usize = 2048;

impl DatagramSocket for BatchUdp {
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send {
        self.io.async_io(tokio::io::Interest::WRITABLE, move |s| s.send_to(buf, to))
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        self.io.async_io(tokio::io::Interest::READABLE, |s| s.recv_from(buf))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
        let mut meta = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        loop {
            let mut ready = self.io.readable().await?;
            let slot = batch.slot;
            let got = ready.try_io(|s| {
                let mut chunks = batch.data.chunks_mut(slot);
                let mut bufs: [std::io::IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                    std::array::from_fn(|_| std::io::IoSliceMut::new(chunks.next().unwrap_or(&mut [])));
                self.state.recv(s.get_ref().into(), &mut bufs, &mut meta)
            });
            // Err: the readiness was stale (would block); wait for the next.
            let Ok(got) = got else { continue };
            let n = got?;
            batch.received.clear();
            batch.received.extend(meta[..n].iter().map(|m| Received {
                from: m.addr,
                len: m.len,
                stride: m.stride,
            }));
            return Ok(());
        }
    }

    fn send_segments(
        &self,
        contents: &[u8],
        segment_size: usize,
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment_size).then_some(segment_size),
            src_ip: None,
        };
        async move {
            if transmit.segment_size.is_none() {
                // One datagram: plain sendto, which the kernel takes a little faster than
                // sendmsg with its control messages.
                return self.send_to(contents, to).await.map(drop);
            }
            self.io.async_io(tokio::io::Interest::WRITABLE, |s| self.state.send(s.into(), &transmit)).await
        }
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// One slot per datagram `recvmmsg` returns at once, each large enough for what GRO
    /// coalesces.
    fn recv_buffers(&self) -> RecvBatch {
        RecvBatch::new(
            quinn_udp::BATCH_SIZE,
            RECV_SLOT.max(self.state.gro_segments() * dabs_wire::MAX_DATAGRAM),
        )
    }
}

impl DatagramSocket for tokio::net::UdpSocket {
    fn send_to(&self, buf: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send {
        tokio::net::UdpSocket::send_to(self, buf, to)
    }
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        tokio::net::UdpSocket::recv_from(self, buf)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

/// Binds a UDP socket with buffers sized for bursts of multi-buffer messages.
pub fn bind_udp(addr: SocketAddr) -> io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A 64 KiB message is 133 datagrams; default buffers drop part of such a burst.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    if let std::net::IpAddr::V4(ip) = addr.ip()
        && ip.is_loopback()
    {
        // A loopback endpoint sending to a group must never reach another host: send group
        // traffic on the loopback interface, hop limit 0, and hear our own.
        socket.set_multicast_if_v4(&std::net::Ipv4Addr::LOCALHOST)?;
        socket.set_multicast_ttl_v4(0)?;
        socket.set_multicast_loop_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Joins a farm's multicast group on `interface`: a socket bound to the group's port that
/// several endpoints on one host can share.
pub fn join_group(group: SocketAddrV4, interface: Ipv4Addr) -> io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not a multicast address"),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    // Bound to the group address itself, the socket hears only this group's traffic.
    socket.bind(&SocketAddr::V4(group).into())?;
    socket.join_multicast_v4(group.ip(), &interface)?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket.into())
}

/// Points an endpoint's socket at a farm interface for the group traffic it sends.
pub fn set_group_interface(socket: &tokio::net::UdpSocket, interface: Ipv4Addr) -> io::Result<()> {
    let s = socket2::SockRef::from(socket);
    s.set_multicast_if_v4(&interface)?;
    s.set_multicast_ttl_v4(if interface.is_loopback() { 0 } else { 1 })?;
    s.set_multicast_loop_v4(true)
}
