//! `dabs demo`: the main job. A 3-node farm of real processes, a crowd of calculator clients
//! (thin and fat), one node killed half-way, and a summary that accounts for every call.

use crate::calc::connect_device;
use crate::farm::LocalFarm;
use dabs_calc::{
    FloatingPointOps, IntegerOps, LocalFloatingPointOps, LocalIntegerOps, Operands, Profile, Value,
};
use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, DriverOptions};
use dabs_node::calls::Percentiles;
use dabs_node::stats::NodeStats;
use dabs_wire::SystemCommand;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    /// Round trips of the calls the farm answered (a fat client's integer calls run locally
    /// and are counted in `local` instead: they would flatter the figures).
    latencies_us: Mutex<Vec<u64>>,
    local: AtomicU64,
}

/// What one call should produce, computed here for checking.
async fn expected(op: &str, operands: Operands) -> Result<Value, String> {
    let r = match operands {
        Operands::Int(a, b) => match op {
            "+" => LocalIntegerOps.add(a, b).await,
            "-" => LocalIntegerOps.sub(a, b).await,
            "*" => LocalIntegerOps.mul(a, b).await,
            "/" => LocalIntegerOps.div(a, b).await,
            _ => LocalIntegerOps.rem(a, b).await,
        }
        .map(Value::Int),
        Operands::Float(x, y) => match op {
            "+" => LocalFloatingPointOps.add(x, y).await,
            "-" => LocalFloatingPointOps.sub(x, y).await,
            "*" => LocalFloatingPointOps.mul(x, y).await,
            _ => LocalFloatingPointOps.div(x, y).await,
        }
        .map(Value::Float),
    };
    r.map_err(|e| e.to_string())
}

/// Asks a node for its statistics and its view of the farm.
async fn farm_view(mp: std::net::SocketAddr) -> Option<(NodeStats, Vec<NodeStats>)> {
    let ep = dabs_net::spawn(
        "127.0.0.1:0".parse().ok()?,
        DriverOptions { config: crate::calc::client_config(), ..Default::default() },
    )
    .await
    .ok()?;
    let ask = OpenAsk { node: Some("demo-observer".into()), ..Default::default() };
    let s = ep.open(Addr::Udp(mp), 0, ask.to_cbor()).await.ok()?;
    let reply = s.call(SystemCommand::GetStatistics.number(), Vec::new()).await.ok()?;
    ep.shutdown().await;
    ciborium::from_reader(&reply[..]).ok()
}

