//! Issue 19's logs, from real `dabs` processes whose standard error is a pipe (not a
//! terminal): RUST_LOG (and DABS_LOG, its alias) filters, no colour codes, `--log-format json`
//! one object per line, lifecycle events at info, and demos that keep warnings off their output.

use dabs_node::ready::ReadyLine;
use dabs_testkit::{NodeConfigBuilder, PATIENCE, POLL, eventually, random_group, temp_dir};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// A `dabs node` whose standard error the test collects line by line as it comes.
struct LoggedNode {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl LoggedNode {
    /// Starts `dabs node --config CONFIG ARGS` with only the log variables in `env` set, and
    /// waits for its ready line.
    fn start(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(DABS);
        cmd.arg("node").arg("--config").arg(config).args(args);
        cmd.env_remove("RUST_LOG").env_remove("DABS_LOG").env_remove("NO_COLOR");
        cmd.envs(env.iter().copied());
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (sink, pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = out.next().and_then(Result::ok).unwrap_or_default();
        std::thread::spawn(move || out.for_each(drop));
        if let Err(e) = ReadyLine::parse(&first) {
            let _ = child.kill();
            panic!("node did not start: {e}; stderr: {:?}", stderr.lock().unwrap());
        }
        LoggedNode { child, stderr }
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `pred`; returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        eventually(what, PATIENCE, POLL, || self.lines().into_iter().find(|l| pred(l)))
    }

    /// Stops it and returns everything it logged. (How it exits is not this file's concern: a
    /// SIGTERM right after the ready line can come before the node listens for it.)
    fn stop(mut self) -> Vec<String> {
        dabs_testkit::process::signal(&mut self.child, libc::SIGTERM);
        dabs_testkit::process::wait_exit(&mut self.child, Duration::from_secs(10)).unwrap();
        // The reader ends with the pipe, which closes as the process exits.
        eventually("the stderr reader to finish", PATIENCE, POLL, || Arc::strong_count(&self.stderr) == 1);
        self.lines()
    }
}

impl Drop for LoggedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(name: &str, node: &str, group: std::net::SocketAddrV4) -> std::path::PathBuf {
    let dir = temp_dir(name);
    NodeConfigBuilder::new("logs", group, node).app("calc", true).data_dir(dir.join(node)).write(&dir)
}

/// "node started" is logged at info, so it shows the filter at work; it is logged before the
/// ready line is printed, so once that line is read the log has had its chance.
const STARTED: &str = "node started";

#[test]
fn rust_log_filters_and_dabs_log_is_its_alias() {
    let cfg = config("logs-filter", "node-1", random_group());
    let cases: [(&[(&str, &str)], bool); 5] = [
        (&[("RUST_LOG", "info")], true),
        (&[("RUST_LOG", "dabs_node=warn")], false),
        (&[("RUST_LOG", "warn,dabs_node::node=info")], true),
        (&[("DABS_LOG", "info")], true),
        // RUST_LOG, the conventional name, wins over the alias.
        (&[("RUST_LOG", "warn"), ("DABS_LOG", "info")], false),
    ];
    for (env, shown) in cases {
        let lines = LoggedNode::start(&cfg, &[], env).stop();
        let found = lines.iter().any(|l| l.contains(STARTED));
        assert_eq!(found, shown, "{env:?}: {lines:#?}");
        // Piped, not a terminal: no colour codes.
        assert!(lines.iter().all(|l| !l.contains('\x1b')), "{env:?}: ANSI codes in {lines:#?}");
    }
}

#[test]
fn a_bad_filter_is_reported_and_the_node_still_runs() {
    let cfg = config("logs-bad-filter", "node-1", random_group());
    let lines = LoggedNode::start(&cfg, &[], &[("RUST_LOG", "dabs_node=loud")]).stop();
    assert!(
        lines.iter().any(|l| l.contains("RUST_LOG=\"dabs_node=loud\" is not a log filter")),
        "{lines:#?}"
    );
}

#[test]
fn json_format_is_one_object_per_line_with_lifecycle_events() {
    let group = random_group();
    let env = [("RUST_LOG", "dabs_node=info")];
    let first = LoggedNode::start(&config("logs-json-1", "node-1", group), &["--log-format", "json"], &env);
    let second = LoggedNode::start(&config("logs-json-2", "node-2", group), &["--log-format", "json"], &env);
    let event = |l: &str, kind: &str, text: &str| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        v["level"] == "INFO"
            && v["fields"]["event"] == kind
            && v["fields"]["message"].as_str().is_some_and(|m| m.contains(text))
    };
    second.wait_for("node-2 logs node-1 joining", |l| event(l, "joined", "member node-1 joined"));
    second
        .wait_for("node-2 logs node-1 as the decider", |l| event(l, "decider_changed", "decider is node-1"));
    second.wait_for("node-2 logs its portion spawned", |l| event(l, "spawned", "at initialisation"));
    // node-1 crashes: node-2 sees it lapse and takes over deciding.
    drop(first);
    second.wait_for("node-2 logs node-1 lapsing", |l| event(l, "left", "member node-1 down: lease lapsed"));
    second.wait_for("node-2 logs itself as the decider", |l| {
        event(l, "decider_changed", "decider is node-2 (was node-1)")
    });
    let lines = second.stop();
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v["timestamp"].is_string() && v["target"].is_string(), "{l}");
    }
    assert!(lines.iter().all(|l| !l.contains('\x1b')), "ANSI codes in {lines:#?}");
}

#[test]
fn a_demo_prints_its_summary_and_sends_the_farm_warnings_to_the_log_it_names() {
    let out = Command::new(DABS)
        .args(["demo", "failover", "--clients", "30"])
        .env_remove("RUST_LOG")
        .env_remove("DABS_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("\nsummary\n") && stdout.contains("30 moved off node-1"), "{stdout}");
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains("WARN") && !text.contains('\x1b'), "log lines on the demo's {name}:\n{text}");
    }
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("log (the farm's warnings and other messages) in "))
        .unwrap_or_else(|| panic!("the demo names no log file:\n{stdout}"));
    let log = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    // The demo injects forged FAILOVER notices: its clients and node-1 warn about them, in the
    // log and not on the screen.
    assert!(log.contains("WARN dabs_sdk::client: FAILOVER ignored"), "{log}");
    assert!(log.contains("WARN dabs_node::node::portions: client alert"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI codes in the log file");
}
