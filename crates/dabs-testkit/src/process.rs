//! Real processes of the `dabs` binary under test — `dabs node`, `dabs farm up`, and any
//! command whose output a test reads line by line — that die with the test that started them,
//! also when it fails. The binary's path is the caller's `env!("CARGO_BIN_EXE_dabs")`.

use crate::wait::{PATIENCE, POLL, eventually};
use dabs_node::ready::ReadyLine;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends `signal` (e.g. `libc::SIGTERM`) to `child`, unless it has been reaped already (its pid
/// may then be someone else's).
pub fn signal(child: &mut Child, signal: i32) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SAFETY: kill(2) on a child of ours that has not been reaped; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Waits (at most `limit`) for `child` to exit and returns how it did; kills it after that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Result<ExitStatus, String> {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("process {} still ran {limit:?} later; killed", child.id()));
        }
        // Polling a child's exit: no signal to wait on besides waitpid, which cannot time out.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One `dabs node --config FILE` process, killed (SIGKILL) on drop so a failing test leaves no
/// node behind announcing itself.
pub struct NodeProc {
    child: Child,
    /// Its ready line.
    pub ready: ReadyLine,
    /// Its MP address, from its ready line.
    pub mp: SocketAddr,
    /// Its operator interface, `http://IP:PORT`, when the config asks for one.
    pub operator: Option<String>,
    /// When the test read its ready line (the node announces itself just before printing it).
    pub ready_at: Instant,
}

impl NodeProc {
    /// Starts `dabs node --config CONFIG` (`dabs` the binary's path) and waits for its ready line.
    pub fn start(dabs: &str, config: &Path) -> Self {
        Self::start_with(Command::new(dabs), config)
    }

