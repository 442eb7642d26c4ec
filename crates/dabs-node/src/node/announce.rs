//! Announcements: this node's statistics out to the farm, the members' in, and the run-time
//! settings that follow the newest version heard.

use super::{Inner, Lifecycle};
use crate::history::DownReason;
use crate::membership::Change;
use crate::settings::{MAX_SETTINGS_VERSION, Settings};
use crate::stats::{MAX_ANNOUNCED_PORTIONS, NodeStats, PortionStats, Sampler};
use dabs_farm_proto::shapes::{cbor, from_cbor};
use dabs_net::Addr;
use dabs_wire::{Header, Kind, SystemCommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Member addresses one announcement names at most.
const KNOWN_PER_ANNOUNCEMENT: usize = 16;
/// How long an address a member named is announced to without answering.
const HEARD_OF_FOR: Duration = Duration::from_secs(10);

impl Inner {
    /// Settings stored by an earlier run win over the file's when they are newer.
    pub(super) fn load_settings(&self) {
        let stored = self
            .db
            .setting("settings")
            .ok()
            .flatten()
            .and_then(|b| from_cbor::<Settings>(&b, "settings").ok());
        if let Some(stored) = stored {
            // Checked like a change made here: a database written by an earlier run that took
            // bad settings must not bring them back.
            if let Err(e) = stored.validate() {
                self.note(format!("stored settings version {} ignored: {e}", stored.version));
                return;
            }
            let mut current = self.settings_guard();
            if stored.newer_than(&current) {
                *current = stored;
            }
        }
    }

    pub(super) fn store_settings(&self, s: &Settings) {
        if let Err(e) = self.db.put_setting("settings", &cbor(s)) {
            tracing::error!(error = %e, "settings not stored");
        }
    }

    /// Takes settings fetched from member `from` if they are newer than ours and pass the
    /// checks a change made here passes (values, and a version that cannot wrap).
    pub(super) fn adopt_settings(&self, s: Settings, from: &str) {
        if let Err(e) = s.validate() {
            self.note_limited(format!("settings version {} from {from} refused: {e}", s.version));
            return;
        }
        let before = {
            let mut current = self.settings_guard();
            s.newer_than(&current).then(|| std::mem::replace(&mut *current, s.clone()))
        };
        if let Some(before) = before {
            self.store_settings(&s);
            self.note(s.change_event(&before, &format!("from {}", s.changed_by)));
        }
    }

    pub(super) fn own_stats(&self, leaving: bool) -> NodeStats {
        // Read first and let go: a guard taken inside the struct literal below would live to
        // its end, and a second one there deadlocks.
        let (thresholds, settings_version) = {
            let s = self.settings_guard();
            (s.thresholds(), s.version)
        };
        let intervals = self.collect_intervals();
        let decider = self.is_decider();
        let (service_holder, holds_service, cannot_hold) = self.service_figures();
        let mut st = self.state();
        st.members.seq += 1;
        let now = Instant::now();
        let monitor = self.monitor();
        let mut portions: Vec<PortionStats> = st
            .hosting
            .portions
            .iter()
            .map(|(va, p)| (va, p, monitor.view(va, intervals.get(&p.app).copied().unwrap_or_default(), now)))
            .map(|(va, p, seen)| PortionStats {
                app: p.app.clone(),
                va: va.clone(),
                queue: p.queue,
                sessions: p.figures.sessions.load(Ordering::Relaxed),
                queue_depth: p.figures.queue_depth.load(Ordering::Relaxed),
                latency_ms: p.figures.latency_ms() as f32,
                // Recent ones only: a portion that starved once must not look busy forever.
                timeouts: st.balancing.timeouts.iter().filter(|(.., v)| v == va).count() as u64,
                service_ms: p.figures.service_ms().map(|ms| ms as f32),
                rate: seen.rate,
                figures: seen.figures,
                status_fault: seen.fault,
            })
            .collect();
        drop(monitor);
        // Least busy first: the ones placement wants, and the ones kept past the limit.
        portions.sort_by_key(|p| p.sessions);
        portions.truncate(MAX_ANNOUNCED_PORTIONS);
        NodeStats {
            node: self.me.clone(),
            farm: self.config.farm.name.clone(),
            mp: self.mp,
            operator: self.operator.lock().unwrap_or_else(|e| e.into_inner()).or(self.config.node.operator),
            started_ms: self.started_ms,
            seq: st.members.seq,
            cpu_percent: st.balancing.host.cpu_percent,
            mem_total_mb: st.balancing.host.mem_total_mb,
            mem_free_mb: st.balancing.host.mem_free_mb,
            disk_free_mb: st.balancing.host.disk_free_mb,
            net_bytes_per_s: st.balancing.host.net_bytes_per_s,
            // An endpoint near its peer or reassembly limits takes no new clients: the decider
            // places them elsewhere rather than have this node refuse them (NAK 10).
            accepting: Self::admits(&st, &thresholds) && !self.endpoint.is_full(),
            draining: st.failover.draining,
            health: st.failover.health.score,
            leaving,
            settings_version,
            no_encryption: !self.config.node.accept_encryption,
            accepted: Some(st.deciding.accepted),
            client_alerts: self.counters.client_alerts.load(Ordering::Relaxed),
            calls: Some(self.calls.figures()),
            moved: {
                let now = Instant::now();
                st.balancing
                    .moved_out
                    .iter()
                    .filter(|(.., t)| now.duration_since(*t) < Duration::from_secs(60))
                    .map(|(va, node, _)| (va.clone(), node.clone()))
                    .collect()
            },
            starved: {
                let mut by: BTreeMap<String, u32> = BTreeMap::new();
                for (_, resource, ..) in &st.balancing.timeouts {
                    *by.entry(resource.clone()).or_default() += 1;
                }
                by.into_iter().collect()
            },
            portions,
            known: if self.config.farm.seeds.is_empty() {
                Vec::new()
            } else {
                // A rotating share, so every member is named within a few announcements.
                let others: Vec<SocketAddr> =
                    st.members.membership.live().filter(|m| m.node != self.me).map(|m| m.mp).collect();
                let skip = if others.is_empty() {
                    0
                } else {
                    (st.members.seq as usize * KNOWN_PER_ANNOUNCEMENT) % others.len()
                };
                others
                    .iter()
                    .cycle()
                    .skip(skip)
                    .take(others.len().min(KNOWN_PER_ANNOUNCEMENT))
                    .copied()
                    .collect()
            },
            part: None,
            decider,
            service_holder,
            holds_service,
            cannot_hold,
            compute: self.compute_stats(),
            balancer: self.config.jobs.balancer && decider,
        }
    }

    /// Sends this node's statistics to the group and the seeds and, on a farm with seeds, to
    /// every member and every address a member named that is not one yet (so a farm without
    /// multicast forms and heals from its seed lists); and takes them in itself.
    pub(super) fn announce(&self, leaving: bool) {
        let mut to: Vec<SocketAddr> = self.config.farm.seeds.clone();
        // A group the endpoint could not join is not sent to either (said once at start).
        // Under etcd the members are known by their keys: announced to one by one.
        // Under etcd the members are known by their keys and announced to one by one; the
        // group still hears the node (for `dabs status`), but takes only registered ones in.
        to.extend(self.registered_addrs());
        if self.endpoint.local_addrs().group_error.is_none() {
            to.push(SocketAddr::V4(self.config.farm.group));
        }
        if !self.config.farm.seeds.is_empty() {
            let now = Instant::now();
            let mut heard_of = self.heard_of.lock().unwrap_or_else(|e| e.into_inner());
            heard_of.retain(|_, since| now.saturating_duration_since(*since) < HEARD_OF_FOR);
            to.extend(heard_of.keys().copied());
            drop(heard_of);
            to.extend(self.state().members.membership.live().map(|m| m.mp));
        }
        to.sort();
        to.dedup();
        to.retain(|a| *a != self.mp);
        self.announce_to(leaving, &to);
    }

    /// Sends this node's statistics to `to`, and takes them in itself.
    fn announce_to(&self, leaving: bool, to: &[SocketAddr]) {
        let leaving = leaving || self.stopping.load(Ordering::Relaxed);
        let stats = self.own_stats(leaving);
        let payloads = dabs_farm_proto::control::seal_announcements(
            self.auth.announce_key(),
            self.mp,
            &stats,
            dabs_net::unix_ms(),
        );
        let header = Header { crc: true, ..Header::new(Kind::Request, SystemCommand::Announce.number()) };
        for to in to {
            for payload in &payloads {
                if let Err(e) = self.endpoint.send_sessionless(Addr::Udp(*to), header, payload.clone()) {
                    tracing::warn!(%to, error = %e, "announcement not sent");
                }
            }
        }
        if !leaving {
            let mut st = self.state();
            st.deciding.pending.observe(&stats);
            st.members.membership.observe(stats.clone(), Instant::now());
            Self::chart(&mut st, &stats);
        }
    }

    /// Takes note of the members `stats` names that this node does not know, and announces
    /// itself to each at once: it joins their views within one hop of the gossip.
    fn learn_known(&self, stats: &NodeStats) {
        if self.config.farm.seeds.is_empty() || stats.known.is_empty() {
            return;
        }
        let fresh: Vec<SocketAddr> = {
            let st = self.state();
            let members: Vec<SocketAddr> = st.members.membership.live().map(|m| m.mp).collect();
            let mut heard_of = self.heard_of.lock().unwrap_or_else(|e| e.into_inner());
            stats
                .known
                .iter()
                .filter(|a| **a != self.mp && !members.contains(a) && !self.config.farm.seeds.contains(a))
                .filter(|a| heard_of.insert(**a, Instant::now()).is_none())
                .take(KNOWN_PER_ANNOUNCEMENT)
                .copied()
                .collect()
        };
        if !fresh.is_empty() {
            self.announce_to(false, &fresh);
        }
    }

    /// Logs the decider when it is another member than last time (the oldest live one; a
    /// member joining, leaving or lapsing can change it).
    fn log_decider_change(&self) {
        let decider = self.decider();
        let change = {
            let mut st = self.state();
            let now = decider;
            (now != st.members.decider)
                .then(|| std::mem::replace(&mut st.members.decider, now.clone()))
                .map(|was| (was, now))
        };
        if let Some((was, now)) = change {
            let name = |d: Option<String>| d.unwrap_or_else(|| "none".into());
            self.lifecycle(
                Lifecycle::DeciderChanged,
                format!("decider is {} (was {})", name(now), name(was)),
            );
        }
    }

    /// Adds a member's announcement to the operator's history, its load read against the
    /// members as they are now.
    fn chart(st: &mut super::State, stats: &NodeStats) {
        let members = &mut st.members;
        let membership = &members.membership;
        members.history.record(stats, dabs_net::unix_ms(), || {
            crate::stats::load_score(stats, &crate::stats::ServiceTimes::of(membership.live()))
        });
    }

    pub(super) async fn announce_loop(self: Arc<Self>) {
        let mut sampler = Sampler::for_data_dir(&self.config.node.data_dir);
        let mut last_sample = Instant::now() - Duration::from_secs(10);
        let mut tick = tokio::time::interval(self.config.node.announce_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if last_sample.elapsed() >= Duration::from_secs(1) {
                let host = sampler.sample();
                self.state().balancing.host = host;
                last_sample = Instant::now();
            }
            self.rebalance();
            self.retire_idle();
            self.reclaim_seats();
            self.announce(false);
            let gone = {
                let mut st = self.state();
                let (now, now_ms) = (Instant::now(), dabs_net::unix_ms());
                let gone = st.members.membership.expire(now);
                for m in &gone {
                    let ago = now.saturating_duration_since(m.last_seen).as_millis() as u64;
                    st.members.history.went_down(&m.stats, DownReason::LeaseLapsed, now_ms, now_ms - ago);
                }
                gone
            };
            for m in gone {
                let node = m.stats.node;
                self.lifecycle(
                    Lifecycle::Left,
                    format!("member {node} down: {}", DownReason::LeaseLapsed.describe()),
                );
                self.peers.lock().await.remove(&node);
            }
            self.log_decider_change();
            self.refresh_zone();
        }
    }

    pub(super) async fn listen_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(Addr, Header, Vec<u8>)>,
    ) {
        let mut last_stored = Instant::now() - Duration::from_secs(60);
        while let Some((from, header, payload)) = rx.recv().await {
            if header.command != SystemCommand::Announce.number() {
                continue;
            }
            // Another farm's announcements on the same group are none of ours: not counted.
            match NodeStats::from_cbor(&payload) {
                Ok(s) if s.farm != self.config.farm.name => continue,
                _ => {}
            }
            let stats = match self.check_announcement(&from, &payload) {
                Ok(Some(s)) => s,
                // A part already taken, heard again by another path.
                Ok(None) => continue,
                Err(e) => {
                    self.auth_failed("ANNOUNCE", &from, &e);
                    continue;
                }
            };
            self.state().members.heard_at = Some(Instant::now());
            if stats.node == self.me || !(stats.leaving || self.registered(&stats.node)) {
                continue;
            }
            self.learn_known(&stats);
            let mine = self.settings_guard().version;
            // One fetch at a time: announcements keep coming while it is under way.
            // A version beyond the limit is not worth a fetch: it would be refused.
            if stats.settings_version > mine
                && stats.settings_version <= MAX_SETTINGS_VERSION
                && !self.fetching_settings.swap(true, Ordering::SeqCst)
            {
                let (this, node) = (self.clone(), stats.node.clone());
                tokio::spawn(async move {
                    match this.call_node(&node, SystemCommand::Settings.number(), Vec::new()).await {
                        Ok(bytes) => match from_cbor::<Settings>(&bytes, "settings") {
                            Ok(s) => this.adopt_settings(s, &node),
                            Err(e) => tracing::warn!(%node, error = %e, "bad settings"),
                        },
                        Err(e) => tracing::debug!(%node, error = %e, "settings not fetched"),
                    }
                    this.fetching_settings.store(false, Ordering::SeqCst);
                });
            }
            let node = stats.node.clone();
            let change = {
                let mut st = self.state();
                for (va, home) in &stats.moved {
                    st.deciding.moved.insert(va.clone(), home.clone());
                }
                let change = st.members.membership.observe(stats.clone(), Instant::now());
                match change {
                    // Its figures now include the clients it says it accepted. Read back from
                    // the view: a part alone names only some of the portions.
                    Change::Updated | Change::Joined => {
                        if let Some(merged) = st.members.membership.get(&node).map(|m| m.stats.clone()) {
                            st.deciding.pending.observe(&merged);
                            Self::chart(&mut st, &merged);
                        }
                    }
                    Change::Left => {
                        st.deciding.pending.forget(&node);
                        let now_ms = dabs_net::unix_ms();
                        st.members.history.went_down(&stats, DownReason::Left, now_ms, now_ms);
                    }
                    Change::Stale => {}
                }
                change
            };
            // A member that came or went, or the decider's word: the service address may move.
            if change != Change::Stale
                && (change != Change::Updated || self.decider().as_deref() == Some(node.as_str()))
            {
                self.service_tick();
            }
            match change {
                Change::Joined => {
                    self.lifecycle(Lifecycle::Joined, format!("member {node} joined at {}", stats.mp))
                }
                Change::Left => {
                    self.lifecycle(
                        Lifecycle::Left,
                        format!("member {node} down: {}", DownReason::Left.describe()),
                    );
                    self.peers.lock().await.remove(&node);
                }
                _ => {}
            }
            if last_stored.elapsed() >= Duration::from_secs(2) {
                let members: Vec<NodeStats> = self.state().members.membership.live().cloned().collect();
                for m in members {
                    let _ = self.db.put_farm_stats(&m.node, &m.to_cbor());
                }
                last_stored = Instant::now();
            }
        }
    }
}
