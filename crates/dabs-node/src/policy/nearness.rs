//! Nearness for the `closest` policy: each node's measured round trip to the networks clients
//! ask from. A network is a resolver's or a client's address cut to /24 (IPv4) or /56 (IPv6),
//! or an EDNS client subnet cut to at most that. The first question from a network starts a
//! measurement round (every member probes it, see `node/nearness.rs`) and is answered from
//! address prefixes meanwhile; later questions get the measured order. Rounds repeat while
//! the network keeps asking, and a member that joins is measured at the next check.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Widest IPv4 network one measurement stands for.
pub const V4_PREFIX: u8 = 24;
/// Widest IPv6 network one measurement stands for.
pub const V6_PREFIX: u8 = 56;
/// A network's round trips are measured again after this long (while it keeps asking).
pub const REMEASURE: Duration = Duration::from_secs(60);
/// A network not asked about for this long is forgotten.
pub const FORGET: Duration = Duration::from_secs(600);
/// Networks remembered at most; the one asked about longest ago goes first.
pub const MAX_NETWORKS: usize = 4096;

/// A client network: an address with its host bits cleared, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length, bits.
    pub len: u8,
}

impl Network {
    /// The network `client` stands for: its /24 (/56), or its EDNS client subnet's source
    /// `prefix` when that is narrower.
    pub fn of(client: IpAddr, prefix: Option<u8>) -> Network {
        let widest = if client.is_ipv4() { V4_PREFIX } else { V6_PREFIX };
        let len = prefix.map_or(widest, |p| p.min(widest));
        let addr = match client {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(len))),
        };
        Network { addr, len }
    }

    /// What to probe for this network when `asked` is the address the question came with: the
    /// address itself when it names a host (a resolver), else the network's first host (the
    /// address of a client subnet has its host bits cleared).
    pub fn probe_target(&self, asked: IpAddr) -> IpAddr {
        if asked != self.addr {
            return asked;
        }
        match asked {
            IpAddr::V4(a) if self.len < 31 => IpAddr::V4(Ipv4Addr::from(u32::from(a) | 1)),
            IpAddr::V6(a) if self.len < 127 => IpAddr::V6(Ipv6Addr::from(u128::from(a) | 1)),
            other => other,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len.min(32))) }
}

fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
}

/// Each node's round trip to a network, µs, or why it could not measure one.
pub type Figures = BTreeMap<String, Result<u32, String>>;

/// One network's measurements.
#[derive(Clone, Debug)]
struct Entry {
    target: IpAddr,
    rtt: Figures,
    /// When the last round ended.
    checked: Option<Instant>,
    /// When the round under way started.
    running: Option<Instant>,
    last_asked: Instant,
}

/// A measurement round to run: probe `target` from each of `nodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round {
    /// The network.
    pub network: Network,
    /// The address to probe.
    pub target: IpAddr,
    /// The nodes to ask.
    pub nodes: Vec<String>,
}

/// A round under way is given up (and may start again) after this long.
const ROUND_LIMIT: Duration = Duration::from_secs(10);

/// The round trips a node knows, per client network.
#[derive(Debug, Default)]
pub struct Nearness {
    entries: HashMap<Network, Entry>,
}

