//! The runtime of one server: its processes (load balancing, statistics, configuration,
//! database) as tasks around one MP endpoint.

use crate::config::NodeConfig;
use crate::db::{Db, PortionRecord};
use crate::membership::{Change, Membership};
use crate::metrics::{Gauges, LatencyHistogram, NodeCounters};
use crate::placement::{Choice, choose};
use crate::settings::{Settings, SettingsError, SettingsPatch};
use crate::stats::{MAX_ANNOUNCED_PORTIONS, NodeStats, PortionFigures, PortionStats, Sampler};
use dabs_farm_proto::portion::{PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_farm_proto::shapes::{
    Assign, OpenAsk, Resolved, cbor, from_cbor, negotiate_security, open_reply_secured,
};
use dabs_net::{Addr, DriverOptions, EndpointHandle, IncomingOpen, IncomingRequest, OpenRequest, Session};
use dabs_wire::{Header, Kind, NakCode, SentTime, SystemCommand};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod deferral;
use deferral::{ClientEntry, Deferred};

/// The runtime's own queue at its endpoint.
pub const RUNTIME_QUEUE: u16 = 0;
/// First queue given to portions.
/// Database key of the last DRAIN nonce taken.
const DRAIN_NONCE: &str = "drain_nonce";
const FIRST_PORTION_QUEUE: u16 = 16;
/// How long the decider waits for a node to confirm an assignment before trying the next.
const ASSIGN_WAIT: Duration = Duration::from_millis(1500);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The endpoint could not bind.
    #[error("cannot bind the MP endpoint at {addr} (group {group}): {source}")]
    Bind {
        /// The bind address.
        addr: SocketAddr,
        /// The farm group.
        group: std::net::SocketAddrV4,
        /// The cause.
        source: std::io::Error,
    },
}

struct Portion {
    app: String,
    queue: u16,
    figures: Arc<PortionFigures>,
    events: mpsc::UnboundedSender<RuntimeEvent>,
    started_ms: u64,
    /// Its clients, to tell them to move.
    clients: Vec<ClientEntry>,
}

struct State {
    membership: Membership,
    portions: BTreeMap<String, Portion>,
    /// Clients this node sent each node as decider that its last announcement does not show.
    pending: crate::placement::Pending,
    /// Clients this node has taken on a decider's behalf since it started (announced).
    accepted: u64,
    accepting: bool,
    seq: u64,
    next_queue: u16,
    next_portion: u64,
    host: crate::stats::HostSample,
    events: std::collections::VecDeque<EventRecord>,
    /// Virtual addresses of dead portions this decider has moved, and where: every client
    /// coming back to one goes to the same new home.
    moved: HashMap<String, String>,
    /// Closed to new clients because message latency passed the high-water mark.
    latency_closed: bool,
    /// Lock/timer time-outs of the last [`STARVATION_WINDOW`]: (when, resource, application,
    /// portion).
    timeouts: std::collections::VecDeque<(Instant, String, String, String)>,
    /// Last spawn per application, for the cool-down.
    last_spawn: HashMap<String, Instant>,
    /// Latency sum and count per portion at the last look, for a windowed mean.
    latency_marks: HashMap<String, (u64, u64)>,
    /// Since when this node has been closed to new clients (latency or starvation).
    closed_since: Option<Instant>,
    /// When a portion was last moved away from here.
    last_move: Option<Instant>,
    /// Portions moved away from here: (virtual address, new node, when).
    moved_out: Vec<(String, String, Instant)>,
    /// The operator drained this node.
    draining: bool,
    /// Highest drain nonce accepted, against replays.
    drain_nonce: u64,
    /// The last self-assessment (R-FO-1).
    health: crate::health::Health,
    /// When an announcement last arrived (ours come back over the group): the MP listener works.
    heard_at: Option<Instant>,
    /// Clients sent to alternates, to call back when healthy again.
    deferred: Vec<Deferred>,
    /// Bounds how fast deferred clients come back.
    return_gate: crate::zones::ReturnGate,
    /// A batch run of FAILOVERs is under way.
    pushing: bool,
    /// Each portion's time-out count at the last look, to see which starved since.
    starve_marks: HashMap<String, u64>,
    /// When each starving portion last gave clients away.
    last_spread: HashMap<String, Instant>,
    /// Sessions of clients sent away from a portion (still open, for a call back), so their
    /// end still reaches the portion.
    left_sessions: HashMap<dabs_net::SessionId, String>,
    /// The last FAILOVER nonce sent.
    last_nonce: u64,
    /// The portion (virtual address) of each open client session, so a session that ends is
    /// taken off its portion's count.
    open_sessions: HashMap<dabs_net::SessionId, String>,
}

/// A node closed to new clients this long moves its busiest portion to a healthier server.
const MOVE_AFTER: Duration = Duration::from_secs(5);
/// At most one move per this interval.
const MOVE_COOLDOWN: Duration = Duration::from_secs(10);

/// How long a time-out counts as current starvation (no new clients, resource use).
const STARVATION_WINDOW: Duration = Duration::from_secs(3);

struct Inner {
    config: NodeConfig,
    me: String,
    started_ms: u64,
    started: Instant,
    mp: SocketAddr,
    endpoint: EndpointHandle,
    db: Db,
    factories: Vec<Arc<dyn PortionFactory>>,
    state: Mutex<State>,
    peers: tokio::sync::Mutex<HashMap<String, Session>>,
    reports: mpsc::UnboundedSender<(String, PortionReport)>,
    settings: Mutex<Settings>,
    counters: NodeCounters,
    latency: Arc<LatencyHistogram>,
    operator: Mutex<Option<SocketAddr>>,
    /// A settings fetch is under way.
    fetching_settings: std::sync::atomic::AtomicBool,
    /// Set by `stop`: every announcement from then on says the node is leaving, so a regular
    /// one sent before the tasks end cannot bring it back into the farm's views.
    stopping: std::sync::atomic::AtomicBool,
}

/// A line of the node's recent history (spawns, moves, members, alerts).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventRecord {
    /// When, Unix ms.
    pub at_ms: u64,
    /// What happened.
    pub text: String,
}

/// A portion as the operator sees it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PortionView {
    /// Virtual address.
    pub va: String,
    /// Application.
    pub app: String,
    /// Queue at the node's endpoint.
    pub queue: u16,
    /// Sessions open on it now.
    pub sessions: u64,
    /// Requests handled.
    pub handled: u64,
    /// Requests waiting.
    pub queue_depth: u64,
    /// Mean request latency, ms.
    pub latency_ms: f64,
    /// Busy time per request handled, ms (recent average); `None` before the first.
    pub service_ms: Option<f64>,
}

/// The operator's handle on a running node: what the web page, the API and the trace tool use.
#[derive(Clone)]
pub struct NodeHandle(Arc<Inner>);

