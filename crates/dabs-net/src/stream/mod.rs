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
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) use tcp::listener;

/// The longest frame accepted: an MP datagram is at most 512 bytes, a longer one is refused
/// by the codec as over UDP; beyond this the stream is not speaking MP and is closed.
pub(crate) const MAX_FRAME: usize = 2048;
/// Connections an endpoint keeps at most (accepted and opened together); one more accepted is
/// closed at once.
pub(crate) const MAX_STREAMS: usize = 4096;
/// A connection that brings nothing this long is closed (its sessions expire sooner).
pub(crate) const IDLE: Duration = Duration::from_secs(300);
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

/// What code outside the driver (the listener, the operator interface's WebSocket route)
/// needs to hand it a connection.
#[derive(Debug)]
pub(crate) struct Acceptor {
    pub(crate) tx: mpsc::UnboundedSender<StreamIn>,
    /// Open connections, accepted and opened together.
    pub(crate) open: AtomicUsize,
    /// Ids of accepted connections count down from the top, apart from those opened here.
    next_id: AtomicU64,
}

impl Acceptor {
    /// Registers an accepted connection from `peer`; `None` when the endpoint is at
    /// [`MAX_STREAMS`] or gone (the caller closes the connection).
    pub(crate) fn accept(&self, peer: Addr) -> Option<(u64, mpsc::UnboundedReceiver<Vec<u8>>)> {
        if self.open.load(Ordering::Relaxed) >= MAX_STREAMS {
            tracing::debug!(%peer, "too many MP stream connections: closed");
            return None;
        }
        let id = self.next_id.fetch_sub(1, Ordering::Relaxed);
        let (w, rx) = mpsc::unbounded_channel();
        self.tx.send(StreamIn::Accepted(peer, id, w)).ok()?;
        Some((id, rx))
    }
}

/// The endpoint's connections by peer, and the channel their tasks report on.
pub(crate) struct Streams {
    writers: HashMap<Addr, (u64, mpsc::UnboundedSender<Vec<u8>>)>,
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
        let acceptor =
            Arc::new(Acceptor { tx, open: AtomicUsize::new(0), next_id: AtomicU64::new(u64::MAX) });
        Self { writers: HashMap::new(), acceptor, next_id: 1, local, _reserved: reserved }
    }

    /// What hands this endpoint accepted connections.
    pub(crate) fn acceptor(&self) -> Arc<Acceptor> {
        self.acceptor.clone()
    }

    fn counted(&mut self) {
        self.acceptor.open.store(self.writers.len(), Ordering::Relaxed);
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
        if self.writers.len() >= MAX_STREAMS {
            tracing::debug!(%to, "too many MP stream connections: datagram dropped");
            return;
        }
        let (w, rx) = mpsc::unbounded_channel();
        let _ = w.send(datagram);
        self.next_id += 1;
        let id = self.next_id;
        self.writers.insert(to.clone(), (id, w));
        self.counted();
        let (tx, local) = (self.acceptor.tx.clone(), self.local);
        tokio::spawn(async move {
            let result = match &to {
                Addr::Ws(addr) => match ws::connect(local, *addr).await {
                    Ok(socket) => {
                        ws::serve(socket, to.clone(), id, rx, tx.clone()).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Addr::Tcp(addr) => match tcp::connect(local, *addr).await {
                    Ok(stream) => {
                        tcp::serve(stream, to.clone(), id, rx, tx.clone()).await;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                other => Err(std::io::Error::other(format!("{other} is not a stream peer"))),
            };
            if let Err(e) = result {
                tracing::debug!(%to, error = %e, "MP over a stream: cannot connect");
                let _ = tx.send(StreamIn::Closed(to, id));
            }
        });
    }

    /// Takes in what a connection task reported; a datagram comes back for the core.
    pub(crate) fn on_event(&mut self, event: StreamIn) -> Option<(Addr, Vec<u8>)> {
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
                if let Some((id, rx)) = acceptor.accept(peer.clone()) {
                    tokio::spawn(tcp::serve(stream, peer, id, rx, acceptor.tx.clone()));
                }
            }
        });
    }
}
