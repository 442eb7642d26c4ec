//! Prometheus metrics, one registry per node, rendered in the text exposition format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

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
}

/// Request latency buckets: 0.1 ms to about 3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The node's request-latency histogram, as portions see it: something to report into.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(pub Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(latency_histogram())
    }
}

impl dabs_farm_proto::portion::LatencyObserver for LatencyHistogram {
    fn observe(&self, seconds: f64) {
        self.0.observe(seconds);
    }
}

/// Figures a scrape reports besides the endpoint's counters.
pub struct Gauges {
    /// Open MP sessions.
    pub sessions: u64,
    /// Running portions.
    pub portions: u64,
    /// Live farm members (including this node).
    pub members: u64,
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// Renders the node's metrics. The registry is built per scrape from the live figures (the
/// latency histogram is shared and long-lived), so counters can never drift from the truth.
pub fn render(mp: &dabs_proto::Stats, gauges: &Gauges, node: &NodeCounters, latency: &Histogram) -> String {
    let mut r = Registry::with_prefix("dabs");
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
        let g: Gauge = Gauge::default();
        g.set(value as i64);
        r.register(name, help, g);
    }
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
    r.register(
        "request_latency_seconds",
        "One-way latency of requests delivered to portions",
        latency.clone(),
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
        let h = latency_histogram();
        h.observe(0.002);
        let counters = NodeCounters::default();
        counters.moves.store(9, Ordering::Relaxed);
        counters.failovers.store(10, Ordering::Relaxed);
        counters.client_alerts.store(11, Ordering::Relaxed);
        counters.portions_retired.store(12, Ordering::Relaxed);
        mp.sessions_reclaimed = 13;
        let text = render(&mp, &Gauges { sessions: 4, portions: 1, members: 3 }, &counters, &h);
        for needle in [
            "dabs_mp_datagrams_received_total 7",
            "dabs_mp_retransmits_total 2",
            "dabs_mp_naks_sent_total{code=\"2\"} 3",
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
            "dabs_mp_sessions_reclaimed_total 13",
            "dabs_request_latency_seconds_count 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
