//! The balancing process: admission (latency marks, starvation, health zones), spawning where a
//! starved resource is least used, and moving the busiest portion off an overloaded server.

use super::{Inner, Lifecycle, state::State};
use crate::stats::NodeStats;
use dabs_farm_proto::portion::RuntimeEvent;
use dabs_farm_proto::shapes::cbor;
use dabs_wire::SystemCommand;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A node closed to new clients this long moves its busiest portion to a healthier server.
const MOVE_AFTER: Duration = Duration::from_secs(5);
/// At most one move per this interval.
const MOVE_COOLDOWN: Duration = Duration::from_secs(10);
/// How long a time-out counts as current starvation (no new clients, resource use).
pub(super) const STARVATION_WINDOW: Duration = Duration::from_secs(3);

impl Inner {
    /// True when this node takes new clients: not stopping, latency below the high-water
    /// mark (until back under the low one), and no portion starving right now.
    pub(super) fn admits_new_clients(&self, class: Option<&str>) -> bool {
        Self::admits(&self.state(), &self.thresholds_for(class))
    }

    /// The thresholds for a client of `class`: its class's configured ones, else the farm's
    /// run-time settings (changed live by the operator).
    pub(super) fn thresholds_for(&self, class: Option<&str>) -> crate::zones::Thresholds {
        self.config.failover.class_thresholds(class).unwrap_or_else(|| self.settings_guard().thresholds())
    }

    /// Admission of a new client with `thresholds`: also its health zone (R-FO-2).
    pub(super) fn admits(st: &State, thresholds: &crate::zones::Thresholds) -> bool {
        st.hosting.accepting
            && !st.failover.draining
            && !st.balancing.latency_closed
            && st.balancing.timeouts.is_empty()
            && thresholds.admits_new(st.failover.health.score)
    }

    /// The balancing process's periodic look: latency limits, the starvation window, and
    /// resources approaching an application's floor.
    pub(super) fn rebalance(self: &Arc<Self>) {
        let (high, low) = {
            let s = self.settings_guard();
            (s.max_message_latency_ms as f64, s.low_water_ms as f64)
        };
        let mut changed = None;
        let mut near_floor = Vec::new();
        {
            let mut st = self.state();
            let now = Instant::now();
            while st
                .balancing
                .timeouts
                .front()
                .is_some_and(|(t, ..)| now.duration_since(*t) > STARVATION_WINDOW)
            {
                st.balancing.timeouts.pop_front();
            }
            // Mean latency of each portion since the last look; the worst one counts.
            let mut recent: Option<f64> = None;
            let figures: Vec<(String, u64, u64)> = st
                .hosting
                .portions
                .iter()
                .map(|(va, p)| {
                    (
                        va.clone(),
                        p.figures.latency_sum_ms.load(Ordering::Relaxed),
                        p.figures.latency_count.load(Ordering::Relaxed),
                    )
                })
                .collect();
            for (va, sum, count) in figures {
                let (s0, c0) = st.balancing.latency_marks.insert(va, (sum, count)).unwrap_or((0, 0));
                if count > c0 {
                    let mean = (sum - s0) as f64 / (count - c0) as f64;
                    recent = Some(recent.map_or(mean, |r: f64| r.max(mean)));
                }
            }
            match recent {
                Some(l) if l > high && !st.balancing.latency_closed => {
                    st.balancing.latency_closed = true;
                    changed = Some(format!(
                        "latency {l:.0} ms above the high-water mark {high} ms: no new clients"
                    ));
                }
                r if st.balancing.latency_closed && r.is_none_or(|l| l < low) => {
                    st.balancing.latency_closed = false;
                    changed =
                        Some(format!("latency back under the low-water mark {low} ms: taking new clients"));
                }
                _ => {}
            }
            // Resources nearing an application's minimums (as the settings now say): add
            // capacity elsewhere before this server stops being eligible.
            let apps: std::collections::BTreeSet<String> =
                st.hosting.portions.values().map(|p| p.app.clone()).collect();
            for app in apps {
                if let Some(cfg) = self.app_config(&app)
                    && let Some(low) = crate::placement::running_low(&cfg, &st.balancing.host)
                {
                    near_floor.push((app, low));
                }
            }
        }
        if let Some(event) = changed {
            self.note(event);
        }
        let move_now = {
            let mut st = self.state();
            let closed = st.balancing.latency_closed || !st.balancing.timeouts.is_empty();
            let now = Instant::now();
            match (closed, st.balancing.closed_since) {
                (false, _) => {
                    st.balancing.closed_since = None;
                    false
                }
                (true, None) => {
                    st.balancing.closed_since = Some(now);
                    false
                }
                (true, Some(since)) => {
                    now.duration_since(since) >= MOVE_AFTER
                        && st.balancing.last_move.is_none_or(|t| now.duration_since(t) >= MOVE_COOLDOWN)
                }
            }
        };
        if move_now {
            self.move_busiest_portion();
        }
        self.spread_starved();
        for (app, (resource, cause)) in near_floor {
            self.spawn_for(&app, resource, cause);
        }
    }

