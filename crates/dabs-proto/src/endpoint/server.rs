//! The server side: accepting sessions, delivering requests exactly once, replies and
//! refusals, and session-0 traffic.

use super::budget::{Budgets, Meters, Partial, Refused};
use super::records::{Answer, InRecord, InState, newer, remember_open};
use super::session::{Role, Session};
use super::timers::TimerKey;
use super::{CallError, CloseReason, Endpoint, Event, Incoming, IncomingId, OpenRequest, SessionId, Time};
use crate::Addr;
use crate::crypto::{ENCRYPTION_OVERHEAD, KEY_EXCHANGE};
use dabs_wire::{Datagram, Header, Kind, NakCode, Reassembly, SentTime, SystemCommand, chunk_size};

impl Endpoint {
    /// Accepts an `OPEN_SESSION`: creates the session and sends the REPLY carrying `payload`
    /// from portion queue `local_queue`. Idempotent for the same request. The request need
    /// not have reached this endpoint (another farm node may have heard it).
    pub fn accept_open(
        &mut self,
        now: Time,
        request: &OpenRequest,
        local_queue: u16,
        payload: Vec<u8>,
    ) -> Result<SessionId, CallError> {
        self.check_size(payload.len(), 0)?;
        let seen = self.sessions.peer(&request.peer).and_then(|p| p.opens_seen.get(&request.transaction));
        if let Some((sent, Some(sid))) = seen.copied()
            && sent == request.sent
            && self.sessions.contains(sid)
        {
            return Ok(sid);
        }
        let room = self.admit_peer(now, &request.peer).and_then(|()| self.admit_session(now, &request.peer));
        if room.is_err() {
            self.io.stats.opens_refused += 1;
            self.refresh_gauges();
            return Err(CallError::SessionsExhausted);
        }
        let Some(number) = self.sessions.free_number(&request.peer) else {
            return Err(CallError::SessionsExhausted);
        };
        let sid = SessionId(self.next_id);
        self.next_id += 1;
        remember_open(self.sessions.peer_entry(&request.peer), request.transaction, request.sent, Some(sid));
        let mut s = Session::new(
            request.peer.clone(),
            number,
            Role::Server,
            request.crc,
            request.src,
            local_queue,
            now,
        );
        if !request.peer.is_reliable_link() {
            s.mark_half_open();
        }
        let header = Header {
            session: number,
            transaction: request.transaction,
            sent: self.io.stamp(now),
            crc: request.crc,
            dst: request.src,
            src: local_queue,
            ..Header::new(Kind::Reply, SystemCommand::OpenSession.number())
        };
        let mut out = self.io.new_out(None, request.peer.clone(), header, payload);
        self.io.transmit_out(now, &mut out, TimerKey::Reply(sid, request.transaction), None);
        if out.deadline.is_some() {
            s.replies.insert(request.transaction, out);
        }
        self.add_session(sid, s);
        self.io.stats.sessions_opened += 1;
        self.arm_sweep(now);
        self.refresh_gauges();
        Ok(sid)
    }

    /// Lets a repeat of an `OPEN_SESSION` this endpoint chose not to answer be delivered
    /// again (a farm node that is not deciding yet must hear the client's retransmission once
    /// the farm has a decider). Opens already accepted are kept.
    pub fn forget_open(&mut self, request: &OpenRequest) {
        if let Some(peer) = self.sessions.peer_mut(&request.peer)
            && peer.opens_seen.get(&request.transaction) == Some(&(request.sent, None))
        {
            peer.opens_seen.remove(&request.transaction);
            peer.opens_order.retain(|t| *t != request.transaction);
        }
    }

    /// Refuses an `OPEN_SESSION` with a NAK.
    pub fn reject_open(&mut self, now: Time, request: &OpenRequest, code: NakCode, text: &str) {
        let cmd = SystemCommand::OpenSession.number();
        let answer =
            Answer { command: cmd, session: 0, transaction: request.transaction, dst: request.src, src: 0 };
        self.io.nak(now, &request.peer, answer, code, text, None);
    }

