//! The client-portion framework: open a session through the farm group, announce `STARTED`,
//! make calls that follow the server portion when it moves, stop.

use crate::partition::{BoxFuture, Caller, PartitionError};
use dabs_farm_proto::seal::FailoverVerifier;
use dabs_farm_proto::shapes::{OpenAsk, SecurityOffer, parse_open_reply, parse_open_security};
use dabs_net::{Addr, CallError, EndpointHandle, Error, Session};
use dabs_wire::{NakCode, SystemCommand};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long [`FarmClient::stop`] waits for the server to confirm the close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How a client portion reaches its application.
#[derive(Clone, Debug)]
pub struct FarmClientOptions {
    /// The farm's group address (or one server's MP address).
    pub farm: SocketAddr,
    /// The application.
    pub app: String,
    /// This client portion's queue at its endpoint.
    pub queue: u16,
    /// Re-opens allowed within one call before its failure is returned.
    pub max_reopens: u32,
    /// The application's operations may run twice without harm, so a call whose outcome is
    /// unknown (gave up, session lost) may be sent again after a re-open.
    pub idempotent: bool,
    /// `STARTED` attempts, each after a longer, jittered pause.
    pub started_attempts: u32,
    /// The farm's shared secret: `FAILOVER` notices are verified with it (none: ignored).
    pub secret: Option<Vec<u8>>,
    /// A `FAILOVER` issued further than this from our clock is refused as stale, ms.
    pub failover_window_ms: u64,
    /// This client's class: servers apply that class's failover and connection thresholds.
    pub class: Option<String>,
    /// This client's device group: servers defer groups in their configured order.
    pub device_group: Option<String>,
    /// Encrypt every session (R-MP-5): offer security in `OPEN_SESSION`, key the session
    /// before the first call, and refuse a server that answers in clear. Re-opens and moves
    /// to a `FAILOVER` alternate are encrypted too.
    pub encrypt: bool,
    /// The farm's static public key (`dabs_net::static_public_key` of the key the nodes derive
    /// from the farm secret), pinned: every session is encrypted with Noise_NK, which only a
    /// holder of the farm's private key can complete, so a man-in-the-middle is refused. Fails
    /// closed: a server that cannot prove the key fails the open (NAK 9 or 13), never falls
    /// back to NN or clear. Implies `encrypt`.
    pub farm_key: Option<[u8; 32]>,
    /// The channel MP runs over (interop.md, "MP over a stream"). Over TCP, `farm` is a
    /// node's MP address, whose TCP port is the same number (a multicast group cannot be
    /// reached over a stream), and moves go to the alternates' TCP ports too; over a
    /// WebSocket, `farm` is a node's operator address (`ws://farm/mp`).
    pub transport: Transport,
    /// What this client's device offers, sent in `OPEN_SESSION` so the farm can place the
    /// application's mutable modules (R-CL-2); `None` says nothing (they run on the server).
    pub device: Option<dabs_farm_proto::modules::Device>,
}

/// The channel a client speaks MP over (R-MP-7), in the order a client tries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Datagrams: the protocol's own channel.
    #[default]
    Udp,
    /// A TCP connection to the node's MP port.
    Tcp,
    /// A WebSocket on the node's operator port.
    WebSocket,
}

impl Transport {
    /// Every channel, in the preferred order.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::WebSocket];

    /// The name interop.md gives it (`"udp"`, `"tcp"`, `"ws"`).
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
        }
    }

    /// The channel named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl FarmClientOptions {
    /// The peer address of `addr` on this client's channel.
    pub fn peer(&self, addr: SocketAddr) -> Addr {
        match self.transport {
            Transport::Udp => Addr::Udp(addr),
            Transport::Tcp => Addr::Tcp(addr),
            Transport::WebSocket => Addr::Ws(addr),
        }
    }

    /// Options for `app` on the farm at `farm`.
    pub fn new(farm: SocketAddr, app: &str) -> Self {
        Self {
            farm,
            app: app.into(),
            queue: 1,
            max_reopens: 3,
            idempotent: false,
            started_attempts: 6,
            secret: None,
            failover_window_ms: 30_000,
            class: None,
            device_group: None,
            encrypt: false,
            farm_key: None,
            transport: Transport::Udp,
            device: None,
        }
    }
}

