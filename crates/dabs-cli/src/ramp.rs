//! `dabs demo ramp`: balancing while running. A 3-node farm serves the slow calculator (a
//! critical section every request must pass) to a rising crowd of clients. Lock time-outs
//! tell the farm a portion is starving; the farm spawns portions, closes starving servers to
//! new clients and moves portions off servers that stay overloaded. The demo prints the
//! portions per node over time, each spawn and move with its cause, and latency per phase.

use crate::calc::connect_with;
use crate::farm::LocalFarm;
use dabs_calc::{Operands, Profile};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PHASES: [usize; 5] = [4, 12, 24, 40, 56];
const PHASE_TIME: Duration = Duration::from_secs(5);

/// The quantile `p` of latencies in µs, ms.
fn pct(latencies_us: &[u64], p: f64) -> f64 {
    dabs_node::calls::Percentiles::of_ms(latencies_us.iter().map(|&us| us as f64 / 1e3), p)
}

/// Runs the ramp.
pub fn run(json_out: bool, client_moves: bool) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("dabs-ramp-{}", std::process::id()));
    // Both calculators; the slow one's lock time-out is 15 ms, its work 2 ms per request.
    let app =
        "start_at_init = true\n\n[[app]]\nname = \"slowcalc\"\nstart_at_init = true\n\n[timeouts]\ndb = 15\n";
    // A farm secret, so starving portions can hand clients to less busy ones (FAILOVER).
    let secret: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Without it (--no-client-moves) starving portions keep their clients: the comparison run.
    let secret_arg = client_moves.then_some(secret_hex.as_str());
    let mut farm = match LocalFarm::start_with(3, &dir, secret_arg, app) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dabs demo ramp: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("farm group {} ({} nodes)", farm.group, farm.nodes.len());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let outcome = rt.block_on(drive(&farm, secret));
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dabs demo ramp: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\nsummary");
    for p in summary["phases"].as_array().into_iter().flatten() {
        println!(
            "  {:>3} clients: p50 {} ms, p99 {} ms, {} calls",
            p["clients"], p["p50_ms"], p["p99_ms"], p["calls"]
        );
    }
    println!(
        "  spawns {} (on {}), moves {}, portions per node {}",
        summary["spawns"], summary["spawn_nodes"], summary["moves"], summary["portions_per_node"]
    );
    println!(
        "  calls {} answered {} failed {} lost {}",
        summary["calls"], summary["answered"], summary["failed"], summary["lost"]
    );
    if json_out {
        println!("{summary}");
    }
    if summary["lost"] == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[derive(Default)]
struct Phase {
    latencies_us: Mutex<Vec<u64>>,
}

async fn drive(farm: &LocalFarm, secret: Vec<u8>) -> Result<Value, String> {
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let group = std::net::SocketAddr::V4(farm.group);
    let operators: Vec<(String, String)> =
        farm.nodes.iter().filter_map(|n| n.operator.clone().map(|o| (n.name.clone(), o))).collect();
    let phases: Vec<Arc<Phase>> = PHASES.iter().map(|_| Arc::new(Phase::default())).collect();
    let current = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, answered, failed) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = tokio::task::JoinSet::new();
    let mut started = 0;
    let mut seen_until: BTreeMap<String, u64> = BTreeMap::new();
    let (mut spawns, mut moves, mut client_moves) = (0u64, 0u64, 0u64);
    let mut spawn_nodes = std::collections::BTreeSet::new();
    let mut portions_per_node = BTreeMap::new();
    let t0 = Instant::now();
    for (i, &clients) in PHASES.iter().enumerate() {
        current.store(i as u64, Ordering::SeqCst);
        println!("phase {}: {clients} clients", i + 1);
        while started < clients {
            let (calc, client) = connect_with(
                group,
                Profile::Thin,
                dabs_calc::SLOW_APP,
                crate::calc::Security { secret: Some(secret.clone()), ..Default::default() },
            )
            .await?;
            let (phases, current, stop) = (phases.clone(), current.clone(), stop.clone());
            let (calls, answered, failed) = (calls.clone(), answered.clone(), failed.clone());
            let n0 = started as i64;
            workers.spawn(async move {
                let mut n = n0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    match calc.compute("+", Operands::Int(n, 1)).await {
                        Ok(dabs_calc::Value::Int(v)) if v == n + 1 => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            let phase = current.load(Ordering::SeqCst) as usize;
                            phases[phase].latencies_us.lock().unwrap().push(t.elapsed().as_micros() as u64);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                client.stop().await;
            });
            started += 1;
        }
        let phase_end = Instant::now() + PHASE_TIME;
        while Instant::now() < phase_end {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut line = Vec::new();
            for (name, url) in &operators {
                let Ok(node) = dabs_ops::get_json(url, "/api/node").await else { continue };
                let n = node["portions"].as_array().map_or(0, |p| p.len());
                portions_per_node.insert(name.clone(), n);
                line.push(format!("{name}:{n}"));
                let Ok(Value::Array(events)) = dabs_ops::get_json(url, "/api/events").await else { continue };
                // Events are kept newest-last with their time; show each once.
                let seen = seen_until.entry(name.clone()).or_default();
                for e in &events {
                    let at = e["at_ms"].as_u64().unwrap_or(0);
                    if at <= *seen {
                        continue;
                    }
                    let text = e["text"].as_str().unwrap_or_default();
                    if text.starts_with("spawned") {
                        spawns += 1;
                        spawn_nodes.insert(name.clone());
                    } else if text.contains("clients off starving") {
                        // "moving N clients off starving portions …"
                        let n = text.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok());
                        client_moves += n.unwrap_or(0);
                    } else if text.starts_with("moving") {
                        moves += 1;
                    }
                    let shown = ["spawned", "moving", "asked", "starved", "latency", "now lives", "move of"];
                    if shown.iter().any(|w| text.contains(w)) {
                        println!("  [{name}] {text}");
                    }
                }
                *seen = events.iter().filter_map(|e| e["at_ms"].as_u64()).max().unwrap_or(*seen).max(*seen);
            }
            println!("[{:>3}s] portions {}", t0.elapsed().as_secs(), line.join(" "));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let grace =
        tokio::time::timeout(Duration::from_secs(15), async { while workers.join_next().await.is_some() {} })
            .await;
    if grace.is_err() {
        workers.abort_all();
    }
    let phases_json: Vec<Value> = PHASES
        .iter()
        .zip(&phases)
        .map(|(clients, p)| {
            let mut l = p.latencies_us.lock().unwrap().clone();
            l.sort_unstable();
            json!({"clients": clients, "calls": l.len(), "p50_ms": pct(&l, 0.5), "p99_ms": pct(&l, 0.99)})
        })
        .collect();
    let (c, a, f) =
        (calls.load(Ordering::Relaxed), answered.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Ok(json!({
        "spawns": spawns,
        "spawn_nodes": spawn_nodes,
        "moves": moves,
        "clients_moved": client_moves,
        "portions_per_node": portions_per_node,
        "phases": phases_json,
        "calls": c,
        "answered": a,
        "failed": f,
        "lost": c - a - f,
    }))
}
