//! The endpoint state machine.
//!
//! [`Endpoint`] is spread over this folder by responsibility: `mod.rs` holds the struct and
//! routes each received datagram; `client.rs`, `server.rs`, `keying.rs`, `nak.rs` and
//! `timers.rs` handle what they are named after; `session.rs` keeps sessions and the only
//! index that finds them, `records.rs` the messages in flight, `io.rs` everything sent.

mod budget;
mod client;
mod closing;
mod io;
mod keying;
mod nak;
mod pressure;
mod records;
mod server;
mod session;
mod timers;
mod types;

pub use types::{CallError, CallId, Event, Incoming, IncomingId, OpenRequest, SessionId, Transmit};
// Not re-exported by the crate (only reachable through `Event::SessionClosed`).
pub use types::CloseReason;

use self::io::Io;
use self::records::{Answer, OpenOut, OutState, finish_replied, newer};
use self::session::{Session, SessionIndex};
use self::timers::TimerKey;
use crate::crypto::{self, Crypto};
use crate::{Addr, Config, Stats};
use dabs_wire::{Datagram, Kind, NakCode, RawHeader, chunk_size, decode};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

/// A point in time: the driver's monotonic clock, as a duration since an epoch it chose.
pub type Time = Duration;

/// A sans-IO MP endpoint. See the crate documentation.
pub struct Endpoint {
    io: Io,
    sessions: SessionIndex,
    /// Our `OPEN_SESSION`s awaiting a REPLY (session 0, so by transaction number alone).
    opens: HashMap<u8, OpenOut>,
    next_open_tx: u8,
    next_id: u64,
    sweep_armed: bool,
    /// The datagram being handled came in on the farm's group address.
    from_group: bool,
    /// No relief of a full peer table before this (see `pressure.rs`).
    relief_not_before: Time,
    /// Where encrypted datagrams are opened, reused from one to the next.
    plain: Vec<u8>,
    /// Sessions servers opened for us that we do not keep, and when we last closed each: one
    /// `CLOSE_SESSION` per REPLY round, not one per copy (a second copy's close could land after
    /// the server gave the number to our next open, and close that).
    unkept: HashMap<(Addr, u8), Time>,
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
                held: budget::Meter::default(),
                spare: io::Spare::default(),
            },
            plain: Vec::new(),
            sessions: SessionIndex::default(),
            opens: HashMap::new(),
            next_open_tx: 1,
            next_id: 1,
            sweep_armed: false,
            from_group: false,
            relief_not_before: Time::ZERO,
            unkept: HashMap::new(),
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
        self.sessions.get(session).map(|s| (s.peer().clone(), s.number(), s.remote_queue))
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.transmits.pop_front()
    }

    /// Gives back a sent datagram's buffer ([`Transmit::data`]) for a later one: a driver that
    /// recycles what it sends makes the send path allocate nothing per datagram.
    pub fn recycle(&mut self, data: Vec<u8>) {
        self.io.recycle(data);
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

    /// Adds a session to the index. One still holding its (peer, number) is gone at the peer,
    /// which reused the number: it is closed as lost.
    fn add_session(&mut self, sid: SessionId, s: Session) {
        if let Some((old, s)) = self.sessions.insert(sid, s) {
            self.drop_session_calls(s, CloseReason::Lost, old);
        }
    }

    fn arm_sweep(&mut self, now: Time) {
        if !self.sweep_armed {
            self.sweep_armed = true;
            let every = (self.io.config.idle_timeout / 4).max(Duration::from_millis(100));
            self.io.schedule(now + every, TimerKey::Sweep);
        }
    }

    /// Whether a session's datagrams are encrypted (its key exchange has completed).
    pub fn session_encrypted(&self, session: SessionId) -> bool {
        self.sessions.get(session).is_some_and(|s| matches!(s.crypto, Crypto::Keys(_)))
    }

    fn check_size(&self, len: usize, overhead: usize) -> Result<(), CallError> {
        let max = self.io.config.max_message.min(chunk_size(true, overhead) * dabs_wire::MAX_BUFFERS);
        if len > max { Err(CallError::TooLarge { len, max }) } else { Ok(()) }
    }

    /// Handles one datagram received on the farm's group address (multicast).
    pub fn handle_group_datagram(&mut self, now: Time, from: Addr, bytes: &[u8]) {
        self.from_group = true;
        self.handle_datagram(now, from, bytes);
        self.from_group = false;
    }

    /// Handles one received datagram.
    pub fn handle_datagram(&mut self, now: Time, from: Addr, bytes: &[u8]) {
        self.receive(now, from, bytes);
        self.refresh_gauges();
    }

    /// Brings the gauges in [`Stats`] up to date (after every datagram and timer).
    fn refresh_gauges(&mut self) {
        let held = self.io.held.get() as u64;
        let full = self.is_full();
        let st = &mut self.io.stats;
        st.peers_tracked = self.sessions.peer_count() as u64;
        st.half_open_sessions = self.sessions.half_open_count() as u64;
        st.tables_full = full;
        st.reassembly_bytes = held;
        st.reassembly_peak_bytes = st.reassembly_peak_bytes.max(held);
    }

    fn receive(&mut self, now: Time, from: Addr, bytes: &[u8]) {
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
                    let seal = self.sessions.sealer(&from, raw.session);
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
        // The plaintext buffer is the endpoint's, reused: taken for this datagram (the
        // handlers below borrow the endpoint mutably) and given back at the end.
        let mut plain = std::mem::take(&mut self.plain);
        if let Some(d) = self.admit(now, &from, bytes, d, &mut plain) {
            self.dispatch_datagram(now, from, d);
        }
        self.plain = plain;
    }

    fn dispatch_datagram(&mut self, now: Time, from: Addr, d: Datagram<'_>) {
        if d.header.session != 0
            && !d.header.crc
            && let Some(sid) = self.session_of(&from, d.header.session)
            && self.sessions.get(sid).is_some_and(|s| s.crc)
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

    fn nak_datagram(&mut self, now: Time, to: &Addr, d: &Datagram<'_>, code: NakCode, text: &str) {
        let h = &d.header;
        let seal = self.sessions.sealer(to, h.session);
        self.io.nak(now, to, Answer::to(h), code, text, seal);
    }

    fn session_of(&self, from: &Addr, number: u8) -> Option<SessionId> {
        self.sessions.lookup(from, number)
    }

    fn on_ack(&mut self, now: Time, from: Addr, d: &Datagram<'_>) {
        let h = d.header;
        let Some(sid) = self.session_of(&from, h.session) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
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
            (true, true) => s.out.get(&h.transaction).is_some_and(|o| o.header.sent == h.sent),
        };
        if to_request {
            if let Some(out) = s.out.get_mut(&h.transaction) {
                self.io.await_reply(now, out, TimerKey::Out(sid, h.transaction));
            }
        } else if reply_match && let Some(reply) = s.replies.remove(&h.transaction) {
            finish_replied(&mut s.inc, h.transaction, reply.header.command);
            if reply.header.command == dabs_wire::SystemCommand::OpenSession.number() {
                self.sessions.settle_open(sid);
            }
        }
    }
}
