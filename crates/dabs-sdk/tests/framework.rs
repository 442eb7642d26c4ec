//! The SDK's frameworks (issue 4) through their public APIs: the server-portion framework
//! (message loop, runtime events beside it, reports, clean and emergency shutdown; R-RE-7),
//! the client-portion framework (open, `STARTED` sent with ever-longer jittered pauses,
//! status, stop, a server's `SHUTDOWN`; R-RE-6) and partitions declared once (R-VA-5).
//!
//! Everything runs on an in-memory datagram network under tokio's paused clock, on one
//! thread: a datagram is a channel message, so the clock moves only when every task is idle.
//! Each time measured here is therefore exact and does not depend on how loaded the machine is.

use dabs_farm_proto::portion::{PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_farm_proto::records::PortionFigures;
use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{
    Addr, CallError, Config, DatagramSocket, DriverOptions, EndpointHandle, Error, Session, SessionId,
};
use dabs_sdk::{
    Caller, ClientStatus, FarmClient, FarmClientOptions, Handled, PartitionError, Placed, PortionFactoryFn,
    ServerPortion,
};
use dabs_wire::{Kind, NakCode, SystemCommand};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// An in-memory network.

type Inbox = mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>;

/// Sees every datagram a socket receives; `false` drops it.
type Filter = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Sockets that reach each other by address through channels.
#[derive(Clone, Default)]
struct Net(Arc<Mutex<(u16, HashMap<SocketAddr, Inbox>)>>);

impl Net {
    fn socket(&self, filter: Option<Filter>) -> MemSocket {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut net = self.0.lock().unwrap();
        net.0 += 1;
        let addr = SocketAddr::from(([10, 9, 0, 1], 20_000 + net.0));
        net.1.insert(addr, tx);
        MemSocket { addr, net: self.clone(), inbox: tokio::sync::Mutex::new(rx), filter }
    }

    /// An MP endpoint on this network; `filter` sees what it receives.
    fn endpoint(&self, config: Config, filter: Option<Filter>) -> EndpointHandle {
        let socket = self.socket(filter);
        let seed = u64::from(socket.addr.port());
        dabs_net::spawn_with_socket(socket, DriverOptions { config, seed: Some(seed), ..Default::default() })
            .unwrap()
    }
}

struct MemSocket {
    addr: SocketAddr,
    net: Net,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
    filter: Option<Filter>,
}

impl DatagramSocket for MemSocket {
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        let inbox = self.net.0.lock().unwrap().1.get(&to).cloned();
        if let Some(inbox) = inbox {
            let _ = inbox.send((buf.to_vec(), self.addr));
        }
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut inbox = self.inbox.lock().await;
        loop {
            // The network keeps every inbox's sender, so this never ends.
            let Some((data, from)) = inbox.recv().await else { return std::future::pending().await };
            if self.filter.as_ref().is_some_and(|keep| !keep(&data)) {
                continue;
            }
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            return Ok((n, from));
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

// ---------------------------------------------------------------------------------------------
// A portion hosted as the node hosts one, and what it records.

const APP: &str = "rec";
const VA: &str = "mp://t/rec/dasp/1";
const QUEUE: u16 = 16;
const WORK: u16 = 300;

/// What a [`Recorder`] did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Begin(u8),
    End(u8),
    Event(&'static str),
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Step>>>);

impl Log {
    fn push(&self, step: Step) {
        self.0.lock().unwrap().push(step);
    }
    fn steps(&self) -> Vec<Step> {
        self.0.lock().unwrap().clone()
    }
    fn has(&self, step: &Step) -> bool {
        self.0.lock().unwrap().contains(step)
    }
}

/// A request for a [`Recorder`]: its number and how long its handler takes.
fn job(n: u8, ms: u32) -> Vec<u8> {
    let mut payload = vec![n];
    payload.extend(ms.to_be_bytes());
    payload
}

/// Logs each request's start and end and each runtime event; a request takes as long as it says.
struct Recorder {
    log: Log,
    served: u32,
}

impl ServerPortion for Recorder {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        let n = payload[0];
        let ms = u32::from_be_bytes(payload[1..5].try_into().unwrap());
        self.log.push(Step::Begin(n));
        // The work under test: a request takes as long as it says (paused clock).
        tokio::time::sleep(Duration::from_millis(ms.into())).await;
        self.served += 1;
        self.log.push(Step::End(n));
        Handled::Reply(payload)
    }

    fn on_event(&mut self, event: &RuntimeEvent) {
        let name = if matches!(event, RuntimeEvent::StateRequest(_)) {
            "state"
        } else if matches!(event, RuntimeEvent::AddClient { .. }) {
            "add_client"
        } else if matches!(event, RuntimeEvent::RemoveClient { .. }) {
            "remove_client"
        } else if matches!(event, RuntimeEvent::Shutdown { emergency: false }) {
            "shutdown"
        } else if matches!(event, RuntimeEvent::Shutdown { emergency: true }) {
            "emergency"
        } else {
            "other"
        };
        self.log.push(Step::Event(name));
    }

    fn state(&self) -> String {
        format!("served {}", self.served)
    }
}

fn recorder(log: &Log) -> impl Fn() -> Recorder + Send + Sync + 'static {
    let log = log.clone();
    move || Recorder { log: log.clone(), served: 0 }
}

/// A running portion, as its node sees it.
struct Portion {
    events: mpsc::UnboundedSender<RuntimeEvent>,
    reports: mpsc::UnboundedReceiver<(String, PortionReport)>,
    figures: Arc<PortionFigures>,
}

impl Portion {
    /// The next report, when it came; every report names the portion.
    async fn report(&mut self) -> (Instant, PortionReport) {
        let (va, report) = tokio::time::timeout(Duration::from_secs(600), self.reports.recv())
            .await
            .expect("a report within 10 minutes")
            .expect("the portion still holds its reports channel");
        assert_eq!(va, VA, "a report names its portion");
        (Instant::now(), report)
    }
}

/// Starts a portion made by `make` on queue 16 of `endpoint`, through the SDK's factory.
fn start_portion<P: ServerPortion>(
    endpoint: &EndpointHandle,
    make: impl Fn() -> P + Send + Sync + 'static,
) -> Portion {
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let figures = Arc::new(PortionFigures::default());
    let ctx = PortionContext {
        app: APP.into(),
        va: VA.into(),
        queue: QUEUE,
        requests: endpoint.register_queue(QUEUE),
        events,
        reports: reports_tx,
        figures: figures.clone(),
        endpoint: endpoint.clone(),
        latency: std::sync::Arc::new(dabs_farm_proto::portion::DiscardLatency),
        timeouts: Default::default(),
        max_workers: None,
    };
    PortionFactoryFn::new(APP, make).spawn(ctx);
    Portion { events: events_tx, reports, figures }
}

/// Accepts every open at `endpoint` onto the portion and, as the node does, tells the portion
/// its new client. Yields each accepted session once the portion has been told.
fn accept_opens(
    endpoint: &EndpointHandle,
    events: mpsc::UnboundedSender<RuntimeEvent>,
) -> mpsc::UnboundedReceiver<SessionId> {
    let (accepted_tx, accepted) = mpsc::unbounded_channel();
    let mut opens = endpoint.open_requests();
    let addr = endpoint.local_addrs().udp;
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let reply = dabs_farm_proto::shapes::open_reply(VA, addr, QUEUE);
            if let Ok(session) = open.accept(QUEUE, reply).await {
                let _ = events.send(RuntimeEvent::AddClient { session, peer: open.request.peer.clone() });
                let _ = accepted_tx.send(session);
            }
        }
    });
    accepted
}

