//! `dabs demo failover`: servers that push their clients away (R-FO). A 3-node farm; every
//! client starts on node-1, whose mandatory service (a TCP "orders database" this demo runs)
//! is then stopped. node-1's health drops to 0, past its failover threshold, and it sends each
//! client an authenticated `FAILOVER`; the clients move to the alternates and carry on. Forged
//! notices are injected first and must all be refused. Then the service comes back and node-1
//! calls its clients back, no faster than its return bound.

use crate::farm::LocalFarm;
use ciborium::Value;
use dabs_net::{DriverOptions, EndpointHandle};
use dabs_sdk::{FarmClient, FarmClientOptions};
use serde_json::{Value as Json, json};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The retry-and-timeout failover a client would otherwise wait out (R × T).
const RETRIES: u64 = 3;
const RETRY_TIMEOUT_MS: u64 = 5_000;
/// Clients per client endpoint (a session number is one byte, so well under 255 per peer).
const PER_ENDPOINT: usize = 50;
/// node-1 takes back at most this many clients per interval.
const RETURN_BATCH: usize = 40;
const RETURN_INTERVAL_MS: u64 = 250;
/// Each client calls this often.
const CALL_EVERY: Duration = Duration::from_millis(400);

/// The quantile `p` of times in ms, rounded to whole ms.
fn pct(ms: &[u64], p: f64) -> u64 {
    dabs_node::calls::Percentiles::of_ms(ms.iter().map(|&v| v as f64), p).round() as u64
}

/// Runs the demo.
pub fn run(json_out: bool, clients: usize) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("dabs-failover-{}", std::process::id()));
    let outcome = rt.block_on(demo(&dir, clients.max(1)));
    let _ = std::fs::remove_dir_all(&dir);
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dabs demo failover: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\nsummary");
    println!(
        "  {} clients, {} moved off node-1; lost {}; forged notices injected {}, refused {}",
        summary["clients"],
        summary["moved"],
        summary["lost"],
        summary["forged_injected"],
        summary["forged_rejected"]
    );
    println!(
        "  service stop -> served elsewhere: p50 {} ms, p99 {} ms, max {} ms (retry-and-timeout would take {} ms)",
        summary["move_p50_ms"], summary["move_p99_ms"], summary["move_max_ms"], summary["baseline_ms"]
    );
    println!(
        "  back on node-1 after the service returned: {} (at most {} per {} ms; busiest window {})",
        summary["returned"], RETURN_BATCH, RETURN_INTERVAL_MS, summary["return_max_per_interval"]
    );
    if json_out {
        println!("{summary}");
    }
    let ok = summary["lost"] == 0
        && summary["moved"] == summary["clients"]
        && summary["forged_rejected"] == summary["forged_injected"];
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// One client's record.
#[derive(Default)]
struct Record {
    /// ms from the service stop to the first reply from another node.
    moved_after_ms: Option<u64>,
    /// When it was first served by node-1 again after the service came back.
    returned_at: Option<Instant>,
}

struct Shared {
    node1: SocketAddr,
    stopped_at: Mutex<Option<Instant>>,
    restored: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
}

async fn demo(dir: &std::path::Path, n: usize) -> Result<Json, String> {
    let secret_hex: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let secret: Vec<u8> =
        (0..32).map(|i| u8::from_str_radix(&secret_hex[2 * i..2 * i + 2], 16).expect("hex")).collect();
    // node-1's mandatory service: a TCP listener this demo owns, stopped and restarted.
    let service = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen: {e}"))?;
    let service_addr = service.local_addr().map_err(|e| e.to_string())?;
    let extra = move |i: usize| {
        let mut text = format!(
            "start_at_init = true\nmax_sessions_per_portion = {n}\n\n[health]\ninterval_ms = 100\n\n\
             [failover]\nbatch = 250\nbatch_interval_ms = 20\nreturn_batch = {RETURN_BATCH}\n\
             return_interval_ms = {RETURN_INTERVAL_MS}\n"
        );
        if i == 1 {
            text.push_str(&format!(
                "\n[[health.service]]\nname = \"orders-db\"\ntcp = \"{service_addr}\"\nmandatory = true\n"
            ));
        }
        text
    };
    let mut farm = LocalFarm::start_each(3, dir, Some(&secret_hex), extra)?;
    let result = drive(&farm, n, &secret, service, service_addr).await;
    farm.stop();
    result
}

