//! The driver task: sockets and timers around one sans-IO endpoint.

use crate::handle::{
    Command, Done, EndpointHandle, Error, IncomingOpen, IncomingRequest, LocalAddrs, Session, TapRecord,
};
use crate::inproc;
use crate::socket::{BatchUdp, DatagramSocket, RecvBatch, Run, bind_udp, join_group, set_group_interface};
use crate::stream::{self, StreamIn, Streams};
use crate::unix_ms;
use dabs_proto::{Addr, CallId, Config, Endpoint, Event, Time};
use dabs_wire::{Header, NakCode};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::UnixDatagram;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How to run an endpoint.
#[derive(Clone, Debug, Default)]
pub struct DriverOptions {
    /// Protocol tuning.
    pub config: Config,
    /// Seed for the time-out jitter (random when `None`).
    pub seed: Option<u64>,
    /// Also listen on a Unix datagram socket at this path (same-host partition).
    pub unix_path: Option<PathBuf>,
    /// Also listen on a farm's multicast group: (group, interface).
    pub group: Option<(SocketAddrV4, Ipv4Addr)>,
    /// Added to the wall clock this endpoint stamps its datagrams with, ms: a sender whose
    /// clock is behind (negative) makes its receivers measure that much more latency. For
    /// tests and fault injection; 0 in production.
    pub clock_offset_ms: i64,
    /// Also accept MP over TCP (interop.md, "MP over a stream") on the UDP socket's address
    /// and port. Sending to an `Addr::Tcp` peer works either way.
    pub tcp: bool,
}

/// Binds a UDP socket at `bind` and starts an endpoint on it (and a TCP listener on the same
/// port number with [`DriverOptions::tcp`]).
pub async fn spawn(bind: SocketAddr, options: DriverOptions) -> io::Result<EndpointHandle> {
    // An ephemeral UDP port's number may be taken for TCP: then another port is tried.
    let attempts = if options.tcp && bind.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let socket = bind_udp(bind)?;
        let listener = if options.tcp {
            match stream::listener(socket.local_addr()?) {
                Ok(l) => Some(l),
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            }
        } else {
            None
        };
        if let Some((group, interface)) = options.group
            && let Err(e) = set_group_interface(&socket, interface)
        {
            // Sends to the group fail too, then; unicast (seeds, members) still works.
            tracing::warn!(%group, %interface, error = %e, "cannot send to the farm's multicast group from this interface");
        }
        return start(BatchUdp::new(socket)?, options, listener);
    }
    let e = last.unwrap_or_else(|| io::Error::other("no attempt made"));
    Err(io::Error::new(e.kind(), format!("cannot listen for MP over TCP on the MP port ({bind}): {e}")))
}

/// Starts an endpoint on an already bound datagram socket (tokio's, or a simulated one).
pub fn spawn_with_socket<S: DatagramSocket>(socket: S, options: DriverOptions) -> io::Result<EndpointHandle> {
    let listener = if options.tcp { Some(stream::listener(socket.local_addr()?)?) } else { None };
    start(socket, options, listener)
}