/// A `SHUTDOWN` a client was sent: when it arrived and its `kind`.
type Notice = (Instant, String);

/// A plain client portion at `server`: its session, and the `SHUTDOWN` notices it is sent.
async fn raw_client(net: &Net, server: SocketAddr) -> (Session, mpsc::UnboundedReceiver<Notice>) {
    let endpoint = net.endpoint(Config::default(), None);
    let mut requests = endpoint.register_queue(1);
    let (tx, notices) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            assert_eq!(
                req.request.command,
                SystemCommand::Shutdown.number(),
                "only SHUTDOWN is sent to clients here"
            );
            let value: ciborium::Value = ciborium::from_reader(&req.request.payload[..]).unwrap();
            let kind = value
                .as_map()
                .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("kind")))
                .and_then(|(_, v)| v.as_text())
                .unwrap_or("?")
                .to_owned();
            req.reply(Vec::new());
            let _ = tx.send((Instant::now(), kind));
        }
    });
    let ask = OpenAsk { app: Some(APP.into()), ..Default::default() }.to_cbor();
    let session = endpoint.open(Addr::Udp(server), 1, ask).await.unwrap();
    (session, notices)
}

/// Waits (in paused time, so at no cost) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    dabs_testkit::eventually_async(what, Duration::from_secs(60), Duration::from_millis(1), async || cond())
        .await
}