    /// Like [`NodeProc::start`], inside network namespace `netns` (`ip netns exec`, which
    /// becomes the node: signals reach it).
    pub fn start_in(netns: &str, dabs: &str, config: &Path) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, dabs]);
        Self::start_with(command, config)
    }

    /// Like [`NodeProc::start_in`], with `wrapper` (a program and its arguments, e.g.
    /// `setpriv` dropping capabilities) running the node.
    pub fn start_in_wrapped(netns: &str, wrapper: &[&str], dabs: &str, config: &Path) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).args(wrapper).arg(dabs);
        Self::start_with(command, config)
    }

    fn start_with(mut command: Command, config: &Path) -> Self {
        let dabs = format!("{:?}", command.get_program());
        let mut child = command
            .arg("node")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {dabs}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let ready_at = Instant::now();
        // Keep draining so the node never meets a closed or full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let ready = match ReadyLine::parse(&first) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dabs node --config {} did not start: {e}", config.display());
            }
        };
        NodeProc { child, mp: ready.mp, operator: ready.operator_url(), ready, ready_at }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its operator URL (panics when the config has no operator interface).
    pub fn url(&self) -> &str {
        self.operator.as_deref().expect("the node's config has an operator interface")
    }

    /// Sends it `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&mut self, signal: i32) {
        self::signal(&mut self.child, signal);
    }

    /// Stops it with SIGTERM (a clean stop) and returns how it exited.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for it to exit (SIGKILL after 10 s) and returns how it exited.
    pub fn wait_exit(&mut self) -> ExitStatus {
        match wait_exit(&mut self.child, Duration::from_secs(10)) {
            Ok(status) => status,
            Err(_) => self.child.wait().expect("reaped"),
        }
    }

    /// Waits until its leader decides group opens (its operator interface shows it); returns
    /// the leader's name. For a node alone in its farm, that is itself.
    pub fn wait_for_decider(&self) -> String {
        crate::membership::wait_for_decider_at(&[self.url().to_owned()])
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dabs farm up` as a child process: its nodes, their configs and data, and its `farm.json`
/// in a fresh directory. Stopped with SIGINT on drop, and the directory removed.
pub struct Farm {
    child: Child,
    /// Its configs, data and farm.json.
    pub dir: PathBuf,
    nodes: usize,
}

impl Farm {
    /// Starts `dabs farm up --nodes N` and waits for its complete farm.json.
    pub fn up(dabs: &str, nodes: usize, name: &str) -> Self {
        Self::up_with(dabs, nodes, name, &[])
    }

    /// Like [`Farm::up`] with extra `farm up` arguments (e.g. `--secret HEX`).
    pub fn up_with(dabs: &str, nodes: usize, name: &str, extra: &[&str]) -> Self {
        let dir = crate::temp_dir(name);
        let child = Command::new(dabs)
            .args(["farm", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {dabs} farm up: {e}"));
        let mut farm = Farm { child, dir, nodes };
        // farm.json is written once every node has printed its ready line; until it parses
        // whole, it is not there yet (or still being written).
        eventually("farm up's complete farm.json", PATIENCE, Duration::from_millis(50), || {
            if let Ok(Some(status)) = farm.child.try_wait() {
                panic!("dabs farm up exited early: {status}");
            }
            farm.try_manifest().filter(|m| m["nodes"].as_array().is_some_and(|n| n.len() == nodes))
        });
        farm
    }

    fn try_manifest(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(self.manifest_path()).ok()?).ok()
    }

    /// Where farm.json is.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join("farm.json")
    }

    /// farm.json, parsed.
    pub fn manifest(&self) -> serde_json::Value {
        self.try_manifest().expect("farm.json is complete once the farm is up")
    }

    /// The operator token its nodes' interfaces ask for (`token` in farm.json).
    pub fn token(&self) -> String {
        self.manifest()["token"].as_str().expect("the operator token in farm.json").to_owned()
    }

    /// The farm's group address.
    pub fn group(&self) -> SocketAddr {
        self.manifest()["group"].as_str().unwrap().parse().unwrap()
    }

    /// The farm's group address, as configs name it.
    pub fn group_v4(&self) -> std::net::SocketAddrV4 {
        self.manifest()["group"].as_str().unwrap().parse().unwrap()
    }

    /// The nodes' operator URLs, in start order.
    pub fn operators(&self) -> Vec<String> {
        self.manifest()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["operator"].as_str().expect("operator URL in farm.json").to_owned())
            .collect()
    }

    /// Waits until every node sees all of them and their leader decides group opens; returns
    /// the leader's name. Blocking: async tests call it through `tokio::task::spawn_blocking`.
    pub fn wait_for_decider(&self) -> String {
        let urls = self.operators();
        assert_eq!(urls.len(), self.nodes);
        crate::membership::wait_for_decider_at(&urls)
    }

    /// Sends `farm up` SIGINT (Ctrl-C) and waits for it to exit (at most 20 s).
    pub fn interrupt(&mut self) -> ExitStatus {
        signal(&mut self.child, libc::SIGINT);
        wait_exit(&mut self.child, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("farm up did not exit within 20 s of SIGINT: {e}"))
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        signal(&mut self.child, libc::SIGINT);
        let _ = wait_exit(&mut self.child, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process whose standard output is collected line by line as it comes, so a test can
/// wait for what it prints; killed on drop.
pub struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Lines {
    /// Starts `command` with its standard output piped here.
    pub fn spawn(command: &mut Command) -> Lines {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Lines { child, lines, reader: Some(reader) }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (bounded) until the lines so far satisfy `done`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        eventually(what, PATIENCE, POLL, || done(&self.lines()));
    }

    /// Sends SIGINT (Ctrl-C, as a person would), waits for the process to exit (at most 20 s)
    /// and for its last line; returns how it exited and every line it printed.
    pub fn interrupt(mut self) -> (ExitStatus, Vec<String>) {
        signal(&mut self.child, libc::SIGINT);
        let status = wait_exit(&mut self.child, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.lines())
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
