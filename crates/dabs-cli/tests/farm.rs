//! The farm with real node processes on loopback. One test (the portion move) runs its nodes
//! in this process instead, so that its portions can count every execution.

use dabs_farm_proto::shapes::{OpenAsk, parse_open_reply};
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle};
use dabs_node::stats::NodeStats;
use dabs_wire::{NakCode, SystemCommand};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dabs_testkit::membership::{wait_for_decider, wait_for_decider_at_async};
use dabs_testkit::{Farm, Lines, NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, eventually_async};
use dabs_testkit::{random_group, temp_dir};

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// How long a farm is watched for an OPEN_SESSION answered twice. Nothing to wait *for* here:
/// the test asserts that something never happens, and that takes a window.
const SECOND_ANSWER_WINDOW: Duration = Duration::from_millis(1500);

async fn endpoint() -> EndpointHandle {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 10, ..Config::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap()
}

fn calc_ask() -> Vec<u8> {
    OpenAsk { app: Some("calc".into()), ..Default::default() }.to_cbor()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_group_opens_are_each_answered_once() {
    let farm = Farm::up(DABS, 3, "opens");
    let group = Addr::Udp(farm.group());
    // Wait for a decider: the first open succeeds once the farm has settled.
    let probe = endpoint().await;
    probe.open(group.clone(), 1, calc_ask()).await.expect("farm never answered");

    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(endpoint().await);
    }
    let opens = clients.iter().map(|ep| {
        let (ep, group) = (ep.clone(), group.clone());
        tokio::spawn(async move { ep.open(group, 1, calc_ask()).await })
    });
    let mut servers: BTreeMap<String, usize> = BTreeMap::new();
    for o in opens {
        let session = o.await.unwrap().expect("open failed");
        let (_, addr, _) = parse_open_reply(&session.reply).unwrap();
        assert_eq!(session.peer, Addr::Udp(addr), "the REPLY comes from the portion's own endpoint");
        *servers.entry(addr.to_string()).or_default() += 1;
    }
    // Give any second answer time to arrive, then count: none may have.
    tokio::time::sleep(SECOND_ANSWER_WINDOW).await;
    for ep in &clients {
        let stats = ep.stats().await.unwrap();
        assert_eq!(stats.sessions_opened, 1);
        assert_eq!(stats.extra_open_replies, 0, "an OPEN_SESSION was answered twice");
    }
    assert_eq!(servers.values().sum::<usize>(), 100);
    assert!(servers.len() >= 2, "a burst of opens should spread over the farm: {servers:?}");
}