async fn notice(notices: &mut mpsc::UnboundedReceiver<Notice>) -> Notice {
    tokio::time::timeout(Duration::from_secs(60), notices.recv())
        .await
        .expect("the client was told within a minute")
        .unwrap()
}

/// The requests in the order their handlers ran, checking that handlers never overlapped and
/// that no runtime event was handled inside one.
fn handler_order(steps: &[Step]) -> Vec<u8> {
    let mut inside: Option<u8> = None;
    let mut order = Vec::new();
    for step in steps {
        match step {
            Step::Begin(n) => {
                assert_eq!(inside, None, "request {n} began inside another handler: {steps:?}");
                inside = Some(*n);
                order.push(*n);
            }
            Step::End(n) => {
                assert_eq!(inside, Some(*n), "request {n} ended out of turn: {steps:?}");
                inside = None;
            }
            Step::Event(e) => assert_eq!(inside, None, "event {e} ran inside a handler: {steps:?}"),
        }
    }
    order
}

fn position(steps: &[Step], step: &Step) -> usize {
    steps.iter().position(|s| s == step).unwrap_or_else(|| panic!("{step:?} missing from {steps:?}"))
}

// ---------------------------------------------------------------------------------------------
// The server-portion framework (R-RE-7).

/// Runtime events (a client added, a state request, a client leaving) sent while the loop is
/// busy with a burst of requests run between requests: the burst is answered in full and in
/// order, and the callbacks run during it, not after it. Statistics are read beside the loop
/// from the portion's shared figures, never through it.
#[tokio::test(start_paused = true)]
async fn runtime_events_run_between_requests_without_stopping_or_reordering_the_loop() {
    let net = Net::default();
    let log = Log::default();
    let server = net.endpoint(Config::default(), None);
    let addr = server.local_addrs().udp;
    let portion = start_portion(&server, recorder(&log));
    let mut accepted = accept_opens(&server, portion.events.clone());
    let (a, _) = raw_client(&net, addr).await;
    accepted.recv().await.unwrap();

    const K: u8 = 8;
    let calls: Vec<_> = (0..K).map(|n| a.call_async(WORK, job(n, 10))).collect();
    until("the first request is being handled", || log.has(&Step::Begin(0))).await;

    // While the loop is busy: a second client arrives, the runtime asks for the state, and the
    // second client leaves.
    let (b, _) = raw_client(&net, addr).await;
    let second = accepted.recv().await.unwrap();
    let (state_tx, state_rx) = oneshot::channel();
    portion.events.send(RuntimeEvent::StateRequest(state_tx)).unwrap();
    portion.events.send(RuntimeEvent::RemoveClient { session: second }).unwrap();
    b.close();
    let state = tokio::time::timeout(Duration::from_secs(60), state_rx).await.unwrap().unwrap();
    // The statistics process reads the shared figures while the loop works.
    let handled_then = portion.figures.handled.load(Ordering::Relaxed);

    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), job(n as u8, 10), "request {n} answered with its own reply");
    }
    let steps = log.steps();
    assert_eq!(handler_order(&steps), (0..K).collect::<Vec<_>>(), "requests taken one at a time, in order");
    let last_end = position(&steps, &Step::End(K - 1));
    for event in ["add_client", "state", "remove_client"] {
        let at = position(&steps, &Step::Event(event));
        assert!(at < last_end, "{event} waited for the whole burst: {steps:?}");
    }
    let served: u32 =
        state.strip_prefix("served ").and_then(|n| n.parse().ok()).expect("the portion's own state()");
    assert!((1..u32::from(K)).contains(&served), "state answered mid-burst, got {state:?}");
    assert!(handled_then < u64::from(K), "figures read mid-burst, not after it: {handled_then}");
    assert_eq!(portion.figures.handled.load(Ordering::Relaxed), u64::from(K), "every request counted");
}

