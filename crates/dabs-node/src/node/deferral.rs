//! The node's failover process (R-FO-1…4): it checks its own health, sends clients to
//! alternates when their class's failover threshold is crossed (or the operator drains the
//! node), and calls them back, staggered, once it is healthy again.

use super::{Inner, unix_ms};
use crate::failover::{Alternate, Failover};
use crate::health::{Check, Reading, assess};
use crate::zones::{ClientInfo, Zone};
use dabs_wire::SystemCommand;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A client of one of this node's portions.
#[derive(Clone, Debug)]
pub(super) struct ClientEntry {
    pub session: dabs_net::SessionId,
    /// Its address and queue: together they name one client portion.
    pub addr: SocketAddr,
    pub queue: u16,
    pub class: Option<String>,
    pub group: Option<String>,
    /// Admitted in the serve-once zone: moved after its first request.
    pub serve_once: bool,
    /// It could not move last time (no alternate took it): not asked again before this.
    pub retry_after: Option<Instant>,
}

/// A client sent away, to be called back when this node is healthy again.
#[derive(Clone, Debug)]
pub(super) struct Deferred {
    pub app: String,
    pub client: ClientEntry,
    pub at: Instant,
    pub called_back: Option<Instant>,
}

/// A deferred client is forgotten after this: its session with us has expired by then (the
/// endpoint's idle time-out), so it can no longer be called back.
const DEFERRED_FOR: Duration = Duration::from_secs(110);
/// A client called back that has not returned by then may be called again.
const CALL_BACK_AGAIN: Duration = Duration::from_secs(5);
/// The database is probed at most this often (each probe is a durable write).
const DB_PROBE_EVERY: Duration = Duration::from_secs(1);

