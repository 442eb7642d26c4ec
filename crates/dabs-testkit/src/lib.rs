//! The shared test kit of dabs's tests (a `publish = false` crate, used as a dev-dependency):
//! random farm groups, seeds that name their replay, bounded waits on something observable, a
//! node configuration builder, real `dabs node` and `dabs farm up` processes that die with the
//! test, waiting for a farm by watching its membership, and small HTTP and interop helpers.
//!
//! Nothing here sleeps for a fixed time to "let things settle": every wait polls for what it
//! waits for and gives up, naming it, after a bound.

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod dns;
pub mod etcd;
pub mod http;
pub mod membership;
pub mod netns;
pub mod portion;
pub mod process;
pub mod steady;
pub mod wait;

pub use config::NodeConfigBuilder;
pub use membership::MemberView;
pub use process::{Farm, Lines, NodeProc};
pub use wait::{PATIENCE, POLL, eventually, eventually_async};

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

/// A multicast group and port of its own for one test farm (239.255.X.Y, port 40000..60000),
/// so that farms of tests running side by side do not meet.
pub fn random_group() -> SocketAddrV4 {
    let a: u8 = rand::random_range(2..=251);
    let b: u8 = rand::random_range(2..=251);
    SocketAddrV4::new(Ipv4Addr::new(239, 255, a, b), rand::random_range(40_000..60_000))
}

/// The seed `DABS_SEED` names, if set (panics when it is set but not a number).
pub fn replay_seed() -> Option<u64> {
    let text = std::env::var("DABS_SEED").ok()?;
    Some(text.trim().parse().unwrap_or_else(|e| panic!("DABS_SEED={text:?} is not a seed: {e}")))
}

/// The seed for a randomised test: `DABS_SEED` to replay a failure, else a fresh one. Prints
/// `seed N (replay with DABS_SEED=N)`, which the test harness shows when the test fails.
pub fn seed() -> u64 {
    let seed = replay_seed().unwrap_or_else(|| rand::random_range(0..1 << 53));
    println!("seed {seed} (replay with DABS_SEED={seed})");
    seed
}

/// A fresh, empty directory for test `name` under the system's temporary directory (named
/// after this process, so two test binaries never share one).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dabs-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    d
}

/// The repository's root directory (where `tests/interop/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Runs `python3 tests/interop/SCRIPT ARGS --seed S` from the repository root and asserts it
/// passed with ` 0 failed`; a failure names the seed that replays it. Returns its output.
pub fn run_python_check(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let seed = seed();
    let out = std::process::Command::new("python3")
        .current_dir(repo_root())
        .arg(format!("tests/interop/{script}"))
        .args(args)
        .args(["--seed", &seed.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 must be installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed (replay with DABS_SEED={seed}):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "unexpected {script} output: {stdout}\n{stderr}");
    stdout
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_are_multicast_and_vary() {
        let groups: std::collections::BTreeSet<_> = (0..20).map(|_| super::random_group()).collect();
        assert!(groups.iter().all(|g| g.ip().is_multicast() && g.port() >= 40_000));
        assert!(groups.len() > 1);
    }
}
