//! Server portions as programs beside real node processes: a portion written in Python from
//! docs/protocol.md alone, and the key-value example written in Rust with the SDK
//! (`examples/kv`); both on a 3-node farm of `dabs node` processes, called by clients that
//! open through the farm's group.

use dabs_net::{Config, DriverOptions};
use dabs_sdk::{FarmClient, FarmClientOptions, decode_reply, encode_args};
use dabs_testkit::{
    Farm, NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, random_group, repo_root, temp_dir,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// A binary of the workspace beside `dabs` (built by `cargo test --workspace`, or by
/// `cargo build -p dabs-example-kv`).
fn sibling(name: &str) -> PathBuf {
    let path = Path::new(DABS).with_file_name(name);
    assert!(path.exists(), "{} is missing: run `cargo build -p dabs-example-kv` first", path.display());
    path
}

/// Three nodes whose `[[app]]` record `app` runs `command`.
fn farm(name: &str, app: &str, command: &[String]) -> (PathBuf, Vec<NodeProc>) {
    let dir = temp_dir(name);
    let group = random_group();
    let command = format!("[{}]", command.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", "));
    let nodes = (0..3)
        .map(|i| {
            let config = NodeConfigBuilder::new(name, group, &format!("n{i}"))
                .operator()
                .app_with(app, &format!("command = {command}\n"))
                .write(&dir);
            NodeProc::start(DABS, &config)
        })
        .collect::<Vec<_>>();
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    dabs_testkit::membership::wait_for_decider_at(&urls);
    (dir, nodes)
}

async fn client(nodes: &[NodeProc], app: &str) -> FarmClient {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 10, ..Config::default() };
    let endpoint =
        dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
            .await
            .unwrap();
    let group = std::net::SocketAddr::V4(nodes[0].ready.group);
    FarmClient::start(endpoint, FarmClientOptions::new(group, app)).await.expect("the farm takes the client")
}

async fn add(client: &FarmClient, n: i64) -> i64 {
    let reply = client.call(256, encode_args(&(n,))).await.expect("add is answered");
    decode_reply(&reply).expect("add answers {\"ok\": total}")
}

/// The node hosting `app`'s one portion, and that portion's JSON, once exactly one exists.
fn hosting(urls: &[String], app: &str) -> (usize, serde_json::Value) {
    eventually(&format!("one portion of {app} on the farm"), PATIENCE, POLL, || {
        let mut found = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let (_, node) = dabs_testkit::http::json("GET", url, "/api/node", None);
            for p in node["portions"].as_array().into_iter().flatten().filter(|p| p["app"] == app) {
                found.push((i, p.clone()));
            }
        }
        if found.len() == 1 { Ok(found.remove(0)) } else { Err(format!("found {found:?}")) }
    })
}

/// Waits until every node's view of the farm lists a portion of `app`.
fn wait_until_announced(urls: &[String], app: &str) {
    for url in urls {
        eventually(&format!("{url} sees a portion of {app}"), PATIENCE, POLL, || {
            let (_, farm) = dabs_testkit::http::json("GET", url, "/api/farm", None);
            let known = farm["members"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|m| m["portions"].as_array().into_iter().flatten())
                .any(|p| p["app"] == app);
            if known { Ok(()) } else { Err(farm.to_string()) }
        });
    }
}

