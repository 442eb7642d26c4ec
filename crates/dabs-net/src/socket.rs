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

    /// Sends every run in `runs`, each a slice of `bytes`, failures logged per run (a send
    /// that fails is a datagram lost on the way: the protocol's retransmission covers it).
    /// One run at a time unless the socket can do better.
    fn send_runs(&self, bytes: &[u8], runs: &[Run]) -> impl Future<Output = ()> + Send {
        async move {
            for r in runs {
                send_run(self, bytes, r).await;
            }
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

/// Datagrams to one address gathered for one send: `len` bytes from `start` of a flush's
/// buffer, in datagrams of `segment_size` bytes (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The destination.
    pub to: SocketAddr,
    /// Where the run begins in the buffer.
    pub start: usize,
    /// Bytes in the run.
    pub len: usize,
    /// Bytes per datagram.
    pub segment_size: usize,
}

impl Run {
    /// The run's bytes in `bytes`.
    pub fn of<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.start..self.start + self.len]
    }

    /// Datagrams in the run.
    pub fn datagrams(&self) -> usize {
        self.len.div_ceil(self.segment_size.max(1))
    }
}

/// Receive buffers for one batch: `slots` slots of `slot` bytes, allocated once per socket.
pub struct RecvBatch {
    data: Vec<u8>,
    slot: usize,
    received: Vec<Received>,
    /// Slots offered to the next receive: doubled while batches fill them, halved while
    /// they stay under half full, so a quiet socket does not prepare 32 headers per datagram.
    width: usize,
}

impl RecvBatch {
    /// Buffers for `slots` receives of up to `slot` bytes each.
    pub fn new(slots: usize, slot: usize) -> Self {
        let slots = slots.max(1);
        Self { data: vec![0; slots * slot], slot, received: Vec::with_capacity(slots), width: slots.min(2) }
    }