    /// Answers a delivered request.
    pub fn reply(&mut self, now: Time, id: IncomingId, payload: Vec<u8>) -> Result<(), CallError> {
        let overhead = self.sessions.get(id.session).map_or(0, Session::overhead);
        self.check_size(payload.len(), overhead)?;
        let s = self.sessions.get_mut(id.session).ok_or(CallError::UnknownSession)?;
        let (peer, number) = (s.peer().clone(), s.number());
        let rec = s.inc.get_mut(&id.transaction).ok_or(CallError::NotAwaitingReply)?;
        if rec.sent != id.sent || !matches!(rec.state, InState::Delivered { .. }) {
            return Err(CallError::NotAwaitingReply);
        }
        // Never two replies for one transaction with one stamp: the client tells a late copy
        // of an earlier reply from a new one by its stamp.
        let mut stamp = self.io.stamp(now);
        let last = &mut s.last_reply_stamp_out[usize::from(id.transaction)];
        if stamp.millis_of_hour() == *last {
            stamp = SentTime::from_millis_of_hour(stamp.millis_of_hour() + 1);
        }
        *last = stamp.millis_of_hour();
        let header = Header {
            session: number,
            transaction: id.transaction,
            sent: stamp,
            crc: rec.crc,
            dst: rec.src,
            src: rec.dst,
            ..Header::new(Kind::Reply, rec.command)
        };
        let mut out = self.io.new_out(None, peer, header, payload);
        self.io.transmit_out(now, &mut out, TimerKey::Reply(id.session, id.transaction), s.crypto.sealer());
        s.last_active = now;
        if out.deadline.is_some() {
            rec.state = InState::Replied;
            s.replies.insert(id.transaction, out);
        } else {
            rec.state = InState::Done;
        }
        Ok(())
    }

    /// Refuses a delivered request with a NAK (for example 6, unknown command). Repeats of
    /// the request get the same NAK.
    pub fn reject(&mut self, now: Time, id: IncomingId, code: NakCode, text: &str) -> Result<(), CallError> {
        let s = self.sessions.get_mut(id.session).ok_or(CallError::UnknownSession)?;
        let (peer, number) = (s.peer().clone(), s.number());
        let rec = s.inc.get_mut(&id.transaction).ok_or(CallError::NotAwaitingReply)?;
        if rec.sent != id.sent || !matches!(rec.state, InState::Delivered { .. }) {
            return Err(CallError::NotAwaitingReply);
        }
        let answer = Answer {
            command: rec.command,
            session: number,
            transaction: id.transaction,
            dst: rec.src,
            src: rec.dst,
        };
        self.io.nak(now, &peer, answer, code, text, s.crypto.sealer());
        rec.state = InState::Refused(code, text.to_owned());
        Ok(())
    }

    /// Sends a single-datagram, unacknowledged message with session 0 (farm traffic).
    pub fn send_sessionless(
        &mut self,
        now: Time,
        to: &Addr,
        mut header: Header,
        payload: &[u8],
    ) -> Result<(), CallError> {
        header.session = 0;
        header.sent = self.io.stamp(now);
        let max = dabs_wire::single_capacity(header.crc, 0);
        if payload.len() > max {
            return Err(CallError::TooLarge { len: payload.len(), max });
        }
        self.io.send_message(to, &header, payload, None);
        Ok(())
    }

    pub(super) fn on_sessionless_request(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        if h.command == SystemCommand::OpenSession.number() {
            return self.on_open(now, from, d);
        }
        if d.buffer.is_some() {
            return self.nak_datagram(
                now,
                &from,
                d,
                NakCode::TooLarge,
                "multi-buffer messages need a session",
            );
        }
        if h.command == SystemCommand::Echo.number() {
            // A sessionless probe: answered once, not retransmitted.
            let header = Header {
                session: 0,
                transaction: h.transaction,
                sent: self.io.stamp(now),
                crc: h.crc,
                dst: h.src,
                src: h.dst,
                ..Header::new(Kind::Reply, h.command)
            };
            self.io.send_message(&from, &header, d.payload, None);
            return;
        }
        self.io.events.push_back(Event::Sessionless { peer: from, header: h, payload: d.payload.to_vec() });
    }

