//! The portions this node hosts: starting and restoring them, seating clients on them, and
//! what they report back (time-outs, alerts, exits) and sessions that end.

use super::state::{FIRST_PORTION_QUEUE, Portion};
use super::{Inner, Lifecycle, failover::ClientEntry};
use crate::db::PortionRecord;
use crate::stats::PortionFigures;
use dabs_farm_proto::portion::{PortionContext, PortionReport, RuntimeEvent};
use dabs_farm_proto::shapes::{OpenAsk, open_reply_with_channels};
use dabs_net::{Addr, OpenRequest, unix_ms};
use dabs_wire::NakCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::sync::mpsc;

impl Inner {
    pub(super) fn restore_portions(self: &Arc<Self>) {
        match self.db.portions() {
            Ok(records) => {
                for r in records {
                    match self.start_portion(&r.app, Some(r.va.clone()), Some(r.queue), Some(r.started_ms)) {
                        Ok(_) => self.lifecycle(
                            Lifecycle::Spawned,
                            format!("restored portion {} on queue {}", r.va, r.queue),
                        ),
                        Err(e) => tracing::error!(va = %r.va, error = %e, "cannot restore portion"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read portion records"),
        }
    }

    pub(super) fn start_initial_portions(self: &Arc<Self>) {
        for app in self.config.apps.clone() {
            let allowed = app.subgroup.is_empty() || app.subgroup.contains(&self.me);
            let running = self.state().hosting.portions.values().any(|p| p.app == app.name);
            if app.start_at_init && allowed && !running && self.factory(&app.name).is_some() {
                match self.start_portion(&app.name, None, None, None) {
                    Ok((va, _)) => {
                        self.lifecycle(Lifecycle::Spawned, format!("started portion {va} at initialisation"))
                    }
                    Err(e) => tracing::error!(app = %app.name, error = %e, "cannot start portion"),
                }
            }
        }
    }

    /// Starts a portion of `app`, under `va` and on `queue` when given (a restored or adopted
    /// portion), records it in the database, and returns its address and queue.
    pub(super) fn start_portion(
        self: &Arc<Self>,
        app: &str,
        va: Option<String>,
        queue: Option<u16>,
        started_ms: Option<u64>,
    ) -> Result<(String, u16), String> {
        let factory =
            self.factory(app).ok_or_else(|| format!("this node has no application {app:?}"))?.clone();
        let (events_tx, events) = mpsc::unbounded_channel();
        let figures = Arc::new(PortionFigures::default());
        let started_ms = started_ms.unwrap_or_else(unix_ms);
        let (va, queue, next_id) = {
            let mut st = self.state();
            // A portion already running here under this address is the answer: starting
            // another would replace it (a repeated or forged SPAWN must not take it over).
            if let Some(existing) = va.as_ref().and_then(|v| st.hosting.portions.get(v)) {
                return Ok((va.clone().unwrap_or_default(), existing.queue));
            }
            // Every start path ends here: the cap holds for spawned, assigned, initial and
            // restored portions alike.
            let cap = self.config.node.max_portions as usize;
            if st.hosting.portions.len() >= cap {
                return Err(format!(
                    "node {} runs {} portions, its cap ([node] max_portions = {cap})",
                    self.me,
                    st.hosting.portions.len()
                ));
            }
            let queue = match queue {
                Some(q) if q < FIRST_PORTION_QUEUE => {
                    return Err(format!("queue {q} is not a portion queue"));
                }
                Some(q) if st.hosting.portions.values().any(|p| p.queue == q) => {
                    return Err(format!("queue {q} is taken"));
                }
                Some(q) => q,
                None => st
                    .hosting
                    .free_queue()
                    .ok_or_else(|| format!("node {} has no free portion queue", self.me))?,
            };
            st.hosting.next_queue =
                queue.checked_add(1).unwrap_or(FIRST_PORTION_QUEUE).max(st.hosting.next_queue);
            let named = va.is_none();
            let va = match va {
                Some(va) => va,
                None => {
                    // Names are never reused: at most one candidate per portion running here
                    // is taken, so this ends after at most `cap` + 1 tries.
                    let mut found = None;
                    for _ in 0..=st.hosting.portions.len() {
                        let n = st.hosting.next_portion;
                        st.hosting.next_portion = n.checked_add(1).ok_or("portion numbers ran out")?;
                        let va = format!("mp://{}/{}/dasp/{}-{}", self.config.farm.name, app, self.me, n);
                        if !st.hosting.portions.contains_key(&va) {
                            found = Some(va);
                            break;
                        }
                    }
                    found.ok_or("no free portion name")?
                }
            };
            // Taken under the same lock as the check above: two clients coming back to one
            // address at once both used to start it, the second replacing the first and its
            // seats (a client served by the first was then counted nowhere).
            st.hosting.portions.insert(
                va.clone(),
                Portion {
                    app: app.into(),
                    queue,
                    figures: figures.clone(),
                    events: events_tx,
                    started_ms,
                    clients: Vec::new(),
                },
            );
            (va, queue, named.then_some(st.hosting.next_portion))
        };
        let requests = self.endpoint.register_queue(queue);
        let record = PortionRecord { va: va.clone(), app: app.into(), queue, started_ms };
        if let Err(e) = match next_id {
            Some(next) => self.db.put_new_portion(&record, next),
            None => self.db.put_portion(&record),
        } {
            self.state().hosting.portions.remove(&va);
            self.endpoint.unregister_queue(queue);
            return Err(e.to_string());
        }
        factory.spawn(PortionContext {
            app: app.into(),
            va: va.clone(),
            queue,
            requests,
            events,
            reports: self.reports.clone(),
            figures,
            endpoint: self.endpoint.clone(),
            latency: Arc::new(crate::calls::PortionLatency {
                app: self.latency.for_app(app),
                calls: self.calls.clone(),
            }),
            timeouts: self.config.timeouts.clone(),
            max_workers: self.app_config(app).and_then(|a| a.max_workers).map(|n| n as usize),
        });
        Ok((va, queue))
    }

    /// The channels a REPLY names (interop.md): this node's UDP address, its TCP one when it
    /// takes MP over TCP (the same port number), and the WebSocket on its operator port when
    /// it has one. None when UDP is all there is.
    fn channels(&self, udp: std::net::SocketAddr) -> Vec<(&'static str, String)> {
        let mut channels = Vec::new();
        if let Some(tcp) = self.endpoint.local_addrs().tcp {
            channels.push(("tcp", std::net::SocketAddr::new(udp.ip(), tcp.port()).to_string()));
        }
        if let Some(op) = *self.operator.lock().unwrap_or_else(|e| e.into_inner()) {
            let at = super::failover::operator_at(op, udp);
            // An interface on loopback is named only to clients reached through loopback.
            if !at.ip().is_loopback() || udp.ip().is_loopback() {
                channels.push(("ws", format!("ws://{at}{}", dabs_net::WEBSOCKET_PATH)));
            }
        }
        if !channels.is_empty() {
            channels.insert(0, ("udp", udp.to_string()));
        }
        channels
    }

    /// Gives the client a session on one of this node's portions of `app`: the one at `va`
    /// if this node has it, else one with room unless `start_new`, else a new one (under
    /// `va` when the client is coming back to an address whose node is gone). With `security`
    /// the session is to be encrypted: the REPLY names the specification.
    pub(super) fn accept_local(
        self: &Arc<Self>,
        req: &OpenRequest,
        ask: &OpenAsk,
        va: Option<&str>,
        start_new: bool,
        overflow: bool,
        security: Option<dabs_proto::SecuritySpec>,
    ) -> Result<String, (NakCode, String)> {
        let app = ask.app.as_deref().unwrap_or_default();
        // The decider may run another setting than this node (a farm set up unevenly).
        if security.is_some() && !self.config.node.accept_encryption {
            return Err((
                NakCode::EncryptionRefused,
                format!("node {}: encryption is turned off here (accept_encryption = false)", self.me),
            ));
        }
        let app_cfg = self.app_config(app);
        if app_cfg.is_none() || self.factory(app).is_none() {
            return Err((
                NakCode::UnknownApplication,
                format!("node {} runs no application {app:?}", self.me),
            ));
        }
        let max = app_cfg.map(|a| a.max_sessions_per_portion).unwrap_or(u64::MAX);
        // A client returning to a portion this node hosts keeps its address even while the
        // node takes no new clients; everyone else needs admission.
        let returning = va.is_some_and(|v| self.state().hosting.portions.contains_key(v));
        let overflow_ok = overflow && {
            let st = self.state();
            st.hosting.accepting && !st.failover.draining
        };
        let came_back = self.admit_deferred(req)?;
        if !came_back && !returning && !overflow_ok && !self.admits_new_clients(ask.class.as_deref()) {
            return Err((NakCode::NotAccepting, format!("node {} is not accepting new clients", self.me)));
        }
        let serve_once = !came_back
            && self.thresholds_for(ask.class.as_deref()).zone(self.state().failover.health.score)
                == crate::zones::Zone::ServeOnce;
        let existing = {
            let st = self.state();
            let by_va = va.and_then(|v| st.hosting.portions.get_key_value(v));
            let with_room = || {
                st.hosting
                    .portions
                    .iter()
                    .filter(|(_, p)| p.app == app && p.figures.sessions.load(Ordering::Relaxed) < max)
                    .min_by_key(|(_, p)| (p.figures.sessions.load(Ordering::Relaxed), p.started_ms))
            };
            // The seat is taken now, under the lock that chose it: counted only once the
            // session exists, back-to-back opens overfilled a portion.
            by_va.or(if start_new { None } else { with_room() }).map(|(va, p)| {
                p.figures.sessions.fetch_add(1, Ordering::Relaxed);
                (va.clone(), p.queue)
            })
        };
        let (va, queue) = match existing {
            Some(found) => found,
            None => {
                // Adopt the client's old address only when no live member hosts it.
                let adopt = va
                    .filter(|v| {
                        let st = self.state();
                        let window = self.fresh_window();
                        !st.members
                            .membership
                            .fresh(Instant::now(), window)
                            .any(|s| s.portions.iter().any(|p| p.va == **v))
                    })
                    .map(str::to_owned);
                let started =
                    self.start_portion(app, adopt, None, None).map_err(|e| (NakCode::NotAccepting, e))?;
                if let Some(p) = self.state().hosting.portions.get(&started.0) {
                    p.figures.sessions.fetch_add(1, Ordering::Relaxed);
                }
                self.lifecycle(Lifecycle::Spawned, format!("started portion {} for a new client", started.0));
                started
            }
        };
        let reply_addr = self.reply_addr(&req.peer);
        let channels = self.channels(reply_addr);
        let placement = self.packages.placement(app, ask.class.as_deref(), ask.device.as_ref());
        let payload =
            open_reply_with_channels(&va, reply_addr, queue, security.as_ref(), &channels, &placement);
        let endpoint = self.endpoint.clone();
        let req = req.clone();
        let (figures, events) = {
            let st = self.state();
            let p = &st.hosting.portions[&va];
            (p.figures.clone(), p.events.clone())
        };
        let this = self.clone();
        let portion_va = va.clone();
        let traits = (ask.class.clone(), ask.group.clone());
        tokio::spawn(async move {
            match endpoint.accept_open(req.clone(), queue, payload).await {
                Ok(session) => {
                    let mut st = this.state();
                    // Closed already (the client kept another node's answer and closed this
                    // one before this task ran): no client, the seat goes back.
                    if st.hosting.ended_before_counted(session) {
                        figures.sessions.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    // Accepting the same open again gives the same session: count it once
                    // (the seat taken for this repeat goes back).
                    if st.hosting.open_sessions.insert(session, portion_va.clone()).is_some() {
                        figures.sessions.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                    // Network clients on any channel (a stream client is moved over its own).
                    if let Some(addr) = req.peer.socket_addr()
                        && let Some(p) = st.hosting.portions.get_mut(&portion_va)
                    {
                        p.clients.push(ClientEntry {
                            session,
                            addr,
                            queue: req.src,
                            class: traits.0,
                            group: traits.1,
                            serve_once,
                            retry_after: None,
                            encrypted: security.is_some(),
                            websocket: matches!(req.peer, Addr::Ws(_)),
                        });
                    }
                    drop(st);
                    let _ = events.send(RuntimeEvent::AddClient { session, peer: req.peer });
                }
                Err(e) => {
                    figures.sessions.fetch_sub(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "session not accepted");
                }
            }
        });
        Ok(va)
    }

    /// Takes every session that ends off its portion's count, so `sessions` is the number of
    /// open sessions rather than of sessions ever opened.
    pub(super) async fn closed_loop(
        self: Arc<Self>,
        mut closed: mpsc::UnboundedReceiver<dabs_net::SessionId>,
    ) {
        while let Some(session) = closed.recv().await {
            self.auth.session_closed(session);
            let mut st = self.state();
            // A deferred client whose session ended can no longer be called back.
            st.failover.deferred.retain(|d| d.client.session != session);
            // A client sent away is no longer counted; its portion still hears the end.
            if let Some(va) = st.hosting.left_sessions.remove(&session) {
                if let Some(p) = st.hosting.portions.get(&va) {
                    p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).remove(&session.0);
                    let _ = p.events.send(RuntimeEvent::RemoveClient { session });
                }
                continue;
            }
            // Sessions this node opened to its peers are not in the map; nor, for a moment, one
            // being accepted: its accepting task learns it ended.
            let Some(va) = st.hosting.open_sessions.remove(&session) else {
                st.hosting.note_closed_uncounted(session);
                continue;
            };
            if let Some(p) = st.hosting.portions.get_mut(&va) {
                let _ = p
                    .figures
                    .sessions
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                p.clients.retain(|c| c.session != session);
                p.figures.client_latency_ms.lock().unwrap_or_else(|e| e.into_inner()).remove(&session.0);
                let _ = p.events.send(RuntimeEvent::RemoveClient { session });
            }
        }
    }

    pub(super) async fn report_loop(
        self: Arc<Self>,
        mut reports: mpsc::UnboundedReceiver<(String, PortionReport)>,
    ) {
        while let Some((va, report)) = reports.recv().await {
            match report {
                PortionReport::Started => tracing::debug!(%va, "portion running"),
                PortionReport::State(s) => tracing::debug!(%va, state = %s, "portion state"),
                PortionReport::Error(e) => self.note(format!("portion {va} error: {e}")),
                PortionReport::Timeout { resource } => {
                    let app = {
                        let st = self.state();
                        let Some(p) = st.hosting.portions.get(&va) else {
                            // A portion that has moved away finishing its last requests: its
                            // starvation is the new home's to judge, not this node's.
                            tracing::debug!(%va, %resource, "time-out from a portion no longer here");
                            continue;
                        };
                        p.figures.timeouts.fetch_add(1, Ordering::Relaxed);
                        p.app.clone()
                    };
                    let first_in_window = {
                        let mut st = self.state();
                        let quiet =
                            !st.balancing.timeouts.iter().any(|(_, r, a, _)| *r == resource && *a == app);
                        st.balancing.timeouts.push_back((
                            Instant::now(),
                            resource.clone(),
                            app.clone(),
                            va.clone(),
                        ));
                        quiet
                    };
                    // One event per starvation episode, not one per time-out.
                    if first_in_window {
                        self.note(format!("portion {va} starved on {resource}: no new clients here for now"));
                    }
                    self.spawn_for(&app, &resource, format!("portion {va} starved on {resource}"));
                }
                PortionReport::Grew { workers } => {
                    self.note(format!(
                        "portion {va} grew to {workers} workers (its requests waited for one)"
                    ));
                }
                PortionReport::ClientAlert(what) => {
                    self.counters.client_alerts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%va, alert = %what, "client alert");
                    self.note(format!("client alert at portion {va}: {what}"));
                }
                PortionReport::Exited => {
                    self.lifecycle(Lifecycle::Retired, format!("portion {va} exited"));
                    let removed = self.state().hosting.portions.remove(&va);
                    if let Some(p) = removed {
                        self.endpoint.unregister_queue(p.queue);
                    }
                }
            }
        }
    }
}
