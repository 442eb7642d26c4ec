//! The runtime of one server: its processes (load balancing, statistics, configuration,
//! database) as tasks around one MP endpoint.

use crate::config::NodeConfig;
use crate::db::Db;
use crate::metrics::{AppGauges, AppLatencies, Gauges, NodeCounters};
use crate::settings::{Settings, SettingsError, SettingsPatch};
use crate::stats::NodeStats;
use dabs_farm_proto::portion::{PortionFactory, PortionReport, RuntimeEvent};
use dabs_net::{DriverOptions, EndpointHandle, Session, unix_ms};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

mod announce;
mod auth;
mod balancing;
mod commands;
mod deciding;
mod failover;
mod jobs;
mod modules;
pub use jobs::{Accepted, Submission, result_json};
pub use modules::ListingError;
mod nearness;
pub use nearness::{NearnessView, RoundTripView};
mod policy;
mod portions;
mod registry;
mod retire;
mod seats;
mod service;
mod state;

use state::State;

/// The runtime's own queue at its endpoint.
pub const RUNTIME_QUEUE: u16 = 0;
/// Database key of the last DRAIN nonce taken.
const DRAIN_NONCE: &str = "drain_nonce";
/// Events kept for the operator's page.
const EVENTS_KEPT: usize = 100;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The database could not be opened.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The DNS front could not start.
    #[error("cannot serve DNS ([dns] bind = {addr}): {source}")]
    Dns {
        /// The address it was to serve.
        addr: SocketAddr,
        /// The cause.
        source: dabs_dns::DnsError,
    },
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
    /// The etcd registry could not be reached or written.
    #[error("cannot register with etcd at {endpoints} (farm.registry = \"etcd\"): {why}")]
    Registry {
        /// The endpoints tried.
        endpoints: String,
        /// What failed.
        why: String,
    },
    /// The host's VIPA could not be added.
    #[error("cannot add the VIPA ([vipa]): {0}")]
    Vipa(crate::service_address::HoldError),
    /// No farm secret, and the node would be reachable from beyond this host.
    #[error(
        "farm {farm} has no secret, so node {node} may only run on loopback (node.bind {bind}, \
         farm.interface and every seed); set farm.secret"
    )]
    SecretRequired {
        /// The farm.
        farm: String,
        /// The node.
        node: String,
        /// Its bind address.
        bind: SocketAddr,
    },
}

struct Inner {
    config: NodeConfig,
    me: String,
    started_ms: u64,
    started: Instant,
    mp: SocketAddr,
    endpoint: EndpointHandle,
    db: Db,
    factories: Vec<Arc<dyn PortionFactory>>,
    /// The applications' client modules, signed.
    packages: modules::Packages,
    state: Mutex<State>,
    /// Recent history for the operator, oldest first (its own lock: written from everywhere).
    events: Mutex<VecDeque<EventRecord>>,
    /// Sessions to other members, one slot per member: opening one to a member that died
    /// (seconds of retries) holds only that member's slot, not every call to the others.
    peers: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Session>>>>>,
    reports: mpsc::UnboundedSender<(String, PortionReport)>,
    settings: Mutex<Settings>,
    counters: NodeCounters,
    /// Keys, counters and replay state of the authenticated control plane.
    auth: auth::Auth,
    /// Request latency per application, for the metrics.
    latency: AppLatencies,
    /// The node's announced call figures, fed by every portion.
    calls: Arc<crate::calls::CallLatency>,
    operator: Mutex<Option<SocketAddr>>,
    /// A settings fetch is under way.
    fetching_settings: std::sync::atomic::AtomicBool,
    /// Set by `stop`: every announcement from then on says the node is leaving, so a regular
    /// one sent before the tasks end cannot bring it back into the farm's views.
    stopping: std::sync::atomic::AtomicBool,
    /// The server monitor's readings of the hosted portions' status objects.
    monitor: Mutex<crate::policy::monitor::ServerMonitor>,
    /// Where the DNS front takes its zone from (`None`: no DNS front).
    zone: Option<tokio::sync::watch::Sender<Arc<dabs_dns::ZoneData>>>,
    /// What the zone was last made of, and its serial.
    zone_key: Mutex<Option<(policy::ZoneKey, u32)>>,
    /// The DNS front's address (UDP and TCP).
    dns_addr: Option<SocketAddr>,
    /// Round trips to client networks, for `closest` (shared with the DNS front).
    nearness: nearness::NearnessShared,
    /// Slots for the probes other members ask of this node.
    probing: Arc<tokio::sync::Semaphore>,
    /// Addresses members named that are not members yet, and since when (seeds mode).
    heard_of: Mutex<HashMap<SocketAddr, Instant>>,
    /// The etcd registry's driver, under `registry = "etcd"`.
    etcd: std::sync::OnceLock<crate::registry::EtcdRegistry>,
    /// What the etcd registry says (empty under multicast).
    registry_view: Arc<Mutex<crate::registry::RegistryView>>,
    /// This node's part in holding the farm's service address.
    service: Mutex<service::ServiceState>,
    /// The job-execution service: archive, workers, the jobs held here.
    jobs: jobs::JobsShared,
}

