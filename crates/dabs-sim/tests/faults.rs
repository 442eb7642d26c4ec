//! MP over a hostile simulated network: seeded loss, duplication, reordering, delay and
//! single-byte corruption. Every call must end exactly once, with the right reply or a typed
//! failure; no request may run twice; the books must balance. A failure prints the seed.

use dabs_proto::{Addr, CallError, CallId, Config, Endpoint, Event, SessionId};
use dabs_sim::{Faults, NetStats, Sim};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

const APP_COMMAND: u16 = 300;

fn request_payload(id: u64, size: usize) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend((0..size.saturating_sub(8)).map(|i| (i as u64).wrapping_mul(31).wrapping_add(id) as u8));
    p
}

/// What the server portion computes: the request reversed, so a wrong pairing shows.
fn answer(req: &[u8]) -> Vec<u8> {
    req.iter().rev().copied().collect()
}

#[derive(Debug, Default)]
struct Books {
    calls: u64,
    answered: u64,
    failed: HashMap<String, u64>,
    failed_total: u64,
    executions_max: u32,
    /// Answered calls whose request (and reply) spanned more than one datagram.
    multi_answered: u64,
    /// Answered calls of the largest size, 64 KiB each way.
    largest_answered: u64,
    /// What the network did to the run's datagrams.
    net: NetStats,
    /// Simulated time the run took.
    elapsed: Duration,
}

/// The largest message the runs carry (64 KiB, 133 buffers with a CRC).
const LARGEST: usize = 65_536;
/// Longest payload that still fits one datagram with a CRC.
const SINGLE_MAX: usize = 499;

fn run(seed: u64, faults: Faults, total_calls: u64, in_flight: usize, big_every: u64) -> Books {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut sim = Sim::new(seed, faults);
    let server = Addr::Udp("127.0.0.1:7000".parse().unwrap());
    let client = Addr::Udp("127.0.0.2:7000".parse().unwrap());
    // The cap on a peer's partial messages is a memory defence (tested in dabs-proto), not a
    // network fault: at 30% loss a 64 KiB request takes seconds to complete while small calls
    // stream past it, so more than the default 8 of the client's 32 calls in flight can be
    // multi-buffer at once, and the ninth was refused with NAK 5 (seed 103). Above the
    // pipeline's depth the cap can refuse nothing honest, so a NAK 5 here is a leaked count.
    let config = Config {
        max_retries: 12,
        reply_timeout: Duration::from_secs(60),
        max_partial_per_peer: 2 * in_flight,
        ..Config::default()
    };
    sim.add(server.clone(), Endpoint::new(config.clone(), seed.wrapping_add(1), 1_767_262_662_000));
    sim.add(client.clone(), Endpoint::new(config, seed.wrapping_add(2), 1_767_262_662_000));

    let mut opening: Vec<CallId> = (0..4)
        .map(|q| {
            let now = sim.now();
            sim.endpoint(&client).open(now, server.clone(), q, b"{}".to_vec()).unwrap()
        })
        .collect();
    let mut sessions: Vec<SessionId> = Vec::new();
    let mut pending: HashMap<CallId, (u64, Vec<u8>)> = HashMap::new();
    let mut executions: HashMap<u64, u32> = HashMap::new();
    let mut books = Books::default();
    let mut next_id = 0u64;
    let limit = Duration::from_secs(6 * 3600);

    while books.answered + books.failed_total < total_calls || !opening.is_empty() {
        // Keep the pipe full.
        while !sessions.is_empty() && pending.len() < in_flight && next_id < total_calls {
            let size = if big_every > 0 && next_id.is_multiple_of(big_every) {
                if next_id.is_multiple_of(big_every * 4) { LARGEST } else { rng.random_range(501..20_000) }
            } else {
                rng.random_range(8..480)
            };
            let payload = request_payload(next_id, size);
            let s = sessions[(next_id % sessions.len() as u64) as usize];
            let now = sim.now();
            let call = sim.endpoint(&client).call(now, s, APP_COMMAND, payload.clone()).unwrap();
            pending.insert(call, (next_id, answer(&payload)));
            books.calls += 1;
            next_id += 1;
        }
        let Some(events) = sim.step(limit) else {
            panic!("seed {seed}: simulation stalled with {} calls unresolved: {books:?}", pending.len());
        };
        for (at, event) in events {
            match event {
                Event::Open { request, .. } => {
                    assert_eq!(at, server);
                    let now = sim.now();
                    sim.endpoint(&server).accept_open(now, &request, 1, b"{}".to_vec()).unwrap();
                }
                Event::Opened { call, session, .. } => {
                    opening.retain(|c| *c != call);
                    sessions.push(session);
                }
                Event::Request(inc) => {
                    let id = u64::from_be_bytes(inc.payload[..8].try_into().unwrap());
                    let n = executions.entry(id).or_default();
                    *n += 1;
                    books.executions_max = books.executions_max.max(*n);
                    let now = sim.now();
                    sim.endpoint(&server).reply(now, inc.id, answer(&inc.payload)).unwrap();
                }
                Event::Reply { call, payload, .. } => {
                    let Some((id, expected)) = pending.remove(&call) else {
                        panic!("seed {seed}: reply for unknown or already resolved call {call:?}");
                    };
                    assert!(payload == expected, "seed {seed}: wrong reply for call {id}");
                    assert_eq!(
                        executions.get(&id),
                        Some(&1),
                        "seed {seed}: answered call {id} not run exactly once"
                    );
                    books.answered += 1;
                    books.multi_answered += u64::from(payload.len() > SINGLE_MAX);
                    books.largest_answered += u64::from(payload.len() == LARGEST);
                }
                Event::Failed { call, error } => {
                    if opening.contains(&call) {
                        panic!("seed {seed}: open failed: {error}");
                    }
                    assert!(
                        pending.remove(&call).is_some(),
                        "seed {seed}: failure for unknown call {call:?}"
                    );
                    // The server never loses a session here, so the only honest failure is running
                    // out of re-attempts; a time-out or a lost session is a bug.
                    assert!(
                        matches!(error, CallError::GaveUp { .. }),
                        "seed {seed}: unexpected failure {error}"
                    );
                    *books
                        .failed
                        .entry(format!("{error:?}").split(['(', ' ']).next().unwrap().to_owned())
                        .or_default() += 1;
                    books.failed_total += 1;
                }
                Event::SessionClosed { .. } | Event::ReplyUndelivered { .. } | Event::Reopened { .. } => {}
                other => panic!("seed {seed}: unexpected event {other:?}"),
            }
        }
    }
    assert!(pending.is_empty(), "seed {seed}: unaccounted calls");
    assert_eq!(books.calls, books.answered + books.failed_total, "seed {seed}: books do not balance");
    assert!(books.executions_max <= 1, "seed {seed}: a request ran twice");
    books.net = sim.stats.clone();
    books.elapsed = sim.now();
    books
}

