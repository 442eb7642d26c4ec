//! Encrypted sessions (R-MP-5) through a farm of real node processes: what the wire, the
//! trace and the metrics show, a client following FAILOVER stays encrypted, and a node that
//! refuses encryption says so.

use dabs_net::{Config, DriverOptions, EndpointHandle, TapRecord};
use dabs_sdk::{FarmClient, FarmClientOptions, decode_reply, encode_args};
use dabs_testkit::membership::wait_for_decider_at_async;
use dabs_testkit::{
    Farm, Lines, NodeConfigBuilder, NodeProc, POLL, eventually_async, random_group, temp_dir,
};
use dabs_wire::{SystemCommand, decode};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

const SECRET: &str = "00112233445566778899aabbccddeeff";
/// Operands unlikely to appear in a datagram by chance, and their product.
const A: i64 = 1_234_567;
const B: i64 = 7_654_321;
const PRODUCT: i64 = 9_449_772_114_007;
/// The calculator's integer multiply.
const MUL: u16 = 258;

async fn endpoint() -> EndpointHandle {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 10, ..Config::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap()
}

fn options(farm: std::net::SocketAddr, encrypt: bool) -> FarmClientOptions {
    let mut o = FarmClientOptions::new(farm, "calc");
    o.secret = Some((0..16).map(|i| u8::from_str_radix(&SECRET[2 * i..2 * i + 2], 16).unwrap()).collect());
    o.idempotent = true;
    o.encrypt = encrypt;
    o
}