/// The load-balancing side hears the portion start before it serves anything, and hears it
/// exit, last, when its endpoint goes away (the request queue closes); a state request is
/// answered with the portion's own `state()`.
#[tokio::test(start_paused = true)]
async fn reports_reach_the_runtime_started_first_and_exited_last() {
    let net = Net::default();
    let log = Log::default();
    let server = net.endpoint(Config::default(), None);
    let addr = server.local_addrs().udp;
    let mut portion = start_portion(&server, recorder(&log));
    assert_eq!(portion.report().await.1, PortionReport::Started);
    let _accepted = accept_opens(&server, portion.events.clone());
    let (a, _) = raw_client(&net, addr).await;
    assert_eq!(a.call(WORK, job(1, 5)).await.unwrap(), job(1, 5));

    let (state_tx, state_rx) = oneshot::channel();
    portion.events.send(RuntimeEvent::StateRequest(state_tx)).unwrap();
    assert_eq!(state_rx.await.unwrap(), "served 1");

    server.shutdown().await;
    assert_eq!(portion.report().await.1, PortionReport::Exited);
    let after = tokio::time::timeout(Duration::from_secs(60), portion.reports.recv()).await.unwrap();
    assert!(after.is_none(), "nothing reported after Exited: {after:?}");
}

/// A started portion recording into `log`, with two raw clients connected to it (the
/// network and server endpoint are kept alive with it).
struct TwoClients {
    _net: Net,
    _server: EndpointHandle,
    portion: Portion,
    a: Session,
    a_notices: mpsc::UnboundedReceiver<Notice>,
    _b: Session,
    b_notices: mpsc::UnboundedReceiver<Notice>,
}

async fn two_clients(log: &Log) -> TwoClients {
    let net = Net::default();
    let server = net.endpoint(Config::default(), None);
    let addr = server.local_addrs().udp;
    let mut portion = start_portion(&server, recorder(log));
    assert_eq!(portion.report().await.1, PortionReport::Started);
    let mut accepted = accept_opens(&server, portion.events.clone());
    let (a, a_notices) = raw_client(&net, addr).await;
    let (b, b_notices) = raw_client(&net, addr).await;
    accepted.recv().await.unwrap();
    accepted.recv().await.unwrap();
    TwoClients { _net: net, _server: server, portion, a, a_notices, _b: b, b_notices }
}

/// A clean shutdown sent while requests are queued: every client is told (`kind: clean`)
/// while requests are still pending, every pending request still runs and is answered, and
/// only then does the portion report that it exited.
#[tokio::test(start_paused = true)]
async fn a_clean_shutdown_tells_the_clients_finishes_pending_requests_then_exits() {
    let log = Log::default();
    let TwoClients { _net, _server, mut portion, a, mut a_notices, _b, mut b_notices } =
        two_clients(&log).await;

    const K: u8 = 5;
    let calls: Vec<_> = (0..K).map(|n| a.call_async(WORK, job(n, 20))).collect();
    until("the first request is being handled", || log.has(&Step::Begin(0))).await;
    portion.events.send(RuntimeEvent::Shutdown { emergency: false }).unwrap();

    let mut replied = Instant::now();
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), job(n as u8, 20), "pending request {n} finished and answered");
        replied = Instant::now();
    }
    let (exited_at, report) = portion.report().await;
    assert_eq!(report, PortionReport::Exited);
    let steps = log.steps();
    assert_eq!(handler_order(&steps), (0..K).collect::<Vec<_>>());
    assert!(steps.contains(&Step::Event("shutdown")), "the callback ran: {steps:?}");
    assert!(exited_at >= replied, "exited only after the last pending request was answered");
    let (a_told, a_kind) = notice(&mut a_notices).await;
    let (_, b_kind) = notice(&mut b_notices).await;
    assert_eq!((a_kind.as_str(), b_kind.as_str()), ("clean", "clean"), "both clients told");
    assert!(a_told < replied, "clients told before the pending work was finished, so they can move");
}

