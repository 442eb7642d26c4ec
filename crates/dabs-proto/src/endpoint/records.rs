//! What a session keeps about each message: ours awaiting their answer, theirs being
//! received or answered.

use super::budget::Partial;
use super::session::Peer;
use super::{CallId, SessionId, Time};
use crate::Addr;
use dabs_wire::{Header, Kind, NakCode, RawHeader, SentTime};
use std::collections::HashMap;
use std::time::Duration;

const OPENS_REMEMBERED_PER_PEER: usize = 64;

/// The fields an ACK or NAK copies from the message it answers (queues swapped).
#[derive(Clone, Copy)]
pub(super) struct Answer {
    pub(super) command: u16,
    pub(super) session: u8,
    pub(super) transaction: u8,
    /// The answered message's source queue: where the answer goes.
    pub(super) dst: u16,
    /// The answered message's destination queue.
    pub(super) src: u16,
}

impl Answer {
    pub(super) fn to(h: &Header) -> Self {
        Self { command: h.command, session: h.session, transaction: h.transaction, dst: h.src, src: h.dst }
    }

    pub(super) fn to_raw(h: &RawHeader) -> Self {
        Self { command: h.command, session: h.session, transaction: h.transaction, dst: h.src, src: h.dst }
    }

    pub(super) fn header(self, kind: Kind) -> Header {
        Header {
            session: self.session,
            transaction: self.transaction,
            dst: self.dst,
            src: self.src,
            ..Header::new(kind, self.command)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutState {
    AwaitAck,
    AwaitReply { since: Time },
}

/// A message we originated and must see acknowledged (a request, an open, or a reply).
pub(super) struct Out {
    pub(super) call: Option<CallId>,
    pub(super) to: Addr,
    pub(super) header: Header,
    pub(super) payload: Vec<u8>,
    pub(super) attempts: u32,
    pub(super) timeout: Duration,
    pub(super) deadline: Option<Time>,
    pub(super) state: OutState,
    /// NAK 4 rounds it met (the session is re-opened after `naks_before_reopen`); CRC NAKs
    /// do not count.
    pub(super) naks: u32,
    /// When it was last put on the wire.
    pub(super) last_sent: Time,
    /// NAKs before this time belong to the round already being resent.
    pub(super) nak_quiet_until: Time,
    pub(super) reply: Option<Partial>,
    /// A REPLY whose re-attempts ran out: no longer retransmitted on its timer, but kept to
    /// answer a repeat of its request (which has run and must not run again). Freed by the
    /// ACK, by a new use of its transaction number, when its request has not come again for
    /// `reply_timeout`, or with its session.
    pub(super) parked: bool,
    /// Times it was put on the wire, re-attempts and probes alike (see [`round_order`](super::io::round_order)).
    pub(super) rounds: u32,
    /// Probes in a row the peer let pass without a word (see `Config::silent_probes`).
    pub(super) silent_probes: u32,
    /// The round still going out in groups, if any (see [`Io::put_out`](super::io::Io::put_out)).
    pub(super) pace: Option<Pace>,
}

/// A round of a message being sent in groups.
#[derive(Clone, Copy)]
pub(super) struct Pace {
    pub(super) round: u32,
    /// Place in [`round_order`](super::io::round_order) of the next buffer to send.
    pub(super) next: usize,
    /// When the next group goes.
    pub(super) at: Time,
}

/// Where a request of the peer stands.
pub(super) enum InState {
    Receiving(Partial),
    Delivered { ack_due: Option<Time> },
    Replied,
    Refused(NakCode, String),
    Done,
}

/// A request of the peer, remembered by transaction number to deliver it exactly once.
pub(super) struct InRecord {
    pub(super) sent: SentTime,
    /// When its first datagram arrived here: stamps wrap every hour, so past a session's idle
    /// time-out the stamp alone cannot tell a reuse of the number from a late copy.
    pub(super) at: Time,
    pub(super) command: u16,
    pub(super) crc: bool,
    pub(super) src: u16,
    pub(super) dst: u16,
    pub(super) state: InState,
}

impl InRecord {
    pub(super) fn new(h: &Header, at: Time, state: InState) -> Self {
        Self { sent: h.sent, at, command: h.command, crc: h.crc, src: h.src, dst: h.dst, state }
    }
}

/// A call waiting for its session to be ready or for a free transaction number.
pub(super) struct Pending {
    pub(super) call: CallId,
    pub(super) command: u16,
    pub(super) payload: Vec<u8>,
}

/// The `Opened`/`Reopened` event of an encrypted session, held until it has keys.
pub(super) struct PendingOpen {
    pub(super) call: Option<CallId>,
    pub(super) payload: Vec<u8>,
    pub(super) reopened: bool,
}

/// What an `OPEN_SESSION` of ours is for.
pub(super) enum OpenPurpose {
    New { local_queue: u16 },
    Reopen(SessionId),
}

/// An `OPEN_SESSION` of ours awaiting its REPLY, by transaction number.
pub(super) struct OpenOut {
    pub(super) out: Out,
    pub(super) purpose: OpenPurpose,
    pub(super) encrypt: bool,
    /// The server's static public key, when the client pinned it (implies `encrypt`).
    pub(super) pinned: Option<[u8; 32]>,
}

/// Marks the request a reply answered as done. The reply table and the request table share
/// transaction numbers with other commands (an `OPEN_SESSION` REPLY and the session's first
/// request may both be transaction 1), so the command must match too.
pub(super) fn finish_replied(inc: &mut HashMap<u8, InRecord>, tx: u8, command: u16) {
    if let Some(rec) = inc.get_mut(&tx)
        && rec.command == command
        && matches!(rec.state, InState::Replied)
    {
        rec.state = InState::Done;
    }
}

pub(super) fn remember_open(peer: &mut Peer, tx: u8, sent: SentTime, accepted: Option<SessionId>) {
    if peer.opens_seen.insert(tx, (sent, accepted)).is_none() {
        peer.opens_order.push_back(tx);
    }
    while peer.opens_order.len() > OPENS_REMEMBERED_PER_PEER {
        if let Some(old) = peer.opens_order.pop_front() {
            peer.opens_seen.remove(&old);
        }
    }
}

/// True when stamp `a` is later than stamp `b` (within half an hour, modulo one hour).
pub(super) fn newer(a: SentTime, b: SentTime) -> bool {
    let d = (a.millis_of_hour() + dabs_wire::HOUR_MS - b.millis_of_hour()) % dabs_wire::HOUR_MS;
    d != 0 && d <= dabs_wire::HOUR_MS / 2
}
