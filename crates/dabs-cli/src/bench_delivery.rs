//! `dabs bench delivery`: a client portion delivered in parts (issue 17, item 6), with real
//! node processes.
//!
//! - **bootstrap**: publishing key, listing, first set fetched, verified and instantiated,
//!   then the UDP channel established and the placed `integer-ops` fetched (loopback farm).
//! - **one `IntegerOps` call**: natively, in the client's sandbox (the farm's verified
//!   module, a fresh instance per call), and over the network partition (MP over UDP, TCP
//!   and the WebSocket to the node): the same `mul` through the same trait.
//! - **fallback** (needs root: two network namespaces on a bridge): time to a working channel
//!   with UDP to the farm blocked (nftables), then with TCP blocked too.

use crate::bench::pct;
use crate::calc::client_endpoint;
use crate::farm::LocalFarm;
use dabs_calc::modules::{INTEGER_OPS, WasmIntegerOps};
use dabs_calc::{IntClientPart, IntegerOps, LocalIntegerOps};
use dabs_sdk::delivery::{Bootstrap, DeviceProfile, deliver};
use dabs_sdk::{FarmClient, FarmClientOptions, Transport};
use serde_json::json;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

fn boot(ops: &str, farm: SocketAddr) -> Bootstrap {
    Bootstrap {
        ops: ops.into(),
        farm,
        app: dabs_calc::APP.into(),
        class: "native".into(),
        device: DeviceProfile::host(),
        publishing_key: None,
        options: None,
        features: Vec::new(),
    }
}

/// Percentiles of `ms` as a JSON row.
fn row(case: &str, mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({"case": case, "samples": ms.len(), "p50_ms": pct(&ms, 0.5), "p99_ms": pct(&ms, 0.99)})
}

