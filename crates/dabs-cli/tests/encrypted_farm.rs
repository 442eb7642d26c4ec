//! Encrypted sessions (R-MP-5) through a farm of real node processes: what the wire, the
//! trace and the metrics show, a client following FAILOVER stays encrypted, and a node that
//! refuses encryption says so.

mod common;

use common::{DABS, temp_dir};
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle, TapRecord};
use dabs_sdk::{FarmClient, FarmClientOptions, decode_reply, encode_args};
use dabs_wire::{SystemCommand, decode};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// `GET path` from an operator interface (`http://IP:PORT/`), the body as text.
fn http_get(base: &str, path: &str) -> String {
    let authority = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "GET {path}: {text}");
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
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

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_calculations_through_the_farm_are_sealed_on_the_wire() {
    let farm = common::Farm::up_with(3, "encrypted", &["--secret", SECRET]);
    tokio::time::sleep(Duration::from_millis(1800)).await; // a decider settles
    let group = farm.group();
    let operators: Vec<String> = farm.manifest()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["operator"].as_str().expect("operator URL in farm.json").to_owned())
        .collect();
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
    let mut traces: Vec<Child> = operators
        .iter()
        .map(|url| {
            Command::new(DABS)
                .args(["trace", "--node", url, "--json", "--token", &token])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in &mut traces {
        stop(t);
    }
    let mut lines = Vec::new();
    for t in traces {
        let out = t.wait_with_output().unwrap();
        for l in BufReader::new(&out.stdout[..]).lines() {
            lines.push(
                serde_json::from_str::<serde_json::Value>(&l.unwrap()).expect("one JSON object per line"),
            );
        }
    }
    let of = |pred: &dyn Fn(&serde_json::Value) -> bool| lines.iter().filter(|l| pred(l)).collect::<Vec<_>>();
    // Only the two encrypted clients made calculator or STARTED traffic while tracing.
    let app = of(&|l| l["command"].as_u64().is_some_and(|c| c >= 256 || c == 5));
    assert!(
        app.iter().filter(|l| l["dir"] == "in").count() >= 4,
        "requests and ACKs of both clients: {app:?}"
    );
    assert!(app.iter().all(|l| l["encrypted"] == true), "a calculator datagram in clear: {app:?}");
    let exchanges = of(&|l| l["command_name"] == "KEY_EXCHANGE" && l["dir"] == "in");
    assert!(exchanges.len() >= 2, "each client keyed its session: {exchanges:?}");
    assert!(exchanges.iter().all(|l| l["encrypted"] == false), "the exchange itself is in clear");
    assert!(
        of(&|l| l["command_name"] == "OPEN_SESSION").iter().all(|l| l["encrypted"] == false),
        "OPEN_SESSION stays in clear"
    );

    // The nodes count the keyed sessions.
    let keyed: u64 =
        operators.iter().map(|u| metric(&http_get(u, "/metrics"), "dabs_mp_sessions_encrypted_total")).sum();
    assert!(keyed >= 2, "dabs calc and the SDK client were keyed: {keyed}");

    // Drain the SDK client's node: FAILOVER moves it, and the new session is keyed too.
    let Some(Addr::Udp(home)) = client.server().await else { panic!("no server") };
    let out = Command::new(DABS).args(["drain", &home.to_string(), "--secret", SECRET]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = Instant::now();
    while !matches!(client.server().await, Some(Addr::Udp(a)) if a != home) {
        assert!(t.elapsed() < Duration::from_secs(3), "client did not move after the drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

fn write_refusing_node(dir: &std::path::Path, group: &str, accept: &str) -> std::path::PathBuf {
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[farm]\nname = \"t\"\ngroup = \"{group}\"\n\n[node]\nname = \"solo\"\nbind = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\naccept_encryption = {accept}\n\n[[app]]\nname = \"calc\"\nstart_at_init = true\n"
        ),
    )
    .unwrap();
    config
}

#[test]
fn a_node_that_refuses_encryption_tells_an_encrypting_calc_why() {
    let dir = temp_dir("refuse-encryption");
    let r = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let group = format!("239.255.{}.{}:{}", r % 250 + 2, (r >> 8) % 250 + 2, 42_000 + (r >> 16) % 1000);

    // A value of the wrong type is refused with the file and line, like any other key.
    let bad = write_refusing_node(&dir, &group, "\"no\"");
    let out = Command::new(DABS).arg("node").arg("--config").arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("node.toml:9:") && err.contains("node.accept_encryption"), "{err}");

    let config = write_refusing_node(&dir, &group, "false");
    let mut node =
        Command::new(DABS).arg("node").arg("--config").arg(&config).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(node.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mp = line.split_whitespace().skip_while(|w| *w != "mp").nth(1).unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1700)); // the node decides group opens
    let calc = |farm: &str, encrypt: bool| {
        let mut c = Command::new(DABS);
        c.args(["calc", "--farm", farm, "6", "x", "7"]);
        if encrypt {
            c.arg("--encrypt");
        }
        c.output().unwrap()
    };
    let results = [calc(&mp, true), calc(&group, true), calc(&mp, false)];
    let _ = node.kill();
    let _ = node.wait();
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
