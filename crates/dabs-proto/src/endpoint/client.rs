//! The client side: opening sessions, calls, and the REPLYs that answer them.

use super::budget::{Budgets, Meters, Partial, Refused};
use super::records::{Answer, InState, OpenOut, OpenPurpose, Out, OutState, Pending, PendingOpen, newer};
use super::session::{Role, Session};
use super::timers::TimerKey;
use super::{CallError, CallId, CloseReason, Endpoint, Event, SessionId, Time};
use crate::Addr;
use crate::crypto::{self, Crypto, ENCRYPTION_OVERHEAD, KEY_EXCHANGE};
use dabs_wire::{Datagram, Header, Kind, NakCode, Reassembly, SentTime, SystemCommand, chunk_size};
use std::time::Duration;

impl Endpoint {
    /// Sends `OPEN_SESSION` to `to` (a server or the farm group) from portion queue
    /// `local_queue`; [`Event::Opened`] or [`Event::Failed`] follows.
    pub fn open(
        &mut self,
        now: Time,
        to: Addr,
        local_queue: u16,
        payload: Vec<u8>,
    ) -> Result<CallId, CallError> {
        self.open_with(now, to, local_queue, payload, false)
    }

    /// Like [`Endpoint::open`], but the session is encrypted: once the `OPEN_SESSION` REPLY
    /// arrives the endpoint runs the [`crate::KEY_EXCHANGE`] handshake with the server, and
    /// [`Event::Opened`] follows only when the session keys are in place (a server that refuses
    /// or does not know the exchange fails the call). The payload is the application's, as for
    /// `open`; the layers above may put a security offer in it.
    pub fn open_encrypted(
        &mut self,
        now: Time,
        to: Addr,
        local_queue: u16,
        payload: Vec<u8>,
    ) -> Result<CallId, CallError> {
        self.open_with(now, to, local_queue, payload, true)
    }

    /// [`Endpoint::open`] or [`Endpoint::open_encrypted`], by `encrypt`.
    pub fn open_with(
        &mut self,
        now: Time,
        to: Addr,
        local_queue: u16,
        payload: Vec<u8>,
        encrypt: bool,
    ) -> Result<CallId, CallError> {
        self.check_size(payload.len(), 0)?;
        let call = CallId(self.next_id());
        let purpose = OpenPurpose::New { local_queue };
        self.start_open(now, to, purpose, Some(call), payload, local_queue, encrypt, None).map(|_| call)
    }

    /// Like [`Endpoint::open_encrypted`], but the server must prove it holds the private key
    /// of `server_key` (the farm's static public key, pinned by the client): the key exchange
    /// is [`crate::NOISE_NK_PARAMS`]. It fails closed: a server without that key cannot
    /// complete it (NAK 9 or 13, or message 2 that does not verify), the open fails, and the
    /// session never falls back to NN or to clear, re-opens included.
    pub fn open_pinned(
        &mut self,
        now: Time,
        to: Addr,
        local_queue: u16,
        payload: Vec<u8>,
        server_key: [u8; 32],
    ) -> Result<CallId, CallError> {
        self.check_size(payload.len(), 0)?;
        let call = CallId(self.next_id());
        let purpose = OpenPurpose::New { local_queue };
        self.start_open(now, to, purpose, Some(call), payload, local_queue, true, Some(server_key))
            .map(|_| call)
    }

