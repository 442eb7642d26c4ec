//! `dabs bench decider`: how long a farm answers no group open when its decider goes, and what
//! an open through the group costs, under each registry. Each round starts a 3-node local farm
//! (real node processes), waits until it answers opens through the group, times a run of
//! opens, then kills the decider (SIGKILL) or stops it (SIGTERM) and times a new open through
//! the group from that moment until it is answered by a survivor.

use crate::bench::pct;
use crate::farm::{EtcdFarm, LocalFarm};
use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Opens timed per round while the farm is steady.
const OPENS_PER_ROUND: usize = 50;

/// What one round measured: the opens while steady and the failover, ms.
struct Round {
    opens_ms: Vec<f64>,
    failover_ms: f64,
}

/// An endpoint whose opens are re-sent every 20 ms until answered, so the time measured is
/// the farm's, not the client's back-off.
async fn endpoint() -> Result<EndpointHandle, String> {
    let config = Config {
        ack_timeout: Duration::from_millis(20),
        ack_timeout_max: Duration::from_millis(20),
        max_retries: 1000,
        ..Config::default()
    };
    dabs_net::spawn("127.0.0.1:0".parse().expect("literal"), DriverOptions { config, ..Default::default() })
        .await
        .map_err(|e| e.to_string())
}

/// One open through the group, answered within 2 s: its time, ms.
async fn open(ep: &EndpointHandle, group: &Addr, ask: &[u8]) -> Result<f64, String> {
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(2), ep.open(group.clone(), 1, ask.to_vec())).await {
        Ok(Ok(s)) => {
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            s.close();
            Ok(ms)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 2 s".into()),
    }
}

async fn round(signal: i32, etcd: Option<&str>, index: usize) -> Result<Round, String> {
    let dir = std::env::temp_dir().join(format!("dabs-bench-decider-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A farm name per round: a killed decider's keys outlive its round by one lease.
    let etcd = etcd
        .map(|url| EtcdFarm { url: url.to_owned(), farm: format!("bench{}x{index}", std::process::id()) });
    let mut farm =
        LocalFarm::start_on(3, &dir, None, None, |_| "start_at_init = true\n".into(), None, etcd.as_ref())?;
    let ep = endpoint().await?;
    let group = Addr::Udp(std::net::SocketAddr::V4(farm.group));
    let ask = OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor();
    // Settled when a few opens in a row are answered.
    let settle = Instant::now() + Duration::from_secs(20);
    let mut answered = 0;
    while answered < 3 {
        if Instant::now() > settle {
            return Err("the farm never answered opens".into());
        }
        answered = if open(&ep, &group, &ask).await.is_ok() { answered + 1 } else { 0 };
    }
    let mut opens_ms = Vec::with_capacity(OPENS_PER_ROUND);
    for _ in 0..OPENS_PER_ROUND {
        opens_ms.push(open(&ep, &group, &ask).await?);
    }
    // The decider says so in its announcements, whatever the registry.
    let heard =
        crate::status::collect(farm.group, std::net::Ipv4Addr::LOCALHOST, Duration::from_millis(600)).await?;
    let decider =
        heard.iter().find(|m| m.decider).map(|m| m.node.clone()).ok_or("no member says it decides")?;
    let node =
        farm.nodes.iter().find(|n| n.name == decider).ok_or("the decider is not one of the farm's nodes")?;
    // SAFETY: kill(2) on a child of ours that has not been reaped.
    unsafe {
        libc::kill(node.child.id() as i32, signal);
    }
    let t = Instant::now();
    let s = tokio::time::timeout(Duration::from_secs(30), ep.open(group, 1, ask))
        .await
        .map_err(|_| "no answer within 30 s after the decider went".to_owned())?
        .map_err(|e| e.to_string())?;
    let failover_ms = t.elapsed().as_secs_f64() * 1000.0;
    s.close();
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Round { opens_ms, failover_ms })
}

fn row(case: &str, mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({
        "case": case, "samples": ms.len(), "p50_ms": pct(&ms, 0.5), "p99_ms": pct(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(0.0),
    })
}

/// Runs `rounds` rounds of each case (kill, clean stop) on multicast and, with `etcd`, on
/// etcd, and prints a Markdown table or JSON.
pub fn run(rounds: usize, etcd: Option<String>, as_json: bool) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut rows = Vec::new();
    let registries: Vec<(&str, Option<&str>)> =
        std::iter::once(("multicast", None)).chain(etcd.as_deref().map(|u| ("etcd", Some(u)))).collect();
    let mut farms = 0;
    for (registry, url) in registries {
        let mut opens = Vec::new();
        for (case, signal) in [("killed (SIGKILL)", libc::SIGKILL), ("stopped (SIGTERM)", libc::SIGTERM)] {
            let mut failover = Vec::with_capacity(rounds);
            for i in 0..rounds {
                farms += 1;
                match rt.block_on(round(signal, url, farms)) {
                    Ok(r) => {
                        failover.push(r.failover_ms);
                        opens.extend(r.opens_ms);
                    }
                    Err(e) => {
                        eprintln!("dabs bench decider: {registry}, decider {case}, round {}: {e}", i + 1);
                        return ExitCode::FAILURE;
                    }
                }
            }
            rows.push(row(&format!("{registry}: decider {case} → next open answered"), failover));
        }
        rows.push(row(&format!("{registry}: open through the group (steady farm)"), opens));
    }
    let out = if as_json {
        crate::out::line(serde_json::Value::from(rows))
    } else {
        let mut text =
            String::from("| case | samples | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|");
        for r in &rows {
            text.push_str(&format!(
                "\n| {} | {} | {:.1} | {:.1} | {:.1} |",
                r["case"].as_str().unwrap_or(""),
                r["samples"],
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0)
            ));
        }
        crate::out::line(text)
    };
    crate::out::finish("dabs bench decider", out)
}