async fn drive(
    farm: &LocalFarm,
    n: usize,
    secret: &[u8],
    service: std::net::TcpListener,
    service_addr: SocketAddr,
) -> Result<Json, String> {
    let node1 = farm.nodes[0].mp;
    println!("farm group {}; node-1 at {node1}; {n} clients start on node-1", farm.group);
    // Let the members find each other and the decider settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shared = Arc::new(Shared {
        node1,
        stopped_at: Mutex::new(None),
        restored: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let mut endpoints = Vec::new();
    for _ in 0..n.div_ceil(PER_ENDPOINT) {
        let ep = dabs_net::spawn(
            "127.0.0.1:0".parse().expect("literal"),
            DriverOptions { config: crate::calc::client_config(), ..Default::default() },
        )
        .await
        .map_err(|e| format!("cannot open a client endpoint: {e}"))?;
        accept_sessions(&ep);
        endpoints.push(ep);
    }
    // Start the clients, a few at a time, each directly on node-1.
    let mut clients = Vec::with_capacity(n);
    let mut starting = tokio::task::JoinSet::new();
    for i in 0..n {
        let ep = endpoints[i / PER_ENDPOINT].clone();
        let options = FarmClientOptions {
            queue: 100 + (i % PER_ENDPOINT) as u16,
            idempotent: false,
            secret: Some(secret.to_vec()),
            max_reopens: 6,
            ..FarmClientOptions::new(node1, dabs_calc::APP)
        };
        starting.spawn(async move { (i, FarmClient::start(ep, options).await) });
        if starting.len() >= 25 {
            let (i, c) = starting.join_next().await.expect("one").map_err(|e| e.to_string())?;
            clients.push((i, Arc::new(c.map_err(|e| format!("client {i} did not start: {e}"))?)));
        }
    }
    while let Some(done) = starting.join_next().await {
        let (i, c) = done.map_err(|e| e.to_string())?;
        clients.push((i, Arc::new(c.map_err(|e| format!("client {i} did not start: {e}"))?)));
    }
    clients.sort_by_key(|(i, _)| *i);
    let on_node1 = {
        let mut k = 0;
        for (_, c) in &clients {
            if c.server().await == Some(dabs_net::Addr::Udp(node1)) {
                k += 1;
            }
        }
        k
    };
    println!("{} clients running, {on_node1} of them on node-1", clients.len());

    let records: Arc<Vec<Mutex<Record>>> = Arc::new((0..n).map(|_| Mutex::default()).collect());
    let mut loops = tokio::task::JoinSet::new();
    for (i, c) in &clients {
        loops.spawn(client_loop(*i, c.clone(), shared.clone(), records.clone()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Forged notices: signed with a wrong secret, sent from a host that is not the client's
    // server. Every one must be refused.
    let forged_injected = inject_forged(&endpoints, n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!("stopping node-1's mandatory service (orders-db)");
    *shared.stopped_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    drop(service);
    let moved_all = wait_until(Duration::from_secs(20), || {
        records.iter().all(|r| r.lock().unwrap_or_else(|e| e.into_inner()).moved_after_ms.is_some())
    })
    .await;
    if !moved_all {
        println!("not every client moved within 20 s");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("restarting orders-db: node-1 calls its clients back, staggered");
    let _service_again =
        std::net::TcpListener::bind(service_addr).map_err(|e| format!("cannot listen again: {e}"))?;
    let restored_at = Instant::now();
    shared.restored.store(true, Ordering::SeqCst);
    wait_until(Duration::from_secs(15), || {
        records.iter().all(|r| r.lock().unwrap_or_else(|e| e.into_inner()).returned_at.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::SeqCst);
    while loops.join_next().await.is_some() {}

    let mut moves: Vec<u64> =
        records.iter().filter_map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).moved_after_ms).collect();
    moves.sort_unstable();
    let mut returns: Vec<Instant> =
        records.iter().filter_map(|r| r.lock().unwrap_or_else(|e| e.into_inner()).returned_at).collect();
    returns.sort();
    let window = Duration::from_millis(RETURN_INTERVAL_MS);
    let return_max = (0..returns.len())
        .map(|i| returns[i..].iter().take_while(|t| t.duration_since(returns[i]) < window).count())
        .max()
        .unwrap_or(0);
    let rejected: u64 = clients.iter().map(|(_, c)| c.failovers().rejected.load(Ordering::Relaxed)).sum();
    let sent = shared.sent.load(Ordering::Relaxed);
    let answered = shared.answered.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    for (_, c) in &clients {
        c.stop().await;
    }
    Ok(json!({
        "clients": n,
        "on_node1_at_start": on_node1,
        "moved": moves.len(),
        "lost": sent - answered,
        "failed": failed,
        "calls": sent,
        "move_p50_ms": pct(&moves, 0.5),
        "move_p99_ms": pct(&moves, 0.99),
        "move_max_ms": moves.last().copied().unwrap_or(0),
        "baseline_ms": RETRIES * RETRY_TIMEOUT_MS,
        "forged_injected": forged_injected,
        "forged_rejected": rejected,
        "returned": returns.len(),
        "return_secs": returns.last().map_or(0.0, |t| t.duration_since(restored_at).as_secs_f64()),
        "return_max_per_interval": return_max,
        "return_span_ms": returns.last().zip(returns.first()).map_or(0, |(l, f)| l.duration_since(*f).as_millis() as u64),
        "return_bound": format!("{RETURN_BATCH} per {RETURN_INTERVAL_MS} ms"),
    }))
}

async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// A client: one calculation every [`CALL_EVERY`], and one at once after each move. Every
/// call is checked; the first answer from a node other than node-1 after the service stop
/// marks the move, the first from node-1 after its restart marks the return.
async fn client_loop(
    i: usize,
    client: Arc<FarmClient>,
    shared: Arc<Shared>,
    records: Arc<Vec<Mutex<Record>>>,
) {
    let mut moves = client.failovers().moves();
    let mut k: i64 = 0;
    let mut tick = tokio::time::interval(CALL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Spread the clients over the interval.
    tokio::time::sleep(CALL_EVERY.mul_f64(i as f64 / records.len().max(1) as f64)).await;
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = moves.changed() => {}
        }
        k += 1;
        let (a, b) = (i as i64, k);
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let payload = cbor_pair(a, b);
        match client.call(256, payload).await {
            Ok(reply) if reply_is(&reply, a + b) => {
                shared.answered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) | Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let server = client.server().await;
        let on_node1 = server == Some(dabs_net::Addr::Udp(shared.node1));
        let stopped = *shared.stopped_at.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = records[i].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = stopped
            && !on_node1
            && r.moved_after_ms.is_none()
        {
            r.moved_after_ms = Some(at.elapsed().as_millis() as u64);
        }
        if shared.restored.load(Ordering::SeqCst)
            && on_node1
            && r.moved_after_ms.is_some()
            && r.returned_at.is_none()
        {
            r.returned_at = Some(Instant::now());
        }
    }
}

fn cbor_pair(a: i64, b: i64) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Array(vec![a.into(), b.into()]), &mut out).expect("in memory");
    out
}

fn reply_is(reply: &[u8], expect: i64) -> bool {
    let Ok(Value::Map(m)) = ciborium::from_reader::<Value, _>(reply) else { return false };
    m.iter().any(|(k, v)| {
        k.as_text() == Some("ok") && v.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(expect)
    })
}

/// The client endpoints take sessions from anyone (servers call deferred clients back this
/// way, and an attacker can reach them too); a session is bound to the queue it asks for.
fn accept_sessions(ep: &EndpointHandle) {
    let mut opens = ep.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let queue = match ciborium::from_reader::<Value, _>(&open.payload[..]) {
                Ok(Value::Map(m)) => m
                    .iter()
                    .find(|(k, _)| k.as_text() == Some("queue"))
                    .and_then(|(_, v)| v.as_integer())
                    .and_then(|q| u16::try_from(q).ok()),
                _ => None,
            };
            match queue {
                Some(q) => {
                    let _ = open.accept(q, Vec::new()).await;
                }
                None => open.reject(dabs_wire::NakCode::Malformed, "name the queue to talk to"),
            }
        }
    });
}

