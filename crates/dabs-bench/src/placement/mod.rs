//! Deterministic placement benchmark: a discrete-event simulation of one decider placing jobs
//! on a heterogeneous farm, comparing the node's own placement (the real
//! [`dabs_node::placement::choose`], [`dabs_node::stats::load_score`] and
//! [`dabs_node::placement::Pending`], fed with [`NodeStats`] built from late load reports whose
//! service times come from the node's own [`ServiceTime`](dabs_node::stats::ServiceTime)) with the usual load-balancing
//! policies and a shortest-expected-delay oracle. `docs/placement.md` describes the model; the binary
//! `dabs-bench-placement` prints the tables and draws `docs/placement.svg`.
//!
//! A run is a pure function of its [`Scenario`], [`Policy`] and seed: arrivals and job sizes
//! come from one seeded [`SmallRng`], the policy's coin flips from another, so every policy
//! sees exactly the same jobs (common random numbers).
//!
//! [`sim`] runs one simulation; [`report`] summarises runs into the tables and the plot.

mod report;
mod sim;

pub use report::{Summary, markdown_table, quantile, run_cells, summarise, svg_plot, utilisation_table};
pub use sim::simulate;
/// Relative speeds of the simulated servers: a job of demand `d` takes `d / speed` seconds.
pub const SPEEDS: [f64; 10] = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0, 4.0, 8.0];

/// The loads of the main table (offered work / total capacity).
pub const LOADS: [f64; 4] = [0.5, 0.8, 0.9, 0.95];

/// A server samples its host's CPU at most this often, seconds, as the node does.
pub const HOST_SAMPLE_S: f64 = 1.0;

/// A run whose backlog at the last arrival exceeds this share of the measured jobs is
/// reported as unstable: some server receives more work than it can do.
pub const UNSTABLE_BACKLOG: f64 = 0.01;

/// What is simulated.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Server speeds (work per second).
    pub speeds: Vec<f64>,
    /// Mean service demand: a job's mean service time on a speed-1 server, seconds.
    pub mean_service_s: f64,
    /// Offered load: mean arrival rate × mean demand / total speed.
    pub load: f64,
    /// Arrival rate in the burst state, as a multiple of the mean rate.
    pub burst_high: f64,
    /// Arrival rate in the quiet state, as a multiple of the mean rate (`high + low = 2`,
    /// so that with equal mean sojourns the mean rate is kept).
    pub burst_low: f64,
    /// Mean time in each state, seconds (exponential: a Markov-modulated Poisson process).
    pub burst_sojourn_s: f64,
    /// Every server takes a load report this often, seconds.
    pub report_interval_s: f64,
    /// A report reaches the decider this long after it was taken, seconds.
    pub report_age_s: f64,
    /// Jobs placed before measuring starts.
    pub warmup_jobs: usize,
    /// Jobs measured.
    pub jobs: usize,
    /// What a report's `latency_ms` is.
    pub latency: LatencyFigure,
}

/// What the servers announce as a portion's `latency_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LatencyFigure {
    /// Mean response time (arrival to completion) of the jobs finished since the previous
    /// report, the last value kept when none finished.
    #[default]
    RecentResponse,
    /// Mean wait (arrival to start of service) of every job since the server started: what
    /// the node's portion figures hold (time from the sender's stamp to the portion taking the
    /// request, summed since start).
    LifetimeWait,
}

impl Scenario {
    /// The benchmark's scenario at `load`: [`SPEEDS`], 1 s mean demand on a speed-1 server,
    /// bursts at 1.5× and lulls at 0.5× the mean rate lasting 1 s on average, reports every
    /// 250 ms that reach the decider 1 s after they were taken, 20 000 + 200 000 jobs.
    pub fn standard(load: f64) -> Self {
        Scenario {
            speeds: SPEEDS.to_vec(),
            mean_service_s: 1.0,
            load,
            burst_high: 1.5,
            burst_low: 0.5,
            burst_sojourn_s: 1.0,
            report_interval_s: 0.25,
            report_age_s: 1.0,
            warmup_jobs: 20_000,
            jobs: 200_000,
            latency: LatencyFigure::RecentResponse,
        }
    }

    /// Mean arrival rate, jobs per second.
    pub fn mean_rate(&self) -> f64 {
        self.load * self.speeds.iter().sum::<f64>() / self.mean_service_s
    }
}

/// Where the simulated servers' announced service time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// None announced (a node that predates the field): every portion counts as the median.
    None,
    /// Measured as the node measures it: each job's busy time (demand ÷ speed) recorded in a
    /// [`ServiceTime`](dabs_node::stats::ServiceTime) when it finishes, its mean announced.
    Measured,
    /// What-if: the exact mean (`mean demand ÷ speed`), as if measurement had no noise.
    Exact,
}

