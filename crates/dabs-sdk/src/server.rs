//! The server-portion framework: one loop per portion serving all its clients, with runtime
//! events handled beside it.

use dabs_farm_proto::portion::LatencyObserver;
use dabs_farm_proto::portion::{PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_farm_proto::records::PortionFigures;
use dabs_net::SessionId;
use dabs_wire::{NakCode, SystemCommand};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Answer with this payload.
    Reply(Vec<u8>),
    /// Refuse with a NAK.
    Reject(NakCode, String),
}

/// A server portion: what an application writes.
pub trait ServerPortion: Send + 'static {
    /// Handles one request. Requests are taken one at a time, in arrival order.
    fn handle(&mut self, command: u16, payload: Vec<u8>) -> impl Future<Output = Handled> + Send;

    /// A runtime event (a client added, a shutdown coming). Called between requests; keep it
    /// short, it must not hold up the loop.
    fn on_event(&mut self, _event: &RuntimeEvent) {}

    /// A short description of the portion's state, for state requests and the operator.
    fn state(&self) -> String {
        "running".into()
    }
}

/// Runs `portion` on the context the runtime gave it, until shutdown.
pub async fn run<P: ServerPortion>(portion: P, ctx: PortionContext) {
    run_workers(vec![portion], ctx).await
}

/// Runs a portion as several workers (a vertical split): each worker is its own instance,
/// all take requests from the portion's one queue, so a worker stuck in a slow critical
/// section does not hold up the others. Runtime events are handled here, beside the workers.
pub async fn run_workers<P: ServerPortion>(portions: Vec<P>, ctx: PortionContext) {
    run_growing(portions, ctx, None).await
}

/// How a portion grows its pool of workers (R-LB-7).
pub struct Growth<P> {
    /// Makes one more worker.
    pub make: Arc<dyn Fn() -> P + Send + Sync>,
    /// Workers it may reach: its CPUs, or fewer when configured so.
    pub ceiling: usize,
}

