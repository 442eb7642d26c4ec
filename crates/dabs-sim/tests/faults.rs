//! MP over a hostile simulated network: seeded loss, duplication, reordering, delay and
//! single-byte corruption. Every call must end exactly once, with the right reply or a typed
//! failure; no request may run twice; the books must balance. A failure prints the seed.

use dabs_proto::{Addr, CallError, CallId, Config, Endpoint, Event, SessionId};
use dabs_sim::{Faults, Sim};
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
}

fn run(seed: u64, faults: Faults, total_calls: u64, in_flight: usize, big_every: u64) -> Books {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let mut sim = Sim::new(seed, faults);
    let server = Addr::Udp("127.0.0.1:7000".parse().unwrap());
    let client = Addr::Udp("127.0.0.2:7000".parse().unwrap());
    let config = Config { max_retries: 12, reply_timeout: Duration::from_secs(60), ..Config::default() };
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
                if next_id.is_multiple_of(big_every * 4) { 65_536 } else { rng.random_range(501..20_000) }
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
    books
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
    let books = run(seed, hostile(0.10), 10_000, 32, 50);
    println!("{books:?}");
    // 10% loss with 13 transmissions per message: giving up would take a run of losses far
    // less likely than one in a billion per call.
    assert_eq!(books.failed_total, 0, "seed {seed}: {books:?}");
}

#[test]
fn thirty_percent_loss_still_balances() {
    let seed = seed();
    println!("seed {seed} (replay with DABS_SEED={seed})");
    let books = run(seed, hostile(0.30), 2_000, 32, 40);
    println!("{books:?}");
    assert!(books.answered * 10 >= books.calls * 9, "seed {seed}: most calls must get through {books:?}");
}

#[test]
fn perfect_network_answers_everything() {
    let seed = seed();
    let books = run(seed, Faults::none(Duration::from_micros(50)), 3_000, 64, 10);
    assert_eq!(books.answered, 3_000, "seed {seed}: {books:?}");
}