pub use policy::{ExcludedView, PolicyView, RankedView};

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

    /// The client modules of `app` a client of `class` is entitled to (R-CL).
    pub fn module_listing(
        &self,
        app: &str,
        class: &str,
    ) -> Result<Vec<dabs_farm_proto::modules::ModuleEntry>, ListingError> {
        self.0.packages.listing(app, class)
    }

    /// A module's bytes (never a peer-locked one's).
    pub fn module_bytes(&self, app: &str, name: &str) -> Option<Arc<[u8]>> {
        self.0.packages.bytes(app, name)
    }

    /// The farm's Ed25519 publishing key, which signs client modules.
    pub fn publishing_key(&self) -> [u8; 32] {
        self.0.packages.public_key()
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
        let decider = self.0.decider();
        let st = self.0.state();
        (st.members.membership.live().cloned().collect(), decider)
    }

    /// Its portions.
    pub fn portions(&self) -> Vec<PortionView> {
        let st = self.0.state();
        st.hosting
            .portions
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

    /// The node's event counters (spawns, moves, retirements, ...).
    pub fn counters(&self) -> &NodeCounters {
        &self.0.counters
    }

    /// The charts' data: each member's figures over the last minutes, and the farm's.
    pub fn charts(&self) -> crate::history::Charts {
        self.0.state().members.history.charts()
    }

    /// Members that went down and that no operator has removed yet.
    pub fn down_members(&self) -> Vec<crate::history::DownMember> {
        self.0.state().members.history.down()
    }

    /// Removes down member `name` (and its history) from this node's views.
    pub fn remove_down(&self, name: &str) -> Result<(), crate::history::RemoveError> {
        let mut st = self.0.state();
        if st.members.membership.get(name).is_some() {
            return Err(crate::history::RemoveError::Live(name.to_owned()));
        }
        if !st.members.history.remove_down(name) {
            return Err(crate::history::RemoveError::NotDown(name.to_owned()));
        }
        drop(st);
        self.0.note(format!("member {name} removed from the down list by the operator"));
        Ok(())
    }

    /// Recent events, oldest first.
    pub fn events(&self) -> Vec<EventRecord> {
        self.0.events.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// The run-time settings in force.
    pub fn settings(&self) -> Settings {
        self.0.settings_guard().clone()
    }

    /// Changes the run-time settings here; the farm picks the change up from this node's
    /// next announcement.
    pub fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings, SettingsError> {
        let (next, before) = {
            let mut current = self.0.settings_guard();
            let next = current.apply(patch, &self.0.me)?;
            (next.clone(), std::mem::replace(&mut *current, next))
        };
        self.0.store_settings(&next);
        self.0.note(next.change_event(&before, "made here"));
        Ok(next)
    }

    /// Each application's policy, preferred server and ranking, as this node sees the farm.
    pub fn policies(&self) -> Vec<PolicyView> {
        self.0.policy_views(None)
    }

    /// The client networks `closest` has asked about and each node's round trip to them.
    pub fn nearness(&self) -> Vec<NearnessView> {
        self.0.nearness.view()
    }

    /// The node's metrics in the OpenMetrics text format ([`crate::metrics::CONTENT_TYPE`]).
    pub async fn metrics(&self) -> String {
        let mp = self.0.endpoint.stats().await.unwrap_or_default();
        let me = self.0.own_stats(false);
        let decider = self.0.is_decider();
        let (members, portions, apps) = {
            let st = self.0.state();
            let members: Vec<NodeStats> = st.members.membership.live().cloned().collect();
            let mut apps: std::collections::BTreeMap<String, AppGauges> =
                self.0.config.apps.iter().map(|a| (a.name.clone(), AppGauges::default())).collect();
            for p in st.hosting.portions.values() {
                let a = apps.entry(p.app.clone()).or_default();
                a.portions += 1;
                a.sessions += p.figures.sessions.load(Ordering::Relaxed);
            }
            (members, st.hosting.portions.len() as u64, apps)
        };
        let farm = crate::stats::ServiceTimes::of(&members);
        let gauges = Gauges {
            sessions: mp.sessions_open,
            portions,
            members: members.len() as u64,
            health: me.health,
            load: crate::stats::load_score(&me, &farm),
            accepting: me.accepting,
            draining: me.draining,
            decider,
            apps,
            compute: self.0.compute_stats(),
        };
        crate::metrics::render(&mp, &gauges, &self.0.counters, &self.0.latency)
    }
}

/// The kinds of lifecycle events, as their logs' `event` field names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    /// A member joined the farm.
    Joined,
    /// A member left, or lapsed.
    Left,
    /// Another member decides the group's opens.
    DeciderChanged,
    /// A portion started here.
    Spawned,
    /// A virtual address moved to another node.
    Moved,
    /// A portion here ended.
    Retired,
    /// This node took the farm's service address.
    ServiceTaken,
    /// This node gave the farm's service address back.
    ServiceGiven,
}

