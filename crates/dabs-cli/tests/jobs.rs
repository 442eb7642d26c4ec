//! The job-execution service (seed 002, issue 16) on real node processes: an independent
//! client written from interop.md submits, follows and fetches; an MP client is told by
//! `JOB_DONE`; refusals say what to fix; and a compute server, the balancer's node and a job's
//! owner are each killed (SIGKILL) in the middle of a job, chosen by the seed, with no accepted
//! job lost and every task's result committed once.

use base64::Engine;
use dabs_testkit::http::{json, json_as};
use dabs_testkit::{NodeConfigBuilder, NodeProc, eventually, random_group, seed, temp_dir};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json as j};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "6a6f62732d746573742d7365637265742d6a6f62732d746573742d7365637265";

/// x (u32 LE) and spins (u32 LE) in, x*x (u64 LE) out after `spins` turns of a loop.
const BUSY: &str = r#"(module (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "run") (param $p i32) (param $n i32) (result i64)
    (local $x i64) (local $spins i32)
    (local.set $x (i64.load32_u (local.get $p)))
    (local.set $spins (i32.load offset=4 (local.get $p)))
    (block $done (loop $spin
      (br_if $done (i32.eqz (local.get $spins)))
      (local.set $spins (i32.sub (local.get $spins) (i32.const 1)))
      (br $spin)))
    (i64.store (i32.const 2048) (i64.mul (local.get $x) (local.get $x)))
    (i64.const 0x0000080000000008)))"#;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn busy_inputs(n: u32, spins: u32) -> Vec<String> {
    (0..n).map(|x| b64(&[x.to_le_bytes(), spins.to_le_bytes()].concat())).collect()
}

fn start(dir: &Path, group: std::net::SocketAddrV4, name: &str, jobs: &str) -> NodeProc {
    start_on(dir, group, name, jobs, None)
}

/// A node of farm "jobs", its registry in etcd at `etcd` when given.
fn start_on(
    dir: &Path,
    group: std::net::SocketAddrV4,
    name: &str,
    jobs: &str,
    etcd: Option<&str>,
) -> NodeProc {
    let mut builder = NodeConfigBuilder::new("jobs", group, name).operator().secret(SECRET);
    if let Some(url) = etcd {
        builder = builder.etcd(url);
    }
    let config = builder.extra(&format!("[jobs]\nthreads = 1\n{jobs}")).write(dir);
    NodeProc::start(DABS, &config)
}

/// Waits until `url`'s node sees `n` compute servers and a balancer.
fn wait_for_service(url: &str, n: usize) {
    eventually(
        "compute servers and a balancer registered",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let (_, farm) = json("GET", url, "/api/farm", None);
            let members = farm["members"].as_array().cloned().unwrap_or_default();
            let computes = members.iter().filter(|m| !m["compute"].is_null()).count();
            let balancers = members.iter().filter(|m| m["balancer"] == true).count();
            if computes == n && balancers == 1 {
                Ok(())
            } else {
                Err(format!("{computes} compute, {balancers} balancers"))
            }
        },
    );
}

fn counter(url: &str, name: &str) -> u64 {
    let text = dabs_testkit::http::get_text(url, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0) as u64
}

