//! The discrete-event simulation: arrivals, servers, late load reports and the decider.

use super::*;

use dabs_node::config::AppConfig;
use dabs_node::placement::{Pending, choose};
use dabs_node::stats::{NodeStats, PortionStats, ServiceTime};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

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

    /// A report arrives: stored in the membership table and shown to [`Pending`], as the node
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
        known: Vec::new(),
        part: None,
        decider: false,
        service_holder: None,
        holds_service: false,
        cannot_hold: false,
        compute: None,
        balancer: false,
        settings_version: 1,
        no_encryption: false,
        accepted: None,
        client_alerts: 0,
        calls: None,
        portions: vec![PortionStats {
            app: APP.into(),
            va: format!("mp://bench/{APP}/dasp/{}-0", node_name(i)),
            queue: 16,
            sessions: 0,
            queue_depth: 0,
            latency_ms: 0.0,
            timeouts: 0,
            service_ms: None,
            rate: None,
            figures: Vec::new(),
            status_fault: None,
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
