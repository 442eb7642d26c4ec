//! The output side every handler shares: transmit and event queues, timers, counters,
//! randomness, and the sending of messages, ACKs and NAKs.

use super::records::{Answer, Out, OutState, Pace};
use super::timers::TimerKey;
use super::{CallError, CallId, Event, Time, Transmit};
use crate::crypto::{self, ENCRYPTION_OVERHEAD, Sealer};
use crate::{Addr, Config, Stats};
use dabs_wire::{
    BUFFER_HEADER_LEN, CRC_LEN, HEADER_LEN, Header, Kind, Latency, MAX_DATAGRAM, NakCode, NakPayload,
    SentTime, Splitter, crc8, encode, latency,
};
use rand::Rng;
use rand::rngs::SmallRng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::ops::Range;
use std::time::Duration;

const NAK_TEXT_MAX: usize = 200;
/// Sent datagrams' buffers kept for reuse ([`Io::recycle`]); beyond this they are freed.
const SPARE_BUFFERS: usize = 256;
/// What an encrypted buffer's body is encoded as before it is sealed in place.
static ZEROS: [u8; MAX_DATAGRAM] = [0; MAX_DATAGRAM];
/// A re-sent multi-buffer message goes out this many datagrams at a time...
const PACE_BURST: usize = 4;
/// ...one group every this long (see [`Io::put_out`]).
const PACE_GAP: Duration = Duration::from_millis(1);

/// Output side shared by every handler: queues, timers, counters, randomness.
pub(super) struct Io {
    pub(super) config: Config,
    pub(super) rng: SmallRng,
    pub(super) wall_epoch_ms: u64,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) events: VecDeque<Event>,
    pub(super) timers: BinaryHeap<Reverse<(Time, TimerKey)>>,
    pub(super) stats: Stats,
    /// Bytes every half-received message holds (see [`super::budget`]).
    pub(super) held: super::budget::Meter,
    /// Datagram-sized buffers for the next datagrams sent and buffers received.
    pub(super) spare: Spare,
}

/// Datagram-sized buffers kept for reuse: those of sent datagrams (given back by the driver)
/// and of reassembled messages' buffers. With them the send and receive paths allocate
/// nothing per datagram once the endpoint has warmed up.
#[derive(Default)]
pub(super) struct Spare(Vec<Vec<u8>>);

impl Spare {
    /// An empty buffer with room for a datagram.
    pub(super) fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_else(|| Vec::with_capacity(MAX_DATAGRAM))
    }

    /// Keeps `buffer` for reuse (up to [`SPARE_BUFFERS`] of them).
    pub(super) fn give(&mut self, mut buffer: Vec<u8>) {
        if self.0.len() < SPARE_BUFFERS && buffer.capacity() >= MAX_DATAGRAM {
            buffer.clear();
            self.0.push(buffer);
        }
    }
}

impl Io {
    /// Keeps a sent datagram's buffer for reuse.
    pub(super) fn recycle(&mut self, data: Vec<u8>) {
        self.spare.give(data);
    }

    /// A zeroed datagram-sized buffer, reused when one was given back.
    fn datagram_buffer(&mut self) -> Vec<u8> {
        let mut data = self.spare.take();
        data.resize(MAX_DATAGRAM, 0);
        data
    }

    pub(super) fn stamp(&self, now: Time) -> SentTime {
        SentTime::from_unix_millis(self.wall_ms(now))
    }

    pub(super) fn wall_ms(&self, now: Time) -> u64 {
        self.wall_epoch_ms + now.as_millis() as u64
    }

    pub(super) fn latency(&mut self, sent: SentTime, now: Time) -> Latency {
        let l = latency(sent, self.wall_ms(now));
        if l.clock_skew {
            self.stats.clock_skew += 1;
        } else {
            self.stats.latency_sum_ms += u64::from(l.millis);
            self.stats.latency_count += 1;
        }
        l
    }

    pub(super) fn schedule(&mut self, at: Time, key: TimerKey) {
        self.timers.push(Reverse((at, key)));
    }

    pub(super) fn jittered(&mut self, base: Duration) -> Duration {
        let j = self.config.jitter.clamp(0.0, 0.9);
        let f = if j > 0.0 { self.rng.random_range(1.0 - j..=1.0 + j) } else { 1.0 };
        base.mul_f64(f)
    }