fn start<S: DatagramSocket>(
    socket: S,
    options: DriverOptions,
    listener: Option<tokio::net::TcpListener>,
) -> io::Result<EndpointHandle> {
    let udp_addr = socket.local_addr()?;
    let unix = match &options.unix_path {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            Some(Arc::new(UnixDatagram::bind(path)?))
        }
        None => None,
    };
    // A group that cannot be joined (no multicast route, an interface without multicast, a
    // network that filters it) leaves the endpoint on unicast alone: logged, not fatal.
    let (group, group_error) = match options.group {
        Some((group, interface)) => match join_group(group, interface).and_then(BatchUdp::new) {
            Ok(g) => (Some(g), None),
            Err(e) => {
                let why = format!("cannot join the multicast group {group} on {interface}: {e}");
                tracing::warn!("{why}; carrying on with unicast (seeds and known members) only");
                (None, Some(why))
            }
        },
        None => (None, None),
    };
    let (stream_tx, stream_rx) = mpsc::unbounded_channel();
    let streams = Streams::new(stream_tx, udp_addr, !options.tcp);
    let tcp = match listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            streams.listen(listener);
            Some(addr)
        }
        None => None,
    };
    let (inproc_id, inproc_rx) = inproc::register();
    let local = Arc::new(LocalAddrs {
        udp: udp_addr,
        tcp,
        unix: options.unix_path.clone(),
        inproc: inproc_id,
        group_error,
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (tap, _) = tokio::sync::broadcast::channel(4096);
    let full = Arc::new(AtomicBool::new(false));
    let handle = EndpointHandle {
        cmd: cmd_tx.clone(),
        local: local.clone(),
        tap: tap.clone(),
        full: full.clone(),
        streams: streams.acceptor(),
    };
    let wall_epoch_ms = unix_ms().saturating_add_signed(options.clock_offset_ms);
    let seed = options.seed.unwrap_or_else(rand::random);
    let endpoint = Endpoint::new(options.config, seed, wall_epoch_ms);
    let unix_out = unix.clone().map(|u| {
        // Sends to a full Unix socket wait; a separate task keeps that from stalling receives.
        let (tx, mut rx) = mpsc::unbounded_channel::<(PathBuf, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((path, data)) = rx.recv().await {
                if let Err(e) = u.send_to(&data, &path).await {
                    tracing::debug!(path = %path.display(), error = %e, "local socket send failed");
                }
            }
        });
        tx
    });
    let driver = Driver {
        tap,
        full,
        ep: endpoint,
        start: Instant::now(),
        weak: cmd_tx.downgrade(),
        local,
        unix_out,
        calls: HashMap::new(),
        opens: HashMap::new(),
        queues: HashMap::new(),
        open_sink: None,
        sessionless_sink: None,
        closed_sink: None,
        service: None,
        via_service: HashSet::new(),
        streams,
    };
    drop(cmd_tx);
    tokio::spawn(driver.run(socket, unix, group, inproc_rx, stream_rx, cmd_rx));
    Ok(handle)
}

struct Driver {
    tap: tokio::sync::broadcast::Sender<TapRecord>,
    /// [`Endpoint::is_full`], as of the last step, for [`EndpointHandle::is_full`].
    full: Arc<AtomicBool>,
    ep: Endpoint,
    start: Instant,
    weak: mpsc::WeakUnboundedSender<Command>,
    local: Arc<LocalAddrs>,
    unix_out: Option<mpsc::UnboundedSender<(PathBuf, Vec<u8>)>>,
    calls: HashMap<CallId, Done>,
    opens: HashMap<CallId, oneshot::Sender<Result<Session, Error>>>,
    queues: HashMap<u16, mpsc::UnboundedSender<IncomingRequest>>,
    open_sink: Option<mpsc::UnboundedSender<IncomingOpen>>,
    sessionless_sink: Option<mpsc::UnboundedSender<(Addr, Header, Vec<u8>)>>,
    closed_sink: Option<mpsc::UnboundedSender<dabs_proto::SessionId>>,
    /// The service address also served, and its socket.
    service: Option<(SocketAddr, BatchUdp)>,
    /// Peers last heard at the service address: answered from it.
    via_service: HashSet<SocketAddr>,
    /// MP over TCP: the connections, by peer.
    streams: Streams,
}

/// Peers remembered as heard at the service address, at most: beyond, the set starts again
/// (a peer forgotten is answered from the endpoint's own address until it is heard again).
const MAX_VIA_SERVICE: usize = 1 << 16;

enum Wake {
    Command(Option<Command>),
    Udp(io::Result<()>),
    Unix(io::Result<(usize, Option<PathBuf>)>),
    Group(io::Result<()>),
    Service(io::Result<()>),
    Inproc(Option<(u64, Vec<u8>)>),
    Stream(Option<StreamIn>),
    Timer,
}

impl Driver {
    fn now(&self) -> Time {
        self.start.elapsed()
    }

    fn handle(&self) -> Option<EndpointHandle> {
        self.weak.upgrade().map(|cmd| EndpointHandle {
            cmd,
            local: self.local.clone(),
            tap: self.tap.clone(),
            full: self.full.clone(),
            streams: self.streams.acceptor(),
        })
    }

    fn record(&self, outgoing: bool, peer: &Addr, data: &[u8]) {
        if self.tap.receiver_count() > 0 {
            let at_ms = unix_ms();
            let _ = self.tap.send(TapRecord { at_ms, outgoing, peer: peer.clone(), data: data.to_vec() });
        }
    }