impl NodeHandle {
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.0.me
    }

    /// Its farm's name.
    pub fn farm(&self) -> &str {
        &self.0.config.farm.name
    }

    /// Its MP address.
    pub fn mp_addr(&self) -> SocketAddr {
        self.0.mp
    }

    /// Its endpoint (for the traffic tap).
    pub fn endpoint(&self) -> &EndpointHandle {
        &self.0.endpoint
    }

    /// Records where its operator interface listens, so the farm can link to it.
    pub fn set_operator(&self, addr: SocketAddr) {
        *self.0.operator.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    /// Its statistics now.
    pub fn stats(&self) -> NodeStats {
        self.0.own_stats(false)
    }

    /// The farm as it sees it (itself included), and the current decider.
    pub fn members(&self) -> (Vec<NodeStats>, Option<String>) {
        let st = self.0.state();
        (st.membership.live().cloned().collect(), st.membership.leader().map(str::to_owned))
    }

    /// Its portions.
    pub fn portions(&self) -> Vec<PortionView> {
        let st = self.0.state();
        st.portions
            .iter()
            .map(|(va, p)| PortionView {
                va: va.clone(),
                app: p.app.clone(),
                queue: p.queue,
                sessions: p.figures.sessions.load(Ordering::Relaxed),
                handled: p.figures.handled.load(Ordering::Relaxed),
                queue_depth: p.figures.queue_depth.load(Ordering::Relaxed),
                latency_ms: p.figures.latency_ms(),
                service_ms: p.figures.service_ms(),
            })
            .collect()
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<EventRecord> {
        self.0.state().events.iter().cloned().collect()
    }

    /// The run-time settings in force.
    pub fn settings(&self) -> Settings {
        self.0.settings_guard().clone()
    }

    /// Changes the run-time settings here; the farm picks the change up from this node's
    /// next announcement.
    pub fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, SettingsError> {
        let next = {
            let mut current = self.0.settings_guard();
            let next = current.apply(patch, &self.0.me)?;
            *current = next.clone();
            next
        };
        self.0.store_settings(&next);
        self.0.note(format!("settings changed here (version {})", next.version));
        Ok(next)
    }

    /// The node's metrics in the Prometheus text format.
    pub async fn metrics(&self) -> String {
        let mp = self.0.endpoint.stats().await.unwrap_or_default();
        let (members, portions) = {
            let st = self.0.state();
            (st.membership.len() as u64, st.portions.len() as u64)
        };
        let sessions = mp.sessions_open;
        crate::metrics::render(
            &mp,
            &Gauges { sessions, portions, members },
            &self.0.counters,
            &self.0.latency.0,
        )
    }
}

/// A running node.
pub struct Node {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

use dabs_net::unix_ms;

impl Node {
    /// Starts the runtime: database, endpoint on the farm group, portions from the database
    /// and those to start at initialisation, then the announcing, listening and deciding tasks.
    pub async fn start(
        config: NodeConfig,
        factories: Vec<Arc<dyn PortionFactory>>,
    ) -> Result<Node, NodeError> {
        let db = Db::open(&config.node.data_dir)?;
        let next_portion = db.next_portion_id()?;
        // The last DRAIN nonce taken survives a restart: a captured DRAIN must not be
        // replayable just because the node came back within its 30 s window.
        let drain_nonce = db
            .setting(DRAIN_NONCE)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut options =
            DriverOptions { group: Some((config.farm.group, config.farm.interface)), ..Default::default() };
        // The endpoint refuses the key exchange too: no session is keyed here against the setting.
        options.config.accept_encryption = config.node.accept_encryption;
        let endpoint = dabs_net::spawn(config.node.bind, options)
            .await
            .map_err(|source| NodeError::Bind { addr: config.node.bind, group: config.farm.group, source })?;
        let mp = endpoint.local_addrs().udp;
        let (reports, reports_rx) = mpsc::unbounded_channel();
        let lease = config.node.lease;
        let me = config.node.name.clone();
        let inner = Arc::new(Inner {
            me: me.clone(),
            started_ms: unix_ms(),
            started: Instant::now(),
            mp,
            endpoint: endpoint.clone(),
            db,
            factories,
            state: Mutex::new(State {
                membership: Membership::new(lease),
                portions: BTreeMap::new(),
                pending: Default::default(),
                accepted: 0,
                accepting: true,
                seq: 0,
                next_queue: FIRST_PORTION_QUEUE,
                next_portion,
                host: Default::default(),
                events: Default::default(),
                moved: HashMap::new(),
                latency_closed: false,
                timeouts: Default::default(),
                last_spawn: HashMap::new(),
                latency_marks: HashMap::new(),
                closed_since: None,
                last_move: None,
                moved_out: Vec::new(),
                draining: false,
                drain_nonce,
                health: Default::default(),
                heard_at: None,
                deferred: Vec::new(),
                return_gate: crate::zones::ReturnGate::new(
                    config.failover.return_batch,
                    config.failover.return_interval,
                ),
                pushing: false,
                starve_marks: HashMap::new(),
                last_spread: HashMap::new(),
                left_sessions: HashMap::new(),
                last_nonce: 0,
                open_sessions: HashMap::new(),
            }),
            settings: Mutex::new(Settings::from_config(&config)),
            config,
            peers: tokio::sync::Mutex::new(HashMap::new()),
            reports,
            counters: NodeCounters::default(),
            latency: Arc::new(LatencyHistogram::default()),
            operator: Mutex::new(None),
            fetching_settings: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        inner.load_settings();
        // The configuration in force, kept for a restart and the operator; never the secret.
        let mut stored = inner.config.clone();
        stored.farm.secret = None;
        let _ = inner.db.put_setting("config", stored.to_toml().as_bytes());
        inner.restore_portions();
        inner.start_initial_portions();

        let mut tasks = Vec::new();
        let opens = endpoint.open_requests();
        let requests = endpoint.register_queue(RUNTIME_QUEUE);
        let farm_traffic = endpoint.sessionless();
        let closed = endpoint.closed_sessions();
        tasks.push(tokio::spawn(inner.clone().announce_loop()));
        tasks.push(tokio::spawn(inner.clone().listen_loop(farm_traffic)));
        tasks.push(tokio::spawn(inner.clone().open_loop(opens)));
        tasks.push(tokio::spawn(inner.clone().runtime_loop(requests)));
        tasks.push(tokio::spawn(inner.clone().report_loop(reports_rx)));
        tasks.push(tokio::spawn(inner.clone().health_loop()));
        tasks.push(tokio::spawn(inner.clone().closed_loop(closed)));
        tracing::info!(node = %me, %mp, group = %inner.config.farm.group, "node started");
        Ok(Node { inner, tasks })
    }

    /// The node's MP address.
    pub fn mp_addr(&self) -> SocketAddr {
        self.inner.mp
    }

    /// The operator's handle on this node.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle(self.inner.clone())
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &EndpointHandle {
        &self.inner.endpoint
    }

    /// This node's statistics as it would announce them now.
    pub fn stats(&self) -> NodeStats {
        self.inner.own_stats(false)
    }

    /// The farm as this node sees it.
    pub fn members(&self) -> Vec<NodeStats> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner()).membership.live().cloned().collect()
    }

    /// Stops cleanly: tells the farm it is leaving, shuts its portions down, closes the endpoint.
    pub async fn stop(self) {
        let inner = self.inner.clone();
        inner.stopping.store(true, Ordering::Relaxed);
        inner.state.lock().unwrap_or_else(|e| e.into_inner()).accepting = false;
        for _ in 0..2 {
            inner.announce(true);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events: Vec<_> = {
            let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.portions.values().map(|p| p.events.clone()).collect()
        };
        for e in events {
            let _ = e.send(RuntimeEvent::Shutdown { emergency: false });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for t in &self.tasks {
            t.abort();
        }
        inner.endpoint.shutdown().await;
        // Aborted tasks let go of the runtime as they are dropped; waiting for that (briefly)
        // closes the database, so the same directory can be opened again at once.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&inner) > 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(node = %inner.me, "node stopped");
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, event: String) {
        tracing::info!(node = %self.me, "{event}");
        let mut st = self.state();
        st.events.push_back(EventRecord { at_ms: unix_ms(), text: event });
        while st.events.len() > 100 {
            st.events.pop_front();
        }
    }

    fn settings_guard(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settings stored by an earlier run win over the file's when they are newer.
    fn load_settings(&self) {
        let stored = self
            .db
            .setting("settings")
            .ok()
            .flatten()
            .and_then(|b| from_cbor::<Settings>(&b, "settings").ok());
        if let Some(stored) = stored {
            let mut current = self.settings_guard();
            if stored.newer_than(&current) {
                *current = stored;
            }
        }
    }

    fn store_settings(&self, s: &Settings) {
        if let Err(e) = self.db.put_setting("settings", &cbor(s)) {
            tracing::error!(error = %e, "settings not stored");
        }
    }

    /// Takes settings heard from the farm if they are newer than ours.
    fn adopt_settings(&self, s: Settings) {
        let adopted = {
            let mut current = self.settings_guard();
            if s.newer_than(&current) {
                *current = s.clone();
                true
            } else {
                false
            }
        };
        if adopted {
            self.store_settings(&s);
            self.note(format!("settings version {} from {} adopted", s.version, s.changed_by));
        }
    }

    /// An application's record with the run-time settings applied.
    fn app_config(&self, app: &str) -> Option<crate::config::AppConfig> {
        let base = self.config.app(app)?;
        Some(self.settings_guard().app_config(base))
    }

    fn factory(&self, app: &str) -> Option<&Arc<dyn PortionFactory>> {
        self.factories.iter().find(|f| f.app() == app)
    }

    fn restore_portions(self: &Arc<Self>) {
        match self.db.portions() {
            Ok(records) => {
                for r in records {
                    match self.start_portion(&r.app, Some(r.va.clone()), Some(r.queue), Some(r.started_ms)) {
                        Ok(_) => self.note(format!("restored portion {} on queue {}", r.va, r.queue)),
                        Err(e) => tracing::error!(va = %r.va, error = %e, "cannot restore portion"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read portion records"),
        }
    }

    fn start_initial_portions(self: &Arc<Self>) {
        for app in self.config.apps.clone() {
            let allowed = app.subgroup.is_empty() || app.subgroup.contains(&self.me);
            let running = self.state().portions.values().any(|p| p.app == app.name);
            if app.start_at_init && allowed && !running && self.factory(&app.name).is_some() {
                match self.start_portion(&app.name, None, None, None) {
                    Ok((va, _)) => self.note(format!("started portion {va} at initialisation")),
                    Err(e) => tracing::error!(app = %app.name, error = %e, "cannot start portion"),
                }
            }
        }
    }

    /// Starts a portion of `app`, under `va` and on `queue` when given (a restored or adopted
    /// portion), records it in the database, and returns its address and queue.
    fn start_portion(
        self: &Arc<Self>,
        app: &str,
        va: Option<String>,
        queue: Option<u16>,
        started_ms: Option<u64>,
    ) -> Result<(String, u16), String> {
        let factory =
            self.factory(app).ok_or_else(|| format!("this node has no application {app:?}"))?.clone();
        let (va, queue, next_id) = {
            let mut st = self.state();
            // A portion already running here under this address is the answer: starting
            // another would replace it (a repeated or forged SPAWN must not take it over).
            if let Some(existing) = va.as_ref().and_then(|v| st.portions.get(v)) {
                return Ok((va.clone().unwrap_or_default(), existing.queue));
            }
            let queue = match queue {
                Some(q) => q,
                None => loop {
                    let q = st.next_queue;
                    st.next_queue = st.next_queue.checked_add(1).unwrap_or(FIRST_PORTION_QUEUE);
                    if !st.portions.values().any(|p| p.queue == q) {
                        break q;
                    }
                },
            };
            st.next_queue = st.next_queue.max(queue + 1);
            let named = va.is_none();
            let va = va.unwrap_or_else(|| {
                loop {
                    let n = st.next_portion;
                    st.next_portion += 1;
                    let va = format!("mp://{}/{}/dasp/{}-{}", self.config.farm.name, app, self.me, n);
                    if !st.portions.contains_key(&va) {
                        break va;
                    }
                }
            });
            (va, queue, named.then_some(st.next_portion))
        };
        let requests = self.endpoint.register_queue(queue);
        let (events_tx, events) = mpsc::unbounded_channel();
        let figures = Arc::new(PortionFigures::default());
        let started_ms = started_ms.unwrap_or_else(unix_ms);
        let record = PortionRecord { va: va.clone(), app: app.into(), queue, started_ms };
        match next_id {
            Some(next) => self.db.put_new_portion(&record, next),
            None => self.db.put_portion(&record),
        }
        .map_err(|e| e.to_string())?;
        self.state().portions.insert(
            va.clone(),
            Portion {
                app: app.into(),
                queue,
                figures: figures.clone(),
                events: events_tx,
                started_ms,
                clients: Vec::new(),
            },
        );
        factory.spawn(PortionContext {
            app: app.into(),
            va: va.clone(),
            queue,
            requests,
            events,
            reports: self.reports.clone(),
            figures,
            endpoint: self.endpoint.clone(),
            latency: self.latency.clone(),
            timeouts: self.config.timeouts.clone(),
        });
        Ok((va, queue))
    }

    fn own_stats(&self, leaving: bool) -> NodeStats {
        // Read first and let go: a guard taken inside the struct literal below would live to
        // its end, and a second one there deadlocks.
        let (thresholds, settings_version) = {
            let s = self.settings_guard();
            (s.thresholds(), s.version)
        };
        let mut st = self.state();
        st.seq += 1;
        let mut portions: Vec<PortionStats> = st
            .portions
            .iter()
            .map(|(va, p)| PortionStats {
                app: p.app.clone(),
                va: va.clone(),
                queue: p.queue,
                sessions: p.figures.sessions.load(Ordering::Relaxed),
                queue_depth: p.figures.queue_depth.load(Ordering::Relaxed),
                latency_ms: p.figures.latency_ms() as f32,
                // Recent ones only: a portion that starved once must not look busy forever.
                timeouts: st.timeouts.iter().filter(|(.., v)| v == va).count() as u64,
                service_ms: p.figures.service_ms().map(|ms| ms as f32),
            })
            .collect();
        // An announcement is one datagram: list the portions with the most room first.
        portions.sort_by_key(|p| p.sessions);
        portions.truncate(MAX_ANNOUNCED_PORTIONS);
        NodeStats {
            node: self.me.clone(),
            farm: self.config.farm.name.clone(),
            mp: self.mp,
            operator: self.operator.lock().unwrap_or_else(|e| e.into_inner()).or(self.config.node.operator),
            started_ms: self.started_ms,
            seq: st.seq,
            cpu_percent: st.host.cpu_percent,
            mem_total_mb: st.host.mem_total_mb,
            mem_free_mb: st.host.mem_free_mb,
            disk_free_mb: st.host.disk_free_mb,
            net_bytes_per_s: st.host.net_bytes_per_s,
            accepting: Self::admits(&st, &thresholds),
            draining: st.draining,
            health: st.health.score,
            leaving,
            settings_version,
            no_encryption: !self.config.node.accept_encryption,
            accepted: Some(st.accepted),
            client_alerts: self.counters.client_alerts.load(Ordering::Relaxed),
            moved: {
                let now = Instant::now();
                st.moved_out
                    .iter()
                    .filter(|(.., t)| now.duration_since(*t) < Duration::from_secs(60))
                    .map(|(va, node, _)| (va.clone(), node.clone()))
                    .collect()
            },
            starved: {
                let mut by: BTreeMap<String, u32> = BTreeMap::new();
                for (_, resource, ..) in &st.timeouts {
                    *by.entry(resource.clone()).or_default() += 1;
                }
                by.into_iter().collect()
            },
            portions,
        }
    }

    /// Sends this node's statistics to the group and the seeds, and takes them in itself.
    fn announce(&self, leaving: bool) {
        let leaving = leaving || self.stopping.load(Ordering::Relaxed);
        let stats = self.own_stats(leaving);
        let payload = stats.to_announcement();
        let header = Header { crc: true, ..Header::new(Kind::Request, SystemCommand::Announce.number()) };
        let group = std::iter::once(SocketAddr::V4(self.config.farm.group));
        for to in group.chain(self.config.farm.seeds.iter().copied()) {
            if to != self.mp
                && let Err(e) = self.endpoint.send_sessionless(Addr::Udp(to), header, payload.clone())
            {
                tracing::warn!(error = %e, "announcement not sent");
            }
        }
        if !leaving {
            let mut st = self.state();
            st.pending.observe(&stats);
            st.membership.observe(stats, Instant::now());
        }
    }

    async fn announce_loop(self: Arc<Self>) {
        let mut sampler = Sampler::for_data_dir(&self.config.node.data_dir);
        let mut last_sample = Instant::now() - Duration::from_secs(10);
        let mut tick = tokio::time::interval(self.config.node.announce_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if last_sample.elapsed() >= Duration::from_secs(1) {
                let host = sampler.sample();
                self.state().host = host;
                last_sample = Instant::now();
            }
            self.rebalance();
            self.announce(false);
            let gone = self.state().membership.expire(Instant::now());
            for node in gone {
                self.note(format!("member {node} lapsed (no announcement within the lease)"));
                self.peers.lock().await.remove(&node);
            }
        }
    }

    async fn listen_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(Addr, Header, Vec<u8>)>) {
        let mut last_stored = Instant::now() - Duration::from_secs(60);
        while let Some((from, header, payload)) = rx.recv().await {
            if header.command != SystemCommand::Announce.number() {
                continue;
            }
            let stats = match NodeStats::from_cbor(&payload) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%from, error = %e, "ignored a malformed announcement");
                    continue;
                }
            };
            if stats.farm != self.config.farm.name {
                continue;
            }
            self.state().heard_at = Some(Instant::now());
            if stats.node == self.me {
                continue;
            }
            let mine = self.settings_guard().version;
            // One fetch at a time: announcements keep coming while it is under way.
            if stats.settings_version > mine && !self.fetching_settings.swap(true, Ordering::SeqCst) {
                let (this, node) = (self.clone(), stats.node.clone());
                tokio::spawn(async move {
                    match this.call_node(&node, SystemCommand::Settings.number(), Vec::new()).await {
                        Ok(bytes) => match from_cbor::<Settings>(&bytes, "settings") {
                            Ok(s) => this.adopt_settings(s),
                            Err(e) => tracing::warn!(%node, error = %e, "bad settings"),
                        },
                        Err(e) => tracing::debug!(%node, error = %e, "settings not fetched"),
                    }
                    this.fetching_settings.store(false, Ordering::SeqCst);
                });
            }
            let node = stats.node.clone();
            let change = {
                let mut st = self.state();
                for (va, home) in &stats.moved {
                    st.moved.insert(va.clone(), home.clone());
                }
                let change = st.membership.observe(stats.clone(), Instant::now());
                match change {
                    // Its figures now include the clients it says it accepted.
                    Change::Updated | Change::Joined => st.pending.observe(&stats),
                    Change::Left => st.pending.forget(&node),
                    Change::Stale => {}
                }
                change
            };
            match change {
                Change::Joined => self.note(format!("member {node} joined at {}", stats.mp)),
                Change::Left => {
                    self.note(format!("member {node} left"));
                    self.peers.lock().await.remove(&node);
                }
                _ => {}
            }
            if last_stored.elapsed() >= Duration::from_secs(2) {
                let members: Vec<NodeStats> = self.state().membership.live().cloned().collect();
                for m in members {
                    let _ = self.db.put_farm_stats(&m.node, &m.to_cbor());
                }
                last_stored = Instant::now();
            }
        }
    }

    /// True when this node takes new clients: not stopping, latency below the high-water
    /// mark (until back under the low one), and no portion starving right now.
    fn admits_new_clients(&self, class: Option<&str>) -> bool {
        Self::admits(&self.state(), &self.thresholds_for(class))
    }

    /// The thresholds for a client of `class`: its class's configured ones, else the farm's
    /// run-time settings (changed live by the operator).
    fn thresholds_for(&self, class: Option<&str>) -> crate::zones::Thresholds {
        self.config.failover.class_thresholds(class).unwrap_or_else(|| self.settings_guard().thresholds())
    }

    /// Admission of a new client with `thresholds`: also its health zone (R-FO-2).
    fn admits(st: &State, thresholds: &crate::zones::Thresholds) -> bool {
        st.accepting
            && !st.draining
            && !st.latency_closed
            && st.timeouts.is_empty()
            && thresholds.admits_new(st.health.score)
    }

    /// Drains this node (the operator's failover): no new clients, and every client is told to
    /// move, in batches so the alternates are not hit by a herd. `undo` reopens it.
    fn drain(self: &Arc<Self>, undo: bool) {
        self.state().draining = !undo;
        if undo {
            // The failover process calls the deferred clients back, staggered.
            self.note("drain undone: taking new clients again".into());
            return;
        }
        if self.config.farm.secret.is_none() {
            self.note("draining without a farm secret: clients cannot be told to move".into());
            return;
        }
        let clients: usize = self.state().portions.values().map(|p| p.clients.len()).sum();
        self.note(format!("draining: telling {clients} clients to move"));
        self.push_clients();
    }

    /// Up to three alternates for a client of `app`: the least-loaded other members that take
    /// new clients, each with its emptiest portion of the application.
    /// With `encrypted`, only members that accept encrypted sessions.
    fn alternates(&self, app: &str, encrypted: bool) -> Vec<dabs_farm_proto::seal::Alternate> {
        let Some(app_cfg) = self.app_config(app) else { return Vec::new() };
        let st = self.state();
        let mut members: Vec<&NodeStats> = st
            .membership
            .fresh(Instant::now(), self.fresh_window())
            .filter(|s| s.node != self.me && crate::placement::eligible(&app_cfg, s))
            .filter(|s| !encrypted || !s.no_encryption)
            .collect();
        let farm = crate::stats::ServiceTimes::of(st.membership.fresh(Instant::now(), self.fresh_window()));
        let load = |s: &NodeStats| crate::stats::load_score(s, &farm);
        members.sort_by(|a, b| load(a).total_cmp(&load(b)));
        members
            .into_iter()
            .filter_map(|s| {
                let p = s.portions.iter().filter(|p| p.app == app).min_by_key(|p| p.sessions)?;
                Some(dabs_farm_proto::seal::Alternate { addr: s.mp, va: p.va.clone() })
            })
            .take(3)
            .collect()
    }

    /// The balancing process's periodic look: latency limits, the starvation window, and
    /// resources approaching an application's floor.
    fn rebalance(self: &Arc<Self>) {
        let (high, low) = {
            let s = self.settings_guard();
            (s.max_message_latency_ms as f64, s.low_water_ms as f64)
        };
        let mut changed = None;
        let mut near_floor = Vec::new();
        {
            let mut st = self.state();
            let now = Instant::now();
            while st.timeouts.front().is_some_and(|(t, ..)| now.duration_since(*t) > STARVATION_WINDOW) {
                st.timeouts.pop_front();
            }
            // Mean latency of each portion since the last look; the worst one counts.
            let mut recent: Option<f64> = None;
            let figures: Vec<(String, u64, u64)> = st
                .portions
                .iter()
                .map(|(va, p)| {
                    (
                        va.clone(),
                        p.figures.latency_sum_ms.load(Ordering::Relaxed),
                        p.figures.latency_count.load(Ordering::Relaxed),
                    )
                })
                .collect();
            for (va, sum, count) in figures {
                let (s0, c0) = st.latency_marks.insert(va, (sum, count)).unwrap_or((0, 0));
                if count > c0 {
                    let mean = (sum - s0) as f64 / (count - c0) as f64;
                    recent = Some(recent.map_or(mean, |r: f64| r.max(mean)));
                }
            }
            match recent {
                Some(l) if l > high && !st.latency_closed => {
                    st.latency_closed = true;
                    changed = Some(format!(
                        "latency {l:.0} ms above the high-water mark {high} ms: no new clients"
                    ));
                }
                r if st.latency_closed && r.is_none_or(|l| l < low) => {
                    st.latency_closed = false;
                    changed =
                        Some(format!("latency back under the low-water mark {low} ms: taking new clients"));
                }
                _ => {}
            }
            // Resources nearing an application's minimums (as the settings now say): add
            // capacity elsewhere before this server stops being eligible.
            let apps: std::collections::BTreeSet<String> =
                st.portions.values().map(|p| p.app.clone()).collect();
            for app in apps {
                if let Some(cfg) = self.app_config(&app)
                    && let Some(low) = crate::placement::running_low(&cfg, &st.host)
                {
                    near_floor.push((app, low));
                }
            }
        }
        if let Some(event) = changed {
            self.note(event);
        }
        let move_now = {
            let mut st = self.state();
            let closed = st.latency_closed || !st.timeouts.is_empty();
            let now = Instant::now();
            match (closed, st.closed_since) {
                (false, _) => {
                    st.closed_since = None;
                    false
                }
                (true, None) => {
                    st.closed_since = Some(now);
                    false
                }
                (true, Some(since)) => {
                    now.duration_since(since) >= MOVE_AFTER
                        && st.last_move.is_none_or(|t| now.duration_since(t) >= MOVE_COOLDOWN)
                }
            }
        };
        if move_now {
            self.move_busiest_portion();
        }
        self.spread_starved();
        for (app, (resource, cause)) in near_floor {
            self.spawn_for(&app, resource, cause);
        }
    }

    /// Moves this node's busiest portion to the least-loaded healthy member (R-LB-6). The
    /// target starts a portion under the same virtual address; once the farm has heard of it,
    /// this node stops taking requests for the old one (NAK 7: not run), so its clients
    /// re-open through the farm with their address and carry on at the new home, while the
    /// old portion finishes what it already holds.
    fn move_busiest_portion(self: &Arc<Self>) {
        let now = Instant::now();
        let (va, app, queue, target) = {
            let mut st = self.state();
            let Some((va, p)) = st
                .portions
                .iter()
                .filter(|(_, p)| p.figures.sessions.load(Ordering::Relaxed) > 0)
                .max_by_key(|(_, p)| p.figures.sessions.load(Ordering::Relaxed))
                .map(|(va, p)| (va.clone(), (p.app.clone(), p.queue)))
            else {
                return;
            };
            let Some(app_cfg) = self.app_config(&p.0) else { return };
            let farm = crate::stats::ServiceTimes::of(st.membership.fresh(now, self.fresh_window()));
            let load = |s: &NodeStats| crate::stats::load_score(s, &farm);
            let target = st
                .membership
                .fresh(now, self.fresh_window())
                .filter(|s| s.node != self.me && crate::placement::eligible(&app_cfg, s))
                .min_by(|a, b| load(a).total_cmp(&load(b)))
                .map(|s| s.node.clone());
            let Some(target) = target else { return };
            st.last_move = Some(now);
            (va, p.0, p.1, target)
        };
        self.counters.moves.fetch_add(1, Ordering::Relaxed);
        self.note(format!("moving {va} to {target}: this server is overloaded"));
        let this = self.clone();
        tokio::spawn(async move {
            let payload = cbor(&BTreeMap::from([
                ("app", app.clone()),
                ("va", va.clone()),
                ("cause", format!("moved from {} (overloaded)", this.me)),
            ]));
            if let Err(e) = this.call_node(&target, SystemCommand::Spawn.number(), payload).await {
                this.note(format!("move of {va} to {target} failed: {e}"));
                return;
            }
            // Let the farm hear of the new home before clients are sent looking for it.
            tokio::time::sleep(this.config.node.announce_interval * 2).await;
            this.endpoint.unregister_queue(queue);
            if let Some(p) = this.state().portions.remove(&va) {
                let _ = p.events.send(RuntimeEvent::Shutdown { emergency: false });
            }
            let _ = this.db.remove_portion(&va);
            {
                let mut st = this.state();
                st.moved_out.push((va.clone(), target.clone(), Instant::now()));
                st.moved.insert(va.clone(), target.clone());
            }
            this.note(format!("{va} now lives on {target}"));
        });
    }

    /// Portions of one application this node runs at most (`[balance] max_local_portions`,
    /// 0 meaning one per CPU).
    fn max_local_portions(&self) -> u32 {
        match self.config.balance.max_local_portions {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }

    /// Adds a portion of `app` because of `cause`: here while this server has headroom and
    /// local preference is on, else on the eligible member with the fewest recent time-outs
    /// on `resource` (then the lowest load). At most one per application per cool-down.
    fn spawn_for(self: &Arc<Self>, app: &str, resource: &str, cause: String) {
        let balance = &self.config.balance;
        let now = Instant::now();
        let headroom = {
            let mut st = self.state();
            if st.last_spawn.get(app).is_some_and(|t| now.duration_since(*t) < balance.spawn_cooldown) {
                return;
            }
            st.last_spawn.insert(app.to_owned(), now);
            let max_local = self.max_local_portions();
            let local = st.portions.values().filter(|p| p.app == app).count() as u32;
            f64::from(st.host.cpu_percent) < balance.local_headroom_cpu_percent && local < max_local
        };
        if balance.prefer_local && headroom && resource != "memory" {
            match self.start_portion(app, None, None, None) {
                Ok((va, _)) => {
                    self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                    self.note(format!("spawned {va} here: {cause}"));
                }
                Err(e) => tracing::warn!(%app, error = %e, "spawn failed"),
            }
            return;
        }
        let Some(app_cfg) = self.app_config(app) else { return };
        let target = {
            let st = self.state();
            let members: Vec<&NodeStats> = st.membership.fresh(now, self.fresh_window()).collect();
            crate::placement::spawn_target(&app_cfg, &members, &self.me, resource).map(|s| s.node.clone())
        };
        let Some(target) = target else {
            // Nobody else can take it: a portion starves on its own resources, so one more here
            // still helps, within the local limit.
            let room = {
                let st = self.state();
                let max_local = self.max_local_portions();
                (st.portions.values().filter(|p| p.app == app).count() as u32) < max_local.max(2) * 2
            };
            if room
                && resource != "memory"
                && let Ok((va, _)) = self.start_portion(app, None, None, None)
            {
                self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                self.note(format!("spawned {va} here (no other server can take one): {cause}"));
            } else {
                self.note(format!("no server can take another portion of {app} ({cause})"));
            }
            return;
        };
        let this = self.clone();
        let payload = cbor(&BTreeMap::from([("app", app.to_owned()), ("cause", cause.clone())]));
        tokio::spawn(async move {
            match this.call_node(&target, SystemCommand::Spawn.number(), payload).await {
                Ok(_) => this.note(format!("asked {target} to start a portion: {cause}")),
                Err(e) => tracing::warn!(%target, error = %e, "remote spawn failed"),
            }
        });
    }

    /// How recently a member must have announced to be sent clients or to keep its addresses.
    fn fresh_window(&self) -> Duration {
        self.config.node.announce_interval * 3
    }

    /// True when this node decides group opens: it is the oldest live member and has been up
    /// long enough to have heard everyone older than itself.
    fn is_decider(&self) -> bool {
        self.started.elapsed() >= self.config.node.lease
            && self.state().membership.leader() == Some(self.me.as_str())
    }

    async fn open_loop(self: Arc<Self>, mut opens: mpsc::UnboundedReceiver<IncomingOpen>) {
        while let Some(open) = opens.recv().await {
            let this = self.clone();
            tokio::spawn(async move { this.handle_open(open).await });
        }
    }

    async fn handle_open(self: Arc<Self>, open: IncomingOpen) {
        let ask = match OpenAsk::parse(&open.payload) {
            Ok(a) => a,
            Err(e) => {
                if !open.via_group || self.is_decider() {
                    open.reject(NakCode::Malformed, e.to_string());
                } else {
                    open.pass();
                }
                return;
            }
        };
        if let Some(node) = &ask.node {
            tracing::debug!(peer = %node, "node session opened");
            let _ = open.accept(RUNTIME_QUEUE, cbor(&BTreeMap::from([("node", self.me.clone())]))).await;
            return;
        }
        // A security offer is a demand: refuse it rather than answer in clear.
        // Through the group, the farm can encrypt if any member accepts encryption (a farm set
        // up unevenly); the decider then places the client on one that does.
        let can_encrypt = self.config.node.accept_encryption
            || (open.via_group
                && self
                    .state()
                    .membership
                    .fresh(Instant::now(), self.fresh_window())
                    .any(|s| !s.no_encryption));
        let security = match negotiate_security(ask.security.as_deref(), can_encrypt) {
            Ok(spec) => spec.is_some(),
            Err(why) => {
                if !open.via_group || self.is_decider() {
                    open.reject(NakCode::EncryptionRefused, format!("node {}: {why}", self.me));
                } else {
                    open.pass();
                }
                return;
            }
        };
        if !open.via_group {
            // Sent to this node directly: answer here.
            match self.accept_local(&open.request, &ask, ask.va.as_deref(), false, false, security) {
                Ok(_) => {}
                Err((code, text)) => open.reject(code, text),
            }
            return;
        }
        if !self.is_decider() {
            open.pass();
            return;
        }
        self.decide(open, &ask, security).await;
    }

    /// The decider's part: choose per R-RE-5 and have the chosen node answer.
    async fn decide(self: &Arc<Self>, open: IncomingOpen, ask: &OpenAsk, security: bool) {
        let app = ask.app.as_deref().unwrap_or_default();
        let va_hint = ask.va.as_deref();
        let Some(app_cfg) = self.app_config(app) else {
            let text = format!("farm {} runs no application {app:?}", self.config.farm.name);
            return open.reject(NakCode::UnknownApplication, text);
        };
        let mut choices = {
            let st = self.state();
            let fresh = st.membership.fresh(Instant::now(), self.fresh_window());
            choose(&app_cfg, fresh.filter(|s| !security || !s.no_encryption), &st.pending, va_hint)
        };
        // A client whose portion's node is gone keeps its virtual address: the address moves,
        // once, to the best node for a new portion, and later clients of it follow.
        let known_home = va_hint.and_then(|va| {
            let st = self.state();
            let home = st.moved.get(va)?;
            // Only while the new home is alive; a dead one's addresses are adopted below.
            st.membership
                .fresh(Instant::now(), self.fresh_window())
                .any(|s| s.node == *home)
                .then(|| home.clone())
        });
        if let Some(home) = known_home {
            // The address was moved on purpose: its clients follow it there.
            choices.retain(|c| c.node() != home);
            choices.insert(0, Choice::StartNew { node: home });
        } else if let Some(va) = va_hint {
            let hosted = {
                let st = self.state();
                let now = Instant::now();
                let mut fresh = st.membership.fresh(now, self.fresh_window());
                fresh.any(|s| s.portions.iter().any(|p| p.va == va))
            };
            if !hosted {
                let home = self.state().moved.get(va).cloned().or_else(|| {
                    choices.iter().find(|c| matches!(c, Choice::StartNew { .. })).map(|c| c.node().to_owned())
                });
                if let Some(node) = home {
                    if self.state().moved.insert(va.to_owned(), node.clone()).is_none() {
                        self.counters.moves.fetch_add(1, Ordering::Relaxed);
                        self.note(format!("moving {va} (its node is gone) to {node}"));
                    }
                    choices.retain(|c| c.node() != node);
                    choices.insert(0, Choice::StartNew { node });
                }
            }
        }
        // Every server is closed to new clients by starvation or latency: admission control is
        // a preference, not a refusal, so place the client by load among those still serving
        // (never a draining or stopping one) — R-RE-5's "a more loaded server".
        let overflow = choices.is_empty();
        if overflow {
            let st = self.state();
            let open_to_all: Vec<NodeStats> = st
                .membership
                .fresh(Instant::now(), self.fresh_window())
                .filter(|s| !s.draining && !s.leaving && (!security || !s.no_encryption))
                .map(|s| NodeStats { accepting: true, ..s.clone() })
                .collect();
            choices = choose(&app_cfg, open_to_all.iter(), &st.pending, va_hint);
        }
        for choice in choices.iter().take(4) {
            let node = choice.node().to_owned();
            self.state().pending.sent(&node);
            let (va, start_new) = match choice {
                Choice::Existing { va, .. } => (Some(va.clone()), false),
                Choice::StartNew { .. } => (va_hint.map(str::to_owned), true),
            };
            let result = if node == self.me {
                let local =
                    self.accept_local(&open.request, ask, va.as_deref(), start_new, overflow, security);
                if local.is_ok() {
                    self.state().accepted += 1;
                }
                local.map(|_| ())
            } else {
                self.assign_remote(&node, &open.request, ask, va, start_new, overflow, security).await
            };
            match result {
                Ok(()) => return,
                Err((code, text)) => {
                    tracing::info!(%node, %code, %text, "assignment refused, trying the next choice");
                    self.state().pending.refused(&node);
                }
            }
        }
        open.reject(
            NakCode::NotAccepting,
            format!("no server of farm {} can take {app} now", self.config.farm.name),
        );
    }

    #[allow(clippy::too_many_arguments)]
    async fn assign_remote(
        &self,
        node: &str,
        req: &OpenRequest,
        ask: &OpenAsk,
        va: Option<String>,
        start_new: bool,
        overflow: bool,
        security: bool,
    ) -> Result<(), (NakCode, String)> {
        let Addr::Udp(client) = req.peer else {
            return Err((NakCode::Malformed, "only network clients can be assigned".into()));
        };
        let assign = Assign {
            client,
            tx: req.transaction,
            stamp: req.sent.millis_of_hour(),
            src: req.src,
            crc: req.crc,
            app: ask.app.clone().unwrap_or_default(),
            va,
            start_new,
            overflow,
            class: ask.class.clone(),
            group: ask.group.clone(),
            security,
        };
        let call = self.call_node(node, SystemCommand::Assign.number(), cbor(&assign));
        match tokio::time::timeout(ASSIGN_WAIT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err((NakCode::NotAccepting, format!("{node}: {e}"))),
            Err(_) => Err((NakCode::NotAccepting, format!("{node} did not confirm in {ASSIGN_WAIT:?}"))),
        }
    }

    async fn call_node(&self, node: &str, command: u16, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let session = {
            let mut peers = self.peers.lock().await;
            match peers.get(node) {
                Some(s) => s.clone(),
                None => {
                    let addr =
                        self.state().membership.get(node).map(|m| m.stats.mp).ok_or("not a live member")?;
                    let ask = OpenAsk { node: Some(self.me.clone()), ..Default::default() };
                    let s = self
                        .endpoint
                        .open(Addr::Udp(addr), RUNTIME_QUEUE, ask.to_cbor())
                        .await
                        .map_err(|e| e.to_string())?;
                    peers.insert(node.to_owned(), s.clone());
                    s
                }
            }
        };
        let result = session.call(command, payload).await.map_err(|e| e.to_string());
        if result.is_err() {
            self.peers.lock().await.remove(node);
        }
        result
    }

    /// Gives the client a session on one of this node's portions of `app`: the one at `va`
    /// if this node has it, else one with room unless `start_new`, else a new one (under
    /// `va` when the client is coming back to an address whose node is gone). With `security`
    /// the session is to be encrypted: the REPLY names the specification.
    fn accept_local(
        self: &Arc<Self>,
        req: &OpenRequest,
        ask: &OpenAsk,
        va: Option<&str>,
        start_new: bool,
        overflow: bool,
        security: bool,
    ) -> Result<String, (NakCode, String)> {
        let app = ask.app.as_deref().unwrap_or_default();
        // The decider may run another setting than this node (a farm set up unevenly).
        if security && !self.config.node.accept_encryption {
            return Err((
                NakCode::EncryptionRefused,
                format!("node {}: encryption is turned off here (accept_encryption = false)", self.me),
            ));
        }
        let app_cfg = self.app_config(app);
        if app_cfg.is_none() || self.factory(app).is_none() {
            return Err((
                NakCode::UnknownApplication,
                format!("node {} runs no application {app:?}", self.me),
            ));
        }
        let max = app_cfg.map(|a| a.max_sessions_per_portion).unwrap_or(u64::MAX);
        // A client returning to a portion this node hosts keeps its address even while the
        // node takes no new clients; everyone else needs admission.
        let returning = va.is_some_and(|v| self.state().portions.contains_key(v));
        let overflow_ok = overflow && {
            let st = self.state();
            st.accepting && !st.draining
        };
        let came_back = self.admit_deferred(req)?;
        if !came_back && !returning && !overflow_ok && !self.admits_new_clients(ask.class.as_deref()) {
            return Err((NakCode::NotAccepting, format!("node {} is not accepting new clients", self.me)));
        }
        let serve_once = !came_back
            && self.thresholds_for(ask.class.as_deref()).zone(self.state().health.score)
                == crate::zones::Zone::ServeOnce;
        let existing = {
            let st = self.state();
            let by_va = va.and_then(|v| st.portions.get_key_value(v));
            let with_room = || {
                st.portions
                    .iter()
                    .filter(|(_, p)| p.app == app && p.figures.sessions.load(Ordering::Relaxed) < max)
                    .min_by_key(|(_, p)| (p.figures.sessions.load(Ordering::Relaxed), p.started_ms))
            };
            // The seat is taken now, under the lock that chose it: counted only once the
            // session exists, back-to-back opens overfilled a portion.
            by_va.or(if start_new { None } else { with_room() }).map(|(va, p)| {
                p.figures.sessions.fetch_add(1, Ordering::Relaxed);
                (va.clone(), p.queue)
            })
        };
        let (va, queue) = match existing {
            Some(found) => found,
            None => {
                // Adopt the client's old address only when no live member hosts it.
                let adopt = va
                    .filter(|v| {
                        let st = self.state();
                        let window = self.fresh_window();
                        !st.membership
                            .fresh(Instant::now(), window)
                            .any(|s| s.portions.iter().any(|p| p.va == **v))
                    })
                    .map(str::to_owned);
                let started =
                    self.start_portion(app, adopt, None, None).map_err(|e| (NakCode::NotAccepting, e))?;
                if let Some(p) = self.state().portions.get(&started.0) {
                    p.figures.sessions.fetch_add(1, Ordering::Relaxed);
                }
                self.note(format!("started portion {} for a new client", started.0));
                started
            }
        };
        let payload = open_reply_secured(&va, self.mp, queue, security.then_some(&dabs_proto::SECURITY_SPEC));
        let endpoint = self.endpoint.clone();
        let req = req.clone();
        let (figures, events) = {
            let st = self.state();
            let p = &st.portions[&va];
            (p.figures.clone(), p.events.clone())
        };
        let this = self.clone();
        let portion_va = va.clone();
        let traits = (ask.class.clone(), ask.group.clone());
        tokio::spawn(async move {
            match endpoint.accept_open(req.clone(), queue, payload).await {
                Ok(session) => {
                    let mut st = this.state();
                    // Accepting the same open again gives the same session: count it once
                    // (the seat taken for this repeat goes back).
                    if st.open_sessions.insert(session, portion_va.clone()).is_some() {
                        figures.sessions.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    if let Addr::Udp(addr) = req.peer
                        && let Some(p) = st.portions.get_mut(&portion_va)
                    {
                        p.clients.push(ClientEntry {
                            session,
                            addr,
                            queue: req.src,
                            class: traits.0,
                            group: traits.1,
                            serve_once,
                            retry_after: None,
                            encrypted: security,
                        });
                    }
                    drop(st);
                    let _ = events.send(RuntimeEvent::AddClient { session, peer: req.peer });
                }
                Err(e) => {
                    figures.sessions.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "session not accepted");
                }
            }
        });
        Ok(va)
    }

    /// A client this node deferred, coming back (called back or on its own): admitted while
    /// the node is better than the client's return threshold and the return gate has room
    /// (R-FO-4), else refused so it stays where it is. `Ok(false)`: not a deferred client.
    fn admit_deferred(&self, req: &OpenRequest) -> Result<bool, (NakCode, String)> {
        let Addr::Udp(addr) = req.peer else { return Ok(false) };
        let mut st = self.state();
        let Some(i) = st.deferred.iter().position(|d| d.client.addr == addr && d.client.queue == req.src)
        else {
            return Ok(false);
        };
        let health = st.health.score;
        let th = self.thresholds_for(st.deferred[i].client.class.as_deref());
        if st.draining || !th.admits_returning(health) || !th.keeps_existing(health) {
            return Err((
                NakCode::NotAccepting,
                format!(
                    "node {} is not taking deferred clients back yet (health {health}, return threshold {})",
                    self.me, th.returning
                ),
            ));
        }
        if !st.return_gate.admit(Instant::now()) {
            let f = &self.config.failover;
            return Err((
                NakCode::NotAccepting,
                format!(
                    "node {} takes back at most {} deferred clients per {} ms; stay where you are",
                    self.me,
                    f.return_batch,
                    f.return_interval.as_millis()
                ),
            ));
        }
        st.deferred.remove(i);
        Ok(true)
    }

    async fn runtime_loop(self: Arc<Self>, mut requests: mpsc::UnboundedReceiver<IncomingRequest>) {
        while let Some(req) = requests.recv().await {
            let command = req.request.command;
            match SystemCommand::from_number(command) {
                Some(SystemCommand::GetStatistics) => {
                    let me = self.own_stats(false);
                    let members: Vec<NodeStats> = self.state().membership.live().cloned().collect();
                    req.reply(cbor(&(me, members)));
                }
                Some(SystemCommand::Drain) => {
                    let verdict = match &self.config.farm.secret {
                        None => Err("this farm has no secret: drain is refused".to_owned()),
                        Some(secret) => dabs_farm_proto::seal::open_drain(
                            &req.request.payload,
                            secret,
                            self.mp,
                            unix_ms(),
                            30_000,
                        )
                        .map_err(|e| e.to_string()),
                    };
                    match verdict {
                        Ok((drain, nonce)) if nonce > self.state().drain_nonce => {
                            self.state().drain_nonce = nonce;
                            if let Err(e) = self.db.put_setting(DRAIN_NONCE, &nonce.to_be_bytes()) {
                                tracing::error!(error = %e, "drain nonce not stored");
                            }
                            self.drain(!drain);
                            req.reply(cbor(&BTreeMap::from([("draining", drain)])));
                        }
                        Ok(_) => {
                            self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                            self.note("DRAIN refused: replayed nonce".into());
                            req.reject(NakCode::AuthenticationFailed, "replayed");
                        }
                        Err(e) => {
                            self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                            self.note(format!("DRAIN refused: {e}"));
                            req.reject(NakCode::AuthenticationFailed, "drain not authenticated");
                        }
                    }
                }
                Some(SystemCommand::Spawn) => {
                    let ask: Result<BTreeMap<String, String>, _> = from_cbor(&req.request.payload, "SPAWN");
                    let ask = ask.unwrap_or_default();
                    let (app, cause) =
                        (ask.get("app").cloned().unwrap_or_default(), ask.get("cause").cloned());
                    // With `va`, the portion moves here under its address.
                    let va = ask.get("va").cloned();
                    if let Some(v) = va.as_ref().filter(|v| self.state().portions.contains_key(*v)) {
                        // Already here (a repeated SPAWN): nothing to start, nothing to count.
                        req.reply(cbor(&BTreeMap::from([("va", v.clone())])));
                        continue;
                    }
                    match self.start_portion(&app, va, None, None) {
                        Ok((va, _)) => {
                            self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                            self.note(format!("spawned {va} on request: {}", cause.unwrap_or_default()));
                            req.reply(cbor(&BTreeMap::from([("va", va)])));
                        }
                        Err(e) => req.reject(NakCode::NotAccepting, e),
                    }
                }
                Some(SystemCommand::Settings) => {
                    let s = self.settings_guard().clone();
                    req.reply(cbor(&s));
                }
                Some(SystemCommand::Assign) => match from_cbor::<Assign>(&req.request.payload, "ASSIGN") {
                    Ok(a) => {
                        let open = OpenRequest {
                            peer: Addr::Udp(a.client),
                            transaction: a.tx,
                            sent: SentTime::from_millis_of_hour(a.stamp),
                            src: a.src,
                            crc: a.crc,
                        };
                        let ask = OpenAsk {
                            app: Some(a.app.clone()),
                            class: a.class.clone(),
                            group: a.group.clone(),
                            ..Default::default()
                        };
                        match self.accept_local(
                            &open,
                            &ask,
                            a.va.as_deref(),
                            a.start_new,
                            a.overflow,
                            a.security,
                        ) {
                            Ok(va) => {
                                // Counted before the reply, so a decider that hears the reply
                                // finds the client in this node's next announcement.
                                self.state().accepted += 1;
                                req.reply(cbor(&BTreeMap::from([("va", va)])))
                            }
                            Err((code, text)) => req.reject(code, text),
                        }
                    }
                    Err(e) => req.reject(NakCode::Malformed, e.to_string()),
                },
                Some(SystemCommand::ResolveVa) => {
                    let va: Result<BTreeMap<String, String>, _> =
                        from_cbor(&req.request.payload, "RESOLVE_VA");
                    let va = va.ok().and_then(|m| m.get("va").cloned()).unwrap_or_default();
                    let found = self.state().membership.host_of(&va).map(|(s, queue)| Resolved {
                        va: va.clone(),
                        addr: s.mp,
                        queue,
                        node: s.node.clone(),
                    });
                    match found {
                        Some(r) => req.reply(cbor(&r)),
                        None => {
                            req.reject(NakCode::UnknownQueue, format!("no live portion has address {va}"))
                        }
                    }
                }
                _ => req
                    .reject(NakCode::UnknownCommand, format!("the runtime does not serve command {command}")),
            }
        }
    }

    /// Takes every session that ends off its portion's count, so `sessions` is the number of
    /// open sessions rather than of sessions ever opened.
    async fn closed_loop(self: Arc<Self>, mut closed: mpsc::UnboundedReceiver<dabs_net::SessionId>) {
        while let Some(session) = closed.recv().await {
            let mut st = self.state();
            // A deferred client whose session ended can no longer be called back.
            st.deferred.retain(|d| d.client.session != session);
            // A client sent away is no longer counted; its portion still hears the end.
            if let Some(va) = st.left_sessions.remove(&session) {
                if let Some(p) = st.portions.get(&va) {
                    p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).remove(&session.0);
                    let _ = p.events.send(RuntimeEvent::RemoveClient { session });
                }
                continue;
            }
            // Sessions this node opened to its peers are not in the map.
            let Some(va) = st.open_sessions.remove(&session) else { continue };
            if let Some(p) = st.portions.get_mut(&va) {
                let _ = p
                    .figures
                    .sessions
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                p.clients.retain(|c| c.session != session);
                p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).remove(&session.0);
                let _ = p.events.send(RuntimeEvent::RemoveClient { session });
            }
        }
    }

    async fn report_loop(self: Arc<Self>, mut reports: mpsc::UnboundedReceiver<(String, PortionReport)>) {
        while let Some((va, report)) = reports.recv().await {
            match report {
                PortionReport::Started => tracing::debug!(%va, "portion running"),
                PortionReport::State(s) => tracing::debug!(%va, state = %s, "portion state"),
                PortionReport::Error(e) => self.note(format!("portion {va} error: {e}")),
                PortionReport::Timeout { resource } => {
                    let app = {
                        let st = self.state();
                        let Some(p) = st.portions.get(&va) else {
                            // A portion that has moved away finishing its last requests: its
                            // starvation is the new home's to judge, not this node's.
                            tracing::debug!(%va, %resource, "time-out from a portion no longer here");
                            continue;
                        };
                        p.figures.timeouts.fetch_add(1, Ordering::Relaxed);
                        p.app.clone()
                    };
                    let first_in_window = {
                        let mut st = self.state();
                        let quiet = !st.timeouts.iter().any(|(_, r, a, _)| *r == resource && *a == app);
                        st.timeouts.push_back((Instant::now(), resource.clone(), app.clone(), va.clone()));
                        quiet
                    };
                    // One event per starvation episode, not one per time-out.
                    if first_in_window {
                        self.note(format!("portion {va} starved on {resource}: no new clients here for now"));
                    }
                    self.spawn_for(&app, &resource, format!("portion {va} starved on {resource}"));
                }
                PortionReport::ClientAlert(what) => {
                    self.counters.client_alerts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%va, alert = %what, "client alert");
                    self.note(format!("client alert at portion {va}: {what}"));
                }
                PortionReport::Exited => {
                    self.note(format!("portion {va} exited"));
                    let removed = self.state().portions.remove(&va);
                    if let Some(p) = removed {
                        self.endpoint.unregister_queue(p.queue);
                    }
                }
            }
        }
    }
}
