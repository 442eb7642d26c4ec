//! `dabs trace` on real traffic: a real node process hosting two portions, calculator clients
//! of each, and the trace's filters (virtual address, session, command) checked record by
//! record.

use dabs_net::{Config, DriverOptions, EndpointHandle};
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::{Lines, NodeConfigBuilder, NodeProc, eventually_async, random_group, temp_dir};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// The operator token of the node under test: the trace needs it.
const TOKEN: &str = "trace-test-token-0123456789abcdef";

/// How long any one wait may take on a loaded machine before the test gives up.
const PATIENCE: Duration = Duration::from_secs(40);

/// Pause between two looks at the traces (the clients call meanwhile).
const POLL: Duration = Duration::from_millis(50);

/// A node of its own farm (a random group, so that tests running side by side do not meet)
/// running one portion of the calculator and one of its slow variant, with an operator
/// interface.
fn start_node(name: &str) -> (NodeProc, std::path::PathBuf) {
    let dir = temp_dir(name);
    let config = NodeConfigBuilder::new("tr", random_group(), "node-1")
        .operator()
        .data_dir("data")
        .app("calc", true)
        .app("slowcalc", true)
        .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
        .write(&dir);
    (NodeProc::start(DABS, &config), dir)
}

/// A running `dabs trace --json` whose lines are collected as they come.
struct Trace(Lines);

/// The decoded datagrams among trace lines (lines saying the reader fell behind left out).
fn records(lines: Vec<String>) -> Vec<Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .filter(|v| v.get("lagged").is_none())
        .collect()
}

impl Trace {
    fn start(url: &str, filter: &[&str]) -> Trace {
        Trace(Lines::spawn(
            Command::new(DABS).args(["trace", "--node", url, "--json"]).env("DABS_TOKEN", TOKEN).args(filter),
        ))
    }

    /// The decoded datagrams so far.
    fn records(&self) -> Vec<Value> {
        records(self.0.lines())
    }

    /// Stops it (Ctrl-C, as a person would) and returns every record it printed.
    fn stop(self) -> Vec<Value> {
        let (status, lines) = self.0.interrupt();
        assert!(status.success(), "dabs trace ended with {status}");
        records(lines)
    }
}

/// Incoming application requests among `records`.
fn app_requests(records: &[Value]) -> usize {
    records
        .iter()
        .filter(|r| r["dir"] == "in" && r["kind"] == "request" && r["command"].as_u64() >= Some(256))
        .count()
}

