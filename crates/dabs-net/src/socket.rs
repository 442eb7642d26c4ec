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
