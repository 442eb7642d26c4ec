//! What the operator page charts and remembers: a bounded history of every member's figures
//! (one sample a second, ten minutes), taken from the announcements the node receives anyway,
//! and the members that went down, kept (with when and why) until an operator removes them.

use crate::stats::NodeStats;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Samples kept per member: ten minutes at one a second.
pub const SAMPLES_KEPT: usize = 600;
/// Members with a history at most (live and down); a new one beyond it is not charted.
pub const NODES_KEPT: usize = 128;
/// Down members kept at most; beyond it the longest gone is forgotten.
pub const DOWN_KEPT: usize = 64;
/// A farm-wide point counts a member's last sample up to this many seconds old, so one late
/// announcement does not dent the farm's totals.
const CARRY_S: u64 = 3;

/// One member's figures in one second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// The second, Unix time.
    pub t: u64,
    /// Calls its portions took per second since the sample before; `None` for the first
    /// sample of a run, and from nodes that do not announce their calls.
    pub calls_per_s: Option<f64>,
    /// Median call latency over its last second, ms; `None` when no call came.
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same, ms.
    pub p99_ms: Option<f64>,
    /// Its placement load score, read against the farm at the time.
    pub load: f64,
    /// Client sessions on its announced portions.
    pub sessions: u64,
    /// Portions it announced.
    pub portions: u64,
}

/// Why a member is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    /// No announcement within the lease: killed, crashed or cut off (a node cannot tell which).
    LeaseLapsed,
    /// It announced it was stopping (a clean stop).
    Left,
    /// Its key in the etcd registry went: its lease ran out or it revoked it on stopping.
    Deregistered,
}

impl DownReason {
    /// What the page and the events say.
    pub fn describe(self) -> &'static str {
        match self {
            DownReason::LeaseLapsed => {
                "lease lapsed: no announcement within the lease (killed, crashed or cut off)"
            }
            DownReason::Left => "left cleanly (it announced it was stopping)",
            DownReason::Deregistered => {
                "its etcd registration went (its lease ran out, or it revoked it on stopping)"
            }
        }
    }
}

/// A member that went down, as last heard.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DownMember {
    /// Its name.
    pub name: String,
    /// Its MP address.
    pub mp: String,
    /// Its operator interface, if it had one.
    pub operator: Option<String>,
    /// When it started, Unix ms.
    pub started_ms: u64,
    /// When this node saw it go, Unix ms.
    pub down_ms: u64,
    /// When it was last heard, Unix ms.
    pub last_seen_ms: u64,
    /// Why.
    pub reason: DownReason,
    /// The same, in words.
    pub why: &'static str,
}

/// Why a member could not be removed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    /// It is a live member: only down ones are removed.
    #[error("{0} is a live member; only members that are down can be removed")]
    Live(String),
    /// No member of that name is down.
    #[error("no member named {0} is down")]
    NotDown(String),
}

#[derive(Default)]
struct Ring {
    samples: VecDeque<Sample>,
    /// (run, calls, Unix ms) at the last sample: a rate needs two of the same run.
    counted: Option<(u64, u64, u64)>,
}

/// Every member's recent samples and the members that went down.
#[derive(Default)]
pub struct History {
    rings: BTreeMap<String, Ring>,
    down: BTreeMap<String, DownMember>,
}

/// The charts' data: columns aligned on `t` (`null` where a member has no sample).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Charts {
    /// Seconds, Unix time, oldest first: at most [`SAMPLES_KEPT`] of them.
    pub t: Vec<u64>,
    /// Each member's columns.
    pub nodes: BTreeMap<String, Columns>,
    /// The farm's: calls, sessions and portions summed over the members, load their mean, the
    /// latencies the worst member's.
    pub farm: Columns,
}

/// One series per figure, aligned on [`Charts::t`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Columns {
    /// Calls per second.
    pub calls_per_s: Vec<Option<f64>>,
    /// Median call latency, ms.
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile call latency, ms.
    pub p99_ms: Vec<Option<f64>>,
    /// Load score.
    pub load: Vec<Option<f64>>,
    /// Sessions.
    pub sessions: Vec<Option<f64>>,
    /// Portions.
    pub portions: Vec<Option<f64>>,
}

impl Columns {
    fn push(&mut self, s: Option<&Sample>) {
        self.calls_per_s.push(s.and_then(|s| s.calls_per_s));
        self.p50_ms.push(s.and_then(|s| s.p50_ms));
        self.p99_ms.push(s.and_then(|s| s.p99_ms));
        self.load.push(s.map(|s| s.load));
        self.sessions.push(s.map(|s| s.sessions as f64));
        self.portions.push(s.map(|s| s.portions as f64));
    }

