//! Deterministic placement benchmark: a discrete-event simulation of one decider placing jobs
//! on a heterogeneous farm, comparing the node's own placement (the real
//! [`dabs_node::placement::choose`], [`dabs_node::stats::load_score`] and
//! [`dabs_node::placement::Pending`], fed with [`NodeStats`] built from late load reports whose
//! service times come from the node's own [`ServiceTime`]) with the usual load-balancing
//! policies and a shortest-expected-delay oracle. `docs/placement.md` describes the model; the binary
//! `dabs-bench-placement` prints the tables and draws `docs/placement.svg`.
//!
//! A run is a pure function of its [`Scenario`], [`Policy`] and seed: arrivals and job sizes
//! come from one seeded [`SmallRng`], the policy's coin flips from another, so every policy
//! sees exactly the same jobs (common random numbers).

use dabs_node::config::AppConfig;
use dabs_node::placement::{Pending, choose};
use dabs_node::stats::{NodeStats, PortionStats, ServiceTime};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

/// Relative speeds of the simulated servers: a job of demand `d` takes `d / speed` seconds.
pub const SPEEDS: [f64; 10] = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0, 4.0, 8.0];

/// The loads of the main table (offered work / total capacity).
pub const LOADS: [f64; 4] = [0.5, 0.8, 0.9, 0.95];

/// A server samples its host's CPU at most this often, seconds, as `node.rs` does.
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
    /// [`ServiceTime`] when it finishes, its mean announced.
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

/// A job waiting or in service.
#[derive(Clone, Copy, Debug)]
struct Job {
    id: u64,
    arrival: f64,
    demand: f64,
}

/// A FIFO server and the figures it reports.
struct Server {
    speed: f64,
    queue: VecDeque<Job>,
    /// Busy time accumulated over finished busy periods.
    busy_acc: f64,
    /// Start of the current busy period (when `queue` is not empty).
    busy_since: f64,
    /// Jobs finished since the last report and the sum of their response times.
    done_since_report: u64,
    response_since_report: f64,
    /// Mean response time carried in the reports, ms.
    latency_ms: f32,
    /// Last host sample: when, busy time then, and the CPU figure it gave.
    sampled_at: f64,
    busy_at_sample: f64,
    cpu_percent: f32,
    seq: u64,
    /// Busy time per job, as the SDK's portion loop keeps it.
    service: ServiceTime,
    /// Jobs placed here (the node's count of clients accepted).
    accepted: u64,
    /// Waits (arrival to start of service) since start, summed, and their number.
    wait_sum: f64,
    wait_n: u64,
}

impl Server {
    fn new(speed: f64) -> Self {
        Server {
            speed,
            queue: VecDeque::new(),
            busy_acc: 0.0,
            busy_since: 0.0,
            done_since_report: 0,
            response_since_report: 0.0,
            latency_ms: 0.0,
            sampled_at: 0.0,
            busy_at_sample: 0.0,
            cpu_percent: 0.0,
            seq: 0,
            service: ServiceTime::default(),
            accepted: 0,
            wait_sum: 0.0,
            wait_n: 0,
        }
    }

    fn busy_until(&self, t: f64) -> f64 {
        self.busy_acc + if self.queue.is_empty() { 0.0 } else { t - self.busy_since }
    }

    /// Takes a report at `t`: the CPU figure is re-sampled once [`HOST_SAMPLE_S`] has passed
    /// (like the node's sampler), the latency is the mean response time of the jobs finished
    /// since the last report (kept when none finished), the service time and the accepted
    /// count are announced as `announced` says.
    fn report(&mut self, index: usize, t: f64, sc: &Scenario, announced: Announced) -> Report {
        if t - self.sampled_at >= HOST_SAMPLE_S - 1e-9 {
            let busy = self.busy_until(t);
            let span = t - self.sampled_at;
            self.cpu_percent = (100.0 * ((busy - self.busy_at_sample) / span).clamp(0.0, 1.0)) as f32;
            (self.sampled_at, self.busy_at_sample) = (t, busy);
        }
        match sc.latency {
            LatencyFigure::RecentResponse if self.done_since_report > 0 => {
                self.latency_ms =
                    (1000.0 * self.response_since_report / self.done_since_report as f64) as f32;
            }
            LatencyFigure::LifetimeWait if self.wait_n > 0 => {
                self.latency_ms = (1000.0 * self.wait_sum / self.wait_n as f64) as f32;
            }
            _ => {}
        }
        self.done_since_report = 0;
        self.response_since_report = 0.0;
        self.seq += 1;
        Report {
            server: index,
            delivered: t + sc.report_age_s,
            seq: self.seq,
            sessions: self.queue.len() as u64,
            queue_depth: self.queue.len().saturating_sub(1) as u64,
            cpu_percent: self.cpu_percent,
            latency_ms: self.latency_ms,
            service_ms: match announced.service {
                Service::None => None,
                Service::Measured => self.service.mean_s().map(|s| (s * 1e3) as f32),
                Service::Exact => Some((sc.mean_service_s / self.speed * 1e3) as f32),
            },
            accepted: announced.accepted.then_some(self.accepted),
        }
    }
}

