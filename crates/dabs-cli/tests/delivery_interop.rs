//! Runs the independent Python client of client delivery (tests/interop/check_delivery.py,
//! written from interop.md alone): it lists the calculator's modules, verifies their hashes
//! and Ed25519 signatures with its own verifier, and runs the calculator over MP over TCP,
//! against a real `dabs farm up --nodes 1`.

use dabs_testkit::Farm;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");

#[test]
fn an_independent_client_verifies_the_modules_and_calculates_over_tcp() {
    let farm = Farm::up(DABS, 1, "delivery-interop");
    let manifest = farm.manifest_path();
    let stdout =
        dabs_testkit::run_python_check("check_delivery.py", &["--farm-json".as_ref(), manifest.as_os_str()]);
    println!("{stdout}");
    assert!(stdout.contains("delivery interop: "), "unexpected output: {stdout}");
    assert!(stdout.contains("PASS m-integer-ops") && stdout.contains("PASS tcp-01"), "{stdout}");
}