    /// Slots the next receive offers.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Adapts the width to a receive that filled `got` slots.
    fn adapt(&mut self, got: usize) {
        let slots = self.data.len() / self.slot.max(1);
        if got >= self.width {
            self.width = (self.width * 2).min(slots);
        } else if got * 2 < self.width {
            self.width = (self.width / 2).max(2).min(slots);
        }
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
                let width = batch.width.clamp(1, quinn_udp::BATCH_SIZE);
                self.state.recv(s.get_ref().into(), &mut bufs[..width], &mut meta)
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
            batch.adapt(n);
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

    /// Linux: the runs leave by `sendmmsg`, up to [`MMSG_BATCH`] per system call, each run
    /// one message (GSO for a run of several datagrams): the ACKs and REPLYs a batch of
    /// datagrams from many peers calls for go out together. `quinn-udp` sends to one
    /// destination per call, hence this one call of our own.
    #[cfg(target_os = "linux")]
    async fn send_runs(&self, bytes: &[u8], runs: &[Run]) {
        if let [r] = runs {
            return send_run(self, bytes, r).await;
        }
        let mut next = 0;
        while next < runs.len() {
            let chunk = &runs[next..runs.len().min(next + MMSG_BATCH)];
            match self.io.async_io(tokio::io::Interest::WRITABLE, |s| mmsg::send(s, bytes, chunk)).await {
                Ok(sent) => next += sent.max(1),
                Err(e) => {
                    // The first message of the chunk failed. A GSO run the device refuses goes
                    // again through quinn-udp, which falls back to single datagrams.
                    let r = &chunk[0];
                    if r.datagrams() > 1 {
                        send_run(self, bytes, r).await;
                    } else {
                        tracing::debug!(to = %r.to, error = %e, "udp send failed");
                    }
                    next += 1;
                }
            }
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

/// Sends one run (GSO where the socket can), a failure logged: a datagram lost on the way,
/// which the protocol's retransmission covers.
async fn send_run<S: DatagramSocket + ?Sized>(socket: &S, bytes: &[u8], r: &Run) {
    if let Err(e) = socket.send_segments(r.of(bytes), r.segment_size, r.to).await {
        tracing::debug!(to = %r.to, error = %e, "udp send failed");
    }
}

/// Messages one `sendmmsg` carries at most.
pub(crate) const MMSG_BATCH: usize = 64;

#[cfg(target_os = "linux")]
mod mmsg {
    use super::{MMSG_BATCH, Run};
    use std::io;
    use std::os::fd::AsRawFd;

    /// Room for one `UDP_SEGMENT` control message (a u16), 8-byte aligned as `cmsghdr` wants.
    #[derive(Clone, Copy)]
    #[repr(C, align(8))]
    struct Control([u8; 32]);

    /// One `sendmmsg` of up to [`MMSG_BATCH`] runs; how many the kernel took. A run of
    /// several datagrams carries `UDP_SEGMENT` (GSO).
    pub(super) fn send(socket: &std::net::UdpSocket, bytes: &[u8], runs: &[Run]) -> io::Result<usize> {
        let n = runs.len().min(MMSG_BATCH);
        let names: [Option<socket2::SockAddr>; MMSG_BATCH] =
            std::array::from_fn(|i| runs.get(i).map(|r| socket2::SockAddr::from(r.to)));
        let mut iovs: [libc::iovec; MMSG_BATCH] =
            [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MMSG_BATCH];
        let mut controls = [Control([0; 32]); MMSG_BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut hdrs: [libc::mmsghdr; MMSG_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let (r, name) = (&runs[i], names[i].as_ref().expect("a name per run below n"));
            let data = r.of(bytes);
            iovs[i] = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = name.as_ptr() as *mut libc::c_void;
            h.msg_namelen = name.len();
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            if r.datagrams() > 1 {
                let segment = u16::try_from(r.segment_size).unwrap_or(u16::MAX);
                // SAFETY: CMSG_SPACE of a u16 (24 bytes on 64-bit targets) fits in Control's 32
                // bytes; CMSG_FIRSTHDR returns a pointer into that buffer, aligned for cmsghdr
                // by Control's alignment, and CMSG_DATA points inside it.
                unsafe {
                    let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
                    debug_assert!(space <= std::mem::size_of::<Control>());
                    h.msg_control = controls[i].0.as_mut_ptr() as *mut libc::c_void;
                    h.msg_controllen = space;
                    let c = libc::CMSG_FIRSTHDR(h);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, segment);
                }
            }
        }
        loop {
            // SAFETY: hdrs[..n] point at names, iovecs, controls and bytes that all outlive the
            // call; the kernel only reads them (and writes msg_len).
            let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), n as u32, 0) };
            if sent >= 0 {
                return Ok(sent as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn receiver() -> BatchUdp {
        BatchUdp::new(bind_udp("127.0.0.1:0".parse().expect("literal")).expect("bind")).expect("batch socket")
    }

    /// Every datagram `socket` gets until `n` have come, or fails after 5 s.
    async fn receive(socket: &BatchUdp, n: usize) -> Vec<Vec<u8>> {
        let mut batch = socket.recv_buffers();
        let mut got = Vec::new();
        while got.len() < n {
            tokio::time::timeout(Duration::from_secs(5), socket.recv_batch(&mut batch))
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} datagrams arrived", got.len()))
                .expect("receive");
            got.extend(batch.datagrams().map(|(_, d)| d.to_vec()));
        }
        got
    }

    #[tokio::test]
    async fn runs_to_several_addresses_arrive_whole_and_in_order() {
        let (a, b) = (receiver().await, receiver().await);
        let sender = receiver().await;
        let mut bytes = Vec::new();
        let mut runs = Vec::new();
        let mut push = |to: SocketAddr, datagrams: &[Vec<u8>]| {
            let start = bytes.len();
            for d in datagrams {
                bytes.extend_from_slice(d);
            }
            runs.push(Run { to, start, len: bytes.len() - start, segment_size: datagrams[0].len() });
        };
        let to_a: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; if i == 4 { 100 } else { 512 }]).collect();
        let to_b = vec![vec![9u8; 30]];
        let more_a = vec![vec![7u8; 20]];
        push(a.local_addr().expect("addr"), &to_a);
        push(b.local_addr().expect("addr"), &to_b);
        push(a.local_addr().expect("addr"), &more_a);
        sender.send_runs(&bytes, &runs).await;
        let got_a = receive(&a, 6).await;
        let want_a: Vec<Vec<u8>> = to_a.iter().chain(&more_a).cloned().collect();
        assert_eq!(got_a, want_a, "a run of five (GSO where the kernel has it) and then a single datagram");
        assert_eq!(receive(&b, 1).await, to_b);
    }

    #[test]
    fn the_receive_width_follows_what_batches_bring() {
        let mut batch = RecvBatch::new(32, 64);
        assert_eq!(batch.width(), 2);
        for _ in 0..5 {
            let w = batch.width();
            batch.adapt(w);
        }
        assert_eq!(batch.width(), 32, "full batches double it up to the slots");
        batch.adapt(32);
        assert_eq!(batch.width(), 32);
        for _ in 0..10 {
            batch.adapt(1);
        }
        assert_eq!(batch.width(), 2, "batches of one halve it, but not below two");
    }
}
