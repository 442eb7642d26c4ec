//! The farm shrinks as it grew: idle portions retire down to their application's minimum, a
//! client that stops closes its session before it returns, and seats of clients that vanished
//! come back well before the idle time-out. Everything is observed through the operator API.

use dabs_calc::{CalcClient, Operands, Profile, Value};
use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle};
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::http::{json, json_as};
use dabs_testkit::membership::wait_for_decider_at_async;
use dabs_testkit::{Farm, NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, random_group, temp_dir};
use serde_json::Value as Json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// The operator token of the single nodes these tests configure themselves.
const TOKEN: &str = "lifecycle-test-token-0123456789";

async fn endpoint() -> EndpointHandle {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 10, ..Config::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap()
}

/// A calculator client on an endpoint of its own, as a separate program would have.
async fn calc_client(farm: SocketAddr) -> (CalcClient, Arc<FarmClient>) {
    let options = FarmClientOptions { idempotent: true, ..FarmClientOptions::new(farm, dabs_calc::APP) };
    let client =
        Arc::new(FarmClient::start(endpoint().await, options).await.expect("the farm takes a client"));
    (CalcClient::new(client.clone(), Profile::Thin), client)
}

async fn add_once(calc: &CalcClient, a: i64) {
    let v = calc.compute("+", Operands::Int(a, 1)).await.expect("the farm answers");
    assert!(matches!(v, Value::Int(r) if r == a + 1), "{a} + 1 answered {v:?}");
}

/// `GET /api/node` of the node at `url`.
fn node_json(url: &str) -> Json {
    let (status, node) = json("GET", url, "/api/node", None);
    assert_eq!(status, 200, "{node}");
    node
}

/// (portions of the calculator, sessions on them) as the node at `url` reports them.
fn calc_portions(url: &str) -> (usize, u64) {
    let node = node_json(url);
    let portions: Vec<&Json> =
        node["portions"].as_array().unwrap().iter().filter(|p| p["app"] == "calc").collect();
    (portions.len(), portions.iter().map(|p| p["sessions"].as_u64().unwrap()).sum())
}

/// Changes the farm's settings at `urls[0]` and waits until every node has the change.
fn change_settings(urls: &[String], token: &str, change: Json) {
    let (status, s) = json_as(Some(token), "PUT", &urls[0], "/api/settings", Some(&change));
    assert_eq!(status, 200, "{s}");
    let version = s["version"].as_u64().unwrap();
    for url in urls {
        eventually(&format!("{url} adopts settings version {version}"), PATIENCE, POLL, || {
            let (_, s) = json("GET", url, "/api/settings", None);
            s["version"].as_u64() >= Some(version)
        });
    }
}

fn retired(url: &str) -> u64 {
    node_json(url)["counters"]["portions_retired"].as_u64().expect("counters.portions_retired")
}

/// A ramp up and down on three nodes: twelve clients on portions of two seats make the farm
/// start portions; once the clients stop, every node retires its extra portions and keeps the
/// one `start_at_init` gave it. The retirements are events, counters and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_up_and_down_leaves_the_farm_at_its_minimum() {
    let farm = Farm::up(DABS, 3, "retire-ramp");
    let urls = farm.operators();
    wait_for_decider_at_async(urls.clone()).await;
    let token = farm.token();
    let u = urls.clone();
    tokio::task::spawn_blocking(move || {
        change_settings(
            &u,
            &token,
            serde_json::json!({"retire_idle_after_ms": 1000, "apps": {"calc": {"max_sessions_per_portion": 2}}}),
        )
    })
    .await
    .unwrap();
    for url in &urls {
        assert_eq!(calc_portions(url).0, 1, "{url} starts with the portion start_at_init gives it");
    }

    let mut clients = Vec::new();
    for i in 0..12 {
        let (calc, client) = calc_client(farm.group()).await;
        add_once(&calc, i).await;
        clients.push(client);
    }
    let u = urls.clone();
    let peak = tokio::task::spawn_blocking(move || {
        eventually("the nodes count the twelve clients", PATIENCE, POLL, || {
            let counts: Vec<(usize, u64)> = u.iter().map(|u| calc_portions(u)).collect();
            let sessions: u64 = counts.iter().map(|c| c.1).sum();
            let portions: usize = counts.iter().map(|c| c.0).sum();
            if sessions == 12 { Ok(portions) } else { Err(format!("{counts:?}")) }
        })
    })
    .await
    .unwrap();
    assert!(peak >= 6, "twelve clients on two-seat portions need at least six portions, saw {peak}");

    for c in &clients {
        c.stop().await;
    }
    let u = urls.clone();
    tokio::task::spawn_blocking(move || {
        eventually("every node back at one calculator portion, no sessions", PATIENCE, POLL, || {
            let counts: Vec<(usize, u64)> = u.iter().map(|u| calc_portions(u)).collect();
            if counts.iter().all(|c| *c == (1, 0)) { Ok(()) } else { Err(format!("{counts:?}")) }
        })
    })
    .await
    .unwrap();

    let mut total = 0;
    for url in &urls {
        let n = retired(url);
        total += n;
        let metrics = dabs_testkit::http::get_text(url, "/metrics");
        assert!(metrics.contains(&format!("dabs_portions_retired_total {n}\n")), "{url}: {metrics}");
        let (_, events) = json("GET", url, "/api/events", None);
        let noted = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["text"].as_str().is_some_and(|t| t.starts_with("retired portion ")));
        assert_eq!(noted.count() as u64, n, "{url}: one event per retirement: {events}");
    }
    assert_eq!(total, peak as u64 - 3, "every portion beyond the three minimums retired");
}