/// What the simulated servers announce besides the figures nodes announced before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Announced {
    /// Their portions' service time.
    pub service: Service,
    /// Their count of clients accepted, so the decider's pending is sent − accepted; without
    /// it the decider takes every announcement to show every client sent (pending cleared on
    /// arrival), as it did before.
    pub accepted: bool,
}

/// A placement policy, with the information it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Cycles through the servers; no information.
    RoundRobin,
    /// Uniformly random server; no information.
    Random,
    /// Fewest jobs in flight by the balancer's own live count (exact: one balancer sees every
    /// job start and finish); ties broken at random. Ignores speed.
    LeastConnections,
    /// Two distinct servers at random, the one with fewer jobs in flight by the balancer's own
    /// live count (Envoy `LEAST_REQUEST`, HAProxy `random(2)`); ties at random. Ignores speed.
    PowerOfTwo,
    /// Reference, not a default anywhere: two distinct servers drawn with probability
    /// proportional to speed, the one with the least `(jobs in flight + 1) / speed`, as if the
    /// operator had configured every server's speed as its weight.
    PowerOfTwoBySpeed,
    /// The node's placement: [`choose`] over [`NodeStats`] built from the late reports, with
    /// the decider's [`Pending`], the servers announcing what `Announced` says.
    Dabs(Announced),
    /// Join the shortest expected delay with perfect, instant information: the server with the
    /// least `(jobs in system + 1) / speed`, ties at random.
    Oracle,
}

impl Policy {
    /// The node's placement as it is: measured service times and accepted counts.
    pub const DABS: Policy = Policy::Dabs(Announced { service: Service::Measured, accepted: true });

    /// The node's placement before either field existed (a farm of older nodes): the same code,
    /// which then counts every portion at the median speed and clears pending on arrival.
    pub const DABS_BEFORE: Policy = Policy::Dabs(Announced { service: Service::None, accepted: false });

    /// The policies of the main table, in order.
    pub const MAIN: [Policy; 7] = [
        Policy::RoundRobin,
        Policy::Random,
        Policy::LeastConnections,
        Policy::PowerOfTwo,
        Policy::DABS_BEFORE,
        Policy::DABS,
        Policy::Oracle,
    ];

    /// One field at a time, and the what-if of exact service times, in order.
    pub const PARTS: [Policy; 3] = [
        Policy::Dabs(Announced { service: Service::Measured, accepted: false }),
        Policy::Dabs(Announced { service: Service::None, accepted: true }),
        Policy::Dabs(Announced { service: Service::Exact, accepted: true }),
    ];

    /// Name in the tables.
    pub fn name(self) -> String {
        match self {
            Policy::RoundRobin => "round-robin".into(),
            Policy::Random => "random".into(),
            Policy::LeastConnections => "least-connections".into(),
            Policy::PowerOfTwo => "power-of-two-choices".into(),
            Policy::PowerOfTwoBySpeed => {
                "reference: power-of-two-choices weighted by configured speed".into()
            }
            Policy::DABS => "**dabs**".into(),
            Policy::DABS_BEFORE => "dabs before (no service time, pending cleared on arrival)".into(),
            Policy::Dabs(Announced { service, accepted }) => {
                let service = match service {
                    Service::None => "no service time",
                    Service::Measured => "service time measured",
                    Service::Exact => "what-if: exact service time",
                };
                let pending =
                    if accepted { "pending = sent − accepted" } else { "pending cleared on arrival" };
                format!("dabs, {service}, {pending}")
            }
            Policy::Oracle => "JSQ oracle (shortest expected delay)".into(),
        }
    }

    /// Short name for the plot legend.
    pub fn short(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round-robin",
            Policy::Random => "random",
            Policy::LeastConnections => "least-connections",
            Policy::PowerOfTwo => "power-of-two",
            Policy::PowerOfTwoBySpeed => "power-of-two by speed",
            Policy::DABS => "dabs",
            Policy::DABS_BEFORE => "dabs before",
            Policy::Dabs(_) => "dabs variant",
            Policy::Oracle => "JSQ oracle",
        }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Response time (arrival to completion) of every measured job, seconds.
    pub responses: Vec<f64>,
    /// Busy fraction of each server over the measured period.
    pub utilisation: Vec<f64>,
    /// Jobs in the system when the last job arrived.
    pub backlog_at_end: usize,
    /// Events processed (arrivals, completions, reports).
    pub events: u64,
}
