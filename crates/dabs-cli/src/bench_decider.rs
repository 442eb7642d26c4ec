//! `dabs bench decider`: how long a farm answers no group open when its decider goes. Each
//! round starts a 3-node local farm (real node processes), waits until it answers opens
//! through the group, then kills the decider (SIGKILL) or stops it (SIGTERM) and times a new
//! open through the group from that moment until it is answered by a survivor.

use crate::bench::pct;
use crate::farm::LocalFarm;
use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, Config, DriverOptions};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// One round: the time from the signal to the answer, ms.
async fn round(signal: i32) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!("dabs-bench-decider-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut farm = LocalFarm::start(3, &dir, None)?;
    // Short, flat retries: the open is re-sent every 20 ms until someone answers, so the
    // time measured is the farm's, not the client's back-off.
    let config = Config {
        ack_timeout: Duration::from_millis(20),
        ack_timeout_max: Duration::from_millis(20),
        max_retries: 1000,
        ..Config::default()
    };
    let ep = dabs_net::spawn(
        "127.0.0.1:0".parse().expect("literal"),
        DriverOptions { config, ..Default::default() },
    )
    .await
    .map_err(|e| e.to_string())?;
    let group = Addr::Udp(std::net::SocketAddr::V4(farm.group));
    let ask = OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor();
    // The decider is the member that started first, node-1, and it decides only once it has
    // been up one lease: the farm answering a few opens in a row means node-1 decides.
    let settle = Instant::now() + Duration::from_secs(20);
    let mut answered = 0;
    while answered < 3 {
        if Instant::now() > settle {
            return Err("the farm never answered opens".into());
        }
        match tokio::time::timeout(Duration::from_secs(2), ep.open(group.clone(), 1, ask.clone())).await {
            Ok(Ok(s)) => {
                s.close();
                answered += 1;
            }
            _ => answered = 0,
        }
    }
    let pid = farm.nodes[0].child.id() as i32;
    // SAFETY: kill(2) on a child of ours that has not been reaped.
    unsafe {
        libc::kill(pid, signal);
    }
    let t = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(30), ep.open(group, 1, ask))
        .await
        .map_err(|_| "no answer within 30 s after the decider went".to_owned())?
        .map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    s.close();
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ms)
}

/// Runs `rounds` rounds of each (kill, clean stop) and prints a Markdown table or JSON.
pub fn run(rounds: usize, as_json: bool) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut rows = Vec::new();
    for (case, signal) in
        [("decider killed (SIGKILL)", libc::SIGKILL), ("decider stopped (SIGTERM)", libc::SIGTERM)]
    {
        let mut ms = Vec::with_capacity(rounds);
        for i in 0..rounds {
            match rt.block_on(round(signal)) {
                Ok(m) => ms.push(m),
                Err(e) => {
                    eprintln!("dabs bench decider: {case}, round {}: {e}", i + 1);
                    return ExitCode::FAILURE;
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        rows.push(json!({
            "case": case, "rounds": ms.len(), "p50_ms": pct(&ms, 0.5), "p99_ms": pct(&ms, 0.99),
            "max_ms": ms.last().copied().unwrap_or(0.0),
        }));
    }
    let out = if as_json {
        crate::out::line(serde_json::Value::from(rows))
    } else {
        let mut text =
            String::from("| case | rounds | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
        for r in &rows {
            text.push_str(&format!(
                "\n| {} | {} | {:.0} | {:.0} | {:.0} |",
                r["case"].as_str().unwrap_or(""),
                r["rounds"],
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0)
            ));
        }
        crate::out::line(text)
    };
    crate::out::finish("dabs bench decider", out)
}