impl Lifecycle {
    fn name(self) -> &'static str {
        match self {
            Lifecycle::Joined => "joined",
            Lifecycle::Left => "left",
            Lifecycle::DeciderChanged => "decider_changed",
            Lifecycle::Spawned => "spawned",
            Lifecycle::Moved => "moved",
            Lifecycle::Retired => "retired",
            Lifecycle::ServiceTaken => "service_taken",
            Lifecycle::ServiceGiven => "service_given",
        }
    }
}

/// A running node.
pub struct Node {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dns: Option<dabs_dns::DnsFront>,
}

impl Node {
    /// Starts the runtime: database, endpoint on the farm group, portions from the database
    /// and those to start at initialisation, then the announcing, listening and deciding tasks.
    pub async fn start(
        config: NodeConfig,
        factories: Vec<Arc<dyn PortionFactory>>,
    ) -> Result<Node, NodeError> {
        if config.farm.secret.is_none() && !config.loopback_only() {
            return Err(NodeError::SecretRequired {
                farm: config.farm.name.clone(),
                node: config.node.name.clone(),
                bind: config.node.bind,
            });
        }
        // The VIPA first: the endpoint binds to it.
        if let Some(vipa) = &config.vipa {
            crate::service_address::add(vipa).map_err(NodeError::Vipa)?;
        }
        let db = Db::open(&config.node.data_dir)?;
        let jobs = jobs::JobsShared::open(&config.node.data_dir, &config.jobs, &config.node.name)?;
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
        options.tcp = config.node.tcp;
        // Clients that pin the farm's key (Noise_NK) need the static key derived from the secret.
        options.config.static_key = config.farm.secret.as_deref().map(|s| {
            use dabs_farm_proto::keys::{FarmKeys, Purpose};
            dabs_net::StaticKey(*FarmKeys::derive(s).key(Purpose::NoiseStatic))
        });
        let endpoint = dabs_net::spawn(config.node.bind, options)
            .await
            .map_err(|source| NodeError::Bind { addr: config.node.bind, group: config.farm.group, source })?;
        let mp = endpoint.local_addrs().udp;
        let near = nearness::NearnessShared::default();
        let (zone, dns) = if config.dns.enabled {
            let addr = config.dns.bind.unwrap_or_else(|| SocketAddr::new(config.node.bind.ip(), 0));
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(dabs_dns::ZoneData::default()));
            let round_trips: Arc<dyn dabs_dns::RoundTrips> = Arc::new(near.clone());
            match dabs_dns::DnsFront::start(addr, rx, Some(round_trips)).await {
                Ok(front) => (Some(tx), Some(front)),
                Err(source) => {
                    endpoint.shutdown().await;
                    return Err(NodeError::Dns { addr, source });
                }
            }
        } else {
            (None, None)
        };
        let dns_addr = dns.as_ref().map(dabs_dns::DnsFront::local_addr);
        let (reports, reports_rx) = mpsc::unbounded_channel();
        let me = config.node.name.clone();
        let inner = Arc::new(Inner {
            me: me.clone(),
            started_ms: unix_ms(),
            started: Instant::now(),
            mp,
            endpoint: endpoint.clone(),
            db,
            packages: modules::Packages::build(&factories, config.farm.secret.as_deref()),
            factories,
            state: Mutex::new(State::new(&config, next_portion, drain_nonce)),
            events: Mutex::new(VecDeque::new()),
            settings: Mutex::new(Settings::from_config(&config)),
            auth: auth::Auth::new(config.farm.secret.as_deref()),
            config,
            peers: tokio::sync::Mutex::new(HashMap::new()),
            reports,
            counters: NodeCounters::default(),
            latency: AppLatencies::default(),
            calls: Arc::default(),
            operator: Mutex::new(None),
            fetching_settings: std::sync::atomic::AtomicBool::new(false),
            stopping: std::sync::atomic::AtomicBool::new(false),
            monitor: Mutex::default(),
            zone,
            zone_key: Mutex::new(None),
            dns_addr,
            nearness: near,
            probing: Arc::new(tokio::sync::Semaphore::new(nearness::MAX_PROBING)),
            heard_of: Mutex::new(HashMap::new()),
            etcd: std::sync::OnceLock::new(),
            registry_view: Arc::default(),
            service: Mutex::default(),
            jobs,
        });
        if let Some(why) = &inner.endpoint.local_addrs().group_error {
            let seeds = if inner.config.farm.seeds.is_empty() {
                "no seeds configured"
            } else {
                "announcing to the seeds"
            };
            inner.note(format!("{why}: {seeds}"));
        }
        inner.load_settings();
        // The configuration in force, kept for a restart and the operator; never the secret,
        // never the operator token.
        let mut stored = inner.config.clone();
        stored.farm.secret = None;
        stored.operator.token = None;
        let _ = inner.db.put_setting("config", stored.to_toml().as_bytes());
        inner.restore_portions();
        inner.start_initial_portions();