/// The network really did what `faults` asked, often enough to matter: a run that carried
/// its calls over a quieter network than claimed proves nothing.
fn assert_network_was_hostile(seed: u64, faults: &Faults, books: &Books) {
    let net = &books.net;
    let rate = |n: u64| n as f64 / net.sent as f64;
    assert!(net.sent > 50_000, "seed {seed}: too little traffic to judge: {net:?}");
    assert!((rate(net.lost) - faults.loss).abs() < 0.01, "seed {seed}: loss rate off: {net:?}");
    // Duplication and corruption are drawn only for datagrams that were not lost.
    let kept = 1.0 - faults.loss;
    assert!(
        (rate(net.duplicated) - faults.duplicate * kept).abs() < 0.005,
        "seed {seed}: duplication rate off: {net:?}"
    );
    assert!(
        (rate(net.corrupted) - faults.corrupt * kept).abs() < 0.005,
        "seed {seed}: corruption rate off: {net:?}"
    );
}

fn seed() -> u64 {
    std::env::var("DABS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        t.as_nanos() as u64
    })
}

fn hostile(loss: f64) -> Faults {
    Faults {
        loss,
        duplicate: 0.05,
        corrupt: 0.02,
        min_delay: Duration::from_micros(200),
        max_delay: Duration::from_millis(30),
    }
}

#[test]
fn ten_thousand_calls_through_a_hostile_network() {
    let seed = seed();
    println!("seed {seed} (replay with DABS_SEED={seed})");
    let faults = hostile(0.10);
    let books = run(seed, faults.clone(), 10_000, 32, 50);
    println!("{books:?}");
    assert_network_was_hostile(seed, &faults, &books);
    // 10% loss with 13 transmissions per message: giving up would take a run of losses far
    // less likely than one in a billion per call.
    assert_eq!(books.failed_total, 0, "seed {seed}: {books:?}");
}

#[test]
fn ten_thousand_calls_through_thirty_percent_loss() {
    let seed = seed();
    println!("seed {seed} (replay with DABS_SEED={seed})");
    let faults = hostile(0.30);
    let books = run(seed, faults.clone(), 10_000, 32, 40);
    println!("{books:?}");
    assert_eq!(books.calls, 10_000, "seed {seed}: {books:?}");
    assert_network_was_hostile(seed, &faults, &books);
    // One call in 40 is multi-buffer (250), every fourth of those the full 64 KiB (63): most
    // must have come through, or the run says nothing about large messages.
    assert!(books.multi_answered >= 200, "seed {seed}: {books:?}");
    assert!(books.largest_answered >= 50, "seed {seed}: {books:?}");
    // Typed failures are allowed (only `GaveUp`, checked in `run`) but must stay rare: a call
    // gives up when all 13 transmissions of its request are lost or corrupted, about one call
    // in three million here. Seeds 100..=299 saw at most one per run.
    assert!(books.answered * 100 >= books.calls * 99, "seed {seed}: most calls must get through {books:?}");
}

#[test]
fn perfect_network_answers_everything() {
    let seed = seed();
    let books = run(seed, Faults::none(Duration::from_micros(50)), 3_000, 64, 10);
    assert_eq!(books.answered, 3_000, "seed {seed}: {books:?}");
}