/// One server's load report.
#[derive(Clone, Copy, Debug)]
struct Report {
    server: usize,
    delivered: f64,
    seq: u64,
    sessions: u64,
    queue_depth: u64,
    cpu_percent: f32,
    latency_ms: f32,
    service_ms: Option<f32>,
    accepted: Option<u64>,
}

/// Markov-modulated Poisson arrivals with exponential job demands.
struct Arrivals {
    rng: SmallRng,
    mean_rate: f64,
    high: f64,
    low: f64,
    sojourn: f64,
    in_burst: bool,
    switch_at: f64,
    t: f64,
    mean_demand: f64,
}

fn exp(rng: &mut SmallRng, mean: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() * mean
}

impl Arrivals {
    fn new(sc: &Scenario, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let in_burst = rng.random::<bool>();
        let switch_at = exp(&mut rng, sc.burst_sojourn_s);
        Arrivals {
            rng,
            mean_rate: sc.mean_rate(),
            high: sc.burst_high,
            low: sc.burst_low,
            sojourn: sc.burst_sojourn_s,
            in_burst,
            switch_at,
            t: 0.0,
            mean_demand: sc.mean_service_s,
        }
    }

    /// The next arrival's time and demand.
    fn next(&mut self) -> (f64, f64) {
        loop {
            let rate = self.mean_rate * if self.in_burst { self.high } else { self.low };
            let at = self.t + exp(&mut self.rng, 1.0 / rate);
            if at < self.switch_at {
                self.t = at;
                let demand = exp(&mut self.rng, self.mean_demand);
                return (at, demand);
            }
            // Memoryless: draw again from the switch, at the new rate.
            self.t = self.switch_at;
            self.in_burst = !self.in_burst;
            self.switch_at = self.t + exp(&mut self.rng, self.sojourn);
        }
    }
}

const APP: &str = "bench-app";

fn node_name(i: usize) -> String {
    format!("server-{i:02}")
}

/// The decider of a dabs farm: the last report it has from each server, as [`NodeStats`] in
/// its membership table, and its [`Pending`] count of the clients it sent each.
struct Decider {
    app: AppConfig,
    members: Vec<Option<NodeStats>>,
    pending: Pending,
    index: HashMap<String, usize>,
}

impl Decider {
    fn new(n: usize) -> Self {
        let mut app = AppConfig::new(APP);
        app.max_sessions_per_portion = 1_000_000;
        Decider {
            app,
            members: vec![None; n],
            pending: Pending::new(),
            index: (0..n).map(|i| (node_name(i), i)).collect(),
        }
    }

    /// A report arrives: stored in the membership table and shown to [`Pending`], as `node.rs`
    /// does with an announcement.
    fn deliver(&mut self, r: &Report) {
        let stats = self.members[r.server].get_or_insert_with(|| blank_stats(r.server));
        stats.seq = r.seq;
        stats.cpu_percent = r.cpu_percent;
        stats.accepted = r.accepted;
        let p = &mut stats.portions[0];
        p.sessions = r.sessions;
        p.queue_depth = r.queue_depth;
        p.latency_ms = r.latency_ms;
        p.service_ms = r.service_ms;
        self.pending.observe(stats);
    }

    /// The server chosen, or `None` before any report has arrived.
    fn decide(&mut self) -> Option<usize> {
        let ranked = choose(&self.app, self.members.iter().flatten(), &self.pending, None);
        let node = ranked.first()?.node().to_owned();
        self.pending.sent(&node);
        Some(self.index[&node])
    }
}

