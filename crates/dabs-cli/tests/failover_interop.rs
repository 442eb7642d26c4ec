//! Runs the independent Python check of drain / authenticated FAILOVER
//! (tests/interop/check_failover.py, written from the specs alone) against a real
//! `dabs farm up --nodes 3 --secret HEX`. Self-contained: shares nothing with tests/common.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "00112233445566778899aabbccddeeff";

/// The farm process and its directory; SIGINT and removal on drop, also when a check panics.
struct Farm {
    child: Child,
    dir: PathBuf,
}

impl Drop for Farm {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let t = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t.elapsed() > Duration::from_secs(15) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn seed() -> String {
    std::env::var("DABS_SEED").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (t.as_nanos() % 1_000_000_007).to_string()
    })
}

#[test]
fn independent_client_follows_an_authenticated_failover() {
    let dir = std::env::temp_dir().join(format!("dabs-test-{}-failover-interop", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let child = Command::new(DABS)
        .args(["farm", "up", "--nodes", "3", "--dir"])
        .arg(&dir)
        .args(["--secret", SECRET])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot start dabs farm up");
    let mut farm = Farm { child, dir };

    let manifest = farm.dir.join("farm.json");
    let t = Instant::now();
    loop {
        let ready = std::fs::read_to_string(&manifest)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["nodes"].as_array().is_some_and(|n| n.len() == 3));
        if ready {
            break;
        }
        if let Ok(Some(status)) = farm.child.try_wait() {
            panic!("dabs farm up exited early: {status}");
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no complete farm.json within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    let seed = seed();
    let out = Command::new("python3")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .arg("tests/interop/check_failover.py")
        .arg("--farm-json")
        .arg(&manifest)
        .args(["--secret", SECRET, "--dabs", DABS, "--seed", &seed])
        .stdin(Stdio::null())
        .output()
        .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    assert!(
        out.status.success(),
        "check_failover.py failed (replay with DABS_SEED={seed}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("failover interop: ") && stdout.contains(" 0 failed"),
        "unexpected output: {stdout}"
    );
    drop(farm);
}
