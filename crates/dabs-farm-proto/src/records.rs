//! Statistics records: what a node and its portions measure and share with the farm, and the
//! one load signal that every decision (placement, spawning, failover, the operator page) reads.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live figures of one server portion, updated by the runtime and the portion framework.
#[derive(Debug, Default)]
pub struct PortionFigures {
    /// Client sessions open on the portion now (added when accepted, removed when they end).
    pub sessions: AtomicU64,
    /// Requests delivered but not yet taken by the portion's loop.
    pub queue_depth: AtomicU64,
    /// Requests handled.
    pub handled: AtomicU64,
    /// Sum of one-way request latencies, ms.
    pub latency_sum_ms: AtomicU64,
    /// Number of latencies summed.
    pub latency_count: AtomicU64,
    /// Lock and timer time-outs reported by the portion.
    pub timeouts: AtomicU64,
    /// Each client session's recent request latency, ms (an average weighting the last
    /// request 1/4), for deferring the clients that suffer most first (R-FO-3).
    pub client_latency_ms: std::sync::Mutex<std::collections::HashMap<u64, f32>>,
    /// Busy time per request handled, averaged over the last [`ServiceTime::WINDOW`] or so.
    pub service: Mutex<ServiceTime>,
    /// Requests a handler is working on now (with `queue_depth`: its pending operations).
    pub in_progress: AtomicU64,
    /// Figures the portion publishes for its application's policy.
    pub status: crate::status::StatusObjects,
}

impl PortionFigures {
    /// Records one request's latency for client session `session`.
    pub fn observe_client(&self, session: u64, latency_ms: f32) {
        let mut map = self.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner());
        let avg = map.entry(session).or_insert(latency_ms);
        *avg += (latency_ms - *avg) / 4.0;
    }

    /// Mean request latency so far, ms.
    pub fn latency_ms(&self) -> f64 {
        let n = self.latency_count.load(Ordering::Relaxed);
        if n == 0 { 0.0 } else { self.latency_sum_ms.load(Ordering::Relaxed) as f64 / n as f64 }
    }

    /// Records one request handled: `busy` is what it cost the portion, `at` when it ended on
    /// the portion's own clock (any fixed origin).
    pub fn record_service(&self, at: Duration, busy: Duration) {
        self.service.lock().unwrap_or_else(|e| e.into_inner()).record(at.as_secs_f64(), busy.as_secs_f64());
    }

    /// Busy time per request, ms; `None` until a request has been handled.
    pub fn service_ms(&self) -> Option<f64> {
        self.service.lock().unwrap_or_else(|e| e.into_inner()).mean_s().map(|s| s * 1e3)
    }
}

/// A portion's busy time per request handled: an exponentially weighted mean over the last
/// [`ServiceTime::WINDOW`] or the last [`ServiceTime::MIN_REQUESTS`] requests, whichever is
/// longer. It is kept as two decayed sums, busy time and requests, whose ratio is the mean;
/// each new request first decays them by `exp(-elapsed / WINDOW)`, but never by more than
/// `1 - 1/MIN_REQUESTS`. Weighting by time makes portions that handle a request or more a
/// second average over the same span whatever their rate (a per-request weight would remember
/// a fraction of a second of a busy one); the floor keeps a portion whose requests take
/// seconds from announcing the mean of two or three of them, which is noise (the placement
/// benchmark's sweep measures both). A quiet spell changes nothing: both sums decay alike, so
/// the last known figure stays until new requests replace it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServiceTime {
    /// Decayed sum of busy seconds.
    busy_s: f64,
    /// Decayed number of requests.
    count: f64,
    /// When the sums were last decayed, seconds on the caller's clock.
    at_s: f64,
}

impl ServiceTime {
    /// The time constant of the average: long enough to smooth a portion's requests over tens
    /// of seconds, short enough to follow a host that gets busier within a minute.
    pub const WINDOW: Duration = Duration::from_secs(30);

