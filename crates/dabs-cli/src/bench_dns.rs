//! `dabs bench dns`: the DNS front measured. (1) How soon the answer follows a load change: on
//! a 3-node farm whose calculator policy is `fewest_clients`, a client is placed on the
//! preferred server, and node-1's front is asked every 2 ms until it names another; the time
//! from the open's answer to the new DNS answer, over many rounds. (2) With `--dnsperf S`,
//! queries per second and latency from Debian's dnsperf against node-1's front and, in the same
//! run, against NSD serving the same zone statically (`scripts/bench-dns` installs both).

use crate::bench::pct;
use crate::farm::LocalFarm;
use dabs_dns::proto::op::{Message, MessageType, OpCode, Query};
use dabs_dns::proto::rr::{Name, RData, RecordType};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// The SRV target of `_calc._mp._udp.local.dabs.` at `dns`, by one UDP query.
async fn srv_target(
    sock: &tokio::net::UdpSocket,
    dns: SocketAddr,
    id: u16,
) -> Result<Option<String>, String> {
    let name = Name::from_ascii("_calc._mp._udp.local.dabs.").map_err(|e| e.to_string())?;
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(name, RecordType::SRV));
    sock.send_to(&q.to_vec().map_err(|e| e.to_string())?, dns).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
            .await
            .map_err(|_| format!("no DNS answer from {dns} in 500 ms"))?
            .map_err(|e| e.to_string())?;
        let m = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
        if m.metadata.id != id {
            continue; // a late answer to an earlier query
        }
        return Ok(m.answers.iter().find_map(|r| match &r.data {
            RData::SRV(s) => Some(s.target.to_string()),
            _ => None,
        }));
    }
}

