//! The decider: the oldest live member answers every group `OPEN_SESSION` by choosing a node
//! with the load signal and having it answer (`ASSIGN`); node-to-node calls.

use super::{Inner, Lifecycle, RUNTIME_QUEUE};
use crate::placement::{Choice, choose_with};
use crate::stats::NodeStats;
use dabs_farm_proto::shapes::{Assign, OpenAsk, cbor, negotiate_security};
use dabs_net::{Addr, IncomingOpen, OpenRequest, Session};
use dabs_proto::{SECURITY_SPEC_NK, SecuritySpec};
use dabs_wire::{NakCode, SystemCommand};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long the decider waits for a node to confirm an assignment before trying the next.
const ASSIGN_WAIT: Duration = Duration::from_millis(1500);

impl Inner {
    /// True when this node decides group opens: it is the oldest live member and has been up
    /// long enough to have heard everyone older than itself.
    pub(super) fn is_decider(&self) -> bool {
        if self.on_etcd() {
            return self.registry_view().leads();
        }
        self.started.elapsed() >= self.config.node.lease
            && self.decider().as_deref() == Some(self.me.as_str())
    }

    /// The farm's decider as this node sees it: the oldest member heard within three
    /// announcement intervals. A decider that stops announcing (killed) hands over after
    /// those, not after its whole lease; if it was only late, both decide for a moment and
    /// clients close the second answer (docs/farm.md).
    pub(super) fn decider(&self) -> Option<String> {
        if self.on_etcd() {
            return self.registry_view().decider(&self.me);
        }
        let window = self.fresh_window();
        self.state().members.membership.leader_within(Instant::now(), window).map(str::to_owned)
    }

    pub(super) async fn open_loop(self: Arc<Self>, mut opens: mpsc::UnboundedReceiver<IncomingOpen>) {
        while let Some(open) = opens.recv().await {
            let this = self.clone();
            tokio::spawn(async move { this.handle_open(open).await });
        }
    }

    pub(super) async fn handle_open(self: Arc<Self>, open: IncomingOpen) {
        if open.arrived_at.is_some() {
            self.came_to_service(&open.request.peer);
        }
        let ask = match OpenAsk::parse(&open.payload) {
            Ok(a) => a,
            Err(e) => {
                if !open.via_group || self.is_decider() {
                    open.reject(NakCode::Malformed, e.to_string());
                } else {
                    open.pass();
                }
                return;
            }
        };
        if let Some(node) = &ask.node {
            // A node proves the control key; a tool (dabs drain, an observer) names itself
            // without a proof and gets what any client gets: GET_STATISTICS, RESOLVE_VA, DRAIN
            // under its own seal.
            let proven = match self.check_node_open(&open.request.peer, node, &open.payload) {
                Ok(proven) => proven,
                Err(why) => {
                    self.auth_failed("node session OPEN_SESSION", &open.request.peer, &why);
                    open.reject(NakCode::AuthenticationFailed, "node session not authenticated");
                    return;
                }
            };
            tracing::debug!(peer = %node, proven = proven.is_some(), "node session opened");
            let reply = cbor(&BTreeMap::from([("node", self.me.clone())]));
            if let Ok(session) = open.accept(RUNTIME_QUEUE, reply).await
                && let Some(node) = proven
            {
                self.node_session_opened(session, node);
            }
            return;
        }
        // A security offer is a demand: refuse it rather than answer in clear.
        // Through the group, the farm can encrypt if any member accepts encryption (a farm set
        // up unevenly); the decider then places the client on one that does.
        let can_encrypt = self.config.node.accept_encryption
            || (open.via_group
                && self
                    .state()
                    .members
                    .membership
                    .fresh(Instant::now(), self.fresh_window())
                    .any(|s| !s.no_encryption));
        let security = match negotiate_security(ask.security.as_deref(), can_encrypt) {
            Ok(spec) => spec,
            Err(why) => {
                if !open.via_group || self.is_decider() {
                    open.reject(NakCode::EncryptionRefused, format!("node {}: {why}", self.me));
                } else {
                    open.pass();
                }
                return;
            }
        };
        if !open.via_group {
            // Sent to this node directly: answer here.
            match self.accept_local(&open.request, &ask, ask.va.as_deref(), false, false, security) {
                Ok(_) => {}
                Err((code, text)) => open.reject(code, text),
            }
            return;
        }
        if !self.is_decider() {
            open.pass();
            return;
        }
        self.decide(open, &ask, security).await;
    }

