//! The command line's conventions: `--json` where a table is printed, host names where an
//! address is taken, a closed pipe ends a command quietly, and completions and man pages from
//! the clap definitions.

use dabs_testkit::process::{signal, wait_exit};
use dabs_testkit::{NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, random_group, temp_dir};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// The operator token of the nodes under test.
const TOKEN: &str = "conventions-token-0123456789abcdef";

/// A node of a farm of its own, with an operator interface and the calculator.
fn start_node(name: &str) -> (NodeProc, std::path::PathBuf, std::net::SocketAddrV4) {
    let dir = temp_dir(name);
    let group = random_group();
    let config = NodeConfigBuilder::new("cv", group, "node-1")
        .operator()
        .app("calc", true)
        .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
        .write(&dir);
    (NodeProc::start(DABS, &config), dir, group)
}

fn dabs(args: &[&str]) -> Output {
    Command::new(DABS).args(args).stdin(Stdio::null()).output().expect("run dabs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn status_prints_json_with_the_tables_columns() {
    let (node, dir, group) = start_node("status-json");
    let group = group.to_string();
    // The node announces itself every 250 ms: listening 1.2 s hears it, whatever the load.
    let out = dabs(&["status", "--farm", &group, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["farm"], "cv");
    assert_eq!(v["group"], group.as_str());
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{v}");
    let m = &members[0];
    assert_eq!(m["node"], "node-1");
    assert_eq!(m["mp"], node.mp.to_string());
    assert_eq!(m["leader"], true);
    assert_eq!(m["portions"], 1);
    assert!(m["health"].is_u64() && m["accepting"].is_boolean() && m["load"].is_number(), "{m}");
    // The table is still the default.
    let out = dabs(&["status", "--farm", &group]);
    let table = text(&out.stdout);
    assert!(table.lines().nth(1).unwrap().starts_with("NODE"), "{table}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_names_are_resolved_and_bad_ones_refused() {
    let (node, dir, group) = start_node("hostname");
    // One node's MP address given by name: the calculator reaches the farm through it.
    let farm = format!("localhost:{}", node.mp.port());
    let out = dabs(&["calc", "--farm", &farm, "6", "x", "7"]);
    assert!(out.status.success(), "dabs calc --farm {farm}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42");

    let out = dabs(&["calc", "--farm", "no-such-host.invalid:47000", "1", "+", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("cannot resolve host \"no-such-host.invalid\""), "{err}");
    let out = dabs(&["status", "--farm", &group.to_string(), "--interface", "localhost", "--json"]);
    assert!(out.status.success(), "--interface by name: {}", text(&out.stderr));
    let out = dabs(&["status", "--farm", "localhost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not HOST:PORT"), "{}", text(&out.stderr));
    let out = dabs(&["drain", "no-such-host.invalid:1", "--secret", &"00".repeat(16)]);
    assert!(text(&out.stderr).contains("cannot resolve host"), "{}", text(&out.stderr));
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `args` with stdout piped, reads its first line, closes the pipe (as `head -1` does)
/// and returns how the command exited and what it said on stderr.
fn first_line_then_close(args: &[&str]) -> (String, std::process::ExitStatus, String) {
    let mut child = Command::new(DABS)
        .args(args)
        .env("DABS_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dabs");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is dropped here: the next write meets a closed pipe.
    let status = wait_exit(&mut child, PATIENCE).expect("the command ends once its reader has gone");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (first, status, stderr)
}

#[test]
fn a_closed_pipe_ends_trace_and_completions_quietly() {
    let (node, dir, _) = start_node("pipe");
    // The node's announcements keep the trace writing (four a second).
    let (first, status, stderr) = first_line_then_close(&["trace", "--node", node.url()]);
    assert!(first.contains("ANNOUNCE") || first.contains(" -> ") || first.contains(" <- "), "{first}");
    assert!(status.success(), "dabs trace | head -1: {status}, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The node's URL by host name, without the scheme.
    let by_name = node.url().replace("http://127.0.0.1", "localhost");
    let (first, status, stderr) = first_line_then_close(&["trace", "--node", &by_name, "--json"]);
    assert!(serde_json::from_str::<Value>(&first).is_ok(), "{first}");
    assert!(status.success() && stderr.is_empty(), "{status}: {stderr}");
    // A command that writes everything at once: bash's script is far more than a pipe holds.
    let (first, status, stderr) = first_line_then_close(&["completions", "bash"]);
    assert!(first.starts_with("_dabs()"), "{first}");
    assert!(status.success() && stderr.is_empty(), "{status}: {stderr}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_man_pages_come_from_the_definitions() {
    for (shell, marker) in
        [("bash", "complete -F _dabs"), ("zsh", "#compdef dabs"), ("fish", "complete -c dabs")]
    {
        let out = dabs(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        // Every subcommand and a flag of one are completed.
        for word in ["status", "trace", "farm", "completions", "listen-ms"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    let out = dabs(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is refused");

    let out = dabs(&["man"]);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.contains(".TH dabs 1"), "{page}");
    assert!(page.contains("status") && page.contains("completions"), "{page}");
    let dir = temp_dir("man");
    let out = dabs(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = std::fs::read_to_string(dir.join("dabs-status.1")).expect("a page per subcommand");
    assert!(status.contains("\\-\\-json") && status.contains("\\-\\-farm"), "{status}");
    assert!(dir.join("dabs-farm-up.1").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dabs farm up --nodes N --dir DIR` with its stderr collected line by line.
struct FarmUp {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FarmUp {
    fn start(dir: &std::path::Path, nodes: usize) -> FarmUp {
        let mut child = Command::new(DABS)
            .args(["farm", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start farm up");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let pipe = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        FarmUp { child, stderr }
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for FarmUp {
    fn drop(&mut self) {
        signal(&mut self.child, libc::SIGINT);
        let _ = wait_exit(&mut self.child, Duration::from_secs(20));
    }
}

fn manifest(dir: &std::path::Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("farm.json")).ok()?).ok()
}

fn node_pids(dir: &std::path::Path) -> Vec<i32> {
    let m = manifest(dir).unwrap();
    m["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_i64().unwrap() as i32).collect()
}

/// True while some process holds `DIR/farm.lock`.
fn locked(dir: &std::path::Path) -> bool {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(dir.join("farm.lock")).unwrap();
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

#[test]
fn farm_up_refuses_a_directory_in_use_and_reports_a_node_that_dies() {
    let dir = temp_dir("farm-lock");
    let mut farm = FarmUp::start(&dir, 2);
    eventually("farm.json with both nodes", PATIENCE, POLL, || {
        manifest(&dir).filter(|m| m["nodes"].as_array().is_some_and(|n| n.len() == 2))
    });
    let configs = std::fs::read_to_string(dir.join("node-1.toml")).unwrap();
    let before = std::fs::read_to_string(dir.join("farm.json")).unwrap();

    // A second farm on the same directory is refused before it writes anything.
    let out = Command::new(DABS)
        .args(["farm", "up", "--nodes", "1", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("is in use by a running farm"), "{err}");
    assert!(err.contains(&format!("pid {}", farm.child.id())), "names the holder: {err}");
    assert_eq!(std::fs::read_to_string(dir.join("node-1.toml")).unwrap(), configs);
    assert_eq!(std::fs::read_to_string(dir.join("farm.json")).unwrap(), before);

    // A node that dies is reported, with its name and how it ended.
    let pids = node_pids(&dir);
    // SAFETY: kill(2) on a node process this test's farm started; no memory is involved.
    unsafe { libc::kill(pids[1], libc::SIGKILL) };
    let deadline = std::time::Instant::now() + PATIENCE;
    while !farm.stderr().iter().any(|l| l.contains(&format!("node-2 (pid {},", pids[1]))) {
        assert!(std::time::Instant::now() < deadline, "node-2's death not reported: {:?}", farm.stderr());
        std::thread::sleep(POLL);
    }
    let report = farm.stderr().into_iter().find(|l| l.contains("node-2 (pid")).unwrap();
    assert!(report.contains("exited: signal: 9 (SIGKILL)"), "{report}");
    assert!(!farm.stderr().iter().any(|l| l.contains("node-1 (pid")), "node-1 still runs");

    // farm up killed outright: its surviving node still holds the directory.
    signal(&mut farm.child, libc::SIGKILL);
    wait_exit(&mut farm.child, PATIENCE).unwrap();
    assert!(locked(&dir), "node-1 outlived farm up and still uses the directory");
    // SAFETY: as above, the farm's own remaining node.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    eventually("the lock free once no farm process is left", PATIENCE, POLL, || {
        (!locked(&dir)).then_some(())
    });
    drop(farm);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn farm_up_stops_cleanly_and_frees_its_directory() {
    let dir = temp_dir("farm-free");
    let mut farm = FarmUp::start(&dir, 1);
    eventually("farm.json", PATIENCE, POLL, || manifest(&dir));
    assert!(locked(&dir));
    signal(&mut farm.child, libc::SIGINT);
    let status = wait_exit(&mut farm.child, Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{status}: {:?}", farm.stderr());
    // A node stopped by its farm is not reported as dying.
    assert!(!farm.stderr().iter().any(|l| l.contains("exited:")), "{:?}", farm.stderr());
    assert!(!locked(&dir), "a stopped farm leaves its directory free");
    drop(farm);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_open_prints_json_instead_of_its_table() {
    let out = dabs(&["bench", "open", "--samples", "3", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cases: Value = serde_json::from_slice(&out.stdout).expect("only one JSON array on stdout");
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 2, "{cases:?}");
    for c in cases {
        assert_eq!(c["samples"], 3, "{c}");
        let (p50, max) = (c["p50_ms"].as_f64().unwrap(), c["max_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= max, "{c}");
    }
    assert_eq!(cases[0]["case"], "portion already running");
}