/// Where a client portion is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientStatus {
    /// Opening its session.
    Starting,
    /// Serving calls.
    Running,
    /// Stopped by [`FarmClient::stop`].
    Stopped,
}

/// A client portion connected to its server portion through the farm.
pub struct FarmClient {
    endpoint: EndpointHandle,
    options: FarmClientOptions,
    current: Arc<tokio::sync::Mutex<Option<Session>>>,
    va: Arc<Mutex<Option<String>>>,
    reopens: AtomicU64,
    status: Mutex<ClientStatus>,
    failovers: Arc<FailoverCounts>,
    listener: tokio::task::JoinHandle<()>,
}

/// `FAILOVER` notices this client has acted on and refused.
#[derive(Debug)]
pub struct FailoverCounts {
    /// Verified and followed.
    pub accepted: AtomicU64,
    /// Refused (forged, replayed, stale, misaddressed): each an alert.
    pub rejected: AtomicU64,
    /// Moves made on a notice, watchable: the count goes up once the new session is open.
    moves: tokio::sync::watch::Sender<u64>,
}

impl Default for FailoverCounts {
    fn default() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            moves: tokio::sync::watch::channel(0).0,
        }
    }
}

impl FailoverCounts {
    /// Wakes when this client has moved to another server on a `FAILOVER`.
    pub fn moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.moves.subscribe()
    }
}

impl Drop for FarmClient {
    fn drop(&mut self) {
        self.listener.abort();
        // Dropped without `stop`: still tell the server, best effort, rather than leave the
        // session to its idle time-out.
        if let Ok(mut current) = self.current.try_lock()
            && let Some(s) = current.take()
        {
            s.close();
        }
    }
}