    /// Whether a client session's key exchange authenticated the server's static key (it was
    /// opened with [`Endpoint::open_pinned`] and is keyed).
    pub fn session_authenticated(&self, session: SessionId) -> bool {
        self.sessions.get(session).is_some_and(|s| s.pinned.is_some() && matches!(s.crypto, Crypto::Keys(_)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_open(
        &mut self,
        now: Time,
        to: Addr,
        purpose: OpenPurpose,
        call: Option<CallId>,
        payload: Vec<u8>,
        local_queue: u16,
        encrypt: bool,
        pinned: Option<[u8; 32]>,
    ) -> Result<(), CallError> {
        let mut tx = None;
        for _ in 0..255 {
            let t = self.next_open_tx;
            self.next_open_tx = if t == 255 { 1 } else { t + 1 };
            if !self.opens.contains_key(&t) {
                tx = Some(t);
                break;
            }
        }
        let Some(tx) = tx else {
            return Err(CallError::SessionsExhausted);
        };
        let header = Header {
            transaction: tx,
            sent: self.io.stamp(now),
            crc: self.io.config.crc,
            src: local_queue,
            ..Header::new(Kind::Request, SystemCommand::OpenSession.number())
        };
        let mut out = self.io.new_out(call, to, header, payload);
        // OPEN_SESSION is answered by a REPLY, never a bare ACK: keep retransmitting until then.
        self.io.transmit_out(now, &mut out, TimerKey::Open(tx), None);
        self.opens.insert(tx, OpenOut { out, purpose, encrypt: encrypt || pinned.is_some(), pinned });
        Ok(())
    }

    /// Sends a request in `session`; [`Event::Reply`] or [`Event::Failed`] follows.
    pub fn call(
        &mut self,
        now: Time,
        session: SessionId,
        command: u16,
        payload: Vec<u8>,
    ) -> Result<CallId, CallError> {
        let s = self.sessions.get(session).ok_or(CallError::UnknownSession)?;
        // A session being closed takes no more requests.
        if s.closing.is_some() {
            return Err(CallError::SessionLost);
        }
        let overhead = s.overhead();
        self.check_size(payload.len(), overhead)?;
        let call = CallId(self.next_id());
        let s = self.sessions.get_mut(session).ok_or(CallError::UnknownSession)?;
        s.waiting.push_back(Pending { call, command, payload });
        self.start_waiting(now, session);
        Ok(call)
    }

    pub(super) fn start_waiting(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        if s.reopening || !s.ready() {
            return;
        }
        let stamp = self.io.stamp(now);
        while let Some(p) = s.waiting.pop_front() {
            let Some(tx) = s.alloc_tx(stamp) else {
                s.waiting.push_front(p);
                // Every number is in flight or was just used in this millisecond.
                self.io.schedule(now + Duration::from_millis(1), TimerKey::Kick(sid));
                return;
            };
            let header = Header {
                session: s.number(),
                transaction: tx,
                sent: stamp,
                crc: s.crc,
                dst: s.remote_queue,
                src: s.local_queue,
                ..Header::new(Kind::Request, p.command)
            };
            let mut out = self.io.new_out(Some(p.call), s.peer().clone(), header, p.payload);
            self.io.transmit_out(now, &mut out, TimerKey::Out(sid, tx), s.crypto.sealer());
            s.out.insert(tx, out);
            s.last_active = now;
        }
    }

    /// Closes a session: sends `CLOSE_SESSION` (best effort) and fails its calls.
    pub fn close(&mut self, now: Time, session: SessionId) {
        let Some(mut s) = self.sessions.remove(session) else {
            return;
        };
        let header = Header {
            session: s.number(),
            transaction: s.alloc_tx(self.io.stamp(now)).unwrap_or(1),
            sent: self.io.stamp(now),
            crc: s.crc,
            dst: s.remote_queue,
            src: s.local_queue,
            ..Header::new(Kind::Request, SystemCommand::CloseSession.number())
        };
        let peer = s.peer().clone();
        self.io.send_message(&peer, &header, &[], s.crypto.sealer());
        self.drop_session_calls(s, CloseReason::ClosedLocally, session);
    }

    /// Sends `CLOSE_SESSION` in a session a server opened for this endpoint that it does not
    /// keep (`reply` the server's open REPLY).
    fn close_unkept(&mut self, now: Time, to: &Addr, reply: &Header) {
        let quiet = self.io.config.ack_timeout_max;
        self.unkept.retain(|_, at| now.saturating_sub(*at) < quiet);
        if self.unkept.contains_key(&(to.clone(), reply.session)) {
            return;
        }
        self.unkept.insert((to.clone(), reply.session), now);
        let header = Header {
            session: reply.session,
            transaction: 1,
            sent: self.io.stamp(now),
            crc: reply.crc,
            dst: reply.src,
            src: reply.dst,
            ..Header::new(Kind::Request, SystemCommand::CloseSession.number())
        };
        self.io.send_message(to, &header, &[], None);
    }

    pub(super) fn drop_session_calls(&mut self, s: Session, reason: CloseReason, sid: SessionId) {
        let peer = s.peer().clone();
        if let Some(p) = self.sessions.peer_mut(&peer) {
            let partials = s.inc.values().filter(|r| matches!(r.state, InState::Receiving(_))).count();
            p.partials = p.partials.saturating_sub(partials);
        }
        for out in s.out.into_values() {
            self.io.fail(out.call, CallError::SessionLost);
        }
        for p in s.waiting {
            self.io.fail(Some(p.call), CallError::SessionLost);
        }
        if let Some(p) = s.pending_open {
            self.io.fail(p.call, CallError::SessionLost);
        }
        self.io.events.push_back(Event::SessionClosed { session: sid, peer, reason });
    }

    pub(super) fn on_reply(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let reliable = from.is_reliable_link();
        if h.command == SystemCommand::OpenSession.number()
            && self.opens.contains_key(&h.transaction)
            && h.session != 0
        {
            return self.on_open_reply(now, from, d);
        }
        let Some(sid) = self.session_of(&from, h.session) else {
            if h.session != 0 && h.command == SystemCommand::OpenSession.number() {
                // Another endpoint answered this open too (the farm's decider changing over),
                // or it answers an open since closed here: this client keeps no such session,
                // so the server must not either, or it holds a seat for nobody. Closed, not
                // ACKed: a lost CLOSE_SESSION brings the REPLY again, and with it another.
                self.io.stats.extra_open_replies += 1;
                self.close_unkept(now, &from, &h);
            } else if h.session != 0 && h.command == SystemCommand::CloseSession.number() && !reliable {
                // That close's answer: ACKed, so its sender stops.
                self.io.ack(&from, Answer::to(&h), h.sent, None);
            }
            return;
        };
        // (The peer has an entry: it has this session.)
        let peer_meter = self.sessions.source_meter(&from);
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.last_active = now;
        let last = s.last_reply_stamp_in[usize::from(h.transaction)];
        let recent =
            now.saturating_sub(s.last_reply_at[usize::from(h.transaction)]) < self.io.config.idle_timeout;
        let stale = last != u32::MAX && recent && !newer(h.sent, SentTime::from_millis_of_hour(last));
        let live = s.out.get_mut(&h.transaction).filter(|o| o.header.command == h.command && !stale);
        let Some(out) = live else {
            // A copy of a reply we already took: ACK it again so the sender stops.
            self.io.stats.duplicates += 1;
            if !reliable {
                self.io.ack(&from, Answer::to(&h), h.sent, s.crypto.sealer());
            }
            return;
        };
        let overhead = if h.encrypted { ENCRYPTION_OVERHEAD } else { 0 };
        let message = if d.buffer.is_some() {
            if out.reply.as_ref().is_some_and(|r| r.header().sent != h.sent) {
                out.reply = None; // a newer reply replaces a partial older one
            }
            if out.reply.is_none() {
                match Reassembly::new(d, chunk_size(h.crc, overhead), self.io.config.max_message) {
                    Ok(r) => {
                        let meters = Meters {
                            session: Some(s.held.clone()),
                            peer: peer_meter,
                            total: self.io.held.clone(),
                        };
                        out.reply = Some(Partial::new(r, meters));
                    }
                    Err(e) => {
                        let code = if matches!(e, dabs_wire::ReassemblyError::TooLarge { .. }) {
                            NakCode::TooLarge
                        } else {
                            NakCode::Malformed
                        };
                        let text = e.to_string();
                        return self.nak_datagram(now, &from, d, code, &text);
                    }
                }
            }
            let Some(r) = out.reply.as_mut() else {
                return;
            };
            match r.add(d, Budgets::of(&self.io.config), &mut self.io.spare) {
                Ok(dabs_wire::Progress::Complete) => {
                    out.reply.take().and_then(|r| r.finish(&mut self.io.spare)).unwrap_or_default()
                }
                Err(Refused::Budget(..)) => {
                    // Over budget: what arrived is let go, unanswered; the server's next
                    // round (or the answer to our next probe) brings the REPLY again.
                    out.reply = None;
                    self.io.stats.reassembly_refused += 1;
                    return;
                }
                Ok(_) => {
                    // Part of the REPLY proves the request arrived (the spec counts a REPLY as
                    // its ACK): stop the re-attempts and wait for the rest, which the server
                    // retransmits and sends again for each probe. Counting on until GaveUp
                    // failed calls that had run and were being answered.
                    if out.state == OutState::AwaitAck {
                        self.io.await_reply(now, out, TimerKey::Out(sid, h.transaction));
                    }
                    return;
                }
                Err(e) => {
                    out.reply = None;
                    let (code, text) = e.nak();
                    return self.nak_datagram(now, &from, d, code, &text);
                }
            }
        } else {
            d.payload.to_vec()
        };
        let key_exchange = h.command == KEY_EXCHANGE && out.call.is_none() && s.role == Role::Client;
        if key_exchange {
            // Noise message 2. One that does not verify is dropped and counted, and the
            // exchange starts over (fresh ephemeral key, new transaction): message 1 may be
            // what was damaged, and then every copy of this REPLY would fail alike.
            let keys = match &mut s.crypto {
                Crypto::Handshake(hs) => crypto::finish(hs, &message).ok(),
                _ => None,
            };
            let Some(keys) = keys else {
                self.io.stats.auth_failures += 1;
                s.out.remove(&h.transaction);
                if s.key_exchanges > self.io.config.max_retries {
                    let text = "the key exchange did not verify".to_owned();
                    let error = CallError::Nak { code: NakCode::AuthenticationFailed, text };
                    return self.key_exchange_failed(now, sid, error);
                }
                return self.start_key_exchange(now, sid);
            };
            s.crypto = Crypto::Keys(Box::new(keys));
            self.io.stats.sessions_encrypted += 1;
        }
        let Some(out) = s.out.remove(&h.transaction) else {
            return;
        };
        if !key_exchange {
            // (The exchange's REPLY is not authenticated: its stamp must not shadow a later
            // reply to this transaction number.)
            s.last_reply_stamp_in[usize::from(h.transaction)] = h.sent.millis_of_hour();
            s.last_reply_at[usize::from(h.transaction)] = now;
        }
        if !reliable {
            self.io.ack(&from, Answer::to(&h), h.sent, s.crypto.sealer());
        }
        let latency = self.io.latency(h.sent, now);
        if key_exchange {
            return self.key_exchange_done(now, sid);
        }
        let closed = s.closing.is_some() && out.call == s.closing;
        if let Some(call) = out.call {
            self.io.stats.calls_answered += 1;
            self.io.events.push_back(Event::Reply { call, payload: message, latency });
        }
        if closed {
            return self.finish_close(sid);
        }
        self.start_waiting(now, sid);
    }

    /// A message of ours will not be answered: fails its call, or the key exchange it was.
    pub(super) fn out_failed(&mut self, now: Time, sid: SessionId, out: Out, error: CallError) {
        if out.header.command == KEY_EXCHANGE && out.call.is_none() {
            return self.key_exchange_failed(now, sid, error);
        }
        let closing = self.is_close_of(sid, out.call);
        self.io.fail(out.call, error);
        if closing {
            return self.finish_close(sid);
        }
        self.start_waiting(now, sid);
    }

    pub(super) fn on_open_reply(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let reliable = from.is_reliable_link();
        let Some(open) = self.opens.get_mut(&h.transaction) else {
            return;
        };
        let payload = if d.buffer.is_some() {
            if open.out.reply.is_none() {
                match Reassembly::new(d, chunk_size(h.crc, 0), self.io.config.max_message) {
                    Ok(r) => {
                        let meters = Meters {
                            session: None,
                            peer: self.sessions.source_meter(&from),
                            total: self.io.held.clone(),
                        };
                        open.out.reply = Some(Partial::new(r, meters));
                    }
                    Err(_) => return,
                }
            }
            let Some(r) = open.out.reply.as_mut() else {
                return;
            };
            match r.add(d, Budgets::of(&self.io.config), &mut self.io.spare) {
                Ok(dabs_wire::Progress::Complete) => {
                    open.out.reply.take().and_then(|r| r.finish(&mut self.io.spare)).unwrap_or_default()
                }
                Ok(_) => return,
                Err(_) => {
                    open.out.reply = None;
                    return;
                }
            }
        } else {
            d.payload.to_vec()
        };
        let Some(open) = self.opens.remove(&h.transaction) else {
            return;
        };
        if !reliable {
            self.io.ack(&from, Answer::to(&h), h.sent, None);
        }
        self.io.latency(h.sent, now);
        let reopening = match open.purpose {
            OpenPurpose::Reopen(sid) => Some(sid),
            OpenPurpose::New { .. } => None,
        };
        if let Some(old) = self.sessions.lookup(&from, h.session)
            && Some(old) != reopening
        {
            // The server reused a number we still hold: the old session is gone there (also
            // when the session being re-opened has been closed meanwhile).
            if let Some(s) = self.sessions.remove(old) {
                self.drop_session_calls(s, CloseReason::Lost, old);
            }
        }
        match open.purpose {
            OpenPurpose::New { local_queue } => {
                let sid = SessionId(self.next_id());
                let mut s = Session::new(
                    from.clone(),
                    h.session,
                    Role::Client,
                    open.out.header.crc,
                    h.src,
                    local_queue,
                    now,
                );
                s.reopen_with = Some((open.out.to.clone(), open.out.payload));
                s.wants_encryption = open.encrypt;
                s.pinned = open.pinned;
                self.io.stats.sessions_opened += 1;
                if open.encrypt {
                    s.pending_open = Some(PendingOpen { call: open.out.call, payload, reopened: false });
                    self.add_session(sid, s);
                    return self.start_key_exchange(now, sid);
                }
                self.add_session(sid, s);
                if let Some(call) = open.out.call {
                    self.io.events.push_back(Event::Opened {
                        call,
                        session: sid,
                        peer: from,
                        queue: h.src,
                        payload,
                    });
                }
            }
            OpenPurpose::Reopen(sid) => {
                if let Some((old, s)) = self.sessions.readdress(sid, from.clone(), h.session) {
                    self.drop_session_calls(s, CloseReason::Lost, old);
                }
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                s.remote_queue = h.src;
                s.reopening = false;
                s.last_reply_stamp_in.fill(u32::MAX);
                s.last_active = now;
                // The old session's keys die with it; an encrypted session keys the new one
                // before anything is sent again.
                s.crypto = Crypto::Plain;
                s.out.retain(|_, o| !(o.header.command == KEY_EXCHANGE && o.call.is_none()));
                let encrypt = s.wants_encryption;
                for (tx, out) in s.out.iter_mut() {
                    out.to = from.clone();
                    out.header.session = h.session;
                    out.header.dst = h.src;
                    out.attempts = 0;
                    out.naks = 0;
                    out.reply = None;
                    out.timeout = self.io.config.ack_timeout;
                    out.state = OutState::AwaitAck;
                    out.deadline = None;
                    out.pace = None;
                    if !encrypt {
                        self.io.transmit_out(now, out, TimerKey::Out(sid, *tx), None);
                    }
                }
                if encrypt {
                    // A re-open during the first key exchange still owes the open call.
                    s.pending_open = Some(match s.pending_open.take() {
                        Some(first) => PendingOpen { payload, ..first },
                        None => PendingOpen { call: None, payload, reopened: true },
                    });
                    return self.start_key_exchange(now, sid);
                }
                self.io.events.push_back(Event::Reopened { session: sid, peer: from, queue: h.src, payload });
                self.start_waiting(now, sid);
            }
        }
    }
}