    /// The fewest requests the average spans (about twice as many weigh in it: a mean of
    /// exponential service times is then within ±13 % or so).
    pub const MIN_REQUESTS: f64 = 32.0;

    /// Adds one request that took `busy_s` seconds and ended at `at_s` (seconds on any clock
    /// that does not go backwards by more than the workers' overlap; earlier times decay nothing).
    pub fn record(&mut self, at_s: f64, busy_s: f64) {
        if !(busy_s.is_finite() && at_s.is_finite()) {
            return;
        }
        let elapsed = (at_s - self.at_s).max(0.0);
        let keep = if self.count > 0.0 {
            (-elapsed / Self::WINDOW.as_secs_f64()).exp().max(1.0 - 1.0 / Self::MIN_REQUESTS)
        } else {
            0.0
        };
        self.busy_s = self.busy_s * keep + busy_s.max(0.0);
        self.count = self.count * keep + 1.0;
        self.at_s = self.at_s.max(at_s);
    }

    /// The mean busy time per request, seconds; `None` before the first request.
    pub fn mean_s(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.busy_s / self.count)
    }
}

fn full_health() -> u8 {
    100
}

/// One portion as the farm sees it. Keys are short: announcements must fit one datagram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortionStats {
    /// Application name.
    #[serde(rename = "a")]
    pub app: String,
    /// Virtual address.
    #[serde(rename = "v")]
    pub va: String,
    /// Queue at the node's endpoint.
    #[serde(rename = "q")]
    pub queue: u16,
    /// Sessions open on it now.
    #[serde(rename = "s")]
    pub sessions: u64,
    /// Requests waiting.
    #[serde(rename = "d")]
    pub queue_depth: u64,
    /// Mean request latency, ms.
    #[serde(rename = "l")]
    pub latency_ms: f32,
    /// Lock and timer time-outs in the last starvation window (3 s).
    #[serde(rename = "t")]
    pub timeouts: u64,
    /// Busy time per request handled, ms, averaged over about [`ServiceTime::WINDOW`]; `None`
    /// until it has handled one (and from nodes that predate the field).
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub service_ms: Option<f32>,
    /// Requests handled per second over the last collection interval (its throughput).
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f32>,
    /// Its status objects' figures as last read by the server monitor.
    #[serde(rename = "fg", default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<(String, f32)>,
    /// Why a status object took it out of consideration (failed, or silent past its
    /// interval); `None` while its objects answer.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub status_fault: Option<String>,
}

impl PortionStats {
    /// The figure `name` its status objects last gave.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|(n, _)| n == name).map(|(_, v)| f64::from(*v))
    }
}

