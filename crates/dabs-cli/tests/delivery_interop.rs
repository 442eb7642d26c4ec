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

/// `dabs client APP --farm GROUP:PORT` as the issue writes it: the operator interface the
/// modules come from is the one the farm names when asked over UDP.
#[test]
fn dabs_client_finds_the_modules_through_the_farm_group() {
    let farm = Farm::up(DABS, 1, "delivery-group");
    // The group is answered once the farm has its decider.
    farm.wait_for_decider();
    let group = farm.group().to_string();
    let out = std::process::Command::new(DABS)
        .args(["client", "calc", "--farm", &group, "6", "x", "7"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("the operator interface the farm named") && text.contains("settled on udp"),
        "{text}"
    );
    assert!(text.contains("\n42\n"), "{text}");
}
