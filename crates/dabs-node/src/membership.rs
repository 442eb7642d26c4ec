//! Membership: who is in the farm, leased by their announcements.

use crate::stats::{NodeStats, PortionStats};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A member and when it was last heard.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its latest statistics (with every portion its last parts named).
    pub stats: NodeStats,
    /// When they arrived.
    pub last_seen: Instant,
    /// The parts of its newest multi-part announcement heard so far.
    assembly: Option<Assembly>,
}

/// A multi-part announcement being put together.
#[derive(Clone, Debug)]
struct Assembly {
    seq: u64,
    taken: u64,
    portions: Vec<PortionStats>,
}

/// What an observation changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node not seen before (or seen again after it lapsed).
    Joined,
    /// A known node's figures.
    Updated,
    /// A node said it is leaving.
    Left,
    /// An older or duplicate announcement: ignored.
    Stale,
}

/// The farm as this node sees it. Every entry lapses unless renewed within the lease.
#[derive(Clone, Debug)]
pub struct Membership {
    lease: Duration,
    members: BTreeMap<String, Member>,
}

impl Membership {
    /// An empty view with the given lease.
    pub fn new(lease: Duration) -> Self {
        Self { lease, members: BTreeMap::new() }
    }

    /// Takes in an announcement, or one part of one. Any part renews the lease and the node's
    /// own figures; a part's portions replace those of the same address at once; when every
    /// part of a sequence number has come, the portions are exactly theirs (portions gone
    /// from the node go from the view).
    pub fn observe(&mut self, mut stats: NodeStats, now: Instant) -> Change {
        if stats.leaving {
            return if self.members.remove(&stats.node).is_some() { Change::Left } else { Change::Stale };
        }
        let part = stats.part.take().filter(|p| p.count > 1);
        match self.members.get_mut(&stats.node) {
            Some(m)
                if stats.started_ms == m.stats.started_ms
                    && (stats.seq < m.stats.seq || (stats.seq == m.stats.seq && part.is_none())) =>
            {
                Change::Stale
            }
            Some(m) => {
                match part {
                    None => m.assembly = None,
                    Some(p) => {
                        let same_run = stats.started_ms == m.stats.started_ms;
                        let mut a = match m.assembly.take() {
                            Some(a) if same_run && a.seq == stats.seq => a,
                            _ => Assembly { seq: stats.seq, taken: 0, portions: Vec::new() },
                        };
                        a.taken |= 1u64 << p.index.min(63);
                        a.portions.extend(stats.portions.iter().cloned());
                        let complete = a.taken.count_ones() >= u32::from(p.count.min(64));
                        let mut portions = std::mem::take(&mut m.stats.portions);
                        if complete {
                            portions = std::mem::take(&mut a.portions);
                        } else {
                            portions.retain(|old| !stats.portions.iter().any(|new| new.va == old.va));
                            portions.extend(std::mem::take(&mut stats.portions));
                            m.assembly = Some(a);
                        }
                        stats.portions = portions;
                    }
                }
                m.stats = stats;
                m.last_seen = now;
                Change::Updated
            }
            None => {
                let assembly = part.map(|p| Assembly {
                    seq: stats.seq,
                    taken: 1u64 << p.index.min(63),
                    portions: stats.portions.clone(),
                });
                self.members.insert(stats.node.clone(), Member { stats, last_seen: now, assembly });
                Change::Joined
            }
        }
    }

    /// Takes in a node the registry says joined: a member from now on, with the figures it
    /// registered, unless its announcements already made it one.
    pub fn admit(&mut self, stats: NodeStats, now: Instant) -> Change {
        if self.members.get(&stats.node).is_some_and(|m| m.stats.started_ms == stats.started_ms) {
            return Change::Stale;
        }
        self.observe(stats, now)
    }

    /// Drops a member the registry says is gone; returns it as last heard.
    pub fn remove(&mut self, name: &str) -> Option<Member> {
        self.members.remove(name)
    }