/// What a node announces about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Node name.
    #[serde(rename = "n")]
    pub node: String,
    /// Farm name.
    #[serde(rename = "f")]
    pub farm: String,
    /// The node's MP endpoint.
    #[serde(rename = "mp")]
    pub mp: SocketAddr,
    /// Its operator interface, if any.
    #[serde(rename = "op", default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<SocketAddr>,
    /// When it started (Unix ms): the oldest member leads, ties to the earliest.
    #[serde(rename = "st")]
    pub started_ms: u64,
    /// Announcement sequence number.
    #[serde(rename = "sq")]
    pub seq: u64,
    /// CPU use of the host, percent.
    #[serde(rename = "c")]
    pub cpu_percent: f32,
    /// Memory of the host, MiB.
    #[serde(rename = "mt")]
    pub mem_total_mb: u64,
    /// Available memory, MiB.
    #[serde(rename = "mf")]
    pub mem_free_mb: u64,
    /// Free disk space where the data directory lives, MiB.
    #[serde(rename = "df")]
    pub disk_free_mb: u64,
    /// Network bytes per second, received + sent.
    #[serde(rename = "nb")]
    pub net_bytes_per_s: u64,
    /// Takes new clients.
    #[serde(rename = "ac")]
    pub accepting: bool,
    /// Drained by the operator: never sent clients, not even when every server is full.
    #[serde(rename = "dr", default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Its own health score, 0 (down) ..= 100 (R-FO-1).
    #[serde(rename = "h", default = "full_health")]
    pub health: u8,
    /// Is stopping (a clean leave).
    #[serde(rename = "lv", default)]
    pub leaving: bool,
    /// Portions this node moved away recently: (virtual address, new node). Announced so the
    /// farm sends returning clients to the new home at once.
    #[serde(rename = "mv", default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<(String, String)>,
    /// Recent lock/timer time-outs on this node by resource type: its use of each resource.
    #[serde(rename = "sr", default, skip_serializing_if = "Vec::is_empty")]
    pub starved: Vec<(String, u32)>,
    /// Version of the run-time settings it holds: a node with older ones fetches these.
    #[serde(rename = "sv", default)]
    pub settings_version: u64,
    /// It refuses encrypted sessions (`accept_encryption = false`): the decider sends
    /// encrypting clients elsewhere.
    #[serde(rename = "ne", default, skip_serializing_if = "std::ops::Not::not")]
    pub no_encryption: bool,
    /// Clients it has taken on a decider's behalf since it started (placed here by any decider,
    /// itself included; not direct opens): the decider subtracts it from the clients it sent
    /// to know which ones this announcement does not show yet. `None` from nodes that predate it.
    #[serde(rename = "ak", default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<u64>,
    /// Alerts its portions' clients have raised since it started (e.g. a FAILOVER that did
    /// not verify: someone may be forging the farm's messages).
    #[serde(rename = "ca", default, skip_serializing_if = "is_zero")]
    pub client_alerts: u64,
    /// The calls its portions have taken and their latency: what the operator page charts.
    /// `None` from nodes that predate it.
    #[serde(rename = "cl", default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<CallFigures>,
    /// Its portions (at most [`MAX_ANNOUNCED_PORTIONS`]); in one part of a multi-part
    /// announcement, that part's share of them.
    #[serde(rename = "p")]
    pub portions: Vec<PortionStats>,
    /// MP addresses of other members it knows (a rotating share of them), so a farm that
    /// meets through seeds rather than multicast spreads: a receiver that does not know one
    /// announces itself to it. Only in the first part of a multi-part announcement.
    #[serde(rename = "kn", default, skip_serializing_if = "Vec::is_empty")]
    pub known: Vec<SocketAddr>,
    /// Which part of its announcement this is, when the portions take more than one datagram;
    /// `None` for a whole one.
    #[serde(rename = "pt", default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    /// The node decides the group's opens now, as it sees the farm (so `dabs status` can
    /// mark the decider whatever the registry).
    #[serde(rename = "dc", default, skip_serializing_if = "std::ops::Not::not")]
    pub decider: bool,
    /// As the decider: the node it names to hold the farm's service address.
    #[serde(rename = "sh", default, skip_serializing_if = "Option::is_none")]
    pub service_holder: Option<String>,
    /// The node holds the farm's service address now.
    #[serde(rename = "ha", default, skip_serializing_if = "std::ops::Not::not")]
    pub holds_service: bool,
    /// The node tried to take the service address and could not (no privilege, no such
    /// interface): the decider names another.
    #[serde(rename = "nh", default, skip_serializing_if = "std::ops::Not::not")]
    pub cannot_hold: bool,
    /// Its registration as a compute server (seed 002) and its figures; `None`: it runs no jobs.
    #[serde(rename = "jc", default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<crate::jobs::ComputeStats>,
    /// Its registration as the farm's job balancer.
    #[serde(rename = "jb", default, skip_serializing_if = "std::ops::Not::not")]
    pub balancer: bool,
}

/// One datagram of a multi-part announcement: every part carries the node's own figures and
/// a share of its portions, under the same sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// This part, 0-based.
    #[serde(rename = "i")]
    pub index: u16,
    /// How many parts the announcement has (at most [`MAX_ANNOUNCEMENT_PARTS`]).
    #[serde(rename = "c")]
    pub count: u16,
}

