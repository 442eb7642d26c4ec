//! MP over a stream (interop.md, "MP over a stream"; R-MP-7): TCP, each datagram preceded by
//! its length ([`tcp`]), and a WebSocket on a node's operator port, each datagram one binary
//! message ([`ws`]). A connection is opened on the first datagram to a peer, or accepted (the
//! endpoint's TCP listener on its MP port; a WebSocket the operator interface hands over with
//! [`crate::EndpointHandle::attach_websocket`]); the driver sees the datagrams of
//! `Addr::Tcp(peer)` and `Addr::Ws(peer)` as it sees UDP ones, and the core ACKs and
//! retransmits them the same way, so a connection that breaks loses nothing the protocol does
//! not repeat.

pub(crate) mod tcp;
pub(crate) mod ws;

use dabs_proto::Addr;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(crate) use tcp::listener;

/// The longest frame accepted: an MP datagram is at most 512 bytes, a longer one is refused
/// by the codec as over UDP; beyond this the stream is not speaking MP and is closed.
pub(crate) const MAX_FRAME: usize = 2048;
/// Connections an endpoint keeps at most (accepted and opened together); one more accepted is
/// closed at once.
pub(crate) const MAX_STREAMS: usize = 4096;
/// Connections from (or to) one IP address at most: one host cannot take every slot.
pub(crate) const MAX_STREAMS_PER_IP: usize = 256;
/// A connection (and, over a WebSocket, its upgrade) not made within this is given up; the
/// protocol's retransmission tries again on a new one.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An accepted connection that brings nothing this long is closed (its sessions expire
/// sooner). The accepting side closes an idle connection first ([`DIALLED_IDLE`] is longer):
/// the side that closes first keeps the address pair in TIME_WAIT, and a client that did
/// could not connect again from its own port (and its sessions would have to be opened again).
pub(crate) const IDLE: Duration = Duration::from_secs(300);
/// The side that connected gives up on a connection this long without a datagram: later
/// than the accepting side, so that one normally closes first, but a dead server or a NAT that
/// forgot the connection is still noticed (besides TCP keepalive, [`tcp::tune`]).
pub(crate) const DIALLED_IDLE: Duration = Duration::from_secs(360);
/// A peer whose accepted connection closed is not dialled for this long (its sessions here
/// expire sooner); then it is forgotten.
const ACCEPTED_FOR: Duration = Duration::from_secs(300);
/// Bytes gathered for one write while more datagrams are queued.
pub(crate) const WRITE_BATCH: usize = 64 * 1024;

/// What the connection tasks tell the driver; `Addr` is `Tcp` or `Ws`.
#[derive(Debug)]
pub(crate) enum StreamIn {
    /// A connection was accepted from `peer`: datagrams to it go into the sender.
    Accepted(Addr, u64, mpsc::UnboundedSender<Vec<u8>>),
    /// A datagram from `peer`.
    Frame(Addr, Vec<u8>),
    /// Connection `id` to or from `peer` ended.
    Closed(Addr, u64),
}

/// `f`, or `Err` when `idle` (no limit when `None`) passes first: how both streams time out a
/// connection that brings nothing.
pub(crate) async fn within<F: std::future::Future>(idle: Option<Duration>, f: F) -> Result<F::Output, ()> {
    match idle {
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| ()),
        None => Ok(f.await),
    }
}

/// What code outside the driver (the listener, the operator interface's WebSocket route)
/// needs to hand it a connection, and the count of live connections they and the driver share.
#[derive(Debug)]
pub(crate) struct Acceptor {
    pub(crate) tx: mpsc::UnboundedSender<StreamIn>,
    /// Live connection tasks, accepted and opened together.
    open: AtomicUsize,
    /// Live connections per IP address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Ids of accepted connections count down from the top, apart from those opened here.
    next_id: AtomicU64,
}

/// One connection's place among the endpoint's: given back when the connection's task ends.
#[derive(Debug)]
pub(crate) struct Slot {
    acceptor: Arc<Acceptor>,
    /// The source it counts against ([`source_key`]); `None` for loopback.
    key: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.acceptor.open.fetch_sub(1, Ordering::Relaxed);
        let Some(key) = self.key else { return };
        let mut per_ip = self.acceptor.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&key);
            }
        }
    }
}

/// What one source's share is counted by: an IPv4 address, an IPv6 /64 (one host usually holds
/// a whole /64). Loopback is this host's own clients and benchmarks: it shares only the
/// endpoint's limit.
fn source_key(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        ip if ip.is_loopback() => None,
        IpAddr::V4(v4) => Some(IpAddr::V4(v4)),
        IpAddr::V6(v6) => Some(IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX)))),
    }
}