async fn endpoint() -> EndpointHandle {
    let config = Config { ack_timeout: Duration::from_millis(150), max_retries: 10, ..Config::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap()
}

/// A calculator client of `app` at node `mp`, on `queue` at its own endpoint.
async fn client(mp: SocketAddr, app: &str, queue: u16) -> (FarmClient, String) {
    let ep = endpoint().await;
    let addr = ep.local_addrs().udp.to_string();
    let options = FarmClientOptions { queue, idempotent: true, ..FarmClientOptions::new(mp, app) };
    (FarmClient::start(ep, options).await.expect("client starts"), addr)
}

/// One addition on `c`, checked.
async fn add(c: &FarmClient, a: i64) {
    let reply = c.call(256, dabs_sdk::encode_args(&(a, 1))).await.expect("call answered");
    assert_eq!(dabs_sdk::decode_reply::<i64>(&reply), Ok(a + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_filters_show_only_what_they_name() {
    let (node, dir) = start_node("trace-filters");
    let url = node.url().to_owned();
    // The node's two portions, by application: virtual address and queue at its endpoint.
    let portions = eventually_async("the node to run both portions", PATIENCE, POLL, async || {
        let v = dabs_ops::get_json(&url, "/api/node").await?;
        let portions = v["portions"].as_array().cloned().unwrap_or_default();
        if portions.len() == 2 { Ok(portions) } else { Err(format!("it runs {v}")) }
    })
    .await;
    let of = |app: &str| {
        let p =
            portions.iter().find(|p| p["app"] == app).unwrap_or_else(|| panic!("no {app} in {portions:?}"));
        (p["va"].as_str().unwrap().to_owned(), p["queue"].as_u64().unwrap() as u16)
    };
    let ((va_a, queue_a), (va_b, queue_b)) = (of("calc"), of("slowcalc"));
    assert_ne!(queue_a, queue_b);

    // Each client portion sits on the queue number the *other* server portion has at the node
    // (as client portions hosted on other nodes do, numbered by their own node): a filter that
    // looked at either queue of a datagram would take each portion's traffic for the other's.
    let (a, a_addr) = client(node.mp, "calc", queue_b).await;
    let (b, b_addr) = client(node.mp, "slowcalc", queue_a).await;
    assert_eq!((a.va(), b.va()), (Some(va_a.clone()), Some(va_b.clone())), "each client on its portion");

    // --va: only portion A's traffic on this node.
    let trace_a = Trace::start(&url, &["--va", &va_a]);
    let trace_b = Trace::start(&url, &["--va", &va_b]);
    let mut n = 0;
    // Calls on both until each trace shows requests (so both are connected), then more while
    // both certainly listen.
    eventually_async("both portion traces to show requests", PATIENCE, POLL, async || {
        n += 1;
        add(&a, n).await;
        add(&b, n).await;
        app_requests(&trace_a.records()) >= 2 && app_requests(&trace_b.records()) >= 2
    })
    .await;
    let seen = app_requests(&trace_a.records());
    for i in 0..5 {
        add(&a, 1000 + i).await;
        add(&b, 1000 + i).await;
    }
    eventually_async("the last calls in A's trace", PATIENCE, POLL, async || {
        app_requests(&trace_a.records()) >= seen + 5
    })
    .await;
    let (records_a, records_b) = (trace_a.stop(), trace_b.stop());
    for (records, queue, peer, name) in
        [(&records_a, queue_a, &a_addr, "calc"), (&records_b, queue_b, &b_addr, "slowcalc")]
    {
        for r in records {
            assert!(r["error"].is_null(), "{name}: {r}");
            let ours = if r["dir"] == "in" { &r["dst"] } else { &r["src"] };
            assert_eq!(ours.as_u64(), Some(u64::from(queue)), "{name}: not on its queue here: {r}");
            assert_eq!(r["peer"].as_str(), Some(peer.as_str()), "{name}: another peer's traffic: {r}");
        }
        let has = |dir: &str, kind: &str| records.iter().any(|r| r["dir"] == dir && r["kind"] == kind);
        assert!(has("in", "request") && has("out", "reply"), "{name}: requests and replies shown");
    }
    // The session A's client calls in, as the node numbered it.
    let session_a = records_a
        .iter()
        .find(|r| r["dir"] == "in" && r["kind"] == "request" && r["command"] == 256)
        .and_then(|r| r["session"].as_u64())
        .expect("A's requests carry their session");

    // --session: that session byte, whoever the peer (numbers are per peer), and nothing else.
    let trace_s = Trace::start(&url, &["--session", &session_a.to_string()]);
    eventually_async("the session trace to show requests", PATIENCE, POLL, async || {
        n += 1;
        add(&a, n).await;
        add(&b, n).await;
        app_requests(&trace_s.records()) >= 3
    })
    .await;
    let records_s = trace_s.stop();
    assert!(records_s.iter().all(|r| r["session"].as_u64() == Some(session_a)), "{records_s:?}");
    assert!(
        records_s.iter().any(|r| r["peer"] == a_addr.as_str() && r["command"] == 256),
        "A's calls shown: {records_s:?}"
    );

    // --command: only OPEN_SESSION, while real `dabs calc` client processes open sessions and
    // A keeps calling. By number on the command line, by name (any case) through the API:
    // main.rs still parses the flag as a number.
    let trace_c = Trace::start(&url, &["--command", "open_session"]);
    let by_name = Arc::new(Mutex::new(Vec::new()));
    let api = {
        let (url, sink) = (url.clone(), by_name.clone());
        tokio::spawn(async move {
            dabs_ops::trace_client(&url, Some(TOKEN), "command=open_session", |v| {
                sink.lock().unwrap().push(v)
            })
            .await
        })
    };
    let opened = |records: &[Value]| {
        records.iter().any(|r| r["dir"] == "out" && r["kind"] == "reply")
            && records.iter().any(|r| r["dir"] == "in" && r["kind"] == "request")
    };
    eventually_async("OPEN_SESSION in both command traces", PATIENCE, POLL, async || {
        let mp = node.mp.to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(DABS).args(["calc", "--farm", &mp, "6", "x", "7"]).output().unwrap()
        })
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
        add(&a, 7).await;
        opened(&trace_c.records()) && opened(&by_name.lock().unwrap())
    })
    .await;
    let records_c = trace_c.stop();
    api.abort();
    let records_n = by_name.lock().unwrap().clone();
    for r in records_c.iter().chain(&records_n).filter(|v| v.get("lagged").is_none()) {
        assert_eq!(
            (r["command"].as_u64(), r["command_name"].as_str()),
            (Some(1), Some("OPEN_SESSION")),
            "{r}"
        );
    }

    // An unknown name is refused, naming what would do.
    let e = dabs_ops::trace_client(&url, Some(TOKEN), "command=OPEN", |_| {}).await.unwrap_err();
    assert!(e.starts_with("command: unknown command \"OPEN\"") && e.contains("OPEN_SESSION"), "{e}");

    a.stop().await;
    b.stop().await;
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