/// Like [`run_workers`], and with `growth` the pool grows (R-LB-7): a request that waited for
/// a worker longer than the portion's `workers` time-out (from when the endpoint queued it
/// until a worker took it) adds a worker, at most one per time-out so the last one can take
/// effect, until the ceiling; only then are such waits reported as [`PortionReport::Timeout`]
/// on `workers` (at most one per time-out), and the farm spawns another portion. Workers added
/// later have not seen the runtime events before them (clients added, for instance).
pub async fn run_growing<P: ServerPortion>(portions: Vec<P>, ctx: PortionContext, growth: Option<Growth<P>>) {
    let wait_limit = ctx
        .timeouts
        .get(WORKERS_RESOURCE)
        .or_else(|| ctx.timeouts.get(dabs_farm_proto::timeouts::DEFAULT_TIMEOUT_KEY))
        .copied()
        .unwrap_or(dabs_farm_proto::timeouts::DEFAULT_TIMEOUT);
    let PortionContext { requests, mut events, reports, va, figures, endpoint, latency, .. } = ctx;
    let reporter = Reporter { va, reports };
    let report = |r| reporter.send(r);
    report(PortionReport::Started);
    let queue = Arc::new(tokio::sync::Mutex::new(requests));
    let mut portions: Vec<Arc<tokio::sync::Mutex<P>>> =
        portions.into_iter().map(|p| Arc::new(tokio::sync::Mutex::new(p))).collect();
    // None: keep serving; Some(emergency): stop (after draining the queue unless emergency).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<bool>);
    let clock = Clock {
        origin: tokio::time::Instant::now(),
        workers: Arc::new(std::sync::atomic::AtomicU32::new(portions.len().max(1) as u32)),
    };
    // Waits past the limit, from the workers to this loop (only when the pool may grow).
    let (waited_tx, mut waited_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let waited = growth.as_ref().map(|_| (waited_tx, wait_limit));
    let mut last_growth: Option<tokio::time::Instant> = None;
    let mut last_timeout: Option<tokio::time::Instant> = None;
    let mut workers = tokio::task::JoinSet::new();
    let spawn_worker = |workers: &mut tokio::task::JoinSet<()>, portion: &Arc<tokio::sync::Mutex<P>>| {
        let (portion, queue, mut stop) = (portion.clone(), queue.clone(), stop_rx.clone());
        let (figures, histogram, reporter) = (figures.clone(), latency.clone(), reporter.clone());
        let (clock, waited) = (clock.clone(), waited.clone());
        workers.spawn(async move {
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.changed() => None,
                    r = async {
                        // Whoever holds the queue waits for the next request, then lets go.
                        let mut q = queue.lock().await;
                        let r = q.recv().await;
                        (r, q.len())
                    } => Some(r),
                };
                match next {
                    Some((Some(req), depth)) => {
                        // The wait for a worker, on this host's clock (the sender's stamp would
                        // count its clock, the network and retransmissions too).
                        if let Some((tx, limit)) = &waited
                            && req.queued_at.elapsed() > *limit
                        {
                            let _ = tx.send(());
                        }
                        let served = Served {
                            figures: &figures,
                            histogram: &*histogram,
                            reporter: &reporter,
                            clock: clock.clone(),
                        };
                        serve_one(&mut *portion.lock().await, served, req, depth).await;
                    }
                    Some((None, _)) => return,
                    None => {
                        if *stop.borrow() == Some(false) {
                            while let Ok(req) = queue.lock().await.try_recv() {
                                let served = Served {
                                    figures: &figures,
                                    histogram: &*histogram,
                                    reporter: &reporter,
                                    clock: clock.clone(),
                                };
                                serve_one(&mut *portion.lock().await, served, req, 0).await;
                            }
                        }
                        return;
                    }
                }
            }
        });
    };
    for portion in &portions {
        spawn_worker(&mut workers, portion);
    }
    let mut clients: Vec<SessionId> = Vec::new();
    let mut events_open = true;
    loop {
        tokio::select! {
            Some(()) = waited_rx.recv() => {
                let Some(g) = &growth else { continue };
                let settled = last_growth.is_none_or(|t| t.elapsed() >= wait_limit);
                if portions.len() < g.ceiling {
                    // One worker per time-out: the waits already queued were measured before
                    // the last one could help.
                    if settled {
                        let portion = Arc::new(tokio::sync::Mutex::new((g.make)()));
                        spawn_worker(&mut workers, &portion);
                        portions.push(portion);
                        clock.workers.store(portions.len() as u32, Ordering::Relaxed);
                        last_growth = Some(tokio::time::Instant::now());
                        report(PortionReport::Grew { workers: portions.len() as u32 });
                    }
                } else if last_timeout.is_none_or(|t| t.elapsed() >= wait_limit) {
                    // At the ceiling: the farm's to solve (another portion elsewhere), told
                    // once per time-out however many requests waited.
                    last_timeout = Some(tokio::time::Instant::now());
                    report(PortionReport::Timeout { resource: WORKERS_RESOURCE.into() });
                }
            }
            event = events.recv(), if events_open => {
                let Some(event) = event else {
                    events_open = false;
                    continue;
                };
                if let RuntimeEvent::Shutdown { emergency } = event {
                    // Tell the clients first, so they move before they time out.
                    notify_shutdown(&endpoint, &clients, emergency);
                    let _ = stop_tx.send(Some(emergency));
                    if emergency {
                        // At once: before the portion's callback, which would wait for a
                        // handler in progress to let go of the portion.
                        workers.abort_all();
                        while workers.join_next().await.is_some() {}
                        // Queued requests never ran: refused, their clients re-open at once
                        // instead of waiting out the reply time-out.
                        while let Ok(req) = queue.lock().await.try_recv() {
                            req.reject(NakCode::NotAccepting, "the portion shut down (emergency)");
                        }
                    }
                    for p in &portions {
                        p.lock().await.on_event(&event);
                    }
                    while let Some(done) = workers.join_next().await {
                        report_panic(&report, done);
                    }
                    report(PortionReport::Exited);
                    return;
                }
                for p in &portions {
                    p.lock().await.on_event(&event);
                }
                match event {
                    RuntimeEvent::StateRequest(tx) => {
                        let _ = tx.send(portions[0].lock().await.state());
                    }
                    RuntimeEvent::AddClient { session, .. } => clients.push(session),
                    RuntimeEvent::RemoveClient { session } => clients.retain(|s| *s != session),
                    RuntimeEvent::Shutdown { .. } => unreachable!("handled above"),
                }
            }
            done = workers.join_next() => {
                match done {
                    // Every worker ended: the queue closed.
                    None => {
                        report(PortionReport::Exited);
                        return;
                    }
                    Some(done) => report_panic(&report, done),
                }
            }
        }
    }
}

/// Sends `SHUTDOWN` (`{"kind": "clean"|"emergency"}`) to each client session, without
/// waiting for answers.
pub(crate) fn notify_shutdown(endpoint: &dabs_net::EndpointHandle, clients: &[SessionId], emergency: bool) {
    let notice =
        if emergency { b"\xa1\x64kind\x69emergency".to_vec() } else { b"\xa1\x64kind\x65clean".to_vec() };
    for s in clients {
        drop(endpoint.call_async(*s, SystemCommand::Shutdown.number(), notice.clone()));
    }
}