        let mut tasks = Vec::new();
        if let Some(endpoints) = inner.config.farm.registry.etcd() {
            let (events, events_rx) = mpsc::unbounded_channel();
            let started = crate::registry::EtcdRegistry::start(
                endpoints,
                &inner.config.farm.name,
                &inner.own_stats(false),
                inner.config.node.lease,
                inner.registry_view.clone(),
                events,
            )
            .await;
            match started {
                Ok(etcd) => {
                    let _ = inner.etcd.set(etcd);
                    tasks.push(tokio::spawn(inner.clone().registry_loop(events_rx)));
                }
                Err(why) => {
                    if let Some(dns) = dns {
                        dns.stop().await;
                    }
                    endpoint.shutdown().await;
                    return Err(NodeError::Registry { endpoints: endpoints.join(", "), why });
                }
            }
        }
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
        tasks.push(tokio::spawn(inner.clone().monitor_loop()));
        tasks.push(tokio::spawn(inner.clone().nearness_loop()));
        if inner.config.service.is_some() {
            tasks.push(tokio::spawn(inner.clone().service_loop()));
        }
        tasks.push(tokio::spawn(inner.clone().jobs_loop()));
        tasks.push(tokio::spawn(inner.clone().report_jobs_loop()));
        inner.refresh_zone();
        tracing::info!(node = %me, %mp, group = %inner.config.farm.group, dns = ?dns_addr, "node started");
        Ok(Node { inner, tasks, dns })
    }

    /// The node's MP address.
    pub fn mp_addr(&self) -> SocketAddr {
        self.inner.mp
    }

    /// Where its DNS front answers (UDP and TCP), if it runs one.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.inner.dns_addr
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
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .membership
            .live()
            .cloned()
            .collect()
    }

    /// Stops cleanly: tells the farm it is leaving, shuts its portions down, closes the endpoint.
    pub async fn stop(self) {
        let inner = self.inner.clone();
        inner.stopping.store(true, Ordering::Relaxed);
        inner.state.lock().unwrap_or_else(|e| e.into_inner()).hosting.accepting = false;
        // First out of the registry: the next decider is named while this one winds down.
        if let Some(etcd) = inner.etcd.get() {
            etcd.stop().await;
        }
        // Given back before the farm hears this node leave, so the next holder's address is
        // not on two hosts at once.
        if inner.holds_service() {
            inner.give_back_service(None).await;
        }
        for _ in 0..2 {
            inner.announce(true);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events: Vec<_> = {
            let st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.hosting.portions.values().map(|p| p.events.clone()).collect()
        };
        for e in events {
            let _ = e.send(RuntimeEvent::Shutdown { emergency: false });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for t in &self.tasks {
            t.abort();
        }
        if let Some(pool) = &inner.jobs.pool {
            pool.stop();
        }
        if let Some(dns) = self.dns {
            dns.stop().await;
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
        self.record(event);
    }

    /// A step in the life of the farm or of a portion: logged at info with `event` naming
    /// the kind, so a log can be filtered on it, and kept for the operator like any event.
    fn lifecycle(&self, kind: Lifecycle, event: String) {
        tracing::info!(node = %self.me, event = kind.name(), "{event}");
        self.record(event);
    }

    fn record(&self, event: String) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.push_back(EventRecord { at_ms: unix_ms(), text: event });
        while events.len() > EVENTS_KEPT {
            events.pop_front();
        }
    }

    fn settings_guard(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An application's record with the run-time settings applied.
    fn app_config(&self, app: &str) -> Option<crate::config::AppConfig> {
        let base = self.config.app(app)?;
        Some(self.settings_guard().app_config(base))
    }

    fn factory(&self, app: &str) -> Option<&Arc<dyn PortionFactory>> {
        self.factories.iter().find(|f| f.app() == app)
    }

    /// How recently a member must have announced to be sent clients or to keep its addresses.
    fn fresh_window(&self) -> Duration {
        self.config.node.announce_interval * 3
    }
}
