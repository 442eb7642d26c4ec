//! Running the independent Python checkers of tests/interop/ from Rust tests.

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