/// A worker that panicked is an error the runtime hears of (the others carry on).
fn report_panic(report: &impl Fn(PortionReport), done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        let p = e.into_panic();
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        report(PortionReport::Error(format!("a worker panicked: {what}")));
    }
}

/// Sends a portion's reports to its runtime, tagged with its virtual address.
#[derive(Clone)]
pub(crate) struct Reporter {
    pub(crate) va: String,
    pub(crate) reports: tokio::sync::mpsc::UnboundedSender<(String, PortionReport)>,
}

impl Reporter {
    pub(crate) fn send(&self, report: PortionReport) {
        let _ = self.reports.send((self.va.clone(), report));
    }
}

/// What a worker serves a request with.
struct Served<'a> {
    figures: &'a PortionFigures,
    histogram: &'a dyn LatencyObserver,
    reporter: &'a Reporter,
    clock: Clock,
}

/// The resource a portion's pool of workers is reported as when requests wait for a worker.
pub const WORKERS_RESOURCE: &str = "workers";

/// What the workers of one portion time their handlers with.
#[derive(Clone)]
struct Clock {
    /// The portion's start: service times are recorded against time since then.
    origin: tokio::time::Instant,
    /// Workers taking requests from the portion's one queue (grows with the pool).
    workers: Arc<std::sync::atomic::AtomicU32>,
}

async fn serve_one<P: ServerPortion>(
    portion: &mut P,
    served: Served<'_>,
    req: dabs_net::IncomingRequest,
    depth: usize,
) {
    let Served { figures: f, histogram, reporter, clock } = served;
    f.queue_depth.store(depth as u64, Ordering::Relaxed);
    let Some(req) = intake(f, histogram, reporter, req) else { return };
    let command = req.request.command;
    let payload = req.request.payload.clone();
    // The handler's time is the portion's service time (tokio's clock, which tests can pause).
    // With several workers on the one queue, each request holds a W-th of the portion: at
    // saturation handler time ÷ W is exactly one over its throughput (Little's law).
    let started = tokio::time::Instant::now();
    f.in_progress.fetch_add(1, Ordering::Relaxed);
    let handled = portion.handle(command, payload).await;
    f.in_progress.fetch_sub(1, Ordering::Relaxed);
    let ended = tokio::time::Instant::now();
    f.record_service(ended - clock.origin, (ended - started) / clock.workers.load(Ordering::Relaxed).max(1));
    match handled {
        Handled::Reply(r) => req.reply(r),
        Handled::Reject(code, text) => req.reject(code, text),
    }
    f.handled.fetch_add(1, Ordering::Relaxed);
}

/// Takes a request in: records its latency (from the sender's stamp to now, so time waiting
/// in the portion's queue counts, which is what starvation looks like) and answers the
/// runtime's own commands (`STARTED`, `ALERT`). Gives the request back when it is the
/// application's to handle.
pub(crate) fn intake(
    f: &PortionFigures,
    histogram: &dyn LatencyObserver,
    reporter: &Reporter,
    req: dabs_net::IncomingRequest,
) -> Option<dabs_net::IncomingRequest> {
    let now_ms = dabs_net::unix_ms();
    let latency = dabs_wire::latency(req.request.id.sent, now_ms);
    if !latency.clock_skew {
        histogram.observe(f64::from(latency.millis) / 1000.0);
        f.latency_sum_ms.fetch_add(u64::from(latency.millis), Ordering::Relaxed);
        f.latency_count.fetch_add(1, Ordering::Relaxed);
        if req.request.command != SystemCommand::Started.number() {
            // Only real work counts as "served" for the serve-once zone.
            f.observe_client(req.request.id.session.0, latency.millis as f32);
        }
    }
    let command = req.request.command;
    if command == SystemCommand::Started.number() {
        req.reply(Vec::new());
        return None;
    }
    if command == SystemCommand::Alert.number() {
        // Not the application's business: the runtime counts and shows it.
        reporter.send(PortionReport::ClientAlert(describe_alert(&req.request.peer, &req.request.payload)));
        req.reply(Vec::new());
        return None;
    }
    Some(req)
}

/// A client's `ALERT` payload (CBOR map, see docs/protocol.md) as a line for the operator;
/// whatever the client sent, the alert is kept, with what could not be read said plainly.
fn describe_alert(peer: &dabs_net::Addr, payload: &[u8]) -> String {
    let alert: Result<std::collections::BTreeMap<String, ciborium::Value>, _> =
        ciborium::from_reader(payload);
    let text = |m: &std::collections::BTreeMap<String, ciborium::Value>, k: &str| {
        m.get(k).and_then(|v| v.as_text()).map(str::to_owned).unwrap_or_else(|| "?".into())
    };
    match alert {
        Ok(m) => format!(
            "client {peer} reports {} from {}: {}",
            text(&m, "alert"),
            text(&m, "from"),
            text(&m, "reason")
        ),
        Err(e) => format!("client {peer} sent an alert that is not a CBOR map ({e})"),
    }
}

