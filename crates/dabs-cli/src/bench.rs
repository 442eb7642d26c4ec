//! `dabs bench open`: how long an `OPEN_SESSION` through the farm group takes, when a portion
//! is already running and when one must be started for the client. Real node processes.

use crate::farm::LocalFarm;
use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, DriverOptions};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The quantile `p` of times in ms.
pub(crate) fn pct(ms: &[f64], p: f64) -> f64 {
    dabs_node::calls::Percentiles::of_ms(ms.iter().copied(), p)
}

/// Times `samples` opens through the group. With `hold`, every session stays open until the
/// end: with one session per portion, each open then needs a new portion (a closed session
/// would free its portion for the next open).
async fn measure(farm: &LocalFarm, samples: usize, hold: bool) -> Result<Vec<f64>, String> {
    let ep = dabs_net::spawn("127.0.0.1:0".parse().expect("literal"), DriverOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let group = Addr::Udp(std::net::SocketAddr::V4(farm.group));
    let ask = OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor();
    // The farm answers once it has a decider; the first open waits for that.
    let warm =
        ep.open(group.clone(), 1, ask.clone()).await.map_err(|e| format!("farm never answered: {e}"))?;
    warm.close();
    let mut ms = Vec::with_capacity(samples);
    let mut held = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let s = ep.open(group.clone(), 1, ask.clone()).await.map_err(|e| e.to_string())?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if hold {
            held.push(s);
        } else {
            s.close();
        }
    }
    for s in held {
        s.close();
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// Runs both cases and prints a Markdown table, or with `as_json` one JSON array of the cases.
pub fn open_latency(samples: usize, as_json: bool) -> ExitCode {
    let cases = [
        ("portion already running", "start_at_init = true\n", false),
        ("portion to be started", "start_at_init = false\nmax_sessions_per_portion = 1\n", true),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut rows = Vec::new();
    if !as_json {
        // The table's rows are printed as each case ends: the header first.
        let header =
            crate::out::line("| case | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
        if header.is_err() {
            return crate::out::finish("dabs bench open", header);
        }
    }
    for (label, app, hold) in cases {
        let dir = std::env::temp_dir().join(format!("dabs-bench-open-{}", std::process::id()));
        let mut farm = match LocalFarm::start_with(3, &dir, None, app) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("dabs bench open: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(1600)).await;
            measure(&farm, samples, hold).await
        });
        farm.stop();
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Ok(ms) => {
                let (p50, p99, max) = (pct(&ms, 0.5), pct(&ms, 0.99), ms.last().copied().unwrap_or(0.0));
                rows.push(serde_json::json!({
                    "case": label, "samples": ms.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max,
                }));
                if !as_json {
                    let row = format!("| {label} | {} | {p50:.3} | {p99:.3} | {max:.3} |", ms.len());
                    if let Err(e) = crate::out::line(row) {
                        return crate::out::finish("dabs bench open", Err(e));
                    }
                }
            }
            Err(e) => {
                eprintln!("dabs bench open: {label}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if as_json {
        return crate::out::finish("dabs bench open", crate::out::line(serde_json::Value::from(rows)));
    }
    ExitCode::SUCCESS
}

/// What `dabs bench load` measured.
struct Load {
    clients: usize,
    seconds: f64,
    answered: u64,
    failed: u64,
    us: Vec<u64>,
}

/// `clients` thin calculator clients on a 3-node farm, each calling back to back (one call at
/// a time) for `seconds`: the calls per second the farm sustains and their latency.
async fn drive_load(farm: &LocalFarm, clients: usize, seconds: f64) -> Result<Load, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let group = std::net::SocketAddr::V4(farm.group);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        set.spawn(crate::calc::connect(group, dabs_calc::Profile::Thin));
    }
    let mut started = Vec::with_capacity(clients);
    while let Some(r) = set.join_next().await {
        started.push(r.map_err(|e| e.to_string())??);
    }
    let failed = Arc::new(AtomicU64::new(0));
    let duration = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    let (calcs, farm_clients): (Vec<_>, Vec<_>) = started.into_iter().unzip();
    for (i, calc) in calcs.into_iter().enumerate() {
        let failed = failed.clone();
        workers.spawn(async move {
            let mut us = Vec::new();
            // Bounded in count as well as time: at most one call per 20 µs of the run.
            let cap = (seconds * 50_000.0) as usize;
            let mut n = i as i64;
            while Instant::now() < deadline && us.len() < cap {
                n += 1;
                let t = Instant::now();
                match calc.compute("+", dabs_calc::Operands::Float(n as f64, 0.5)).await {
                    Ok(_) => us.push(t.elapsed().as_micros() as u64),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            us
        });
    }
    let mut us = Vec::new();
    while let Some(r) = workers.join_next().await {
        us.extend(r.map_err(|e| e.to_string())?);
    }
    let seconds = start.elapsed().as_secs_f64();
    for client in &farm_clients {
        client.stop().await;
    }
    us.sort_unstable();
    Ok(Load { clients, seconds, answered: us.len() as u64, failed: failed.load(Ordering::Relaxed), us })
}

/// `dabs bench load`: prints one Markdown row (or a JSON object) of the farm's sustained load.
pub fn farm_load(clients: usize, seconds: f64, as_json: bool) -> ExitCode {
    if clients == 0 || !(0.5..=600.0).contains(&seconds) {
        eprintln!("dabs bench load: --clients must be at least 1 and --seconds in 0.5..600");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("dabs-bench-load-{}", std::process::id()));
    let mut farm = match LocalFarm::start_with(3, &dir, None, "start_at_init = true\n") {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dabs bench load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // One lease for the members to hear each other and a decider to settle.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        drive_load(&farm, clients, seconds).await
    });
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let load = match result {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dabs bench load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ms: Vec<f64> = load.us.iter().map(|&u| u as f64 / 1000.0).collect();
    let per_s = load.answered as f64 / load.seconds;
    let (p50, p99) = (pct(&ms, 0.5), pct(&ms, 0.99));
    let out = if as_json {
        crate::out::line(serde_json::json!({
            "clients": load.clients, "seconds": load.seconds, "answered": load.answered,
            "failed": load.failed, "calls_per_s": per_s, "p50_ms": p50, "p99_ms": p99,
        }))
    } else {
        crate::out::line(format!(
            "| clients | seconds | answered | failed | calls/s | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|\n| {} | {:.1} | {} | {} | {per_s:.0} | {p50:.3} | {p99:.3} |",
            load.clients, load.seconds, load.answered, load.failed
        ))
    };
    crate::out::finish("dabs bench load", out)
}