impl FarmClient {
    /// Opens a session through the farm and announces `STARTED`.
    pub async fn start(endpoint: EndpointHandle, options: FarmClientOptions) -> Result<Self, Error> {
        let current = Arc::new(tokio::sync::Mutex::new(None));
        let va = Arc::new(Mutex::new(None));
        let failovers = Arc::new(FailoverCounts::default());
        let listener = tokio::spawn(listen(
            endpoint.clone(),
            options.clone(),
            current.clone(),
            va.clone(),
            failovers.clone(),
        ));
        let client = Self {
            endpoint,
            options,
            current,
            va,
            reopens: AtomicU64::new(0),
            status: Mutex::new(ClientStatus::Starting),
            failovers,
            listener,
        };
        // A farm that is full right now may have room a moment later: retry like a call does.
        // A server gone before it took STARTED (a notification, safe to send again) is left
        // for another one through the farm.
        let mut attempt = 0;
        loop {
            let outcome = match client.session().await {
                Ok(s) => match client.started(&s).await {
                    Ok(()) => break,
                    Err(e) => {
                        client.forget(&s).await;
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match outcome {
                Err(e)
                    if attempt < client.options.max_reopens
                        && (opening_worth_retrying(&e) || server_gone(&e)) =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(e),
                Ok(()) => unreachable!("the loop breaks on success"),
            }
        }
        *client.status.lock().unwrap_or_else(|e| e.into_inner()) = ClientStatus::Running;
        Ok(client)
    }

    /// `STARTED`, sent until answered, each attempt after a longer, jittered pause; a server
    /// that went silent after its ACK is not asked again.
    async fn started(&self, session: &Session) -> Result<(), Error> {
        let mut pause = Duration::from_millis(50);
        let mut last = None;
        for _ in 0..self.options.started_attempts.max(1) {
            match session.call(SystemCommand::Started.number(), Vec::new()).await {
                Ok(_) => return Ok(()),
                Err(e @ Error::Call(CallError::GaveUp { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
            let jitter = rand::random_range(0.8..1.2);
            tokio::time::sleep(pause.mul_f64(jitter)).await;
            pause *= 2;
        }
        Err(last.unwrap_or(Error::Closed))
    }

    /// The session to use now, opening one through the farm if needed. A client coming back
    /// names its old virtual address, so it keeps it wherever the portion now runs.
    async fn session(&self) -> Result<Session, Error> {
        let mut current = self.current.lock().await;
        if let Some(s) = current.as_ref() {
            return Ok(s.clone());
        }
        let s = open_session(&self.endpoint, &self.options, self.options.peer(self.options.farm), self.va())
            .await?;
        if let Ok((va, _, _)) = parse_open_reply(&s.reply) {
            *self.va.lock().unwrap_or_else(|e| e.into_inner()) = Some(va);
        }
        *current = Some(s.clone());
        Ok(s)
    }

    async fn forget(&self, session: &Session) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|s| s.id == session.id) {
            *current = None;
            session.close();
        }
    }

    /// True when a failure means the request certainly did not run (a refusal), or may have
    /// run but running it again is harmless.
    fn worth_reopening(&self, e: &Error) -> bool {
        match e {
            Error::Call(CallError::Nak { code, .. }) => matches!(
                code,
                NakCode::UnknownSession | NakCode::NotAccepting | NakCode::UnknownQueue | NakCode::Overloaded
            ),
            // Our endpoint no longer has the session (closed idle, or lost): nothing was sent.
            Error::Call(CallError::UnknownSession) => true,
            Error::Call(
                CallError::GaveUp { .. }
                | CallError::SessionLost
                | CallError::ReplyTimeout(_)
                | CallError::PeerSilent { .. },
            ) => self.options.idempotent,
            _ => false,
        }
    }

    /// Sends a request to the server portion and waits for the reply. When the portion has
    /// gone or refuses new work, the client re-opens through the farm and sends it again.
    pub async fn call(&self, command: u16, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut reopens = 0;
        loop {
            let session = match self.session().await {
                Ok(s) => s,
                Err(e) if reopens < self.options.max_reopens && opening_worth_retrying(&e) => {
                    // The farm may still be noticing a dead member; ask again shortly.
                    reopens += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(reopens))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match session.call(command, payload.clone()).await {
                Err(e) if reopens < self.options.max_reopens && self.worth_reopening(&e) => {
                    tracing::info!(error = %e, "re-opening through the farm");
                    reopens += 1;
                    self.reopens.fetch_add(1, Ordering::Relaxed);
                    self.forget(&session).await;
                }
                Err(e) if server_gone(&e) => {
                    // Not sent again (its outcome is unknown and the application did not say
                    // it may run twice), but the next call goes to a live server.
                    self.forget(&session).await;
                    return Err(e);
                }
                other => return other,
            }
        }
    }

    /// Where the farm placed the application's mutable modules for this client, from its
    /// current session's REPLY (empty before one is open or when the farm names none).
    pub async fn placement(&self) -> Vec<(String, dabs_farm_proto::modules::Placement)> {
        let current = self.current.lock().await;
        current
            .as_ref()
            .and_then(|s| dabs_farm_proto::shapes::parse_open_placement(&s.reply).ok())
            .unwrap_or_default()
    }

    /// The server portion's virtual address.
    pub fn va(&self) -> Option<String> {
        self.va.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The endpoint currently serving this client.
    pub async fn server(&self) -> Option<Addr> {
        self.current.lock().await.as_ref().map(|s| s.peer.clone())
    }

    /// `FAILOVER` notices followed and refused.
    pub fn failovers(&self) -> &FailoverCounts {
        &self.failovers
    }

    /// How many times this client had to re-open.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Relaxed)
    }

    /// Where the client is in its life.
    pub fn status(&self) -> ClientStatus {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the session and waits (at most [`CLOSE_WAIT`]) for the server to confirm it;
    /// notices that arrive later are no longer followed.
    pub async fn stop(&self) {
        self.listener.abort();
        let session = self.current.lock().await.take();
        if let Some(s) = session {
            // Returns once the server has let the session go, or after `CLOSE_WAIT`: a process
            // that exits straight after `stop` (`dabs calc`) must not leave its seat taken.
            s.close_confirmed(CLOSE_WAIT).await;
        }
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = ClientStatus::Stopped;
    }
}

/// The client portion's own queue: what servers send it. `FAILOVER` is verified and, if
/// genuine, followed at once (a direct open at the first alternate that answers, naming its
/// portion); `SHUTDOWN` drops the session so the next call re-opens through the farm.
async fn listen(
    endpoint: EndpointHandle,
    options: FarmClientOptions,
    current: Arc<tokio::sync::Mutex<Option<Session>>>,
    va: Arc<Mutex<Option<String>>>,
    counts: Arc<FailoverCounts>,
) {
    let mut requests = endpoint.register_queue(options.queue);
    let mut verifier = options.secret.as_ref().map(|s| FailoverVerifier::new(s, options.failover_window_ms));
    let me = endpoint.local_addrs().udp;
    let mut last_alert: Option<tokio::time::Instant> = None;
    while let Some(req) = requests.recv().await {
        let command = req.request.command;
        let peer = req.request.peer.clone();
        let (Addr::Udp(server) | Addr::Tcp(server) | Addr::Ws(server)) = peer else {
            req.reject(NakCode::UnknownCommand, "only network servers send client commands");
            continue;
        };
        if command == SystemCommand::Shutdown.number() {
            req.reply(Vec::new());
            let mut cur = current.lock().await;
            if cur.as_ref().is_some_and(|s| s.peer == peer) {
                *cur = None;
            }
            continue;
        }
        if command != SystemCommand::Failover.number() {
            req.reject(NakCode::UnknownCommand, format!("a client portion does not serve command {command}"));
            continue;
        }
        let now_ms = dabs_net::unix_ms();
        let verdict = match verifier.as_mut() {
            Some(v) => v.verify(&req.request.payload, server, me, now_ms),
            None => Err(dabs_farm_proto::seal::FailoverError::BadMac),
        };
        let notice = match verdict {
            Ok(n) => n,
            Err(e) => {
                let rejected = counts.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(%server, error = %e, "FAILOVER ignored (alert)");
                req.reject(NakCode::AuthenticationFailed, "");
                // Raised with the farm through our own server portion (whose session we trust),
                // at most once a second however many forgeries arrive.
                if last_alert.is_none_or(|t| t.elapsed() >= ALERT_INTERVAL) {
                    last_alert = Some(tokio::time::Instant::now());
                    let alert = failover_alert(server, &e.to_string(), rejected);
                    if let Some(s) = current.lock().await.as_ref() {
                        drop(s.call_async(SystemCommand::Alert.number(), alert));
                    }
                }
                continue;
            }
        };
        // Answered once the move is made: a refusal tells the server we are still its client.
        let mut moved = false;
        for alt in &notice.alternates {
            // Over a WebSocket an alternate is reached at its own (its operator port).
            let to = match (options.transport, alt.ws) {
                (Transport::WebSocket, Some(ws)) => Addr::Ws(ws),
                (Transport::WebSocket, None) => continue,
                _ => options.peer(alt.addr),
            };
            match open_session(&endpoint, &options, to, Some(alt.va.clone())).await {
                Ok(s) => {
                    if let Ok((new_va, _, _)) = parse_open_reply(&s.reply) {
                        *va.lock().unwrap_or_else(|e| e.into_inner()) = Some(new_va);
                    }
                    // Calls already in flight finish on the old session; new ones use this.
                    let left = current.lock().await.replace(s);
                    // A session with another server than the sender (we are called back) is
                    // done with once its calls have had time to finish; the sender's stays
                    // open so it can call us back.
                    if let Some(old) = left.filter(|o| o.peer != peer) {
                        tokio::spawn(async move {
                            tokio::time::sleep(LEFT_SESSION_GRACE).await;
                            old.close();
                        });
                    }
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                    counts.moves.send_modify(|n| *n += 1);
                    moved = true;
                    break;
                }
                Err(e) => {
                    tracing::info!(alternate = %alt.addr, error = %e, "alternate refused, trying the next")
                }
            }
        }
        if moved {
            req.reply(Vec::new());
        } else {
            req.reject(NakCode::NotAccepting, "no alternate took this client; it stays");
        }
    }
}

/// The shortest time between two alerts this client raises with its server.
const ALERT_INTERVAL: Duration = Duration::from_secs(1);

/// The `ALERT` payload for a FAILOVER that did not verify (docs/protocol.md).
fn failover_alert(from: std::net::SocketAddr, reason: &str, rejected: u64) -> Vec<u8> {
    let alert = ciborium::Value::Map(vec![
        ("alert".into(), "failover_rejected".into()),
        ("from".into(), from.to_string().into()),
        ("reason".into(), reason.into()),
        ("rejected".into(), rejected.into()),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&alert, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

/// How long a session this client moved away from stays open for calls still in flight.
const LEFT_SESSION_GRACE: Duration = Duration::from_secs(30);

/// What this client asks for in every `OPEN_SESSION`.
fn ask_for(options: &FarmClientOptions) -> OpenAsk {
    OpenAsk {
        app: Some(options.app.clone()),
        class: options.class.clone(),
        group: options.device_group.clone(),
        device: options.device,
        ..Default::default()
    }
}

/// Opens a session for `options.app` at `to` (the farm or one server), encrypted when
/// `options.encrypt`: the ask then offers [`dabs_net::SECURITY_SPEC`] and the REPLY must
/// name it, or the session is closed and the open fails with [`Error::NotEncrypted`].
async fn open_session(
    endpoint: &EndpointHandle,
    options: &FarmClientOptions,
    to: Addr,
    va: Option<String>,
) -> Result<Session, Error> {
    let offered =
        if options.farm_key.is_some() { dabs_net::SECURITY_SPEC_NK } else { dabs_net::SECURITY_SPEC };
    let encrypt = options.encrypt || options.farm_key.is_some();
    let security = encrypt.then(|| vec![SecurityOffer::of(&offered)]);
    let ask = OpenAsk { va, security, ..ask_for(options) };
    let s = match options.farm_key {
        // The endpoint runs Noise_NK with the pinned key or fails the open: the session is
        // authenticated whatever the REPLY names (a decider that predates ASSIGN's `pinned`
        // has its node name the NN specification).
        Some(key) => endpoint.open_pinned(to, options.queue, ask.to_cbor(), key).await?,
        None => endpoint.open_with(to, options.queue, ask.to_cbor(), encrypt).await?,
    };
    if !encrypt {
        return Ok(s);
    }
    let pinned = options.farm_key.is_some();
    let refusal = match parse_open_security(&s.reply) {
        Ok(Some(spec)) if spec.matches(&offered) && s.encrypted => None,
        Ok(Some(spec)) if pinned && spec.matches(&dabs_net::SECURITY_SPEC) && s.encrypted => None,
        Ok(Some(spec)) if s.encrypted => Some(format!("it chose another specification: {spec:?}")),
        Ok(Some(_)) => Some("the session was not keyed".to_owned()),
        Ok(None) => Some("its REPLY says security: null".to_owned()),
        Err(e) => Some(e.to_string()),
    };
    match refusal {
        None => Ok(s),
        Some(why) => {
            // Never fall back to clear: nothing has been sent in this session yet.
            s.close();
            Err(Error::NotEncrypted(why))
        }
    }
}

/// True when `STARTED` failed because its server has gone (it never answered, or went silent
/// after its ACK): another server through the farm will do.
fn server_gone(e: &Error) -> bool {
    matches!(
        e,
        Error::Call(
            CallError::GaveUp { .. }
                | CallError::PeerSilent { .. }
                | CallError::SessionLost
                | CallError::ReplyTimeout(_)
        )
    )
}

fn opening_worth_retrying(e: &Error) -> bool {
    matches!(
        e,
        Error::Call(
            CallError::GaveUp { .. }
                | CallError::Nak { code: NakCode::NotAccepting | NakCode::Overloaded, .. }
        )
    )
}

impl Caller for FarmClient {
    fn call(&self, command: u16, payload: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>, PartitionError>> {
        Box::pin(async move {
            FarmClient::call(self, command, payload)
                .await
                .map_err(|e| PartitionError::Transport(e.to_string()))
        })
    }
}
