//! Issue 11, "Why": attacks on the control plane from another process on the same host,
//! without the farm secret, against `dabs farm up --nodes 3 --secret HEX` (real node processes
//! on loopback). Each attack must leave the farm as it was, be counted in
//! `dabs_auth_failures_total`, and never stop a legitimate client from being served.
//!
//! The attacker here knows only what the wire shows, so this file uses nothing of the
//! control plane's construction: it captures, renames, replays and forges.

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
use dabs_farm_proto::shapes::{Assign, OpenAsk, cbor};
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle};
use dabs_node::stats::NodeStats;
use dabs_testkit::Farm;
use dabs_wire::{Header, SystemCommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

async fn endpoint() -> EndpointHandle {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 6, ..Config::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap()
}

struct Target {
    farm: Farm,
    mps: Vec<SocketAddr>,
    operators: Vec<String>,
}

/// A farm of three with a secret, once every node sees all three.
async fn farm(name: &str) -> Target {
    let farm = Farm::up_with(DABS, 3, name, &["--secret", SECRET]);
    let nodes = farm.manifest()["nodes"].as_array().unwrap().clone();
    let mps: Vec<SocketAddr> = nodes.iter().map(|n| n["mp"].as_str().unwrap().parse().unwrap()).collect();
    let operators = nodes.iter().map(|n| n["operator"].as_str().unwrap().to_owned()).collect();
    for mp in &mps {
        eventually("every node sees three members", Duration::from_secs(10), async || {
            view(*mp).await.is_some_and(|(_, members)| members.len() == 3)
        })
        .await;
    }
    Target { farm, mps, operators }
}

/// Polls `check` every 50 ms until it holds, for at most `limit`.
async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !check().await {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node's own statistics and its view of the farm, through GET_STATISTICS (open to tools).
async fn view(mp: SocketAddr) -> Option<(NodeStats, Vec<NodeStats>)> {
    let ep = endpoint().await;
    let ask = OpenAsk { node: Some("observer".into()), ..Default::default() }.to_cbor();
    let s = ep.open(Addr::Udp(mp), 0, ask).await.ok()?;
    let reply = s.call(SystemCommand::GetStatistics.number(), vec![]).await.ok()?;
    s.close();
    ciborium::from_reader(&reply[..]).ok()
}

fn decider(members: &[NodeStats]) -> Option<String> {
    members.iter().min_by_key(|m| (m.started_ms, m.node.clone())).map(|m| m.node.clone())
}

/// `name`'s value in a node's `/metrics` (0 when absent).
fn metric(operator: &str, name: &str) -> u64 {
    use std::io::{Read, Write};
    let host = operator.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// A legitimate client: opens through the group and adds.
async fn client_adds(group: SocketAddr) {
    let ep = endpoint().await;
    let ask = OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor();
    let s = ep.open(Addr::Udp(group), 1, ask).await.expect("a legitimate client gets in");
    let reply = s.call(256, cbor(&(20_i64, 22_i64))).await.expect("and is answered");
    let v: BTreeMap<String, i64> = ciborium::from_reader(&reply[..]).unwrap();
    assert_eq!(v["ok"], 42);
    s.close();
}

/// One announcement heard on the farm's group: its datagram, header and statistics.
async fn capture(group: SocketAddr) -> (Vec<u8>, Header, NodeStats) {
    let SocketAddr::V4(g) = group else { panic!("IPv4 group") };
    let socket = dabs_net::join_group(g, std::net::Ipv4Addr::LOCALHOST).unwrap();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (n, _) = tokio::time::timeout_at(deadline.into(), socket.recv_from(&mut buf))
            .await
            .expect("an announcement within 5 s")
            .unwrap();
        let Ok(d) = dabs_wire::decode(&buf[..n]) else { continue };
        if d.header.command == SystemCommand::Announce.number()
            && let Ok(stats) = NodeStats::from_cbor(d.payload)
            && !stats.leaving
        {
            return (buf[..n].to_vec(), d.header, stats);
        }
    }
}

/// `stats` in place of the captured statistics, keeping whatever followed them (a captured
/// tag, if the farm adds one).
fn renamed_payload(captured: &[u8], stats: &NodeStats) -> Vec<u8> {
    let d = dabs_wire::decode(captured).unwrap();
    let mut rest = d.payload;
    let _: ciborium::Value = ciborium::from_reader(&mut rest).unwrap();
    let mut out = stats.to_cbor();
    out.extend_from_slice(rest);
    out
}

/// Forged: a captured announcement renamed, started at the dawn of time, with no load, so it
/// would win placements and become the decider. Replayed: the captured datagram as it was, from
/// another socket. Neither makes a member or moves the decider; both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_replayed_announce_makes_no_member_and_no_decider() {
    let t = farm("attack-announce").await;
    let group = t.farm.group();
    let (_, before) = view(t.mps[0]).await.unwrap();
    let leader = decider(&before).unwrap();
    let failures: Vec<u64> = t.operators.iter().map(|o| metric(o, "dabs_auth_failures_total")).collect();

    let (raw, header, stats) = capture(group).await;
    let attacker = endpoint().await;
    let replayer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = NodeStats {
        node: "evil".into(),
        started_ms: 1,
        seq: 1 << 40,
        mp: attacker.local_addrs().udp,
        portions: Vec::new(),
        accepting: true,
        draining: false,
        health: 100,
        ..stats
    };
    // A lease and a half of it, as often as a member announces.
    let until = Instant::now() + Duration::from_millis(2300);
    let mut seq = forged.seq;
    while Instant::now() < until {
        seq += 1;
        let payload = renamed_payload(&raw, &NodeStats { seq, ..forged.clone() });
        for mp in &t.mps {
            attacker.send_sessionless(Addr::Udp(*mp), header, payload.clone()).unwrap();
            replayer.send_to(&raw, mp).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, mp) in t.mps.iter().enumerate() {
        let (_, members) = view(*mp).await.unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
        assert!(!names.contains(&"evil"), "node {i} took the forged member: {names:?}");
        assert_eq!(decider(&members).as_deref(), Some(leader.as_str()), "node {i}'s decider moved");
        let now = metric(&t.operators[i], "dabs_auth_failures_total");
        assert!(now > failures[i], "node {i} did not count the forgeries ({} -> {now})", failures[i]);
    }
    client_adds(group).await;
}

/// A fake member announcing settings version 2^64−1 and answering the fetch: no node adopts
/// it, so the operator's next change cannot wrap to 0 and be overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_member_offering_settings_version_max_is_not_adopted() {
    let t = farm("attack-settings").await;
    let group = t.farm.group();
    let (_, header, stats) = capture(group).await;
    // The fake member answers every open and every SETTINGS with the highest version.
    let fake = endpoint().await;
    let settings = serde_json::json!({
        "version": u64::MAX, "changed_by": "evil", "max_message_latency_ms": 200, "low_water_ms": 100,
        "failover_threshold": 0, "connection_threshold": 0, "return_threshold": 0, "apps": {},
    });
    let answer = cbor(&settings);
    let mut opens = fake.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let _ = open.accept(0, cbor(&BTreeMap::from([("node", "evil")]))).await;
        }
    });
    let mut requests = fake.register_queue(0);
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = fetched.clone();
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            req.reply(answer.clone());
        }
    });
    let failures: Vec<u64> = t.operators.iter().map(|o| metric(o, "dabs_auth_failures_total")).collect();
    let fake_stats = NodeStats {
        node: "evil".into(),
        mp: fake.local_addrs().udp,
        settings_version: u64::MAX,
        seq: 1 << 40,
        portions: Vec::new(),
        ..stats
    };
    let until = Instant::now() + Duration::from_millis(2000);
    let mut seq = fake_stats.seq;
    while Instant::now() < until {
        seq += 1;
        let payload = NodeStats { seq, ..fake_stats.clone() }.to_cbor();
        for mp in &t.mps {
            fake.send_sessionless(Addr::Udp(*mp), header, payload.clone()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, mp) in t.mps.iter().enumerate() {
        let (me, _) = view(*mp).await.unwrap();
        assert!(me.settings_version < 1 << 32, "node {i} adopted settings version {}", me.settings_version);
        let now = metric(&t.operators[i], "dabs_auth_failures_total");
        assert!(now > failures[i], "node {i} did not count the forged announcements");
    }
    assert_eq!(fetched.load(std::sync::atomic::Ordering::Relaxed), 0, "a node fetched from the fake member");
    client_adds(group).await;
}

/// Anyone may open a session naming itself a node. SPAWN there starts nothing (no flood of
/// portions), and ASSIGN makes the node answer nobody: no REPLY reaches the third party
/// the ASSIGN names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_in_a_node_session_cannot_spawn_or_assign() {
    let t = farm("attack-commands").await;
    let group = t.farm.group();
    let target = t.mps[0];
    let portions_before = metric(&t.operators[0], "dabs_portions");
    assert!(portions_before >= 1, "the calculator starts at initialisation");
    let failures = metric(&t.operators[0], "dabs_auth_failures_total");

    let stranger = endpoint().await;
    let ask = OpenAsk { node: Some("node-2".into()), ..Default::default() }.to_cbor();
    let s = stranger.open(Addr::Udp(target), 0, ask).await.expect("a tool may open a session");
    let spawn = cbor(&BTreeMap::from([("app", "calc"), ("cause", "attack")]));
    for i in 0..20 {
        let r = s.call(SystemCommand::Spawn.number(), spawn.clone()).await;
        assert!(r.is_err(), "SPAWN {i} from a stranger was served: {r:?}");
    }
    // The third party: a socket that never asked for anything.
    let victim = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let assign = Assign {
        client: victim.local_addr().unwrap(),
        tx: 7,
        stamp: 1234,
        src: 1,
        crc: false,
        app: "calc".into(),
        va: None,
        start_new: true,
        overflow: true,
        class: None,
        group: None,
        security: false,
        pinned: false,
        fence: None,
        device: None,
    };
    let r = s.call(SystemCommand::Assign.number(), cbor(&assign)).await;
    assert!(r.is_err(), "ASSIGN from a stranger was served: {r:?}");
    let mut buf = [0u8; 2048];
    // Absence can only be shown by waiting: a REPLY goes out at once when the node obeys.
    let heard = tokio::time::timeout(Duration::from_millis(1500), victim.recv_from(&mut buf)).await;
    assert!(heard.is_err(), "the node sent the third party {heard:?}");

    assert_eq!(metric(&t.operators[0], "dabs_portions"), portions_before, "a stranger started portions");
    assert!(metric(&t.operators[0], "dabs_auth_failures_total") >= failures + 21, "refusals are counted");
    client_adds(group).await;
}