/// An emergency shutdown sent while requests are queued: the clients are told
/// (`kind: emergency`), the portion reports that it exited, the handler in progress is stopped
/// and the queued requests are not run but refused (NAK 12), so their callers move at once.
#[tokio::test(start_paused = true)]
async fn an_emergency_shutdown_tells_the_clients_and_exits_without_running_queued_requests() {
    let log = Log::default();
    let TwoClients { _net, _server, mut portion, a, mut a_notices, _b, mut b_notices } =
        two_clients(&log).await;

    const K: u8 = 5;
    let mut calls: Vec<_> = (0..K).map(|n| a.call_async(WORK, job(n, 100))).collect();
    until("the first request is being handled", || log.has(&Step::Begin(0))).await;
    portion.events.send(RuntimeEvent::Shutdown { emergency: true }).unwrap();

    assert_eq!(portion.report().await.1, PortionReport::Exited);
    assert_eq!(notice(&mut a_notices).await.1, "emergency");
    assert_eq!(notice(&mut b_notices).await.1, "emergency");
    drop(calls.remove(0)); // the one in progress when the shutdown came
    for (n, call) in calls.into_iter().enumerate() {
        // Refused as not run (NAK 12), so the caller can re-open elsewhere at once.
        let outcome = tokio::time::timeout(Duration::from_secs(1), call).await.expect("refused at once");
        assert!(
            matches!(
                outcome,
                Err(dabs_net::Error::Call(dabs_net::CallError::Nak {
                    code: dabs_wire::NakCode::NotAccepting,
                    ..
                }))
            ),
            "queued request {} was not refused with NAK 12: {outcome:?}",
            n + 1
        );
    }
    let steps = log.steps();
    assert!(steps.contains(&Step::Event("emergency")), "the callback ran: {steps:?}");
    // The handler in progress was stopped, not finished; no queued request began.
    assert!(!steps.contains(&Step::End(0)), "the handler in progress was waited for: {steps:?}");
    let begun: Vec<&Step> = steps.iter().filter(|s| matches!(s, Step::Begin(_))).collect();
    assert_eq!(begun, [&Step::Begin(0)], "a queued request ran after the emergency shutdown");
}

/// "Exit at once": an emergency shutdown must not wait for the handler in progress (it once
/// did: the portion's callback ran first, and a worker holds its portion for all of `handle`).
#[tokio::test(start_paused = true)]
async fn an_emergency_shutdown_does_not_wait_for_the_handler_in_progress() {
    let net = Net::default();
    let log = Log::default();
    let server = net.endpoint(Config::default(), None);
    let addr = server.local_addrs().udp;
    let mut portion = start_portion(&server, recorder(&log));
    assert_eq!(portion.report().await.1, PortionReport::Started);
    let mut accepted = accept_opens(&server, portion.events.clone());
    let (a, mut notices) = raw_client(&net, addr).await;
    accepted.recv().await.unwrap();

    let _stuck = a.call_async(WORK, job(0, 3_600_000));
    until("the request is being handled", || log.has(&Step::Begin(0))).await;
    let sent = Instant::now();
    portion.events.send(RuntimeEvent::Shutdown { emergency: true }).unwrap();
    let (exited, report) = portion.report().await;
    assert_eq!(report, PortionReport::Exited);
    assert!(exited - sent < Duration::from_secs(1), "exited {:?} after the emergency", exited - sent);
    let (told, _) = notice(&mut notices).await;
    assert!(told - sent < Duration::from_secs(1), "clients told {:?} after the emergency", told - sent);
    assert!(!log.has(&Step::End(0)), "the handler was not waited for");
}

// ---------------------------------------------------------------------------------------------
// The client-portion framework (R-RE-6).

/// The client's MP time-outs in the `STARTED` tests: no growth and no jitter of its own, so
/// the pauses measured are the client framework's alone. A call is sent `RETRIES + 1` times,
/// one `ACK` apart, and given up one `ACK` after its last send.
const ACK: Duration = Duration::from_millis(20);
const RETRIES: u32 = 2;

