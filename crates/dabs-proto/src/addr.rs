//! Where a datagram goes: the network, a local socket, or a queue in this process.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A peer's transport address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Addr {
    /// UDP: unreliable, so every message is ACKed and retransmitted.
    Udp(SocketAddr),
    /// A Unix datagram socket on this host (the spec's "named pipe"): reliable, no ACK/NAK.
    Local(Arc<str>),
    /// An endpoint in this process, by its registry id: reliable, no ACK/NAK.
    InProc(u64),
    /// MP over a TCP connection to or from this address (interop.md, "MP over a stream"):
    /// ACKed and retransmitted as over UDP, since a connection can break with datagrams in
    /// flight and the next one must not lose or repeat a message.
    Tcp(SocketAddr),
    /// MP over a WebSocket (interop.md, "MP over a stream"): to a node's operator port
    /// (`ws://ADDR/mp`), or from a client's connection there. ACKed like `Tcp`.
    Ws(SocketAddr),
}

impl Addr {
    /// True when the link itself neither loses nor corrupts datagrams, so ACKs and
    /// retransmissions are left out (replies are still timed).
    pub fn is_reliable_link(&self) -> bool {
        !matches!(self, Addr::Udp(_) | Addr::Tcp(_) | Addr::Ws(_))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Udp(a) => write!(f, "{a}"),
            Addr::Local(p) => write!(f, "unix:{p}"),
            Addr::InProc(id) => write!(f, "inproc:{id}"),
            Addr::Tcp(a) => write!(f, "tcp:{a}"),
            Addr::Ws(a) => write!(f, "ws:{a}"),
        }
    }
}

impl Addr {
    /// The network address of a UDP, TCP or WebSocket peer.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Addr::Udp(a) | Addr::Tcp(a) | Addr::Ws(a) => Some(*a),
            Addr::Local(_) | Addr::InProc(_) => None,
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Self {
        Addr::Udp(a)
    }
}
