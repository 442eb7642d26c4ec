//! Membership: who is in the farm, leased by their announcements.

use crate::stats::NodeStats;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A member and when it was last heard.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its latest statistics.
    pub stats: NodeStats,
    /// When they arrived.
    pub last_seen: Instant,
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

    /// Takes in an announcement.
    pub fn observe(&mut self, stats: NodeStats, now: Instant) -> Change {
        if stats.leaving {
            return if self.members.remove(&stats.node).is_some() { Change::Left } else { Change::Stale };
        }
        match self.members.get_mut(&stats.node) {
            Some(m) if stats.started_ms == m.stats.started_ms && stats.seq <= m.stats.seq => Change::Stale,
            Some(m) => {
                m.stats = stats;
                m.last_seen = now;
                Change::Updated
            }
            None => {
                self.members.insert(stats.node.clone(), Member { stats, last_seen: now });
                Change::Joined
            }
        }
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
        assert_eq!(m.observe(a.clone(), t0), Change::Stale);
        a.seq += 1;
        assert_eq!(m.observe(a.clone(), t0 + Duration::from_secs(1)), Change::Updated);
        // b stops renewing: gone after its lease; a renewed and stays.
        let gone: Vec<String> =
            m.expire(t0 + Duration::from_millis(1600)).into_iter().map(|m| m.stats.node).collect();
        assert_eq!(gone, vec!["b".to_string()]);
        assert_eq!(m.leader(), Some("a"));
        a.leaving = true;
        assert_eq!(m.observe(a, t0), Change::Left);
        assert!(m.is_empty());
    }
}
