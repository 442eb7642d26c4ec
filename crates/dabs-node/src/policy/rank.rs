//! The central monitor's decision, and the intermediate monitors' inside sub-farms: the
//! servers of one application ranked by its policy, best first, with the figure each was
//! ranked on. Every node computes it from the same announcements (the monitor is replicated:
//! losing any node, the decider included, loses no decision); the decider's copy places new
//! clients, every node's copy answers the DNS front.

use super::{Asker, Policy, SubFarm};
use crate::config::AppConfig;
use crate::placement::{Pending, eligible};
use crate::stats::{NodeStats, PortionStats, ServiceTimes, load_score};
pub use dabs_dns::{common_prefix, rtt_class};

/// Where `closest` puts servers whose round trip is not measured yet: after every measured one
/// (round trips are ms, far below it).
const UNMEASURED: f64 = 1e9;

/// One server in a ranking.
#[derive(Clone, Debug)]
pub struct Ranked<'a> {
    /// Its announcement.
    pub node: &'a NodeStats,
    /// The figure the policy ranked it on (lower is better; throughput is negated), `None`
    /// when it has none yet (no portion of the application): ranked after those that do.
    pub figure: Option<f64>,
    /// The sub-farm it was ranked in, if any.
    pub subfarm: Option<String>,
    /// Why it stands where it does, for the operator.
    pub why: String,
}

/// An application's servers, best first, and those left out with the reason.
#[derive(Clone, Debug, Default)]
pub struct Ranking<'a> {
    /// Eligible servers, best first.
    pub ranked: Vec<Ranked<'a>>,
    /// Servers out of consideration: (node, reason).
    pub excluded: Vec<(String, String)>,
}

impl Ranking<'_> {
    /// The preferred server.
    pub fn preferred(&self) -> Option<&str> {
        self.ranked.first().map(|r| r.node.node.as_str())
    }

    /// The ranked servers' names, best first.
    pub fn names(&self) -> Vec<String> {
        self.ranked.iter().map(|r| r.node.node.clone()).collect()
    }
}

/// The application's portions on `s` that its status objects keep in consideration.
fn healthy<'a>(s: &'a NodeStats, app: &'a str) -> impl Iterator<Item = &'a PortionStats> + 'a {
    s.portions.iter().filter(move |p| p.app == app && p.status_fault.is_none())
}

/// The figure `policy` ranks `s` on for `app` (lower is better), and its description.
fn figure(
    policy: &Policy,
    app: &str,
    s: &NodeStats,
    farm: &ServiceTimes,
    pending: &Pending,
    client: Option<&Asker>,
) -> (Option<f64>, String) {
    let extra = pending.get(&s.node);
    let ps: Vec<&PortionStats> = healthy(s, app).collect();
    let load = load_score(s, farm) + extra as f64 * farm.client_weight(s, Some(app));
    match policy {
        Policy::LeastLoaded => (Some(load), format!("load {load:.2}")),
        Policy::FastestResponse => {
            if ps.is_empty() {
                return (None, "no portion yet: response time unknown".into());
            }
            let median = farm.median_ms(app).unwrap_or(0.0);
            let sum: f64 =
                ps.iter().map(|p| f64::from(p.latency_ms) + p.service_ms.map_or(median, f64::from)).sum();
            let ms = sum / ps.len() as f64;
            (Some(ms), format!("response {ms:.2} ms"))
        }
        Policy::FewestClients => {
            let n = ps.iter().map(|p| p.sessions).sum::<u64>() + extra;
            (Some(n as f64), format!("{n} clients"))
        }
        Policy::FewestPending => {
            let n: f64 = ps.iter().map(|p| p.figure("pending").unwrap_or(p.queue_depth as f64)).sum();
            (Some(n + extra as f64), format!("{n} pending"))
        }
        Policy::Closest => match client {
            Some(a) => {
                let bits = common_prefix(a.ip, s.mp.ip());
                match a.rtt_us.get(&s.node) {
                    Some(&us) => {
                        let ms = f64::from(us) / 1000.0;
                        // Whole milliseconds first (finer is noise), then prefix, then load.
                        let f = f64::from(rtt_class(us)) * 1e3 + f64::from(128 - bits) + load * 1e-6;
                        (Some(f), format!("round trip {ms:.2} ms to {}, load {load:.2}", a.network))
                    }
                    // Unmeasured servers rank after measured ones: longer prefix first, then load.
                    None => (
                        Some(UNMEASURED + f64::from(128 - bits) * 1e3 + load),
                        format!(
                            "round trip to {} not measured yet: {bits} bits in common with {}, load {load:.2}",
                            a.network, a.ip
                        ),
                    ),
                }
            }
            None => (Some(load), format!("no client address: load {load:.2}")),
        },
        Policy::HighestThroughput => {
            let rates: Vec<f64> = ps.iter().filter_map(|p| p.rate.map(f64::from)).collect();
            if rates.is_empty() {
                return (None, "no throughput measured yet".into());
            }
            let r: f64 = rates.iter().sum();
            (Some(-r), format!("{r:.1} requests/s"))
        }
        Policy::AppFigure(name) => {
            let vals: Vec<f64> = ps.iter().filter_map(|p| p.figure(name)).collect();
            if vals.is_empty() {
                return (None, format!("no {name} published"));
            }
            let v: f64 = vals.iter().sum();
            (Some(v), format!("{name} = {v}"))
        }
    }
}

