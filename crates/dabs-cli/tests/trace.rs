//! `dabs trace` on real traffic: a real node process hosting two portions, calculator clients
//! of each, and the trace's filters (virtual address, session, command) checked record by
//! record.

mod common;

use common::{DABS, temp_dir};
use dabs_net::{Config, DriverOptions, EndpointHandle};
use dabs_sdk::{FarmClient, FarmClientOptions};
use serde_json::Value;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The operator token of the node under test: the trace needs it.
const TOKEN: &str = "trace-test-token-0123456789abcdef";

/// How long any one wait may take on a loaded machine before the test gives up.
const PATIENCE: Duration = Duration::from_secs(40);

/// One `dabs node` process with an operator interface; stopped (SIGTERM) on drop.
struct Node {
    child: Child,
    dir: PathBuf,
    mp: SocketAddr,
    url: String,
}

impl Node {
    /// A node of its own farm (a random group, so that tests running side by side do not meet)
    /// running one portion of the calculator and one of its slow variant.
    fn start(name: &str) -> Node {
        let dir = temp_dir(name);
        let r = std::hash::RandomState::new().build_hasher().finish();
        let group = format!("239.255.{}.{}:{}", r % 250 + 2, (r >> 8) % 250 + 2, 40_000 + (r >> 16) % 20_000);
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[farm]\nname = \"tr\"\ngroup = \"{group}\"\n\n[node]\nname = \"node-1\"\nbind = \"127.0.0.1:0\"\n\
                 operator = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\n\
                 [operator]\ntoken = \"{TOKEN}\"\n\n\
                 [[app]]\nname = \"calc\"\nstart_at_init = true\n\n[[app]]\nname = \"slowcalc\"\nstart_at_init = true\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(DABS)
            .arg("node")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Keep reading, so that the node never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let word =
            |after: &str| line.split_whitespace().skip_while(|w| *w != after).nth(1).map(str::to_owned);
        let (Some(mp), Some(url)) = (word("mp"), word("operator")) else {
            panic!("unexpected first line from dabs node: {line:?}");
        };
        Node { child, dir, mp: mp.parse().unwrap(), url }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `dabs trace --json` whose lines are collected as they come.
struct Trace {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Trace {
    fn start(url: &str, filter: &[&str]) -> Trace {
        let mut child = Command::new(DABS)
            .args(["trace", "--node", url, "--json"])
            .env("DABS_TOKEN", TOKEN)
            .args(filter)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        Trace { child, lines, reader: Some(reader) }
    }

    /// The decoded datagrams so far (lines saying the reader fell behind left out).
    fn records(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter(|v| v.get("lagged").is_none()).cloned().collect()
    }

    /// Stops it (Ctrl-C, as a person would) and returns every record it printed.
    fn stop(mut self) -> Vec<Value> {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().expect("trace output is one JSON object per line");
        assert!(status.success(), "dabs trace ended with {status}");
        self.records()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Incoming application requests among `records`.
fn app_requests(records: &[Value]) -> usize {
    records
        .iter()
        .filter(|r| r["dir"] == "in" && r["kind"] == "request" && r["command"].as_u64() >= Some(256))
        .count()
}

/// Polls `done` until it holds, for at most [`PATIENCE`], doing `work` between polls.
async fn until<F: std::future::Future<Output = ()>>(
    what: &str,
    mut done: impl FnMut() -> bool,
    mut work: impl FnMut() -> F,
) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < PATIENCE, "gave up waiting for {what}");
        work().await;
    }
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
    let node = Node::start("trace-filters");
    // The node's two portions, by application: virtual address and queue at its endpoint.
    let t = Instant::now();
    let portions = loop {
        let v = dabs_ops::get_json(&node.url, "/api/node").await.unwrap_or(Value::Null);
        let portions = v["portions"].as_array().cloned().unwrap_or_default();
        if portions.len() == 2 {
            break portions;
        }
        assert!(t.elapsed() < PATIENCE, "the node never ran both portions: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
    let trace_a = Trace::start(&node.url, &["--va", &va_a]);
    let trace_b = Trace::start(&node.url, &["--va", &va_b]);
    let mut n = 0;
    // Calls on both until each trace shows requests (so both are connected), then more while
    // both certainly listen.
    until(
        "both portion traces to show requests",
        || app_requests(&trace_a.records()) >= 2 && app_requests(&trace_b.records()) >= 2,
        || {
            n += 1;
            let (a, b) = (&a, &b);
            async move {
                add(a, n).await;
                add(b, n).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    let seen = app_requests(&trace_a.records());
    for i in 0..5 {
        add(&a, 1000 + i).await;
        add(&b, 1000 + i).await;
    }
    until(
        "the last calls in A's trace",
        || app_requests(&trace_a.records()) >= seen + 5,
        || tokio::time::sleep(Duration::from_millis(50)),
    )
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
    let trace_s = Trace::start(&node.url, &["--session", &session_a.to_string()]);
    until(
        "the session trace to show requests",
        || app_requests(&trace_s.records()) >= 3,
        || {
            n += 1;
            let (a, b) = (&a, &b);
            async move {
                add(a, n).await;
                add(b, n).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
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
    let trace_c = Trace::start(&node.url, &["--command", "open_session"]);
    let by_name = Arc::new(Mutex::new(Vec::new()));
    let api = {
        let (url, sink) = (node.url.clone(), by_name.clone());
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
    until(
        "OPEN_SESSION in both command traces",
        || opened(&trace_c.records()) && opened(&by_name.lock().unwrap()),
        || async {
            let mp = node.mp.to_string();
            let out = tokio::task::spawn_blocking(move || {
                Command::new(DABS).args(["calc", "--farm", &mp, "6", "x", "7"]).output().unwrap()
            })
            .await
            .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42", "{out:?}");
            add(&a, 7).await;
        },
    )
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
    let e = dabs_ops::trace_client(&node.url, Some(TOKEN), "command=OPEN", |_| {}).await.unwrap_err();
    assert!(e.starts_with("command: unknown command \"OPEN\"") && e.contains("OPEN_SESSION"), "{e}");

    a.stop().await;
    b.stop().await;
}