/// Parts one announcement takes at most (a receiver keeps one bit per part).
pub const MAX_ANNOUNCEMENT_PARTS: u16 = 64;

/// A node's calls: how many so far, and the latency of the recent ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CallFigures {
    /// Requests delivered to its portions since it started (a rate is two announcements apart).
    #[serde(rename = "n")]
    pub total: u64,
    /// Median one-way request latency over about the last second, ms; `None` when none came.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f32>,
    /// 99th percentile of the same, ms.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Portions one announcement lists at most, over all its parts; a node with more leaves its
/// busiest out (they take no new clients anyway).
pub const MAX_ANNOUNCED_PORTIONS: usize = 256;

impl NodeStats {
    /// Sessions over all portions.
    pub fn sessions(&self) -> u64 {
        self.portions.iter().map(|p| p.sessions).sum()
    }

    /// Encodes for an announcement: one CBOR body per datagram of at most `capacity` bytes.
    /// One body with every portion when they fit; else parts ([`Part`]), each with the node's
    /// own figures and as many portions (least busy first) as fit. Beyond
    /// [`MAX_ANNOUNCED_PORTIONS`] or [`MAX_ANNOUNCEMENT_PARTS`] the busiest are left out.
    pub fn to_parts(&self, capacity: usize) -> Vec<Vec<u8>> {
        let mut portions = self.portions.clone();
        portions.sort_by_key(|p| p.sessions);
        portions.truncate(MAX_ANNOUNCED_PORTIONS);
        let whole = NodeStats { portions, part: None, ..self.clone() };
        let bytes = whole.to_cbor();
        if bytes.len() <= capacity {
            return vec![bytes];
        }
        // Sized with the widest part marker, so every part fits whatever its final numbers. The
        // first part alone carries the known members.
        let widest = Some(Part { index: MAX_ANNOUNCEMENT_PARTS, count: MAX_ANNOUNCEMENT_PARTS });
        let mut base = NodeStats { portions: Vec::new(), part: widest, ..whole.clone() };
        let mut groups: Vec<Vec<PortionStats>> = Vec::new();
        let mut current: Vec<PortionStats> = Vec::new();
        for p in whole.portions {
            if groups.len() == usize::from(MAX_ANNOUNCEMENT_PARTS) {
                break;
            }
            current.push(p);
            base.portions.clone_from(&current);
            if base.to_cbor().len() > capacity {
                let last = current.pop().expect("just pushed");
                if !current.is_empty() || !base.known.is_empty() {
                    groups.push(std::mem::take(&mut current));
                    base.known.clear();
                    base.portions = vec![last.clone()];
                    // A portion too big for a part of its own (a huge figure list) is left out.
                    if base.to_cbor().len() <= capacity {
                        current.push(last);
                    }
                }
            }
        }
        if !current.is_empty() && groups.len() < usize::from(MAX_ANNOUNCEMENT_PARTS) {
            groups.push(current);
        }
        if groups.is_empty() {
            groups.push(Vec::new());
        }
        let count = groups.len() as u16;
        groups
            .into_iter()
            .enumerate()
            .map(|(i, portions)| {
                let known = if i == 0 { whole.known.clone() } else { Vec::new() };
                NodeStats { portions, known, part: Some(Part { index: i as u16, count }), ..base.clone() }
                    .to_cbor()
            })
            .collect()
    }

    /// Encodes as CBOR.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).expect("CBOR into a Vec cannot fail");
        out
    }

    /// Decodes CBOR, with an error saying what was wrong.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, crate::shapes::ShapeError> {
        crate::shapes::from_cbor(bytes, "node statistics")
    }
}

/// The farm's median service time (ms) of each application: the yardstick a portion's own
/// figure is read against, and the stand-in for a portion that has not measured one yet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceTimes {
    by_app: BTreeMap<String, f64>,
}

/// A portion's service time counts at most this many times the farm's median, and at least its
/// inverse: a bogus figure (zero, or a handler stuck once) can neither make a node look free
/// nor weigh more than a hundred clients each.
const MAX_WEIGHT: f64 = 100.0;

