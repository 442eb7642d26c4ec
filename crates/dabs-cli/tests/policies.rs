//! Policy-driven balancing on a farm of real node processes (seed 003): every application's
//! policy is read and swapped live through the API on any node, reaches every node, and a swap
//! while clients open, call and close fails no call; the calculator's and the kv example's
//! status objects reach the farm's announcements.

use dabs_calc::{CalcClient, Operands, Profile, Value};

use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::http::{json, json_as};
use dabs_testkit::{Farm, PATIENCE, POLL, eventually};
use serde_json::{Value as Json, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// Every policy of interop.md, in the order the test swaps them.
const POLICIES: [&str; 7] = [
    "fewest_clients",
    "fastest_response",
    "fewest_pending",
    "closest",
    "highest_throughput",
    "app_figure:pending",
    "least_loaded",
];

async fn calc_client(farm: SocketAddr) -> Result<(CalcClient, Arc<FarmClient>), String> {
    let options = FarmClientOptions::new(farm, dabs_calc::APP);
    let client = Arc::new(
        FarmClient::start(dabs_testkit::client::endpoint(10).await, options)
            .await
            .map_err(|e| e.to_string())?,
    );
    Ok((CalcClient::new(client.clone(), Profile::Thin), client))
}

/// `calc`'s policy view at `url`.
fn calc_policy(url: &str) -> Json {
    let (status, view) = json("GET", url, "/api/applications/calc/policy", None);
    assert_eq!(status, 200, "{view}");
    view
}

/// The figures the calculator portions at `url`'s farm view announce, by node.
fn announced_figures(url: &str, app: &str) -> Vec<Json> {
    let (_, farm) = json("GET", url, "/api/farm", None);
    farm["members"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["portions"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["app"] == app)
        .map(|p| p["figures"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_swapped_on_any_node_reaches_every_node_and_fails_no_call() {
    let farm = Farm::up(DABS, 3, "policies");
    let urls = farm.operators();
    let token = farm.token();
    let group = farm.group();
    let u = urls.clone();
    tokio::task::spawn_blocking(move || dabs_testkit::membership::wait_for_decider_at(&u)).await.unwrap();

    // The default policy, its preferred server and the figures it chose on.
    let view = calc_policy(&urls[1]);
    assert_eq!(view["policy"], "least_loaded", "{view}");
    assert!(view["preferred"].is_string(), "{view}");
    assert_eq!(view["ranked"].as_array().unwrap().len(), 3, "{view}");
    assert!(view["ranked"][0]["why"].as_str().unwrap().starts_with("load "), "{view}");
    let (status, all) = json("GET", &urls[2], "/api/applications", None);
    assert_eq!(status, 200);
    assert!(all.as_array().unwrap().iter().any(|v| v["app"] == "calc"), "{all}");

    // Refusals, in interop.md's shape.
    let put = |token: Option<&str>, app: &str, body: Json| {
        json_as(token, "PUT", &urls[0], &format!("/api/applications/{app}/policy"), Some(&body))
    };
    let (status, body) = put(Some(&token), "calc", json!({"policy": "quickest"}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("expected least_loaded"), "{body}");
    let (status, body) = put(Some(&token), "calc", json!({"name": "closest"}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = put(Some(&token), "nope", json!({"policy": "closest"}));
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no application \"nope\""), "{body}");
    let (status, _) = put(None, "calc", json!({"policy": "closest"}));
    assert_eq!(status, 401, "a change needs the operator token");
    assert_eq!(calc_policy(&urls[2])["policy"], "least_loaded", "refused changes changed nothing");

    // Clients under way: some keep one session and call back to back, others open, call and
    // close again and again, so new placements happen under every policy.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failed_how = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let (stop, calls, failures, failed_how) =
            (stop.clone(), calls.clone(), failures.clone(), failed_how.clone());
        tasks.push(tokio::spawn(async move {
            let reopen = i % 2 == 1;
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 20_000 {
                let (calc, client) = match calc_client(group).await {
                    Ok(c) => c,
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        failed_how.lock().unwrap().push(format!("open: {e}"));
                        continue;
                    }
                };
                for _ in 0..if reopen { 5 } else { 100_000 } {
                    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        break;
                    }
                    n += 1;
                    match calc.compute("+", Operands::Int(n, 1)).await {
                        Ok(Value::Int(r)) if r == n + 1 => calls.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failed_how.lock().unwrap().push(format!("{n} + 1: {other:?}"));
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                client.stop().await;
            }
        }));
    }
    eventually("clients calling", PATIENCE, POLL, || (calls.load(Ordering::Relaxed) > 50).then_some(()));

    // Swap through every policy, each on another node; every node takes it.
    for (i, policy) in POLICIES.iter().enumerate() {
        let before = calls.load(Ordering::Relaxed);
        let (status, view) = json_as(
            Some(&token),
            "PUT",
            &urls[i % 3],
            "/api/applications/calc/policy",
            Some(&json!({ "policy": policy })),
        );
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["policy"], *policy);
        let urls = urls.clone();
        let policy = policy.to_string();
        tokio::task::spawn_blocking(move || {
            eventually(&format!("every node on {policy}"), PATIENCE, POLL, || {
                let on: Vec<Json> = urls.iter().map(|u| calc_policy(u)["policy"].clone()).collect();
                on.iter().all(|p| *p == policy.as_str()).then_some(()).ok_or(format!("{on:?}"))
            })
        })
        .await
        .unwrap();
        // Calls keep being answered under the new policy before the next swap.
        eventually("calls under the new policy", PATIENCE, POLL, || {
            (calls.load(Ordering::Relaxed) > before + 30).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (done, failed) = (calls.load(Ordering::Relaxed), failures.load(Ordering::Relaxed));
    println!("{done} calls answered through 7 policy swaps, {failed} failed");
    assert_eq!(failed, 0, "calls failed during the swaps: {:?}", failed_how.lock().unwrap());
    assert!(done > 300, "{done} calls");

    // The calculator publishes its pending operations: every node's view carries them.
    let u = urls[2].clone();
    tokio::task::spawn_blocking(move || {
        eventually("calc portions announcing `pending`", PATIENCE, POLL, || {
            let figures = announced_figures(&u, "calc");
            (!figures.is_empty() && figures.iter().all(|f| f["pending"].is_number()))
                .then_some(())
                .ok_or(format!("{figures:?}"))
        })
    })
    .await
    .unwrap();
}