/// Rounds of: place a client on the preferred server, time until the front names another.
/// Also returns how many clients were placed untimed: landed elsewhere, or after which
/// node-1's figures tie and the loads may keep the answer.
async fn follow(farm: &LocalFarm, rounds: usize) -> Result<(Vec<f64>, usize), String> {
    let dns = farm.nodes[0].dns.ok_or("node-1 serves no DNS")?;
    let operator = farm.nodes[0].operator.clone().ok_or("node-1 has no operator interface")?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let group = SocketAddr::V4(farm.group);
    let mut held = Vec::new();
    let mut ms = Vec::with_capacity(rounds);
    let mut id = 0u16;
    let mut skipped = 0;
    let mut round = 0;
    while ms.len() < rounds {
        round += 1;
        // The front answers the same server twice in a row: the farm has settled.
        let mut before = None;
        let settle = Instant::now() + Duration::from_secs(10);
        loop {
            id = id.wrapping_add(1);
            let now = srv_target(&sock, dns, id).await?;
            if now.is_some() && now == before {
                break;
            }
            before = now;
            if Instant::now() > settle {
                return Err(format!("round {round}: the answer never settled"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // One more client changes the preference only if the answered server then has more
        // clients than the next one; after a tie, the servers' loads decide, and those may
        // keep the same server first. Such rounds place a client but are not timed.
        let preferred = before.as_deref().and_then(|t| t.strip_suffix(".local.dabs."));
        let view = dabs_ops::get_json(&operator, "/api/applications/calc/policy").await?;
        let figure = |i: usize| view["ranked"][i]["figure"].as_f64();
        let changes = view["ranked"][0]["node"].as_str() == preferred
            && matches!((figure(0), figure(1)), (Some(a), Some(b)) if a + 1.0 > b);
        let (calc, client) = crate::calc::connect(group, dabs_calc::Profile::Thin).await?;
        let placed = Instant::now();
        // The decider placed it by its own view, which can differ from node-1's by an
        // announcement: only a client that landed on the answered server changes the answer.
        let on = farm.nodes.iter().find(|n| Some(n.name.as_str()) == preferred).map(|n| n.mp);
        if !changes || client.server().await.map(|a| a.to_string()) != on.map(|a| a.to_string()) {
            skipped += 1;
            held.push((calc, client));
            if skipped > 8 * rounds {
                return Err(format!("{skipped} clients placed that could not move the answer"));
            }
            continue;
        }
        let deadline = placed + Duration::from_secs(10);
        loop {
            id = id.wrapping_add(1);
            let now = srv_target(&sock, dns, id).await?;
            if now.is_some() && now != before {
                ms.push(placed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("round {round}: the answer stayed {before:?} for 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        held.push((calc, client));
    }
    for (_, client) in held {
        client.stop().await;
    }
    Ok((ms, skipped))
}

/// The zone NSD serves: what the farm's front answers, as a static file.
fn nsd_zone(farm: &LocalFarm) -> String {
    let mut z = String::from(
        "$ORIGIN local.dabs.\n$TTL 5\n@ IN SOA node-1 hostmaster 1 3600 600 86400 5\n@ IN NS node-1\n",
    );
    for n in &farm.nodes {
        z.push_str(&format!("{} IN A {}\n", n.name, n.mp.ip()));
    }
    let first = &farm.nodes[0];
    z.push_str(&format!(
        "calc IN A {}\n_calc._mp._udp IN SRV 0 0 {} {}\n",
        first.mp.ip(),
        first.mp.port(),
        first.name
    ));
    z
}

/// Starts NSD on 127.0.0.1:`port` serving [`nsd_zone`] from `dir`, in the foreground (`-d`).
fn start_nsd(farm: &LocalFarm, dir: &Path, port: u16) -> Result<std::process::Child, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("local.dabs.zone"), nsd_zone(farm)).map_err(|e| e.to_string())?;
    let d = dir.display();
    // As many server processes as the node has runtime threads (one per CPU). Response rate
    // limiting off: it is on by default and would drop most of a benchmark's queries, and the
    // DNS front has none.
    let servers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  server-count: {servers}\n  zonesdir: \"{d}\"\n  \
         pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         database: \"\"\n  username: \"\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 0\n  rrl-ratelimit: 0\n\
         remote-control:\n  control-enable: no\nzone:\n  name: local.dabs\n  zonefile: local.dabs.zone\n"
    );
    std::fs::write(dir.join("nsd.conf"), conf).map_err(|e| e.to_string())?;
    Command::new("nsd")
        .args(["-d", "-c"])
        .arg(dir.join("nsd.conf"))
        .spawn()
        .map_err(|e| format!("cannot start nsd (scripts/bench-dns installs it): {e}"))
}

/// One dnsperf run: (queries per second, mean latency ms, p50 ms, p99 ms when `verbose`).
fn dnsperf(
    at: SocketAddr,
    queries: &Path,
    seconds: u64,
    max_qps: Option<u32>,
) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new("dnsperf");
    cmd.args(["-s", &at.ip().to_string(), "-p", &at.port().to_string(), "-l", &seconds.to_string(), "-d"])
        .arg(queries)
        .args(["-c", "4", "-q", "200", "-t", "2"]);
    if let Some(q) = max_qps {
        // A fixed rate, each query's latency reported: percentiles below saturation.
        cmd.args(["-Q", &q.to_string(), "-v"]);
    }
    let out = cmd.output().map_err(|e| format!("cannot run dnsperf (scripts/bench-dns installs it): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let figure = |label: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let qps = figure("Queries per second:").ok_or_else(|| format!("dnsperf printed no rate: {text}"))?;
    let lost = figure("Queries lost:").unwrap_or(0.0);
    let mean_ms = figure("Average Latency (s):").unwrap_or(f64::NAN) * 1000.0;
    let mut lat: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    let (p50, p99) =
        if lat.is_empty() { (None, None) } else { (Some(pct(&lat, 0.5)), Some(pct(&lat, 0.99))) };
    Ok(json!({"qps": qps, "lost": lost, "mean_ms": mean_ms, "p50_ms": p50, "p99_ms": p99}))
}

/// A free UDP and TCP port on loopback for NSD.
fn free_port() -> Result<u16, String> {
    for _ in 0..16 {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = u.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port for NSD".into())
}

/// `dabs bench dns`.
pub fn run(rounds: usize, dnsperf_seconds: u64, qps_for_latency: u32, as_json: bool) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("dabs-bench-dns-{}", std::process::id()));
    let mut farm =
        match LocalFarm::start_with(3, &dir, None, "start_at_init = true\npolicy = \"fewest_clients\"\n") {
            Ok(f) => f,
            Err(e) => {
                eprintln!("dabs bench dns: {e}");
                return ExitCode::FAILURE;
            }
        };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let result = (|| -> Result<serde_json::Value, String> {
        let (follow_ms, skipped) = rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(1600)).await;
            follow(&farm, rounds).await
        })?;
        let mut sorted = follow_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let mut report = json!({
            "follow": {"rounds": rounds, "untimed": skipped, "p50_ms": pct(&sorted, 0.5), "p99_ms": pct(&sorted, 0.99),
                "max_ms": sorted.last().copied().unwrap_or(0.0)},
        });
        if dnsperf_seconds > 0 {
            let front = farm.nodes[0].dns.ok_or("node-1 serves no DNS")?;
            let queries = dir.join("queries.txt");
            std::fs::write(
                &queries,
                "calc.local.dabs A\n_calc._mp._udp.local.dabs SRV\nnode-2.local.dabs A\nnope.local.dabs A\n",
            )
            .map_err(|e| e.to_string())?;
            let port = free_port()?;
            let mut nsd = start_nsd(&farm, &dir.join("nsd"), port)?;
            let nsd_at: SocketAddr = ([127, 0, 0, 1], port).into();
            // NSD is up when it answers.
            let up = Instant::now() + Duration::from_secs(10);
            while dnsperf(nsd_at, &queries, 1, Some(10)).map(|r| r["qps"].as_f64() > Some(1.0)) != Ok(true) {
                if Instant::now() > up {
                    let _ = nsd.kill();
                    return Err("NSD did not answer within 10 s".into());
                }
            }
            let runs = (|| -> Result<_, String> {
                let f_max = dnsperf(front, &queries, dnsperf_seconds, None)?;
                let n_max = dnsperf(nsd_at, &queries, dnsperf_seconds, None)?;
                let f_lat = dnsperf(front, &queries, dnsperf_seconds, Some(qps_for_latency))?;
                let n_lat = dnsperf(nsd_at, &queries, dnsperf_seconds, Some(qps_for_latency))?;
                Ok((f_max, n_max, f_lat, n_lat))
            })();
            let _ = nsd.kill();
            let _ = nsd.wait();
            let (f_max, n_max, f_lat, n_lat) = runs?;
            let ratio = f_max["qps"].as_f64().unwrap_or(0.0) / n_max["qps"].as_f64().unwrap_or(f64::NAN);
            report["dnsperf"] = json!({
                "seconds": dnsperf_seconds, "fixed_rate_qps": qps_for_latency,
                "front": {"max": f_max, "at_fixed_rate": f_lat},
                "nsd": {"max": n_max, "at_fixed_rate": n_lat},
                "qps_ratio_front_to_nsd": ratio,
            });
        }
        Ok(report)
    })();
    farm.stop();
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(r) if as_json => crate::out::finish("dabs bench dns", crate::out::line(r)),
        Ok(r) => {
            let f = &r["follow"];
            let mut text = format!(
                "load change → new DNS answer over {} rounds ({} more clients placed untimed: elsewhere, or into a tie): \
                 p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                f["rounds"],
                f["untimed"],
                f["p50_ms"].as_f64().unwrap_or(0.0),
                f["p99_ms"].as_f64().unwrap_or(0.0),
                f["max_ms"].as_f64().unwrap_or(0.0)
            );
            if let Some(d) = r.get("dnsperf") {
                let row = |who: &str, v: &serde_json::Value| {
                    format!(
                        "\n| {who} | {:.0} | {} | {:.3} | {:.3} | {:.3} |",
                        v["max"]["qps"].as_f64().unwrap_or(0.0),
                        v["max"]["lost"],
                        v["max"]["mean_ms"].as_f64().unwrap_or(f64::NAN),
                        v["at_fixed_rate"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                        v["at_fixed_rate"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    )
                };
                text.push_str(&format!(
                    "\n\n| server | qps (max) | lost | mean ms at max | p50 ms at {q}/s | p99 ms at {q}/s |\n|---|---:|---:|---:|---:|---:|",
                    q = d["fixed_rate_qps"]
                ));
                text.push_str(&row("dabs DNS front", &d["front"]));
                text.push_str(&row("NSD", &d["nsd"]));
                text.push_str(&format!(
                    "\n\nqps ratio, front / NSD: {:.2}",
                    d["qps_ratio_front_to_nsd"].as_f64().unwrap_or(f64::NAN)
                ));
            }
            crate::out::finish("dabs bench dns", crate::out::line(text))
        }
        Err(e) => {
            eprintln!("dabs bench dns: {e}");
            ExitCode::FAILURE
        }
    }
}