/// Every record the tap holds now.
fn drain(tap: &mut tokio::sync::broadcast::Receiver<TapRecord>) -> Vec<TapRecord> {
    let mut out = Vec::new();
    while let Ok(r) = tap.try_recv() {
        out.push(r);
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The value of an unlabelled metric.
fn metric(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from\n{exposition}"))
}

/// `A x B` through the client.
async fn mul(c: &FarmClient) -> Result<i64, String> {
    let reply = c.call(MUL, encode_args(&(A, B))).await.map_err(|e| e.to_string())?;
    decode_reply::<i64>(&reply).map_err(|e| format!("{e:?}"))
}

/// The trace lines (JSON objects) of calculator or STARTED traffic, and of incoming key exchanges.
fn app_and_exchanges(lines: &[Value]) -> (Vec<&Value>, Vec<&Value>) {
    let app = lines.iter().filter(|l| l["command"].as_u64().is_some_and(|c| c >= 256 || c == 5)).collect();
    let exchanges =
        lines.iter().filter(|l| l["command_name"] == "KEY_EXCHANGE" && l["dir"] == "in").collect();
    (app, exchanges)
}

/// The lines of `traces`, parsed; panics on one that is not a JSON object.
fn parsed(traces: impl IntoIterator<Item = Vec<String>>) -> Vec<Value> {
    traces
        .into_iter()
        .flatten()
        .map(|l| serde_json::from_str::<Value>(&l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_calculations_through_the_farm_are_sealed_on_the_wire() {
    let farm = Farm::up_with(DABS, 3, "encrypted", &["--secret", SECRET]);
    let group = farm.group();
    let operators = farm.operators();
    wait_for_decider_at_async(operators.clone()).await;
    let needle = encode_args(&(A, B));
    // Control: in clear, the operands are there for anyone on the path to read.
    let clear_ep = endpoint().await;
    let mut clear_tap = clear_ep.tap();
    let clear = FarmClient::start(clear_ep, options(group, false)).await.unwrap();
    assert_eq!(mul(&clear).await, Ok(PRODUCT));
    clear.stop().await;
    let seen = drain(&mut clear_tap);
    assert!(seen.iter().any(|r| contains(&r.data, &needle)), "the needle is what a clear call carries");

    // Trace every node while an encrypted `dabs calc` and an encrypted SDK client compute.
    let token = farm.token();
    let traces: Vec<Lines> = operators
        .iter()
        .map(|url| {
            Lines::spawn(Command::new(DABS).args(["trace", "--node", url, "--json", "--token", &token]))
        })
        .collect();
    // Each trace is connected once it shows its node's announcements (one every 250 ms).
    for t in &traces {
        t.wait_for("a trace to show its node's traffic", |l| !l.is_empty());
    }
    let calc = Command::new(DABS)
        .args(["calc", "--encrypt", "--farm", &group.to_string(), &A.to_string(), "x", &B.to_string()])
        .output()
        .unwrap();
    assert!(calc.status.success(), "dabs calc --encrypt: {}", String::from_utf8_lossy(&calc.stderr));
    assert_eq!(String::from_utf8_lossy(&calc.stdout).trim(), PRODUCT.to_string());
    let sealed_ep = endpoint().await;
    let mut tap = sealed_ep.tap();
    let client = FarmClient::start(sealed_ep.clone(), options(group, true)).await.unwrap();
    assert_eq!(mul(&client).await, Ok(PRODUCT));
    // Wait until the traces have caught up with both clients' calls and key exchanges.
    let caught_up = || {
        let lines = parsed(traces.iter().map(Lines::lines));
        let (app, exchanges) = app_and_exchanges(&lines);
        app.iter().filter(|l| l["dir"] == "in").count() >= 4 && exchanges.len() >= 2
    };
    eventually_async("the traces to show both clients' calls", dabs_testkit::PATIENCE, POLL, async || {
        caught_up()
    })
    .await;
    let lines = parsed(traces.into_iter().map(|t| t.interrupt().1));
    let of = |pred: &dyn Fn(&Value) -> bool| lines.iter().filter(|l| pred(l)).collect::<Vec<_>>();
    // Only the two encrypted clients made calculator or STARTED traffic while tracing.
    let (app, exchanges) = app_and_exchanges(&lines);
    assert!(
        app.iter().filter(|l| l["dir"] == "in").count() >= 4,
        "requests and ACKs of both clients: {app:?}"
    );
    assert!(app.iter().all(|l| l["encrypted"] == true), "a calculator datagram in clear: {app:?}");
    assert!(exchanges.len() >= 2, "each client keyed its session: {exchanges:?}");
    assert!(exchanges.iter().all(|l| l["encrypted"] == false), "the exchange itself is in clear");
    assert!(
        of(&|l| l["command_name"] == "OPEN_SESSION").iter().all(|l| l["encrypted"] == false),
        "OPEN_SESSION stays in clear"
    );

    // The nodes count the keyed sessions.
    let keyed: u64 = operators
        .iter()
        .map(|u| metric(&dabs_testkit::http::get_text(u, "/metrics"), "dabs_mp_sessions_encrypted_total"))
        .sum();
    assert!(keyed >= 2, "dabs calc and the SDK client were keyed: {keyed}");

    // Drain the SDK client's node: FAILOVER moves it, and the new session is keyed too.
    dabs_testkit::client::drain_and_follow(DABS, &client, SECRET).await;
    assert_eq!(mul(&client).await, Ok(PRODUCT), "computed on the alternate");
    assert_eq!(client.failovers().accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(sealed_ep.stats().await.unwrap().sessions_encrypted, 2, "both sessions keyed");

    // On the client's own wire, before and after the move: every datagram of a session is
    // sealed except those that set it up, and the operands never appear.
    let records = drain(&mut tap);
    let mut app_datagrams = 0;
    for r in &records {
        assert!(!contains(&r.data, &needle), "operands in clear on the wire: {:?}", r.data);
        let Ok(d) = decode(&r.data) else { continue };
        let h = d.header;
        let setup = h.command == SystemCommand::OpenSession.number() || h.command == dabs_net::KEY_EXCHANGE;
        if h.session != 0 && !setup {
            assert!(h.encrypted, "clear datagram in an encrypted session: {h:?}");
        }
        app_datagrams += usize::from(h.command == MUL);
    }
    let peers: std::collections::HashSet<_> = records
        .iter()
        .filter(|r| decode(&r.data).is_ok_and(|d| d.header.command == MUL))
        .map(|r| &r.peer)
        .collect();
    assert!(
        app_datagrams >= 4 && peers.len() == 2,
        "a call on each server: {app_datagrams} datagrams, {peers:?}"
    );
    client.stop().await;
}

/// A one-node farm whose node refuses encryption when `accept` is false.
fn refusing_node(accept: bool) -> NodeConfigBuilder {
    NodeConfigBuilder::new("t", random_group(), "solo")
        .operator()
        .data_dir("data")
        .accept_encryption(accept)
        .app("calc", true)
}

#[test]
fn a_node_that_refuses_encryption_tells_an_encrypting_calc_why() {
    let dir = temp_dir("refuse-encryption");

    // A value of the wrong type is refused with the file and line, like any other key.
    let good = refusing_node(false);
    let text = good.toml().replace("accept_encryption = false", "accept_encryption = \"no\"");
    let line = 1 + text.lines().position(|l| l.starts_with("accept_encryption")).unwrap();
    let bad = good.path_in(&dir);
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(DABS).arg("node").arg("--config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("solo.toml:{line}:")) && err.contains("node.accept_encryption"), "{err}");

    let config = good.write(&dir);
    let node = NodeProc::start(DABS, &config);
    let group = node.ready.group.to_string();
    let mp = node.mp.to_string();
    node.wait_for_decider(); // the node decides group opens
    let calc = |farm: &str, encrypt: bool| {
        let mut c = Command::new(DABS);
        c.args(["calc", "--farm", farm, "6", "x", "7"]);
        if encrypt {
            c.arg("--encrypt");
        }
        c.output().unwrap()
    };
    let results = [calc(&mp, true), calc(&group, true), calc(&mp, false)];
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    for (how, out) in ["direct", "through the group"].iter().zip(&results[..2]) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && out.stdout.is_empty(), "{how}: no result in clear: {err}");
        assert!(
            err.contains("NAK 13") && err.contains("accept_encryption = false"),
            "{how}: says why: {err}"
        );
    }
    assert_eq!(String::from_utf8_lossy(&results[2].stdout).trim(), "42", "clear clients are still served");
}