/// Sends every tenth client a `FAILOVER` sealed with a wrong secret from a stranger's
/// endpoint; returns how many were sent and answered (each answer must be NAK 9).
async fn inject_forged(endpoints: &[EndpointHandle], n: usize) -> Result<u64, String> {
    let attacker = dabs_net::spawn("127.0.0.1:0".parse().expect("literal"), DriverOptions::default())
        .await
        .map_err(|e| format!("cannot open the attacker's endpoint: {e}"))?;
    let wrong_secret = [0x5a_u8; 32];
    let mut injected = 0;
    for i in (0..n).step_by(10) {
        let target = endpoints[i / PER_ENDPOINT].local_addrs().udp;
        let queue = 100 + (i % PER_ENDPOINT) as u16;
        let mut ask = Vec::new();
        ciborium::into_writer(
            &Value::Map(vec![(Value::Text("queue".into()), Value::Integer(queue.into()))]),
            &mut ask,
        )
        .expect("in memory");
        let session = attacker
            .open(dabs_net::Addr::Udp(target), 1, ask)
            .await
            .map_err(|e| format!("attacker could not open a session: {e}"))?;
        let decoy =
            dabs_farm_proto::seal::Alternate::at(attacker.local_addrs().udp, "mp://local/calc/dasp/666");
        let notice = dabs_farm_proto::seal::Failover {
            alternates: vec![decoy],
            nonce: dabs_net::unix_ms() * 1000,
            issued: dabs_net::unix_ms(),
        };
        let payload = notice.seal(&wrong_secret, attacker.local_addrs().udp, target);
        match session.call(dabs_wire::SystemCommand::Failover.number(), payload).await {
            Err(dabs_net::Error::Call(dabs_net::CallError::Nak {
                code: dabs_wire::NakCode::AuthenticationFailed,
                ..
            })) => {}
            other => {
                return Err(format!("a forged FAILOVER to client {i} was not refused with NAK 9: {other:?}"));
            }
        }
        injected += 1;
        session.close();
    }
    attacker.shutdown().await;
    Ok(injected)
}
