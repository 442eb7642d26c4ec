//! The runtime's own queue: the system commands other nodes and tools send it (`GET_STATISTICS`,
//! `DRAIN`, `SPAWN`, `SETTINGS`, `ASSIGN`, `RESOLVE_VA`, `MEASURE`). `SPAWN`, `SETTINGS`,
//! `ASSIGN` and `MEASURE` are acted on only when authenticated (`auth.rs`); `GET_STATISTICS` and
//! a client's `RESOLVE_VA` stay open, `DRAIN` carries its own seal.

use super::{DRAIN_NONCE, Inner, Lifecycle};
use crate::stats::NodeStats;
use dabs_farm_proto::shapes::{Assign, OpenAsk, Resolved, cbor, from_cbor};
use dabs_net::{Addr, IncomingRequest, OpenRequest, unix_ms};
use dabs_wire::{NakCode, SentTime, SystemCommand};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

impl Inner {
    pub(super) async fn runtime_loop(
        self: Arc<Self>,
        mut requests: mpsc::UnboundedReceiver<IncomingRequest>,
    ) {
        while let Some(req) = requests.recv().await {
            let command = req.request.command;
            let known = SystemCommand::from_number(command);
            let sealed = match known {
                Some(
                    SystemCommand::Spawn
                    | SystemCommand::Settings
                    | SystemCommand::Assign
                    | SystemCommand::Measure
                    | SystemCommand::Jobs,
                ) => true,
                // A node's RESOLVE_VA is sealed and gets a sealed answer; a client's is not.
                Some(SystemCommand::ResolveVa) => {
                    dabs_farm_proto::control::looks_sealed(&req.request.payload)
                }
                _ => false,
            };
            let (opened, req) = if sealed {
                match self.authenticate(req) {
                    Ok((opened, req)) => (Some(opened), req),
                    Err(()) => continue,
                }
            } else {
                (None, req)
            };
            // The command's own payload, and how to answer it (sealed when it was).
            let payload = opened.as_ref().map_or(&req.request.payload, |o| &o.body).clone();
            let answer = |req: dabs_net::IncomingRequest, body: Vec<u8>| match &opened {
                Some(o) => self.answer(req, o, &body),
                None => req.reply(body),
            };
            match known {
                Some(SystemCommand::GetStatistics) => {
                    let me = self.own_stats(false);
                    let members: Vec<NodeStats> = self.state().members.membership.live().cloned().collect();
                    req.reply(cbor(&(me, members)));
                }
                Some(SystemCommand::Drain) => {
                    let verdict = match &self.config.farm.secret {
                        None => Err("this farm has no secret: drain is refused".to_owned()),
                        Some(secret) => dabs_farm_proto::seal::open_drain(
                            &req.request.payload,
                            secret,
                            self.mp,
                            unix_ms(),
                            30_000,
                        )
                        .map_err(|e| e.to_string()),
                    };
                    match verdict {
                        Ok((drain, nonce)) if nonce > self.state().failover.drain_nonce => {
                            self.state().failover.drain_nonce = nonce;
                            if let Err(e) = self.db.put_setting(DRAIN_NONCE, &nonce.to_be_bytes()) {
                                tracing::error!(error = %e, "drain nonce not stored");
                            }
                            self.drain(!drain);
                            req.reply(cbor(&BTreeMap::from([("draining", drain)])));
                        }
                        Ok(_) => {
                            self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                            self.note("DRAIN refused: replayed nonce".into());
                            req.reject(NakCode::AuthenticationFailed, "replayed");
                        }
                        Err(e) => {
                            self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                            self.note(format!("DRAIN refused: {e}"));
                            req.reject(NakCode::AuthenticationFailed, "drain not authenticated");
                        }
                    }
                }
                Some(SystemCommand::Spawn) => {
                    let ask: Result<BTreeMap<String, String>, _> = from_cbor(&payload, "SPAWN");
                    let ask = ask.unwrap_or_default();
                    let (app, cause) =
                        (ask.get("app").cloned().unwrap_or_default(), ask.get("cause").cloned());
                    // With `va`, the portion moves here under its address.
                    let va = ask.get("va").cloned();
                    if let Some(v) = va.as_ref().filter(|v| self.state().hosting.portions.contains_key(*v)) {
                        // Already here (a repeated SPAWN): nothing to start, nothing to count.
                        answer(req, cbor(&BTreeMap::from([("va", v.clone())])));
                        continue;
                    }
                    match self.start_portion(&app, va, None, None) {
                        Ok((va, _)) => {
                            self.counters.spawns.fetch_add(1, Ordering::Relaxed);
                            self.lifecycle(
                                Lifecycle::Spawned,
                                format!("spawned {va} on request: {}", cause.unwrap_or_default()),
                            );
                            answer(req, cbor(&BTreeMap::from([("va", va)])));
                        }
                        Err(e) => req.reject(NakCode::NotAccepting, e),
                    }
                }
                Some(SystemCommand::Settings) => {
                    let s = self.settings_guard().clone();
                    answer(req, cbor(&s));
                }
                Some(SystemCommand::Assign) => match from_cbor::<Assign>(&payload, "ASSIGN") {
                    Ok(a) if let Err(why) = self.check_fence(a.fence) => {
                        tracing::info!(error = %why, "ASSIGN refused");
                        req.reject(NakCode::NotAccepting, why.to_string());
                    }
                    Ok(a) => {
                        let open = OpenRequest {
                            peer: Addr::Udp(a.client),
                            transaction: a.tx,
                            sent: SentTime::from_millis_of_hour(a.stamp),
                            src: a.src,
                            crc: a.crc,
                        };
                        let ask = OpenAsk {
                            app: Some(a.app.clone()),
                            class: a.class.clone(),
                            group: a.group.clone(),
                            device: a.device,
                            ..Default::default()
                        };
                        match self.accept_local(
                            &open,
                            &ask,
                            a.va.as_deref(),
                            a.start_new,
                            a.overflow,
                            match (a.security, a.pinned) {
                                (false, _) => None,
                                (true, false) => Some(dabs_proto::SECURITY_SPEC),
                                (true, true) => Some(dabs_proto::SECURITY_SPEC_NK),
                            },
                        ) {
                            Ok(va) => {
                                // Counted before the reply, so a decider that hears the reply
                                // finds the client in this node's next announcement.
                                self.state().deciding.accepted += 1;
                                answer(req, cbor(&BTreeMap::from([("va", va)])))
                            }
                            Err((code, text)) => req.reject(code, text),
                        }
                    }
                    Err(e) => req.reject(NakCode::Malformed, e.to_string()),
                },
                Some(SystemCommand::ResolveVa) => {
                    let va: Result<BTreeMap<String, String>, _> = from_cbor(&payload, "RESOLVE_VA");
                    let va = va.ok().and_then(|m| m.get("va").cloned()).unwrap_or_default();
                    let found = self.state().members.membership.host_of(&va).map(|(s, queue)| Resolved {
                        va: va.clone(),
                        addr: s.mp,
                        queue,
                        node: s.node.clone(),
                    });
                    match found {
                        Some(r) => answer(req, cbor(&r)),
                        None => {
                            req.reject(NakCode::UnknownQueue, format!("no live portion has address {va}"))
                        }
                    }
                }
                Some(SystemCommand::Measure) => self.serve_measure(req, opened.clone(), &payload),
                // Off this loop: a PROGRESS waits, a RUN may fetch its module.
                Some(SystemCommand::Jobs) => {
                    let (this, opened) = (self.clone(), opened.clone());
                    tokio::spawn(async move {
                        let body = match from_cbor::<dabs_farm_proto::jobs::JobCall>(&payload, "JOBS") {
                            Ok(call) => cbor(&this.serve_job_call(&call).await),
                            Err(e) => cbor(&dabs_farm_proto::jobs::JobAnswer::No(e.to_string())),
                        };
                        if let Some(o) = &opened {
                            this.answer(req, o, &body);
                        }
                    });
                }
                _ => req
                    .reject(NakCode::UnknownCommand, format!("the runtime does not serve command {command}")),
            }
        }
    }
}
