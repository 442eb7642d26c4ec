//! Runs the independent Python MP client (tests/interop/check_serve.py, written from the
//! specs alone) against a real `dabs mp serve` process on loopback.

use std::process::Command;

#[test]
fn independent_client_against_mp_serve() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let seed = std::env::var("DABS_SEED").unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (t.as_nanos() % 1_000_000_007).to_string()
    });
    let out = Command::new("python3")
        .current_dir(root)
        .args(["tests/interop/check_serve.py", "--dabs", env!("CARGO_BIN_EXE_dabs"), "--seed", &seed])
        .output()
        .expect("python3 must be installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "serve interop failed (replay with DABS_SEED={seed}):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "unexpected checker output: {stdout}");
}
