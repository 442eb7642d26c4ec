//! The farm's service address (R-POL-4, R-POL-5): the decider names one fit node to hold it
//! (keeping the holder while it stays fit), says so in its announcements, and every node
//! follows the decider it recognises: the one named takes the address (and answers at it),
//! any other holding it gives it back. Under etcd only the elected decider is followed.

use super::{Inner, Lifecycle};
use crate::stats::NodeStats;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

/// Clients remembered as having opened at the service address, at most (beyond, the set
/// starts again: a forgotten one is named the node's own address in its next REPLY).
const MAX_SERVICE_CLIENTS: usize = 1 << 16;

/// How often the holder's freshness is checked.
const SERVICE_WATCH: std::time::Duration = std::time::Duration::from_millis(50);

/// This node's part in holding the service address.
#[derive(Default)]
pub(super) struct ServiceState {
    /// It holds the address now.
    holding: bool,
    /// A take or give-back is under way.
    busy: bool,
    /// Why it could not take the address, once it tried and failed.
    refused: Option<String>,
    /// As the decider: the holder it names.
    named: Option<String>,
    /// Clients whose open came to the service address: their REPLY names it.
    clients: HashSet<SocketAddr>,
    /// When the address's lifetime was last renewed.
    renewed: Option<Instant>,
    /// The DNS front answering at the address while this node holds it.
    dns: Option<dabs_dns::DnsFront>,
}

impl Inner {
    fn service_state(&self) -> MutexGuard<'_, ServiceState> {
        self.service.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this node's announcements say about the service address: (the holder it names
    /// as decider, whether it holds it, whether it could not).
    pub(super) fn service_figures(&self) -> (Option<String>, bool, bool) {
        let s = self.service_state();
        (s.named.clone(), s.holding, s.refused.is_some())
    }

    /// The address to name in the REPLY to `peer`: the service address when its open came
    /// there (so clients that follow `addr` stay on it), else the node's own.
    pub(super) fn reply_addr(&self, peer: &dabs_net::Addr) -> SocketAddr {
        match (peer, &self.config.service) {
            (dabs_net::Addr::Udp(p), Some(service)) if self.service_state().clients.contains(p) => {
                SocketAddr::new(service.ip.into(), self.config.node.bind.port())
            }
            _ => self.mp,
        }
    }

    /// Notes a client whose open came to the service address.
    pub(super) fn came_to_service(&self, peer: &dabs_net::Addr) {
        if let dabs_net::Addr::Udp(p) = peer {
            let mut s = self.service_state();
            if s.clients.len() >= MAX_SERVICE_CLIENTS {
                s.clients.clear();
            }
            s.clients.insert(*p);
        }
    }

