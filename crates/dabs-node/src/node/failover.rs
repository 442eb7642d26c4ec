//! The node's failover process (R-FO-1…4): it checks its own health, sends clients to
//! alternates when their class's failover threshold is crossed (or the operator drains the
//! node), and calls them back, staggered, once it is healthy again.

use super::{Inner, unix_ms};
use crate::health::{Check, Reading, assess};
use crate::stats::NodeStats;
use crate::zones::{ClientInfo, Zone};
use dabs_farm_proto::seal::{Alternate, Failover};
use dabs_net::OpenRequest;
use dabs_wire::{NakCode, SystemCommand};
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
    /// Its session is encrypted: it moves only to members that accept encryption.
    pub encrypted: bool,
    /// It speaks MP over a WebSocket to this node's operator port: a FAILOVER to it is sealed
    /// as sent from there.
    pub websocket: bool,
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
    /// Drains this node (the operator's failover): no new clients, and every client is told to
    /// move, in batches so the alternates are not hit by a herd. `undo` reopens it.
    pub(super) fn drain(self: &Arc<Self>, undo: bool) {
        self.state().failover.draining = !undo;
        if undo {
            // The failover process calls the deferred clients back, staggered.
            self.note("drain undone: taking new clients again".into());
            return;
        }
        if self.config.farm.secret.is_none() {
            self.note("draining without a farm secret: clients cannot be told to move".into());
            return;
        }
        let clients: usize = self.state().hosting.portions.values().map(|p| p.clients.len()).sum();
        self.note(format!("draining: telling {clients} clients to move"));
        self.push_clients();
    }

    /// Up to three alternates for a client of `app`: the least-loaded other members that take
    /// new clients, each with its emptiest portion of the application.
    /// With `encrypted`, only members that accept encrypted sessions.
    pub(super) fn alternates(&self, app: &str, encrypted: bool) -> Vec<dabs_farm_proto::seal::Alternate> {
        let Some(app_cfg) = self.app_config(app) else { return Vec::new() };
        let st = self.state();
        let mut members: Vec<&NodeStats> = st
            .members
            .membership
            .fresh(Instant::now(), self.fresh_window())
            .filter(|s| s.node != self.me && crate::placement::eligible(&app_cfg, s))
            .filter(|s| !encrypted || !s.no_encryption)
            .collect();
        let farm =
            crate::stats::ServiceTimes::of(st.members.membership.fresh(Instant::now(), self.fresh_window()));
        let load = |s: &NodeStats| crate::stats::load_score(s, &farm);
        members.sort_by(|a, b| load(a).total_cmp(&load(b)));
        members
            .into_iter()
            .filter_map(|s| {
                let p = s.portions.iter().filter(|p| p.app == app).min_by_key(|p| p.sessions)?;
                Some(dabs_farm_proto::seal::Alternate { addr: s.mp, va: p.va.clone(), ws: websocket_of(s) })
            })
            // More than are sent: a WebSocket client can use only those with one.
            .take(8)
            .collect()
    }

    /// A client this node deferred, coming back (called back or on its own): admitted while
    /// the node is better than the client's return threshold and the return gate has room
    /// (R-FO-4), else refused so it stays where it is. `Ok(false)`: not a deferred client.
    pub(super) fn admit_deferred(&self, req: &OpenRequest) -> Result<bool, (NakCode, String)> {
        let Some(addr) = req.peer.socket_addr() else { return Ok(false) };
        let mut st = self.state();
        let Some(i) =
            st.failover.deferred.iter().position(|d| d.client.addr == addr && d.client.queue == req.src)
        else {
            return Ok(false);
        };
        let health = st.failover.health.score;
        let th = self.thresholds_for(st.failover.deferred[i].client.class.as_deref());
        if st.failover.draining || !th.admits_returning(health) || !th.keeps_existing(health) {
            return Err((
                NakCode::NotAccepting,
                format!(
                    "node {} is not taking deferred clients back yet (health {health}, return threshold {})",
                    self.me, th.returning
                ),
            ));
        }
        if !st.failover.return_gate.admit(Instant::now()) {
            let f = &self.config.failover;
            return Err((
                NakCode::NotAccepting,
                format!(
                    "node {} takes back at most {} deferred clients per {} ms; stay where you are",
                    self.me,
                    f.return_batch,
                    f.return_interval.as_millis()
                ),
            ));
        }
        st.failover.deferred.remove(i);
        Ok(true)
    }

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
                        || self.state().members.heard_at.is_some_and(|t| t.elapsed() < lease)
                }
                Check::Database => db_up,
                other => crate::health::probe(other, cfg.check_timeout).await,
            };
            services.push((s.clone(), up));
        }
        let reading = {
            let st = self.state();
            Reading {
                cpu_percent: st.balancing.host.cpu_percent,
                mem_total_mb: st.balancing.host.mem_total_mb,
                mem_free_mb: st.balancing.host.mem_free_mb,
                worst_queue_depth: st
                    .hosting
                    .portions
                    .values()
                    .map(|p| p.figures.queue_depth.load(Ordering::Relaxed))
                    .max()
                    .unwrap_or(0),
                services,
            }
        };
        let health = assess(&reading, cfg);
        let thresholds = self.settings_guard().thresholds();
        let (before, after) =
            (thresholds.zone(self.state().failover.health.score), thresholds.zone(health.score));
        let news = (before != after).then(|| {
            let why = if health.causes.is_empty() {
                "all checks pass".to_owned()
            } else {
                health.causes.join("; ")
            };
            format!("health {} — {}: {why}", health.score, zone_text(after))
        });
        self.state().failover.health = health;
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
            if st.failover.pushing {
                return;
            }
            st.failover.pushing = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // Cleared however the run ends, so a failure cannot stop all later pushes.
            struct Done(Arc<Inner>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.state().failover.pushing = false;
                }
            }
            let _done = Done(this.clone());
            loop {
                let batch = this.pick_batch();
                if batch.is_empty() {
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
        // Read before the state lock: clients of no configured class follow the live settings.
        let defaults = self.settings_guard().thresholds();
        let st = self.state();
        let health = st.failover.health.score;
        let draining = st.failover.draining;
        let mut due: Vec<(String, dabs_net::SessionId, bool, ClientInfo)> = Vec::new();
        for (va, p) in &st.hosting.portions {
            let latencies = p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner());
            for c in &p.clients {
                let th = policy.class_thresholds(c.class.as_deref()).unwrap_or(defaults);
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
                    due.push((va.clone(), c.session, c.encrypted, info));
                }
            }
        }
        if due.is_empty() {
            return Vec::new();
        }
        policy.defer_order(&mut due, |(.., info)| info);
        let kinds: std::collections::BTreeSet<(String, bool)> = due
            .iter()
            .filter_map(|(va, _, encrypted, _)| {
                st.hosting.portions.get(va).map(|p| (p.app.clone(), *encrypted))
            })
            .collect();
        drop(st);
        let alternates: std::collections::HashMap<(String, bool), Vec<Alternate>> =
            kinds.into_iter().map(|(app, enc)| ((app.clone(), enc), self.alternates(&app, enc))).collect();
        let mut st = self.state();
        let now = Instant::now();
        let mut out = Vec::new();
        for (va, session, encrypted, _) in due {
            if out.len() >= policy.batch {
                break;
            }
            let Some(key) = st.hosting.portions.get(&va).map(|p| (p.app.clone(), encrypted)) else {
                continue;
            };
            let Some(alts) = alternates.get(&key) else { continue };
            let websocket = st
                .hosting
                .portions
                .get(&va)
                .is_some_and(|p| p.clients.iter().any(|c| c.session == session && c.websocket));
            let mut alts: Vec<Alternate> =
                alts.iter().filter(|a| !websocket || a.ws.is_some()).take(3).cloned().collect();
            if alts.is_empty() {
                continue;
            }
            // Found again by session: the lists may have changed while the lock was free.
            let Some(client) = take_client(&mut st, &va, session) else { continue };
            // Spread the batch over the alternates: each client's first choice differs.
            let len = alts.len();
            alts.rotate_left(out.len() % len);
            out.push((va.clone(), client.clone(), alts));
            st.failover.deferred.push(Deferred { app: key.0, client, at: now, called_back: None });
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
        self.counters.failovers.fetch_add(1, Ordering::Relaxed);
        // Strictly increasing per server: time-based so it also grows across restarts, and
        // never below the last one even if the clock steps back or many go out in one ms.
        let nonce = {
            let mut st = self.state();
            st.failover.last_nonce = (st.failover.last_nonce + 1).max(unix_ms() * 1000);
            st.failover.last_nonce
        };
        let notice = Failover { alternates, nonce, issued: unix_ms() };
        // Sealed with the address the client hears it from (interop.md, FAILOVER).
        let from = if client.websocket { self.own_websocket().unwrap_or(self.mp) } else { self.mp };
        let payload = notice.seal(secret, from, client.addr);
        let call = self.endpoint.call_async(client.session, SystemCommand::Failover.number(), payload);
        let Some(va) = home else {
            drop(call);
            return;
        };
        let (this, mut client) = (self.clone(), client.clone());
        tokio::spawn(async move {
            // Only a REPLY says it moved: a refusal (NAK 12 — no alternate took it; NAK 9 — it
            // could not verify the notice) or no answer leaves it a client here.
            if call.await.is_err() {
                let mut st = this.state();
                st.failover.deferred.retain(|d| d.client.session != client.session);
                client.retry_after = Some(Instant::now() + Duration::from_secs(1));
                // Unless its session ended meanwhile (then it is nobody's client).
                let session = client.session;
                if st.hosting.left_sessions.remove(&session).is_some()
                    && let Some(p) = st.hosting.portions.get_mut(&va)
                {
                    p.figures.sessions.fetch_add(1, Ordering::Relaxed);
                    p.clients.push(client);
                    st.hosting.open_sessions.insert(session, va);
                }
            }
        });
    }

    /// Calls deferred clients back while this node is better than their return threshold, no
    /// more than the return gate lets in: a `FAILOVER` naming this node as the alternate.
    fn call_back(self: &Arc<Self>) {
        let policy = &self.config.failover;
        let defaults = self.settings_guard().thresholds();
        let now = Instant::now();
        let mut calls = Vec::new();
        {
            let mut st = self.state();
            st.failover.deferred.retain(|d| now.duration_since(d.at) < DEFERRED_FOR);
            if st.failover.draining || st.failover.deferred.is_empty() {
                return;
            }
            let health = st.failover.health.score;
            // Calls outstanding count against the gate too, so the answers cannot exceed it.
            let outstanding = st
                .failover
                .deferred
                .iter()
                .filter(|d| d.called_back.is_some_and(|t| now.duration_since(t) < policy.return_interval))
                .count();
            let mut room = st.failover.return_gate.room(now).saturating_sub(outstanding);
            // Each application's emptiest portion here takes its clients back.
            let mut homes: std::collections::HashMap<String, (String, usize)> = Default::default();
            for (va, p) in &st.hosting.portions {
                let home = homes.entry(p.app.clone()).or_insert((va.clone(), p.clients.len()));
                if p.clients.len() < home.1 {
                    *home = (va.clone(), p.clients.len());
                }
            }
            for d in st.failover.deferred.iter_mut() {
                if room == 0 {
                    break;
                }
                let th = policy.class_thresholds(d.client.class.as_deref()).unwrap_or(defaults);
                // Back only where it may stay: else the next push sends it away again.
                let ready = th.admits_returning(health)
                    && th.keeps_existing(health)
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
            let ws = self.own_websocket();
            self.send_failover(&client, vec![Alternate { addr: self.mp, va, ws }], None);
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
                .hosting
                .portions
                .iter()
                .map(|(va, p)| (va.clone(), p.figures.timeouts.load(Ordering::Relaxed)))
                .collect();
            // Forget portions that are gone.
            let live: std::collections::HashSet<&String> = counts.iter().map(|(va, _)| va).collect();
            let gone: Vec<String> =
                st.balancing.starve_marks.keys().filter(|va| !live.contains(va)).cloned().collect();
            for va in gone {
                st.balancing.starve_marks.remove(&va);
                st.balancing.last_spread.remove(&va);
            }
            let mut starving = Vec::new();
            for (va, t) in counts {
                if st.balancing.starve_marks.insert(va.clone(), t).is_some_and(|before| t > before) {
                    starving.push(va);
                }
            }
            for va in &starving {
                if st.balancing.last_spread.get(va).is_some_and(|t| now.duration_since(*t) < SPREAD_COOLDOWN)
                {
                    continue;
                }
                let Some(p) = st.hosting.portions.get(va) else { continue };
                let (app, mine) = (p.app.clone(), p.clients.len() as u64);
                let own_ws = self.own_websocket();
                let mut homes: Vec<(Alternate, u64)> = st
                    .hosting
                    .portions
                    .iter()
                    .filter(|(v, q)| q.app == app && !starving.contains(v))
                    .map(|(v, q)| {
                        (Alternate { addr: self.mp, va: v.clone(), ws: own_ws }, q.clients.len() as u64)
                    })
                    .collect();
                // Members that refuse encryption only if none of these clients is encrypted.
                let any_encrypted = p.clients.iter().any(|c| c.encrypted);
                let fresh = st.members.membership.fresh(now, self.fresh_window());
                for m in
                    fresh.filter(|m| m.node != self.me && m.accepting && !(any_encrypted && m.no_encryption))
                {
                    for q in m.portions.iter().filter(|q| q.app == app) {
                        homes.push((
                            Alternate { addr: m.mp, va: q.va.clone(), ws: websocket_of(m) },
                            q.sessions,
                        ));
                    }
                }
                homes.sort_by_key(|(_, n)| *n);
                // Announced figures come from the network: saturate rather than overflow.
                let Some(least) = homes.first().map(|(_, n)| *n) else { continue };
                if mine <= least.saturating_add(1) {
                    continue;
                }
                let give = ((mine - least) / 2).min(self.config.failover.batch as u64) as usize;
                let alternates: Vec<Alternate> = homes.into_iter().take(3).map(|(a, _)| a).collect();
                let p = st.hosting.portions.get(va).expect("looked up above");
                let latency = p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let mut by_latency: Vec<(dabs_net::SessionId, f32)> = p
                    .clients
                    .iter()
                    .map(|c| (c.session, latency.get(&c.session.0).copied().unwrap_or(0.0)))
                    .collect();
                by_latency.sort_by(|a, b| b.1.total_cmp(&a.1));
                for (n, (session, _)) in by_latency.into_iter().take(give).enumerate() {
                    let Some(c) = take_client(&mut st, va, session) else { continue };
                    let mut alts = alternates.clone();
                    let len = alts.len();
                    alts.rotate_left(n % len);
                    moves.push((c, alts, va.clone()));
                }
                st.balancing.last_spread.insert(va.clone(), now);
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

/// Where a node's operator interface (its MP WebSocket) is reached: its own address, or on
/// the node's MP address's IP when it listens on every interface.
pub(super) fn operator_at(operator: SocketAddr, mp: SocketAddr) -> SocketAddr {
    if operator.ip().is_unspecified() { SocketAddr::new(mp.ip(), operator.port()) } else { operator }
}

/// A member's MP WebSocket, from its announced operator address.
fn websocket_of(s: &NodeStats) -> Option<SocketAddr> {
    s.operator.map(|op| operator_at(op, s.mp))
}

impl Inner {
    /// This node's MP WebSocket (its operator interface), where it has one.
    pub(super) fn own_websocket(&self) -> Option<SocketAddr> {
        let op = (*self.operator.lock().unwrap_or_else(|e| e.into_inner())).or(self.config.node.operator)?;
        Some(operator_at(op, self.mp))
    }
}

/// Takes client `session` off portion `va`: no longer an active client there (its session
/// stays open, for a call back), remembered so the session's end still reaches the portion.
fn take_client(st: &mut super::State, va: &str, session: dabs_net::SessionId) -> Option<ClientEntry> {
    let p = st.hosting.portions.get_mut(va)?;
    let i = p.clients.iter().position(|c| c.session == session)?;
    let client = p.clients.remove(i);
    p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).remove(&session.0);
    let _ = p.figures.sessions.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    st.hosting.open_sessions.remove(&session);
    st.hosting.left_sessions.insert(session, va.to_owned());
    Some(client)
}

fn zone_text(zone: Zone) -> &'static str {
    match zone {
        Zone::Open => "taking new clients",
        Zone::NoNewClients => "keeping its clients, refusing new ones",
        Zone::ServeOnce => "serving new clients once, then moving them",
        Zone::Defer => "sending its clients to alternates",
    }
}