impl Inner {
    /// Health checks every `[health] interval`, then any pushing or calling back it calls for.
    pub(super) async fn health_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.health.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut db_checked: Option<(Instant, bool)> = None;
        loop {
            tick.tick().await;
            let db_up = match db_checked {
                Some((at, up)) if at.elapsed() < DB_PROBE_EVERY => up,
                _ => {
                    let up = self.db_probe();
                    db_checked = Some((Instant::now(), up));
                    up
                }
            };
            self.check_health(db_up).await;
            self.push_clients();
            self.call_back();
        }
    }

    fn db_probe(&self) -> bool {
        let stamp = unix_ms().to_be_bytes();
        self.db.put_setting("health-probe", &stamp).is_ok()
            && self.db.setting("health-probe").ok().flatten().is_some_and(|v| v == stamp)
    }

    async fn check_health(&self, db_up: bool) {
        let cfg = &self.config.health;
        let mut services = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            let up = match &s.check {
                Check::Mp => {
                    // Up while announcements arrive (our own come back over the group); a node
                    // just started has a lease's grace to hear the first one.
                    let lease = self.config.node.lease;
                    self.started.elapsed() < lease
                        || self.state().heard_at.is_some_and(|t| t.elapsed() < lease)
                }
                Check::Database => db_up,
                other => crate::health::probe(other, cfg.check_timeout).await,
            };
            services.push((s.clone(), up));
        }
        let reading = {
            let st = self.state();
            Reading {
                cpu_percent: st.host.cpu_percent,
                mem_total_mb: st.host.mem_total_mb,
                mem_free_mb: st.host.mem_free_mb,
                worst_queue_depth: st
                    .portions
                    .values()
                    .map(|p| p.figures.queue_depth.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0),
                services,
            }
        };
        let health = assess(&reading, cfg);
        let thresholds = self.config.failover.thresholds;
        let (before, after) = (thresholds.zone(self.state().health.score), thresholds.zone(health.score));
        let news = (before != after).then(|| {
            let why = if health.causes.is_empty() {
                "all checks pass".to_owned()
            } else {
                health.causes.join("; ")
            };
            format!("health {} — {}: {why}", health.score, zone_text(after))
        });
        self.state().health = health;
        if let Some(text) = news {
            self.note(text);
        }
    }

    /// Starts sending clients away in batches if any must go and no batch run is under way.
    pub(super) fn push_clients(self: &Arc<Self>) {
        if self.config.farm.secret.is_none() {
            return;
        }
        {
            let mut st = self.state();
            if st.pushing {
                return;
            }
            st.pushing = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let batch = this.pick_batch();
                if batch.is_empty() {
                    this.state().pushing = false;
                    return;
                }
                for (va, client, alternates) in batch {
                    this.send_failover(&client, alternates, Some(va));
                }
                tokio::time::sleep(this.config.failover.batch_interval).await;
            }
        });
    }

    /// The next clients to send away, most urgent first, each with its alternates; they move
    /// from the portions' client lists to the deferred list.
    fn pick_batch(&self) -> Vec<(String, ClientEntry, Vec<Alternate>)> {
        let policy = &self.config.failover;
        let st = self.state();
        let health = st.health.score;
        let draining = st.draining;
        let mut due: Vec<(String, usize, ClientInfo)> = Vec::new();
        for (va, p) in &st.portions {
            let latencies = p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner());
            for (i, c) in p.clients.iter().enumerate() {
                let th = policy.thresholds_for(c.class.as_deref());
                let served = latencies.contains_key(&c.session.0);
                let resting = c.retry_after.is_some_and(|t| Instant::now() < t);
                let go = !resting
                    && (draining
                        || match th.zone(health) {
                            Zone::Open | Zone::NoNewClients => false,
                            Zone::ServeOnce => !c.serve_once || served,
                            Zone::Defer => true,
                        });
                if go {
                    let latency_ms = latencies.get(&c.session.0).copied().unwrap_or(0.0);
                    let info = ClientInfo {
                        addr: c.addr,
                        class: c.class.clone(),
                        group: c.group.clone(),
                        latency_ms,
                    };
                    due.push((va.clone(), i, info));
                }
            }
        }
        if due.is_empty() {
            return Vec::new();
        }
        policy.defer_order(&mut due, |(_, _, info)| info);
        let apps: std::collections::BTreeSet<String> =
            due.iter().filter_map(|(va, ..)| st.portions.get(va).map(|p| p.app.clone())).collect();
        drop(st);
        let alternates: std::collections::HashMap<String, Vec<Alternate>> =
            apps.into_iter().map(|app| (app.clone(), self.alternates(&app))).collect();
        let mut st = self.state();
        let mut chosen: Vec<(String, usize)> = Vec::new();
        for (va, i, _) in due {
            if chosen.len() >= policy.batch {
                break;
            }
            let Some(p) = st.portions.get(&va) else { continue };
            if alternates.get(&p.app).is_some_and(|a| !a.is_empty()) {
                chosen.push((va, i));
            }
        }
        // Remove from the back of each list so the indices stay valid.
        chosen.sort_by_key(|c| std::cmp::Reverse(c.1));
        let now = Instant::now();
        let mut out = Vec::with_capacity(chosen.len());
        for (n, (va, i)) in chosen.into_iter().enumerate() {
            let Some(p) = st.portions.get_mut(&va) else { continue };
            let client = p.clients.remove(i);
            p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).remove(&client.session.0);
            // No longer an active client here, though its session stays open for a call back.
            let _ =
                p.figures.sessions.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            st.open_sessions.remove(&client.session);
            let Some(p) = st.portions.get(&va) else { continue };
            let mut alts = alternates[&p.app].clone();
            // Spread the batch over the alternates: each client's first choice differs.
            let len = alts.len();
            alts.rotate_left(n % len);
            let app = p.app.clone();
            out.push((va.clone(), client.clone(), alts));
            st.deferred.push(Deferred { app, client, at: now, called_back: None });
        }
        out
    }

    /// Tells `client` to move to `alternates`. With `home` (its portion here), a client that
    /// answers that no alternate took it (NAK 12) is kept as a client of `home`, asked again
    /// no sooner than a second later.
    fn send_failover(
        self: &Arc<Self>,
        client: &ClientEntry,
        alternates: Vec<Alternate>,
        home: Option<String>,
    ) {
        let Some(secret) = &self.config.farm.secret else { return };
        // Strictly increasing per server, also across restarts: time-based.
        let sent = self.counters.failovers.fetch_add(1, Ordering::Relaxed);
        let nonce = unix_ms() * 1000 + sent % 1000;
        let notice = Failover { alternates, nonce, issued: unix_ms() };
        let payload = notice.seal(secret, self.mp, client.addr);
        let call = self.endpoint.call_async(client.session, SystemCommand::Failover.number(), payload);
        let Some(va) = home else {
            drop(call);
            return;
        };
        let (this, mut client) = (self.clone(), client.clone());
        tokio::spawn(async move {
            let stays = matches!(
                call.await,
                Err(dabs_net::Error::Call(dabs_net::CallError::Nak {
                    code: dabs_wire::NakCode::NotAccepting,
                    ..
                }))
            );
            if stays {
                let mut st = this.state();
                st.deferred.retain(|d| d.client.session != client.session);
                client.retry_after = Some(Instant::now() + Duration::from_secs(1));
                if let Some(p) = st.portions.get_mut(&va) {
                    p.figures.sessions.fetch_add(1, Ordering::Relaxed);
                    let session = client.session;
                    p.clients.push(client);
                    st.open_sessions.insert(session, va);
                }
            }
        });
    }

    /// Calls deferred clients back while this node is better than their return threshold, no
    /// more than the return gate lets in: a `FAILOVER` naming this node as the alternate.
    fn call_back(self: &Arc<Self>) {
        let policy = &self.config.failover;
        let now = Instant::now();
        let mut calls = Vec::new();
        {
            let mut st = self.state();
            st.deferred.retain(|d| now.duration_since(d.at) < DEFERRED_FOR);
            if st.draining || st.deferred.is_empty() {
                return;
            }
            let health = st.health.score;
            // Calls outstanding count against the gate too, so the answers cannot exceed it.
            let outstanding = st
                .deferred
                .iter()
                .filter(|d| d.called_back.is_some_and(|t| now.duration_since(t) < policy.return_interval))
                .count();
            let mut room = st.return_gate.room(now).saturating_sub(outstanding);
            // Each application's emptiest portion here takes its clients back.
            let mut homes: std::collections::HashMap<String, (String, usize)> = Default::default();
            for (va, p) in &st.portions {
                let home = homes.entry(p.app.clone()).or_insert((va.clone(), p.clients.len()));
                if p.clients.len() < home.1 {
                    *home = (va.clone(), p.clients.len());
                }
            }
            for d in st.deferred.iter_mut() {
                if room == 0 {
                    break;
                }
                let ready = policy.thresholds_for(d.client.class.as_deref()).admits_returning(health)
                    && d.called_back.is_none_or(|t| now.duration_since(t) >= CALL_BACK_AGAIN);
                if let (true, Some((va, _))) = (ready, homes.get(&d.app)) {
                    d.called_back = Some(now);
                    room -= 1;
                    calls.push((d.client.clone(), va.clone()));
                }
            }
        }
        if !calls.is_empty() {
            self.note(format!("calling back {} deferred clients", calls.len()));
        }
        for (client, va) in calls {
            self.send_failover(&client, vec![Alternate { addr: self.mp, va }], None);
        }
    }
}

