//! The node's part in policy-driven balancing: its server monitor reading the status objects
//! of the portions it hosts, its replica of the central monitor (the rankings every node
//! computes from the same announcements), and the zone its DNS front answers from.

use super::Inner;
use crate::policy::monitor::{handled, read_objects};
use crate::policy::{Policy, Ranking, rank};
use crate::stats::{NodeStats, PortionFigures};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the monitor looks for reads that are due (each application's own interval sets
/// when they are).
const MONITOR_TICK: Duration = Duration::from_millis(25);

/// One application's policy, its ranking and why, for the operator and the API.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PolicyView {
    /// The application.
    pub app: String,
    /// Its policy.
    pub policy: String,
    /// How often its status objects are read, ms.
    pub collect_interval_ms: u64,
    /// The server the policy prefers now.
    pub preferred: Option<String>,
    /// Every eligible server, best first.
    pub ranked: Vec<RankedView>,
    /// Servers out of consideration, and why.
    pub excluded: Vec<ExcludedView>,
}

/// One ranked server.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RankedView {
    /// The node.
    pub node: String,
    /// The figure it was ranked on (lower is better; throughput negated).
    pub figure: Option<f64>,
    /// Its sub-farm, if any.
    pub subfarm: Option<String>,
    /// The figures the choice was made on, in words.
    pub why: String,
}

/// A server out of consideration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExcludedView {
    /// The node.
    pub node: String,
    /// Why.
    pub why: String,
}

impl PolicyView {
    fn of(app: &crate::config::AppConfig, r: &Ranking<'_>) -> Self {
        PolicyView {
            app: app.name.clone(),
            policy: app.policy.to_string(),
            collect_interval_ms: app.collect_interval.as_millis() as u64,
            preferred: r.preferred().map(str::to_owned),
            ranked: r
                .ranked
                .iter()
                .map(|x| RankedView {
                    node: x.node.node.clone(),
                    figure: x.figure,
                    subfarm: x.subfarm.clone(),
                    why: x.why.clone(),
                })
                .collect(),
            excluded: r
                .excluded
                .iter()
                .map(|(n, w)| ExcludedView { node: n.clone(), why: w.clone() })
                .collect(),
        }
    }
}