    fn push_farm(&mut self, live: &[&Sample]) {
        let sum = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = live.iter().filter_map(|s| f(s)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>())
        };
        let max = |f: fn(&Sample) -> Option<f64>| live.iter().filter_map(|s| f(s)).reduce(f64::max);
        self.calls_per_s.push(sum(|s| s.calls_per_s));
        self.p50_ms.push(max(|s| s.p50_ms));
        self.p99_ms.push(max(|s| s.p99_ms));
        self.load.push(sum(|s| Some(s.load)).map(|l| l / live.len() as f64));
        self.sessions.push(sum(|s| Some(s.sessions as f64)));
        self.portions.push(sum(|s| Some(s.portions as f64)));
    }
}

impl History {
    /// Takes in `s`, heard at `at_ms`: a member heard is not down, and its first announcement
    /// in each second becomes that second's sample (`load` is asked for only then).
    pub fn record(&mut self, s: &NodeStats, at_ms: u64, load: impl FnOnce() -> f64) {
        self.down.remove(&s.node);
        let t = at_ms / 1000;
        if !self.rings.contains_key(&s.node) && self.rings.len() >= NODES_KEPT {
            return;
        }
        let ring = self.rings.entry(s.node.clone()).or_default();
        if ring.samples.back().is_some_and(|last| last.t >= t) {
            return;
        }
        let calls = s.calls.as_ref();
        let calls_per_s = match (calls, ring.counted) {
            (Some(c), Some((run, before, then_ms)))
                if run == s.started_ms && c.total >= before && at_ms > then_ms =>
            {
                Some((c.total - before) as f64 * 1000.0 / (at_ms - then_ms) as f64)
            }
            _ => None,
        };
        ring.counted = calls.map(|c| (s.started_ms, c.total, at_ms));
        ring.samples.push_back(Sample {
            t,
            calls_per_s,
            p50_ms: calls.and_then(|c| c.p50_ms).map(f64::from),
            p99_ms: calls.and_then(|c| c.p99_ms).map(f64::from),
            load: load(),
            sessions: s.sessions(),
            portions: s.portions.len() as u64,
        });
        while ring.samples.len() > SAMPLES_KEPT {
            ring.samples.pop_front();
        }
    }

    /// Notes that the member last heard as `last` (at `last_seen_ms`) went down at `at_ms`.
    pub fn went_down(&mut self, last: &NodeStats, reason: DownReason, at_ms: u64, last_seen_ms: u64) {
        self.down.insert(
            last.node.clone(),
            DownMember {
                name: last.node.clone(),
                mp: last.mp.to_string(),
                operator: last.operator.map(|a| a.to_string()),
                started_ms: last.started_ms,
                down_ms: at_ms,
                last_seen_ms,
                reason,
                why: reason.describe(),
            },
        );
        while self.down.len() > DOWN_KEPT {
            let Some(oldest) = self.down.values().min_by_key(|d| d.down_ms).map(|d| d.name.clone()) else {
                break;
            };
            self.remove_down(&oldest);
        }
    }

    /// The members that went down, by name.
    pub fn down(&self) -> Vec<DownMember> {
        self.down.values().cloned().collect()
    }

    /// Forgets a down member and its history; false when `name` is not down.
    pub fn remove_down(&mut self, name: &str) -> bool {
        let was = self.down.remove(name).is_some();
        if was {
            self.rings.remove(name);
        }
        was
    }

