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

    /// The farm's group address.
    pub fn group(&self) -> std::net::SocketAddr {
        self.manifest()["group"].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
