//! Prometheus metrics, one registry per node, rendered in the OpenMetrics text format
//! (served as `application/openmetrics-text`, the type that keeps counters' types).

use dabs_wire::NakCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The version of dabs this node runs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this node was built from (`unknown` when built outside a git checkout).
pub const GIT_COMMIT: &str = match option_env!("DABS_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The node's own event counters.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Portions started (not counting restored ones).
    pub spawns: AtomicU64,
    /// Virtual addresses moved to another node.
    pub moves: AtomicU64,
    /// FAILOVER messages sent.
    pub failovers: AtomicU64,
    /// Messages refused because they failed authentication.
    pub auth_failures: AtomicU64,
    /// Alerts raised by clients of this node's portions (a FAILOVER they could not verify).
    pub client_alerts: AtomicU64,
    /// Portions stopped for having no clients (`retire_idle_after_ms`).
    pub portions_retired: AtomicU64,
    /// Jobs this node accepted (it owns them).
    pub jobs_accepted: AtomicU64,
    /// Task results this node committed first, as a job's owner.
    pub job_results_committed: AtomicU64,
    /// Results of a second run of a task already committed (a task run twice; the first is
    /// kept). The same result delivered again is not counted.
    pub job_results_repeated: AtomicU64,
    /// Tasks placed again because their compute server's registration lapsed.
    pub job_tasks_replaced: AtomicU64,
    /// Jobs this node took over as their replica when the owner was gone.
    pub jobs_taken_over: AtomicU64,
}

