//! The public types of the endpoint: identifiers, what it delivers, what it sends, errors.

#[cfg(doc)]
use super::Endpoint;
use crate::Addr;
use dabs_wire::{Header, Latency, NakCode, SentTime};
use std::time::Duration;

/// Identifies one call (a request awaiting its reply) made through [`Endpoint::call`] or
/// [`Endpoint::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

/// Identifies a session for its whole life, also across re-opens that change its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Identifies a delivered request, for [`Endpoint::reply`] and [`Endpoint::reject`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IncomingId {
    /// The session it arrived in.
    pub session: SessionId,
    /// Its transaction number.
    pub transaction: u8,
    /// Its sent-time stamp (tells a new use of the transaction number from an old one).
    pub sent: SentTime,
}

/// A request delivered to the application, exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// Pass to [`Endpoint::reply`] or [`Endpoint::reject`].
    pub id: IncomingId,
    /// Who sent it.
    pub peer: Addr,
    /// The session number on the wire.
    pub session_number: u8,
    /// The command.
    pub command: u16,
    /// Destination queue (the local portion it is for).
    pub dst: u16,
    /// The sender's queue.
    pub src: u16,
    /// The whole message.
    pub payload: Vec<u8>,
    /// One-way latency from its stamp.
    pub latency: Latency,
}

/// An `OPEN_SESSION` request, delivered once per (peer, transaction, stamp).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OpenRequest {
    /// The client's address (where the REPLY goes).
    pub peer: Addr,
    /// The request's transaction (the REPLY carries it).
    pub transaction: u8,
    /// The request's stamp.
    pub sent: SentTime,
    /// The client portion's queue.
    pub src: u16,
    /// Whether the client used a CRC (the session then does).
    pub crc: bool,
}

/// Something the application must know about.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new request in a session.
    Request(Incoming),
    /// A client asks for a session; answer with [`Endpoint::accept_open`] or
    /// [`Endpoint::reject_open`], or leave it to another endpoint of the farm.
    Open {
        /// Identifies the request.
        request: OpenRequest,
        /// Its payload (CBOR with at least `app`).
        payload: Vec<u8>,
        /// One-way latency from its stamp.
        latency: Latency,
        /// It arrived on the farm's group address rather than this endpoint's own.
        via_group: bool,
    },
    /// A session-0 datagram other than `OPEN_SESSION`/`ECHO` (farm traffic): not ACKed, not
    /// deduplicated.
    Sessionless {
        /// Sender.
        peer: Addr,
        /// Its header.
        header: Header,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A session opened by [`Endpoint::open`] is ready.
    Opened {
        /// The open call.
        call: CallId,
        /// The new session.
        session: SessionId,
        /// The server portion's endpoint.
        peer: Addr,
        /// The server portion's queue.
        queue: u16,
        /// The REPLY's payload.
        payload: Vec<u8>,
    },
    /// A session was re-opened after NAKs; it may now be on another endpoint.
    Reopened {
        /// The session.
        session: SessionId,
        /// Where it lives now.
        peer: Addr,
        /// Its queue there.
        queue: u16,
        /// The REPLY's payload.
        payload: Vec<u8>,
    },
    /// A call's reply.
    Reply {
        /// The call.
        call: CallId,
        /// The whole reply.
        payload: Vec<u8>,
        /// One-way latency of the reply from its stamp.
        latency: Latency,
    },
    /// A call that will not be answered.
    Failed {
        /// The call.
        call: CallId,
        /// Why.
        error: CallError,
    },
    /// A session ended.
    SessionClosed {
        /// The session.
        session: SessionId,
        /// Its peer.
        peer: Addr,
        /// Why.
        reason: CloseReason,
    },
    /// A REPLY was not acknowledged after every re-attempt (a system error to report to the
    /// farm). It is kept, no longer retransmitted, to answer a repeat of its request.
    ReplyUndelivered {
        /// The session.
        session: SessionId,
        /// The transaction it answered.
        transaction: u8,
    },
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No traffic for the idle time-out.
    Idle,
    /// The peer sent `CLOSE_SESSION`.
    ClosedByPeer,
    /// Closed locally.
    ClosedLocally,
    /// Lost and could not be re-opened.
    Lost,
    /// Server: the client never acknowledged the open's REPLY (it kept another server's
    /// answer, or it is gone), so it holds no such session.
    Unacknowledged,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No ACK after every re-attempt.
    #[error("gave up after {attempts} transmissions without an acknowledgement")]
    GaveUp {
        /// Transmissions made.
        attempts: u32,
    },
    /// The receiver refused the message.
    #[error("refused with NAK {code}{}", if text.is_empty() { String::new() } else { format!(": {text}") })]
    Nak {
        /// The error number.
        code: NakCode,
        /// The receiver's explanation.
        text: String,
    },
    /// The session was lost while the request was acknowledged but unanswered, or could not
    /// be re-opened. The request may or may not have run.
    #[error("session lost before the reply arrived")]
    SessionLost,
    /// ACKed but no REPLY in time.
    #[error("no reply within {0:?}")]
    ReplyTimeout(Duration),
    /// ACKed, then the peer stopped answering probes (it crashed, or the path to it broke):
    /// the request may or may not have run.
    #[error("the peer acknowledged the request, then answered nothing for {silent_for:?}: outcome unknown")]
    PeerSilent {
        /// How long it has been silent.
        silent_for: Duration,
    },
    /// Larger than the largest message.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The session does not exist (closed or never opened).
    #[error("no such session")]
    UnknownSession,
    /// The request was already answered or is not awaiting an answer.
    #[error("that request is not awaiting a reply")]
    NotAwaitingReply,
    /// The peer's session table is full.
    #[error("no free session number for that peer")]
    SessionsExhausted,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: Addr,
    /// The encoded datagram.
    pub data: Vec<u8>,
}
