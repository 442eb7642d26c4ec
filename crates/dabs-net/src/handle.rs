//! The application's side of a driver: handles, sessions, incoming requests.

use dabs_proto::{Addr, CallError, Incoming, IncomingId, OpenRequest, SessionId, Stats};
use dabs_wire::{Header, Latency, NakCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The protocol reported a failure.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The endpoint's driver has stopped.
    #[error("the endpoint has stopped")]
    Closed,
    /// An encrypted session was asked for and the server's REPLY did not agree to one (its
    /// `security` is null or another specification); the session was closed unused.
    #[error("the server did not agree to encrypt the session: {0}")]
    NotEncrypted(String),
}

/// A call's reply or its failure.
pub type CallResult = Result<Vec<u8>, Error>;

pub(crate) enum Done {
    Future(oneshot::Sender<CallResult>),
    Callback(Box<dyn FnOnce(CallResult) + Send>),
}

impl Done {
    pub(crate) fn complete(self, result: CallResult) {
        match self {
            Done::Future(tx) => {
                let _ = tx.send(result);
            }
            Done::Callback(f) => f(result),
        }
    }
}

pub(crate) enum Command {
    Open {
        to: Addr,
        queue: u16,
        payload: Vec<u8>,
        encrypt: bool,
        pinned: Option<[u8; 32]>,
        done: oneshot::Sender<Result<Session, Error>>,
    },
    Call {
        session: SessionId,
        command: u16,
        payload: Vec<u8>,
        done: Done,
    },
    Reply {
        id: IncomingId,
        payload: Vec<u8>,
    },
    Reject {
        id: IncomingId,
        code: NakCode,
        text: String,
    },
    Accept {
        request: OpenRequest,
        queue: u16,
        payload: Vec<u8>,
        done: oneshot::Sender<Result<SessionId, Error>>,
    },
    RejectOpen {
        request: OpenRequest,
        code: NakCode,
        text: String,
    },
    ForgetOpen {
        request: OpenRequest,
    },
    Close {
        session: SessionId,
    },
    CloseConfirmed {
        session: SessionId,
        done: Done,
    },
    Reclaim {
        sessions: Vec<SessionId>,
        n: usize,
        done: oneshot::Sender<usize>,
    },
    Sessionless {
        to: Addr,
        header: Header,
        payload: Vec<u8>,
    },
    Stats {
        done: oneshot::Sender<Stats>,
    },
    ServiceAddress {
        addr: Option<SocketAddr>,
        done: oneshot::Sender<std::io::Result<()>>,
    },
    RegisterQueue {
        queue: u16,
        sink: mpsc::UnboundedSender<IncomingRequest>,
    },
    UnregisterQueue {
        queue: u16,
    },
    OpenSink {
        sink: mpsc::UnboundedSender<IncomingOpen>,
    },
    SessionlessSink {
        sink: mpsc::UnboundedSender<(Addr, Header, Vec<u8>)>,
    },
    ClosedSink {
        sink: mpsc::UnboundedSender<SessionId>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// The addresses an endpoint can be reached at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalAddrs {
    /// Its UDP address.
    pub udp: SocketAddr,
    /// Where it accepts MP over TCP, if it does ([`crate::DriverOptions::tcp`]).
    pub tcp: Option<SocketAddr>,
    /// Its Unix datagram socket, if it has one.
    pub unix: Option<PathBuf>,
    /// Its id in this process's in-process registry.
    pub inproc: u64,
    /// Why it could not join the farm's multicast group, when it could not: it then hears
    /// only unicast (seeds and members that know it).
    pub group_error: Option<String>,
}

/// One datagram seen by the endpoint's tap (for the trace tool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapRecord {
    /// Wall clock, Unix ms.
    pub at_ms: u64,
    /// Sent (true) or received (false).
    pub outgoing: bool,
    /// The other end.
    pub peer: Addr,
    /// The datagram as on the wire.
    pub data: Vec<u8>,
}

/// A cloneable handle to a running endpoint.
#[derive(Clone)]
pub struct EndpointHandle {
    pub(crate) cmd: mpsc::UnboundedSender<Command>,
    pub(crate) local: Arc<LocalAddrs>,
    pub(crate) tap: tokio::sync::broadcast::Sender<TapRecord>,
    pub(crate) full: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) streams: Arc<crate::stream::Acceptor>,
}

