//! Closing a session with confirmation: `CLOSE_SESSION` sent as a request the peer answers
//! and retransmitted like any other, so a client that stops knows its server has let the
//! session go (a fire-and-forget close lost on the way left the session, and its seat, open
//! on the server until the idle time-out).

use super::records::Pending;
use super::{CallError, CallId, CloseReason, Endpoint, SessionId, Time};
use dabs_wire::SystemCommand;

impl Endpoint {
    /// Closes `session` reliably: its calls fail with [`CallError::SessionLost`], and
    /// `CLOSE_SESSION` goes as a request that is retransmitted until the peer answers. The
    /// session is removed when its REPLY arrives ([`super::Event::Reply`] for the returned
    /// call), when the peer NAKs it (it no longer has the session: [`super::Event::Failed`]),
    /// or when the close is given up ([`super::Event::Failed`]) — never re-opened. A session
    /// that cannot send a request now (re-opening, keying, already closing) is closed at once
    /// as by [`Endpoint::close`], and the error says so.
    pub fn close_confirmed(&mut self, now: Time, session: SessionId) -> Result<CallId, CallError> {
        let s = self.sessions.get_mut(session).ok_or(CallError::UnknownSession)?;
        if s.reopening || !s.ready() || s.closing.is_some() {
            self.close(now, session);
            return Err(CallError::SessionLost);
        }
        let outs: Vec<_> = s.out.drain().map(|(_, o)| o.call).collect();
        let waiting: Vec<_> = s.waiting.drain(..).map(|p| Some(p.call)).collect();
        let call = CallId(self.next_id());
        if let Some(s) = self.sessions.get_mut(session) {
            s.closing = Some(call);
            s.waiting.push_back(Pending {
                call,
                command: SystemCommand::CloseSession.number(),
                payload: Vec::new(),
            });
        }
        for c in outs.into_iter().chain(waiting) {
            self.io.fail(c, CallError::SessionLost);
        }
        self.start_waiting(now, session);
        Ok(call)
    }

    /// Whether `call` is the confirmed close of session `sid`.
    pub(super) fn is_close_of(&self, sid: SessionId, call: Option<CallId>) -> bool {
        call.is_some() && self.sessions.get(sid).is_some_and(|s| s.closing == call)
    }

    /// The confirmed close of `sid` is over (answered, refused or given up): the session goes.
    pub(super) fn finish_close(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.remove(sid) {
            self.drop_session_calls(s, CloseReason::ClosedLocally, sid);
        }
    }
}
