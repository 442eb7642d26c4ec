//! Failover and connection thresholds (R-FO-2), which clients go first (R-FO-3) and the pace
//! of their return (R-FO-4). Pure decisions over a health score, unit-tested here; the node
//! applies them.
//!
//! Health runs from 0 (down) to 100 (idle); higher is better. "Above" a threshold means
//! strictly greater.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The thresholds one client class lives by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// At or below it, the class's clients are deferred (sent to alternates).
    pub failover: u8,
    /// Above it, new clients of the class are admitted.
    pub connection: u8,
    /// Above it, deferred clients of the class are called back and admitted when they return
    /// on their own (R-FO-4 lets it differ from the connection threshold).
    pub returning: u8,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { failover: 10, connection: 25, returning: 40 }
    }
}

/// What a server does with a class of clients at a given health (R-FO-2's zones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// Above both thresholds: clients connect and stay.
    Open,
    /// Between them, connection threshold the higher: existing clients stay, new are refused.
    NoNewClients,
    /// Between them, connection threshold the lower: new clients are served once and then
    /// moved; existing clients are deferred.
    ServeOnce,
    /// At or below both: clients are deferred and new ones refused.
    Defer,
}

impl Zone {
    /// Its name in the operator's API and page.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Open => "open",
            Zone::NoNewClients => "no_new_clients",
            Zone::ServeOnce => "serve_once",
            Zone::Defer => "defer",
        }
    }
}

impl Thresholds {
    /// The zone at `health`.
    pub fn zone(&self, health: u8) -> Zone {
        match (health > self.failover, health > self.connection) {
            (true, true) => Zone::Open,
            (true, false) => Zone::NoNewClients,
            (false, true) => Zone::ServeOnce,
            (false, false) => Zone::Defer,
        }
    }

    /// New clients get a session.
    pub fn admits_new(&self, health: u8) -> bool {
        matches!(self.zone(health), Zone::Open | Zone::ServeOnce)
    }

    /// Clients already here stay.
    pub fn keeps_existing(&self, health: u8) -> bool {
        matches!(self.zone(health), Zone::Open | Zone::NoNewClients)
    }

    /// Deferred clients may come back.
    pub fn admits_returning(&self, health: u8) -> bool {
        health > self.returning
    }
}

/// A client class: its own thresholds (R-FO-2 "per client class").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientClass {
    /// The name a client gives in its `OPEN_SESSION` (`"class"`).
    pub name: String,
    /// Its thresholds.
    pub thresholds: Thresholds,
}

/// The `[failover]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverPolicy {
    /// Thresholds of clients without a (known) class.
    pub thresholds: Thresholds,
    /// Classes with their own thresholds.
    pub classes: Vec<ClientClass>,
    /// Clients deferred first, by address (`IP:port`, or `IP` for every port).
    pub first: Vec<String>,
    /// Device groups in the order they are deferred, after the listed clients.
    pub device_groups: Vec<String>,
    /// Clients told to move per batch.
    pub batch: usize,
    /// Pause between batches.
    pub batch_interval: Duration,
    /// Deferred clients admitted back (called back or on their own) per `return_interval`, at
    /// most.
    pub return_batch: usize,
    /// The window of the return bound.
    pub return_interval: Duration,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            classes: Vec::new(),
            first: Vec::new(),
            device_groups: Vec::new(),
            batch: 200,
            batch_interval: Duration::from_millis(50),
            return_batch: 50,
            return_interval: Duration::from_millis(500),
        }
    }
}

impl FailoverPolicy {
    /// The thresholds of `class` (the default ones for none or an unknown class).
    pub fn thresholds_for(&self, class: Option<&str>) -> Thresholds {
        self.class_thresholds(class).unwrap_or(self.thresholds)
    }

    /// The thresholds of a configured class, `None` for a client of no configured class.
    pub fn class_thresholds(&self, class: Option<&str>) -> Option<Thresholds> {
        class.and_then(|c| self.classes.iter().find(|k| k.name == c)).map(|k| k.thresholds)
    }

    /// Sorts `clients` into the order they are deferred: the configured list first, then the
    /// device groups in their configured order, then everyone else; within each, highest
    /// latency first (those suffer most where they are).
    pub fn defer_order<T>(&self, clients: &mut [T], info: impl Fn(&T) -> &ClientInfo) {
        let listed = |c: &ClientInfo| {
            let ip = c.addr.ip().to_string();
            let full = c.addr.to_string();
            !self.first.iter().any(|f| *f == full || *f == ip)
        };
        let group_rank = |c: &ClientInfo| {
            c.group
                .as_deref()
                .and_then(|g| self.device_groups.iter().position(|d| d == g))
                .unwrap_or(self.device_groups.len())
        };
        clients.sort_by(|a, b| {
            let (a, b) = (info(a), info(b));
            listed(a)
                .cmp(&listed(b))
                .then(group_rank(a).cmp(&group_rank(b)))
                .then(b.latency_ms.total_cmp(&a.latency_ms))
        });
    }
}

/// A client as the deferral sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientInfo {
    /// Its address, as the server sees it.
    pub addr: SocketAddr,
    /// Its class, if it named one.
    pub class: Option<String>,
    /// Its device group, if it named one.
    pub group: Option<String>,
    /// Its recent request latency, ms (0 when unknown).
    pub latency_ms: f32,
}

/// A sliding-window bound on admissions: at most `batch` in any `interval` (no herd).
#[derive(Debug)]
pub struct ReturnGate {
    batch: usize,
    interval: Duration,
    admitted: VecDeque<Instant>,
}

