//! `dabs bench jobs`: tasks per second and submit-to-start latency of the job service, for
//! empty and 1 ms tasks, 1 and 8 submitters, beside Ray's and Dask's local clusters in the same
//! run (scripts/bench-jobs-peers installs them in a venv of its own).
//!
//! The farm is 2 nodes with 1 worker thread each (2 workers, as the peers get 2). Each
//! submitter submits its share of the tasks one task per job, back to back (the peers submit
//! one task per call), each job naming an `mp://` notify address on this process's MP
//! endpoint; a task's start is the compute server's clock, its submission this process's (one
//! machine, one clock). Tasks per second: all tasks over the time from the first submission
//! to the last `JOB_DONE`. A second dabs row submits each submitter's share as one job of many
//! tasks (the service's own batch).

use super::{busy_module, calibrate, input, job_body, pct};
use crate::farm::{LocalFarm, generate_secret};
use dabs_net::{DriverOptions, EndpointHandle};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one case may take.
const CASE_LIMIT: Duration = Duration::from_secs(180);
/// The queue this process's endpoint takes `JOB_DONE` on.
const NOTIFY_QUEUE: u16 = 7;
/// The peers' script.
const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench-jobs-peers");

/// One measured case.
#[derive(Clone, Debug)]
struct Case {
    kind: &'static str,
    submitters: usize,
    tasks: usize,
}

/// Runs the benchmark; `tasks` per empty case (1 ms cases run a quarter of them).
pub fn run(tasks: usize, peers: bool, json_out: bool) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("dabs-bench-jobs-{}", std::process::id()));
    let outcome = rt.block_on(bench(&dir, tasks.max(8), peers));
    let _ = std::fs::remove_dir_all(&dir);
    match outcome {
        Ok(rows) => {
            println!(
                "\n| system | mode | kind | submitters | tasks | tasks/s | submit→start p50 ms | p99 ms | tasks/s ×dabs | p50 ×dabs |"
            );
            println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
            for r in &rows {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r["system"].as_str().unwrap_or(""),
                    r["mode"].as_str().unwrap_or(""),
                    r["kind"].as_str().unwrap_or(""),
                    r["submitters"],
                    r["tasks"],
                    r["tasks_per_s"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["tasks_per_s_ratio"],
                    r["p50_ratio"],
                );
            }
            if json_out {
                println!("{}", Value::Array(rows));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dabs bench jobs: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(dir: &std::path::Path, tasks: usize, peers: bool) -> Result<Vec<Value>, String> {
    let spins_1ms = calibrate(Duration::from_millis(1));
    eprintln!("a 1 ms task is {spins_1ms} turns of the module's loop here");
    let secret = generate_secret();
    let farm = LocalFarm::start_each(2, dir, Some(&secret), |_| "\n[jobs]\nthreads = 1\n".to_owned())?;
    let urls: Vec<String> = farm.nodes.iter().filter_map(|n| n.operator.clone()).collect();
    wait_ready(&urls[0], 2).await?;
    let done_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let endpoint = notify_endpoint(done_at.clone()).await?;
    let notify = format!("mp://{}/{NOTIFY_QUEUE}", endpoint.local_addrs().udp);
    let mut rows = Vec::new();
    for kind in ["empty", "1ms"] {
        for submitters in [1usize, 8] {
            let case = Case { kind, submitters, tasks: if kind == "empty" { tasks } else { tasks / 4 } };
            let spins = if kind == "empty" { 0 } else { spins_1ms };
            let mut case_rows = Vec::new();
            for per_task in [true, false] {
                eprintln!(
                    "dabs {kind} × {submitters} submitters, {} ...",
                    if per_task { "a job per task" } else { "a job per submitter" }
                );
                let r = dabs_case(&urls, &farm.token, &case, spins, per_task, &notify, &done_at).await?;
                case_rows.push(r);
            }
            if peers {
                for system in ["ray", "dask"] {
                    eprintln!("{system} {kind} × {submitters} submitters ...");
                    match peer_case(system, &case) {
                        Ok(r) => case_rows.push(r),
                        Err(e) => eprintln!("  {system}: {e}"),
                    }
                }
            }
            // Ratios against dabs submitting a submitter's tasks at once, as the peers' scripts
            // do (they issue every call before waiting for any); a job per task waits for each
            // durable acceptance, so it never builds the peers' queue.
            let (base_tps, base_p50) = (
                case_rows[1]["tasks_per_s"].as_f64().unwrap_or(0.0),
                case_rows[1]["p50_ms"].as_f64().unwrap_or(0.0),
            );
            for r in &mut case_rows {
                let tps = r["tasks_per_s"].as_f64().unwrap_or(0.0);
                let p50 = r["p50_ms"].as_f64().unwrap_or(0.0);
                r["tasks_per_s_ratio"] = json!(round2(tps / base_tps.max(1e-9)));
                r["p50_ratio"] = json!(round2(p50 / base_p50.max(1e-9)));
            }
            rows.extend(case_rows);
        }
    }
    endpoint.shutdown().await;
    Ok(rows)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

async fn wait_ready(url: &str, n: usize) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let v = dabs_ops::get_json(url, "/api/farm").await.unwrap_or_default();
        let members = v["members"].as_array().cloned().unwrap_or_default();
        if members.iter().filter(|m| !m["compute"].is_null()).count() == n
            && members.iter().any(|m| m["balancer"] == true)
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("the farm did not form in 30 s: {v}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// This process's MP endpoint, recording when each job's `JOB_DONE` arrives.
async fn notify_endpoint(done_at: Arc<Mutex<HashMap<String, Instant>>>) -> Result<EndpointHandle, String> {
    let endpoint = dabs_net::spawn("127.0.0.1:0".parse().expect("literal"), DriverOptions::default())
        .await
        .map_err(|e| format!("cannot bind an MP endpoint: {e}"))?;
    let mut opens = endpoint.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let _ = open.accept(NOTIFY_QUEUE, Vec::new()).await;
        }
    });
    let mut requests = endpoint.register_queue(NOTIFY_QUEUE);
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let at = Instant::now();
            let body: Value = serde_json::from_slice(&req.request.payload).unwrap_or_default();
            if let Some(id) = body["id"].as_str() {
                done_at.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), at);
            }
            req.reply(Vec::new());
        }
    });
    Ok(endpoint)
}