#[test]
fn an_independent_client_submits_follows_and_fetches_and_an_mp_client_is_told() {
    let dir = temp_dir("jobs-interop");
    let group = random_group();
    let nodes: Vec<NodeProc> = (1..=3).map(|i| start(&dir, group, &format!("node-{i}"), "")).collect();
    wait_for_service(nodes[1].url(), 3);
    // Python, from interop.md alone, against a node that need not be the job's balancer.
    dabs_testkit::run_python_check(
        "check_jobs.py",
        &[std::ffi::OsStr::new(nodes[1].url()), "--spin".as_ref()],
    );

    // An MP client: its endpoint takes JOB_DONE on queue 5.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (endpoint, mut told) = rt.block_on(async {
        let endpoint = dabs_testkit::client::endpoint(5).await;
        let mut opens = endpoint.open_requests();
        tokio::spawn(async move {
            while let Some(open) = opens.recv().await {
                let _ = open.accept(5, Vec::new()).await;
            }
        });
        let mut requests = endpoint.register_queue(5);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                let _ = tx.send((req.request.command, req.request.payload.clone()));
                req.reply(Vec::new());
            }
        });
        (endpoint, rx)
    });
    let notify = format!("mp://{}/5", endpoint.local_addrs().udp);
    let module = wat::parse_str(BUSY).unwrap();
    let body = j!({"module": b64(&module), "inputs": busy_inputs(40, 1000), "notify": notify});
    let (status, accepted) = json("POST", nodes[2].url(), "/api/jobs", Some(&body));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    assert_eq!(accepted["address"], format!("mp://jobs/jobs/{id}"));
    let (command, payload) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), told.recv()).await })
        .expect("JOB_DONE within 20 s")
        .expect("the endpoint is up");
    assert_eq!(command, dabs_wire::SystemCommand::JobDone.number());
    let done: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(done["id"], id.as_str());
    let results = done["results"].as_array().unwrap();
    assert_eq!(results.len(), 40);
    for (x, r) in results.iter().enumerate() {
        assert_eq!(r["task"], x);
        let out = base64::engine::general_purpose::STANDARD.decode(r["ok"].as_str().unwrap()).unwrap();
        assert_eq!(out, ((x * x) as u64).to_le_bytes());
    }
    // The same result from every node, at one address.
    for n in &nodes {
        let (status, r) = json("GET", n.url(), &format!("/api/jobs/{id}/result"), None);
        assert_eq!((status, &r["results"]), (200, &done["results"]), "{}", n.url());
    }
    // Each compute server's own statistics, in /metrics and (as announced) on the API:
    // 20 + 2 + 1 tasks of the Python client and these 40 ran at least.
    let metric_sum: u64 = nodes.iter().map(|n| counter(n.url(), "dabs_job_tasks_completed_total")).sum();
    assert!(metric_sum >= 63, "{metric_sum}");
    eventually(
        "the farm view shows the tasks run",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let (_, farm) = json("GET", nodes[0].url(), "/api/farm", None);
            let completed: u64 = farm["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["compute"]["completed"].as_u64().unwrap_or(0))
                .sum();
            if completed >= 63 { Ok(()) } else { Err(format!("{completed} completed")) }
        },
    );
    rt.block_on(endpoint.shutdown());
}

