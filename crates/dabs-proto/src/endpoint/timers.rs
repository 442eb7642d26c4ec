//! Timers: re-attempts, paced rounds, delayed ACKs, open re-attempts, and the idle sweep.

use super::records::{Answer, InState, OutState, finish_replied};
use super::{CallError, CloseReason, Endpoint, Event, SessionId, Time};
use std::cmp::Reverse;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKey {
    Out(SessionId, u8),
    Reply(SessionId, u8),
    /// The next group of a request's (or key exchange's) round.
    PaceOut(SessionId, u8),
    /// The next group of a REPLY's round.
    PaceReply(SessionId, u8),
    Ack(SessionId, u8),
    Open(u8),
    Kick(SessionId),
    Sweep,
}
impl Endpoint {
    pub(super) fn timer_live(&self, at: Time, key: TimerKey) -> bool {
        match key {
            TimerKey::Out(sid, tx) => {
                self.sessions.get(sid).and_then(|s| s.out.get(&tx)).is_some_and(|o| o.deadline == Some(at))
            }
            TimerKey::Reply(sid, tx) => self
                .sessions
                .get(sid)
                .and_then(|s| s.replies.get(&tx))
                .is_some_and(|o| o.deadline == Some(at)),
            TimerKey::PaceOut(sid, tx) => self
                .sessions
                .get(sid)
                .and_then(|s| s.out.get(&tx))
                .is_some_and(|o| o.pace.is_some_and(|p| p.at == at)),
            TimerKey::PaceReply(sid, tx) => self
                .sessions
                .get(sid)
                .and_then(|s| s.replies.get(&tx))
                .is_some_and(|o| o.pace.is_some_and(|p| p.at == at)),
            TimerKey::Ack(sid, tx) => self
                .sessions
                .get(sid)
                .and_then(|s| s.inc.get(&tx))
                .is_some_and(|r| matches!(r.state, InState::Delivered { ack_due: Some(t) } if t == at)),
            TimerKey::Open(tx) => self.opens.get(&tx).is_some_and(|o| o.out.deadline == Some(at)),
            TimerKey::Kick(sid) => self.sessions.get(sid).is_some_and(|s| !s.waiting.is_empty()),
            TimerKey::Sweep => true,
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some(Reverse((at, key))) = self.io.timers.peek().copied() {
            if at > now {
                break;
            }
            self.io.timers.pop();
            if self.timer_live(at, key) {
                self.fire(now, key);
            }
        }
        self.refresh_gauges();
    }

    /// Runs a timer [`Endpoint::timer_live`] found live; one whose message or session has
    /// gone meanwhile does nothing.
    pub(super) fn fire(&mut self, now: Time, key: TimerKey) {
        let max_retries = self.io.config.max_retries;
        match key {
            TimerKey::Out(sid, tx) => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                let Some(out) = s.out.get_mut(&tx) else {
                    return;
                };
                match out.state {
                    OutState::AwaitAck if out.attempts > max_retries => {
                        let attempts = out.attempts;
                        if let Some(out) = s.out.remove(&tx) {
                            self.out_failed(now, sid, out, CallError::GaveUp { attempts });
                        }
                    }
                    OutState::AwaitAck => self.io.transmit_out(now, out, key, s.crypto.sealer()),
                    OutState::AwaitReply { since }
                        if now.saturating_sub(since) >= self.io.config.reply_timeout =>
                    {
                        let error = CallError::ReplyTimeout(self.io.config.reply_timeout);
                        if let Some(out) = s.out.remove(&tx) {
                            self.out_failed(now, sid, out, error);
                        }
                    }
                    OutState::AwaitReply { since } => {
                        // Probe: the receiver answers a repeat with its REPLY or an ACK. A peer
                        // that answers none of several has gone (a crash after its ACK): the
                        // call fails now, its outcome unknown, rather than at reply_timeout.
                        let heard = s.last_active >= out.last_sent;
                        out.silent_probes = if heard { 0 } else { out.silent_probes + 1 };
                        if out.silent_probes >= self.io.config.silent_probes.max(1) {
                            let silent_for = now.saturating_sub(s.last_active.max(since));
                            if let Some(out) = s.out.remove(&tx) {
                                self.out_failed(now, sid, out, CallError::PeerSilent { silent_for });
                            }
                            return;
                        }
                        self.io.resend(now, out, key, s.crypto.sealer());
                        let at = now + self.io.config.ack_timeout_max;
                        out.deadline = Some(at);
                        self.io.schedule(at, key);
                    }
                }
            }
            TimerKey::Reply(sid, tx) => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                let half_open = s.is_half_open();
                let Some(out) = s.replies.get_mut(&tx) else {
                    return;
                };
                // A client still waiting repeats its request at least every `ack_timeout_max`
                // (re-attempts, then probes); one silent this long has moved on.
                let hold = self.io.config.reply_timeout;
                if out.parked {
                    let until = out.last_sent + hold;
                    if now >= until {
                        if let Some(reply) = s.replies.remove(&tx) {
                            finish_replied(&mut s.inc, tx, reply.header.command);
                        }
                    } else {
                        out.deadline = Some(until);
                        self.io.schedule(until, key);
                    }
                } else if out.attempts > max_retries {
                    self.io.stats.replies_undelivered += 1;
                    self.io.events.push_back(Event::ReplyUndelivered { session: sid, transaction: tx });
                    if half_open {
                        // An open's REPLY never acknowledged: the client does not hold this
                        // session (it kept another answer and closed this one, or it is
                        // gone), so neither does the server, nor a seat for it.
                        if let Some(s) = self.sessions.remove(sid) {
                            self.drop_session_calls(s, CloseReason::Unacknowledged, sid);
                        }
                    } else {
                        // Stop pushing, but keep the REPLY: its request ran, so a repeat of
                        // the request (the client's next re-attempt or probe) can only be
                        // answered with it. Dropping it left the client to time out.
                        out.parked = true;
                        let until = out.last_sent.max(now) + hold;
                        out.deadline = Some(until);
                        self.io.schedule(until, key);
                    }
                } else {
                    self.io.transmit_out(now, out, key, s.crypto.sealer());
                }
            }
            TimerKey::Ack(sid, tx) => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                let Some(rec) = s.inc.get_mut(&tx) else {
                    return;
                };
                rec.state = InState::Delivered { ack_due: None };
                let (cmd, sent, src, dst) = (rec.command, rec.sent, rec.src, rec.dst);
                let (peer, number) = (s.peer().clone(), s.number());
                self.io.ack(
                    &peer,
                    Answer { command: cmd, session: number, transaction: tx, dst: src, src: dst },
                    sent,
                    s.crypto.sealer(),
                );
            }
            TimerKey::Open(tx) => {
                let Some(open) = self.opens.get_mut(&tx) else {
                    return;
                };
                let reliable_wait_over = open.out.to.is_reliable_link();
                if open.out.attempts > max_retries || reliable_wait_over {
                    let attempts = open.out.attempts;
                    if let Some(open) = self.opens.remove(&tx) {
                        self.open_failed(open, CallError::GaveUp { attempts });
                    }
                } else {
                    self.io.transmit_out(now, &mut open.out, key, None);
                }
            }
            TimerKey::PaceOut(sid, tx) => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                let Some(out) = s.out.get_mut(&tx) else {
                    return;
                };
                self.io.pace_next(now, out, key, s.crypto.sealer());
            }
            TimerKey::PaceReply(sid, tx) => {
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                let Some(out) = s.replies.get_mut(&tx) else {
                    return;
                };
                self.io.pace_next(now, out, key, s.crypto.sealer());
            }
            TimerKey::Kick(sid) => self.start_waiting(now, sid),
            TimerKey::Sweep => self.sweep(now),
        }
    }

    pub(super) fn sweep(&mut self, now: Time) {
        let idle = self.io.config.idle_timeout;
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_active) >= idle && s.reclaimable())
            .map(|(id, _)| id)
            .collect();
        for sid in expired {
            let Some(s) = self.sessions.remove(sid) else {
                continue;
            };
            self.io.stats.sessions_expired += 1;
            self.drop_session_calls(s, CloseReason::Idle, sid);
        }
        self.sessions.prune_peers();
        self.sweep_armed = false;
        if !self.sessions.is_empty() || self.sessions.peer_count() > 0 {
            self.arm_sweep(now);
        }
    }
}
