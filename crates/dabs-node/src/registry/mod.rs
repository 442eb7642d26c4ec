//! The registry: the engine that says who is in the farm and who decides. Under the default
//! (multicast) registry that is the members' own announcements and the oldest member; under
//! etcd it is leased keys and etcd's election, whose leader key's creation revision is the
//! decider's fencing token (docs/farm.md).

use crate::stats::NodeStats;
use std::collections::BTreeMap;

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
pub(crate) use etcd::EtcdRegistry;

/// Stands in for the etcd driver in a build without it: never built, since the configuration
/// refuses `registry = "etcd"` there.
#[cfg(not(feature = "etcd"))]
pub(crate) enum EtcdRegistry {}

#[cfg(not(feature = "etcd"))]
impl EtcdRegistry {
    pub(crate) async fn start(
        _endpoints: &[String],
        _farm: &str,
        _registration: &NodeStats,
        _ttl: std::time::Duration,
        _view: std::sync::Arc<std::sync::Mutex<RegistryView>>,
        _events: tokio::sync::mpsc::UnboundedSender<RegistryEvent>,
    ) -> Result<Self, String> {
        Err("this dabs was built without the etcd registry (cargo build --features etcd)".into())
    }

    pub(crate) async fn stop(&self) {
        match *self {}
    }
}

/// The elected decider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Its node name.
    pub node: String,
    /// Its fencing token: the etcd revision at which its leader key was created. A later
    /// decider's is always larger.
    pub fence: u64,
}

/// A change the registry reports to the node.
#[derive(Clone, Debug)]
pub enum RegistryEvent {
    /// A node registered (its statistics at registration).
    Joined(Box<NodeStats>),
    /// A node's key went: its lease ended or it revoked it on a clean stop.
    Left(String),
}

/// What the registry says now.
#[derive(Clone, Debug, Default)]
pub struct RegistryView {
    /// Registered nodes by name, with their statistics at registration.
    pub members: BTreeMap<String, NodeStats>,
    /// The decider the election last named.
    pub leader: Option<Leader>,
    /// The newest fencing token this node has seen (named by the election or carried by an
    /// `ASSIGN`): a decision with an older one is refused.
    pub newest_fence: u64,
    /// This node's own token while it leads and its lease holds.
    pub mine: Option<u64>,
    /// Whether the registry answered the last time this node asked.
    pub reachable: bool,
}

/// Why an `ASSIGN` was refused under the etcd registry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The decider sent no token.
    #[error("ASSIGN without a fencing token, and this farm's decider is chosen by etcd")]
    Missing,
    /// A newer decider exists.
    #[error("the deciding node's fencing token {sent} is older than the newest decider's ({newest})")]
    Stale {
        /// The token the `ASSIGN` carried.
        sent: u64,
        /// The newest this node has seen.
        newest: u64,
    },
}

impl RegistryView {
    /// True while this node holds the decider's key and no newer decider has been seen.
    pub fn leads(&self) -> bool {
        self.mine.is_some_and(|mine| mine >= self.newest_fence)
    }

    /// The election's leader as last observed, or this node when it has just won.
    pub fn decider(&self, me: &str) -> Option<String> {
        if self.leads() {
            return Some(me.to_owned());
        }
        self.leader.as_ref().map(|l| l.node.clone())
    }

    /// Takes a leader the election named.
    pub fn observe_leader(&mut self, leader: Leader) {
        self.newest_fence = self.newest_fence.max(leader.fence);
        self.leader = Some(leader);
    }

    /// Checks the token an `ASSIGN` carries: it must be at least the newest seen (and becomes
    /// the newest when it is newer: this node may not have heard the election yet).
    pub fn check_fence(&mut self, sent: Option<u64>) -> Result<(), FenceError> {
        let sent = sent.ok_or(FenceError::Missing)?;
        if sent < self.newest_fence {
            return Err(FenceError::Stale { sent, newest: self.newest_fence });
        }
        self.newest_fence = sent;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(node: &str, fence: u64) -> Leader {
        Leader { node: node.into(), fence }
    }

    #[test]
    fn a_decision_fenced_below_the_newest_decider_is_refused() {
        let mut v = RegistryView::default();
        v.observe_leader(leader("a", 10));
        assert_eq!(v.check_fence(None), Err(FenceError::Missing));
        assert_eq!(v.check_fence(Some(9)), Err(FenceError::Stale { sent: 9, newest: 10 }));
        assert_eq!(v.check_fence(Some(10)), Ok(()));
        // A newer decider's first ASSIGN can arrive before its election is observed here:
        // taken, and from then on the old one is refused.
        assert_eq!(v.check_fence(Some(14)), Ok(()));
        assert_eq!(v.check_fence(Some(10)), Err(FenceError::Stale { sent: 10, newest: 14 }));
    }

    #[test]
    fn a_node_stops_leading_when_a_newer_decider_is_seen() {
        let mut v = RegistryView { mine: Some(10), ..Default::default() };
        v.observe_leader(leader("me", 10));
        assert!(v.leads());
        assert_eq!(v.decider("me").as_deref(), Some("me"));
        v.observe_leader(leader("b", 12));
        assert!(!v.leads());
        assert_eq!(v.decider("me").as_deref(), Some("b"));
        v.mine = None;
        assert!(!v.leads());
    }
}