    pub(super) fn on_open(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        if d.buffer.is_some() {
            return self.nak_datagram(now, &from, d, NakCode::TooLarge, "OPEN_SESSION must fit one datagram");
        }
        if let Err(why) = self.admit_peer(now, &from) {
            self.io.stats.opens_refused += 1;
            return self.nak_datagram(now, &from, d, NakCode::SessionsExhausted, why);
        }
        let peer = self.sessions.peer_entry(&from);
        if let Some((sent, accepted)) = peer.opens_seen.get(&h.transaction).copied()
            && sent == h.sent
        {
            self.io.stats.duplicates += 1;
            if let Some(sid) = accepted {
                self.resend_reply(now, sid, h.transaction);
            }
            return;
        }
        remember_open(peer, h.transaction, h.sent, None);
        let latency = self.io.latency(h.sent, now);
        let request =
            OpenRequest { peer: from, transaction: h.transaction, sent: h.sent, src: h.src, crc: h.crc };
        let via_group = self.from_group;
        self.io.events.push_back(Event::Open { request, payload: d.payload.to_vec(), latency, via_group });
        self.arm_sweep(now);
    }

    /// Sends a reply again because its request came again (the REPLY was lost). At most once
    /// per half ACK time-out, and without using up the reply's own re-attempts: a
    /// multi-buffer request repeated buffer by buffer must not multiply the reply.
    pub(super) fn resend_reply(&mut self, now: Time, sid: SessionId, tx: u8) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let Some(out) = s.replies.get_mut(&tx) else {
            return;
        };
        // (`last_sent` is when a paced round's last group goes: never two rounds at once.)
        if now.saturating_sub(out.last_sent) >= self.io.config.ack_timeout / 2 {
            self.io.resend(now, out, TimerKey::Reply(sid, tx), s.crypto.sealer());
        }
    }

    pub(super) fn on_request(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let Some(sid) = self.session_of(&from, h.session) else {
            let text = format!("session {} is not open", h.session);
            return self.nak_datagram(now, &from, d, NakCode::UnknownSession, &text);
        };
        // A request proves the client has its REPLY.
        self.sessions.settle_open(sid);
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.last_active = now;
        let reliable = from.is_reliable_link();
        if let Some(rec) = s.inc.get_mut(&h.transaction) {
            if rec.sent == h.sent && rec.command == h.command {
                match &mut rec.state {
                    InState::Receiving(r) => match r.add(d, Budgets::of(&self.io.config), &mut self.io.spare)
                    {
                        Ok(dabs_wire::Progress::Complete) => {
                            let InState::Receiving(r) = std::mem::replace(&mut rec.state, InState::Done)
                            else {
                                return; // (matched just above)
                            };
                            if let Some(p) = self.sessions.peer_mut(&from) {
                                p.partials = p.partials.saturating_sub(1);
                            }
                            let msg = r.finish(&mut self.io.spare).unwrap_or_default();
                            return self.deliver(now, sid, h, msg);
                        }
                        Ok(dabs_wire::Progress::Duplicate) => self.io.stats.duplicates += 1,
                        Ok(dabs_wire::Progress::Incomplete) => {}
                        Err(refused) => {
                            let (code, text) = refused.nak();
                            if matches!(refused, Refused::Budget(..)) {
                                // Refused for good, like any rejected request: its other
                                // buffers and repeats get this NAK (once per round), and hold
                                // nothing.
                                self.io.stats.reassembly_refused += 1;
                                rec.state = InState::Refused(code, text.clone());
                            } else {
                                s.inc.remove(&h.transaction);
                            }
                            if let Some(p) = self.sessions.peer_mut(&from) {
                                p.partials = p.partials.saturating_sub(1);
                            }
                            return self.nak_datagram(now, &from, d, code, &text);
                        }
                    },
                    InState::Delivered { .. } | InState::Done => {
                        self.io.stats.duplicates += 1;
                        // One re-ACK per round of a multi-buffer message, not one per buffer.
                        if !reliable && d.buffer.is_none_or(|b| b.index + 1 == b.total) {
                            self.io.ack(&from, Answer::to(&h), h.sent, s.crypto.sealer());
                        }
                    }
                    InState::Replied => {
                        self.io.stats.duplicates += 1;
                        if d.buffer.is_none_or(|b| b.index + 1 == b.total) {
                            self.resend_reply(now, sid, h.transaction);
                        }
                    }
                    InState::Refused(code, text) => {
                        self.io.stats.duplicates += 1;
                        // Once per round of a multi-buffer message, on its last buffer.
                        if d.buffer.is_none_or(|b| b.index + 1 == b.total) {
                            let (code, text) = (*code, text.clone());
                            self.nak_datagram(now, &from, d, code, &text);
                        }
                    }
                }
                return;
            }
            // A late copy of an earlier use of this transaction number is already handled. No
            // copy outlives the sender's retries, which end well inside the idle time-out; an
            // older record is a number coming round again, whatever its stamp says (a session
            // calling every 10 s reuses each number 42.5 min later, "older" modulo the hour).
            let recent = now.saturating_sub(rec.at) < self.io.config.idle_timeout;
            if recent && !newer(h.sent, rec.sent) {
                self.io.stats.duplicates += 1;
                return;
            }
            let old = s.inc.remove(&h.transaction);
            s.replies.remove(&h.transaction);
            if old.is_some_and(|o| matches!(o.state, InState::Receiving(_)))
                && let Some(p) = self.sessions.peer_mut(&from)
            {
                p.partials = p.partials.saturating_sub(1);
            }
        }
        if d.buffer.is_none() {
            return self.deliver(now, sid, h, d.payload.to_vec());
        }
        let partials = self.sessions.peer(&from).map_or(0, |p| p.partials);
        if partials >= self.io.config.max_partial_per_peer {
            return self.nak_datagram(
                now,
                &from,
                d,
                NakCode::TooLarge,
                "too many partial messages from this peer",
            );
        }
        let chunk = chunk_size(h.crc, if h.encrypted { ENCRYPTION_OVERHEAD } else { 0 });
        let r = match Reassembly::new(d, chunk, self.io.config.max_message) {
            Ok(r) => r,
            Err(e @ dabs_wire::ReassemblyError::TooLarge { .. }) => {
                let text = e.to_string();
                return self.nak_datagram(now, &from, d, NakCode::TooLarge, &text);
            }
            Err(e) => {
                let text = e.to_string();
                return self.nak_datagram(now, &from, d, NakCode::Malformed, &text);
            }
        };
        let Some(session) = self.sessions.get(sid) else {
            return;
        };
        let meters = Meters {
            session: Some(session.held.clone()),
            peer: self.sessions.source_meter(&from),
            total: self.io.held.clone(),
        };
        let mut r = Partial::new(r, meters);
        if let Err(refused) = r.add(d, Budgets::of(&self.io.config), &mut self.io.spare) {
            let (code, text) = refused.nak();
            if matches!(refused, Refused::Budget(..)) {
                self.io.stats.reassembly_refused += 1;
                if let Some(s) = self.sessions.get_mut(sid) {
                    s.inc.insert(h.transaction, InRecord::new(&h, now, InState::Refused(code, text.clone())));
                }
            }
            return self.nak_datagram(now, &from, d, code, &text);
        }
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.inc.insert(h.transaction, InRecord::new(&h, now, InState::Receiving(r)));
        if let Some(p) = self.sessions.peer_mut(&from) {
            p.partials += 1;
        }
    }

    pub(super) fn deliver(&mut self, now: Time, sid: SessionId, h: Header, payload: Vec<u8>) {
        let latency = self.io.latency(h.sent, now);
        self.io.stats.requests_delivered += 1;
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let reliable = s.peer().is_reliable_link();
        let ack_due = (!reliable).then(|| now + self.io.config.ack_delay);
        s.inc.insert(h.transaction, InRecord::new(&h, now, InState::Delivered { ack_due }));
        let id = IncomingId { session: sid, transaction: h.transaction, sent: h.sent };
        if h.command == SystemCommand::Echo.number() {
            let _ = self.reply(now, id, payload);
            return;
        }
        if h.command == KEY_EXCHANGE {
            return self.on_key_exchange(now, sid, id, &payload);
        }
        if h.command == SystemCommand::CloseSession.number() {
            let _ = self.reply(now, id, Vec::new());
            if let Some(s) = self.sessions.remove(sid) {
                self.drop_session_calls(s, CloseReason::ClosedByPeer, sid);
            }
            return;
        }
        if let Some(at) = ack_due {
            self.io.schedule(at, TimerKey::Ack(sid, h.transaction));
        }
        let peer = s.peer().clone();
        self.io.events.push_back(Event::Request(Incoming {
            id,
            peer,
            session_number: h.session,
            command: h.command,
            dst: h.dst,
            src: h.src,
            payload,
            latency,
        }));
    }
}