impl ServiceTimes {
    /// The medians over the portions of `members` that have announced a service time.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a NodeStats>) -> Self {
        let mut all: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for p in members.into_iter().flat_map(|s| &s.portions) {
            if let Some(t) = measured(p) {
                all.entry(p.app.as_str()).or_default().push(t);
            }
        }
        let by_app = all
            .into_iter()
            .map(|(app, mut v)| {
                v.sort_by(f64::total_cmp);
                let mid = v.len() / 2;
                let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
                (app.to_owned(), median)
            })
            .collect();
        Self { by_app }
    }

    /// The farm's median service time of application `app`, ms; `None` when nobody measured one.
    pub fn median_ms(&self, app: &str) -> Option<f64> {
        self.by_app.get(app).copied()
    }

    /// How many clients of a median portion of its application one client of `p` is worth:
    /// its service time over the farm's median. A portion that has not measured one yet (or
    /// an application nobody has measured) counts as the median, 1: unknown speed is taken to be
    /// typical, which neither floods a new node nor starves it.
    pub fn weight(&self, p: &PortionStats) -> f64 {
        match (measured(p), self.by_app.get(&p.app)) {
            (Some(t), Some(&median)) => (t.max(1e-6) / median.max(1e-6)).clamp(1.0 / MAX_WEIGHT, MAX_WEIGHT),
            _ => 1.0,
        }
    }

    /// The weight of one more client on `s`: the mean weight of its portions of `app` (of all
    /// its portions when `app` is `None` or it runs none of `app`), 1 when it runs no portion.
    pub fn client_weight(&self, s: &NodeStats, app: Option<&str>) -> f64 {
        let mean = |ps: &mut dyn Iterator<Item = &PortionStats>| {
            let (n, sum) = ps.fold((0u32, 0.0), |(n, sum), p| (n + 1, sum + self.weight(p)));
            (n > 0).then(|| sum / f64::from(n))
        };
        app.and_then(|a| mean(&mut s.portions.iter().filter(|p| p.app == a)))
            .or_else(|| mean(&mut s.portions.iter()))
            .unwrap_or(1.0)
    }
}

/// A portion's announced service time, ms, when it is a usable figure.
fn measured(p: &PortionStats) -> Option<f64> {
    p.service_ms.map(f64::from).filter(|t| t.is_finite() && *t >= 0.0)
}

/// The one load signal: higher is busier, in units of one client of a portion as fast as the
/// farm's median (`farm`, from the same members being compared). It is the work the node has
/// taken on, each portion's weighted by its service time per request relative to the median
/// ([`ServiceTimes::weight`]): one per session, a quarter per waiting request, one per
/// starvation time-out. Then one more client (the next one: between two idle nodes the faster
/// wins), and CPU and memory pressure of the host (each 0..=1) and the portions' latency,
/// saturating (`l / (1 s + l)`, so 1 s counts a half), which add at most three together: enough
/// to tell apart nodes with the same work, nodes sharing one host among them, but never more
/// than a few clients, so a stale or stuck figure (a latency last measured under a burst)
/// cannot keep a node out of placement. These four count at the node's own weight
/// ([`ServiceTimes::client_weight`]). The decider's placement adds the clients sent since
/// the node's announcement, in the same unit. `docs/placement.md` has the measurements.
pub fn load_score(s: &NodeStats, farm: &ServiceTimes) -> f64 {
    let cpu = f64::from(s.cpu_percent.clamp(0.0, 100.0)) / 100.0;
    let mem = if s.mem_total_mb == 0 { 0.0 } else { 1.0 - s.mem_free_mb as f64 / s.mem_total_mb as f64 };
    let work: f64 = s
        .portions
        .iter()
        .map(|p| (p.sessions as f64 + 0.25 * p.queue_depth as f64 + p.timeouts as f64) * farm.weight(p))
        .sum();
    let latency_s = s.portions.iter().map(|p| f64::from(p.latency_ms)).fold(0.0, f64::max).max(0.0) / 1000.0;
    let tie_breakers = 1.0 + cpu + mem.clamp(0.0, 1.0) + latency_s / (1.0 + latency_s);
    work + farm.client_weight(s, None) * tie_breakers
}