async fn dabs_case(
    urls: &[String],
    token: &str,
    case: &Case,
    spins: u32,
    per_task: bool,
    notify: &str,
    done_at: &Arc<Mutex<HashMap<String, Instant>>>,
) -> Result<Value, String> {
    let module = Arc::new(busy_module());
    let share = case.tasks / case.submitters;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for s in 0..case.submitters {
        // Submitters spread over the nodes, as clients of a farm would.
        let (url, token, module, notify) =
            (urls[s % urls.len()].clone(), token.to_owned(), module.clone(), notify.to_owned());
        handles.push(tokio::spawn(async move {
            let mut jobs: Vec<(String, u64, String)> = Vec::new();
            let batches: Vec<Vec<Vec<u8>>> = if per_task {
                (0..share).map(|i| vec![input(i as u32, spins)]).collect()
            } else {
                vec![(0..share).map(|i| input(i as u32, spins)).collect()]
            };
            for batch in batches {
                let mut body = job_body(&module, &batch);
                body["notify"] = notify.clone().into();
                let submitted = unix_us();
                let accepted = dabs_ops::post_json(&url, Some(&token), "/api/jobs", &body).await?;
                let id = accepted["id"].as_str().ok_or("no job id")?.to_owned();
                jobs.push((id, submitted, url.clone()));
            }
            Ok::<_, String>(jobs)
        }));
    }
    let mut jobs = Vec::new();
    for h in handles {
        jobs.extend(h.await.map_err(|e| e.to_string())??);
    }
    // Every job's JOB_DONE, then the time of the last.
    let last = loop {
        let at = done_at.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if jobs.iter().all(|(id, ..)| at.contains_key(id)) {
            break jobs.iter().filter_map(|(id, ..)| at.get(id)).max().copied().unwrap_or_else(Instant::now);
        }
        if t0.elapsed() > CASE_LIMIT {
            return Err(format!("{case:?}: not every job was done in {CASE_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let seconds = last.duration_since(t0).as_secs_f64();
    let mut latencies = Vec::new();
    for (id, submitted, url) in &jobs {
        let r = dabs_ops::get_json(url, &format!("/api/jobs/{id}/result?timing=true")).await?;
        for t in r["results"].as_array().cloned().unwrap_or_default() {
            if t["ok"].is_null() {
                return Err(format!("job {id} task {} failed: {}", t["task"], t["err"]));
            }
            latencies.push(t["started_us"].as_u64().unwrap_or(0).saturating_sub(*submitted) as f64 / 1000.0);
        }
    }
    let n = share * case.submitters;
    Ok(json!({
        "system": "dabs",
        "version": env!("CARGO_PKG_VERSION"),
        "mode": if per_task { "a job per task" } else { "a job per submitter" },
        "kind": case.kind,
        "submitters": case.submitters,
        "tasks": n,
        "workers": 2,
        "tasks_per_s": (n as f64 / seconds).round(),
        "p50_ms": round2(pct(&latencies, 0.5)),
        "p99_ms": round2(pct(&latencies, 0.99)),
    }))
}

/// Runs `scripts/bench-jobs-peers` for one case and reads its last line.
fn peer_case(system: &str, case: &Case) -> Result<Value, String> {
    let out = std::process::Command::new("bash")
        .arg(PEERS)
        .args(["--system", system, "--kind", case.kind])
        .args([
            "--submitters",
            &case.submitters.to_string(),
            "--tasks",
            &case.tasks.to_string(),
            "--workers",
            "2",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {PEERS}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{PEERS} failed ({}): {text}", out.status));
    }
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let mut v: Value = serde_json::from_str(last).map_err(|e| format!("{system}: not JSON ({e}): {last}"))?;
    v["mode"] = "a call per task".into();
    Ok(v)
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}