    async fn run<S: DatagramSocket>(
        mut self,
        udp: S,
        unix: Option<Arc<UnixDatagram>>,
        group: Option<BatchUdp>,
        mut inproc_rx: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
        mut stream_rx: mpsc::UnboundedReceiver<StreamIn>,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
    ) {
        let mut udp_batch = udp.recv_buffers();
        let mut unix_buf = vec![0u8; 2048];
        let mut group_batch = group.as_ref().map_or_else(|| RecvBatch::new(1, 1), |g| g.recv_buffers());
        // Where a flush gathers its datagrams, in runs for GSO and sendmmsg.
        let mut out = Outgoing::default();
        let mut shutdown_ack = None;
        // One timer for the endpoint's next deadline, moved only when the deadline moves.
        let sleep = tokio::time::sleep_until(self.start);
        tokio::pin!(sleep);
        let mut armed = None;
        // Sized for the service socket when one is set (`None`: make one).
        let mut service_batch: Option<(SocketAddr, RecvBatch)> = None;
        'serve: loop {
            if let Some((addr, s)) = &self.service
                && service_batch.as_ref().is_none_or(|(a, _)| a != addr)
            {
                service_batch = Some((*addr, s.recv_buffers()));
            }
            // Events first: a REPLY reaches its caller before the ACK it calls for is sent,
            // which keeps that system call (and, on loopback, the peer's receive work the
            // kernel does inline) out of the caller's round trip.
            self.dispatch();
            self.flush(&udp, &mut out).await;
            let deadline = self.ep.next_deadline().map(|d| self.start + d);
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(d);
                }
                armed = deadline;
            }
            let wake = tokio::select! {
                c = cmd_rx.recv() => Wake::Command(c),
                r = udp.recv_batch(&mut udp_batch) => Wake::Udp(r),
                r = async {
                    match &unix {
                        Some(u) => u.recv_from(&mut unix_buf).await.map(|(n, a)| (n, a.as_pathname().map(PathBuf::from))),
                        None => std::future::pending().await,
                    }
                } => Wake::Unix(r),
                r = async {
                    match &group {
                        Some(g) => g.recv_batch(&mut group_batch).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Group(r),
                r = async {
                    match (&self.service, service_batch.as_mut()) {
                        (Some((_, s)), Some((_, batch))) => s.recv_batch(batch).await,
                        _ => std::future::pending().await,
                    }
                } => Wake::Service(r),
                m = inproc_rx.recv() => Wake::Inproc(m),
                m = stream_rx.recv() => Wake::Stream(m),
                _ = &mut sleep, if armed.is_some() => Wake::Timer,
            };
            let now = self.now();
            if !matches!(wake, Wake::Command(_) | Wake::Timer) {
                // Orders given before this datagram arrived take effect first: a portion that
                // registered its open sink or queue and then published its address must not
                // see the first open refused (NAK 6) because select! picked the socket.
                while let Ok(c) = cmd_rx.try_recv() {
                    match c {
                        Command::Shutdown { done } => {
                            shutdown_ack = Some(done);
                            break 'serve;
                        }
                        c => self.command(now, c),
                    }
                }
            }
            match wake {
                Wake::Command(None) => break,
                Wake::Command(Some(Command::Shutdown { done })) => {
                    shutdown_ack = Some(done);
                    break;
                }
                Wake::Command(Some(c)) => {
                    self.command(now, c);
                    // Replies the portions gave meanwhile leave in the same flush.
                    for _ in 0..COMMANDS_PER_WAKE {
                        match cmd_rx.try_recv() {
                            Ok(Command::Shutdown { done }) => {
                                shutdown_ack = Some(done);
                                break 'serve;
                            }
                            Ok(c) => self.command(now, c),
                            Err(_) => break,
                        }
                    }
                }
                // Oversized datagrams arrive truncated to the buffer and are refused by the codec.
                // Everything the batch brought is handled before anything is sent: the ACKs
                // and REPLYs it calls for go out together, on the next flush.
                Wake::Udp(Ok(())) => {
                    for (from, data) in udp_batch.datagrams() {
                        if !self.via_service.is_empty() {
                            self.via_service.remove(&from);
                        }
                        let from = Addr::Udp(from);
                        self.record(false, &from, data);
                        self.ep.handle_datagram(now, from, data);
                    }
                }
                // ICMP errors from earlier sends surface here on some systems: not fatal.
                Wake::Udp(Err(e)) => tracing::debug!(error = %e, "udp receive error"),
                Wake::Unix(Ok((n, Some(path)))) => {
                    let from = Addr::Local(path.to_string_lossy().into());
                    self.record(false, &from, &unix_buf[..n]);
                    self.ep.handle_datagram(now, from, &unix_buf[..n]);
                }
                Wake::Unix(Ok((_, None))) => tracing::debug!("datagram from an unnamed local socket ignored"),
                Wake::Unix(Err(e)) => tracing::debug!(error = %e, "local socket receive error"),
                Wake::Group(Ok(())) => {
                    for (from, data) in group_batch.datagrams() {
                        let from = Addr::Udp(from);
                        self.record(false, &from, data);
                        self.ep.handle_group_datagram(now, from, data);
                    }
                }
                Wake::Group(Err(e)) => tracing::debug!(error = %e, "group receive error"),
                Wake::Service(Ok(())) => {
                    if let Some((_, batch)) = &service_batch {
                        for (from, data) in batch.datagrams() {
                            if self.via_service.len() >= MAX_VIA_SERVICE {
                                self.via_service.clear();
                            }
                            self.via_service.insert(from);
                            let from = Addr::Udp(from);
                            self.record(false, &from, data);
                            self.ep.handle_datagram(now, from, data);
                        }
                    }
                }
                Wake::Service(Err(e)) => tracing::debug!(error = %e, "service address receive error"),
                Wake::Inproc(Some((from, data))) => {
                    let from = Addr::InProc(from);
                    self.record(false, &from, &data);
                    self.ep.handle_datagram(now, from, &data);
                }
                Wake::Inproc(None) => {}
                Wake::Stream(Some(event)) => {
                    if let Some((from, data)) = self.streams.on_event(event) {
                        self.record(false, &from, &data);
                        self.ep.handle_datagram(now, from, &data);
                    }
                }
                Wake::Stream(None) => {}
                Wake::Timer => {}
            }
            self.ep.handle_timeout(self.now());
        }
        inproc::unregister(self.local.inproc);
        for (_, done) in self.calls.drain() {
            done.complete(Err(Error::Closed));
        }
        for (_, done) in self.opens.drain() {
            let _ = done.send(Err(Error::Closed));
        }
        if let Some(path) = &self.local.unix {
            let _ = std::fs::remove_file(path);
        }
        if let Some(done) = shutdown_ack {
            let _ = done.send(());
        }
    }

    /// Sends every datagram the endpoint has queued. Consecutive datagrams to one address of
    /// one size (the last of a run may be shorter: a message's last buffer, an ACK behind a
    /// REPLY) make one run, sent as one GSO message of up to the socket's `max_segments`; the
    /// runs to all addresses leave together ([`DatagramSocket::send_runs`]); sent buffers go
    /// back to the endpoint for reuse.
    async fn flush<S: DatagramSocket>(&mut self, udp: &S, out: &mut Outgoing) {
        self.full.store(self.ep.is_full(), Ordering::Relaxed);
        let max = udp.max_segments().max(1);
        out.clear();
        while let Some(t) = self.ep.poll_transmit() {
            self.record(true, &t.to, &t.data);
            match t.to {
                Addr::Udp(a) => {
                    let service = from_service(&self.service, &self.via_service, a).is_some();
                    out.push(a, &t.data, max, service);
                    self.ep.recycle(t.data);
                    if out.bytes.len() >= Outgoing::SEND_AT {
                        out.send(udp, self.service.as_ref().map(|(_, s)| s)).await;
                    }
                }
                Addr::Local(path) => match &self.unix_out {
                    Some(tx) => {
                        let _ = tx.send((PathBuf::from(&*path), t.data));
                    }
                    None => tracing::debug!("no local socket to send from"),
                },
                Addr::InProc(id) => {
                    if !inproc::send(self.local.inproc, id, t.data) {
                        tracing::debug!(to = id, "in-process endpoint is gone");
                    }
                }
                Addr::Tcp(_) | Addr::Ws(_) => self.streams.send(t.to, t.data),
            }
        }
        out.send(udp, self.service.as_ref().map(|(_, s)| s)).await;
    }

    /// Starts or stops serving at a service address (a new one replaces the old).
    fn serve_at(&mut self, addr: Option<SocketAddr>) -> io::Result<()> {
        self.service = None;
        self.via_service.clear();
        if let Some(addr) = addr {
            let socket = bind_udp(addr)?;
            self.service = Some((addr, BatchUdp::new(socket)?));
        }
        Ok(())
    }

    fn command(&mut self, now: Time, c: Command) {
        match c {
            Command::Open { to, queue, payload, encrypt, pinned, done } => {
                let opened = match pinned {
                    Some(key) => self.ep.open_pinned(now, to, queue, payload, key),
                    None => self.ep.open_with(now, to, queue, payload, encrypt),
                };
                match opened {
                    Ok(call) => {
                        self.opens.insert(call, done);
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.into()));
                    }
                }
            }
            Command::Call { session, command, payload, done } => {
                match self.ep.call(now, session, command, payload) {
                    Ok(call) => {
                        self.calls.insert(call, done);
                    }
                    Err(e) => done.complete(Err(e.into())),
                }
            }
            Command::Reply { id, payload } => {
                if let Err(e) = self.ep.reply(now, id, payload) {
                    tracing::debug!(error = %e, "reply not sent");
                }
            }
            Command::Reject { id, code, text } => {
                let _ = self.ep.reject(now, id, code, &text);
            }
            Command::Accept { request, queue, payload, done } => {
                let _ = done.send(self.ep.accept_open(now, &request, queue, payload).map_err(Error::from));
            }
            Command::RejectOpen { request, code, text } => self.ep.reject_open(now, &request, code, &text),
            Command::ForgetOpen { request } => self.ep.forget_open(&request),
            Command::Close { session } => self.ep.close(now, session),
            Command::CloseConfirmed { session, done } => match self.ep.close_confirmed(now, session) {
                Ok(call) => {
                    self.calls.insert(call, done);
                }
                Err(e) => done.complete(Err(e.into())),
            },
            Command::Sessionless { to, header, payload } => {
                if let Err(e) = self.ep.send_sessionless(now, &to, header, &payload) {
                    tracing::warn!(error = %e, "sessionless datagram not sent");
                }
            }
            Command::Reclaim { sessions, n, done } => {
                let _ = done.send(self.ep.reclaim_idle(now, &sessions, n));
            }
            Command::Stats { done } => {
                let mut stats = self.ep.stats().clone();
                stats.sessions_open = self.ep.session_count() as u64;
                let _ = done.send(stats);
            }
            Command::RegisterQueue { queue, sink } => {
                self.queues.insert(queue, sink);
            }
            Command::UnregisterQueue { queue } => {
                self.queues.remove(&queue);
            }
            Command::OpenSink { sink } => self.open_sink = Some(sink),
            Command::SessionlessSink { sink } => self.sessionless_sink = Some(sink),
            Command::ClosedSink { sink } => self.closed_sink = Some(sink),
            Command::ServiceAddress { addr, done } => {
                let _ = done.send(self.serve_at(addr));
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn dispatch(&mut self) {
        while let Some(event) = self.ep.poll_event() {
            let now = self.now();
            match event {
                Event::Request(request) => {
                    let id = request.id;
                    let dst = request.dst;
                    let delivered = match (self.queues.get(&dst), self.handle()) {
                        (Some(sink), Some(handle)) => sink
                            .send(IncomingRequest { request, queued_at: std::time::Instant::now(), handle })
                            .is_ok(),
                        _ => false,
                    };
                    if !delivered {
                        self.queues.remove(&dst);
                        let _ = self.ep.reject(
                            now,
                            id,
                            NakCode::UnknownQueue,
                            &format!("no portion at queue {dst}"),
                        );
                    }
                }
                Event::Open { request, payload, latency, via_group } => {
                    let arrived_at = match (&request.peer, &self.service) {
                        (Addr::Udp(peer), Some((addr, _))) if self.via_service.contains(peer) => Some(*addr),
                        _ => None,
                    };
                    let delivered = match (&self.open_sink, self.handle()) {
                        (Some(sink), Some(handle)) => sink
                            .send(IncomingOpen {
                                request: request.clone(),
                                payload,
                                latency,
                                via_group,
                                arrived_at,
                                handle,
                            })
                            .is_ok(),
                        _ => false,
                    };
                    if !delivered && !via_group {
                        self.ep.reject_open(
                            now,
                            &request,
                            NakCode::UnknownApplication,
                            "this endpoint hosts no applications",
                        );
                    }
                }
                Event::Sessionless { peer, header, payload } => {
                    if let Some(sink) = &self.sessionless_sink {
                        let _ = sink.send((peer, header, payload));
                    }
                }
                Event::Opened { call, session, peer, queue, payload } => {
                    if let (Some(done), Some(handle)) = (self.opens.remove(&call), self.handle()) {
                        let encrypted = self.ep.session_encrypted(session);
                        let _ = done.send(Ok(Session {
                            id: session,
                            peer,
                            queue,
                            reply: payload,
                            encrypted,
                            handle,
                        }));
                    }
                }
                Event::Reply { call, payload, .. } => {
                    if let Some(done) = self.calls.remove(&call) {
                        done.complete(Ok(payload));
                    }
                }
                Event::Failed { call, error } => {
                    if let Some(done) = self.calls.remove(&call) {
                        done.complete(Err(error.into()));
                    } else if let Some(done) = self.opens.remove(&call) {
                        let _ = done.send(Err(error.into()));
                    }
                }
                Event::Reopened { session, peer, .. } => tracing::info!(?session, %peer, "session re-opened"),
                Event::SessionClosed { session, peer, reason } => {
                    tracing::debug!(?session, %peer, ?reason, "session closed");
                    if let Some(sink) = &self.closed_sink {
                        let _ = sink.send(session);
                    }
                }
                Event::ReplyUndelivered { session, transaction } => {
                    tracing::warn!(?session, transaction, "reply never acknowledged")
                }
            }
        }
    }
}

