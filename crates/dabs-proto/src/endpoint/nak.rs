//! NAKs received: retry, give up, or re-open the session.

use super::records::{OpenOut, OpenPurpose, OutState, finish_replied};
use super::session::Role;
use super::timers::TimerKey;
use super::{CallError, CloseReason, Endpoint, SessionId, Time};
use crate::Addr;
use crate::crypto::KEY_EXCHANGE;
use dabs_wire::{Datagram, NakCode, NakPayload, SystemCommand};

impl Endpoint {
    pub(super) fn on_nak(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let (code, text) = match NakPayload::parse(d.payload) {
            Ok(p) => (p.code, p.text.to_owned()),
            Err(e) => (NakCode::Malformed, e.to_string()),
        };
        self.io.stats.nak_received(code.number());
        let retry = matches!(code, NakCode::CrcMismatch | NakCode::Malformed);
        if h.session == 0 {
            if h.command != SystemCommand::OpenSession.number() {
                return;
            }
            let Some(open) = self.opens.get_mut(&h.transaction) else {
                return;
            };
            if retry {
                if now >= open.out.nak_quiet_until {
                    open.out.nak_quiet_until = now + self.io.config.ack_timeout / 2;
                    self.io.transmit_out(now, &mut open.out, TimerKey::Open(h.transaction), None);
                }
                return;
            }
            if let Some(open) = self.opens.remove(&h.transaction) {
                self.open_failed(open, CallError::Nak { code, text });
            }
            return;
        }
        let Some(sid) = self.session_of(&from, h.session) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        if let Some(out) = s.out.get_mut(&h.transaction).filter(|o| o.header.command == h.command) {
            if retry && (now < out.nak_quiet_until || out.state != OutState::AwaitAck) {
                // Another buffer of the round being resent, or a copy of a message the peer
                // has already acknowledged: nothing to restart.
                return;
            }
            // NAK 1: the peer lost the session. Repeated NAK 4: the session's state is
            // confused. Either way a fresh session helps; repeated CRC NAKs are only retried,
            // since re-opening cannot cure corruption. So only NAK 4 rounds count: CRC NAKs
            // counted too, and two of them plus one NAK 4 re-opened a session on a noisy path
            // (failing its ACKed calls with `SessionLost`).
            // A confirmed close the peer refuses is over (NAK 1: it has let the session go
            // already); re-opening a session only to close it would leave one behind.
            let closing = s.closing.is_some() && out.call == s.closing;
            if closing && !retry {
                if let Some(out) = s.out.remove(&h.transaction) {
                    self.io.fail(out.call, CallError::Nak { code, text });
                }
                return self.finish_close(sid);
            }
            if code == NakCode::Malformed {
                out.naks += 1;
            }
            let reopen = !closing
                && (code == NakCode::UnknownSession
                    || (code == NakCode::Malformed && out.naks >= self.io.config.naks_before_reopen));
            if reopen {
                return self.reopen(now, sid);
            }
            if retry {
                // A NAK restarts the whole message; NAKs of the round being sent (paced, it may
                // take a while) are that round's.
                out.reply = None;
                self.io.transmit_out(now, out, TimerKey::Out(sid, h.transaction), s.crypto.sealer());
                out.nak_quiet_until = out.last_sent + self.io.config.ack_timeout / 2;
                return;
            }
            if let Some(out) = s.out.remove(&h.transaction) {
                self.out_failed(now, sid, out, CallError::Nak { code, text });
            }
            return;
        }
        if let Some(out) = s.replies.get_mut(&h.transaction).filter(|o| o.header.command == h.command) {
            if retry {
                if now < out.nak_quiet_until {
                    return;
                }
                let key = TimerKey::Reply(sid, h.transaction);
                if out.parked {
                    // Sent once more, without re-arming the re-attempts that ran out.
                    self.io.resend(now, out, key, s.crypto.sealer());
                } else {
                    self.io.transmit_out(now, out, key, s.crypto.sealer());
                }
                out.nak_quiet_until = out.last_sent + self.io.config.ack_timeout / 2;
                return;
            }
            if let Some(reply) = s.replies.remove(&h.transaction) {
                finish_replied(&mut s.inc, h.transaction, reply.header.command);
            }
        }
    }

    pub(super) fn open_failed(&mut self, open: OpenOut, error: CallError) {
        match open.purpose {
            OpenPurpose::New { .. } => self.io.fail(open.out.call, error),
            OpenPurpose::Reopen(sid) => {
                if let Some(s) = self.sessions.remove(sid) {
                    self.drop_session_calls(s, CloseReason::Lost, sid);
                }
            }
        }
    }

    /// Re-opens a client session whose server lost it or keeps refusing its messages.
    /// Requests not yet acknowledged are sent again in the new session; acknowledged ones
    /// may have run, so they fail with `SessionLost` rather than risk running twice.
    pub(super) fn reopen(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        if s.reopening {
            return;
        }
        let Some((target, payload)) = s.reopen_with.clone().filter(|_| s.role == Role::Client) else {
            if let Some(s) = self.sessions.remove(sid) {
                self.drop_session_calls(s, CloseReason::Lost, sid);
            }
            return;
        };
        s.reopening = true;
        s.out.retain(|_, o| !(o.header.command == KEY_EXCHANGE && o.call.is_none()));
        let acked: Vec<u8> =
            s.out.iter().filter(|(_, o)| o.state != OutState::AwaitAck).map(|(t, _)| *t).collect();
        for tx in acked {
            if let Some(out) = s.out.remove(&tx) {
                self.io.fail(out.call, CallError::SessionLost);
            }
        }
        for out in s.out.values_mut() {
            out.deadline = None;
            out.pace = None; // sent again, whole, in the new session
        }
        let local_queue = s.local_queue;
        self.io.stats.sessions_reopened += 1;
        let (encrypt, pinned) = (s.wants_encryption, s.pinned);
        if self
            .start_open(now, target, OpenPurpose::Reopen(sid), None, payload, local_queue, encrypt, pinned)
            .is_err()
        {
            // (No OPEN_SESSION transaction number free.) Removed from the index, the session
            // no longer answers to its number: a late datagram for it finds nothing.
            if let Some(s) = self.sessions.remove(sid) {
                self.drop_session_calls(s, CloseReason::Lost, sid);
            }
        }
    }
}