impl Inner {
    pub(super) fn monitor(&self) -> std::sync::MutexGuard<'_, crate::policy::monitor::ServerMonitor> {
        self.monitor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server monitor: reads each hosted portion's status objects when its application's
    /// interval comes round, each read on its own task so one slow portion delays no other.
    pub(super) async fn monitor_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(MONITOR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let hosted: Vec<(String, String, Arc<PortionFigures>)> = {
                let st = self.state();
                st.hosting
                    .portions
                    .iter()
                    .map(|(va, p)| (va.clone(), p.app.clone(), p.figures.clone()))
                    .collect()
            };
            let intervals = self.collect_intervals();
            let now = Instant::now();
            let mut due = Vec::new();
            {
                let mut m = self.monitor();
                m.retain(|va| hosted.iter().any(|(v, ..)| v == va));
                for (va, app, figures) in hosted {
                    let interval =
                        intervals.get(&app).copied().unwrap_or(crate::config::DEFAULT_COLLECT_INTERVAL);
                    let publishes = !figures.status.is_empty();
                    if m.start_read(&va, publishes, interval, now) {
                        due.push((va, figures, interval));
                    }
                }
            }
            for (va, figures, interval) in due {
                let this = self.clone();
                tokio::spawn(async move {
                    let result = read_objects(figures.clone(), interval).await;
                    this.monitor().finish_read(&va, result, handled(&figures), Instant::now());
                });
            }
        }
    }

    /// Each application's collection interval, from the settings in force.
    pub(super) fn collect_intervals(&self) -> BTreeMap<String, Duration> {
        let s = self.settings_guard();
        s.apps.iter().map(|(name, a)| (name.clone(), Duration::from_millis(a.collect_interval_ms))).collect()
    }

    /// `each` applied to every application's ranking as this node's replica of the central
    /// monitor sees it now (with the clients it sent as decider that announcements do not show
    /// yet). `client` is who asks, for `closest`.
    fn with_rankings<R>(
        &self,
        client: Option<&crate::policy::Asker>,
        mut each: impl FnMut(&crate::config::AppConfig, &Ranking<'_>) -> R,
    ) -> Vec<R> {
        let apps: Vec<_> = self.config.apps.iter().filter_map(|a| self.app_config(&a.name)).collect();
        let st = self.state();
        let members: Vec<&NodeStats> =
            st.members.membership.fresh(Instant::now(), self.fresh_window()).collect();
        apps.iter()
            .map(|app| each(app, &rank(app, &self.config.subfarms, &members, &st.deciding.pending, client)))
            .collect()
    }

    /// The applications' policies, rankings and reasons, for the operator.
    pub(super) fn policy_views(&self, client: Option<&crate::policy::Asker>) -> Vec<PolicyView> {
        self.with_rankings(client, PolicyView::of)
    }

    /// What the DNS front answers now: every fresh member's address and each application's
    /// ranking.
    pub(super) fn zone_snapshot(&self) -> ZoneKey {
        let ranked =
            self.with_rankings(None, |app, r| (app.name.clone(), r.names(), app.policy == Policy::Closest));
        let st = self.state();
        let now = Instant::now();
        let nodes = st
            .members
            .membership
            .fresh(now, self.fresh_window())
            .filter(|s| !s.leaving)
            .map(|s| {
                let ip = if s.mp.ip().is_unspecified() {
                    IpAddr::V4(self.config.farm.interface)
                } else {
                    s.mp.ip()
                };
                (s.node.clone(), (ip, s.mp.port()))
            })
            .collect();
        let closest = ranked.iter().filter(|(.., closest)| *closest).map(|(app, ..)| app.clone()).collect();
        let apps = ranked.into_iter().map(|(app, names, _)| (app, names)).collect();
        ZoneKey { nodes, apps, closest }
    }
}

/// The parts of the zone that change, to tell when the DNS front needs a new one.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct ZoneKey {
    pub(super) nodes: BTreeMap<String, (IpAddr, u16)>,
    pub(super) apps: BTreeMap<String, Vec<String>>,
    pub(super) closest: std::collections::BTreeSet<String>,
}

impl Inner {
    /// Gives the DNS front a new zone when what it answers has changed (members, addresses,
    /// rankings): called on every announcement tick, so a new preference is served within
    /// one announce interval of this node hearing of it.
    pub(super) fn refresh_zone(&self) {
        let Some(zone) = &self.zone else { return };
        let key = self.zone_snapshot();
        let serial = {
            let mut last = self.zone_key.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref().is_some_and(|(k, _)| *k == key) {
                return;
            }
            // Seconds since the epoch, or one more than the last: always increasing.
            let now = (dabs_net::unix_ms() / 1000) as u32;
            let serial = last.as_ref().map_or(now, |(_, s)| now.max(s.wrapping_add(1)));
            *last = Some((key.clone(), serial));
            serial
        };
        let nodes = key
            .nodes
            .into_iter()
            .map(|(name, (ip, port))| {
                let (v4, v6) = match ip {
                    IpAddr::V4(a) => (Some(a), None),
                    IpAddr::V6(a) => (a.to_ipv4_mapped(), Some(a)),
                };
                (name, dabs_dns::NodeAddr { v4, v6, mp_port: port })
            })
            .collect();
        let data = dabs_dns::ZoneData {
            origin: self.config.dns.zone.clone(),
            ttl: self.config.dns.ttl_s,
            serial,
            ns_host: self.me.clone(),
            nodes,
            apps: key.apps,
            closest: key.closest,
        };
        zone.send_replace(Arc::new(data));
    }
}