/// The service address's socket when `to` was last heard there: answered from it.
fn from_service<'a>(
    service: &'a Option<(SocketAddr, BatchUdp)>,
    via: &HashSet<SocketAddr>,
    to: SocketAddr,
) -> Option<&'a BatchUdp> {
    service.as_ref().filter(|_| via.contains(&to)).map(|(_, s)| s)
}

/// Commands handled after the one that woke the driver, before it flushes: enough to gather
/// a burst of replies, few enough that datagrams waiting on the socket are not starved.
const COMMANDS_PER_WAKE: usize = 64;

/// A flush's datagrams: their bytes, and the runs over them to send from the endpoint's own
/// socket and from the service address's.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    runs: Vec<Run>,
    service_runs: Vec<Run>,
}

impl Outgoing {
    /// Bytes gathered before they are sent without waiting for the end of the flush.
    const SEND_AT: usize = 256 * 1024;

    /// Sends what has been gathered, from `udp` or from the service address's socket, and
    /// empties it.
    async fn send<S: DatagramSocket>(&mut self, udp: &S, service: Option<&BatchUdp>) {
        if !self.runs.is_empty() {
            udp.send_runs(&self.bytes, &self.runs).await;
        }
        if let Some(service) = service
            && !self.service_runs.is_empty()
        {
            service.send_runs(&self.bytes, &self.service_runs).await;
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.runs.clear();
        self.service_runs.clear();
    }

    /// Adds a datagram to `to`: to the run that ends where it begins (the last one gathered)
    /// when that run is to the same address, has room (`max` datagrams) and its datagrams are
    /// no shorter; else as a new run.
    fn push(&mut self, to: SocketAddr, data: &[u8], max: usize, service: bool) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        let list = if service { &mut self.service_runs } else { &mut self.runs };
        if let Some(r) = list.last_mut()
            && r.start + r.len == start
            && r.to == to
            && r.len == r.datagrams() * r.segment_size
            && r.datagrams() < max
            && data.len() <= r.segment_size
        {
            r.len += data.len();
            return;
        }
        list.push(Run { to, start, len: data.len(), segment_size: data.len() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_gathers_runs_per_address_and_size() {
        let (a, b): (SocketAddr, SocketAddr) =
            ("127.0.0.1:1".parse().expect("a"), "127.0.0.1:2".parse().expect("b"));
        let mut out = Outgoing::default();
        for _ in 0..3 {
            out.push(a, &[1; 512], 4, false);
        }
        out.push(a, &[2; 17], 4, false); // a shorter last buffer ends the run
        out.push(a, &[3; 17], 4, false); // full: four in the run already
        out.push(b, &[4; 17], 4, false);
        out.push(b, &[5; 512], 4, false); // longer than the run's datagrams
        out.push(b, &[6; 9], 4, true); // the service address's socket
        let runs: Vec<(SocketAddr, usize, usize, usize)> =
            out.runs.iter().map(|r| (r.to, r.start, r.len, r.segment_size)).collect();
        assert_eq!(
            runs,
            vec![(a, 0, 3 * 512 + 17, 512), (a, 1553, 17, 17), (b, 1570, 17, 17), (b, 1587, 512, 512)]
        );
        assert_eq!(out.service_runs, vec![Run { to: b, start: 2099, len: 9, segment_size: 9 }]);
        assert_eq!(out.bytes.len(), 2108);
        // After a short datagram closes a run, the next of the same size starts a new one.
        out.push(b, &[6; 9], 4, false);
        assert_eq!(out.runs.len(), 5, "the service run in between ends the socket's run");
    }
}