/// Statistics of server `i` with everything but the load figures filled in: one portion of
/// the benchmark's application, identical hosts (memory is never the difference), start times
/// in server order (so ties go to the lowest-numbered, slowest, server).
fn blank_stats(i: usize) -> NodeStats {
    NodeStats {
        node: node_name(i),
        farm: "bench".into(),
        mp: format!("127.0.0.1:{}", 47_100 + i).parse().expect("a socket address"),
        operator: None,
        started_ms: 1_767_262_662_000 + i as u64,
        seq: 0,
        cpu_percent: 0.0,
        mem_total_mb: 16_384,
        mem_free_mb: 8_192,
        disk_free_mb: 100_000,
        net_bytes_per_s: 0,
        accepting: true,
        draining: false,
        health: 100,
        leaving: false,
        starved: Vec::new(),
        moved: Vec::new(),
        settings_version: 1,
        no_encryption: false,
        accepted: None,
        client_alerts: 0,
        portions: vec![PortionStats {
            app: APP.into(),
            va: format!("mp://bench/{APP}/dasp/{}-0", node_name(i)),
            queue: 16,
            sessions: 0,
            queue_depth: 0,
            latency_ms: 0.0,
            timeouts: 0,
            service_ms: None,
        }],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// The job in service at this server finishes.
    Departure(usize),
    /// This server takes a load report.
    Report(usize),
}

type Heap = BinaryHeap<Reverse<(u64, u64, Event)>>;

/// Runs one simulation.
pub fn simulate(sc: &Scenario, policy: Policy, seed: u64) -> RunResult {
    let n = sc.speeds.len();
    let mut servers: Vec<Server> = sc.speeds.iter().map(|&s| Server::new(s)).collect();
    let mut arrivals = Arrivals::new(sc, seed);
    let mut coin = SmallRng::seed_from_u64(seed ^ 0x005e_ed0f_c01a);
    // What the servers announce; only the dabs policies read it.
    let announced = match policy {
        Policy::Dabs(a) => a,
        _ => Announced { service: Service::None, accepted: false },
    };
    // Events ordered by (time, sequence); bit patterns of f64 >= 0 order like the values.
    let mut heap = Heap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut Heap, t: f64, e: Event| {
        seq += 1;
        heap.push(Reverse((t.to_bits(), seq, e)));
    };
    // Servers report on staggered phases, as independent nodes do.
    for i in 0..n {
        push(&mut heap, sc.report_interval_s * i as f64 / n as f64, Event::Report(i));
    }
    let mut in_flight: VecDeque<Report> = VecDeque::new();
    let mut decider = Decider::new(n);
    let mut rr = 0usize;

    let total = (sc.warmup_jobs + sc.jobs) as u64;
    let first_measured = sc.warmup_jobs as u64;
    let mut placed = 0u64;
    let mut next = arrivals.next();
    let mut responses = Vec::with_capacity(sc.jobs);
    let (mut t_start, mut t_end) = (0.0, 0.0);
    let mut busy_start = vec![0.0; n];
    let mut busy_end = vec![0.0; n];
    let mut backlog_at_end = 0;
    let mut events = 0u64;

    while responses.len() < sc.jobs {
        events += 1;
        let heap_t = heap.peek().map_or(f64::INFINITY, |Reverse((t, _, _))| f64::from_bits(*t));
        if placed < total && next.0 <= heap_t {
            let (t, demand) = next;
            let id = placed;
            placed += 1;
            if id == first_measured {
                t_start = t;
                for (b, s) in busy_start.iter_mut().zip(&servers) {
                    *b = s.busy_until(t);
                }
            }
            if placed == total {
                t_end = t;
                for (b, s) in busy_end.iter_mut().zip(&servers) {
                    *b = s.busy_until(t);
                }
                backlog_at_end = servers.iter().map(|s| s.queue.len()).sum();
            }
            while in_flight.front().is_some_and(|r| r.delivered <= t) {
                let r = in_flight.pop_front().expect("checked");
                decider.deliver(&r);
            }
            let mut round_robin = || {
                rr = (rr + 1) % n;
                rr
            };
            let target = match policy {
                Policy::RoundRobin => round_robin(),
                Policy::Random => coin.random_range(0..n),
                Policy::LeastConnections => {
                    argmin_random(&mut coin, servers.iter().map(|s| s.queue.len() as f64))
                }
                Policy::PowerOfTwo => {
                    let a = coin.random_range(0..n);
                    let mut b = coin.random_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (qa, qb) = (servers[a].queue.len(), servers[b].queue.len());
                    if qa < qb || (qa == qb && coin.random::<bool>()) { a } else { b }
                }
                Policy::PowerOfTwoBySpeed => {
                    // Two distinct servers drawn with probability proportional to speed.
                    let total: f64 = sc.speeds.iter().sum();
                    let draw = |coin: &mut SmallRng, skip: Option<usize>| {
                        let excluded = skip.map_or(0.0, |k| sc.speeds[k]);
                        let mut r = coin.random::<f64>() * (total - excluded);
                        let mut last = 0;
                        for (i, sp) in sc.speeds.iter().enumerate() {
                            if Some(i) == skip {
                                continue;
                            }
                            last = i;
                            if r < *sp {
                                return i;
                            }
                            r -= sp;
                        }
                        last
                    };
                    let a = draw(&mut coin, None);
                    let b = draw(&mut coin, Some(a));
                    let cost = |i: usize| (servers[i].queue.len() as f64 + 1.0) / servers[i].speed;
                    let (ca, cb) = (cost(a), cost(b));
                    if ca < cb || (ca == cb && coin.random::<bool>()) { a } else { b }
                }
                Policy::Oracle => {
                    argmin_random(&mut coin, servers.iter().map(|s| (s.queue.len() as f64 + 1.0) / s.speed))
                }
                // Before the first report arrives the decider knows nothing: round-robin
                // (only during the warm-up).
                Policy::Dabs(_) => decider.decide().unwrap_or_else(round_robin),
            };
            let s = &mut servers[target];
            s.accepted += 1;
            s.queue.push_back(Job { id, arrival: t, demand });
            if s.queue.len() == 1 {
                s.wait_n += 1;
                s.busy_since = t;
                push(&mut heap, t + demand / s.speed, Event::Departure(target));
            }
            next = if placed < total { arrivals.next() } else { (f64::INFINITY, 0.0) };
            continue;
        }
        let Reverse((bits, _, event)) = heap.pop().expect("reports never stop");
        let t = f64::from_bits(bits);
        match event {
            Event::Departure(i) => {
                let s = &mut servers[i];
                let job = s.queue.pop_front().expect("a job in service");
                let response = t - job.arrival;
                s.done_since_report += 1;
                s.response_since_report += response;
                // The SDK records each request's busy time when its handler returns.
                s.service.record(t, job.demand / s.speed);
                if job.id >= first_measured {
                    responses.push(response);
                }
                if let Some(head) = s.queue.front() {
                    s.wait_sum += t - head.arrival;
                    s.wait_n += 1;
                    let done = t + head.demand / s.speed;
                    push(&mut heap, done, Event::Departure(i));
                } else {
                    s.busy_acc += t - s.busy_since;
                }
            }
            Event::Report(i) => {
                in_flight.push_back(servers[i].report(i, t, sc, announced));
                push(&mut heap, t + sc.report_interval_s, Event::Report(i));
            }
        }
    }
    let span = (t_end - t_start).max(f64::MIN_POSITIVE);
    let utilisation = busy_start.iter().zip(&busy_end).map(|(a, b)| (b - a) / span).collect();
    RunResult { responses, utilisation, backlog_at_end, events }
}

/// Index of the smallest value, ties broken uniformly at random (reservoir sampling).
fn argmin_random(rng: &mut SmallRng, values: impl Iterator<Item = f64>) -> usize {
    let (mut best, mut best_v, mut ties) = (0, f64::INFINITY, 0u32);
    for (i, v) in values.enumerate() {
        if v < best_v {
            (best, best_v, ties) = (i, v, 1);
        } else if v == best_v {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

/// One row of a table: a policy in a scenario, over all seeds.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The policy.
    pub policy: Policy,
    /// The offered load.
    pub load: f64,
    /// Mean service time on a speed-1 server, seconds.
    pub mean_service_s: f64,
    /// Median response time over all measured jobs of all seeds, seconds.
    pub p50: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
    /// Largest, seconds.
    pub max: f64,
    /// Mean, seconds.
    pub mean: f64,
    /// Per-server utilisation, averaged over seeds.
    pub utilisation: Vec<f64>,
    /// p99 of each seed alone, seconds (to show the spread between seeds).
    pub p99_per_seed: Vec<f64>,
    /// Some seed's backlog grew past [`UNSTABLE_BACKLOG`]: figures grow with the run length.
    pub unstable: bool,
}

impl Summary {
    /// Highest minus lowest server utilisation.
    pub fn util_spread(&self) -> f64 {
        let max = self.utilisation.iter().copied().fold(f64::MIN, f64::max);
        let min = self.utilisation.iter().copied().fold(f64::MAX, f64::min);
        max - min
    }

    /// Standard deviation of server utilisation.
    pub fn util_sd(&self) -> f64 {
        let n = self.utilisation.len() as f64;
        let mean = self.utilisation.iter().sum::<f64>() / n;
        (self.utilisation.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n).sqrt()
    }
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Pools the runs (one per seed) of one policy in one scenario.
pub fn summarise(sc: &Scenario, policy: Policy, runs: &[RunResult]) -> Summary {
    let mut all: Vec<f64> = runs.iter().flat_map(|r| r.responses.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    let p99_per_seed = runs
        .iter()
        .map(|r| {
            let mut v = r.responses.clone();
            v.sort_by(f64::total_cmp);
            quantile(&v, 0.99)
        })
        .collect();
    let n = runs.first().map_or(0, |r| r.utilisation.len());
    let utilisation =
        (0..n).map(|i| runs.iter().map(|r| r.utilisation[i]).sum::<f64>() / runs.len() as f64).collect();
    Summary {
        policy,
        load: sc.load,
        mean_service_s: sc.mean_service_s,
        p50: quantile(&all, 0.50),
        p99: quantile(&all, 0.99),
        max: all.last().copied().unwrap_or(f64::NAN),
        mean: all.iter().sum::<f64>() / all.len().max(1) as f64,
        utilisation,
        p99_per_seed,
        unstable: runs.iter().any(|r| r.backlog_at_end as f64 > UNSTABLE_BACKLOG * r.responses.len() as f64),
    }
}

/// Runs every (scenario, policy, seed) cell on `threads` threads; the results are in `cells`
/// order and do not depend on the number of threads.
pub fn run_cells(cells: &[(Scenario, Policy, u64)], threads: usize) -> Vec<RunResult> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; cells.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((sc, policy, seed)) = cells.get(i) else { break };
                    let r = simulate(sc, *policy, *seed);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every cell ran"))
        .collect()
}

fn ms(seconds: f64) -> String {
    format!("{:.0}", seconds * 1e3)
}

/// The main table: one row per policy and load, times in ms.
pub fn markdown_table(rows: &[Summary]) -> String {
    let mut s = String::new();
    s.push_str("| policy | load | p50 (ms) | p99 (ms) | max (ms) | utilisation spread (max − min) | utilisation s.d. |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let mark = if r.unstable { " ‡" } else { "" };
        let _ = writeln!(
            s,
            "| {}{mark} | {:.2} | {} | {} | {} | {:.3} | {:.3} |",
            r.policy.name(),
            r.load,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            r.util_spread(),
            r.util_sd()
        );
    }
    s
}

/// Per-server utilisation of each row, in percent.
pub fn utilisation_table(rows: &[Summary], speeds: &[f64]) -> String {
    let mut s = String::from("| policy | load |");
    for sp in speeds {
        let _ = write!(s, " ×{sp} |");
    }
    s.push_str("\n|---|---:|");
    s.push_str(&"---:|".repeat(speeds.len()));
    s.push('\n');
    for r in rows {
        let _ = write!(s, "| {} | {:.2} |", r.policy.name(), r.load);
        for u in &r.utilisation {
            let _ = write!(s, " {:.0} |", 100.0 * u);
        }
        s.push('\n');
    }
    s
}

/// A hand-written SVG: p99 response time against load, one line per policy, log scale.
/// Unstable points are drawn hollow.
pub fn svg_plot(rows: &[Summary], title: &str) -> String {
    let (w, h) = (800.0, 500.0);
    let (left, right, top, bottom) = (80.0, 190.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let p99s: Vec<f64> = rows.iter().map(|r| r.p99 * 1e3).filter(|v| v.is_finite() && *v > 0.0).collect();
    let lo = 10f64.powf(p99s.iter().copied().fold(f64::MAX, f64::min).log10().floor());
    let hi = 10f64.powf(p99s.iter().copied().fold(f64::MIN, f64::max).log10().ceil());
    let (xmin, xmax) = (0.45, 1.0);
    let x = |load: f64| left + (load - xmin) / (xmax - xmin) * pw;
    let y = |ms: f64| top + (hi.log10() - ms.log10()) / (hi.log10() - lo.log10()) * ph;
    let colours = ["#9e9e9e", "#8c564b", "#ff7f0e", "#1f77b4", "#bcbd22", "#d62728", "#2ca02c"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        left + pw / 2.0
    );
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v > hi * 1.0001 {
                break;
            }
            let yy = y(v);
            let stroke = if m == 1.0 { "#b0b0b0" } else { "#e8e8e8" };
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}"/>"#,
                left + pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                yy + 4.0,
                format_ms(v)
            );
        }
        decade *= 10.0;
    }
    for load in LOADS {
        let xx = x(load);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#e8e8e8"/>"##,
            top + ph
        );
        let _ =
            writeln!(s, r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{load}</text>"#, top + ph + 18.0);
    }
    let _ =
        writeln!(s, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered load</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">p99 response time (log scale)</text>"#,
        top + ph / 2.0
    );
    for (k, policy) in Policy::MAIN.iter().enumerate() {
        let colour = colours[k % colours.len()];
        let pts: Vec<(f64, f64, bool)> = rows
            .iter()
            .filter(|r| r.policy == *policy)
            .map(|r| (x(r.load), y(r.p99 * 1e3), r.unstable))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let dash = match *policy {
            Policy::Oracle | Policy::DABS_BEFORE => r#" stroke-dasharray="6 4""#,
            // Round-robin and random overlap: show both.
            Policy::RoundRobin => r#" stroke-dasharray="2 3""#,
            _ => "",
        };
        let width = match *policy {
            Policy::DABS => 3,
            Policy::RoundRobin => 6,
            _ => 2,
        };
        let path: Vec<String> = pts.iter().map(|(a, b, _)| format!("{a:.1},{b:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="{width}"{dash}/>"#,
            path.join(" ")
        );
        for (a, b, unstable) in &pts {
            let fill = if *unstable { "white" } else { colour };
            let _ = writeln!(
                s,
                r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5"/>"#
            );
        }
        let ly = top + 12.0 + 22.0 * k as f64;
        let lx = left + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="{width}"{dash}/>"#,
            lx + 26.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 32.0, ly + 4.0, policy.short());
    }
    let note_y = top + 12.0 + 22.0 * Policy::MAIN.len() as f64 + 10.0;
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="{note_y:.1}" r="3.5" fill="white" stroke="#555" stroke-width="1.5"/>"##,
        left + pw + 27.0
    );
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">unstable</text>"#, left + pw + 46.0, note_y + 4.0);
    s.push_str("</svg>\n");
    s
}