/// `None` (unknown) ranks after every figure.
fn by_figure(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// Ranks the eligible `members` for `app` by its policy, sub-farms first ranked inside by their
/// own policy and then compared as one entity (the mean of their members' figures under the
/// application's policy). Ties go to the lower load, then the node that started first.
/// `client` is the asking client's address, for `closest`.
pub fn rank<'a>(
    app: &AppConfig,
    subfarms: &[SubFarm],
    members: &[&'a NodeStats],
    pending: &Pending,
    client: Option<&Asker>,
) -> Ranking<'a> {
    let farm = ServiceTimes::of(members.iter().copied());
    let mut out = Ranking::default();
    let mut entries: Vec<Ranked<'a>> = Vec::new();
    for s in members {
        if !eligible(app, s) {
            out.excluded.push((s.node.clone(), exclusion(app, s)));
            continue;
        }
        let mine: Vec<&PortionStats> = s.portions.iter().filter(|p| p.app == app.name).collect();
        if !mine.is_empty() && mine.iter().all(|p| p.status_fault.is_some()) {
            let why = mine[0].status_fault.clone().unwrap_or_default();
            out.excluded.push((s.node.clone(), format!("status object: {why}")));
            continue;
        }
        let (figure, why) = figure(&app.policy, &app.name, s, &farm, pending, client);
        let subfarm = subfarms.iter().find(|f| f.nodes.contains(&s.node)).map(|f| f.name.clone());
        entries.push(Ranked { node: s, figure, subfarm, why });
    }
    let load = |s: &NodeStats| load_score(s, &farm) + pending.get(&s.node) as f64;
    let tie = |a: &NodeStats, b: &NodeStats| {
        load(a).total_cmp(&load(b)).then(a.started_ms.cmp(&b.started_ms)).then(a.node.cmp(&b.node))
    };
    // Entities: each sub-farm (its members in its own policy's order) or a lone server.
    let mut entities: Vec<(Option<f64>, Vec<Ranked<'a>>)> = Vec::new();
    let (mut grouped, lone): (Vec<_>, Vec<_>) = entries.into_iter().partition(|r| r.subfarm.is_some());
    for sub in subfarms {
        let mut inside: Vec<Ranked<'a>> = Vec::new();
        let mut i = 0;
        while i < grouped.len() {
            if grouped[i].subfarm.as_deref() == Some(sub.name.as_str()) {
                inside.push(grouped.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if inside.is_empty() {
            continue;
        }
        let figures: Vec<f64> = inside.iter().filter_map(|r| r.figure).collect();
        let mean = (!figures.is_empty()).then(|| figures.iter().sum::<f64>() / figures.len() as f64);
        let mut local: Vec<(Option<f64>, Ranked<'a>)> = inside
            .into_iter()
            .map(|mut r| {
                let (f, why) = figure(&sub.policy, &app.name, r.node, &farm, pending, client);
                r.why = format!("sub-farm {} ({}): {why}; as one entity: {}", sub.name, sub.policy, r.why);
                (f, r)
            })
            .collect();
        local.sort_by(|a, b| by_figure(a.0, b.0).then_with(|| tie(a.1.node, b.1.node)));
        entities.push((mean, local.into_iter().map(|(_, r)| r).collect()));
    }
    entities.extend(lone.into_iter().map(|r| (r.figure, vec![r])));
    entities.sort_by(|a, b| by_figure(a.0, b.0).then_with(|| tie(a.1[0].node, b.1[0].node)));
    out.ranked = entities.into_iter().flat_map(|(_, rs)| rs).collect();
    out
}

/// Why `s` is not eligible for `app`, for the operator.
fn exclusion(app: &AppConfig, s: &NodeStats) -> String {
    if s.leaving {
        "stopping".into()
    } else if !s.accepting {
        "not accepting new clients".into()
    } else if !app.allows_node(&s.node) {
        format!("not in {}'s sub-group", app.name)
    } else if s.mem_free_mb < app.min_free_memory_mb {
        format!("{} MiB free, below {} MiB", s.mem_free_mb, app.min_free_memory_mb)
    } else {
        format!("CPU {:.0}% above {:.0}%", s.cpu_percent, app.max_cpu_percent)
    }
}

#[cfg(test)]
mod tests;