#[test]
fn killing_a_node_loses_no_calls() {
    let out =
        Command::new(DABS).args(["demo", "--json", "--clients", "40", "--seconds", "6"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["wrong"], 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["calls"].as_u64().unwrap() > 100, "{summary}");
    // Half the clients report this host's device, half a constrained one: the farm places
    // IntegerOps in the sandbox of the first kind only.
    assert_eq!(summary["fat_clients"], 20, "{summary}");
    assert!(summary["local_calls"].as_u64().unwrap() > 0, "{summary}");
    let nodes = summary["per_node"].as_array().unwrap();
    let killed: Vec<_> = nodes.iter().filter(|n| n["killed"] == true).collect();
    assert_eq!(killed.len(), 1, "{summary}");
    assert_eq!(killed[0]["sessions"], 0, "clients left the killed node: {summary}");
    let moved: u64 = nodes.iter().map(|n| n["sessions"].as_u64().unwrap()).sum();
    assert_eq!(moved, 40, "every client ends on a live node: {summary}");
    assert!(summary["reopened_clients"].as_u64().unwrap() > 0, "the kill moved somebody: {summary}");
    assert_eq!(summary["va_kept"], 40, "clients keep their virtual address across the move: {summary}");
}

/// A one-node farm's config: the calculator starts no portion by itself, so every portion
/// the node runs was started for a client and can only come back from the database.
fn write_node_config(dir: &Path) -> PathBuf {
    NodeConfigBuilder::new("t", random_group(), "solo")
        .operator()
        .data_dir("data")
        .app("calc", false)
        .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
        .write(dir)
}

/// The operator token of the nodes these tests configure themselves.
const TOKEN: &str = "farm-test-token-0123456789abcdef";

/// A direct (unicast) open of a calculator session at `mp`: (virtual address, queue).
async fn open_calc_at(ep: &EndpointHandle, mp: std::net::SocketAddr) -> (String, u16, dabs_net::Session) {
    let s = ep
        .open(Addr::Udp(mp), 1, calc_ask())
        .await
        .unwrap_or_else(|e| panic!("{mp} does not take a calculator client: {e}"));
    let (va, addr, queue) = parse_open_reply(&s.reply).unwrap();
    assert_eq!(addr, mp, "a direct open is answered by the node itself");
    (va, queue, s)
}

/// `GET /api/node`'s portions as (virtual address, queue).
fn served_portions(url: &str) -> BTreeMap<String, u16> {
    let (status, node) = dabs_testkit::http::json("GET", url, "/api/node", None);
    assert_eq!(status, 200, "{node}");
    node["portions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["va"].as_str().unwrap().to_owned(), p["queue"].as_u64().unwrap() as u16))
        .collect()
}

/// Waits (at most 5 s) until the node at `url` counts `n` client sessions on its portions. The
/// node counts a session only after its REPLY has gone, so an open sent straight after the
/// previous one's REPLY could otherwise find that portion still looking empty.
fn wait_for_sessions(url: &str, n: u64) {
    eventually(&format!("the node counts {n} sessions"), Duration::from_secs(5), POLL, || {
        let (_, node) = dabs_testkit::http::json("GET", url, "/api/node", None);
        let counted: u64 =
            node["portions"].as_array().unwrap().iter().map(|p| p["sessions"].as_u64().unwrap()).sum();
        if counted == n { Ok(()) } else { Err(format!("it counts {counted}: {node}")) }
    })
}

/// The portion records in the node's database (read while the node is stopped): virtual
/// address to (queue, started_ms).
fn recorded_portions(data_dir: &Path) -> BTreeMap<String, (u16, u64)> {
    let db = dabs_node::db::Db::open(data_dir).unwrap();
    db.portions().unwrap().into_iter().map(|r| (r.va, (r.queue, r.started_ms))).collect()
}

/// R-RE-4 and R-RE-3 across a restart: a node that starts no portion by itself comes back with
/// the portions it had started for clients (same virtual addresses, queues and start times),
/// names a new portion with a number it never used, and keeps a setting changed at run time.
/// None of it can come from the config file: only from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_with_its_portions() {
    let dir = temp_dir("restart");
    let config = write_node_config(&dir);
    let data_dir = dir.join("data");
    let mut node = NodeProc::start(DABS, &config);
    let url = node.url().to_owned();

    // A run-time setting (R-RE-3): one session fills a portion, so each client gets its own.
    let change = serde_json::json!({
        "max_message_latency_ms": 4321,
        "apps": {"calc": {"max_sessions_per_portion": 1}},
    });
    let (status, settings) =
        dabs_testkit::http::json_as(Some(TOKEN), "PUT", &url, "/api/settings", Some(&change));
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["version"], 1, "{settings}");
    assert_eq!(settings["apps"]["calc"]["max_sessions_per_portion"], 1, "{settings}");

    let ep = endpoint().await;
    let mut before = BTreeMap::new();
    let mut sessions = Vec::new();
    for i in 1..=3 {
        let (va, queue, s) = open_calc_at(&ep, node.mp).await;
        assert!(
            before.insert(va.clone(), queue).is_none(),
            "{va} handed out twice, though one session fills a portion"
        );
        sessions.push(s);
        wait_for_sessions(&url, i);
    }
    assert_eq!(served_portions(&url), before, "the node runs exactly the portions it started for clients");
    drop(sessions);
    assert!(node.terminate().success(), "clean stop on SIGTERM");
    let recorded = recorded_portions(&data_dir);
    assert_eq!(
        recorded.iter().map(|(va, (q, _))| (va.clone(), *q)).collect::<BTreeMap<_, _>>(),
        before,
        "the database holds every portion"
    );

    let node = NodeProc::start(DABS, &config);
    let url = node.url().to_owned();
    let (_, settings_after) = dabs_testkit::http::json("GET", &url, "/api/settings", None);
    assert_eq!(settings_after, settings, "the run-time settings survive the restart");
    assert_eq!(served_portions(&url), before, "portions come back under their addresses and queues");

    // The restored portions take one client each; the fourth client needs a new portion, which
    // must get a name (and queue) of its own, not a restored portion's.
    let ep = endpoint().await;
    let mut after = BTreeMap::new();
    let mut sessions = Vec::new();
    for i in 1..=4 {
        let (va, queue, s) = open_calc_at(&ep, node.mp).await;
        assert!(
            after.insert(va.clone(), queue).is_none(),
            "{va} handed out twice, though one session fills a portion"
        );
        sessions.push(s);
        wait_for_sessions(&url, i);
    }
    let new: Vec<_> = after.iter().filter(|(va, _)| !before.contains_key(*va)).collect();
    assert_eq!(new.len(), 1, "one new portion beside the restored ones: before {before:?}, after {after:?}");
    let (new_va, new_queue) = new[0];
    assert!(!before.values().any(|q| q == new_queue), "{new_va} took a restored portion's queue {new_queue}");
    for (va, q) in &before {
        assert_eq!(after.get(va), Some(q), "restored {va} kept its queue while a new portion started");
    }
    assert_eq!(served_portions(&url), after, "the new portion did not replace a restored one");
    drop(sessions);
    let mut node = node;
    assert!(node.terminate().success(), "clean stop on SIGTERM");

    // Start times are only in the records: a restored portion keeps its first one.
    let recorded_after = recorded_portions(&data_dir);
    for (va, started) in &recorded {
        assert_eq!(recorded_after.get(va), Some(started), "{va}'s record (queue, started_ms) changed");
    }
    assert!(recorded_after.contains_key(new_va.as_str()), "the new portion is recorded");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn farm_view(
    mp: std::net::SocketAddr,
) -> Result<(NodeStats, Vec<NodeStats>, dabs_net::Session), String> {
    let ep = endpoint().await;
    let ask = OpenAsk { node: Some("test".into()), ..Default::default() }.to_cbor();
    let s = ep.open(Addr::Udp(mp), 0, ask).await.map_err(|e| e.to_string())?;
    let reply = s.call(SystemCommand::GetStatistics.number(), vec![]).await.map_err(|e| e.to_string())?;
    let (me, members): (NodeStats, Vec<NodeStats>) =
        ciborium::from_reader(&reply[..]).map_err(|e| e.to_string())?;
    Ok((me, members, s))
}

/// Every member name in the view of the node whose operator interface is `url`.
async fn view_of(url: &str) -> Result<BTreeSet<String>, String> {
    let farm = dabs_ops::get_json(url, "/api/farm").await?;
    let members = farm["members"].as_array().ok_or_else(|| format!("no members in {farm}"))?;
    Ok(members.iter().filter_map(|m| m["name"].as_str().map(str::to_owned)).collect())
}

/// Pause between two reads of one view.
const VIEW_POLL: Duration = Duration::from_millis(50);

/// What one node's view showed while it was watched.
#[derive(Debug)]
struct Watched {
    /// The node whose view it is.
    viewer: String,
    /// When (after the event) the last read was sent that did not yet show the change.
    last_before: Option<Duration>,
    /// When the first read was sent that showed it.
    first_after: Option<Duration>,
    /// Reads that showed the change undone after it had been seen (e.g. a member back).
    undone: usize,
}

/// Reads each view in `viewers` (name, operator URL) every [`VIEW_POLL`] from `since` until it
/// shows `changed` and `watch_for` has passed (at most 10 s), all views at once.
async fn watch_views(
    viewers: &[(String, String)],
    since: Instant,
    watch_for: Duration,
    changed: impl Fn(&BTreeSet<String>) -> bool + Clone + Send + 'static,
) -> Vec<Watched> {
    let tasks: Vec<_> = viewers
        .iter()
        .cloned()
        .map(|(viewer, url)| {
            let changed = changed.clone();
            tokio::spawn(async move {
                let mut w = Watched { viewer, last_before: None, first_after: None, undone: 0 };
                loop {
                    let sent = since.elapsed();
                    if let Ok(view) = view_of(&url).await {
                        match (changed(&view), w.first_after) {
                            (true, None) => w.first_after = Some(sent),
                            (true, Some(_)) => {}
                            (false, None) => w.last_before = Some(sent),
                            (false, Some(_)) => {
                                w.undone += 1;
                                w.last_before = Some(sent);
                            }
                        }
                    }
                    if (w.first_after.is_some() && sent >= watch_for) || sent > Duration::from_secs(10) {
                        return w;
                    }
                    // The sampling rate of the measurement (when each view changed), not a wait
                    // for the change: the watch itself is bounded above.
                    tokio::time::sleep(VIEW_POLL).await;
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Asserts that every view showed the change within `bound` of the event and kept it. A view
/// fails only on proof: a read sent later than `bound` after the event that did not show it
/// (what it returned was true at some moment after it was sent). Slow answers cannot fail it.
fn assert_within(what: &str, bound: Duration, watched: &[Watched]) {
    eprintln!("{what}: {watched:?}");
    for w in watched {
        assert!(w.first_after.is_some(), "{what}: {}'s view never showed it in 10 s ({w:?})", w.viewer);
        assert!(
            w.last_before.is_none_or(|t| t <= bound),
            "{what}: {}'s view did not show it {:?} after the event, later than {bound:?} ({w:?})",
            w.viewer,
            w.last_before.unwrap()
        );
    }
}

/// A config for one more member of a `dabs farm up` farm (farm "local" on `group`), with the
/// farm's secret from its farm.json.
fn extra_member_config(dir: &Path, group: std::net::SocketAddrV4, name: &str) -> PathBuf {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("farm.json")).unwrap()).unwrap();
    let builder = NodeConfigBuilder::new("local", group, name).operator().app("calc", true);
    match manifest["secret"].as_str() {
        Some(secret) => builder.secret(secret).write(dir),
        None => builder.write(dir),
    }
}

/// R-RE-1: "a stopped or killed node disappears from every view within 3 s; a new node is
/// seen by all within 1 s" — read from every node's own view (its operator API), timed from
/// the new node's ready line (it announces itself just before printing it), the SIGKILL and
/// the SIGTERM. RESOLVE_VA is answered by any node for any live portion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_joins_and_deaths_and_answers_virtual_addresses() {
    let farm = Farm::up(DABS, 3, "membership");
    let nodes = farm.manifest()["nodes"].as_array().unwrap().clone();
    let mp = |i: usize| -> std::net::SocketAddr { nodes[i]["mp"].as_str().unwrap().parse().unwrap() };
    let viewer = |i: usize| (format!("node-{}", i + 1), nodes[i]["operator"].as_str().unwrap().to_owned());
    // Every node sees all three within 1 s of the last one starting (farm.json is written once
    // the last has started). Failing takes a look begun 1 s after it that still misses one.
    eventually_async("every node sees all three within 1 s", Duration::from_secs(1), VIEW_POLL, async || {
        for i in 0..3 {
            let (_, members, _) = farm_view(mp(i)).await?;
            if members.len() != 3 {
                return Err(format!(
                    "node {i} sees {:?}",
                    members.iter().map(|m| &m.node).collect::<Vec<_>>()
                ));
            }
        }
        Ok(())
    })
    .await;
    // RESOLVE_VA: any node answers for any live portion.
    let (me2, _, s0) = farm_view(mp(1)).await.unwrap();
    let va = me2.portions[0].va.clone();
    let ask = dabs_farm_proto::shapes::cbor(&BTreeMap::from([("va", va.clone())]));
    let (_, _, s2) = farm_view(mp(2)).await.unwrap();
    let reply = s2.call(SystemCommand::ResolveVa.number(), ask).await.unwrap();
    let resolved: dabs_farm_proto::shapes::Resolved = ciborium::from_reader(&reply[..]).unwrap();
    assert_eq!((resolved.va, resolved.addr, resolved.node), (va, mp(1), "node-2".to_string()));
    drop((s0, s2));

    // A fourth node joins: every member sees it, and it sees every member, within 1 s.
    let mut node4 = NodeProc::start(DABS, &extra_member_config(&farm.dir, farm.group_v4(), "node-4"));
    let joined = node4.ready_at;
    let mut viewers: Vec<(String, String)> = (0..3).map(viewer).collect();
    viewers.push(("node-4".into(), node4.url().to_owned()));
    let all: BTreeSet<String> = (1..=4).map(|i| format!("node-{i}")).collect();
    let watched = watch_views(&viewers, joined, Duration::ZERO, move |v| v.is_superset(&all)).await;
    assert_within("node-4 joined", Duration::from_secs(1), &watched);

    // node-3 is killed: gone from every survivor's view within 3 s, and stays gone.
    let pid = nodes[2]["pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on a process of our own farm.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let killed = Instant::now();
    let survivors = [viewers[0].clone(), viewers[1].clone(), viewers[3].clone()];
    let watched =
        watch_views(&survivors, killed, Duration::from_millis(3500), |v| !v.contains("node-3")).await;
    assert_within("node-3 killed", Duration::from_secs(3), &watched);
    for w in &watched {
        assert_eq!(w.undone, 0, "node-3 came back into {}'s view after it had gone ({w:?})", w.viewer);
    }

    // node-4 stops cleanly: gone from every survivor's view within 3 s, and stays gone.
    node4.signal(libc::SIGTERM);
    let stopped = Instant::now();
    let watched =
        watch_views(&viewers[..2], stopped, Duration::from_millis(3500), |v| !v.contains("node-4")).await;
    assert!(node4.wait_exit().success(), "node-4 stops cleanly on SIGTERM");
    assert_within("node-4 stopped", Duration::from_secs(3), &watched);
    for w in &watched {
        // Its announcements say "leaving" from the moment it begins to stop.
        assert_eq!(w.undone, 0, "node-4 came back into {}'s view after it had gone ({w:?})", w.viewer);
    }
}

#[test]
fn a_bad_config_is_refused_with_file_and_line() {
    let dir = temp_dir("badconfig");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[farm]\nname = \"t\"\ngroup = \"10.0.0.1:47000\"\n\n[node]\nname = \"n\"\nbind = \"127.0.0.1:0\"\ndata_dir = \"d\"\n")
        .unwrap();
    let out = Command::new(DABS).arg("node").arg("--config").arg(&config).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:"), "names file and line: {err}");
    assert!(
        err.contains("farm.group") && err.contains("not a multicast address"),
        "says what is wrong: {err}"
    );
}

#[test]
fn independent_calculator_client_against_farm_up() {
    let farm = Farm::up(DABS, 3, "interop");
    let manifest = farm.manifest_path();
    dabs_testkit::run_python_check("check_calc_farm.py", &["--farm-json".as_ref(), manifest.as_os_str()]);
}

#[test]
fn status_prints_the_farm_and_trace_decodes_its_traffic() {
    let farm = Farm::up(DABS, 3, "status-trace");
    // The table marks the decider: wait until the farm has one.
    farm.wait_for_decider();
    let group = farm.group().to_string();
    let out = Command::new(DABS).args(["status", "--farm", &group]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    for n in ["node-1", "node-2", "node-3"] {
        assert!(table.contains(n), "{n} missing from\n{table}");
    }
    assert!(
        table.lines().any(|l| l.starts_with("node-1") && l.contains('*')),
        "the leader is marked:\n{table}"
    );

    // Trace node-1 while a calculation passes through the farm.
    let url = farm.operators()[0].clone();
    let token = farm.token();
    let trace = Lines::spawn(Command::new(DABS).args(["trace", "--node", &url, "--json", "--token", &token]));
    let filtered = Lines::spawn(
        Command::new(DABS).args(["trace", "--node", &url, "--command", "16"]).env("DABS_TOKEN", &token),
    );
    // Both are connected once they show node-1's announcements (one every 250 ms).
    trace.wait_for("the JSON trace to show traffic", |l| !l.is_empty());
    filtered.wait_for("the filtered trace to show traffic", |l| !l.is_empty());
    for _ in 0..3 {
        let calc = Command::new(DABS).args(["calc", "--farm", &group, "6", "x", "7"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&calc.stdout).trim(), "42");
    }
    let open_in = |l: &String| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|l| l["command_name"] == "OPEN_SESSION" && l["dir"] == "in")
    };
    trace.wait_for("the group opens in the trace", |l| l.iter().any(open_in));
    let (_, json) = trace.interrupt();
    let (_, human) = filtered.interrupt();
    let lines: Vec<serde_json::Value> =
        json.iter().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert!(
        lines.iter().any(|l| l["command_name"] == "ANNOUNCE" && l["dir"] == "out"),
        "own announcements traced"
    );
    assert!(
        lines.iter().any(|l| l["command_name"] == "OPEN_SESSION" && l["dir"] == "in"),
        "group opens traced"
    );
    assert!(
        !human.is_empty() && human.iter().all(|l| l.contains("ANNOUNCE")),
        "filter by command:\n{human:#?}"
    );
}

#[test]
fn a_rising_load_makes_the_farm_spawn_portions_without_losing_calls() {
    let out = Command::new(DABS).args(["demo", "ramp", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ramp failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["spawns"].as_u64().unwrap() >= 2, "starvation must add portions: {summary}");
    assert!(stdout.contains("starved on db"), "the cause is shown:\n{stdout}");
    // Issue 5: spawns on more than one node. The summary's `spawn_nodes` also counts a move's
    // target ("spawned VA on request: moved from …"), so the starvation spawns are read from
    // the events the demo prints ("  [node-N] spawned VA …: … starved on db") as well.
    let spawn_nodes = summary["spawn_nodes"].as_array().unwrap();
    assert!(spawn_nodes.len() >= 2, "spawns on one node only: {summary}");
    let starved_spawns: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix('['))
        .filter_map(|l| l.split_once("] spawned "))
        .filter(|(_, text)| text.contains("starved on db") && !text.contains("moved from"))
        .map(|(node, _)| node)
        .collect();
    assert!(starved_spawns.len() >= 2, "starvation spawned portions on {starved_spawns:?} only:\n{stdout}");
    // Clients waiting on a starved portion are handed to less busy ones, by FAILOVER.
    assert!(summary["clients_moved"].as_u64().unwrap() >= 1, "no client left a starving portion: {summary}");
    let phases = summary["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 5);
    assert!(phases.iter().all(|p| p["calls"].as_u64().unwrap() > 0), "{summary}");
}

/// R-FO end to end with real processes: a stopped mandatory service takes node-1 past its
/// failover threshold; every client is moved, nothing is lost, forged notices are refused, and
/// the return after the service comes back is paced by the return bound (40 per 250 ms).
#[test]
fn a_failing_service_pushes_clients_away_and_they_return_staggered() {
    let out = Command::new(DABS).args(["demo", "failover", "--clients", "120", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failover demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(s["on_node1_at_start"], 120, "{s}");
    assert_eq!(s["moved"], 120, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["forged_injected"], 12, "{s}");
    assert_eq!(s["forged_rejected"], 12, "{s}");
    assert_eq!(s["returned"], 120, "{s}");
    // 120 clients at 40 per 250 ms: admissions 81..120 cannot start before 500 ms after the
    // first. Clients see their return up to a round trip later, hence the margin.
    assert!(s["return_span_ms"].as_u64().unwrap() >= 400, "the return was not paced: {s}");
    assert!(s["move_max_ms"].as_u64().unwrap() < s["baseline_ms"].as_u64().unwrap(), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_clients_with_authenticated_failover() {
    const SECRET: &str = "00112233445566778899aabbccddeeff";
    let farm = Farm::up_with(DABS, 3, "drain", &["--secret", SECRET]);
    wait_for_decider_at_async(farm.operators()).await;
    let group = farm.group();
    let ep = endpoint().await;
    let mut options = dabs_sdk::FarmClientOptions::new(group, "calc");
    options.secret = Some(hex_decode(SECRET));
    options.idempotent = true;
    let client = dabs_sdk::FarmClient::start(ep, options).await.expect("client starts");
    let add = |a: i64, b: i64| dabs_sdk::encode_args(&(a, b));
    assert_eq!(client.call(256, add(2, 3)).await.map(|r| dabs_sdk::decode_reply::<i64>(&r)), Ok(Ok(5)));
    let Some(Addr::Udp(home)) = client.server().await else { panic!("no server") };

    // A forged drain is refused; the genuine one moves the client.
    let forged = Command::new(DABS)
        .args(["drain", &home.to_string(), "--secret", "ffeeddccbbaa99887766554433221100"])
        .output()
        .unwrap();
    assert!(!forged.status.success(), "a drain with the wrong secret must be refused");
    assert_eq!(dabs_testkit::client::drain_and_follow(DABS, &client, SECRET).await, home);
    assert_eq!(client.failovers().accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(client.failovers().rejected.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(client.call(256, add(40, 2)).await.map(|r| dabs_sdk::decode_reply::<i64>(&r)), Ok(Ok(42)));
    // New sessions through the group avoid the drained node, once the farm knows it drains.
    let operators = farm.operators();
    eventually_async("every node to see the drained node draining", PATIENCE, POLL, async || {
        for url in &operators {
            let view = dabs_ops::get_json(url, "/api/farm").await?;
            let members = view["members"].as_array().cloned().unwrap_or_default();
            let drained = members.iter().find(|m| m["mp"] == home.to_string());
            if !drained.is_some_and(|m| m["draining"] == true) {
                return Err(format!("{url} shows {drained:?}"));
            }
        }
        Ok(())
    })
    .await;
    for _ in 0..6 {
        let s = endpoint().await.open(Addr::Udp(group), 1, calc_ask()).await.unwrap();
        assert_ne!(s.peer, Addr::Udp(home), "a new client was sent to the drained node");
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Executions of additions, by first operand, summed over every portion on every node.
type Executions = Arc<Mutex<HashMap<i64, u32>>>;

/// The slow calculator's addition (the `db` permit held for 2 ms per request, 16 workers on
/// one permit, as `dabs_calc::SlowCalcFactory`), counting each execution where it happens.
struct CountingSlowCalc {
    lock: Arc<dabs_sdk::TimedSemaphore>,
    executed: Executions,
}

impl dabs_sdk::ServerPortion for CountingSlowCalc {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> dabs_sdk::Handled {
        let _permit = loop {
            if let Ok(p) = self.lock.acquire().await {
                break p;
            }
        };
        // The work under test: a request holds the permit for 2 ms.
        tokio::time::sleep(Duration::from_millis(2)).await;
        match dabs_sdk::decode_args::<(i64, i64)>(&payload, 2) {
            Ok((a, b)) if command == 256 => {
                *self.executed.lock().unwrap().entry(a).or_default() += 1;
                dabs_sdk::Handled::Reply(dabs_sdk::encode_ok(&(a + b)))
            }
            _ => dabs_sdk::Handled::Reject(NakCode::UnknownCommand, format!("no command {command}")),
        }
    }
}

struct CountingSlowCalcFactory {
    executed: Executions,
}

impl dabs_farm_proto::portion::PortionFactory for CountingSlowCalcFactory {
    fn app(&self) -> &str {
        "slowcalc"
    }

    fn spawn(&self, ctx: dabs_farm_proto::portion::PortionContext) {
        let reporter = dabs_sdk::StarvationReporter::from_context(&ctx);
        let lock = Arc::new(dabs_sdk::TimedSemaphore::new("db", 1, reporter));
        let workers = (0..16)
            .map(|_| CountingSlowCalc { lock: lock.clone(), executed: self.executed.clone() })
            .collect();
        tokio::spawn(dabs_sdk::server::run_workers(workers, ctx));
    }
}

/// Node `i` of the move test's farm, in this process so its portions can count executions.
async fn counting_node(
    dir: &Path,
    group: std::net::SocketAddrV4,
    i: usize,
    executed: &Executions,
) -> dabs_node::Node {
    let config = NodeConfigBuilder::new("m", group, &format!("node-{i}"))
        .extra("[timeouts]\ndb = 15")
        .app("slowcalc", true)
        .build(dir);
    let factory = Arc::new(CountingSlowCalcFactory { executed: executed.clone() });
    dabs_node::Node::start(config, vec![factory]).await.unwrap()
}

/// R-LB-6 and R-VA-4: clients crowding node-1's one portion make it move the portion to a
/// new node; the clients follow under the same virtual address and no call fails, is lost or
/// runs twice. The clients do not declare their calls idempotent, so the SDK never sends a
/// call again unless it was refused unrun (NAK); the portion counts every execution. The nodes
/// run in this process (the same `Node` as `dabs node`) only so that the count can be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_node_moves_its_portion_and_clients_follow_the_address() {
    let dir = temp_dir("move");
    let group = random_group();
    let executed = Executions::default();
    let n1 = counting_node(&dir, group, 1, &executed).await;
    let mp1 = n1.mp_addr();
    wait_for_decider(&[n1.handle()]).await; // node-1 becomes the decider
    let group_addr = std::net::SocketAddr::V4(group);
    let mut clients = Vec::new();
    for _ in 0..24 {
        let mut options = dabs_sdk::FarmClientOptions::new(group_addr, "slowcalc");
        options.idempotent = false;
        options.max_reopens = 6;
        clients.push(Arc::new(dabs_sdk::FarmClient::start(endpoint().await, options).await.unwrap()));
    }
    let vas: Vec<Option<String>> = clients.iter().map(|c| c.va()).collect();
    assert!(vas.iter().all(|v| v.is_some() && v == &vas[0]), "all on node-1's one portion: {vas:?}");
    let n2 = counting_node(&dir, group, 2, &executed).await;
    let n3 = counting_node(&dir, group, 3, &executed).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, stop, answers) = (c.clone(), stop.clone(), answers.clone());
        // Each call's first operand is unique in the whole test: it names the request.
        tasks.push(tokio::spawn(async move {
            let (mut answered, mut failed) = (Vec::new(), Vec::new());
            let mut n = i as i64 * 1_000_000;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match c
                    .call(256, dabs_sdk::encode_args(&(n, 1)))
                    .await
                    .map(|r| dabs_sdk::decode_reply::<i64>(&r))
                {
                    Ok(Ok(v)) if v == n + 1 => {
                        answered.push(n);
                        answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    other => failed.push((n, format!("{other:?}"))),
                }
            }
            (answered, failed)
        }));
    }
    // Wait (bounded) until some client is served by another node under the same address.
    let t = Instant::now();
    let moved = loop {
        let mut moved = 0;
        for c in &clients {
            if matches!(c.server().await, Some(Addr::Udp(a)) if a != mp1) {
                moved += 1;
            }
        }
        if moved > 0 || t.elapsed() > Duration::from_secs(25) {
            break moved;
        }
        // The poll of a bounded wait (25 s): the outcome is asserted below, after the nodes stop.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Calls go on across and after the move: as many again as there are clients, at least.
    let at_move = answers.load(std::sync::atomic::Ordering::SeqCst);
    eventually_async("calls answered after the move", PATIENCE, POLL, async || {
        answers.load(std::sync::atomic::Ordering::SeqCst) >= at_move + clients.len()
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut answered, mut failed) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, f) = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("a call still pending 15 s after the clients stopped")
            .unwrap();
        answered.extend(a);
        failed.extend(f);
    }
    let same_va = clients.iter().filter(|c| c.va() == vas[0]).count();
    let reopens: u64 = clients.iter().map(|c| c.reopens()).sum();
    for node in [n1, n2, n3] {
        node.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "moved {moved} of {} clients, {reopens} re-opens, {} calls answered, {} failed, {} ran",
        clients.len(),
        answered.len(),
        failed.len(),
        executed.lock().unwrap().len()
    );
    assert!(moved > 0, "no client moved off the overloaded node within 25 s");
    assert_eq!(same_va, clients.len(), "clients keep their virtual address across the move");
    assert!(failed.is_empty(), "{} calls failed, e.g. {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(answered.len() > 100, "only {} calls answered", answered.len());
    let executed = executed.lock().unwrap();
    let twice: Vec<_> = executed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} requests ran more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let unrun: Vec<_> = answered.iter().filter(|n| !executed.contains_key(*n)).collect();
    assert!(
        unrun.is_empty(),
        "{} answered requests never ran: {:?}",
        unrun.len(),
        &unrun[..unrun.len().min(5)]
    );
    assert_eq!(executed.len(), answered.len(), "every request that ran was answered, and only those");
}

/// `dabs farm up` stops cleanly on Ctrl-C (SIGINT): it exits with success, and every node
/// process it started is gone.
#[test]
fn farm_up_stops_every_node_on_sigint() {
    let mut farm = Farm::up(DABS, 3, "sigint");
    let pids: Vec<u64> =
        farm.manifest()["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3);
    for pid in &pids {
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "node {pid} runs before the interrupt");
    }
    let status = farm.interrupt();
    assert!(status.success(), "farm up exited with {status}");
    for pid in &pids {
        // Reaped by farm up before it exited: no process, not even a zombie, is left.
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "node {pid} still runs after farm up stopped");
    }
}
