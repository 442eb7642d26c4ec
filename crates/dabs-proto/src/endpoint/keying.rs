//! Encrypted sessions: admitting datagrams under the session's keys, and the key exchange
//! (client and server halves).

use super::records::finish_replied;
use super::session::Role;
use super::timers::TimerKey;
use super::{CallError, Endpoint, Event, IncomingId, SessionId, Time};
use crate::Addr;
use crate::crypto::{self, Crypto, KEY_EXCHANGE, NOISE_NK_PARAMS, OpenError, Refusal};
use dabs_wire::{BUFFER_HEADER_LEN, Datagram, HEADER_LEN, Header, Kind, NakCode, NakPayload};

impl Endpoint {
    /// Applies the session's encryption to a decoded datagram: the plaintext datagram, or
    /// `None` when it must be dropped (counted, never answered).
    pub(super) fn admit<'a>(
        &mut self,
        now: Time,
        from: &Addr,
        bytes: &[u8],
        d: Datagram<'a>,
        plain: &'a mut Vec<u8>,
    ) -> Option<Datagram<'a>> {
        let h = d.header;
        let sid = if h.session == 0 { None } else { self.session_of(from, h.session) };
        let session = sid.and_then(|sid| self.sessions.get_mut(sid));
        if let Some(s) = &session
            && !h.encrypted
            && h.command == KEY_EXCHANGE
            && h.kind == Kind::Request
            && !s.crypto.is_plain()
            && (s.role == Role::Client || s.crypto.is_confirmed())
            && !s.inc.get(&h.transaction).is_some_and(|r| r.command == KEY_EXCHANGE && r.sent == h.sent)
        {
            // In a keyed session only repeats of the exchange that keyed it pass in clear: a
            // forged one must not displace a live transaction's record.
            self.io.stats.auth_failures += 1;
            return None;
        }
        let known = session.is_some();
        let crypto = session.map(|s| &mut s.crypto);
        let mut confirmed_now = false;
        let admitted = match (h.encrypted, crypto) {
            (true, Some(Crypto::Keys(keys))) if !crypto::exempt(h.command) => {
                let headers = HEADER_LEN + if d.buffer.is_some() { BUFFER_HEADER_LEN } else { 0 };
                // (`decode` has read these headers, so they are there; if not, it is no
                // authentic datagram.)
                let opened = bytes
                    .get(..headers)
                    .map_or(Err(OpenError::Auth), |ad| keys.open.open_into(ad, d.payload, plain));
                match opened {
                    Ok(()) => {
                        confirmed_now = !keys.confirmed;
                        keys.confirmed = true;
                        Some(Datagram { payload: plain.as_slice(), ..d })
                    }
                    Err(OpenError::Replay) => {
                        self.io.stats.replays_dropped += 1;
                        None
                    }
                    Err(OpenError::Auth) => {
                        self.io.stats.auth_failures += 1;
                        None
                    }
                }
            }
            // Encrypted without keys to open it, or in clear where the session requires
            // encryption: dropped and counted, its contents echoed nowhere.
            (true, _) => {
                self.io.stats.auth_failures += 1;
                if !known && h.session != 0 && h.kind == Kind::Request {
                    // The session is gone here (expired, or this endpoint restarted): say so,
                    // as for any request, so that the client re-opens and re-keys.
                    let text = format!("session {} is not open", h.session);
                    self.nak_datagram(now, from, &d, NakCode::UnknownSession, &text);
                }
                None
            }
            // A NAK 1 cannot be encrypted (its sender has no session, hence no keys); it only
            // makes the client re-open, with a new key exchange.
            (false, Some(Crypto::Keys(_)))
                if h.kind == Kind::Nak
                    && NakPayload::parse(d.payload).is_ok_and(|p| p.code == NakCode::UnknownSession) =>
            {
                Some(d)
            }
            (false, Some(Crypto::Keys(_) | Crypto::Handshake(_))) if !crypto::exempt(h.command) => {
                self.io.stats.auth_failures += 1;
                None
            }
            (false, _) => Some(d),
        };
        if confirmed_now && let Some(s) = sid.and_then(|sid| self.sessions.get_mut(sid)) {
            // The peer holds the keys, so the exchange is over: forget its request and REPLY.
            // Their clear headers were never authenticated (a stamp damaged in transit must
            // not shadow a later request that reuses the transaction number).
            s.inc.retain(|_, r| r.command != KEY_EXCHANGE);
            s.replies.retain(|_, o| o.header.command != KEY_EXCHANGE);
        }
        admitted
    }

    /// Server: answers Noise message 1 with message 2 (in clear) and keys the session.
    pub(super) fn on_key_exchange(&mut self, now: Time, sid: SessionId, id: IncomingId, msg1: &[u8]) {
        let accept = self.io.config.accept_encryption;
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let result = if !accept {
            Err((NakCode::AuthenticationFailed, "this endpoint does not offer encryption".to_owned()))
        } else if s.role != Role::Server || s.crypto.is_confirmed() {
            Err((NakCode::AuthenticationFailed, "the session is already keyed".to_owned()))
        } else {
            let prologue = crypto::prologue(s.number(), s.remote_queue, s.local_queue);
            crypto::respond(&prologue, msg1, self.io.config.static_key.as_ref()).map_err(|e| match e {
                Refusal::NoStaticKey => (
                    NakCode::EncryptionRefused,
                    format!("{NOISE_NK_PARAMS} needs a static key and this endpoint holds none"),
                ),
                Refusal::Noise(e) => (NakCode::AuthenticationFailed, format!("key exchange: {e}")),
            })
        };
        match result {
            Ok((keys, msg2)) => {
                if !s.crypto.is_plain() {
                    // The client started over (our keys never verified at its end): the
                    // earlier exchange and its REPLY are void.
                    s.crypto = Crypto::Plain;
                    let old: Vec<u8> = s
                        .replies
                        .iter()
                        .filter(|(tx, o)| o.header.command == KEY_EXCHANGE && **tx != id.transaction)
                        .map(|(tx, _)| *tx)
                        .collect();
                    for tx in old {
                        s.replies.remove(&tx);
                        finish_replied(&mut s.inc, tx, KEY_EXCHANGE);
                    }
                } else {
                    self.io.stats.sessions_encrypted += 1;
                }
                let _ = self.reply(now, id, msg2);
                let Some(s) = self.sessions.get_mut(sid) else {
                    return;
                };
                s.crypto = Crypto::Keys(Box::new(keys));
            }
            Err((code, text)) => {
                if accept && code == NakCode::AuthenticationFailed {
                    self.io.stats.auth_failures += 1;
                }
                let _ = self.reject(now, id, code, &text);
            }
        }
    }

    /// Client: starts the Noise handshake in a session just (re-)opened. Requests wait until
    /// it completes.
    pub(super) fn start_key_exchange(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let prologue = crypto::prologue(s.number(), s.local_queue, s.remote_queue);
        let (hs, msg1) = match crypto::initiate(&prologue, s.pinned.as_ref()) {
            Ok(x) => x,
            Err(e) => {
                let text = format!("key exchange: {e}");
                return self.key_exchange_failed(
                    now,
                    sid,
                    CallError::Nak { code: NakCode::AuthenticationFailed, text },
                );
            }
        };
        s.crypto = Crypto::Handshake(Box::new(hs));
        s.key_exchanges += 1;
        let stamp = self.io.stamp(now);
        let Some(tx) = s.alloc_tx(stamp) else {
            return self.key_exchange_failed(now, sid, CallError::SessionsExhausted);
        };
        let header = Header {
            session: s.number(),
            transaction: tx,
            sent: stamp,
            crc: s.crc,
            dst: s.remote_queue,
            src: s.local_queue,
            ..Header::new(Kind::Request, KEY_EXCHANGE)
        };
        let mut out = self.io.new_out(None, s.peer().clone(), header, msg1);
        self.io.transmit_out(now, &mut out, TimerKey::Out(sid, tx), None);
        s.out.insert(tx, out);
        s.last_active = now;
    }

    /// Client: the session has its keys. Sends what waited and tells the application.
    pub(super) fn key_exchange_done(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.key_exchanges = 0;
        let Some(pending) = s.pending_open.take() else {
            return self.start_waiting(now, sid);
        };
        let (peer, queue) = (s.peer().clone(), s.remote_queue);
        if pending.reopened {
            // Requests carried over from the lost session go out now, encrypted.
            for (tx, out) in s.out.iter_mut() {
                if out.attempts == 0 {
                    self.io.transmit_out(now, out, TimerKey::Out(sid, *tx), s.crypto.sealer());
                }
            }
            self.io.events.push_back(Event::Reopened { session: sid, peer, queue, payload: pending.payload });
        } else if let Some(call) = pending.call {
            self.io.events.push_back(Event::Opened {
                call,
                session: sid,
                peer,
                queue,
                payload: pending.payload,
            });
        }
        self.start_waiting(now, sid);
    }

    /// Client: the key exchange failed; the session is closed and its open call fails.
    pub(super) fn key_exchange_failed(&mut self, now: Time, sid: SessionId, error: CallError) {
        let call = self.sessions.get_mut(sid).and_then(|s| s.pending_open.take()).and_then(|p| p.call);
        self.close(now, sid);
        self.io.fail(call, error);
    }
}