fn format_ms(v: f64) -> String {
    if v >= 1000.0 { format!("{} s", v / 1000.0) } else { format!("{v} ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(load: f64) -> Scenario {
        Scenario { warmup_jobs: 2_000, jobs: 10_000, ..Scenario::standard(load) }
    }

    fn sorted(sc: &Scenario, policy: Policy, seed: u64) -> Vec<f64> {
        let mut v = simulate(sc, policy, seed).responses;
        v.sort_by(f64::total_cmp);
        v
    }

    #[test]
    fn runs_are_deterministic() {
        let a = simulate(&small(0.8), Policy::DABS, 7);
        let b = simulate(&small(0.8), Policy::DABS, 7);
        assert_eq!(a.responses, b.responses);
        assert_eq!(a.utilisation, b.utilisation);
        let c = simulate(&small(0.8), Policy::DABS, 8);
        assert_ne!(a.responses, c.responses);
    }

    #[test]
    fn offered_load_matches_the_utilisation() {
        let sc = small(0.8);
        let r = simulate(&sc, Policy::Oracle, 1);
        assert_eq!(r.responses.len(), sc.jobs);
        let work: f64 = r.utilisation.iter().zip(&sc.speeds).map(|(u, s)| u * s).sum();
        let load = work / sc.speeds.iter().sum::<f64>();
        assert!((load - 0.8).abs() < 0.05, "measured load {load}");
    }

    #[test]
    fn uniform_splits_overload_the_slow_servers() {
        // A tenth of the jobs to a speed-1 server of a 26-speed farm is 2.6 × the load.
        let sc = small(0.5);
        let runs = [simulate(&sc, Policy::RoundRobin, 1)];
        assert!(summarise(&sc, Policy::RoundRobin, &runs).unstable);
        let runs = [simulate(&sc, Policy::Oracle, 1)];
        assert!(!summarise(&sc, Policy::Oracle, &runs).unstable);
    }

    #[test]
    fn the_oracle_beats_least_connections_and_dabs_is_stable() {
        let sc = small(0.9);
        let oracle = quantile(&sorted(&sc, Policy::Oracle, 3), 0.99);
        assert!(oracle < quantile(&sorted(&sc, Policy::LeastConnections, 3), 0.99));
        let runs = [simulate(&sc, Policy::DABS, 3)];
        assert!(!summarise(&sc, Policy::DABS, &runs).unstable);
    }

    #[test]
    fn announcing_service_times_and_accepted_counts_lowers_the_tail() {
        let sc = small(0.9);
        let now = quantile(&sorted(&sc, Policy::DABS, 3), 0.99);
        let before = quantile(&sorted(&sc, Policy::DABS_BEFORE, 3), 0.99);
        assert!(now < 0.8 * before, "p99 {now} s against {before} s before");
    }

    #[test]
    fn a_late_report_leaves_pending_what_it_does_not_show() {
        let report = |server, taken: f64, accepted| Report {
            server,
            delivered: taken + 1.0,
            seq: (taken * 4.0) as u64 + 1,
            sessions: 0,
            queue_depth: 0,
            cpu_percent: 0.0,
            latency_ms: 0.0,
            service_ms: None,
            accepted,
        };
        for counted in [true, false] {
            let count = |n| counted.then_some(n);
            let mut d = Decider::new(2);
            d.deliver(&report(0, 0.0, count(0)));
            d.deliver(&report(1, 0.0, count(0)));
            let picks: Vec<usize> = (0..4).map(|_| d.decide().unwrap()).collect();
            let to_0 = picks.iter().filter(|&&i| i == 0).count() as u64;
            assert_eq!(d.pending.get("server-00") + d.pending.get("server-01"), 4);
            // Server 0's report was taken when it had accepted one of them: the rest stay
            // pending, unless the server announces no count (the node's former behaviour).
            d.deliver(&report(0, 0.25, count(1.min(to_0))));
            let want = if counted { to_0 - 1.min(to_0) } else { 0 };
            assert_eq!(d.pending.get("server-00"), want, "counted {counted}, picks {picks:?}");
        }
    }

    #[test]
    fn quantiles_and_ties() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let picks: Vec<usize> =
            (0..100).map(|_| argmin_random(&mut rng, [2.0, 1.0, 1.0].into_iter())).collect();
        assert!(picks.contains(&1) && picks.contains(&2) && !picks.contains(&0));
    }

    #[test]
    fn threads_do_not_change_results() {
        let sc = Scenario { warmup_jobs: 500, jobs: 2_000, ..Scenario::standard(0.8) };
        let cells: Vec<_> = [Policy::DABS, Policy::PowerOfTwo, Policy::Oracle]
            .into_iter()
            .map(|p| (sc.clone(), p, 5))
            .collect();
        let one = run_cells(&cells, 1);
        let two = run_cells(&cells, 2);
        for (a, b) in one.iter().zip(&two) {
            assert_eq!(a.responses, b.responses);
        }
    }

    #[test]
    fn the_plot_is_svg() {
        let rows: Vec<Summary> = LOADS
            .iter()
            .map(|&load| Summary {
                policy: Policy::DABS,
                load,
                mean_service_s: 1.0,
                p50: 0.1,
                p99: load,
                max: 2.0,
                mean: 0.2,
                utilisation: vec![0.5, 0.6],
                p99_per_seed: vec![load],
                unstable: false,
            })
            .collect();
        let svg = svg_plot(&rows, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