/// A status figure computed from a portion's live figures (see [`PortionFactoryFn::with_status`]).
pub type StatusFn = Arc<dyn Fn(&PortionFigures) -> Result<f64, String> + Send + Sync>;

/// A [`PortionFactory`] from an application name and a constructor.
pub struct PortionFactoryFn<P, F> {
    app: String,
    make: Arc<F>,
    /// Ceiling of a growing pool (R-LB-7); `None`: a fixed pool.
    grow_to: Option<usize>,
    workers: usize,
    status: Vec<(String, StatusFn)>,
    modules: Vec<dabs_farm_proto::modules::ModuleSource>,
    _portion: PhantomData<fn() -> P>,
}

/// The figures a portion has pending: requests queued plus those a handler is working on.
pub fn pending_operations(f: &PortionFigures) -> Result<f64, String> {
    Ok((f.queue_depth.load(Ordering::Relaxed) + f.in_progress.load(Ordering::Relaxed)) as f64)
}

impl<P, F> PortionFactoryFn<P, F>
where
    P: ServerPortion,
    F: Fn() -> P + Send + Sync + 'static,
{
    /// Portions of `app` made by `make`.
    pub fn new(app: &str, make: F) -> Self {
        Self {
            app: app.into(),
            make: Arc::new(make),
            grow_to: None,
            workers: 1,
            status: Vec::new(),
            modules: Vec::new(),
            _portion: PhantomData,
        }
    }

    /// Every portion publishes a status object `name` (seed 003) whose figure `read` computes
    /// from the portion's live figures or from the application's own state; the node's server
    /// monitor reads it at the frequency the application's policy asks for. `name` must be 1
    /// to 32 of a-z 0-9 _ - (checked when a portion starts: a bad one is reported as an error).
    pub fn with_status(
        mut self,
        name: &str,
        read: impl Fn(&PortionFigures) -> Result<f64, String> + Send + Sync + 'static,
    ) -> Self {
        self.status.push((name.to_owned(), Arc::new(read)));
        self
    }

    /// The client modules the application publishes (R-CL): the farm signs and serves them.
    pub fn with_modules(mut self, modules: Vec<dabs_farm_proto::modules::ModuleSource>) -> Self {
        self.modules = modules;
        self
    }

    /// A vertical split: every portion runs one worker per CPU of the server.
    pub fn vertical_split(mut self) -> Self {
        self.workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        self
    }

    /// Every portion starts with its workers and grows its pool, one worker each time its
    /// requests keep waiting past the `workers` time-out, up to `ceiling` workers, never more
    /// than the server's CPUs nor the operator's `[[app]] max_workers` (R-LB-7); only then
    /// does the farm hear of the waits.
    pub fn growing(mut self, ceiling: usize) -> Self {
        self.grow_to = Some(ceiling.max(1));
        self
    }

    /// Every portion runs `n` workers (at least one).
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }
}

impl<P, F> PortionFactory for PortionFactoryFn<P, F>
where
    P: ServerPortion,
    F: Fn() -> P + Send + Sync + 'static,
{
    fn app(&self) -> &str {
        &self.app
    }

    fn modules(&self) -> Vec<dabs_farm_proto::modules::ModuleSource> {
        self.modules.clone()
    }

    fn spawn(&self, ctx: PortionContext) {
        for (name, read) in &self.status {
            let (figures, read) = (Arc::downgrade(&ctx.figures), read.clone());
            // Weak: the object must not keep a retired portion's figures alive.
            let object = move || match figures.upgrade() {
                Some(f) => read(&f),
                None => Err("the portion has stopped".to_owned()),
            };
            if let Err(e) = ctx.figures.status.publish(name, Arc::new(object)) {
                let _ = ctx.reports.send((ctx.va.clone(), PortionReport::Error(e.to_string())));
            }
        }
        let growth = self.grow_to.map(|ceiling| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let ceiling = ctx.max_workers.map_or(ceiling, |configured| ceiling.min(configured.max(1)));
            let make = self.make.clone();
            Growth {
                make: Arc::new(move || make()) as Arc<dyn Fn() -> P + Send + Sync>,
                ceiling: ceiling.min(cpus),
            }
        });
        // A growing pool starts within its ceiling.
        let start = growth.as_ref().map_or(self.workers, |g| self.workers.min(g.ceiling));
        let portions = (0..start).map(|_| (self.make)()).collect();
        tokio::spawn(run_growing(portions, ctx, growth));
    }
}