    /// The decider's part: choose per R-RE-5 and have the chosen node answer.
    pub(super) async fn decide(
        self: &Arc<Self>,
        open: IncomingOpen,
        ask: &OpenAsk,
        security: Option<SecuritySpec>,
    ) {
        let app = ask.app.as_deref().unwrap_or_default();
        let va_hint = ask.va.as_deref();
        let Some(app_cfg) = self.app_config(app) else {
            let text = format!("farm {} runs no application {app:?}", self.config.farm.name);
            return open.reject(NakCode::UnknownApplication, text);
        };
        // The asking client and the round trips to its network, for the `closest` policy (only
        // then: measuring every client's network for other policies would be wasted probes).
        let closest = app_cfg.policy == crate::policy::Policy::Closest
            || self.config.subfarms.iter().any(|s| s.policy == crate::policy::Policy::Closest);
        let asker = match &open.request.peer {
            dabs_net::Addr::Udp(a) if closest => Some(self.asker(a.ip())),
            dabs_net::Addr::Udp(a) => Some(crate::policy::Asker::unmeasured(a.ip())),
            _ => None,
        };
        let mut choices = {
            let st = self.state();
            let fresh = st.members.membership.fresh(Instant::now(), self.fresh_window());
            choose_with(
                &app_cfg,
                &self.config.subfarms,
                fresh.filter(|s| security.is_none() || !s.no_encryption),
                &st.deciding.pending,
                va_hint,
                asker.as_ref(),
            )
        };
        // A client whose portion's node is gone keeps its virtual address: the address moves,
        // once, to the best node for a new portion, and later clients of it follow.
        let known_home = va_hint.and_then(|va| {
            let st = self.state();
            let home = st.deciding.moved.get(va)?;
            // Only while the new home is alive; a dead one's addresses are adopted below.
            st.members
                .membership
                .fresh(Instant::now(), self.fresh_window())
                .any(|s| s.node == *home)
                .then(|| home.clone())
        });
        if let Some(home) = known_home {
            // The address was moved on purpose: its clients follow it there.
            choices.retain(|c| c.node() != home);
            choices.insert(0, Choice::StartNew { node: home });
        } else if let Some(va) = va_hint {
            let hosted = {
                let st = self.state();
                let now = Instant::now();
                let mut fresh = st.members.membership.fresh(now, self.fresh_window());
                fresh.any(|s| s.portions.iter().any(|p| p.va == va))
            };
            if !hosted {
                let home = self.state().deciding.moved.get(va).cloned().or_else(|| {
                    choices.iter().find(|c| matches!(c, Choice::StartNew { .. })).map(|c| c.node().to_owned())
                });
                if let Some(node) = home {
                    if self.state().deciding.moved.insert(va.to_owned(), node.clone()).is_none() {
                        self.counters.moves.fetch_add(1, Ordering::Relaxed);
                        self.lifecycle(Lifecycle::Moved, format!("moving {va} (its node is gone) to {node}"));
                    }
                    choices.retain(|c| c.node() != node);
                    choices.insert(0, Choice::StartNew { node });
                }
            }
        }
        // Every server is closed to new clients by starvation or latency: admission control is
        // a preference, not a refusal, so place the client by load among those still serving
        // (never a draining or stopping one) — R-RE-5's "a more loaded server".
        let overflow = choices.is_empty();
        if overflow {
            let st = self.state();
            let open_to_all: Vec<NodeStats> = st
                .members
                .membership
                .fresh(Instant::now(), self.fresh_window())
                .filter(|s| !s.draining && !s.leaving && (security.is_none() || !s.no_encryption))
                .map(|s| NodeStats { accepting: true, ..s.clone() })
                .collect();
            choices = choose_with(
                &app_cfg,
                &self.config.subfarms,
                open_to_all.iter(),
                &st.deciding.pending,
                va_hint,
                asker.as_ref(),
            );
        }
        for choice in choices.iter().take(4) {
            let node = choice.node().to_owned();
            self.state().deciding.pending.sent(&node);
            let (va, start_new) = match choice {
                Choice::Existing { va, .. } => (Some(va.clone()), false),
                Choice::StartNew { .. } => (va_hint.map(str::to_owned), true),
            };
            let result = if node == self.me {
                // Fenced like an ASSIGN: a decider that lost its lease while choosing does
                // not answer for the farm.
                if !self.is_decider() {
                    return open.pass();
                }
                let local =
                    self.accept_local(&open.request, ask, va.as_deref(), start_new, overflow, security);
                if local.is_ok() {
                    self.state().deciding.accepted += 1;
                }
                local.map(|_| ())
            } else {
                self.assign_remote(&node, &open.request, ask, va, start_new, overflow, security).await
            };
            match result {
                Ok(()) => return,
                Err((code, text)) => {
                    tracing::info!(%node, %code, %text, "assignment refused, trying the next choice");
                    self.state().deciding.pending.refused(&node);
                }
            }
        }
        open.reject(
            NakCode::NotAccepting,
            format!("no server of farm {} can take {app} now", self.config.farm.name),
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn assign_remote(
        &self,
        node: &str,
        req: &OpenRequest,
        ask: &OpenAsk,
        va: Option<String>,
        start_new: bool,
        overflow: bool,
        security: Option<SecuritySpec>,
    ) -> Result<(), (NakCode, String)> {
        let Addr::Udp(client) = req.peer else {
            return Err((NakCode::Malformed, "only network clients can be assigned".into()));
        };
        let assign = Assign {
            client,
            tx: req.transaction,
            stamp: req.sent.millis_of_hour(),
            src: req.src,
            crc: req.crc,
            app: ask.app.clone().unwrap_or_default(),
            va,
            start_new,
            overflow,
            class: ask.class.clone(),
            group: ask.group.clone(),
            security: security.is_some(),
            pinned: security == Some(SECURITY_SPEC_NK),
            fence: self.fence(),
            device: ask.device,
        };
        let call = self.call_node(node, SystemCommand::Assign.number(), cbor(&assign));
        match tokio::time::timeout(ASSIGN_WAIT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err((NakCode::NotAccepting, format!("{node}: {e}"))),
            Err(_) => Err((NakCode::NotAccepting, format!("{node} did not confirm in {ASSIGN_WAIT:?}"))),
        }
    }

    /// Calls member `node` with a sealed request and returns the body of its sealed answer.
    /// A cached session the member no longer knows (it restarted, or the session expired and
    /// the re-open was refused) is replaced once by a fresh one.
    pub(super) async fn call_node(
        &self,
        node: &str,
        command: u16,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let (addr, started_ms) = self
            .state()
            .members
            .membership
            .get(node)
            .map(|m| (m.stats.mp, m.stats.started_ms))
            .ok_or("not a live member")?;
        for attempt in 0..2 {
            let (session, fresh) = self.node_session(node, addr, started_ms).await?;
            let (sealed, tag) = self.seal_request(addr, started_ms, command, &payload);
            match session.call(command, sealed).await {
                Ok(answer) => {
                    return dabs_farm_proto::control::open_reply(
                        self.auth.control_key(),
                        addr,
                        self.mp,
                        command,
                        &tag,
                        &answer,
                    )
                    .map_err(|e| {
                        self.auth_failed("answer", &Addr::Udp(addr), &e);
                        format!("{node}'s answer: {e}")
                    });
                }
                Err(e) => {
                    self.peers.lock().await.remove(node);
                    // Refused before it ran (the session was unknown or its re-open refused):
                    // safe to send again once, in a session of its own.
                    let unran = matches!(
                        &e,
                        dabs_net::Error::Call(dabs_net::CallError::Nak {
                            code: NakCode::AuthenticationFailed | NakCode::UnknownSession,
                            ..
                        })
                    );
                    if fresh || !unran || attempt == 1 {
                        return Err(e.to_string());
                    }
                }
            }
        }
        Err("unreachable: the loop returns".into())
    }

    /// The node session to `node` at `addr`, cached or opened now with a proof of the key
    /// (`true` when new).
    async fn node_session(
        &self,
        node: &str,
        addr: std::net::SocketAddr,
        started_ms: u64,
    ) -> Result<(Session, bool), String> {
        let slot = self.peers.lock().await.entry(node.to_owned()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.peer == Addr::Udp(addr)) {
            return Ok((s.clone(), false));
        }
        let payload = self.node_open_payload(addr, started_ms);
        let s =
            self.endpoint.open(Addr::Udp(addr), RUNTIME_QUEUE, payload).await.map_err(|e| e.to_string())?;
        *slot = Some(s.clone());
        Ok((s, true))
    }
}