    /// Sends every buffer of a message, each encrypted on its own when `seal` is given (and
    /// the command is not one that sets sessions up).
    pub(super) fn send_message(
        &mut self,
        to: &Addr,
        header: &Header,
        payload: &[u8],
        seal: Option<&mut Sealer>,
    ) {
        self.send_round(to, header, payload, seal, 0, 0..usize::MAX);
    }

    /// Sends the buffers at `places` of [`round_order`] for the `round`th transmission (from
    /// 0) of a message, as [`Io::send_message`]. Returns how many buffers the message has.
    pub(super) fn send_round(
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
        for index in round_order(total, round).skip(places.start).take(places.len()) {
            let Some((buffer, part)) = split.buffer(index) else {
                continue;
            };
            let mut data = self.datagram_buffer();
            let n = match seal.as_deref_mut() {
                None => encode(&header, buffer, part, &mut data),
                Some(sealer) => {
                    // Encoded with a zero body of the sealed size, then sealed in place there.
                    let Some(body) = ZEROS.get(..part.len() + ENCRYPTION_OVERHEAD) else {
                        continue;
                    };
                    let Ok(n) = encode(&header, buffer, body, &mut data) else {
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
    pub(super) fn put_out(
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
    pub(super) fn pace_next(&mut self, now: Time, out: &mut Out, key: TimerKey, seal: Option<&mut Sealer>) {
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
    pub(super) fn transmit_out(
        &mut self,
        now: Time,
        out: &mut Out,
        key: TimerKey,
        seal: Option<&mut Sealer>,
    ) {
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
    pub(super) fn await_reply(&mut self, now: Time, out: &mut Out, key: TimerKey) {
        out.state = OutState::AwaitReply { since: now };
        out.pace = None; // the receiver has it all
        // Keep probing, slowly, in case the REPLY is lost or the ACK was stale.
        let at = now + self.config.ack_timeout_max;
        out.deadline = Some(at);
        self.schedule(at, key);
    }

    /// Sends a message again without touching its re-attempt count or timer (`key`).
    pub(super) fn resend(&mut self, now: Time, out: &mut Out, key: TimerKey, seal: Option<&mut Sealer>) {
        self.stats.retransmits += 1;
        self.put_out(now, out, seal, pace_key(key));
    }

    /// Sends an ACK answering `answer`, echoing the acknowledged stamp.
    pub(super) fn ack(&mut self, to: &Addr, answer: Answer, sent: SentTime, seal: Option<&mut Sealer>) {
        let header = Header { sent, crc: self.config.crc, ..answer.header(Kind::Ack) };
        self.send_message(to, &header, &[], seal);
    }

    /// Sends a NAK answering `answer` with an error number and (truncated) text.
    pub(super) fn nak(
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

    pub(super) fn fail(&mut self, call: Option<CallId>, error: CallError) {
        if let Some(call) = call {
            self.stats.calls_failed += 1;
            self.events.push_back(Event::Failed { call, error });
        }
    }

    pub(super) fn new_out(&self, call: Option<CallId>, to: Addr, header: Header, payload: Vec<u8>) -> Out {
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
            silent_probes: 0,
            pace: None,
        }
    }
}

/// The timer that sends the next group of a paced round of the message timed by `key`.
pub(super) fn pace_key(key: TimerKey) -> Option<TimerKey> {
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
pub(super) fn round_order(total: usize, round: u32) -> impl Iterator<Item = usize> {
    let rotated = total.saturating_sub(1);
    // round · φ modulo 1, as a 32-bit fraction, scaled to 0..rotated.
    let fraction = u64::from(round.wrapping_mul(0x9E37_79B9));
    let start = usize::try_from((fraction * rotated as u64) >> 32).unwrap_or(0);
    (start..rotated).chain(0..start).chain(rotated..total)
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    pub(super) fn every_round_sends_every_buffer_once_and_the_last_one_last() {
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
    pub(super) fn rounds_start_at_buffers_spread_over_the_message() {
        // Eleven transmissions of a 17-buffer message (the turmoil test's calls): each starts
        // somewhere else, so no buffer stays at the exposed head of the burst.
        let starts: Vec<usize> = (0..11).map(|r| round_order(17, r).next().unwrap()).collect();
        let mut distinct = starts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), starts.len(), "{starts:?}");
    }
}