#[cfg(any(test, feature = "fixtures"))]
impl NodeStats {
    /// A plausible announcement of `node` with a full list of portions, each with `sessions`
    /// clients: a fixture for tests of what reads announcements.
    pub fn example(node: &str, sessions: u64) -> NodeStats {
        NodeStats {
            node: node.into(),
            farm: "demo".into(),
            mp: "127.0.0.1:47101".parse().unwrap(),
            operator: Some("127.0.0.1:8101".parse().unwrap()),
            started_ms: 1_767_262_662_000,
            seq: 12_345,
            cpu_percent: 37.5,
            mem_total_mb: 24_000,
            mem_free_mb: 20_000,
            disk_free_mb: 80_000,
            net_bytes_per_s: 123_456,
            accepting: true,
            draining: false,
            health: 100,
            leaving: false,
            settings_version: 3,
            no_encryption: false,
            accepted: Some(40),
            client_alerts: 2,
            calls: Some(CallFigures { total: 1_234_567_890, p50_ms: Some(1.5), p99_ms: Some(1234.5) }),
            starved: vec![],
            moved: vec![],
            known: vec![],
            part: None,
            decider: false,
            service_holder: None,
            holds_service: false,
            cannot_hold: false,
            compute: None,
            balancer: false,
            portions: (0..6)
                .map(|i| PortionStats {
                    app: "calculator-app".into(),
                    va: format!("mp://demo-farm/calculator-app/dasp/{node}-{i}"),
                    queue: 16 + i as u16,
                    sessions,
                    queue_depth: 3,
                    latency_ms: 1.25,
                    timeouts: 0,
                    service_ms: Some(2.5),
                    rate: None,
                    figures: Vec::new(),
                    status_fault: None,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announcement_too_big_for_one_datagram_is_sent_in_parts_that_carry_every_portion() {
        let capacity = dabs_wire::single_capacity(true, 0);
        let mut s = NodeStats::example("node-1234567", 100_000);
        assert_eq!(NodeStats::from_cbor(&s.to_cbor()).unwrap(), s);
        assert!(NodeStats::from_cbor(&s.to_cbor()[..10]).is_err());
        // Few portions: one whole datagram.
        s.portions.truncate(2);
        let one = s.to_parts(capacity);
        assert_eq!(one.len(), 1);
        assert_eq!(NodeStats::from_cbor(&one[0]).unwrap().part, None);
        // Fifty: parts, each within the datagram, numbered, together every portion once.
        let template = s.portions[0].clone();
        s.portions = (0..50)
            .map(|i| PortionStats {
                va: format!("mp://demo-farm/calculator-app/dasp/p{i}"),
                sessions: 50 - i,
                ..template.clone()
            })
            .collect();
        let parts = s.to_parts(capacity);
        assert!(
            parts.len() > 1 && parts.iter().all(|p| p.len() <= capacity),
            "{:?}",
            parts.iter().map(Vec::len).collect::<Vec<_>>()
        );
        println!("50 portions: {} parts, {} bytes", parts.len(), parts.iter().map(Vec::len).sum::<usize>());
        let decoded: Vec<NodeStats> = parts.iter().map(|p| NodeStats::from_cbor(p).unwrap()).collect();
        let mut seen: Vec<String> = Vec::new();
        for (i, d) in decoded.iter().enumerate() {
            assert_eq!(d.part, Some(Part { index: i as u16, count: parts.len() as u16 }));
            assert_eq!((d.node.as_str(), d.seq), (s.node.as_str(), s.seq));
            seen.extend(d.portions.iter().map(|p| p.va.clone()));
        }
        seen.sort();
        let mut all: Vec<String> = s.portions.iter().map(|p| p.va.clone()).collect();
        all.sort();
        assert_eq!(seen, all);
        // Least busy first.
        assert_eq!(decoded[0].portions[0].sessions, 1);
    }

    #[test]
    fn more_sessions_is_more_load() {
        let farm = ServiceTimes::default();
        assert!(
            load_score(&NodeStats::example("a", 10), &farm) < load_score(&NodeStats::example("a", 20), &farm)
        );
    }

    #[test]
    fn a_faster_server_ranks_ahead_of_a_slower_one_with_equal_clients() {
        let mut fast = NodeStats::example("fast", 10);
        let mut slow = NodeStats::example("slow", 10);
        let mut median = NodeStats::example("median", 10);
        for (s, ms) in [(&mut fast, 1.0), (&mut slow, 8.0), (&mut median, 2.0)] {
            for p in &mut s.portions {
                p.service_ms = Some(ms);
            }
        }
        let farm = ServiceTimes::of([&fast, &slow, &median]);
        let (f, m, s) = (load_score(&fast, &farm), load_score(&median, &farm), load_score(&slow, &farm));
        assert!(f < m && m < s, "fast {f}, median {m}, slow {s}");
        // Work counts by speed: 10 clients on the ×8 server weigh as much as 80 on the ×1 one,
        // so the fast one still ranks first with many more clients.
        let crowded_fast = NodeStats {
            portions: fast.portions.iter().map(|p| PortionStats { sessions: 70, ..p.clone() }).collect(),
            ..fast.clone()
        };
        assert!(load_score(&crowded_fast, &farm) < s);
    }

    #[test]
    fn an_unmeasured_portion_counts_as_the_farm_median() {
        let mut measured = NodeStats::example("a", 10);
        let mut other = NodeStats::example("b", 10);
        for p in measured.portions.iter_mut().chain(other.portions.iter_mut()) {
            p.service_ms = Some(4.0);
        }
        let mut new = NodeStats::example("new", 10);
        for p in &mut new.portions {
            p.service_ms = None;
        }
        let farm = ServiceTimes::of([&measured, &other, &new]);
        assert_eq!(load_score(&new, &farm), load_score(&measured, &farm));
        // Nobody measured: every portion weighs one, the ranking is by clients.
        let farm = ServiceTimes::of([&new]);
        assert_eq!(farm.weight(&new.portions[0]), 1.0);
        assert_eq!(farm.weight(&measured.portions[0]), 1.0, "no median to compare with");
        let one_more_each = load_score(&NodeStats::example("c", 11), &farm) - load_score(&new, &farm);
        assert!((one_more_each - 6.0).abs() < 1e-9, "{one_more_each}");
        // A zero or absurd figure is bounded.
        let mut zero = measured.portions[0].clone();
        zero.service_ms = Some(0.0);
        let farm = ServiceTimes::of([&measured, &other]);
        assert_eq!(farm.weight(&zero), 1.0 / MAX_WEIGHT);
        zero.service_ms = Some(f32::INFINITY);
        assert_eq!(farm.weight(&zero), 1.0);
    }

    #[test]
    fn old_announcements_without_the_new_fields_decode() {
        // An announcement from a node that predates `w` and `ak`.
        #[derive(Serialize)]
        struct OldPortion<'a> {
            a: &'a str,
            v: &'a str,
            q: u16,
            s: u64,
            d: u64,
            l: f32,
            t: u64,
        }
        let mut s = NodeStats::example("old", 3);
        s.accepted = None;
        let mut v = ciborium::Value::serialized(&s).unwrap();
        let old = ciborium::Value::serialized(&OldPortion {
            a: "x",
            v: "mp://f/x/dasp/1",
            q: 16,
            s: 3,
            d: 0,
            l: 0.5,
            t: 0,
        })
        .unwrap();
        if let ciborium::Value::Map(m) = &mut v {
            for (k, val) in m.iter_mut() {
                if k.as_text() == Some("p") {
                    *val = ciborium::Value::Array(vec![old.clone()]);
                }
            }
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&v, &mut bytes).unwrap();
        let back = NodeStats::from_cbor(&bytes).unwrap();
        assert_eq!(back.accepted, None);
        assert_eq!(back.portions[0].service_ms, None);
        assert_eq!(back.portions[0].sessions, 3);
    }

    #[test]
    fn service_time_is_a_time_weighted_mean_over_the_window() {
        let mut t = ServiceTime::default();
        assert_eq!(t.mean_s(), None);
        // Steady 10 ms requests, ten a second for ten minutes (20 windows).
        for i in 0..6000 {
            t.record(f64::from(i) * 0.1, 0.010);
        }
        assert!((t.mean_s().unwrap() - 0.010).abs() < 1e-12);
        // The server becomes twice as slow. One window later the mean has moved 1 - 1/e (63 %)
        // of the way, three windows later 95 %.
        let window = ServiceTime::WINDOW.as_secs_f64();
        let mut at = 599.9;
        let mut after = |t: &mut ServiceTime, secs: f64| {
            let end = at + secs;
            while at < end - 1e-9 {
                at += 0.1;
                t.record(at, 0.020);
            }
            t.mean_s().unwrap()
        };
        let one = after(&mut t, window);
        assert!((one - (0.020 - 0.010 / std::f64::consts::E)).abs() < 0.0003, "{one}");
        let three = after(&mut t, 2.0 * window);
        assert!((three - (0.020 - 0.010 * (-3.0f64).exp())).abs() < 0.0003, "{three}");
        // A quiet hour keeps the figure: the first request after it is one among many.
        let before = t.mean_s().unwrap();
        assert!(before > 0.019);
        t.record(at + 3600.0, 0.005);
        let after = t.mean_s().unwrap();
        assert!(after < before && after > 0.019, "{before} then {after}");
    }

    #[test]
    fn slow_requests_are_averaged_over_at_least_min_requests() {
        // One 10 s request every 10 s, then 20 s ones: thirty seconds would hold three
        // requests; the average moves as a 32-request one does instead.
        let mut t = ServiceTime::default();
        let mut at = 0.0;
        for _ in 0..1000 {
            at += 10.0;
            t.record(at, 10.0);
        }
        for _ in 0..32 {
            at += 10.0;
            t.record(at, 20.0);
        }
        let old_weight = (1.0 - 1.0 / ServiceTime::MIN_REQUESTS).powi(32);
        let want = 20.0 - 10.0 * old_weight;
        assert!((t.mean_s().unwrap() - want).abs() < 1e-6, "{} against {want}", t.mean_s().unwrap());
        assert!(old_weight > 0.35, "a third of the weight still on the earlier requests");
    }

    #[test]
    fn service_time_averages_the_same_span_at_a_request_a_second_or_more() {
        // Two portions see the same step from 10 ms to 20 ms, one at 100 requests a second and
        // one at two a second: a window later both have moved equally far.
        let mut busy = ServiceTime::default();
        let mut quiet = ServiceTime::default();
        for (t, step) in [(&mut busy, 0.01), (&mut quiet, 0.5)] {
            let mut at = 0.0;
            while at < 330.0 {
                at += step;
                t.record(at, if at <= 300.0 { 0.010 } else { 0.020 });
            }
        }
        let (b, q) = (busy.mean_s().unwrap(), quiet.mean_s().unwrap());
        assert!((b - q).abs() < 0.0005, "busy {b}, quiet {q}");
        assert!((b - (0.020 - 0.010 / std::f64::consts::E)).abs() < 0.0005, "{b}");
    }

    #[test]
    fn portion_figures_record_service_times() {
        let f = PortionFigures::default();
        assert_eq!(f.service_ms(), None);
        f.record_service(Duration::from_secs(1), Duration::from_millis(4));
        f.record_service(Duration::from_secs(1), Duration::from_millis(6));
        assert!((f.service_ms().unwrap() - 5.0).abs() < 1e-9);
    }
}