/// Runs the demo.
pub fn run(json_out: bool, clients: usize, seconds: u64) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("dabs-demo-{}", std::process::id()));
    let mut farm = match LocalFarm::start(3, &dir, None) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dabs demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("farm group {} ({} nodes, data in {})", farm.group, farm.nodes.len(), dir.display());
    for n in &farm.nodes {
        println!("  {} mp {}", n.name, n.mp);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let outcome = rt.block_on(drive(&mut farm, clients, Duration::from_secs(seconds.max(4))));
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dabs demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lost = summary["lost"].as_u64().unwrap_or(1);
    let wrong = summary["wrong"].as_u64().unwrap_or(1);
    println!("\nsummary");
    println!(
        "  calls {} answered {} failed {} lost {} wrong {}",
        summary["calls"], summary["answered"], summary["failed"], lost, wrong
    );
    println!(
        "  latency of calls the farm answered: p50 {} ms, p99 {} ms ({} integer calls ran on fat clients)",
        summary["p50_ms"], summary["p99_ms"], summary["local_calls"]
    );
    println!(
        "  clients {} (thin and fat), re-opened after the kill: {}, kept their virtual address: {}",
        summary["clients"], summary["reopened_clients"], summary["va_kept"]
    );
    for n in summary["per_node"].as_array().into_iter().flatten() {
        println!(
            "  {} {:<8} sessions {:>4} portions {} {}",
            n["node"].as_str().unwrap_or("?"),
            n["mp"].as_str().unwrap_or("?"),
            n["sessions"],
            n["portions"],
            if n["killed"].as_bool() == Some(true) { "(killed half-way)" } else { "" }
        );
    }
    if json_out {
        println!("{summary}");
    }
    if lost == 0 && wrong == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn drive(
    farm: &mut LocalFarm,
    clients: usize,
    duration: Duration,
) -> Result<serde_json::Value, String> {
    // Let the members hear each other and a decider settle (one lease).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let group = std::net::SocketAddr::V4(farm.group);
    // The integer module, fetched once from a node and verified against the farm's key: the
    // clients the farm places it on run it in their sandbox.
    let ops = farm
        .nodes
        .first()
        .and_then(|n| n.operator.clone())
        .ok_or("the farm's nodes have no operator port")?;
    let fetcher = dabs_sdk::delivery::Fetcher::new(&ops, None).await.map_err(|e| e.to_string())?;
    let listing = fetcher.listing(dabs_calc::APP, "native").await.map_err(|e| e.to_string())?;
    let entry = listing
        .iter()
        .find(|e| e.name == dabs_calc::modules::INTEGER_OPS)
        .ok_or("the calculator lists no integer-ops module")?;
    let verified = fetcher.module(entry).await.map_err(|e| e.to_string())?;
    let module = dabs_calc::modules::WasmIntegerOps::new(&verified.bytes).map_err(|e| e.to_string())?;
    // Thin and fat are the farm's placement for two kinds of device: this host, measured,
    // and a constrained one (no WebAssembly, 16 MiB).
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let device = if i % 2 == 0 {
            dabs_sdk::delivery::DeviceProfile::host()
        } else {
            dabs_sdk::delivery::DeviceProfile::constrained()
        };
        let module = module.clone();
        set.spawn(async move { connect_device(group, device.offer, &module).await });
    }
    let mut started = Vec::new();
    while let Some(r) = set.join_next().await {
        let (calc, client, here) = r.map_err(|e| e.to_string())??;
        let profile = if here { Profile::Fat } else { Profile::Thin };
        started.push((profile, (calc, client)));
    }
    println!(
        "{} clients connected ({} thin, {} fat: placed by the farm from their devices)",
        started.len(),
        started.iter().filter(|c| c.0 == Profile::Thin).count(),
        started.iter().filter(|c| c.0 == Profile::Fat).count()
    );

    let fat_clients = started.iter().filter(|c| c.0 == Profile::Fat).count();
    let vas_before: Vec<Option<String>> = started.iter().map(|(_, (_, c))| c.va()).collect();
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + duration;
    let mut workers = tokio::task::JoinSet::new();
    let mut farm_clients = Vec::new();
    for (i, (profile, (calc, client))) in started.into_iter().enumerate() {
        farm_clients.push(client.clone());
        let tally = tally.clone();
        workers.spawn(async move {
            let mut n = i as i64;
            while Instant::now() < deadline {
                n += 1;
                let (op, operands) = match n % 6 {
                    0 => ("+", Operands::Int(n, 7)),
                    1 => ("*", Operands::Int(n, 3)),
                    2 => ("/", Operands::Int(n * 10, 7)),
                    3 => ("%", Operands::Int(n, 5)),
                    4 => ("/", Operands::Float(n as f64, 4.0)),
                    _ => ("-", Operands::Float(n as f64, 0.5)),
                };
                tally.calls.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let got = calc.compute(op, operands).await;
                let us = t.elapsed().as_micros() as u64;
                match got {
                    Ok(v) => {
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                        if profile == Profile::Fat && matches!(operands, Operands::Int(..)) {
                            tally.local.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.latencies_us.lock().unwrap().push(us);
                        }
                        if expected(op, operands).await != Ok(v) {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "call failed");
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }

    // Progress, and the kill half-way.
    let start = Instant::now();
    let mut killed: Option<String> = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let elapsed = start.elapsed();
        if killed.is_none() && elapsed >= duration / 2 {
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for c in &farm_clients {
                if let Some(Addr::Udp(a)) = c.server().await {
                    *per.entry(a.to_string()).or_default() += 1;
                }
            }
            let busiest = per.iter().max_by_key(|(_, n)| **n).map(|(a, _)| a.clone());
            if let Some(idx) = busiest.and_then(|a| farm.nodes.iter().position(|n| n.mp.to_string() == a)) {
                println!("killing {} ({}) with SIGKILL", farm.nodes[idx].name, farm.nodes[idx].mp);
                farm.kill(idx);
                killed = Some(farm.nodes[idx].name.clone());
            }
        }
        println!(
            "[{:>3}s] calls {:>6} answered {:>6} failed {:>3}",
            elapsed.as_secs(),
            tally.calls.load(Ordering::Relaxed),
            tally.answered.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed)
        );
    }
    // Every call still in flight gets a bounded time to finish; what does not is lost.
    let grace =
        tokio::time::timeout(Duration::from_secs(15), async { while workers.join_next().await.is_some() {} })
            .await;
    if grace.is_err() {
        workers.abort_all();
    }

    let mut per_sessions: BTreeMap<String, u64> = BTreeMap::new();
    let mut reopened = 0;
    let va_kept = farm_clients.iter().zip(&vas_before).filter(|(c, before)| c.va() == **before).count();
    for c in &farm_clients {
        if let Some(Addr::Udp(a)) = c.server().await {
            *per_sessions.entry(a.to_string()).or_default() += 1;
        }
        if c.reopens() > 0 {
            reopened += 1;
        }
        c.stop().await;
    }
    let survivor = farm.nodes.iter().find(|n| Some(&n.name) != killed.as_ref()).map(|n| n.mp);
    let view = match survivor {
        Some(mp) => farm_view(mp).await,
        None => None,
    };
    let portions_of = |name: &str| -> Option<usize> {
        let (me, members) = view.as_ref()?;
        std::iter::once(me).chain(members.iter()).find(|s| s.node == name).map(|s| s.portions.len())
    };
    let per_node: Vec<_> = farm
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.name,
                "mp": n.mp.to_string(),
                "sessions": per_sessions.get(&n.mp.to_string()).copied().unwrap_or(0),
                "portions": portions_of(&n.name).unwrap_or(0),
                "killed": Some(&n.name) == killed.as_ref(),
            })
        })
        .collect();
    let mut lat = tally.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    let calls = tally.calls.load(Ordering::Relaxed);
    let answered = tally.answered.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    Ok(json!({
        "clients": farm_clients.len(),
        "fat_clients": fat_clients,
        "calls": calls,
        "answered": answered,
        "failed": failed,
        "lost": calls - answered - failed,
        "wrong": tally.wrong.load(Ordering::Relaxed),
        "local_calls": tally.local.load(Ordering::Relaxed),
        "p50_ms": Percentiles::of_ms(lat.iter().map(|&us| us as f64 / 1e3), 0.50),
        "p99_ms": Percentiles::of_ms(lat.iter().map(|&us| us as f64 / 1e3), 0.99),
        "reopened_clients": reopened,
        "va_kept": va_kept,
        "killed": killed,
        "per_node": per_node,
    }))
}
