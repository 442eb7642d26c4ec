//! The page's history over real HTTP: two in-process nodes in one farm, calls made to the
//! calculator, and the members' figures, the farm's, a member that leaves (a DOWN row) and its
//! removal, which needs the operator token.

use dabs_node::Node;
use dabs_testkit::{NodeConfigBuilder, POLL, eventually_async, random_group};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN: &str = "history-test-token-0123456789abcdef";
/// Samples come once a second; a few of them, and membership, come well within this.
const PATIENCE: Duration = Duration::from_secs(15);

async fn start(group: std::net::SocketAddrV4, name: &str, dir: &std::path::Path) -> Node {
    let config = NodeConfigBuilder::new("hist", group, name)
        .app("calc", true)
        .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
        .build(dir);
    Node::start(config, vec![dabs_calc::factory()]).await.unwrap()
}

async fn get(base: &str, path: &str) -> Result<Value, String> {
    dabs_ops::get_json(base, path).await
}

fn column<'a>(h: &'a Value, node: Option<&str>, col: &str) -> Vec<&'a Value> {
    let cols = match node {
        Some(n) => &h["nodes"][n],
        None => &h["farm"],
    };
    cols[col].as_array().map(|a| a.iter().collect()).unwrap_or_default()
}

fn numbers(h: &Value, node: Option<&str>, col: &str) -> Vec<f64> {
    column(h, node, col).into_iter().filter_map(Value::as_f64).collect()
}

fn delete(base: &str, name: &str, token: Option<&str>) -> (u16, String) {
    let (base, name, token) = (base.to_owned(), name.to_owned(), token.map(str::to_owned));
    std::thread::spawn(move || {
        dabs_testkit::http::request_as(
            token.as_deref(),
            "DELETE",
            &base,
            &format!("/api/members/{name}"),
            None,
        )
        .unwrap()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_charted_and_a_member_that_leaves_stays_down_until_removed() {
    let group = random_group();
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n1 = start(group, "node-1", d1.path()).await;
    let n2 = start(group, "node-2", d2.path()).await;
    let access = dabs_ops::Access::from_config(
        &NodeConfigBuilder::new("hist", group, "node-1")
            .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
            .build(d1.path()),
    );
    let (addr, server) = dabs_ops::serve(n1.handle(), "127.0.0.1:0".parse().unwrap(), access).await.unwrap();
    let base = format!("http://{addr}");

    // Calls to the calculator, wherever the farm places the client.
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), Default::default()).await.unwrap();
    let client =
        dabs_sdk::FarmClient::start(ep, dabs_sdk::FarmClientOptions::new(SocketAddr::V4(group), "calc"))
            .await
            .expect("client starts");
    let h = eventually_async("calls and their latency charted", PATIENCE, POLL, async || {
        for i in 0..20 {
            client.call(256, dabs_sdk::encode_args(&(i, 1))).await.map_err(|e| e.to_string())?;
        }
        let h = get(&base, "/api/history").await?;
        let busy = ["node-1", "node-2"]
            .into_iter()
            .find(|n| numbers(&h, Some(n), "calls_per_s").iter().any(|c| *c > 0.0));
        let latency = busy.map(|n| numbers(&h, Some(n), "p99_ms")).unwrap_or_default();
        match busy {
            Some(_) if !latency.is_empty() && h["nodes"]["node-2"].is_object() => Ok(h),
            _ => Err(format!("no calls or latency yet: {h}")),
        }
    })
    .await;
    // Columns line up with t, one value a second; the farm sums what its members do.
    let t = h["t"].as_array().unwrap();
    assert!(t.windows(2).all(|w| w[0].as_u64() < w[1].as_u64()), "{h}");
    for node in [Some("node-1"), Some("node-2"), None] {
        for col in ["calls_per_s", "p50_ms", "p99_ms", "load", "sessions", "portions"] {
            assert_eq!(column(&h, node, col).len(), t.len(), "{node:?} {col}");
        }
    }
    assert_eq!((h["interval_s"].as_u64(), h["window_s"].as_u64()), (Some(1), Some(600)));
    let farm_calls = numbers(&h, None, "calls_per_s").into_iter().fold(0.0, f64::max);
    let node_calls =
        ["node-1", "node-2"].iter().flat_map(|n| numbers(&h, Some(n), "calls_per_s")).fold(0.0, f64::max);
    assert!(farm_calls >= node_calls && farm_calls > 0.0, "farm {farm_calls}, busiest node {node_calls}");
    let (p50, p99) = (numbers(&h, None, "p50_ms"), numbers(&h, None, "p99_ms"));
    assert!(!p99.is_empty() && p50.iter().zip(&p99).all(|(a, b)| a <= b), "{h}");
    assert!(numbers(&h, None, "portions").iter().any(|p| *p >= 2.0), "both nodes run calc: {h}");
    let farm = get(&base, "/api/farm").await.unwrap();
    assert!(farm["members"].as_array().unwrap().iter().all(|m| m["zone"] == "open"), "{farm}");
    assert_eq!(farm["down"], serde_json::json!([]));

    // node-2 stops cleanly: a DOWN row that says so, kept.
    n2.stop().await;
    let down = eventually_async("node-2 listed down", PATIENCE, POLL, async || {
        let farm = get(&base, "/api/farm").await?;
        let down = farm["down"].as_array().cloned().unwrap_or_default();
        match down.iter().find(|d| d["name"] == "node-2") {
            Some(d) if !farm["members"].as_array().unwrap().iter().any(|m| m["name"] == "node-2") => {
                Ok(d.clone())
            }
            _ => Err(format!("{farm}")),
        }
    })
    .await;
    assert_eq!(down["reason"], "left", "{down}");
    assert!(down["why"].as_str().unwrap().contains("left cleanly"), "{down}");
    assert!(down["down_ms"].as_u64() >= down["last_seen_ms"].as_u64(), "{down}");
    let events = get(&base, "/api/events").await.unwrap().to_string();
    assert!(events.contains("member node-2 down: left cleanly"), "{events}");

    // Removal needs the token, and only a down member can be removed.
    assert_eq!(delete(&base, "node-2", None).0, 401);
    assert_eq!(delete(&base, "node-2", Some("wrong-token-0123456789")).0, 401);
    let (status, body) = delete(&base, "node-1", Some(TOKEN));
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("live member"), "{body}");
    assert_eq!(delete(&base, "node-9", Some(TOKEN)).0, 404);
    assert!(
        get(&base, "/api/farm").await.unwrap()["down"][0]["name"] == "node-2",
        "still down after refusals"
    );
    let (status, body) = delete(&base, "node-2", Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, r#"{"removed":"node-2"}"#));
    let farm = get(&base, "/api/farm").await.unwrap();
    assert_eq!(farm["down"], serde_json::json!([]), "{farm}");
    let h = get(&base, "/api/history").await.unwrap();
    assert!(h["nodes"]["node-2"].is_null() && h["nodes"]["node-1"].is_object(), "its history went with it");
    assert_eq!(delete(&base, "node-2", Some(TOKEN)).0, 404, "removed once");

    server.abort();
    n1.stop().await;
}