    /// Moves this node's busiest portion to the least-loaded healthy member (R-LB-6). The
    /// target starts a portion under the same virtual address; once the farm has heard of it,
    /// this node stops taking requests for the old one (NAK 7: not run), so its clients
    /// re-open through the farm with their address and carry on at the new home, while the
    /// old portion finishes what it already holds.
    pub(super) fn move_busiest_portion(self: &Arc<Self>) {
        let now = Instant::now();
        let (va, app, queue, target) = {
            let mut st = self.state();
            let Some((va, p)) = st
                .hosting
                .portions
                .iter()
                .filter(|(_, p)| p.figures.sessions.load(Ordering::Relaxed) > 0)
                .max_by_key(|(_, p)| p.figures.sessions.load(Ordering::Relaxed))
                .map(|(va, p)| (va.clone(), (p.app.clone(), p.queue)))
            else {
                return;
            };
            let Some(app_cfg) = self.app_config(&p.0) else { return };
            let farm = crate::stats::ServiceTimes::of(st.members.membership.fresh(now, self.fresh_window()));
            let load = |s: &NodeStats| crate::stats::load_score(s, &farm);
            let target = st
                .members
                .membership
                .fresh(now, self.fresh_window())
                .filter(|s| s.node != self.me && crate::placement::eligible(&app_cfg, s))
                .min_by(|a, b| load(a).total_cmp(&load(b)))
                .map(|s| s.node.clone());
            let Some(target) = target else { return };
            st.balancing.last_move = Some(now);
            (va, p.0, p.1, target)
        };
        self.counters.moves.fetch_add(1, Ordering::Relaxed);
        self.note(format!("moving {va} to {target}: this server is overloaded"));
        let this = self.clone();
        tokio::spawn(async move {
            let payload = cbor(&BTreeMap::from([
                ("app", app.clone()),
                ("va", va.clone()),
                ("cause", format!("moved from {} (overloaded)", this.me)),
            ]));
            if let Err(e) = this.call_node(&target, SystemCommand::Spawn.number(), payload).await {
                this.note(format!("move of {va} to {target} failed: {e}"));
                return;
            }
            // Let the farm hear of the new home before clients are sent looking for it.
            tokio::time::sleep(this.config.node.announce_interval * 2).await;
            this.endpoint.unregister_queue(queue);
            if let Some(p) = this.state().hosting.portions.remove(&va) {
                let _ = p.events.send(RuntimeEvent::Shutdown { emergency: false });
            }
            let _ = this.db.remove_portion(&va);
            {
                let mut st = this.state();
                st.balancing.moved_out.push((va.clone(), target.clone(), Instant::now()));
                st.deciding.moved.insert(va.clone(), target.clone());
            }
            this.lifecycle(Lifecycle::Moved, format!("{va} now lives on {target}"));
        });
    }

    /// Portions of one application this node runs at most (`[balance] max_local_portions`,
    /// 0 meaning one per CPU).
    pub(super) fn max_local_portions(&self) -> u32 {
        match self.config.balance.max_local_portions {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            n => n,
        }
    }

    /// Adds a portion of `app` because of `cause`: here while this server has headroom and
    /// local preference is on, else on the eligible member with the fewest recent time-outs
    /// on `resource` (then the lowest load). At most one per application per cool-down.
    pub(super) fn spawn_for(self: &Arc<Self>, app: &str, resource: &str, cause: String) {
        let balance = &self.config.balance;
        let now = Instant::now();
        let headroom = {
            let mut st = self.state();
            if st
                .balancing
                .last_spawn
                .get(app)
                .is_some_and(|t| now.duration_since(*t) < balance.spawn_cooldown)
            {
                return;
            }
            st.balancing.last_spawn.insert(app.to_owned(), now);
            let max_local = self.max_local_portions();
            let local = st.hosting.portions.values().filter(|p| p.app == app).count() as u32;
            f64::from(st.balancing.host.cpu_percent) < balance.local_headroom_cpu_percent && local < max_local
        };
        if balance.prefer_local && headroom && resource != "memory" {
            match self.start_portion(app, None, None, None) {
                Ok((va, _)) => {
                    self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                    self.lifecycle(Lifecycle::Spawned, format!("spawned {va} here: {cause}"));
                }
                Err(e) => tracing::warn!(%app, error = %e, "spawn failed"),
            }
            return;
        }
        let Some(app_cfg) = self.app_config(app) else { return };
        let target = {
            let st = self.state();
            let members: Vec<&NodeStats> = st.members.membership.fresh(now, self.fresh_window()).collect();
            crate::placement::spawn_target(&app_cfg, &members, &self.me, resource).map(|s| s.node.clone())
        };
        let Some(target) = target else {
            // Nobody else can take it: a portion starves on its own resources, so one more here
            // still helps, within the local limit.
            let room = {
                let st = self.state();
                let max_local = self.max_local_portions();
                (st.hosting.portions.values().filter(|p| p.app == app).count() as u32) < max_local.max(2) * 2
            };
            if room
                && resource != "memory"
                && let Ok((va, _)) = self.start_portion(app, None, None, None)
            {
                self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                self.lifecycle(
                    Lifecycle::Spawned,
                    format!("spawned {va} here (no other server can take one): {cause}"),
                );
            } else {
                self.note(format!("no server can take another portion of {app} ({cause})"));
            }
            return;
        };
        let this = self.clone();
        let payload = cbor(&BTreeMap::from([("app", app.to_owned()), ("cause", cause.clone())]));
        tokio::spawn(async move {
            match this.call_node(&target, SystemCommand::Spawn.number(), payload).await {
                Ok(_) => this.note(format!("asked {target} to start a portion: {cause}")),
                Err(e) => tracing::warn!(%target, error = %e, "remote spawn failed"),
            }
        });
    }
}