/// A starving portion gives clients away at most this often.
const SPREAD_COOLDOWN: Duration = Duration::from_secs(2);

impl Inner {
    /// Clients of a portion that starved since the last look move to the application's
    /// least-busy other portions (a sibling here, or on a member taking new clients): half
    /// the difference in clients, highest latency first. Spawned portions otherwise only
    /// take new clients, and the ones already waiting on the starved lock stay starved.
    pub(super) fn spread_starved(self: &Arc<Self>) {
        if self.config.farm.secret.is_none() {
            return;
        }
        let now = Instant::now();
        let mut moves = Vec::new();
        {
            let mut st = self.state();
            let counts: Vec<(String, u64)> = st
                .portions
                .iter()
                .map(|(va, p)| (va.clone(), p.figures.timeouts.load(Ordering::Relaxed)))
                .collect();
            let mut starving = Vec::new();
            for (va, t) in counts {
                if st.starve_marks.insert(va.clone(), t).is_some_and(|before| t > before) {
                    starving.push(va);
                }
            }
            for va in &starving {
                if st.last_spread.get(va).is_some_and(|t| now.duration_since(*t) < SPREAD_COOLDOWN) {
                    continue;
                }
                let Some(p) = st.portions.get(va) else { continue };
                let (app, mine) = (p.app.clone(), p.clients.len() as u64);
                let mut homes: Vec<(Alternate, u64)> = st
                    .portions
                    .iter()
                    .filter(|(v, q)| q.app == app && !starving.contains(v))
                    .map(|(v, q)| (Alternate { addr: self.mp, va: v.clone() }, q.clients.len() as u64))
                    .collect();
                let fresh = st.membership.fresh(now, self.fresh_window());
                for m in fresh.filter(|m| m.node != self.me && m.accepting) {
                    for q in m.portions.iter().filter(|q| q.app == app) {
                        homes.push((Alternate { addr: m.mp, va: q.va.clone() }, q.sessions));
                    }
                }
                homes.sort_by_key(|(_, n)| *n);
                let Some(least) = homes.first().map(|(_, n)| *n) else { continue };
                if mine <= least + 1 {
                    continue;
                }
                let give = ((mine - least) / 2).min(self.config.failover.batch as u64) as usize;
                let alternates: Vec<Alternate> = homes.into_iter().take(3).map(|(a, _)| a).collect();
                let p = st.portions.get_mut(va).expect("looked up above");
                let latency = p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).clone();
                p.clients.sort_by(|a, b| {
                    let l = |c: &ClientEntry| latency.get(&c.session.0).copied().unwrap_or(0.0);
                    l(a).total_cmp(&l(b))
                });
                // Highest latency last: take from the back.
                for n in 0..give {
                    let Some(c) = p.clients.pop() else { break };
                    let _ = p
                        .figures
                        .sessions
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    let mut alts = alternates.clone();
                    let len = alts.len();
                    alts.rotate_left(n % len);
                    moves.push((c, alts, va.clone()));
                }
                for (c, ..) in &moves {
                    st.open_sessions.remove(&c.session);
                }
                st.last_spread.insert(va.clone(), now);
            }
        }
        if !moves.is_empty() {
            self.counters.moves.fetch_add(1, Ordering::Relaxed);
            self.note(format!("moving {} clients off starving portions to less busy ones", moves.len()));
        }
        for (client, alternates, va) in moves {
            self.send_failover(&client, alternates, Some(va));
        }
    }
}

fn zone_text(zone: Zone) -> &'static str {
    match zone {
        Zone::Open => "taking new clients",
        Zone::NoNewClients => "keeping its clients, refusing new ones",
        Zone::ServeOnce => "serving new clients once, then moving them",
        Zone::Defer => "sending its clients to alternates",
    }
}