fn plain_timeouts() -> Config {
    Config {
        ack_timeout: ACK,
        ack_timeout_max: ACK,
        backoff: 1.0,
        jitter: 0.0,
        max_retries: RETRIES,
        ..Config::default()
    }
}

/// One `STARTED` call as the server's socket saw it.
#[derive(Clone, Debug)]
struct Attempt {
    transaction: u8,
    first: Instant,
    last: Instant,
    sends: u32,
}

/// A filter that records every `STARTED` request and drops those of the first `drop_first`
/// calls (each call is one transaction, however often it is resent).
fn drop_started(drop_first: usize) -> (Filter, Arc<Mutex<Vec<Attempt>>>) {
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let seen = attempts.clone();
    let filter: Filter = Box::new(move |data| {
        let Ok(d) = dabs_wire::decode(data) else { return true };
        if d.header.kind != Kind::Request || d.header.command != SystemCommand::Started.number() {
            return true;
        }
        let now = Instant::now();
        let mut seen = seen.lock().unwrap();
        let index = match seen.iter().position(|a| a.transaction == d.header.transaction) {
            Some(i) => i,
            None => {
                seen.push(Attempt { transaction: d.header.transaction, first: now, last: now, sends: 0 });
                seen.len() - 1
            }
        };
        seen[index].last = now;
        seen[index].sends += 1;
        index >= drop_first
    });
    (filter, attempts)
}

/// A server whose network drops the first seven `STARTED` calls: the client keeps sending
/// `STARTED` until it is answered, each new call after a pause longer than the one before,
/// the pauses jittered (not one fixed schedule); once answered it stops, and the SDK answers
/// `STARTED` for the portion without troubling the application's handler.
#[tokio::test(start_paused = true)]
async fn started_is_resent_after_ever_longer_jittered_pauses_until_answered() {
    const DROPPED: usize = 7;
    let net = Net::default();
    let log = Log::default();
    let (filter, attempts) = drop_started(DROPPED);
    let server = net.endpoint(Config::default(), Some(filter));
    let addr = server.local_addrs().udp;
    let portion = start_portion(&server, recorder(&log));
    let _accepted = accept_opens(&server, portion.events.clone());

    let mut options = FarmClientOptions::new(addr, APP);
    options.started_attempts = DROPPED as u32 + 1;
    let client = FarmClient::start(net.endpoint(plain_timeouts(), None), options).await.expect("started");
    assert_eq!(client.status(), ClientStatus::Running);
    // Paused time: the 30 s in which every resend, and none after the answer, must happen.
    // What is tested is the schedule over that span, so the span itself is the test.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(
        attempts.len(),
        DROPPED + 1,
        "one STARTED call per attempt, none after the answer: {attempts:#?}"
    );
    for a in &attempts[..DROPPED] {
        assert_eq!(a.sends, RETRIES + 1, "a dropped call was given up after its retries: {a:?}");
    }
    // Each pause: from the client giving up on one call to its next call.
    let pauses: Vec<f64> =
        attempts.windows(2).map(|w| (w[1].first - w[0].last - ACK).as_secs_f64() * 1000.0).collect();
    assert!(pauses[0] > 0.0, "the client paused before resending: {pauses:?}");
    let ratios: Vec<f64> = pauses.windows(2).map(|w| w[1] / w[0]).collect();
    assert!(ratios.iter().all(|r| *r > 1.25), "each pause clearly longer than the last: {pauses:?}");
    let spread =
        ratios.iter().cloned().fold(f64::MIN, f64::max) - ratios.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.02, "the pauses are jittered, not one fixed schedule: {pauses:?}");
    assert!(handler_order(&log.steps()).is_empty(), "STARTED never reached the handler: {:?}", log.steps());
}

/// A server that never hears `STARTED`: the client gives up after `started_attempts` calls
/// and says why.
#[tokio::test(start_paused = true)]
async fn started_gives_up_after_its_attempts() {
    let net = Net::default();
    let (filter, attempts) = drop_started(usize::MAX);
    let server = net.endpoint(Config::default(), Some(filter));
    let addr = server.local_addrs().udp;
    let portion = start_portion(&server, recorder(&Log::default()));
    let _accepted = accept_opens(&server, portion.events.clone());

    let mut options = FarmClientOptions::new(addr, APP);
    options.started_attempts = 3;
    let err =
        FarmClient::start(net.endpoint(plain_timeouts(), None), options).await.err().expect("not started");
    assert!(matches!(err, Error::Call(CallError::GaveUp { .. })), "{err}");
    assert_eq!(attempts.lock().unwrap().len(), 3, "exactly started_attempts STARTED calls");
}