impl ReturnGate {
    /// At most `batch` admissions in any window of `interval`.
    pub fn new(batch: usize, interval: Duration) -> Self {
        Self { batch: batch.max(1), interval, admitted: VecDeque::new() }
    }

    fn expire(&mut self, now: Instant) {
        while self.admitted.front().is_some_and(|t| now.duration_since(*t) >= self.interval) {
            self.admitted.pop_front();
        }
    }

    /// Admissions still allowed in the window ending at `now`.
    pub fn room(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.batch - self.admitted.len()
    }

    /// Takes one admission at `now`, or says no.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.room(now) == 0 {
            return false;
        }
        self.admitted.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(failover: u8, connection: u8) -> Thresholds {
        Thresholds { failover, connection, returning: connection }
    }

    #[test]
    fn connection_above_failover_has_three_zones() {
        let th = t(20, 50);
        assert_eq!(th.zone(80), Zone::Open);
        assert_eq!(th.zone(50), Zone::NoNewClients, "at the connection threshold: not above it");
        assert_eq!(th.zone(21), Zone::NoNewClients);
        assert_eq!(th.zone(20), Zone::Defer);
        assert_eq!(th.zone(0), Zone::Defer);
        assert!(th.keeps_existing(30) && !th.admits_new(30));
    }

    #[test]
    fn equal_thresholds_have_two_zones() {
        let th = t(30, 30);
        assert_eq!(th.zone(31), Zone::Open);
        assert_eq!(th.zone(30), Zone::Defer);
        for h in 0..=100 {
            assert!(matches!(th.zone(h), Zone::Open | Zone::Defer), "health {h}");
        }
    }

    #[test]
    fn connection_below_failover_serves_once() {
        let th = t(50, 20);
        assert_eq!(th.zone(60), Zone::Open);
        assert_eq!(th.zone(50), Zone::ServeOnce);
        assert_eq!(th.zone(21), Zone::ServeOnce);
        assert!(th.admits_new(30) && !th.keeps_existing(30));
        assert_eq!(th.zone(20), Zone::Defer);
    }

    #[test]
    fn every_transition_on_a_falling_and_rising_health() {
        // Walk health down and back up through both arrangements; every zone boundary is
        // crossed both ways and lands where the thresholds say.
        for th in [t(20, 50), t(50, 20), t(35, 35)] {
            let mut seen = Vec::new();
            for h in (0..=100).rev().chain(0..=100) {
                let z = th.zone(h);
                if seen.last() != Some(&z) {
                    seen.push(z);
                }
            }
            let expect = match th.connection.cmp(&th.failover) {
                std::cmp::Ordering::Greater => {
                    vec![Zone::Open, Zone::NoNewClients, Zone::Defer, Zone::NoNewClients, Zone::Open]
                }
                std::cmp::Ordering::Less => {
                    vec![Zone::Open, Zone::ServeOnce, Zone::Defer, Zone::ServeOnce, Zone::Open]
                }
                std::cmp::Ordering::Equal => vec![Zone::Open, Zone::Defer, Zone::Open],
            };
            assert_eq!(seen, expect, "{th:?}");
        }
    }

    #[test]
    fn classes_have_their_own_thresholds() {
        let policy = FailoverPolicy {
            classes: vec![ClientClass { name: "gold".into(), thresholds: t(5, 10) }],
            ..Default::default()
        };
        assert_eq!(policy.thresholds_for(Some("gold")), t(5, 10));
        assert_eq!(policy.thresholds_for(Some("tin")), Thresholds::default());
        assert_eq!(policy.thresholds_for(None), Thresholds::default());
        // At health 8 a gold client stays while a default one is deferred.
        assert!(policy.thresholds_for(Some("gold")).keeps_existing(8));
        assert!(!policy.thresholds_for(None).keeps_existing(8));
    }

    #[test]
    fn listed_clients_then_device_groups_then_latency() {
        let c = |port: u16, group: Option<&str>, latency: f32| ClientInfo {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            class: None,
            group: group.map(str::to_owned),
            latency_ms: latency,
        };
        let policy = FailoverPolicy {
            first: vec!["127.0.0.1:7".into()],
            device_groups: vec!["kiosk".into(), "phone".into()],
            ..Default::default()
        };
        let mut clients = vec![
            c(1, None, 5.0),
            c(2, Some("phone"), 1.0),
            c(3, None, 90.0),
            c(4, Some("kiosk"), 2.0),
            c(7, None, 0.0),
            c(5, Some("phone"), 30.0),
        ];
        policy.defer_order(&mut clients, |c| c);
        let order: Vec<u16> = clients.iter().map(|c| c.addr.port()).collect();
        assert_eq!(order, [7, 4, 5, 2, 3, 1]);
    }

    #[test]
    fn return_gate_never_exceeds_its_batch_in_any_window() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut gate = ReturnGate::new(5, interval);
        let mut admitted = Vec::new();
        // Someone knocks every 3 ms for 2 s.
        for i in 0..700u64 {
            let now = start + Duration::from_millis(3 * i);
            if gate.admit(now) {
                admitted.push(now);
            }
        }
        for (i, a) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().take_while(|b| b.duration_since(*a) < interval).count();
            assert!(in_window <= 5, "{in_window} admissions within {interval:?} from {a:?}");
        }
        // And it is a bound, not a stop: roughly batch per interval got through.
        assert!(admitted.len() >= 95, "only {} admitted in 2.1 s", admitted.len());
    }
}
