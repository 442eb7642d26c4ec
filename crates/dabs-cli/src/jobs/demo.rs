//! `dabs demo jobs`: a 3-node farm runs one job of 10,000 tasks; half-way, the compute server
//! that is neither the job's owner nor its replica is killed (SIGKILL). Its tasks run
//! elsewhere once its registration lapses; the summary counts what was lost and what ran twice.

use super::{busy_module, calibrate, expected, input, job_body, pct, sum_counter};
use crate::farm::{LocalFarm, generate_secret};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long the whole job may take before the demo gives up.
const LIMIT: Duration = Duration::from_secs(300);

/// Runs the demo.
pub fn run(json_out: bool, tasks: usize) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("dabs-jobs-{}", std::process::id()));
    let outcome = rt.block_on(demo(&dir, tasks.clamp(1, dabs_farm_proto::jobs::MAX_TASKS)));
    let _ = std::fs::remove_dir_all(&dir);
    let s = match outcome {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dabs demo jobs: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("\nsummary");
    println!(
        "  tasks {}, done {}, failed {}, lost {}, run twice {} ({} placed again after {} was killed)",
        s["tasks"], s["done"], s["failed"], s["lost"], s["run_twice"], s["placed_again"], s["killed"]
    );
    println!("  tasks per node {}", s["per_node"]);
    println!(
        "  submit to start p50 {} ms, p99 {} ms; task run time p50 {} ms; {} tasks/s over {} s",
        s["start_p50_ms"], s["start_p99_ms"], s["run_p50_ms"], s["tasks_per_s"], s["seconds"]
    );
    if json_out {
        println!("{s}");
    }
    let ok = s["lost"] == 0 && s["failed"] == 0 && s["done"] == s["tasks"] && s["wrong"] == 0;
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn bar(done: u64, total: u64) {
    let width = 40;
    let filled = (done * width / total.max(1)) as usize;
    eprint!("\r  [{}{}] {done}/{total}", "#".repeat(filled), " ".repeat(width as usize - filled));
    let _ = std::io::stderr().flush();
}

async fn demo(dir: &std::path::Path, tasks: usize) -> Result<Value, String> {
    let spins = calibrate(Duration::from_micros(500));
    println!("3 nodes, one job of {tasks} tasks (about 0.5 ms each: {spins} turns of the module's loop)");
    let secret = generate_secret();
    let mut farm = LocalFarm::start_each(3, dir, Some(&secret), |_| "\n[jobs]\nthreads = 1\n".to_owned())?;
    let urls: Vec<String> = farm.nodes.iter().filter_map(|n| n.operator.clone()).collect();
    let token = farm.token.clone();
    // Ready when node-1 sees three compute servers and a balancer.
    let started = Instant::now();
    loop {
        let farm_view = dabs_ops::get_json(&urls[0], "/api/farm").await.unwrap_or_default();
        let members = farm_view["members"].as_array().cloned().unwrap_or_default();
        let computes = members.iter().filter(|m| !m["compute"].is_null()).count();
        if computes == 3 && members.iter().any(|m| m["balancer"] == true) {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("the farm did not form in 30 s: {farm_view}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let inputs: Vec<Vec<u8>> = (0..tasks as u32).map(|x| input(x, spins)).collect();
    let submitted_us = unix_us();
    let t0 = Instant::now();
    let accepted =
        dabs_ops::post_json(&urls[0], Some(&token), "/api/jobs", &job_body(&busy_module(), &inputs)).await?;
    let id = accepted["id"].as_str().ok_or("no job id")?.to_owned();
    let status = dabs_ops::get_json(&urls[0], &format!("/api/jobs/{id}")).await?;
    let (owner, replica) = (status["owner"].as_str().unwrap_or("").to_owned(), status["replica"].clone());
    println!("job {id}: owner {owner}, replica {}", replica.as_str().unwrap_or("none"));
    let victim = farm
        .nodes
        .iter()
        .position(|n| n.name != owner && Some(n.name.as_str()) != replica.as_str())
        .ok_or("no node is neither the owner nor the replica")?;
    let victim_name = farm.nodes[victim].name.clone();
    let mut killed = false;
    let total = tasks as u64;
    let mut shown = u64::MAX;
    loop {
        let s = dabs_ops::get_json(&urls[0], &format!("/api/jobs/{id}")).await?;
        let done = s["done"].as_u64().unwrap_or(0);
        if !killed && done >= total / 2 {
            farm.kill(victim);
            killed = true;
            eprintln!("\n  killed {victim_name} (SIGKILL) at {done} of {total}");
        }
        if done != shown {
            bar(done, total);
            shown = done;
        }
        if s["state"] == "done" {
            eprintln!();
            break;
        }
        if t0.elapsed() > LIMIT {
            return Err(format!("the job did not finish in {LIMIT:?}: {s}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let result = dabs_ops::get_json(&urls[0], &format!("/api/jobs/{id}/result?timing=true")).await?;
    let results = result["results"].as_array().cloned().unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    let (mut failed, mut wrong) = (0u64, 0u64);
    let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
    let (mut start_ms, mut run_ms) = (Vec::new(), Vec::new());
    let mut seen = vec![false; tasks];
    for r in &results {
        let task = r["task"].as_u64().unwrap_or(u64::MAX) as usize;
        if task < tasks {
            seen[task] = true;
        }
        match r["ok"].as_str().map(|o| b64.decode(o)) {
            Some(Ok(out)) if out == expected(task as u32) => {}
            Some(_) => wrong += 1,
            None => failed += 1,
        }
        *per_node.entry(r["node"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
        let (s, e) = (r["started_us"].as_u64().unwrap_or(0), r["ended_us"].as_u64().unwrap_or(0));
        start_ms.push(s.saturating_sub(submitted_us) as f64 / 1000.0);
        run_ms.push(e.saturating_sub(s) as f64 / 1000.0);
    }
    let live: Vec<String> = farm
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .filter_map(|(_, n)| n.operator.clone())
        .collect();
    let run_twice = sum_counter(&live, "dabs_job_results_repeated_total").await;
    let placed_again = sum_counter(&live, "dabs_job_tasks_replaced_total").await;
    farm.stop();
    let round = |v: f64| (v * 100.0).round() / 100.0;
    Ok(json!({
        "job": id,
        "tasks": tasks,
        "done": results.len(),
        "failed": failed,
        "wrong": wrong,
        "lost": seen.iter().filter(|s| !**s).count(),
        "run_twice": run_twice,
        "placed_again": placed_again,
        "killed": victim_name,
        "per_node": per_node,
        "start_p50_ms": round(pct(&start_ms, 0.5)),
        "start_p99_ms": round(pct(&start_ms, 0.99)),
        "run_p50_ms": round(pct(&run_ms, 0.5)),
        "seconds": round(seconds),
        "tasks_per_s": (tasks as f64 / seconds).round(),
    }))
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}
