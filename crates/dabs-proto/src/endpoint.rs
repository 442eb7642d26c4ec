//! The endpoint state machine.

use crate::crypto::{self, Crypto, ENCRYPTION_OVERHEAD, KEY_EXCHANGE, OpenError, Sealer};
use crate::{Addr, Config, Stats};
use dabs_wire::{
    BUFFER_HEADER_LEN, CRC_LEN, Datagram, HEADER_LEN, Header, Kind, Latency, MAX_DATAGRAM, NakCode,
    NakPayload, RawHeader, Reassembly, SentTime, Splitter, SystemCommand, chunk_size, crc8, decode, encode,
    latency,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::Range;
use std::time::Duration;

/// A point in time: the driver's monotonic clock, as a duration since an epoch it chose.
pub type Time = Duration;

const HOUR_MS: u32 = 3_600_000;
const OPENS_REMEMBERED_PER_PEER: usize = 64;
const NAK_TEXT_MAX: usize = 200;
/// A re-sent multi-buffer message goes out this many datagrams at a time...
const PACE_BURST: usize = 4;
/// ...one group every this long (see [`Io::put_out`]).
const PACE_GAP: Duration = Duration::from_millis(1);

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

/// The fields an ACK or NAK copies from the message it answers (queues swapped).
#[derive(Clone, Copy)]
struct Answer {
    command: u16,
    session: u8,
    transaction: u8,
    /// The answered message's source queue: where the answer goes.
    dst: u16,
    /// The answered message's destination queue.
    src: u16,
}

impl Answer {
    fn to(h: &Header) -> Self {
        Self { command: h.command, session: h.session, transaction: h.transaction, dst: h.src, src: h.dst }
    }

    fn to_raw(h: &RawHeader) -> Self {
        Self { command: h.command, session: h.session, transaction: h.transaction, dst: h.src, src: h.dst }
    }

    fn header(self, kind: Kind) -> Header {
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
enum OutState {
    AwaitAck,
    AwaitReply { since: Time },
}

/// A message we originated and must see acknowledged (a request, an open, or a reply).
struct Out {
    call: Option<CallId>,
    to: Addr,
    header: Header,
    payload: Vec<u8>,
    attempts: u32,
    timeout: Duration,
    deadline: Option<Time>,
    state: OutState,
    /// NAK 4 rounds it met (the session is re-opened after `naks_before_reopen`); CRC NAKs
    /// do not count.
    naks: u32,
    /// When it was last put on the wire.
    last_sent: Time,
    /// NAKs before this time belong to the round already being resent.
    nak_quiet_until: Time,
    reply: Option<Reassembly>,
    /// A REPLY whose re-attempts ran out: no longer retransmitted on its timer, but kept to
    /// answer a repeat of its request (which has run and must not run again). Freed by the
    /// ACK, by a new use of its transaction number, when its request has not come again for
    /// `reply_timeout`, or with its session.
    parked: bool,
    /// Times it was put on the wire, re-attempts and probes alike (see [`round_order`]).
    rounds: u32,
    /// The round still going out in groups, if any (see [`Io::put_out`]).
    pace: Option<Pace>,
}

/// A round of a message being sent in groups.
#[derive(Clone, Copy)]
struct Pace {
    round: u32,
    /// Place in [`round_order`] of the next buffer to send.
    next: usize,
    /// When the next group goes.
    at: Time,
}

enum InState {
    Receiving(Reassembly),
    Delivered { ack_due: Option<Time> },
    Replied,
    Refused(NakCode, String),
    Done,
}

struct InRecord {
    sent: SentTime,
    command: u16,
    crc: bool,
    src: u16,
    dst: u16,
    state: InState,
}

impl InRecord {
    fn new(h: &Header, state: InState) -> Self {
        Self { sent: h.sent, command: h.command, crc: h.crc, src: h.src, dst: h.dst, state }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

struct Pending {
    call: CallId,
    command: u16,
    payload: Vec<u8>,
}

struct Session {
    peer: Addr,
    number: u8,
    role: Role,
    crc: bool,
    remote_queue: u16,
    local_queue: u16,
    last_active: Time,
    next_tx: u8,
    last_request_stamp: Box<[u32; 256]>,
    last_reply_stamp_in: Box<[u32; 256]>,
    last_reply_stamp_out: Box<[u32; 256]>,
    out: HashMap<u8, Out>,
    replies: HashMap<u8, Out>,
    inc: HashMap<u8, InRecord>,
    waiting: VecDeque<Pending>,
    reopen_with: Option<(Addr, Vec<u8>)>,
    reopening: bool,
    crypto: Crypto,
    /// Client: the session (re-)opens encrypted.
    wants_encryption: bool,
    /// Client: the `Opened`/`Reopened` event held back until the key exchange completes.
    pending_open: Option<PendingOpen>,
    /// Client: key exchanges started since the session last had keys.
    key_exchanges: u32,
}

struct PendingOpen {
    call: Option<CallId>,
    payload: Vec<u8>,
    reopened: bool,
}

impl Session {
    fn new(peer: Addr, number: u8, role: Role, crc: bool, remote: u16, local: u16, now: Time) -> Self {
        Self {
            peer,
            number,
            role,
            crc,
            remote_queue: remote,
            local_queue: local,
            last_active: now,
            next_tx: 1,
            last_request_stamp: Box::new([u32::MAX; 256]),
            last_reply_stamp_in: Box::new([u32::MAX; 256]),
            last_reply_stamp_out: Box::new([u32::MAX; 256]),
            out: HashMap::new(),
            replies: HashMap::new(),
            inc: HashMap::new(),
            waiting: VecDeque::new(),
            reopen_with: None,
            reopening: false,
            crypto: Crypto::Plain,
            wants_encryption: false,
            pending_open: None,
            key_exchanges: 0,
        }
    }

    /// Bytes encryption adds to each datagram of this session.
    fn overhead(&self) -> usize {
        if self.crypto.is_plain() && !self.wants_encryption { 0 } else { ENCRYPTION_OVERHEAD }
    }

    /// False while a key exchange is under way: requests wait.
    fn ready(&self) -> bool {
        !matches!(self.crypto, Crypto::Handshake(_)) && self.pending_open.is_none()
    }

    /// A transaction number not in flight and not last used with this very stamp, so that
    /// the receiver can tell the new use from the old one.
    fn alloc_tx(&mut self, stamp: SentTime) -> Option<u8> {
        let ms = stamp.millis_of_hour();
        for _ in 0..255 {
            let t = self.next_tx;
            self.next_tx = if t == 255 { 1 } else { t + 1 };
            if !self.out.contains_key(&t) && self.last_request_stamp[usize::from(t)] != ms {
                self.last_request_stamp[usize::from(t)] = ms;
                return Some(t);
            }
        }
        None
    }
}

enum OpenPurpose {
    New { local_queue: u16 },
    Reopen(SessionId),
}

struct OpenOut {
    out: Out,
    purpose: OpenPurpose,
    encrypt: bool,
}

#[derive(Default)]
struct Peer {
    sessions: HashMap<u8, SessionId>,
    next_number: u8,
    partials: usize,
    opens_seen: HashMap<u8, (SentTime, Option<SessionId>)>,
    opens_order: VecDeque<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
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

/// Output side shared by every handler: queues, timers, counters, randomness.
struct Io {
    config: Config,
    rng: SmallRng,
    wall_epoch_ms: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    timers: BinaryHeap<Reverse<(Time, TimerKey)>>,
    stats: Stats,
}

impl Io {
    fn stamp(&self, now: Time) -> SentTime {
        SentTime::from_unix_millis(self.wall_ms(now))
    }

    fn wall_ms(&self, now: Time) -> u64 {
        self.wall_epoch_ms + now.as_millis() as u64
    }

    fn latency(&mut self, sent: SentTime, now: Time) -> Latency {
        let l = latency(sent, self.wall_ms(now));
        if l.clock_skew {
            self.stats.clock_skew += 1;
        } else {
            self.stats.latency_sum_ms += u64::from(l.millis);
            self.stats.latency_count += 1;
        }
        l
    }

    fn schedule(&mut self, at: Time, key: TimerKey) {
        self.timers.push(Reverse((at, key)));
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let j = self.config.jitter.clamp(0.0, 0.9);
        let f = if j > 0.0 { self.rng.random_range(1.0 - j..=1.0 + j) } else { 1.0 };
        base.mul_f64(f)
    }

    /// Sends every buffer of a message, each encrypted on its own when `seal` is given (and
    /// the command is not one that sets sessions up).
    fn send_message(&mut self, to: &Addr, header: &Header, payload: &[u8], seal: Option<&mut Sealer>) {
        self.send_round(to, header, payload, seal, 0, 0..usize::MAX);
    }

    /// Sends the buffers at `places` of [`round_order`] for the `round`th transmission (from
    /// 0) of a message, as [`Io::send_message`]. Returns how many buffers the message has.
    fn send_round(
        &mut self,
        to: &Addr,
        header: &Header,
        payload: &[u8],
        seal: Option<&mut Sealer>,
        round: u32,
        places: Range<usize>,
    ) -> usize {
        let mut seal = seal.filter(|_| !crypto::exempt(header.command));
        let overhead = if seal.is_some() { ENCRYPTION_OVERHEAD } else { 0 };
        let Ok(split) = Splitter::new(payload, header.crc, overhead) else {
            return 0; // sizes are checked before a message is accepted for sending
        };
        let total = split.total();
        let header = Header { encrypted: seal.is_some(), ..*header };
        let mut body = Vec::new();
        for index in round_order(total, round).skip(places.start).take(places.len()) {
            let Some((buffer, part)) = split.buffer(index) else {
                continue;
            };
            let mut data = vec![0u8; MAX_DATAGRAM];
            let n = match seal.as_deref_mut() {
                None => encode(&header, buffer, part, &mut data),
                Some(sealer) => {
                    body.clear();
                    body.resize(part.len() + ENCRYPTION_OVERHEAD, 0);
                    let Ok(n) = encode(&header, buffer, &body, &mut data) else {
                        continue;
                    };
                    let headers = HEADER_LEN + if buffer.is_some() { BUFFER_HEADER_LEN } else { 0 };
                    let end = if header.crc { n - CRC_LEN } else { n };
                    let (ad, rest) = data.split_at_mut(headers);
                    if !sealer.seal(ad, &mut rest[..end - headers], part) {
                        continue;
                    }
                    if header.crc {
                        data[end] = crc8(&data[..end]);
                    }
                    Ok(n)
                }
            };
            if let Ok(n) = n {
                data.truncate(n);
                self.stats.datagrams_out += 1;
                self.transmits.push_back(Transmit { to: to.clone(), data });
            }
        }
        total
    }

    /// Puts a message on the wire once more, and returns when its last datagram goes. The
    /// first transmission goes out at once. A re-sent one (the path has lost something) of
    /// more than [`PACE_BURST`] buffers goes out that many at a time, [`PACE_GAP`] apart, the
    /// rest on the `pace` timer: a burst is what a loss at a full queue or a link outage takes
    /// most of, and sent back to back a large message could lose some buffer in every round.
    /// Each group is sealed when it goes, so nonces keep the order of the wire.
    fn put_out(
        &mut self,
        now: Time,
        out: &mut Out,
        seal: Option<&mut Sealer>,
        pace: Option<TimerKey>,
    ) -> Time {
        let round = out.rounds;
        out.rounds = round.wrapping_add(1);
        out.pace = None;
        let pace = pace.filter(|_| round > 0 && !out.to.is_reliable_link());
        let places = if pace.is_some() { 0..PACE_BURST } else { 0..usize::MAX };
        let total = self.send_round(&out.to, &out.header, &out.payload, seal, round, places);
        let mut end = now;
        if let Some(key) = pace
            && total > PACE_BURST
        {
            let at = now + PACE_GAP;
            out.pace = Some(Pace { round, next: PACE_BURST, at });
            self.schedule(at, key);
            let groups = u32::try_from(total.div_ceil(PACE_BURST)).unwrap_or(u32::MAX);
            end = now + PACE_GAP * (groups - 1);
        }
        out.last_sent = end;
        end
    }

    /// Sends the next group of the round being paced.
    fn pace_next(&mut self, now: Time, out: &mut Out, key: TimerKey, seal: Option<&mut Sealer>) {
        let Some(p) = out.pace.take() else {
            return;
        };
        let places = p.next..p.next + PACE_BURST;
        let total = self.send_round(&out.to, &out.header, &out.payload, seal, p.round, places);
        let next = p.next + PACE_BURST;
        if next < total {
            let at = now + PACE_GAP;
            out.pace = Some(Pace { next, at, ..p });
            self.schedule(at, key);
        }
    }

    /// (Re)transmits an outgoing message and arms its ACK timer.
    fn transmit_out(&mut self, now: Time, out: &mut Out, key: TimerKey, seal: Option<&mut Sealer>) {
        if out.attempts > 0 {
            self.stats.retransmits += 1;
        }
        out.attempts += 1;
        let sent = self.put_out(now, out, seal, pace_key(key));
        if out.to.is_reliable_link() {
            if out.call.is_some() {
                out.state = OutState::AwaitReply { since: now };
                let at = now + self.config.reply_timeout;
                out.deadline = Some(at);
                self.schedule(at, key);
            } else {
                out.deadline = None;
            }
            return;
        }
        let wait = self.jittered(out.timeout);
        out.timeout = out.timeout.mul_f64(self.config.backoff.max(1.0)).min(self.config.ack_timeout_max);
        // Counted from the last group: a round still going out cannot have been ACKed yet.
        let at = sent + wait;
        out.deadline = Some(at);
        self.schedule(at, key);
    }

    /// The request was received (its ACK, or part of its REPLY, came): its re-attempts are
    /// over; it is probed slowly until the REPLY is complete or `reply_timeout` passes.
    fn await_reply(&mut self, now: Time, out: &mut Out, key: TimerKey) {
        out.state = OutState::AwaitReply { since: now };
        out.pace = None; // the receiver has it all
        // Keep probing, slowly, in case the REPLY is lost or the ACK was stale.
        let at = now + self.config.ack_timeout_max;
        out.deadline = Some(at);
        self.schedule(at, key);
    }

    /// Sends a message again without touching its re-attempt count or timer (`key`).
    fn resend(&mut self, now: Time, out: &mut Out, key: TimerKey, seal: Option<&mut Sealer>) {
        self.stats.retransmits += 1;
        self.put_out(now, out, seal, pace_key(key));
    }

    /// Sends an ACK answering `answer`, echoing the acknowledged stamp.
    fn ack(&mut self, to: &Addr, answer: Answer, sent: SentTime, seal: Option<&mut Sealer>) {
        let header = Header { sent, crc: self.config.crc, ..answer.header(Kind::Ack) };
        self.send_message(to, &header, &[], seal);
    }

    /// Sends a NAK answering `answer` with an error number and (truncated) text.
    fn nak(
        &mut self,
        now: Time,
        to: &Addr,
        answer: Answer,
        code: NakCode,
        text: &str,
        seal: Option<&mut Sealer>,
    ) {
        self.stats.nak_sent(code.number());
        let mut end = text.len().min(NAK_TEXT_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        NakPayload { code, text: &text[..end] }.write_to(&mut payload);
        let header = Header { sent: self.stamp(now), crc: self.config.crc, ..answer.header(Kind::Nak) };
        self.send_message(to, &header, &payload, seal);
    }

    fn fail(&mut self, call: Option<CallId>, error: CallError) {
        if let Some(call) = call {
            self.stats.calls_failed += 1;
            self.events.push_back(Event::Failed { call, error });
        }
    }

    fn new_out(&self, call: Option<CallId>, to: Addr, header: Header, payload: Vec<u8>) -> Out {
        Out {
            call,
            to,
            header,
            payload,
            attempts: 0,
            timeout: self.config.ack_timeout,
            deadline: None,
            state: OutState::AwaitAck,
            naks: 0,
            last_sent: Duration::ZERO,
            nak_quiet_until: Duration::ZERO,
            reply: None,
            parked: false,
            rounds: 0,
            pace: None,
        }
    }
}

/// The timer that sends the next group of a paced round of the message timed by `key`.
fn pace_key(key: TimerKey) -> Option<TimerKey> {
    match key {
        TimerKey::Out(sid, tx) => Some(TimerKey::PaceOut(sid, tx)),
        TimerKey::Reply(sid, tx) => Some(TimerKey::PaceReply(sid, tx)),
        _ => None, // OPEN_SESSION fits one datagram
    }
}

/// The order in which the `round`th transmission (from 0) of a message of `total` buffers
/// sends them. The first goes in order; each later one starts at another buffer, spread by
/// the golden ratio. Loss often depends on a datagram's place in a burst (a link outage takes
/// everything still in flight, so the first buffers most often; a full queue drops the tail):
/// sent in one fixed order, the same buffers were lost in every round, and since the receiver
/// keeps what it has, the message never completed. The last buffer stays last, because a
/// receiver answers a repeated message once per round, on its last buffer.
fn round_order(total: usize, round: u32) -> impl Iterator<Item = usize> {
    let rotated = total.saturating_sub(1);
    // round · φ modulo 1, as a 32-bit fraction, scaled to 0..rotated.
    let fraction = u64::from(round.wrapping_mul(0x9E37_79B9));
    let start = usize::try_from((fraction * rotated as u64) >> 32).unwrap_or(0);
    (start..rotated).chain(0..start).chain(rotated..total)
}

/// True when stamp `a` is later than stamp `b` (within half an hour, modulo one hour).
fn newer(a: SentTime, b: SentTime) -> bool {
    let d = (a.millis_of_hour() + HOUR_MS - b.millis_of_hour()) % HOUR_MS;
    d != 0 && d <= HOUR_MS / 2
}

/// A sans-IO MP endpoint. See the crate documentation.
pub struct Endpoint {
    io: Io,
    peers: HashMap<Addr, Peer>,
    sessions: HashMap<SessionId, Session>,
    opens: HashMap<u8, OpenOut>,
    next_open_tx: u8,
    next_id: u64,
    sweep_armed: bool,
    from_group: bool,
}

impl Endpoint {
    /// A new endpoint. `seed` drives the jitter of its time-outs (fixed seed: replayable runs);
    /// `wall_epoch_ms` is the Unix time in ms at `Time::ZERO`, for sent-time stamps.
    pub fn new(config: Config, seed: u64, wall_epoch_ms: u64) -> Self {
        Self {
            io: Io {
                config,
                rng: SmallRng::seed_from_u64(seed),
                wall_epoch_ms,
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                timers: BinaryHeap::new(),
                stats: Stats::default(),
            },
            peers: HashMap::new(),
            sessions: HashMap::new(),
            opens: HashMap::new(),
            next_open_tx: 1,
            next_id: 1,
            sweep_armed: false,
            from_group: false,
        }
    }

    /// The endpoint's configuration.
    pub fn config(&self) -> &Config {
        &self.io.config
    }

    /// Counters since creation.
    pub fn stats(&self) -> &Stats {
        &self.io.stats
    }

    /// Sessions currently open (either side).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The peer address and session number of a session.
    pub fn session_info(&self, session: SessionId) -> Option<(Addr, u8, u16)> {
        self.sessions.get(&session).map(|s| (s.peer.clone(), s.number, s.remote_queue))
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.transmits.pop_front()
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must next be called, if ever.
    pub fn next_deadline(&mut self) -> Option<Time> {
        while let Some(Reverse((at, key))) = self.io.timers.peek().copied() {
            if self.timer_live(at, key) {
                return Some(at);
            }
            self.io.timers.pop();
        }
        None
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn arm_sweep(&mut self, now: Time) {
        if !self.sweep_armed {
            self.sweep_armed = true;
            let every = (self.io.config.idle_timeout / 4).max(Duration::from_millis(100));
            self.io.schedule(now + every, TimerKey::Sweep);
        }
    }

    // ---------------------------------------------------------------- client side

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
        self.start_open(now, to, purpose, Some(call), payload, local_queue, encrypt).map(|_| call)
    }

    /// Whether a session's datagrams are encrypted (its key exchange has completed).
    pub fn session_encrypted(&self, session: SessionId) -> bool {
        self.sessions.get(&session).is_some_and(|s| matches!(s.crypto, Crypto::Keys(_)))
    }

    #[allow(clippy::too_many_arguments)]
    fn start_open(
        &mut self,
        now: Time,
        to: Addr,
        purpose: OpenPurpose,
        call: Option<CallId>,
        payload: Vec<u8>,
        local_queue: u16,
        encrypt: bool,
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
        self.opens.insert(tx, OpenOut { out, purpose, encrypt });
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
        let Some(s) = self.sessions.get(&session) else {
            return Err(CallError::UnknownSession);
        };
        self.check_size(payload.len(), s.overhead())?;
        let call = CallId(self.next_id());
        let s = self.sessions.get_mut(&session).expect("checked above");
        s.waiting.push_back(Pending { call, command, payload });
        self.start_waiting(now, session);
        Ok(call)
    }

    fn check_size(&self, len: usize, overhead: usize) -> Result<(), CallError> {
        let max = self.io.config.max_message.min(chunk_size(true, overhead) * dabs_wire::MAX_BUFFERS);
        if len > max { Err(CallError::TooLarge { len, max }) } else { Ok(()) }
    }

    fn start_waiting(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
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
                session: s.number,
                transaction: tx,
                sent: stamp,
                crc: s.crc,
                dst: s.remote_queue,
                src: s.local_queue,
                ..Header::new(Kind::Request, p.command)
            };
            let mut out = self.io.new_out(Some(p.call), s.peer.clone(), header, p.payload);
            self.io.transmit_out(now, &mut out, TimerKey::Out(sid, tx), s.crypto.sealer());
            s.out.insert(tx, out);
            s.last_active = now;
        }
    }

    /// Closes a session: sends `CLOSE_SESSION` (best effort) and fails its calls.
    pub fn close(&mut self, now: Time, session: SessionId) {
        let Some(mut s) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(p) = self.peers.get_mut(&s.peer) {
            p.sessions.remove(&s.number);
        }
        let header = Header {
            session: s.number,
            transaction: s.alloc_tx(self.io.stamp(now)).unwrap_or(1),
            sent: self.io.stamp(now),
            crc: s.crc,
            dst: s.remote_queue,
            src: s.local_queue,
            ..Header::new(Kind::Request, SystemCommand::CloseSession.number())
        };
        self.io.send_message(&s.peer, &header, &[], s.crypto.sealer());
        self.drop_session_calls(s, CloseReason::ClosedLocally, session);
    }

    fn drop_session_calls(&mut self, s: Session, reason: CloseReason, sid: SessionId) {
        for out in s.out.into_values() {
            self.io.fail(out.call, CallError::SessionLost);
        }
        for p in s.waiting {
            self.io.fail(Some(p.call), CallError::SessionLost);
        }
        if let Some(p) = s.pending_open {
            self.io.fail(p.call, CallError::SessionLost);
        }
        if let Some(peer) = self.peers.get_mut(&s.peer) {
            let partials = s.inc.values().filter(|r| matches!(r.state, InState::Receiving(_))).count();
            peer.partials = peer.partials.saturating_sub(partials);
        }
        self.io.events.push_back(Event::SessionClosed { session: sid, peer: s.peer, reason });
    }

    // ---------------------------------------------------------------- server side

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
        let max_peers = self.io.config.max_peers;
        if !self.peers.contains_key(&request.peer) && self.peers.len() >= max_peers {
            return Err(CallError::SessionsExhausted);
        }
        let peer = self.peers.entry(request.peer.clone()).or_default();
        if let Some((sent, Some(sid))) = peer.opens_seen.get(&request.transaction)
            && *sent == request.sent
            && self.sessions.contains_key(sid)
        {
            return Ok(*sid);
        }
        let mut number = None;
        for _ in 0..255 {
            peer.next_number = if peer.next_number == 255 { 1 } else { peer.next_number + 1 };
            if !peer.sessions.contains_key(&peer.next_number) {
                number = Some(peer.next_number);
                break;
            }
        }
        let Some(number) = number else {
            return Err(CallError::SessionsExhausted);
        };
        let sid = SessionId(self.next_id);
        self.next_id += 1;
        peer.sessions.insert(number, sid);
        remember_open(peer, request.transaction, request.sent, Some(sid));
        let mut s = Session::new(
            request.peer.clone(),
            number,
            Role::Server,
            request.crc,
            request.src,
            local_queue,
            now,
        );
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
        self.sessions.insert(sid, s);
        self.io.stats.sessions_opened += 1;
        self.arm_sweep(now);
        Ok(sid)
    }

    /// Lets a repeat of an `OPEN_SESSION` this endpoint chose not to answer be delivered
    /// again (a farm node that is not deciding yet must hear the client's retransmission once
    /// the farm has a decider). Opens already accepted are kept.
    pub fn forget_open(&mut self, request: &OpenRequest) {
        if let Some(peer) = self.peers.get_mut(&request.peer)
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
        let overhead = self.sessions.get(&id.session).map_or(0, Session::overhead);
        self.check_size(payload.len(), overhead)?;
        let s = self.sessions.get_mut(&id.session).ok_or(CallError::UnknownSession)?;
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
            session: s.number,
            transaction: id.transaction,
            sent: stamp,
            crc: rec.crc,
            dst: rec.src,
            src: rec.dst,
            ..Header::new(Kind::Reply, rec.command)
        };
        let mut out = self.io.new_out(None, s.peer.clone(), header, payload);
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
        let s = self.sessions.get_mut(&id.session).ok_or(CallError::UnknownSession)?;
        let rec = s.inc.get_mut(&id.transaction).ok_or(CallError::NotAwaitingReply)?;
        if rec.sent != id.sent || !matches!(rec.state, InState::Delivered { .. }) {
            return Err(CallError::NotAwaitingReply);
        }
        let answer = Answer {
            command: rec.command,
            session: s.number,
            transaction: id.transaction,
            dst: rec.src,
            src: rec.dst,
        };
        self.io.nak(now, &s.peer, answer, code, text, s.crypto.sealer());
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

    // ---------------------------------------------------------------- input

    /// Handles one datagram received on the farm's group address (multicast).
    pub fn handle_group_datagram(&mut self, now: Time, from: Addr, bytes: &[u8]) {
        self.from_group = true;
        self.handle_datagram(now, from, bytes);
        self.from_group = false;
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Time, from: Addr, bytes: &[u8]) {
        self.io.stats.datagrams_in += 1;
        let d = match decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                self.io.stats.decode_errors += 1;
                // Answer only requests and replies: NAKing an ACK or a NAK could loop.
                if let Some(raw) = RawHeader::peek(bytes)
                    && matches!(raw.kind, Kind::Request | Kind::Reply)
                {
                    let text = e.to_string();
                    let crc = matches!(e, dabs_wire::DecodeError::CrcMismatch { .. });
                    let seal = sealer_of(&self.peers, &mut self.sessions, &from, raw.session);
                    if seal.is_some() && !crc && !crypto::exempt(raw.command) {
                        // In a keyed session a header that does not even decode cannot be
                        // authentic: dropped like any forgery. Only a CRC mismatch (noise on
                        // the line, which the spec answers with NAK 2) is still NAKed.
                        self.io.stats.auth_failures += 1;
                        return;
                    }
                    self.io.nak(now, &from, Answer::to_raw(&raw), e.nak_code(), &text, seal);
                }
                return;
            }
        };
        let mut plain = Vec::new();
        let Some(d) = self.admit(now, &from, bytes, d, &mut plain) else {
            return;
        };
        if d.header.session != 0
            && !d.header.crc
            && let Some(sid) = self.session_of(&from, d.header.session)
            && self.sessions[&sid].crc
        {
            // The session uses CRCs: a datagram without one had its CRC flag flipped in
            // transit, the one single-byte corruption CRC-8 cannot see by itself.
            self.io.stats.decode_errors += 1;
            if matches!(d.header.kind, Kind::Request | Kind::Reply) {
                self.nak_datagram(now, &from, &d, NakCode::CrcMismatch, "session requires a CRC");
            }
            return;
        }
        match d.header.kind {
            Kind::Request if d.header.session == 0 => self.on_sessionless_request(now, from, &d),
            Kind::Request => self.on_request(now, from, &d),
            Kind::Reply => self.on_reply(now, from, &d),
            Kind::Ack => self.on_ack(now, from, &d),
            Kind::Nak => self.on_nak(now, from, &d),
        }
    }

    /// Applies the session's encryption to a decoded datagram: the plaintext datagram, or
    /// `None` when it must be dropped (counted, never answered).
    fn admit<'a>(
        &mut self,
        now: Time,
        from: &Addr,
        bytes: &[u8],
        d: Datagram<'a>,
        plain: &'a mut Vec<u8>,
    ) -> Option<Datagram<'a>> {
        let h = d.header;
        let sid = if h.session == 0 { None } else { self.session_of(from, h.session) };
        let session = sid.and_then(|sid| self.sessions.get_mut(&sid));
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
                match keys.open.open(&bytes[..headers], d.payload) {
                    Ok(p) => {
                        confirmed_now = !keys.confirmed;
                        keys.confirmed = true;
                        *plain = p;
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
        if confirmed_now && let Some(s) = sid.and_then(|sid| self.sessions.get_mut(&sid)) {
            // The peer holds the keys, so the exchange is over: forget its request and REPLY.
            // Their clear headers were never authenticated (a stamp damaged in transit must
            // not shadow a later request that reuses the transaction number).
            s.inc.retain(|_, r| r.command != KEY_EXCHANGE);
            s.replies.retain(|_, o| o.header.command != KEY_EXCHANGE);
        }
        admitted
    }

    fn nak_datagram(&mut self, now: Time, to: &Addr, d: &Datagram<'_>, code: NakCode, text: &str) {
        let h = &d.header;
        let seal = sealer_of(&self.peers, &mut self.sessions, to, h.session);
        self.io.nak(now, to, Answer::to(h), code, text, seal);
    }

    fn on_sessionless_request(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
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

    fn on_open(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        if d.buffer.is_some() {
            return self.nak_datagram(now, &from, d, NakCode::TooLarge, "OPEN_SESSION must fit one datagram");
        }
        if !self.peers.contains_key(&from) && self.peers.len() >= self.io.config.max_peers {
            return self.nak_datagram(now, &from, d, NakCode::SessionsExhausted, "too many peers");
        }
        let peer = self.peers.entry(from.clone()).or_default();
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
    fn resend_reply(&mut self, now: Time, sid: SessionId, tx: u8) {
        let Some(s) = self.sessions.get_mut(&sid) else {
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

    fn session_of(&self, from: &Addr, number: u8) -> Option<SessionId> {
        self.peers.get(from)?.sessions.get(&number).copied()
    }

    fn on_request(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let Some(sid) = self.session_of(&from, h.session) else {
            let text = format!("session {} is not open", h.session);
            return self.nak_datagram(now, &from, d, NakCode::UnknownSession, &text);
        };
        let s = self.sessions.get_mut(&sid).expect("peer table and sessions agree");
        s.last_active = now;
        let reliable = from.is_reliable_link();
        if let Some(rec) = s.inc.get_mut(&h.transaction) {
            if rec.sent == h.sent && rec.command == h.command {
                match &mut rec.state {
                    InState::Receiving(r) => match r.add(d) {
                        Ok(dabs_wire::Progress::Complete) => {
                            let InState::Receiving(r) = std::mem::replace(&mut rec.state, InState::Done)
                            else {
                                unreachable!()
                            };
                            if let Some(p) = self.peers.get_mut(&from) {
                                p.partials = p.partials.saturating_sub(1);
                            }
                            let msg = r.finish().unwrap_or_default();
                            return self.deliver(now, sid, h, msg);
                        }
                        Ok(dabs_wire::Progress::Duplicate) => self.io.stats.duplicates += 1,
                        Ok(dabs_wire::Progress::Incomplete) => {}
                        Err(e) => {
                            s.inc.remove(&h.transaction);
                            if let Some(p) = self.peers.get_mut(&from) {
                                p.partials = p.partials.saturating_sub(1);
                            }
                            let text = e.to_string();
                            return self.nak_datagram(now, &from, d, NakCode::Malformed, &text);
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
                        let (code, text) = (*code, text.clone());
                        self.nak_datagram(now, &from, d, code, &text);
                    }
                }
                return;
            }
            if !newer(h.sent, rec.sent) {
                // A late copy of an earlier use of this transaction number: already handled.
                self.io.stats.duplicates += 1;
                return;
            }
            let old = s.inc.remove(&h.transaction).expect("present");
            s.replies.remove(&h.transaction);
            if matches!(old.state, InState::Receiving(_))
                && let Some(p) = self.peers.get_mut(&from)
            {
                p.partials = p.partials.saturating_sub(1);
            }
        }
        let s = self.sessions.get_mut(&sid).expect("present");
        if d.buffer.is_none() {
            return self.deliver(now, sid, h, d.payload.to_vec());
        }
        let peer = self.peers.get_mut(&from).expect("session has a peer");
        if peer.partials >= self.io.config.max_partial_per_peer {
            return self.nak_datagram(
                now,
                &from,
                d,
                NakCode::TooLarge,
                "too many partial messages from this peer",
            );
        }
        let chunk = chunk_size(h.crc, if h.encrypted { ENCRYPTION_OVERHEAD } else { 0 });
        let mut r = match Reassembly::new(d, chunk, self.io.config.max_message) {
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
        if let Err(e) = r.add(d) {
            let text = e.to_string();
            return self.nak_datagram(now, &from, d, NakCode::Malformed, &text);
        }
        peer.partials += 1;
        s.inc.insert(h.transaction, InRecord::new(&h, InState::Receiving(r)));
    }

    fn deliver(&mut self, now: Time, sid: SessionId, h: Header, payload: Vec<u8>) {
        let latency = self.io.latency(h.sent, now);
        self.io.stats.requests_delivered += 1;
        let s = self.sessions.get_mut(&sid).expect("present");
        let reliable = s.peer.is_reliable_link();
        let ack_due = (!reliable).then(|| now + self.io.config.ack_delay);
        s.inc.insert(h.transaction, InRecord::new(&h, InState::Delivered { ack_due }));
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
            let s = self.sessions.remove(&sid).expect("present");
            if let Some(p) = self.peers.get_mut(&s.peer) {
                p.sessions.remove(&s.number);
            }
            return self.drop_session_calls(s, CloseReason::ClosedByPeer, sid);
        }
        if let Some(at) = ack_due {
            self.io.schedule(at, TimerKey::Ack(sid, h.transaction));
        }
        let peer = s.peer.clone();
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

    /// Server: answers Noise message 1 with message 2 (in clear) and keys the session.
    fn on_key_exchange(&mut self, now: Time, sid: SessionId, id: IncomingId, msg1: &[u8]) {
        let accept = self.io.config.accept_encryption;
        let s = self.sessions.get_mut(&sid).expect("present");
        let result = if !accept {
            Err("this endpoint does not offer encryption".to_owned())
        } else if s.role != Role::Server || s.crypto.is_confirmed() {
            Err("the session is already keyed".to_owned())
        } else {
            let prologue = crypto::prologue(s.number, s.remote_queue, s.local_queue);
            crypto::respond(&prologue, msg1).map_err(|e| format!("key exchange: {e}"))
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
                let s = self.sessions.get_mut(&sid).expect("present");
                s.crypto = Crypto::Keys(Box::new(keys));
            }
            Err(text) => {
                if accept {
                    self.io.stats.auth_failures += 1;
                }
                let _ = self.reject(now, id, NakCode::AuthenticationFailed, &text);
            }
        }
    }

    fn on_ack(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let Some(sid) = self.session_of(&from, h.session) else {
            return;
        };
        let s = self.sessions.get_mut(&sid).expect("present");
        s.last_active = now;
        // An ACK echoing a stamp older than our reply's answers an earlier reply to this
        // transaction number (a late or duplicated copy), not this one.
        let reply_match = s
            .replies
            .get(&h.transaction)
            .is_some_and(|o| o.header.command == h.command && !newer(o.header.sent, h.sent));
        let req_match = s
            .out
            .get(&h.transaction)
            .is_some_and(|o| o.header.command == h.command && o.state == OutState::AwaitAck);
        // Both sides may have a message with this transaction outstanding; our ACKs echo the
        // acknowledged stamp, which settles it. Otherwise the reply is the likelier one.
        let to_request = match (reply_match, req_match) {
            (_, false) => false,
            (false, true) => true,
            (true, true) => s.out[&h.transaction].header.sent == h.sent,
        };
        if to_request {
            let out = s.out.get_mut(&h.transaction).expect("matched");
            self.io.await_reply(now, out, TimerKey::Out(sid, h.transaction));
        } else if reply_match && let Some(reply) = s.replies.remove(&h.transaction) {
            finish_replied(&mut s.inc, h.transaction, reply.header.command);
        }
    }

    fn on_reply(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let reliable = from.is_reliable_link();
        if h.command == SystemCommand::OpenSession.number()
            && self.opens.contains_key(&h.transaction)
            && h.session != 0
        {
            return self.on_open_reply(now, from, d);
        }
        let Some(sid) = self.session_of(&from, h.session) else {
            if h.command == SystemCommand::OpenSession.number() && h.session != 0 && !reliable {
                // Another endpoint answered first, or our ACK was lost: stop its retransmits.
                self.io.stats.extra_open_replies += 1;
                self.io.ack(&from, Answer::to(&h), h.sent, None);
            }
            return;
        };
        let s = self.sessions.get_mut(&sid).expect("present");
        s.last_active = now;
        let last = s.last_reply_stamp_in[usize::from(h.transaction)];
        let stale = last != u32::MAX && !newer(h.sent, SentTime::from_millis_of_hour(last));
        let live = s.out.get(&h.transaction).is_some_and(|o| o.header.command == h.command);
        if stale || !live {
            // A copy of a reply we already took: ACK it again so the sender stops.
            self.io.stats.duplicates += 1;
            if !reliable {
                self.io.ack(&from, Answer::to(&h), h.sent, s.crypto.sealer());
            }
            return;
        }
        let out = s.out.get_mut(&h.transaction).expect("live");
        let overhead = if h.encrypted { ENCRYPTION_OVERHEAD } else { 0 };
        let message = if d.buffer.is_some() {
            if out.reply.as_ref().is_some_and(|r| r.header().sent != h.sent) {
                out.reply = None; // a newer reply replaces a partial older one
            }
            if out.reply.is_none() {
                match Reassembly::new(d, chunk_size(h.crc, overhead), self.io.config.max_message) {
                    Ok(r) => out.reply = Some(r),
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
            let r = out.reply.as_mut().expect("just set");
            match r.add(d) {
                Ok(dabs_wire::Progress::Complete) => {
                    out.reply.take().and_then(|r| r.finish().ok()).unwrap_or_default()
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
                    let text = e.to_string();
                    return self.nak_datagram(now, &from, d, NakCode::Malformed, &text);
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
        let out = s.out.remove(&h.transaction).expect("live");
        if !key_exchange {
            // (The exchange's REPLY is not authenticated: its stamp must not shadow a later
            // reply to this transaction number.)
            s.last_reply_stamp_in[usize::from(h.transaction)] = h.sent.millis_of_hour();
        }
        if !reliable {
            self.io.ack(&from, Answer::to(&h), h.sent, s.crypto.sealer());
        }
        let latency = self.io.latency(h.sent, now);
        if key_exchange {
            return self.key_exchange_done(now, sid);
        }
        if let Some(call) = out.call {
            self.io.stats.calls_answered += 1;
            self.io.events.push_back(Event::Reply { call, payload: message, latency });
        }
        self.start_waiting(now, sid);
    }

    /// Client: starts the Noise handshake in a session just (re-)opened. Requests wait until
    /// it completes.
    fn start_key_exchange(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let prologue = crypto::prologue(s.number, s.local_queue, s.remote_queue);
        let (hs, msg1) = match crypto::initiate(&prologue) {
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
            session: s.number,
            transaction: tx,
            sent: stamp,
            crc: s.crc,
            dst: s.remote_queue,
            src: s.local_queue,
            ..Header::new(Kind::Request, KEY_EXCHANGE)
        };
        let mut out = self.io.new_out(None, s.peer.clone(), header, msg1);
        self.io.transmit_out(now, &mut out, TimerKey::Out(sid, tx), None);
        s.out.insert(tx, out);
        s.last_active = now;
    }

    /// Client: the session has its keys. Sends what waited and tells the application.
    fn key_exchange_done(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.key_exchanges = 0;
        let Some(pending) = s.pending_open.take() else {
            return self.start_waiting(now, sid);
        };
        let (peer, queue) = (s.peer.clone(), s.remote_queue);
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
    fn key_exchange_failed(&mut self, now: Time, sid: SessionId, error: CallError) {
        let call = self.sessions.get_mut(&sid).and_then(|s| s.pending_open.take()).and_then(|p| p.call);
        self.close(now, sid);
        self.io.fail(call, error);
    }

    /// A message of ours will not be answered: fails its call, or the key exchange it was.
    fn out_failed(&mut self, now: Time, sid: SessionId, out: Out, error: CallError) {
        if out.header.command == KEY_EXCHANGE && out.call.is_none() {
            return self.key_exchange_failed(now, sid, error);
        }
        self.io.fail(out.call, error);
        self.start_waiting(now, sid);
    }

    fn on_open_reply(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let reliable = from.is_reliable_link();
        let open = self.opens.get_mut(&h.transaction).expect("checked by caller");
        let payload = if d.buffer.is_some() {
            if open.out.reply.is_none() {
                match Reassembly::new(d, chunk_size(h.crc, 0), self.io.config.max_message) {
                    Ok(r) => open.out.reply = Some(r),
                    Err(_) => return,
                }
            }
            match open.out.reply.as_mut().expect("set").add(d) {
                Ok(dabs_wire::Progress::Complete) => {
                    open.out.reply.take().and_then(|r| r.finish().ok()).unwrap_or_default()
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
        let open = self.opens.remove(&h.transaction).expect("present");
        if !reliable {
            self.io.ack(&from, Answer::to(&h), h.sent, None);
        }
        self.io.latency(h.sent, now);
        let peer = self.peers.entry(from.clone()).or_default();
        let reopening = match open.purpose {
            OpenPurpose::Reopen(sid) => Some(sid),
            OpenPurpose::New { .. } => None,
        };
        if let Some(old) = peer.sessions.get(&h.session).copied()
            && Some(old) != reopening
        {
            // The server reused a number we still hold: the old session is gone there.
            if let Some(s) = self.sessions.remove(&old) {
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
                self.peers.entry(from.clone()).or_default().sessions.insert(h.session, sid);
                self.io.stats.sessions_opened += 1;
                if open.encrypt {
                    s.pending_open = Some(PendingOpen { call: open.out.call, payload, reopened: false });
                    self.sessions.insert(sid, s);
                    return self.start_key_exchange(now, sid);
                }
                self.sessions.insert(sid, s);
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
                let Some(s) = self.sessions.get_mut(&sid) else {
                    return;
                };
                if let Some(p) = self.peers.get_mut(&s.peer) {
                    p.sessions.remove(&s.number);
                }
                s.peer = from.clone();
                s.number = h.session;
                s.remote_queue = h.src;
                s.reopening = false;
                s.last_reply_stamp_in.fill(u32::MAX);
                s.last_active = now;
                self.peers.entry(from.clone()).or_default().sessions.insert(h.session, sid);
                let s = self.sessions.get_mut(&sid).expect("present");
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

    fn on_nak(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
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
            let open = self.opens.remove(&h.transaction).expect("present");
            return self.open_failed(open, CallError::Nak { code, text });
        }
        let Some(sid) = self.session_of(&from, h.session) else {
            return;
        };
        let s = self.sessions.get_mut(&sid).expect("present");
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
            if code == NakCode::Malformed {
                out.naks += 1;
            }
            let reopen = code == NakCode::UnknownSession
                || (code == NakCode::Malformed && out.naks >= self.io.config.naks_before_reopen);
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
            let out = s.out.remove(&h.transaction).expect("present");
            return self.out_failed(now, sid, out, CallError::Nak { code, text });
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

    fn open_failed(&mut self, open: OpenOut, error: CallError) {
        match open.purpose {
            OpenPurpose::New { .. } => self.io.fail(open.out.call, error),
            OpenPurpose::Reopen(sid) => {
                if let Some(s) = self.sessions.remove(&sid) {
                    if let Some(p) = self.peers.get_mut(&s.peer) {
                        p.sessions.remove(&s.number);
                    }
                    self.drop_session_calls(s, CloseReason::Lost, sid);
                }
            }
        }
    }

    /// Re-opens a client session whose server lost it or keeps refusing its messages.
    /// Requests not yet acknowledged are sent again in the new session; acknowledged ones
    /// may have run, so they fail with `SessionLost` rather than risk running twice.
    fn reopen(&mut self, now: Time, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.reopening {
            return;
        }
        let Some((target, payload)) = s.reopen_with.clone().filter(|_| s.role == Role::Client) else {
            let s = self.sessions.remove(&sid).expect("present");
            if let Some(p) = self.peers.get_mut(&s.peer) {
                p.sessions.remove(&s.number);
            }
            return self.drop_session_calls(s, CloseReason::Lost, sid);
        };
        s.reopening = true;
        s.out.retain(|_, o| !(o.header.command == KEY_EXCHANGE && o.call.is_none()));
        let acked: Vec<u8> =
            s.out.iter().filter(|(_, o)| o.state != OutState::AwaitAck).map(|(t, _)| *t).collect();
        for tx in acked {
            let out = s.out.remove(&tx).expect("listed");
            self.io.fail(out.call, CallError::SessionLost);
        }
        for out in s.out.values_mut() {
            out.deadline = None;
            out.pace = None; // sent again, whole, in the new session
        }
        let local_queue = s.local_queue;
        self.io.stats.sessions_reopened += 1;
        let encrypt = s.wants_encryption;
        if self
            .start_open(now, target, OpenPurpose::Reopen(sid), None, payload, local_queue, encrypt)
            .is_err()
        {
            let s = self.sessions.remove(&sid).expect("present");
            self.drop_session_calls(s, CloseReason::Lost, sid);
        }
    }

    // ---------------------------------------------------------------- timers

    fn timer_live(&self, at: Time, key: TimerKey) -> bool {
        match key {
            TimerKey::Out(sid, tx) => {
                self.sessions.get(&sid).and_then(|s| s.out.get(&tx)).is_some_and(|o| o.deadline == Some(at))
            }
            TimerKey::Reply(sid, tx) => self
                .sessions
                .get(&sid)
                .and_then(|s| s.replies.get(&tx))
                .is_some_and(|o| o.deadline == Some(at)),
            TimerKey::PaceOut(sid, tx) => self
                .sessions
                .get(&sid)
                .and_then(|s| s.out.get(&tx))
                .is_some_and(|o| o.pace.is_some_and(|p| p.at == at)),
            TimerKey::PaceReply(sid, tx) => self
                .sessions
                .get(&sid)
                .and_then(|s| s.replies.get(&tx))
                .is_some_and(|o| o.pace.is_some_and(|p| p.at == at)),
            TimerKey::Ack(sid, tx) => self
                .sessions
                .get(&sid)
                .and_then(|s| s.inc.get(&tx))
                .is_some_and(|r| matches!(r.state, InState::Delivered { ack_due: Some(t) } if t == at)),
            TimerKey::Open(tx) => self.opens.get(&tx).is_some_and(|o| o.out.deadline == Some(at)),
            TimerKey::Kick(sid) => self.sessions.get(&sid).is_some_and(|s| !s.waiting.is_empty()),
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
    }

    fn fire(&mut self, now: Time, key: TimerKey) {
        let max_retries = self.io.config.max_retries;
        match key {
            TimerKey::Out(sid, tx) => {
                let s = self.sessions.get_mut(&sid).expect("live");
                let out = s.out.get_mut(&tx).expect("live");
                match out.state {
                    OutState::AwaitAck if out.attempts > max_retries => {
                        let attempts = out.attempts;
                        let out = s.out.remove(&tx).expect("live");
                        self.out_failed(now, sid, out, CallError::GaveUp { attempts });
                    }
                    OutState::AwaitAck => self.io.transmit_out(now, out, key, s.crypto.sealer()),
                    OutState::AwaitReply { since }
                        if now.saturating_sub(since) >= self.io.config.reply_timeout =>
                    {
                        let out = s.out.remove(&tx).expect("live");
                        let error = CallError::ReplyTimeout(self.io.config.reply_timeout);
                        self.out_failed(now, sid, out, error);
                    }
                    OutState::AwaitReply { .. } => {
                        // Probe: the receiver answers a repeat with its REPLY or an ACK.
                        self.io.resend(now, out, key, s.crypto.sealer());
                        let at = now + self.io.config.ack_timeout_max;
                        out.deadline = Some(at);
                        self.io.schedule(at, key);
                    }
                }
            }
            TimerKey::Reply(sid, tx) => {
                let s = self.sessions.get_mut(&sid).expect("live");
                let out = s.replies.get_mut(&tx).expect("live");
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
                    // Stop pushing, but keep the REPLY: its request ran, so a repeat of the
                    // request (the client's next re-attempt or probe) can only be answered
                    // with it. Dropping it left the client to time out.
                    out.parked = true;
                    let until = out.last_sent.max(now) + hold;
                    out.deadline = Some(until);
                    self.io.schedule(until, key);
                    self.io.stats.replies_undelivered += 1;
                    self.io.events.push_back(Event::ReplyUndelivered { session: sid, transaction: tx });
                } else {
                    self.io.transmit_out(now, out, key, s.crypto.sealer());
                }
            }
            TimerKey::Ack(sid, tx) => {
                let s = self.sessions.get_mut(&sid).expect("live");
                let rec = s.inc.get_mut(&tx).expect("live");
                rec.state = InState::Delivered { ack_due: None };
                let (cmd, sent, src, dst) = (rec.command, rec.sent, rec.src, rec.dst);
                let (peer, number) = (s.peer.clone(), s.number);
                self.io.ack(
                    &peer,
                    Answer { command: cmd, session: number, transaction: tx, dst: src, src: dst },
                    sent,
                    s.crypto.sealer(),
                );
            }
            TimerKey::Open(tx) => {
                let open = self.opens.get_mut(&tx).expect("live");
                let reliable_wait_over = open.out.to.is_reliable_link();
                if open.out.attempts > max_retries || reliable_wait_over {
                    let attempts = open.out.attempts;
                    let open = self.opens.remove(&tx).expect("live");
                    self.open_failed(open, CallError::GaveUp { attempts });
                } else {
                    self.io.transmit_out(now, &mut open.out, key, None);
                }
            }
            TimerKey::PaceOut(sid, tx) => {
                let s = self.sessions.get_mut(&sid).expect("live");
                let out = s.out.get_mut(&tx).expect("live");
                self.io.pace_next(now, out, key, s.crypto.sealer());
            }
            TimerKey::PaceReply(sid, tx) => {
                let s = self.sessions.get_mut(&sid).expect("live");
                let out = s.replies.get_mut(&tx).expect("live");
                self.io.pace_next(now, out, key, s.crypto.sealer());
            }
            TimerKey::Kick(sid) => self.start_waiting(now, sid),
            TimerKey::Sweep => self.sweep(now),
        }
    }

    fn sweep(&mut self, now: Time) {
        let idle = self.io.config.idle_timeout;
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.role == Role::Server
                    && now.saturating_sub(s.last_active) >= idle
                    && s.out.is_empty()
                    // A parked REPLY is not traffic: it must not keep an idle session alive.
                    && s.replies.values().all(|o| o.parked)
                    // Nor is a half-received message: a live sender repeats it well within the
                    // idle time-out, so its sender is gone, and the session (and the peer's
                    // partial-message slot) goes with it. A delivered request is the
                    // application's, still to be answered: it keeps the session.
                    && !s.inc.values().any(|r| matches!(r.state, InState::Delivered { .. }))
            })
            .map(|(id, _)| *id)
            .collect();
        for sid in expired {
            let s = self.sessions.remove(&sid).expect("listed");
            if let Some(p) = self.peers.get_mut(&s.peer) {
                p.sessions.remove(&s.number);
            }
            self.io.stats.sessions_expired += 1;
            self.drop_session_calls(s, CloseReason::Idle, sid);
        }
        self.peers.retain(|_, p| !p.sessions.is_empty() || p.partials > 0);
        self.sweep_armed = false;
        if !self.sessions.is_empty() || !self.peers.is_empty() {
            self.arm_sweep(now);
        }
    }
}

/// Marks the request a reply answered as done. The reply table and the request table share
/// transaction numbers with other commands (an `OPEN_SESSION` REPLY and the session's first
/// request may both be transaction 1), so the command must match too.
fn finish_replied(inc: &mut HashMap<u8, InRecord>, tx: u8, command: u16) {
    if let Some(rec) = inc.get_mut(&tx)
        && rec.command == command
        && matches!(rec.state, InState::Replied)
    {
        rec.state = InState::Done;
    }
}

/// The sealer of the session `number` with `peer`, if it has keys.
fn sealer_of<'s>(
    peers: &HashMap<Addr, Peer>,
    sessions: &'s mut HashMap<SessionId, Session>,
    peer: &Addr,
    number: u8,
) -> Option<&'s mut Sealer> {
    let sid = peers.get(peer)?.sessions.get(&number)?;
    sessions.get_mut(sid)?.crypto.sealer()
}

fn remember_open(peer: &mut Peer, tx: u8, sent: SentTime, accepted: Option<SessionId>) {
    if peer.opens_seen.insert(tx, (sent, accepted)).is_none() {
        peer.opens_order.push_back(tx);
    }
    while peer.opens_order.len() > OPENS_REMEMBERED_PER_PEER {
        if let Some(old) = peer.opens_order.pop_front() {
            peer.opens_seen.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn every_round_sends_every_buffer_once_and_the_last_one_last() {
        for total in 1..70 {
            for round in 0..40 {
                let order: Vec<usize> = round_order(total, round).collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..total).collect::<Vec<_>>(), "total {total}, round {round}");
                assert_eq!(order.last(), Some(&(total - 1)));
                if round == 0 {
                    assert_eq!(order, sorted, "the first transmission goes in order");
                }
            }
        }
    }

    #[test]
    fn rounds_start_at_buffers_spread_over_the_message() {
        // Eleven transmissions of a 17-buffer message (the turmoil test's calls): each starts
        // somewhere else, so no buffer stays at the exposed head of the burst.
        let starts: Vec<usize> = (0..11).map(|r| round_order(17, r).next().unwrap()).collect();
        let mut distinct = starts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), starts.len(), "{starts:?}");
    }
}