impl Nearness {
    /// `client`'s network (see [`Network::of`]), each node's measured round trip to it (µs), and
    /// whether it was new; the network is remembered, so the next [`Nearness::due`] measures
    /// it if it needs it.
    pub fn ask(
        &mut self,
        client: IpAddr,
        prefix: Option<u8>,
        now: Instant,
    ) -> (Network, BTreeMap<String, u32>, bool) {
        let network = Network::of(client, prefix);
        let new = !self.entries.contains_key(&network);
        if new && self.entries.len() >= MAX_NETWORKS {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.last_asked).map(|(n, _)| *n);
            if let Some(n) = oldest {
                self.entries.remove(&n);
            }
        }
        let e = self.entries.entry(network).or_insert_with(|| Entry {
            target: network.probe_target(client),
            rtt: BTreeMap::new(),
            checked: None,
            running: None,
            last_asked: now,
        });
        e.last_asked = now;
        let rtt = e.rtt.iter().filter_map(|(n, r)| r.as_ref().ok().map(|us| (n.clone(), *us))).collect();
        (network, rtt, new)
    }

    /// The rounds to start now, given the live `members`: a network never measured, measured
    /// longer than [`REMEASURE`] ago, or missing a member's figure; each marked as running.
    /// Networks idle for [`FORGET`] are dropped.
    pub fn due(&mut self, members: &[String], now: Instant) -> Vec<Round> {
        self.entries.retain(|_, e| now.saturating_duration_since(e.last_asked) < FORGET);
        let mut out = Vec::new();
        for (network, e) in &mut self.entries {
            if e.running.is_some_and(|t| now.saturating_duration_since(t) < ROUND_LIMIT) {
                continue;
            }
            let stale = e.checked.is_none_or(|t| now.saturating_duration_since(t) >= REMEASURE);
            let nodes: Vec<String> = if stale {
                members.to_vec()
            } else {
                members.iter().filter(|m| !e.rtt.contains_key(*m)).cloned().collect()
            };
            if nodes.is_empty() {
                continue;
            }
            e.running = Some(now);
            out.push(Round { network: *network, target: e.target, nodes });
        }
        out
    }

    /// Records `node`'s measurement for `network`.
    pub fn record(&mut self, network: Network, node: &str, result: Result<u32, String>) {
        if let Some(e) = self.entries.get_mut(&network) {
            e.rtt.insert(node.to_owned(), result);
        }
    }

    /// Marks `network`'s round as over.
    pub fn finish(&mut self, network: Network, now: Instant) {
        if let Some(e) = self.entries.get_mut(&network) {
            e.running = None;
            e.checked = Some(now);
        }
    }

    /// Every network known, with each node's figure or why it has none: for the operator.
    pub fn view(&self) -> Vec<(Network, IpAddr, Figures)> {
        let mut v: Vec<_> = self.entries.iter().map(|(n, e)| (*n, e.target, e.rtt.clone())).collect();
        v.sort_by_key(|(n, ..)| *n);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_are_cut_to_24_or_56_bits_or_the_narrower_subnet() {
        assert_eq!(Network::of(ip("192.0.2.77"), None).to_string(), "192.0.2.0/24");
        assert_eq!(Network::of(ip("192.0.2.77"), Some(16)).to_string(), "192.0.0.0/16");
        assert_eq!(Network::of(ip("192.0.2.77"), Some(32)).to_string(), "192.0.2.0/24");
        assert_eq!(Network::of(ip("2001:db8:1:2ff:3::9"), None).to_string(), "2001:db8:1:200::/56");
        assert_eq!(Network::of(ip("10.0.0.1"), Some(0)).to_string(), "0.0.0.0/0");
    }

    #[test]
    fn a_resolver_is_probed_itself_and_a_subnet_at_its_first_host() {
        let n = Network::of(ip("198.51.100.9"), None);
        assert_eq!(n.probe_target(ip("198.51.100.9")), ip("198.51.100.9"));
        let s = Network::of(ip("198.51.100.0"), Some(24));
        assert_eq!(s.probe_target(ip("198.51.100.0")), ip("198.51.100.1"));
        let v6 = Network::of(ip("2001:db8::"), Some(48));
        assert_eq!(v6.probe_target(ip("2001:db8::")), ip("2001:db8::1"));
    }

    #[test]
    fn the_first_question_starts_one_round_and_answers_come_after_it() {
        let mut n = Nearness::default();
        let t0 = Instant::now();
        let members = vec!["a".to_string(), "b".to_string()];
        let (net, rtt, _) = n.ask(ip("203.0.113.5"), None, t0);
        assert!(rtt.is_empty());
        let rounds = n.due(&members, t0);
        assert_eq!(rounds, vec![Round { network: net, target: ip("203.0.113.5"), nodes: members.clone() }]);
        // Asked again while the round runs: no second round.
        n.ask(ip("203.0.113.6"), None, t0);
        assert!(n.due(&members, t0).is_empty());
        n.record(net, "a", Ok(5_000));
        n.record(net, "b", Err("no answer".into()));
        n.finish(net, t0);
        let (_, rtt, _) = n.ask(ip("203.0.113.200"), None, t0 + Duration::from_secs(1));
        assert_eq!(rtt, BTreeMap::from([("a".to_string(), 5_000)]));
        // Complete and fresh: nothing to do; a new member is measured alone; later, all again.
        assert!(n.due(&members, t0 + Duration::from_secs(1)).is_empty());
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(n.due(&three, t0 + Duration::from_secs(2))[0].nodes, vec!["c".to_string()]);
        n.finish(net, t0 + Duration::from_secs(2));
        assert_eq!(n.due(&three, t0 + REMEASURE + Duration::from_secs(3))[0].nodes, three);
    }

    #[test]
    fn a_stuck_round_is_given_up_and_idle_networks_are_forgotten() {
        let mut n = Nearness::default();
        let t0 = Instant::now();
        let m = vec!["a".to_string()];
        n.ask(ip("203.0.113.5"), None, t0);
        assert_eq!(n.due(&m, t0).len(), 1);
        assert!(n.due(&m, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(n.due(&m, t0 + ROUND_LIMIT).len(), 1);
        assert!(n.due(&m, t0 + FORGET).is_empty());
        assert!(n.view().is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut n = Nearness::default();
        let t0 = Instant::now();
        for i in 0..=MAX_NETWORKS as u32 {
            n.ask(IpAddr::V4(Ipv4Addr::from(i << 8)), None, t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(n.view().len(), MAX_NETWORKS);
        assert!(!n.view().iter().any(|(net, ..)| net.addr == ip("0.0.0.0")), "the oldest went first");
    }
}