    /// The charts' columns over the last [`SAMPLES_KEPT`] seconds that have samples.
    pub fn charts(&self) -> Charts {
        let Some(newest) = self.rings.values().filter_map(|r| r.samples.back()).map(|s| s.t).max() else {
            return Charts::default();
        };
        let oldest = newest.saturating_sub(SAMPLES_KEPT as u64 - 1);
        let mut t: Vec<u64> = self
            .rings
            .values()
            .flat_map(|r| r.samples.iter().map(|s| s.t))
            .filter(|&s| s >= oldest)
            .collect();
        t.sort_unstable();
        t.dedup();
        let mut charts = Charts { nodes: BTreeMap::new(), farm: Columns::default(), t: Vec::new() };
        // Each ring is walked once, in step with `t`: `at[i]` is the index of ring i's latest
        // sample at or before the current second.
        let rings: Vec<(&String, &Ring)> = self.rings.iter().collect();
        let mut at: Vec<Option<usize>> = vec![None; rings.len()];
        for &sec in &t {
            let mut live = Vec::new();
            for (i, (name, ring)) in rings.iter().enumerate() {
                let mut next = at[i].map_or(0, |k| k + 1);
                while ring.samples.get(next).is_some_and(|s| s.t <= sec) {
                    at[i] = Some(next);
                    next += 1;
                }
                let latest = at[i].map(|k| &ring.samples[k]);
                let exact = latest.filter(|s| s.t == sec);
                charts.nodes.entry((*name).clone()).or_default().push(exact);
                if let Some(s) = latest.filter(|s| sec - s.t <= CARRY_S) {
                    live.push(s);
                }
            }
            charts.farm.push_farm(&live);
        }
        // A member whose samples all fell out of the window has no series.
        charts.nodes.retain(|_, c| c.load.iter().any(Option::is_some));
        charts.t = t;
        charts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::CallFigures;

    fn stats(node: &str, calls: u64) -> NodeStats {
        let mut s = NodeStats::example(node, 2);
        s.calls = Some(CallFigures { total: calls, p50_ms: Some(1.0), p99_ms: Some(9.0) });
        s
    }

    #[test]
    fn one_sample_a_second_with_rates_from_the_call_counts() {
        let mut h = History::default();
        let t0 = 1_000_000_000;
        h.record(&stats("a", 100), t0, || 1.0);
        // Later in the same second: no new sample, and the load is not even computed.
        h.record(&stats("a", 150), t0 + 250, || panic!("load asked for a second sample"));
        h.record(&stats("a", 300), t0 + 1000, || 2.0);
        h.record(&stats("b", 10), t0 + 1000, || 4.0);
        let c = h.charts();
        assert_eq!(c.t, vec![t0 / 1000, t0 / 1000 + 1]);
        assert_eq!(c.nodes["a"].calls_per_s, vec![None, Some(200.0)]);
        assert_eq!(c.nodes["a"].load, vec![Some(1.0), Some(2.0)]);
        assert_eq!(c.nodes["b"].load, vec![None, Some(4.0)]);
        assert_eq!(c.nodes["a"].sessions, vec![Some(12.0), Some(12.0)]);
        // The farm: a's first second alone; then a and b, summed, averaged or the worst.
        assert_eq!(c.farm.load, vec![Some(1.0), Some(3.0)]);
        assert_eq!(c.farm.sessions, vec![Some(12.0), Some(24.0)]);
        assert_eq!(c.farm.calls_per_s, vec![None, Some(200.0)]);
        assert_eq!(c.farm.p99_ms, vec![Some(9.0), Some(9.0)]);
        // A restart (another run) starts its rate afresh rather than counting backwards.
        let mut again = stats("a", 5);
        again.started_ms += 1;
        h.record(&again, t0 + 2000, || 1.0);
        assert_eq!(h.charts().nodes["a"].calls_per_s[2], None);
    }

    #[test]
    fn history_and_down_members_are_bounded() {
        let mut h = History::default();
        let t0 = 2_000_000_000;
        for i in 0..(SAMPLES_KEPT as u64 + 50) {
            h.record(&stats("a", i), t0 + i * 1000, || 1.0);
        }
        let c = h.charts();
        assert_eq!(c.t.len(), SAMPLES_KEPT);
        assert_eq!(c.nodes["a"].load.len(), SAMPLES_KEPT);
        for i in 0..(NODES_KEPT + 10) {
            h.record(&stats(&format!("n{i}"), 0), t0, || 1.0);
        }
        assert_eq!(h.rings.len(), NODES_KEPT);
        for i in 0..(DOWN_KEPT + 5) {
            h.went_down(&stats(&format!("n{i}"), 0), DownReason::LeaseLapsed, t0 + i as u64, t0);
        }
        let down = h.down();
        assert_eq!(down.len(), DOWN_KEPT);
        // The longest gone went first, and took their histories with them.
        assert!(!down.iter().any(|d| d.name == "n0"));
        assert!(!h.rings.contains_key("n0") && h.rings.contains_key(&format!("n{}", DOWN_KEPT + 4)));
    }

    #[test]
    fn down_until_removed_or_heard_again() {
        let mut h = History::default();
        let s = stats("a", 0);
        h.record(&s, 5_000, || 1.0);
        h.went_down(&s, DownReason::Left, 9_000, 5_000);
        let d = &h.down()[0];
        assert_eq!(
            (d.name.as_str(), d.reason, d.down_ms, d.last_seen_ms),
            ("a", DownReason::Left, 9_000, 5_000)
        );
        assert!(d.why.contains("left cleanly"));
        assert_eq!(serde_json::to_value(d).unwrap()["reason"], "left");
        // Heard again: up.
        h.record(&s, 10_000, || 1.0);
        assert!(h.down().is_empty());
        h.went_down(&s, DownReason::LeaseLapsed, 12_000, 10_000);
        assert!(h.remove_down("a"));
        assert!(!h.remove_down("a"));
        assert!(h.down().is_empty() && h.charts().nodes.is_empty());
    }
}