/// Percentiles of call times in µs, unrounded (a native call takes nanoseconds).
fn row_us(case: &str, mut us: Vec<f64>) -> serde_json::Value {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us.get(((us.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    json!({"case": case, "samples": us.len(), "p50_us": at(0.5), "p99_us": at(0.99)})
}

/// Times `calls` calls of `mul` through `ops`, in µs each.
async fn time_calls(ops: &impl IntegerOps, calls: usize) -> Result<Vec<f64>, String> {
    let mut us = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        let got = ops.mul(i as i64, 7).await.map_err(|e| e.to_string())?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if got != i as i64 * 7 {
            return Err(format!("{i} x 7 answered {got}"));
        }
    }
    Ok(us)
}

async fn loopback(rounds: usize, calls: usize) -> Result<Vec<serde_json::Value>, String> {
    let dir = std::env::temp_dir().join(format!("dabs-bench-delivery-{}", std::process::id()));
    let mut farm = LocalFarm::start(1, &dir, None)?;
    let result = async {
        let node = &farm.nodes[0];
        let ops = node.operator.clone().ok_or("the node has no operator port")?;
        let mp = node.mp;
        let mut rows = Vec::new();
        let (mut first, mut total) = (Vec::new(), Vec::new());
        let mut module = None;
        for _ in 0..rounds {
            let d = deliver(client_endpoint(mp).await?, boot(&ops, mp)).await.map_err(|e| e.to_string())?;
            first.push(d.first_set.as_secs_f64() * 1000.0);
            total.push(d.total.as_secs_f64() * 1000.0);
            module = d.mutable.get(INTEGER_OPS).map(|v| v.bytes.clone());
            d.client.stop().await;
        }
        rows.push(row("bootstrap: first set fetched, verified, instantiated", first));
        rows.push(row("bootstrap: delivered and connected over UDP, integer-ops placed here", total));
        let module = module.ok_or("the farm did not place integer-ops on this host")?;
        let to_us = row_us;
        rows.push(to_us("IntegerOps.mul natively", time_calls(&LocalIntegerOps, calls).await?));
        let wasm = WasmIntegerOps::new(&module).map_err(|e| e.to_string())?;
        rows.push(to_us("IntegerOps.mul in the client's sandbox", time_calls(&wasm, calls).await?));
        let ws_addr: SocketAddr =
            ops.trim_start_matches("http://").parse().map_err(|_| "operator address is not IP:PORT")?;
        for (transport, farm_addr) in
            [(Transport::Udp, mp), (Transport::Tcp, mp), (Transport::WebSocket, ws_addr)]
        {
            let options =
                FarmClientOptions { transport, ..FarmClientOptions::new(farm_addr, dabs_calc::APP) };
            let client = Arc::new(
                FarmClient::start(client_endpoint(mp).await?, options).await.map_err(|e| e.to_string())?,
            );
            let net = IntClientPart::new(client.clone());
            let us = time_calls(&net, calls).await?;
            client.stop().await;
            rows.push(to_us(&format!("IntegerOps.mul over the network, MP over {}", transport.name()), us));
        }
        Ok::<_, String>(rows)
    }
    .await;
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Fallback times in two namespaces: node on host 1, the client on host 2.
fn fallback(rounds: usize) -> Result<Vec<serde_json::Value>, String> {
    let hosts =
        dabs_netns::Hosts::create(2).map_err(|e| format!("network namespaces (root, ip, nft): {e}"))?;
    let dir = std::env::temp_dir().join(format!("dabs-bench-fallback-{}", std::process::id()));
    let secret = crate::farm::generate_secret();
    let mut farm = LocalFarm::start_on(
        1,
        &dir,
        Some(&secret),
        None,
        |_| "start_at_init = true\n".into(),
        Some(hosts),
        None,
    )?;
    let result = (|| {
        let node = &farm.nodes[0];
        let ops = node.operator.clone().ok_or("the node has no operator port")?;
        let mp = node.mp;
        let hosts = farm.hosts.as_ref().ok_or("no hosts")?;
        let client_ns = hosts.host(2).name().to_owned();
        let measure = move |ops: String| -> Result<Vec<(f64, String)>, String> {
            dabs_netns::run_in(&client_ns, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let mut out = Vec::new();
                    for _ in 0..rounds {
                        let d = deliver(client_endpoint(mp).await?, boot(&ops, mp))
                            .await
                            .map_err(|e| e.to_string())?;
                        out.push((d.total.as_secs_f64() * 1000.0, d.transport.name().to_owned()));
                        d.client.stop().await;
                    }
                    Ok(out)
                })
            })
        };
        let mut rows = Vec::new();
        let mut record = |case: &str, runs: Vec<(f64, String)>, want: &str| -> Result<(), String> {
            if let Some((_, got)) = runs.iter().find(|(_, t)| t != want) {
                return Err(format!("{case}: settled on {got}, not {want}"));
            }
            rows.push(row(case, runs.into_iter().map(|(ms, _)| ms).collect()));
            Ok(())
        };
        record("delivered, nothing blocked (UDP)", measure(ops.clone())?, "udp")?;
        hosts.block_to(1, "udp", mp.port()).map_err(|e| e.to_string())?;
        record("delivered with UDP blocked (falls back to TCP)", measure(ops.clone())?, "tcp")?;
        hosts.block_to(1, "tcp", mp.port()).map_err(|e| e.to_string())?;
        record("delivered with UDP and TCP blocked (falls back to the WebSocket)", measure(ops)?, "ws")?;
        Ok::<_, String>(rows)
    })();
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs the benchmark: a Markdown table, or with `as_json` one JSON array.
pub fn run(rounds: usize, calls: usize, no_fallback: bool, as_json: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dabs bench delivery: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rows = match rt.block_on(loopback(rounds, calls)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dabs bench delivery: {e}");
            return ExitCode::FAILURE;
        }
    };
    drop(rt);
    if !no_fallback {
        match fallback(rounds.min(10)) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("dabs bench delivery: fallback: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if as_json {
        return crate::out::finish("dabs bench delivery", crate::out::line(serde_json::Value::from(rows)));
    }
    let native =
        rows.iter().find(|r| r["case"] == "IntegerOps.mul natively").and_then(|r| r["p50_us"].as_f64());
    let mut text =
        String::from("| case | samples | p50 | p99 | p50 vs native |\n|---|---:|---:|---:|---:|\n");
    for r in &rows {
        let (p50, p99, unit) = match r["p50_us"].as_f64() {
            Some(us) => (us, r["p99_us"].as_f64().unwrap_or(0.0), "µs"),
            None => (r["p50_ms"].as_f64().unwrap_or(0.0), r["p99_ms"].as_f64().unwrap_or(0.0), "ms"),
        };
        let ratio = match (unit, native) {
            ("µs", Some(n)) if n > 0.0 => format!("{:.1}×", p50 / n),
            _ => String::new(),
        };
        text.push_str(&format!(
            "| {} | {} | {p50:.3} {unit} | {p99:.3} {unit} | {ratio} |\n",
            r["case"].as_str().unwrap_or("?"),
            r["samples"]
        ));
    }
    crate::out::finish("dabs bench delivery", crate::out::line(text.trim_end()))
}