/// A client portion's life: running once started (with the portion's virtual address and
/// server), told to go when the portion shuts down (it drops that server), served by the next
/// portion through a fresh open on its next call, and stopped by `stop`.
#[tokio::test(start_paused = true)]
async fn a_client_follows_a_shutdown_and_stops() {
    let net = Net::default();
    let (first_log, second_log) = (Log::default(), Log::default());
    let server = net.endpoint(Config::default(), None);
    let addr = server.local_addrs().udp;
    let mut first = start_portion(&server, recorder(&first_log));
    let mut accepted = accept_opens(&server, first.events.clone());

    let client = FarmClient::start(net.endpoint(Config::default(), None), FarmClientOptions::new(addr, APP))
        .await
        .unwrap();
    assert_eq!(client.status(), ClientStatus::Running);
    assert_eq!(client.va().as_deref(), Some(VA));
    assert_eq!(client.server().await, Some(Addr::Udp(addr)));
    assert_eq!(client.call(WORK, job(1, 5)).await.unwrap(), job(1, 5));
    accepted.recv().await.unwrap();

    first.events.send(RuntimeEvent::Shutdown { emergency: false }).unwrap();
    assert_eq!(first.report().await.1, PortionReport::Started);
    assert_eq!(first.report().await.1, PortionReport::Exited);
    dabs_testkit::eventually_async(
        "the client to act on SHUTDOWN",
        Duration::from_secs(60),
        Duration::from_millis(1),
        async || client.server().await.is_none(),
    )
    .await;
    assert_eq!(client.status(), ClientStatus::Running, "a SHUTDOWN is not a stop");

    // The application runs again; the client's next call opens a session to it.
    let _second = start_portion(&server, recorder(&second_log));
    assert_eq!(client.call(WORK, job(2, 5)).await.unwrap(), job(2, 5));
    accepted.recv().await.unwrap();
    assert_eq!(handler_order(&first_log.steps()), [1]);
    assert_eq!(handler_order(&second_log.steps()), [2]);
    assert_eq!(client.server().await, Some(Addr::Udp(addr)));

    client.stop().await;
    assert_eq!(client.status(), ClientStatus::Stopped);
    assert_eq!(client.server().await, None);
}

// ---------------------------------------------------------------------------------------------
// Partitions (R-VA-5).

dabs_sdk::partition! {
    /// Checked integer arithmetic: the test's mutable module.
    trait Arith via ArithNet, serve serve_arith {
        /// a + b
        fn add(a: i64, b: i64) -> i64 = 300;
        /// a ÷ b, truncating
        fn div(a: i64, b: i64) -> i64 = 301;
        /// (a ÷ b, a mod b)
        fn div_rem(a: i64, b: i64) -> (i64, i64) = 302;
        /// −a
        fn neg(a: i64) -> i64 = 303;
        /// `n` in words, with a unit
        fn describe(n: i64, unit: String) -> String = 304;
    }
}

/// The local implementation: what a fat client runs in its own task.
struct LocalArith;

fn overflow(what: String) -> PartitionError {
    PartitionError::op("overflow", format!("{what} overflows"))
}