/// A place among an endpoint's MP stream connections ([`EndpointHandle::stream_permit`]).
#[derive(Debug)]
pub struct StreamPermit(#[allow(dead_code)] crate::stream::Slot);

/// The `Sec-WebSocket-Accept` answer to a client's `Sec-WebSocket-Key` (RFC 6455).
pub fn websocket_accept_key(key: &[u8]) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key)
}

impl EndpointHandle {
    pub(crate) fn send(&self, c: Command) -> Result<(), Error> {
        self.cmd.send(c).map_err(|_| Error::Closed)
    }

    /// A place for one more MP stream connection from `ip`, taken now (so a WebSocket upgrade
    /// is answered 101 only when the connection will be kept); `None` when the endpoint or
    /// that source has no room. Given back when dropped unused.
    pub fn stream_permit(&self, ip: std::net::IpAddr) -> Option<StreamPermit> {
        self.streams.reserve(ip).map(StreamPermit)
    }

    /// Serves MP over a WebSocket whose HTTP upgrade has been answered (101, with
    /// [`websocket_accept_key`]): `io` is the upgraded connection from `peer`, in the place
    /// `permit` holds. Its datagrams are `Addr::Ws(peer)`'s; the task ends with the connection.
    /// False when the endpoint is gone.
    pub fn attach_websocket<S>(&self, peer: SocketAddr, io: S, permit: StreamPermit) -> bool
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Addr::Ws(peer);
        let Some((id, rx)) = self.streams.register(peer.clone()) else {
            return false;
        };
        let tx = self.streams.tx.clone();
        tokio::spawn(async move {
            let _slot = permit;
            let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                io,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                Some(crate::stream::ws::config()),
            )
            .await;
            crate::stream::ws::serve(socket, peer, id, Some(crate::stream::IDLE), rx, tx).await;
        });
        true
    }

    /// Every datagram the endpoint sends or receives from now on, as long as the receiver
    /// is kept. Tapping costs nothing while nobody listens; a slow listener loses records
    /// (the receiver reports how many) rather than slowing the endpoint.
    pub fn tap(&self) -> tokio::sync::broadcast::Receiver<TapRecord> {
        self.tap.subscribe()
    }

    /// Where this endpoint can be reached.
    pub fn local_addrs(&self) -> &LocalAddrs {
        &self.local
    }

    /// Opens a session with a server portion (or through a farm group address) from
    /// portion queue `queue`, waiting for the REPLY.
    pub async fn open(&self, to: Addr, queue: u16, payload: Vec<u8>) -> Result<Session, Error> {
        self.open_with(to, queue, payload, false).await
    }

    /// Like [`EndpointHandle::open`], but the session is encrypted: the key exchange runs
    /// after the REPLY and the session is handed over only once it is keyed (a server that
    /// refuses encryption fails the open). The payload is the caller's; the farm's clients put
    /// their security offer in it (`dabs_farm_proto::shapes::OpenAsk::security`).
    pub async fn open_encrypted(&self, to: Addr, queue: u16, payload: Vec<u8>) -> Result<Session, Error> {
        self.open_with(to, queue, payload, true).await
    }

    /// [`EndpointHandle::open`] or [`EndpointHandle::open_encrypted`], by `encrypt`.
    pub async fn open_with(
        &self,
        to: Addr,
        queue: u16,
        payload: Vec<u8>,
        encrypt: bool,
    ) -> Result<Session, Error> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Open { to, queue, payload, encrypt, pinned: None, done })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Like [`EndpointHandle::open_encrypted`], but the server must hold the private key of
    /// `server_key` (the farm's static public key): the key exchange is Noise_NK and fails
    /// closed ([`dabs_proto::Endpoint::open_pinned`]).
    pub async fn open_pinned(
        &self,
        to: Addr,
        queue: u16,
        payload: Vec<u8>,
        server_key: [u8; 32],
    ) -> Result<Session, Error> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Open { to, queue, payload, encrypt: true, pinned: Some(server_key), done })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Whether the endpoint is near its limits (peer table or reassembly budget seven eighths
    /// full; [`dabs_proto::Endpoint::is_full`]), as of its last step. Cheap, no round trip.
    pub fn is_full(&self) -> bool {
        self.full.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Submits a call now and returns a future of its reply (the asynchronous API).
    pub fn call_async(&self, session: SessionId, command: u16, payload: Vec<u8>) -> CallFuture {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::Call { session, command, payload, done: Done::Future(tx) });
        CallFuture { rx, failed: sent.err() }
    }

    /// Submits a call now; `callback` runs on the driver task with the outcome.
    pub fn call_with(
        &self,
        session: SessionId,
        command: u16,
        payload: Vec<u8>,
        callback: impl FnOnce(CallResult) + Send + 'static,
    ) {
        let done = Done::Callback(Box::new(callback));
        if let Err(Command::Call { done, .. }) =
            self.cmd.send(Command::Call { session, command, payload, done }).map_err(|e| e.0)
        {
            done.complete(Err(Error::Closed));
        }
    }

    /// Sends a request and waits for its reply or failure (the synchronous API).
    pub async fn call(&self, session: SessionId, command: u16, payload: Vec<u8>) -> CallResult {
        self.call_async(session, command, payload).await
    }

    /// Closes a session (best effort: one `CLOSE_SESSION`, not retransmitted).
    pub fn close(&self, session: SessionId) {
        let _ = self.send(Command::Close { session });
    }

    /// Closes a session and waits, at most `within`, for the peer to let it go: the
    /// `CLOSE_SESSION` is retransmitted until answered ([`dabs_proto::Endpoint::close_confirmed`]).
    /// True when the peer confirmed it (answered, or no longer had the session); false when the
    /// wait ran out or the close could not be confirmed (the session is closed here either way).
    pub async fn close_confirmed(&self, session: SessionId, within: std::time::Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::CloseConfirmed { session, done: Done::Future(tx) }).is_err() {
            return false;
        }
        let outcome = tokio::time::timeout(within, rx).await;
        matches!(
            outcome,
            Ok(Ok(Ok(_) | Err(Error::Call(CallError::Nak { code: NakCode::UnknownSession, .. }))))
        )
    }

    /// Closes up to `n` of `sessions` that have been idle past the endpoint's
    /// `reclaim_idle_after` with nothing in flight, longest idle first
    /// ([`dabs_proto::Endpoint::reclaim_idle`]); returns how many it closed.
    pub async fn reclaim_idle(&self, sessions: Vec<SessionId>, n: usize) -> usize {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Reclaim { sessions, n, done }).is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Receives the requests addressed to portion queue `queue` (replacing any earlier
    /// receiver). Requests for queues nobody registered are NAKed with error 7.
    pub fn register_queue(&self, queue: u16) -> mpsc::UnboundedReceiver<IncomingRequest> {
        let (sink, rx) = mpsc::unbounded_channel();
        let _ = self.send(Command::RegisterQueue { queue, sink });
        rx
    }

    /// Stops routing requests to `queue`.
    pub fn unregister_queue(&self, queue: u16) {
        let _ = self.send(Command::UnregisterQueue { queue });
    }

    /// Receives `OPEN_SESSION` requests. Without a receiver they are NAKed with error 11.
    pub fn open_requests(&self) -> mpsc::UnboundedReceiver<IncomingOpen> {
        let (sink, rx) = mpsc::unbounded_channel();
        let _ = self.send(Command::OpenSink { sink });
        rx
    }

    /// Receives session-0 farm traffic.
    pub fn sessionless(&self) -> mpsc::UnboundedReceiver<(Addr, Header, Vec<u8>)> {
        let (sink, rx) = mpsc::unbounded_channel();
        let _ = self.send(Command::SessionlessSink { sink });
        rx
    }

    /// Receives the id of every session that ends from now on (closed by either side, idle,
    /// or lost), replacing any earlier receiver: what a host needs to count open sessions.
    pub fn closed_sessions(&self) -> mpsc::UnboundedReceiver<SessionId> {
        let (sink, rx) = mpsc::unbounded_channel();
        let _ = self.send(Command::ClosedSink { sink });
        rx
    }

    /// Sends one unacknowledged session-0 datagram.
    pub fn send_sessionless(&self, to: Addr, header: Header, payload: Vec<u8>) -> Result<(), Error> {
        self.send(Command::Sessionless { to, header, payload })
    }

    /// Accepts an `OPEN_SESSION` heard by this or another endpoint of the farm.
    pub async fn accept_open(
        &self,
        request: OpenRequest,
        queue: u16,
        payload: Vec<u8>,
    ) -> Result<SessionId, Error> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Accept { request, queue, payload, done })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The endpoint's counters.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Stats { done })?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Also receives at `addr`, a service address this host now holds (the port is the
    /// endpoint's own, typically), and answers every peer heard there from that address, so
    /// its sessions follow the address to whichever host holds it next. `None` stops.
    pub async fn serve_at(&self, addr: Option<SocketAddr>) -> std::io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.send(Command::ServiceAddress { addr, done })
            .map_err(|_| std::io::Error::other("endpoint closed"))?;
        rx.await.map_err(|_| std::io::Error::other("endpoint closed"))?
    }

    /// Stops the driver (pending calls fail with [`Error::Closed`]).
    pub async fn shutdown(&self) {
        let (done, rx) = oneshot::channel();
        if self.send(Command::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A call in flight; resolves to its reply.
pub struct CallFuture {
    rx: oneshot::Receiver<CallResult>,
    failed: Option<Error>,
}

impl Future for CallFuture {
    type Output = CallResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CallResult> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

/// An open session with a server portion.
#[derive(Clone)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The portion's endpoint.
    pub peer: Addr,
    /// The portion's queue.
    pub queue: u16,
    /// The REPLY payload of the open (CBOR: `va`, `addr`, `queue`, `security`).
    pub reply: Vec<u8>,
    /// Its datagrams are encrypted (the key exchange completed before it was handed over).
    pub encrypted: bool,
    pub(crate) handle: EndpointHandle,
}

impl Session {
    /// Sends a request and waits for the reply.
    pub async fn call(&self, command: u16, payload: Vec<u8>) -> CallResult {
        self.handle.call(self.id, command, payload).await
    }

    /// Submits a request now; await the future later.
    pub fn call_async(&self, command: u16, payload: Vec<u8>) -> CallFuture {
        self.handle.call_async(self.id, command, payload)
    }

    /// Closes the session (best effort).
    pub fn close(&self) {
        self.handle.close(self.id);
    }

    /// Closes the session and waits, at most `within`, for the server to confirm it
    /// ([`EndpointHandle::close_confirmed`]).
    pub async fn close_confirmed(&self, within: std::time::Duration) -> bool {
        self.handle.close_confirmed(self.id, within).await
    }
}

/// A request for one of this endpoint's portions. Answer it with [`IncomingRequest::reply`] or
/// [`IncomingRequest::reject`]; dropping it unanswered leaves the client to time out.
pub struct IncomingRequest {
    /// The request.
    pub request: Incoming,
    /// When the endpoint handed it to its queue (this host's monotonic clock): how long it
    /// then waited for its portion is measured from here, whatever the sender's clock says.
    pub queued_at: std::time::Instant,
    pub(crate) handle: EndpointHandle,
}

impl IncomingRequest {
    /// Sends the reply.
    pub fn reply(self, payload: Vec<u8>) {
        let _ = self.handle.send(Command::Reply { id: self.request.id, payload });
    }

    /// Refuses the request with a NAK.
    pub fn reject(self, code: NakCode, text: impl Into<String>) {
        let _ = self.handle.send(Command::Reject { id: self.request.id, code, text: text.into() });
    }

    /// The endpoint it arrived at.
    pub fn endpoint(&self) -> &EndpointHandle {
        &self.handle
    }
}

/// An `OPEN_SESSION` request that reached this endpoint.
pub struct IncomingOpen {
    /// Who asks, and how to answer.
    pub request: OpenRequest,
    /// Its payload (CBOR, at least `app`).
    pub payload: Vec<u8>,
    /// One-way latency of the request.
    pub latency: Latency,
    /// It came to the farm's group address, not this endpoint's own.
    pub via_group: bool,
    /// It came to the service address this endpoint also serves ([`EndpointHandle::serve_at`]):
    /// the address to name in the REPLY.
    pub arrived_at: Option<SocketAddr>,
    pub(crate) handle: EndpointHandle,
}

impl IncomingOpen {
    /// Accepts: creates the session on portion queue `queue` and REPLYs with `payload`.
    pub async fn accept(&self, queue: u16, payload: Vec<u8>) -> Result<SessionId, Error> {
        self.handle.accept_open(self.request.clone(), queue, payload).await
    }

    /// The endpoint it arrived at.
    pub fn endpoint(&self) -> &EndpointHandle {
        &self.handle
    }

    /// Leaves it to someone else, and lets the client's retransmission be heard again.
    pub fn pass(&self) {
        let _ = self.handle.send(Command::ForgetOpen { request: self.request.clone() });
    }

    /// Refuses with a NAK.
    pub fn reject(&self, code: NakCode, text: impl Into<String>) {
        let _ =
            self.handle.send(Command::RejectOpen { request: self.request.clone(), code, text: text.into() });
    }
}
