//! Runs the independent Python implementation of the wire spec (tests/interop/) against the
//! built `dabs mp decode` / `dabs mp encode`, on thousands of random and malformed datagrams.

use std::process::Command;

#[test]
fn codec_agrees_with_independent_implementation() {
    let dabs = env!("CARGO_BIN_EXE_dabs");
    dabs_testkit::run_python_check(
        "check_codec.py",
        &["--dabs".as_ref(), dabs.as_ref(), "--count".as_ref(), "4000".as_ref()],
    );
}

#[test]
fn decode_reports_errors_per_line_and_carries_on() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_dabs"))
        .args(["mp", "decode"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A valid ECHO request, then garbage, then a version-7 header, then the valid one again.
    let valid = "0100090101000000000000000a0b";
    let input = format!("{valid}\nzz\n070009010100000000000000\n{valid}\n");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "exit status must report the failed lines");
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].contains("\"command\":9") && lines[0].contains("\"payload\":\"0a0b\""));
    assert!(lines[1].starts_with("{\"error\":\"not a hex string"));
    assert!(lines[2].contains("unsupported protocol version 7"));
    assert_eq!(lines[0], lines[3]);
}