/// A retired portion's record leaves the database: the node restarted has only its minimum.
/// Retirement can be turned off (0), and a portion with a client is never retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_portion_does_not_come_back_after_a_restart() {
    let dir = temp_dir("retire-restart");
    let config = solo_node(&dir, 1);
    let mut node = NodeProc::start(DABS, &config);
    let url = node.url().to_owned();
    let ep = endpoint().await;
    let ask = OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor();
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(ep.open(Addr::Udp(node.mp), 1, ask.clone()).await.unwrap());
    }
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        eventually("three one-seat portions, full", PATIENCE, POLL, || calc_portions(&u) == (3, 3))
    })
    .await
    .unwrap();
    // The first two clients leave; the third stays. Retirement is off, so nothing goes yet.
    for s in sessions.drain(..2) {
        assert!(s.close_confirmed(Duration::from_secs(1)).await, "the node confirms the close");
    }
    assert_eq!(calc_portions(&url), (3, 1), "closes confirmed: the seats are free at once");
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        change_settings(&[u], TOKEN, serde_json::json!({"retire_idle_after_ms": 300}));
    })
    .await
    .unwrap();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        eventually("the idle portions retire", PATIENCE, POLL, || calc_portions(&u) == (1, 1))
    })
    .await
    .unwrap();
    // The portion holding the client is kept, and it alone makes the minimum of one: both
    // idle ones go (the one started at initialisation too).
    assert_eq!(retired(&url), 2);
    sessions.clear();
    drop(ep);
    assert!(node.terminate().success(), "clean stop on SIGTERM");
    let recorded = recorded_portions(&dir.join("data"));
    assert_eq!(recorded, 1, "the retired portions' records are gone");
    let node = NodeProc::start(DABS, &config);
    assert_eq!(calc_portions(node.url()).0, 1, "only the recorded portion comes back");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-node farm's config in `dir`: the calculator started at initialisation with `seats`
/// sessions per portion, retirement off (turned on at run time where a test wants it).
fn solo_node(dir: &Path, seats: u64) -> std::path::PathBuf {
    NodeConfigBuilder::new("t", random_group(), "solo")
        .operator()
        .data_dir("data")
        .app_with("calc", &format!("start_at_init = true\nmax_sessions_per_portion = {seats}\n"))
        .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n\n[balance]\nretire_idle_after_ms = 0\n"))
        .write(dir)
}

fn recorded_portions(data_dir: &Path) -> usize {
    dabs_node::db::Db::open(data_dir).unwrap().portions().unwrap().len()
}