/// Request latency buckets: 0.1 ms to about 3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The label set of per-application metrics.
type AppLabel = Vec<(&'static str, String)>;

fn app_label(app: &str) -> AppLabel {
    vec![("app", app.to_owned())]
}

/// Request latency per application: one long-lived histogram each, so its `_count` is the
/// application's calls and never goes back when a portion ends.
#[derive(Clone, Debug)]
pub struct AppLatencies(Family<AppLabel, Histogram, fn() -> Histogram>);

impl Default for AppLatencies {
    fn default() -> Self {
        Self(Family::new_with_constructor(latency_histogram))
    }
}

impl AppLatencies {
    /// What a portion of `app` reports its requests' latency into.
    pub fn for_app(&self, app: &str) -> LatencyHistogram {
        LatencyHistogram(self.0.get_or_create(&app_label(app)).clone())
    }
}

/// One application's request-latency histogram, as portions see it: something to report into.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(pub Histogram);

impl dabs_farm_proto::portion::LatencyObserver for LatencyHistogram {
    fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

/// One application's figures on this node now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppGauges {
    /// Its running portions.
    pub portions: u64,
    /// Client sessions open on them.
    pub sessions: u64,
}

/// Figures a scrape reports besides the endpoint's counters.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Open MP sessions.
    pub sessions: u64,
    /// Running portions.
    pub portions: u64,
    /// Live farm members (including this node).
    pub members: u64,
    /// Health score, 0..=100 (docs/failover.md).
    pub health: u8,
    /// This node's load score against the farm it sees (the placement's unit).
    pub load: f64,
    /// Whether it takes new clients.
    pub accepting: bool,
    /// Whether it is draining.
    pub draining: bool,
    /// Whether it decides the farm's group opens.
    pub decider: bool,
    /// Per application (every configured one, even without a portion here).
    pub apps: BTreeMap<String, AppGauges>,
    /// Its figures as a compute server, if it is one.
    pub compute: Option<dabs_farm_proto::jobs::ComputeStats>,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

/// Renders the node's metrics. The registry is built per scrape from the live figures (the
/// latency histograms are shared and long-lived), so counters can never drift from the truth.
pub fn render(
    mp: &dabs_proto::Stats,
    gauges: &Gauges,
    node: &NodeCounters,
    latency: &AppLatencies,
) -> String {
    let mut r = Registry::with_prefix("dabs");
    r.register(
        "build",
        "The version and git commit this node runs",
        Info::new(vec![("version", VERSION), ("commit", GIT_COMMIT)]),
    );
    counter(&mut r, "mp_datagrams_received", "MP datagrams received", mp.datagrams_in);
    counter(&mut r, "mp_datagrams_sent", "MP datagrams sent", mp.datagrams_out);
    counter(&mut r, "mp_retransmits", "MP messages sent again (rounds of all their buffers)", mp.retransmits);
    counter(&mut r, "mp_decode_errors", "MP datagrams that did not decode", mp.decode_errors);
    counter(&mut r, "mp_duplicates", "MP messages that arrived again", mp.duplicates);
    counter(&mut r, "mp_requests_delivered", "MP requests delivered to portions", mp.requests_delivered);
    counter(&mut r, "mp_calls_failed", "MP calls that failed", mp.calls_failed);
    counter(&mut r, "mp_clock_skew", "MP messages stamped ahead of our clock", mp.clock_skew);
    counter(
        &mut r,
        "mp_sessions_encrypted",
        "MP sessions whose key exchange completed",
        mp.sessions_encrypted,
    );
    counter(
        &mut r,
        "mp_auth_failures",
        "MP datagrams dropped for failed authentication (bad tag, clear in an encrypted session, no keys)",
        mp.auth_failures,
    );
    counter(&mut r, "mp_replays_dropped", "Encrypted MP datagrams dropped as replays", mp.replays_dropped);
    counter(
        &mut r,
        "mp_sessions_reclaimed",
        "MP sessions of vanished clients closed early to make room (idle past the reclaim threshold)",
        mp.sessions_reclaimed,
    );
    for (name, help, map) in [
        ("mp_naks_sent", "NAKs sent, by error number", &mp.naks_sent),
        ("mp_naks_received", "NAKs received, by error number", &mp.naks_received),
    ] {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        // Every defined code is shown from the start, at zero: a rate over a series that
        // appears only with its first NAK would miss that NAK.
        for code in (1..).map_while(|n| (!matches!(NakCode::from_number(n), NakCode::Other(_))).then_some(n))
        {
            let _ = family.get_or_create(&vec![("code".to_owned(), code.to_string())]);
        }
        for (code, n) in map {
            family.get_or_create(&vec![("code".to_owned(), code.to_string())]).inc_by(*n);
        }
        r.register(name, help, family);
    }
    for (name, help, value) in [
        ("sessions", "MP sessions open now (clients' and this node's own to its peers)", gauges.sessions),
        ("portions", "Running server portions", gauges.portions),
        ("farm_members", "Live farm members seen by this node", gauges.members),
    ] {
        gauge(&mut r, name, help, value as i64);
    }
    gauge(&mut r, "health_score", "Health score, 0 to 100 (docs/failover.md)", i64::from(gauges.health));
    let load = Gauge::<f64, AtomicU64>::default();
    load.set(gauges.load);
    r.register(
        "load_score",
        "Load score against the farm this node sees, in clients of a median-speed portion",
        load,
    );
    for (name, help, on) in [
        ("accepting", "1 while the node takes new clients", gauges.accepting),
        ("draining", "1 while the node is draining", gauges.draining),
        ("decider", "1 while the node decides the farm's group opens", gauges.decider),
    ] {
        gauge(&mut r, name, help, i64::from(on));
    }
    let app_portions = Family::<AppLabel, Gauge>::default();
    let app_sessions = Family::<AppLabel, Gauge>::default();
    for (app, g) in &gauges.apps {
        app_portions.get_or_create(&app_label(app)).set(g.portions as i64);
        app_sessions.get_or_create(&app_label(app)).set(g.sessions as i64);
    }
    r.register("app_portions", "Running portions per application", app_portions);
    r.register("app_sessions", "Client sessions open on each application's portions", app_sessions);
    counter(&mut r, "spawns", "Server portions started", node.spawns.load(Ordering::Relaxed));
    counter(&mut r, "moves", "Virtual addresses moved to another node", node.moves.load(Ordering::Relaxed));
    counter(
        &mut r,
        "portions_retired",
        "Server portions stopped and removed for having no clients",
        node.portions_retired.load(Ordering::Relaxed),
    );
    counter(&mut r, "failovers", "FAILOVER messages sent", node.failovers.load(Ordering::Relaxed));
    counter(
        &mut r,
        "auth_failures",
        "Messages refused for failed authentication",
        node.auth_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut r,
        "client_alerts",
        "Alerts raised by clients of this node's portions (e.g. a FAILOVER they could not verify)",
        node.client_alerts.load(Ordering::Relaxed),
    );
    for (name, help, counted) in [
        ("jobs_accepted", "Jobs accepted here (this node owns them)", &node.jobs_accepted),
        (
            "job_results_committed",
            "Task results committed here first, as the job's owner",
            &node.job_results_committed,
        ),
        (
            "job_results_repeated",
            "Results of a second run of a task already committed (tasks run twice; the first result is kept)",
            &node.job_results_repeated,
        ),
        (
            "job_tasks_replaced",
            "Tasks placed again because their compute server's registration lapsed",
            &node.job_tasks_replaced,
        ),
        (
            "jobs_taken_over",
            "Jobs taken over as their replica when the owner was gone",
            &node.jobs_taken_over,
        ),
    ] {
        counter(&mut r, name, help, counted.load(Ordering::Relaxed));
    }
    if let Some(c) = &gauges.compute {
        counter(
            &mut r,
            "job_tasks_completed",
            "Tasks this compute server ran to an end (output or error)",
            c.completed,
        );
        counter(&mut r, "job_tasks_failed", "Tasks this compute server ran that ended in an error", c.failed);
        counter(&mut r, "job_busy_milliseconds", "Time this compute server spent running tasks", c.busy_ms);
        gauge(
            &mut r,
            "job_tasks_queued",
            "Tasks queued or running on this compute server",
            i64::from(c.queued),
        );
        gauge(
            &mut r,
            "job_last_done_ms",
            "When this compute server last completed a task, Unix ms",
            c.last_done_ms as i64,
        );
    }
    r.register(
        "request_latency_seconds",
        "One-way latency of requests delivered to portions, per application (its count: the calls)",
        latency.0.clone(),
    );
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let mut mp = dabs_proto::Stats {
            datagrams_in: 7,
            retransmits: 2,
            sessions_encrypted: 5,
            auth_failures: 6,
            replays_dropped: 8,
            ..Default::default()
        };
        mp.naks_sent.insert(2, 3);
        let latencies = AppLatencies::default();
        latencies.for_app("calc").0.observe(0.002);
        let counters = NodeCounters::default();
        counters.moves.store(9, Ordering::Relaxed);
        counters.failovers.store(10, Ordering::Relaxed);
        counters.client_alerts.store(11, Ordering::Relaxed);
        counters.portions_retired.store(12, Ordering::Relaxed);
        mp.sessions_reclaimed = 13;
        let gauges = Gauges {
            sessions: 4,
            portions: 1,
            members: 3,
            health: 87,
            load: 2.5,
            accepting: true,
            decider: true,
            apps: BTreeMap::from([
                ("calc".to_owned(), AppGauges { portions: 1, sessions: 4 }),
                ("idle".to_owned(), AppGauges::default()),
            ]),
            compute: Some(dabs_farm_proto::jobs::ComputeStats {
                threads: 2,
                queued: 5,
                completed: 40,
                failed: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&mp, &gauges, &counters, &latencies);
        for needle in [
            "dabs_mp_datagrams_received_total 7",
            "dabs_mp_retransmits_total 2",
            "dabs_mp_naks_sent_total{code=\"2\"} 3",
            "dabs_mp_naks_sent_total{code=\"13\"} 0",
            "dabs_mp_naks_received_total{code=\"1\"} 0",
            "dabs_mp_sessions_encrypted_total 5",
            "dabs_mp_auth_failures_total 6",
            "dabs_mp_replays_dropped_total 8",
            "dabs_sessions 4",
            "dabs_farm_members 3",
            "dabs_spawns_total 0",
            "dabs_auth_failures_total 0",
            "dabs_moves_total 9",
            "dabs_failovers_total 10",
            "dabs_client_alerts_total 11",
            "dabs_portions_retired_total 12",
            "dabs_job_results_committed_total 0",
            "dabs_job_tasks_completed_total 40",
            "dabs_job_tasks_failed_total 2",
            "dabs_job_tasks_queued 5",
            "dabs_mp_sessions_reclaimed_total 13",
            "dabs_request_latency_seconds_count{app=\"calc\"} 1",
            "dabs_health_score 87",
            "dabs_load_score 2.5",
            "dabs_accepting 1",
            "dabs_draining 0",
            "dabs_decider 1",
            "dabs_app_portions{app=\"calc\"} 1",
            "dabs_app_sessions{app=\"calc\"} 4",
            "dabs_app_portions{app=\"idle\"} 0",
            "# TYPE dabs_build info",
            &format!("dabs_build_info{{version=\"{VERSION}\",commit=\"{GIT_COMMIT}\"}} 1"),
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