impl Acceptor {
    /// A place for one more connection with `ip`, if the endpoint and that source have room.
    pub(crate) fn reserve(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = source_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let mine = key.and_then(|k| per_ip.get(&k).copied()).unwrap_or(0);
        // Under the lock, so two reservations cannot both take the last place.
        if mine >= MAX_STREAMS_PER_IP || self.open.load(Ordering::Relaxed) >= MAX_STREAMS {
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        if let Some(k) = key {
            per_ip.insert(k, mine + 1);
        }
        Some(Slot { acceptor: self.clone(), key })
    }

    /// Registers an accepted connection from `peer`; `None` when the endpoint (or the
    /// peer's address) has no room, or is gone: the caller closes the connection.
    pub(crate) fn accept(
        self: &Arc<Self>,
        peer: Addr,
    ) -> Option<(u64, mpsc::UnboundedReceiver<Vec<u8>>, Slot)> {
        let ip = peer.socket_addr()?.ip();
        let Some(slot) = self.reserve(ip) else {
            tracing::debug!(%peer, "too many MP stream connections: closed");
            return None;
        };
        let (id, rx) = self.register(peer)?;
        Some((id, rx, slot))
    }

    /// Tells the driver of an accepted connection from `peer` whose place is already taken.
    pub(crate) fn register(&self, peer: Addr) -> Option<(u64, mpsc::UnboundedReceiver<Vec<u8>>)> {
        let id = self.next_id.fetch_sub(1, Ordering::Relaxed);
        let (w, rx) = mpsc::unbounded_channel();
        self.tx.send(StreamIn::Accepted(peer, id, w)).ok()?;
        Some((id, rx))
    }
}

/// The endpoint's connections by peer, and the channel their tasks report on.
pub(crate) struct Streams {
    writers: HashMap<Addr, (u64, mpsc::UnboundedSender<Vec<u8>>)>,
    /// Peers whose connection this endpoint accepted: they are not listening, so a datagram
    /// for one whose connection has gone is dropped (it connects again), never used to dial
    /// it. `None` while connected, else when the connection closed; forgotten
    /// [`ACCEPTED_FOR`] after that, oldest first from `closed`.
    accepted: HashMap<Addr, Option<Instant>>,
    closed: std::collections::VecDeque<(Instant, Addr)>,
    acceptor: Arc<Acceptor>,
    next_id: u64,
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
        let reserved = reserve.then(|| tcp::reserve_port(local)).and_then(|r| {
            r.map_err(
                |e| tracing::debug!(%local, error = %e, "MP over a stream: the endpoint's port is taken"),
            )
            .ok()
        });
        let acceptor = Arc::new(Acceptor {
            tx,
            open: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            next_id: AtomicU64::new(u64::MAX),
        });
        Self {
            writers: HashMap::new(),
            accepted: HashMap::new(),
            closed: std::collections::VecDeque::new(),
            acceptor,
            next_id: 1,
            local,
            _reserved: reserved,
        }
    }

    /// What hands this endpoint accepted connections.
    pub(crate) fn acceptor(&self) -> Arc<Acceptor> {
        self.acceptor.clone()
    }