/// A thousand short clients — SDK clients that open, call once and stop, and `dabs calc`
/// runs — leave no session on any node: each close is confirmed before the client returns,
/// so the count is zero at once, not after the 120 s idle time-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_short_clients_leave_no_session_behind() {
    const SDK_CLIENTS: i64 = 900;
    const CALC_RUNS: usize = 100;
    let farm = Farm::up(DABS, 3, "short-clients");
    let urls = farm.operators();
    wait_for_decider_at_async(urls.clone()).await;
    let group = farm.group();
    let started = Instant::now();

    // `dabs calc` runs, ten at a time, beside the SDK clients.
    let calc_runs = tokio::task::spawn_blocking(move || {
        let mut outputs = Vec::new();
        for batch in 0..CALC_RUNS / 10 {
            let children: Vec<_> = (0..10)
                .map(|i| {
                    let a = (batch * 10 + i).to_string();
                    std::process::Command::new(DABS)
                        .args(["calc", "--farm", &group.to_string(), &a, "+", "1"])
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("dabs calc starts")
                })
                .collect();
            outputs.extend(children.into_iter().map(|c| c.wait_with_output()));
        }
        outputs
    });
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = SDK_CLIENTS / 15;
    for t in 0..15i64 {
        tasks.spawn(async move {
            for i in 0..per_task {
                let (calc, client) = calc_client(group).await;
                add_once(&calc, t * per_task + i).await;
                client.stop().await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("an SDK client failed");
    }
    let outputs = calc_runs.await.unwrap();
    assert_eq!(outputs.len(), CALC_RUNS);
    for (i, out) in outputs.into_iter().enumerate() {
        let out = out.expect("dabs calc runs");
        assert!(out.status.success(), "dabs calc {i} + 1: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (i + 1).to_string());
    }
    let took = started.elapsed();

    // Well within the endpoint's reclaim threshold (10 s) and idle time-out (120 s): only a
    // close that arrived can explain a zero.
    let u = urls.clone();
    tokio::task::spawn_blocking(move || {
        eventually("no session left on any node", Duration::from_secs(5), POLL, || {
            let counts: Vec<u64> = u.iter().map(|u| calc_portions(u).1).collect();
            if counts.iter().all(|c| *c == 0) { Ok(()) } else { Err(format!("{counts:?}")) }
        })
    })
    .await
    .unwrap();
    for url in &urls {
        let n = node_json(url);
        assert_eq!(n["node"]["sessions"], 0, "{url}: {n}");
    }
    eprintln!("1000 short clients in {took:?}");
}

/// Clients that vanish without closing (their endpoints simply stop) fill a portion's seats;
/// once they have been idle past the reclaim threshold the node takes the seats back, long
/// before the 120 s idle time-out, and a new client gets a seat on that portion instead of a
/// new portion being started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_of_vanished_clients_are_reclaimed_when_the_portion_is_full() {
    let dir = temp_dir("reclaim-seats");
    let config = solo_node(&dir, 4);
    let node = NodeProc::start(DABS, &config);
    let url = node.url().to_owned();
    let ask = OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor();
    let ep = endpoint().await;
    for _ in 0..4 {
        ep.open(Addr::Udp(node.mp), 1, ask.clone()).await.unwrap();
    }
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        eventually("four clients fill the portion", PATIENCE, POLL, || calc_portions(&u) == (1, 4))
    })
    .await
    .unwrap();
    ep.shutdown().await; // vanished: no CLOSE_SESSION
    let vanished = Instant::now();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        eventually(
            "the full portion gets a seat back",
            Duration::from_secs(40),
            Duration::from_millis(200),
            || {
                let (portions, sessions) = calc_portions(&u);
                if portions == 1 && sessions < 4 {
                    Ok(())
                } else {
                    Err(format!("{portions} portions, {sessions} sessions"))
                }
            },
        )
    })
    .await
    .unwrap();
    let after = vanished.elapsed();
    assert!(after < Duration::from_secs(60), "reclaimed after {after:?}: not the 120 s idle time-out");
    let metrics = dabs_testkit::http::get_text(&url, "/metrics");
    assert!(!metrics.contains("dabs_mp_sessions_reclaimed_total 0\n"), "{metrics}");

    let portion = node_json(&url)["portions"][0]["va"].as_str().unwrap().to_owned();
    let ep = endpoint().await;
    let s = ep.open(Addr::Udp(node.mp), 1, ask).await.unwrap();
    let (va, _, _) = dabs_farm_proto::shapes::parse_open_reply(&s.reply).unwrap();
    assert_eq!(va, portion, "the new client took a reclaimed seat rather than a new portion");
    assert_eq!(calc_portions(&url).0, 1);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