    /// Drops members whose lease ran out; returns them as last heard.
    pub fn expire(&mut self, now: Instant) -> Vec<Member> {
        let lease = self.lease;
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > lease)
            .map(|(n, _)| n.clone())
            .collect();
        gone.iter().filter_map(|n| self.members.remove(n)).collect()
    }

    /// The leader: the member that started first (ties to the name), the earliest ballot.
    pub fn leader(&self) -> Option<&str> {
        self.members
            .values()
            .min_by_key(|m| (m.stats.started_ms, m.stats.node.clone()))
            .map(|m| m.stats.node.as_str())
    }

    /// The leader among the members heard within `window`: the farm's decider. A leader that
    /// has missed a few announcements hands over then, well before its lease lapses.
    pub fn leader_within(&self, now: Instant, window: Duration) -> Option<&str> {
        self.members
            .values()
            .filter(|m| now.saturating_duration_since(m.last_seen) <= window)
            .min_by_key(|m| (m.stats.started_ms, m.stats.node.clone()))
            .map(|m| m.stats.node.as_str())
    }

    /// A member by name.
    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.get(name)
    }

    /// Every live member's statistics.
    pub fn live(&self) -> impl Iterator<Item = &NodeStats> {
        self.members.values().map(|m| &m.stats)
    }

    /// Members heard from within `window`: the ones worth sending clients to. A member that
    /// has missed a few announcements is probably gone even though its lease still runs.
    pub fn fresh(&self, now: Instant, window: Duration) -> impl Iterator<Item = &NodeStats> {
        self.members
            .values()
            .filter(move |m| now.saturating_duration_since(m.last_seen) <= window)
            .map(|m| &m.stats)
    }

    /// Number of live members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no member is known.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The live member hosting a virtual address, and that portion's queue.
    pub fn host_of(&self, va: &str) -> Option<(&NodeStats, u16)> {
        self.live().find_map(|s| s.portions.iter().find(|p| p.va == va).map(|p| (s, p.queue)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::tests::stats;

    #[test]
    fn lease_join_update_leave_and_leader() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_millis(1500));
        let mut a = stats("a", 0);
        let mut b = stats("b", 0);
        b.started_ms = a.started_ms - 10; // b started first
        assert_eq!(m.observe(a.clone(), t0), Change::Joined);
        assert_eq!(m.observe(b.clone(), t0), Change::Joined);
        assert_eq!(m.leader(), Some("b"));
        // b falls silent: still leader by lease, no longer among the freshly heard.
        assert_eq!(m.leader_within(t0 + Duration::from_millis(700), Duration::from_millis(750)), Some("b"));
        assert_eq!(m.observe(a.clone(), t0), Change::Stale);
        a.seq += 1;
        assert_eq!(m.observe(a.clone(), t0 + Duration::from_secs(1)), Change::Updated);
        assert_eq!(m.leader_within(t0 + Duration::from_secs(1), Duration::from_millis(750)), Some("a"));
        // b stops renewing: gone after its lease; a renewed and stays.
        let gone: Vec<String> =
            m.expire(t0 + Duration::from_millis(1600)).into_iter().map(|m| m.stats.node).collect();
        assert_eq!(gone, vec!["b".to_string()]);
        assert_eq!(m.leader(), Some("a"));
        a.leaving = true;
        assert_eq!(m.observe(a, t0), Change::Left);
        assert!(m.is_empty());
    }

    #[test]
    fn the_registry_admits_a_node_once_and_removes_it() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_millis(1500));
        let a = stats("a", 0);
        assert_eq!(m.admit(a.clone(), t0), Change::Joined);
        assert_eq!(m.admit(a.clone(), t0), Change::Stale, "already a member");
        let restarted = NodeStats { started_ms: a.started_ms + 5, seq: 0, ..a.clone() };
        assert_eq!(m.admit(restarted, t0), Change::Updated, "a new run of the same node");
        assert!(m.remove("a").is_some());
        assert!(m.remove("a").is_none());
    }

    #[test]
    fn parts_renew_the_member_and_together_give_exactly_its_portions() {
        use dabs_farm_proto::records::Part;
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_millis(1500));
        let a = NodeStats { seq: 10, ..stats("a", 1) };
        let template = a.portions[0].clone();
        let portion = |va: &str| PortionStats { va: va.into(), ..template.clone() };
        let part = |seq: u64, index: u16, vas: &[&str]| NodeStats {
            seq,
            part: Some(Part { index, count: 2 }),
            portions: vas.iter().map(|v| portion(v)).collect(),
            ..a.clone()
        };
        let vas = |m: &Membership| -> Vec<String> {
            let mut v: Vec<String> =
                m.get("a").unwrap().stats.portions.iter().map(|p| p.va.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(m.observe(part(10, 0, &["p1", "p2"]), t0), Change::Joined);
        assert_eq!(
            m.observe(part(10, 1, &["p3"]), t0),
            Change::Updated,
            "the second part of the same sequence"
        );
        assert_eq!(vas(&m), ["p1", "p2", "p3"]);
        // Next round: p2 is gone from the node. Until both parts came, the view keeps it.
        assert_eq!(m.observe(part(11, 1, &["p3"]), t0), Change::Updated);
        assert_eq!(vas(&m), ["p1", "p2", "p3"]);
        assert_eq!(m.observe(part(11, 0, &["p1"]), t0), Change::Updated);
        assert_eq!(vas(&m), ["p1", "p3"]);
        // A part lost for good: the next complete round still sets the list straight, and the
        // lease was renewed by the part that came.
        assert_eq!(m.observe(part(12, 0, &["p1", "p4"]), t0 + Duration::from_secs(1)), Change::Updated);
        assert_eq!(vas(&m), ["p1", "p3", "p4"]);
        assert!(m.expire(t0 + Duration::from_millis(1600)).is_empty(), "a part renews the lease");
        assert_eq!(m.observe(part(13, 0, &["p1"]), t0), Change::Updated);
        assert_eq!(m.observe(part(13, 1, &["p4"]), t0), Change::Updated);
        assert_eq!(vas(&m), ["p1", "p4"]);
        // An older sequence is stale; a whole announcement replaces everything.
        assert_eq!(m.observe(part(12, 1, &["p9"]), t0), Change::Stale);
        let whole = NodeStats { seq: 14, part: None, portions: vec![portion("p5")], ..a.clone() };
        assert_eq!(m.observe(whole, t0), Change::Updated);
        assert_eq!(vas(&m), ["p5"]);
    }
}