#[test]
fn refusals_say_what_to_fix() {
    let dir = temp_dir("jobs-refusals");
    // A farm of one node that runs no tasks, and one whose only node may not balance.
    let no_compute = start(&dir, random_group(), "no-compute", "compute = false\n");
    let no_balancer = start(&dir, random_group(), "no-balancer", "balancer = false\n");
    no_compute.wait_for_decider();
    no_balancer.wait_for_decider();
    let module = wat::parse_str(BUSY).unwrap();
    let submit = |url: &str, body: Value| {
        let (status, v) = json("POST", url, "/api/jobs", Some(&body));
        (status, v["error"].as_str().unwrap_or_else(|| panic!("no error text: {v}")).to_owned())
    };
    let url = no_compute.url();
    let ok_inputs = busy_inputs(2, 0);
    let cases = [
        (j!({"module": b64(b"not wasm"), "inputs": ok_inputs}), 400, "does not validate"),
        (
            j!({"module": b64(&wat::parse_str("(module)").unwrap()), "inputs": ok_inputs}),
            400,
            "lacks the export memory",
        ),
        (
            j!({"module": b64(&wat::parse_str(r#"(module (import "env" "now" (func)))"#).unwrap()), "inputs": ok_inputs}),
            400,
            "imports env.now",
        ),
        (j!({"module": "%%%", "inputs": ok_inputs}), 400, "not standard base64"),
        (j!({"module": b64(&module), "inputs": []}), 400, "1 to 100000 tasks"),
        (j!({"module": b64(&module), "inputs": ok_inputs, "fuel": 0}), 400, "fuel 0 is out of range"),
        (j!({"module": b64(&module), "inputs": ok_inputs, "notify": "ftp://x"}), 400, "mp://HOST:PORT/QUEUE"),
        (j!({"module": b64(&vec![0u8; 800 << 10]), "inputs": ok_inputs}), 413, "the module is 819200 bytes"),
        (j!({"module": b64(&module), "inputs": ok_inputs, "priority": 1}), 400, "unknown field `priority`"),
        (
            j!({"module": b64(&module), "inputs": ok_inputs}),
            503,
            "no compute server is registered in farm jobs",
        ),
    ];
    for (body, want_status, want_text) in cases {
        let (status, text) = submit(url, body);
        assert_eq!(status, want_status, "{text}");
        assert!(text.contains(want_text), "{want_text:?} not in {text:?}");
    }
    let (status, text) = submit(no_balancer.url(), j!({"module": b64(&module), "inputs": ok_inputs}));
    assert_eq!(status, 503);
    assert!(text.contains("no load balancer is registered"), "{text}");
    let (status, v) = json("GET", url, "/api/jobs/nosuchjob", None);
    assert_eq!(status, 404, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no member of farm jobs holds a job \"nosuchjob\""), "{v}");
    // A node with an operator token wants it for submissions.
    let token = "jobs-operator-token-0123456789abcdef";
    let config = NodeConfigBuilder::new("jobs", random_group(), "guarded")
        .operator()
        .extra(&format!("[operator]\ntoken = \"{token}\"\n"))
        .write(&dir);
    let guarded = NodeProc::start(DABS, &config);
    guarded.wait_for_decider();
    let body = j!({"module": b64(&module), "inputs": ok_inputs});
    let (status, _) = json_as(None, "POST", guarded.url(), "/api/jobs", Some(&body));
    assert_eq!(status, 401);
    let (status, v) = json_as(Some(token), "POST", guarded.url(), "/api/jobs", Some(&body));
    assert_eq!(status, 202, "{v}");
}

/// One fault of the seeded run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// A compute server that is neither the job's owner, its replica, nor the balancer.
    Compute,
    /// The balancer's node (the decider).
    Balancer,
    /// The job's owner (its first archive).
    Owner,
}

#[test]
fn a_killed_compute_server_balancer_or_owner_loses_no_job_and_commits_each_result_once() {
    kill_during_jobs("jobs-faults", None);
}

#[test]
fn on_etcd_a_killed_compute_server_balancer_or_owner_loses_no_job() {
    let dir = temp_dir("jobs-etcd");
    let etcd = dabs_testkit::etcd::EtcdServer::start(&dir);
    kill_during_jobs("jobs-faults-etcd", Some(&etcd.url));
}

/// Five nodes (registered in etcd at `etcd`, else by multicast); three jobs, each with one
/// node killed part-way (a compute server, the balancer's node, the job's owner), chosen with
/// the seed.
fn kill_during_jobs(name: &str, etcd: Option<&str>) {
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = temp_dir(name);
    let group = random_group();
    let mut nodes: BTreeMap<String, NodeProc> = (1..=5)
        .map(|i| (format!("node-{i}"), start_on(&dir, group, &format!("node-{i}"), "", etcd)))
        .collect();
    // Every node, since any may be a job's owner.
    for n in nodes.values() {
        wait_for_service(n.url(), 5);
    }
    let module = wat::parse_str(BUSY).unwrap();
    const TASKS: u32 = 300;
    for fault in [Fault::Compute, Fault::Balancer, Fault::Owner] {
        let names: Vec<String> = nodes.keys().cloned().collect();
        let balancer =
            eventually("a balancer registered", Duration::from_secs(20), Duration::from_millis(50), || {
                let (_, farm) = json("GET", nodes[&names[0]].url(), "/api/farm", None);
                let members = farm["members"].as_array().cloned().unwrap_or_default();
                members
                    .iter()
                    .find(|m| m["balancer"] == true)
                    .and_then(|m| m["name"].as_str().map(str::to_owned))
            });
        // The owner: any node for the first two faults (not the balancer when the balancer
        // dies, so the two are told apart).
        let candidates: Vec<&String> =
            names.iter().filter(|n| fault != Fault::Balancer || **n != balancer).collect();
        let owner = candidates[rng.random_range(0..candidates.len())].clone();
        let spins = 20_000 + rng.random_range(0..20_000u32);
        let body = j!({"module": b64(&module), "inputs": busy_inputs(TASKS, spins)});
        let (status, accepted) = json("POST", nodes[&owner].url(), "/api/jobs", Some(&body));
        assert_eq!(status, 202, "{accepted} (replay with DABS_SEED={seed})");
        let id = accepted["id"].as_str().unwrap().to_owned();
        let (_, view) = json("GET", nodes[&owner].url(), &format!("/api/jobs/{id}"), None);
        let replica = view["replica"].as_str().expect("a replica on a farm of several").to_owned();
        let victim = match fault {
            Fault::Compute => {
                let others: Vec<&String> =
                    names.iter().filter(|n| **n != owner && **n != replica && **n != balancer).collect();
                others[rng.random_range(0..others.len())].clone()
            }
            Fault::Balancer => balancer.clone(),
            Fault::Owner => owner.clone(),
        };
        // Killed once a share of the tasks (chosen by the seed) is done.
        let at = rng.random_range(TASKS / 5..TASKS / 2);
        eventually("the job under way", Duration::from_secs(60), Duration::from_millis(5), || {
            let (_, v) = json("GET", nodes[&owner].url(), &format!("/api/jobs/{id}"), None);
            v["done"].as_u64().unwrap_or(0) >= u64::from(at)
        });
        // Executions counted on the nodes that survive (the victim's die with it).
        let executed_before: u64 = nodes
            .iter()
            .filter(|(name, _)| **name != victim)
            .map(|(_, n)| counter(n.url(), "dabs_job_tasks_completed_total"))
            .sum();
        nodes.get_mut(&victim).unwrap().signal(libc::SIGKILL);
        nodes.remove(&victim);
        let survivor = nodes.keys().find(|n| **n != victim).unwrap().clone();
        let url = nodes[&survivor].url().to_owned();
        let finished = eventually(
            "the job done after the kill",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                let (status, v) = json("GET", &url, &format!("/api/jobs/{id}"), None);
                (status == 200 && v["state"] == "done").then_some(v)
            },
        );
        let context =
            format!("{fault:?}: killed {victim} at {at} done; job {id} (replay with DABS_SEED={seed})");
        if fault == Fault::Balancer {
            // No balancer registered once its node is gone: the next decider starts one.
            let next = eventually(
                "a new balancer registered",
                Duration::from_secs(20),
                Duration::from_millis(50),
                || {
                    let (_, farm) = json("GET", &url, "/api/farm", None);
                    let members = farm["members"].as_array().cloned().unwrap_or_default();
                    members
                        .iter()
                        .find(|m| m["balancer"] == true)
                        .and_then(|m| m["name"].as_str().map(str::to_owned))
                },
            );
            assert_ne!(next, victim, "{context}");
        }
        assert_eq!(finished["tasks"], TASKS, "{context}");
        assert_eq!(finished["failed"], 0, "{context}");
        // Every result right, and the same single commit wherever it is read.
        let mut seen: Option<Value> = None;
        for (name, n) in &nodes {
            let (status, r) = json("GET", n.url(), &format!("/api/jobs/{id}/result?timing=true"), None);
            assert_eq!(status, 200, "{name}: {r} {context}");
            let results = r["results"].as_array().unwrap();
            assert_eq!(results.len(), TASKS as usize, "{context}");
            for (x, t) in results.iter().enumerate() {
                let out =
                    base64::engine::general_purpose::STANDARD.decode(t["ok"].as_str().unwrap()).unwrap();
                assert_eq!(out, ((x as u64) * (x as u64)).to_le_bytes(), "task {x} {context}");
            }
            match &seen {
                None => seen = Some(r),
                Some(s) => assert_eq!(s, &r, "{name} tells another story: {context}"),
            }
        }
        // The owner and its replica (whoever they are now) each keep the job.
        let (_, view) = json("GET", &url, &format!("/api/jobs/{id}"), None);
        for keeper in [view["owner"].as_str().unwrap(), view["replica"].as_str().unwrap_or("")] {
            assert!(nodes.contains_key(keeper), "{keeper} keeps job {id} but is not live: {view} {context}");
        }
        let executed_after: u64 =
            nodes.values().map(|n| counter(n.url(), "dabs_job_tasks_completed_total")).sum();
        let ran_twice: u64 =
            nodes.values().map(|n| counter(n.url(), "dabs_job_results_repeated_total")).sum();
        println!(
            "{fault:?}: killed {victim} at {at}/{TASKS}; executions on the survivors {executed_before}→{executed_after}; \
             tasks run twice {ran_twice}; owner now {}, replica {}",
            view["owner"], view["replica"]
        );
        assert!(executed_after >= executed_before, "{context}");
    }
}

#[test]
fn a_compute_server_that_registers_mid_job_gets_work_at_once() {
    let dir = temp_dir("jobs-join");
    let group = random_group();
    let nodes: Vec<NodeProc> = (1..=2).map(|i| start(&dir, group, &format!("node-{i}"), "")).collect();
    wait_for_service(nodes[0].url(), 2);
    let module = wat::parse_str(BUSY).unwrap();
    const TASKS: u32 = 3000;
    let body = j!({"module": b64(&module), "inputs": busy_inputs(TASKS, 20_000)});
    let (status, accepted) = json("POST", nodes[0].url(), "/api/jobs", Some(&body));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    eventually("the job under way", Duration::from_secs(30), Duration::from_millis(10), || {
        let (_, v) = json("GET", nodes[0].url(), &format!("/api/jobs/{id}"), None);
        v["done"].as_u64().unwrap_or(0) >= 100
    });
    let late = start(&dir, group, "node-3", "");
    let joined_us = dabs_testkit::membership::unix_ms() * 1000;
    let (_, v) = eventually("the job done", Duration::from_secs(60), Duration::from_millis(50), || {
        let (status, v) = json("GET", nodes[0].url(), &format!("/api/jobs/{id}"), None);
        (status == 200 && v["state"] == "done").then_some((status, v))
    });
    assert_eq!(v["failed"], 0, "{v}");
    let (_, r) = json("GET", late.url(), &format!("/api/jobs/{id}/result?timing=true"), None);
    let on_late: Vec<u64> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["node"] == "node-3")
        .map(|t| t["started_us"].as_u64().unwrap())
        .collect();
    let first_ms = on_late.iter().min().map(|s| s.saturating_sub(joined_us) / 1000);
    println!("node-3 ran {} of {TASKS} tasks, its first {first_ms:?} ms after it started", on_late.len());
    assert!(on_late.len() >= 100, "node-3 ran only {} tasks of the job already under way", on_late.len());
    assert!(first_ms.unwrap() < 5_000, "node-3's first task came {first_ms:?} ms after it started");
}