    /// Queues `datagram` for `to` (`Tcp` or `Ws`), connecting first when no connection to it
    /// is open (the datagrams wait in the connection's queue meanwhile; if it fails they are
    /// lost, and the protocol's retransmission tries again, on a new connection).
    pub(crate) fn send(&mut self, to: Addr, mut datagram: Vec<u8>) {
        if let Some((_, w)) = self.writers.get(&to) {
            match w.send(datagram) {
                Ok(()) => return,
                // The connection's task has ended; its Closed report is on the way.
                Err(back) => datagram = back.0,
            }
        }
        if self.accepted.contains_key(&to) {
            tracing::debug!(%to, "its connection to us has gone: datagram dropped until it connects again");
            return;
        }
        let Some(addr) = to.socket_addr() else { return };
        let Some(slot) = self.acceptor.reserve(addr.ip()) else {
            tracing::debug!(%to, "too many MP stream connections: datagram dropped");
            return;
        };
        let (w, rx) = mpsc::unbounded_channel();
        let _ = w.send(datagram);
        self.next_id += 1;
        let id = self.next_id;
        self.writers.insert(to.clone(), (id, w));
        let (tx, local) = (self.acceptor.tx.clone(), self.local);
        tokio::spawn(async move {
            let _slot = slot;
            let ws = matches!(to, Addr::Ws(_));
            let made = if ws {
                tokio::time::timeout(CONNECT_TIMEOUT, ws::connect(local, addr)).await.map(|r| r.map(Ok))
            } else {
                tokio::time::timeout(CONNECT_TIMEOUT, tcp::connect(local, addr)).await.map(|r| r.map(Err))
            };
            match made {
                Ok(Ok(Ok(socket))) => {
                    ws::serve(socket, to.clone(), id, Some(DIALLED_IDLE), rx, tx.clone()).await
                }
                Ok(Ok(Err(stream))) => {
                    tcp::serve(stream, to.clone(), id, Some(DIALLED_IDLE), rx, tx.clone()).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%to, error = %e, "MP over a stream: cannot connect");
                    let _ = tx.send(StreamIn::Closed(to, id));
                }
                Err(_) => {
                    tracing::debug!(%to, "MP over a stream: not connected within {CONNECT_TIMEOUT:?}");
                    let _ = tx.send(StreamIn::Closed(to, id));
                }
            }
        });
    }

    /// Takes in what a connection task reported; a datagram comes back for the core.
    pub(crate) fn on_event(&mut self, event: StreamIn) -> Option<(Addr, Vec<u8>)> {
        match event {
            StreamIn::Accepted(peer, id, w) => {
                // A peer reconnecting replaces its old connection.
                self.accepted.insert(peer.clone(), None);
                self.writers.insert(peer, (id, w));
                None
            }
            StreamIn::Frame(peer, data) => Some((peer, data)),
            StreamIn::Closed(peer, id) => {
                if self.writers.get(&peer).is_some_and(|(i, _)| *i == id) {
                    self.writers.remove(&peer);
                    if let Some(at) = self.accepted.get_mut(&peer) {
                        let now = Instant::now();
                        *at = Some(now);
                        self.closed.push_back((now, peer));
                    }
                }
                self.forget_closed();
                None
            }
        }
    }

    /// Forgets accepted peers closed longer than [`ACCEPTED_FOR`] ago (unless they connected
    /// again meanwhile): the oldest are at the front, so this stops at the first young one.
    fn forget_closed(&mut self) {
        while let Some((at, _)) = self.closed.front()
            && at.elapsed() >= ACCEPTED_FOR
        {
            let Some((at, peer)) = self.closed.pop_front() else { break };
            if self.accepted.get(&peer).is_some_and(|closed| *closed == Some(at)) {
                self.accepted.remove(&peer);
            }
        }
    }

    /// Accepts connections on `listener` until the driver is gone, each served by a task of
    /// its own; beyond [`MAX_STREAMS`] open at once, a new one is closed at once.
    pub(crate) fn listen(&self, listener: tokio::net::TcpListener) {
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = acceptor.tx.closed() => return,
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
                let peer = Addr::Tcp(peer);
                if let Some((id, rx, slot)) = acceptor.accept(peer.clone()) {
                    let tx = acceptor.tx.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        tcp::serve(stream, peer, id, Some(IDLE), rx, tx).await;
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptor() -> Arc<Acceptor> {
        let (tx, _) = mpsc::unbounded_channel();
        Arc::new(Acceptor {
            tx,
            open: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            next_id: AtomicU64::new(u64::MAX),
        })
    }

    /// Shares of the slots, counted without any traffic (documentation addresses as keys).
    #[test]
    fn one_source_gets_its_share_and_slots_come_back() {
        let a = acceptor();
        let host: IpAddr = "192.0.2.7".parse().unwrap();
        let mut held: Vec<Slot> =
            (0..MAX_STREAMS_PER_IP).map(|_| a.reserve(host).expect("within the share")).collect();
        assert!(a.reserve(host).is_none(), "one more from the same address is refused");
        assert!(a.reserve("192.0.2.8".parse().unwrap()).is_some(), "another address still has room");
        held.pop();
        assert!(a.reserve(host).is_some(), "a slot given back is taken again");
        // One IPv6 host is its /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut six: Vec<Slot> = (0..MAX_STREAMS_PER_IP)
            .map(|i| a.reserve(v6(&format!("2001:db8::{:x}", i + 1))).unwrap())
            .collect();
        assert!(a.reserve(v6("2001:db8::ffff:1")).is_none(), "the same /64");
        assert!(a.reserve(v6("2001:db8:0:1::1")).is_some(), "another /64");
        six.clear();
        // Loopback counts against the endpoint's limit only.
        let lo: Vec<Slot> =
            (0..MAX_STREAMS_PER_IP + 10).map(|_| a.reserve(IpAddr::from([127, 0, 0, 1])).unwrap()).collect();
        assert_eq!(lo.len(), MAX_STREAMS_PER_IP + 10);
        drop(lo);
        drop(held);
        assert_eq!(a.open.load(Ordering::Relaxed), 0, "every slot came back");
        assert!(a.per_ip.lock().unwrap().is_empty(), "and no source is left counted");
    }
}
