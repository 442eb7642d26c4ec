//! A deterministic network simulator for sans-IO MP endpoints.
//!
//! Every datagram an endpoint emits goes through [`Faults`] drawn from one seeded RNG (loss,
//! duplication, delay and therefore reordering, single-byte corruption), then arrives at its
//! destination at a simulated time. Time only moves when the simulator advances it, so a run
//! is a pure function of its seed.

pub mod control;
pub mod script;

use dabs_proto::{Addr, Endpoint, Event, Time};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

/// What the network does to datagrams.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability one byte of a datagram is changed.
    pub corrupt: f64,
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay (delays are uniform in between, so datagrams reorder).
    pub max_delay: Duration,
}

impl Faults {
    /// A perfect network with a fixed delay.
    pub fn none(delay: Duration) -> Self {
        Self { loss: 0.0, duplicate: 0.0, corrupt: 0.0, min_delay: delay, max_delay: delay }
    }
}

/// Counters of what the network did.
#[derive(Clone, Debug, Default)]
pub struct NetStats {
    /// Datagrams offered to the network.
    pub sent: u64,
    /// Dropped.
    pub lost: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Corrupted.
    pub corrupted: u64,
    /// Delivered (including duplicates).
    pub delivered: u64,
}

/// A datagram on the wire: (arrival, sequence, from, to, bytes).
type InFlight = (Time, u64, Addr, Addr, Vec<u8>);

/// A set of endpoints on a simulated network.
pub struct Sim {
    /// The network's behaviour; may be changed between steps.
    pub faults: Faults,
    /// What the network did.
    pub stats: NetStats,
    now: Time,
    rng: SmallRng,
    endpoints: BTreeMap<Addr, Endpoint>,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    down: Vec<Addr>,
}

impl Sim {
    /// A simulator whose every random choice follows `seed`.
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            faults,
            stats: NetStats::default(),
            now: Duration::ZERO,
            rng: SmallRng::seed_from_u64(seed),
            endpoints: BTreeMap::new(),
            in_flight: BinaryHeap::new(),
            seq: 0,
            down: Vec::new(),
        }
    }

    /// Current simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Adds an endpoint at `addr`.
    pub fn add(&mut self, addr: Addr, endpoint: Endpoint) {
        self.endpoints.insert(addr, endpoint);
    }

    /// The endpoint at `addr`.
    pub fn endpoint(&mut self, addr: &Addr) -> &mut Endpoint {
        self.endpoints.get_mut(addr).expect("no endpoint at that address")
    }

    /// Cuts `addr` off (a crash or partition): everything to or from it is dropped.
    pub fn set_down(&mut self, addr: &Addr, down: bool) {
        self.down.retain(|a| a != addr);
        if down {
            self.down.push(addr.clone());
        }
    }

    /// Moves every endpoint's pending datagrams into the network.
    pub fn flush(&mut self) {
        let addrs: Vec<Addr> = self.endpoints.keys().cloned().collect();
        for from in addrs {
            while let Some(t) = self.endpoints.get_mut(&from).and_then(Endpoint::poll_transmit) {
                self.offer(from.clone(), t.to, t.data);
            }
        }
    }

    fn offer(&mut self, from: Addr, to: Addr, mut data: Vec<u8>) {
        self.stats.sent += 1;
        if self.down.contains(&from) || self.down.contains(&to) || self.rng.random_bool(self.faults.loss) {
            self.stats.lost += 1;
            return;
        }
        if !data.is_empty() && self.rng.random_bool(self.faults.corrupt) {
            self.stats.corrupted += 1;
            let i = self.rng.random_range(0..data.len());
            data[i] ^= self.rng.random_range(1..=255u8);
        }
        let copies = if self.rng.random_bool(self.faults.duplicate) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let (lo, hi) = (self.faults.min_delay, self.faults.max_delay.max(self.faults.min_delay));
            let delay = if hi > lo { self.rng.random_range(lo..=hi) } else { lo };
            self.seq += 1;
            self.in_flight.push(Reverse((
                self.now + delay,
                self.seq,
                from.clone(),
                to.clone(),
                data.clone(),
            )));
        }
    }

    /// Advances to the next datagram arrival or timer, at most to `limit`; returns the
    /// events produced, each with the address of the endpoint that produced it. Returns
    /// `None` when nothing is left to happen before `limit`.
    pub fn step(&mut self, limit: Time) -> Option<Vec<(Addr, Event)>> {
        self.flush();
        let next_packet = self.in_flight.peek().map(|Reverse((t, ..))| *t);
        let next_timer = self.endpoints.values_mut().filter_map(Endpoint::next_deadline).min();
        let next = match (next_packet, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        if next > limit {
            self.now = limit;
            return None;
        }
        self.now = self.now.max(next);
        while let Some(Reverse((t, ..))) = self.in_flight.peek() {
            if *t > self.now {
                break;
            }
            let Reverse((_, _, from, to, data)) = self.in_flight.pop().expect("peeked");
            if self.down.contains(&to) {
                continue;
            }
            if let Some(ep) = self.endpoints.get_mut(&to) {
                self.stats.delivered += 1;
                ep.handle_datagram(self.now, from, &data);
            }
        }
        let now = self.now;
        let mut events = Vec::new();
        for (addr, ep) in self.endpoints.iter_mut() {
            ep.handle_timeout(now);
            while let Some(e) = ep.poll_event() {
                events.push((addr.clone(), e));
            }
        }
        Some(events)
    }
}