    /// As the decider, names the holder: the current one while it stays fit (fresh, not
    /// draining or leaving, above the failover threshold, able to hold it), else the fittest
    /// (highest health, then name), itself last. Returns whether the name changed.
    pub(super) fn name_service_holder(&self) -> bool {
        if self.config.service.is_none() {
            return false;
        }
        if !self.is_decider() {
            self.service_state().named = None;
            return false;
        }
        let failover = self.settings_guard().thresholds().failover;
        let (fit, holding): (Vec<(u8, String)>, Vec<String>) = {
            let st = self.state();
            let fresh: Vec<&NodeStats> =
                st.members.membership.fresh(Instant::now(), self.fresh_window()).collect();
            let ok = |s: &&&NodeStats| !s.draining && !s.leaving && !s.cannot_hold && s.health > failover;
            (
                fresh.iter().filter(ok).map(|s| (s.health, s.node.clone())).collect(),
                fresh.iter().filter(ok).filter(|s| s.holds_service).map(|s| s.node.clone()).collect(),
            )
        };
        let mut s = self.service_state();
        // Under etcd a decider that dies is replaced only when its lease lapses (2 s), so it
        // hands the address on as soon as another node is fit; under multicast the next
        // decider names a holder as quickly as a live one would.
        let on_me_needlessly =
            |n: &String| self.on_etcd() && *n == self.me && fit.iter().any(|(_, f)| *f != self.me);
        let current =
            s.named.clone().filter(|n| fit.iter().any(|(_, f)| f == n)).filter(|n| !on_me_needlessly(n));
        // Another node than the decider when there is one: a decider that dies holding the
        // address would make the farm wait for a new decider before it could name a holder.
        let others: Vec<&(u8, String)> = fit.iter().filter(|(_, n)| *n != self.me).collect();
        let pool = if others.is_empty() { fit.iter().collect() } else { others };
        let holding: Vec<String> = holding.into_iter().filter(|n| !on_me_needlessly(n)).collect();
        let choice = current.or_else(|| holding.first().cloned()).or_else(|| {
            pool.into_iter().max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(&a.1))).map(|(_, n)| n.clone())
        });
        let changed = choice != s.named;
        if changed {
            s.named = choice.clone();
            drop(s);
            let name = choice.unwrap_or_else(|| "no node (none is fit)".into());
            self.note(format!("service address: {name} is to hold it"));
        }
        changed
    }

    /// Follows the decider's naming: takes the address when named, gives it back when
    /// another is. Without word from a decider, changes nothing.
    pub(super) fn follow_service_holder(self: &Arc<Self>) {
        if self.config.service.is_none() {
            return;
        }
        let named = if self.is_decider() {
            self.service_state().named.clone()
        } else {
            let Some(decider) = self.decider() else { return };
            let st = self.state();
            match st.members.membership.get(&decider) {
                Some(m) => m.stats.service_holder.clone(),
                None => return,
            }
        };
        let stopping = self.stopping.load(std::sync::atomic::Ordering::Relaxed);
        let want = !stopping && named.as_deref() == Some(self.me.as_str());
        {
            let mut s = self.service_state();
            if s.busy || (want && s.refused.is_some()) {
                return;
            }
            if s.holding == want {
                if s.holding && s.renewed.is_none_or(|t| t.elapsed() >= self.service_lifetime() / 4) {
                    s.renewed = Some(Instant::now());
                    drop(s);
                    self.renew_service();
                }
                return;
            }
            s.busy = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if want {
                this.take_service().await;
            } else {
                this.give_back_service(named.as_deref()).await;
            }
            this.service_state().busy = false;
            // The farm learns of it at once: the decider stops naming a node that cannot.
            this.announce(false);
        });
    }

    /// The decider's part and every node's, in one step (on each tick, and when a member
    /// joins, leaves or the decider's word arrives).
    pub(super) fn service_tick(self: &Arc<Self>) {
        if self.name_service_holder() {
            self.announce(false);
        }
        self.follow_service_holder();
    }

    /// How long the address stays on the interface unless renewed: the node's lease, in
    /// whole seconds. A holder killed outright loses it then, on its own host too.
    fn service_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.config.node.lease.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Renews the address's lifetime and repeats the gratuitous ARP: after a partition heals,
    /// neighbours may still point at the node that held the address on the other side (and
    /// has given it back); the repeat puts them right within a renewal.
    fn renew_service(&self) {
        let Some(addr) = self.config.service.clone() else { return };
        let lifetime = self.service_lifetime();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::service_address::renew(&addr, lifetime) {
                tracing::warn!(error = %e, "service address lifetime not renewed");
            }
            if let Err(e) = crate::service_address::gratuitous_arp(&addr.interface, addr.ip) {
                tracing::debug!(error = %e, "repeated gratuitous ARP not sent");
            }
        });
    }

    /// Watches the holder more often than announcements go out: a holder that falls silent
    /// is replaced once it has missed three announcements, not up to a tick later.
    pub(super) async fn service_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SERVICE_WATCH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.service_tick();
        }
    }

    async fn take_service(&self) {
        let Some(addr) = self.config.service.clone() else { return };
        let at = SocketAddr::new(addr.ip.into(), self.config.node.bind.port());
        let taken = {
            let addr = addr.clone();
            let lifetime = self.service_lifetime();
            tokio::task::spawn_blocking(move || crate::service_address::take(&addr, lifetime)).await
        };
        let taken = match taken {
            Ok(Ok(())) => {
                self.endpoint.serve_at(Some(at)).await.map_err(|e| format!("cannot answer at {at}: {e}"))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match taken {
            Ok(()) => {
                let dns = self.dns_at_service(addr.ip).await;
                {
                    let mut s = self.service_state();
                    s.holding = true;
                    s.renewed = Some(Instant::now());
                    s.dns = dns;
                }
                self.lifecycle(
                    Lifecycle::ServiceTaken,
                    format!("holds the service address {at} on {} (gratuitous ARP sent)", addr.interface),
                );
            }
            Err(why) => {
                let _ = crate::service_address::give_back(&addr);
                self.service_state().refused = Some(why.clone());
                self.note(format!("cannot hold the service address {}/{}: {why}", addr.ip, addr.prefix));
            }
        }
    }

    /// A DNS front at the service address, on the port `[dns] bind` fixes (none when the DNS
    /// front is off or its port is left to the system: no client could know it).
    async fn dns_at_service(&self, ip: std::net::Ipv4Addr) -> Option<dabs_dns::DnsFront> {
        let zone = self.zone.as_ref()?;
        let port = self.config.dns.bind.map(|b| b.port()).filter(|p| *p != 0)?;
        let at = SocketAddr::new(ip.into(), port);
        let near: Arc<dyn dabs_dns::RoundTrips> = Arc::new(self.nearness.clone());
        match dabs_dns::DnsFront::start(at, zone.subscribe(), Some(near)).await {
            Ok(front) => Some(front),
            Err(e) => {
                self.note(format!("no DNS at the service address {at}: {e}"));
                None
            }
        }
    }

    /// Stops answering at the address and removes it (a clean stop, or another is named).
    pub(super) async fn give_back_service(&self, to: Option<&str>) {
        let Some(addr) = self.config.service.clone() else { return };
        let dns = self.service_state().dns.take();
        if let Some(dns) = dns {
            dns.stop().await;
        }
        if let Err(e) = self.endpoint.serve_at(None).await {
            tracing::debug!(error = %e, "service address socket not closed");
        }
        let given = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || crate::service_address::give_back(&addr)
        })
        .await;
        if let Ok(Err(e)) = given {
            self.note(format!("service address {} not removed: {e}", addr.ip));
        }
        {
            let mut s = self.service_state();
            s.holding = false;
            s.clients.clear();
        }
        self.lifecycle(
            Lifecycle::ServiceGiven,
            format!("gave the service address {} back ({} is to hold it)", addr.ip, to.unwrap_or("no node")),
        );
    }

    /// Whether it holds the address now (for a clean stop).
    pub(super) fn holds_service(&self) -> bool {
        self.service_state().holding
    }
}