/// Processes whose parent is `parent` and whose command line mentions `needle`.
fn children(parent: u32, needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 4 of /proc/PID/stat, after the parenthesised command name.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(&parent.to_string()) && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn events(url: &str) -> String {
    dabs_testkit::http::json("GET", url, "/api/events", None).1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_portion_serves_restarts_and_stops_with_its_node() {
    let script = repo_root().join("tests/interop/portion_counter.py");
    let command = vec!["python3".to_owned(), script.to_string_lossy().into_owned()];
    let (_dir, mut nodes) = farm("pyportion", "pycount", &command);
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();

    let a = client(&nodes, "pycount").await;
    assert_eq!(add(&a, 5).await, 5);
    assert_eq!(add(&a, 7).await, 12);
    // Placement seats the next client on a portion the whole farm knows of.
    wait_until_announced(&urls, "pycount");
    let b = client(&nodes, "pycount").await;
    assert_eq!(add(&b, 1).await, 13, "a second client reaches the same portion and its state");
    // An application error from Python comes back as the partition's error, not a failure.
    let bad = a.call(256, encode_args(&("x",))).await.expect("answered");
    let err = decode_reply::<i64>(&bad).unwrap_err();
    assert!(err.to_string().contains("bad_operands"), "{err}");
    // An unknown command is the program's NAK 6, passed through unchanged.
    let nak = a.call(300, Vec::new()).await.unwrap_err().to_string();
    assert!(nak.contains("NAK 6") || nak.contains("unknown command"), "{nak}");

    let (host, portion) = hosting(&urls, "pycount");
    assert_eq!(portion["sessions"], 2, "the node counts the program's clients: {portion}");
    // Requests through the bridge count as handled (4 adds, the bad add, the NAK'd call).
    eventually("the node counts the program's requests", PATIENCE, POLL, || {
        let (_, p) = hosting(&urls, "pycount");
        if p["handled"].as_u64() >= Some(4) { Ok(()) } else { Err(p.to_string()) }
    });

    // Killed from outside: the node reports it and starts it again; the portion's address
    // stays, the in-memory counter does not.
    let pids = children(nodes[host].pid(), "portion_counter.py");
    assert_eq!(pids.len(), 1, "one program per portion: {pids:?}");
    let status = Command::new("kill").args(["-9", &pids[0].to_string()]).status().unwrap();
    assert!(status.success());
    let url = nodes[host].url().to_owned();
    eventually("the node reports the program's exit and restart", PATIENCE, POLL, || {
        let e = events(&url);
        if e.contains("restart 1 of 5") { Ok(()) } else { Err(e) }
    });
    let restarted = eventually("a new program runs", PATIENCE, POLL, || {
        let now = children(nodes[host].pid(), "portion_counter.py");
        if now.len() == 1 && now != pids { Ok(now) } else { Err(format!("{now:?}")) }
    });
    assert_eq!(add(&a, 2).await, 2, "the restarted program starts from zero");
    assert_eq!(hosting(&urls, "pycount").1["va"], portion["va"], "the portion keeps its address");

    a.stop().await;
    b.stop().await;
    // A clean stop of the node stops its program first.
    let exit = nodes[host].terminate();
    assert!(exit.success(), "{exit}");
    let gone = Path::new("/proc").join(restarted[0].to_string());
    eventually("the program has exited with its node", Duration::from_secs(5), POLL, || {
        if gone.exists() { Err("still running") } else { Ok(()) }
    });
}

#[test]
fn the_kv_example_runs_as_a_rust_program_portion_under_farm_up() {
    let portion = sibling("kv-portion");
    let kv = sibling("kv");
    let app = format!("kv={}", portion.display());
    let farm = Farm::up_with(DABS, 3, "kvportion", &["--app", &app]);
    let urls = farm.operators();
    let group = farm.group().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(&kv).arg("--farm").arg(&group).args(args).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // `--app` starts the application's one portion with the farm, on node-1.
    let (host, _) = hosting(&urls, "kv");
    assert_eq!(host, 0, "the portion runs on node-1");
    wait_until_announced(&urls, "kv");
    assert_eq!(run(&["put", "colour", "blue"]).0, Some(0));
    assert_eq!(run(&["put", "size", "L"]).0, Some(0));
    let (code, out, err) = run(&["get", "colour"]);
    assert_eq!((code, out.as_str()), (Some(0), "blue"), "{err}");
    assert_eq!(run(&["keys"]).1, "colour\nsize");
    // The program's status object `keys` reaches the farm through the node's STATUS polls.
    eventually("the kv portion announcing keys = 2", PATIENCE, POLL, || {
        let (_, p) = hosting(&urls, "kv");
        let figures = dabs_testkit::http::json("GET", &urls[1], "/api/farm", None).1["members"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["portions"].as_array().cloned().unwrap_or_default())
            .find(|x| x["va"] == p["va"])
            .map(|x| x["figures"].clone());
        (figures.as_ref().map(|f| f["keys"].as_f64()) == Some(Some(2.0)))
            .then_some(())
            .ok_or(format!("{figures:?}"))
    });
    assert_eq!(run(&["del", "colour"]).0, Some(0));
    assert_eq!(run(&["get", "colour"]).0, Some(1), "a missing key exits 1");
    let (code, _, err) = run(&["put", "", "x"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad_key"), "{err}");
    let (_, p) = hosting(&urls, "kv");
    assert!(p["handled"].as_u64() >= Some(7), "the node counts the program's requests: {p}");
    // Each `kv` closed its session before it exited: the portion holds none.
    eventually("the kv portion has no sessions left", PATIENCE, POLL, || {
        let (_, p) = hosting(&urls, "kv");
        if p["sessions"] == 0 { Ok(()) } else { Err(p.to_string()) }
    });
}

#[test]
fn an_application_with_no_factory_and_no_command_is_a_config_error_with_its_line() {
    let dir = temp_dir("unknown-app");
    let config =
        NodeConfigBuilder::new("t", random_group(), "solo").app("calc", false).app("nope", true).write(&dir);
    let out = Command::new(DABS).args(["node", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&config).unwrap();
    let line = text.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
    assert!(err.contains(&format!("{}:{line}", config.display())), "{err}");
    assert!(err.contains("\"nope\" is not built into this node") && err.contains("command"), "{err}");

    let empty = dir.join("empty.toml");
    std::fs::write(&empty, text.replace("name = \"nope\"\n", "name = \"nope\"\ncommand = []\n")).unwrap();
    let out = Command::new(DABS).args(["node", "--config"]).arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("app[1].command: name the program"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_cannot_start_is_reported_and_its_client_refused() {
    let (_dir, nodes) = farm("ghost", "ghost", &["/nonexistent/ghost-portion".to_owned()]);
    let endpoint = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let group = std::net::SocketAddr::V4(nodes[0].ready.group);
    let options = FarmClientOptions { max_reopens: 1, ..FarmClientOptions::new(group, "ghost") };
    // The open itself may succeed (the portion is started for it) or be refused; either way
    // no call is answered as if it ran.
    if let Ok(client) = FarmClient::start(endpoint, options).await {
        let err = client.call(256, encode_args(&(1,))).await.expect_err("nothing runs the call");
        assert!(!err.to_string().is_empty());
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    eventually("a node reports the program that would not start", PATIENCE, POLL, || {
        let all: String = urls.iter().map(|u| events(u)).collect();
        if all.contains("cannot start /nonexistent/ghost-portion") { Ok(()) } else { Err(all) }
    });
}