impl Arith for LocalArith {
    async fn add(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        a.checked_add(b).ok_or_else(|| overflow(format!("{a} + {b}")))
    }
    async fn div(&self, a: i64, b: i64) -> Result<i64, PartitionError> {
        if b == 0 {
            return Err(PartitionError::op("division_by_zero", format!("{a} / 0")));
        }
        a.checked_div(b).ok_or_else(|| overflow(format!("{a} / {b}")))
    }
    async fn div_rem(&self, a: i64, b: i64) -> Result<(i64, i64), PartitionError> {
        Ok((self.div(a, b).await?, a.checked_rem(b).ok_or_else(|| overflow(format!("{a} % {b}")))?))
    }
    async fn neg(&self, a: i64) -> Result<i64, PartitionError> {
        a.checked_neg().ok_or_else(|| overflow(format!("-({a})")))
    }
    async fn describe(&self, n: i64, unit: String) -> Result<String, PartitionError> {
        Ok(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
    }
}

/// The server side: the same implementation behind the generated dispatcher.
struct ArithServer;

impl ServerPortion for ArithServer {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> Handled {
        match serve_arith(&LocalArith, command, &payload).await {
            Some(reply) => Handled::Reply(reply),
            None => Handled::Reject(NakCode::UnknownCommand, format!("no operation {command}")),
        }
    }
}

/// Everything the caller code below finds out.
#[derive(Debug, PartialEq)]
struct Outcomes {
    sum: Result<i64, PartitionError>,
    quotient: Result<i64, PartitionError>,
    by_zero: Result<i64, PartitionError>,
    add_overflow: Result<i64, PartitionError>,
    div_overflow: Result<i64, PartitionError>,
    div_rem: Result<(i64, i64), PartitionError>,
    div_rem_by_zero: Result<(i64, i64), PartitionError>,
    neg_overflow: Result<i64, PartitionError>,
    described: Result<String, PartitionError>,
}

/// Caller code written once against the trait.
async fn caller_code(ops: &impl Arith) -> Outcomes {
    Outcomes {
        sum: ops.add(40, 2).await,
        quotient: ops.div(-7, 2).await,
        by_zero: ops.div(1, 0).await,
        add_overflow: ops.add(i64::MAX, 1).await,
        div_overflow: ops.div(i64::MIN, -1).await,
        div_rem: ops.div_rem(-7, 2).await,
        div_rem_by_zero: ops.div_rem(7, 0).await,
        neg_overflow: ops.neg(i64::MIN).await,
        described: ops.describe(3, "apple".into()).await,
    }
}

const OPERATIONS: u64 = 9;

/// The same caller code gets the same answers and the same typed errors whether the `Placed`
/// it holds runs the module locally or calls the portion over MP; both are one type, and only
/// the network one sends anything.
#[tokio::test(start_paused = true)]
async fn a_caller_cannot_tell_a_local_module_from_its_network_partition() {
    let net = Net::default();
    let server = net.endpoint(Config::default(), None);
    let addr = server.local_addrs().udp;
    let portion = start_portion(&server, || ArithServer);
    let _accepted = accept_opens(&server, portion.events.clone());
    let client = FarmClient::start(net.endpoint(Config::default(), None), FarmClientOptions::new(addr, APP))
        .await
        .unwrap();
    let caller: Arc<dyn Caller> = Arc::new(client);

    // One type, either placement.
    let held: [Placed<LocalArith, ArithNet>; 2] =
        [Placed::Local(LocalArith), Placed::Network(ArithNet::new(caller))];
    assert!(held[0].is_local() && !held[1].is_local());

    let local = caller_code(&held[0]).await;
    assert_eq!(portion.figures.handled.load(Ordering::Relaxed), 0, "the local module sent nothing");
    let network = caller_code(&held[1]).await;
    assert_eq!(portion.figures.handled.load(Ordering::Relaxed), OPERATIONS, "each network call crossed MP");
    assert_eq!(local, network, "same answers, same errors");

    assert_eq!(local.sum, Ok(42));
    assert_eq!(local.quotient, Ok(-3));
    assert_eq!(local.div_rem, Ok((-3, -1)));
    assert_eq!(local.described.as_deref(), Ok("3 apples"));
    let code = |r: &Result<i64, PartitionError>| match r {
        Err(PartitionError::Op { code, .. }) => code.clone(),
        other => panic!("expected an operation error, got {other:?}"),
    };
    assert_eq!(code(&network.by_zero), "division_by_zero");
    assert_eq!(code(&network.add_overflow), "overflow");
    assert_eq!(code(&network.div_overflow), "overflow");
    assert_eq!(code(&network.neg_overflow), "overflow");
    assert!(
        matches!(&network.div_rem_by_zero, Err(PartitionError::Op { code, .. }) if code == "division_by_zero")
    );
}
