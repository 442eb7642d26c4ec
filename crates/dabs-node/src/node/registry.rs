//! The node's side of its registry: who decides, who is a member, and the fence on `ASSIGN`,
//! read from etcd under `registry = "etcd"` and from announcements otherwise.

use super::{Inner, Lifecycle};
use crate::history::DownReason;
use crate::membership::Change;
use crate::registry::{FenceError, RegistryEvent, RegistryView};
use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;
use tokio::sync::mpsc;

impl Inner {
    /// True when etcd keeps this farm's membership and chooses its decider.
    pub(super) fn on_etcd(&self) -> bool {
        self.config.farm.registry.etcd().is_some()
    }

    pub(super) fn registry_view(&self) -> MutexGuard<'_, RegistryView> {
        self.registry_view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Under etcd, only registered nodes are members: an announcement from any other is
    /// not taken in (it has no lease, or its lease ended).
    pub(super) fn registered(&self, node: &str) -> bool {
        !self.on_etcd() || self.registry_view().members.contains_key(node)
    }

    /// The registered members' MP addresses, announced to under etcd.
    pub(super) fn registered_addrs(&self) -> Vec<SocketAddr> {
        if !self.on_etcd() {
            return Vec::new();
        }
        self.registry_view().members.values().map(|s| s.mp).collect()
    }

    /// The fencing token this node's decisions carry: its election's, under etcd.
    pub(super) fn fence(&self) -> Option<u64> {
        if !self.on_etcd() {
            return None;
        }
        self.registry_view().mine
    }

    /// Checks the token on an `ASSIGN` (under etcd; announcements carry none).
    pub(super) fn check_fence(&self, sent: Option<u64>) -> Result<(), FenceError> {
        if !self.on_etcd() {
            return Ok(());
        }
        self.registry_view().check_fence(sent)
    }

    /// Applies what the registry reports: a node registered joins at once, a node whose key
    /// went leaves at once (its lease ended, or it revoked it on a clean stop).
    pub(super) async fn registry_loop(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<RegistryEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                RegistryEvent::Joined(stats) => {
                    if stats.node == self.me {
                        continue;
                    }
                    let (node, mp) = (stats.node.clone(), stats.mp);
                    let change = self.state().members.membership.admit(*stats, Instant::now());
                    if change == Change::Joined {
                        self.lifecycle(Lifecycle::Joined, format!("member {node} joined at {mp} (etcd)"));
                        // Announce to it now: its figures and ours flow from the first moment.
                        self.announce(false);
                        self.service_tick();
                    }
                }
                RegistryEvent::Left(node) => {
                    if node == self.me {
                        continue;
                    }
                    let gone = {
                        let mut st = self.state();
                        let gone = st.members.membership.remove(&node);
                        if let Some(m) = &gone {
                            st.deciding.pending.forget(&node);
                            let now_ms = dabs_net::unix_ms();
                            st.members.history.went_down(&m.stats, DownReason::Deregistered, now_ms, now_ms);
                        }
                        gone
                    };
                    if gone.is_some() {
                        self.lifecycle(
                            Lifecycle::Left,
                            format!("member {node} down: {}", DownReason::Deregistered.describe()),
                        );
                        self.peers.lock().await.remove(&node);
                        self.service_tick();
                    }
                }
            }
        }
    }
}
