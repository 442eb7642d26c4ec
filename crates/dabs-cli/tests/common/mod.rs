//! Shared fixtures of the CLI's integration tests: a local farm of real node processes, and
//! the independent Python checkers of tests/interop/. Each test binary uses a subset.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The `dabs` binary under test.
pub const DABS: &str = env!("CARGO_BIN_EXE_dabs");

use std::process::Command;

/// The seed to use: `DABS_SEED` to replay a failure, else a fresh one.
pub fn seed() -> String {
    std::env::var("DABS_SEED").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (t.as_nanos() % 1_000_000_007).to_string()
    })
}

/// Runs `python3 tests/interop/SCRIPT ARGS --seed S` from the repository root and asserts
/// it passed with `0 failed`; a failure message names the seed that replays it.
pub fn run_python_check(script: &str, args: &[&std::ffi::OsStr]) {
    let seed = seed();
    let out = Command::new("python3")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .arg(format!("tests/interop/{script}"))
        .args(args)
        .args(["--seed", &seed])
        .output()
        .expect("python3 must be installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed (replay with DABS_SEED={seed}):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "unexpected {script} output: {stdout}");
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dabs-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `dabs farm up` as a child process; stopped with SIGINT on drop.
pub struct Farm {
    child: Child,
    /// Its configs, data and farm.json.
    pub dir: PathBuf,
}

impl Farm {
    /// Starts `dabs farm up --nodes N` and waits for its farm.json.
    pub fn up(nodes: usize, name: &str) -> Self {
        Self::up_with(nodes, name, &[])
    }

    /// Like [`Farm::up`] with extra `farm up` arguments (e.g. `--secret HEX`).
    pub fn up_with(nodes: usize, name: &str, extra: &[&str]) -> Self {
        let dir = temp_dir(name);
        let child = Command::new(DABS)
            .args(["farm", "up", "--nodes", &nodes.to_string(), "--dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let manifest = dir.join("farm.json");
        let t = Instant::now();
        while !manifest.exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "farm did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(100));
        Farm { child, dir }
    }

    /// farm.json, parsed.
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("farm.json")).unwrap()).unwrap()
    }

    /// The operator token its nodes' interfaces ask for (`token` in farm.json).
    pub fn token(&self) -> String {
        self.manifest()["token"].as_str().expect("the operator token in farm.json").to_owned()
    }

    /// The farm's group address.
    pub fn group(&self) -> std::net::SocketAddr {
        self.manifest()["group"].as_str().unwrap().parse().unwrap()
    }

    /// Sends `farm up` SIGINT (Ctrl-C) and waits for it to exit (at most 20 s).
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "farm up did not exit within 20 s of SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = std::fs::remove_dir_all(&self.dir);
            return; // exited already (interrupted): its pid may be someone else's now
        }
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `dabs node --config FILE` process, killed (SIGKILL) on drop so a failing test leaves
/// no node behind announcing itself.
pub struct NodeProc {
    child: Child,
    /// Its MP address, from its ready line.
    pub mp: std::net::SocketAddr,
    /// Its operator interface, `http://IP:PORT`, when the config asks for one.
    pub operator: Option<String>,
    /// When the test read its ready line (the node announces itself just before printing it).
    pub ready_at: Instant,
}

impl NodeProc {
    /// Starts the node and waits for its ready line (`node NAME mp ADDR group G [operator URL]`).
    pub fn start(config: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(DABS)
            .arg("node")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let ready_at = Instant::now();
        // Keep draining so the node never meets a closed or full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let word =
            |after: &str| first.split_whitespace().skip_while(|w| *w != after).nth(1).map(str::to_owned);
        let Some(mp) = word("mp").and_then(|a| a.parse().ok()) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dabs node --config {} did not start; it printed {first:?}", config.display());
        };
        NodeProc { child, mp, operator: word("operator"), ready_at }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its operator URL (panics when the config has no `operator`).
    pub fn url(&self) -> &str {
        self.operator.as_deref().expect("the node's config has an operator interface")
    }

    /// Sends it `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Stops it with SIGTERM (a clean stop) and returns how it exited.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for it to exit (SIGKILL after 10 s) and returns how it exited.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to an operator interface (`base` is `http://IP:PORT`), with an
/// optional JSON body; returns the status and the JSON answer.
pub fn http_json(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    http_json_as(None, method, base, path, body)
}

/// [`http_json`] with the operator token (`Authorization: Bearer TOKEN`) when given.
pub fn http_json_as(
    token: Option<&str>,
    method: &str,
    base: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, mut payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let decoded;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = payload;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        decoded = out;
        payload = &decoded;
    }
    let json = serde_json::from_str(payload)
        .unwrap_or_else(|e| panic!("{method} {base}{path}: answer is not JSON ({e}): {text}"));
    (status, json)
}
