//! Runs the independent Python check of drain / authenticated FAILOVER
//! (tests/interop/check_failover.py, written from the specs alone) against a real
//! `dabs farm up --nodes 3 --secret HEX`.

use dabs_testkit::Farm;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "00112233445566778899aabbccddeeff";

#[test]
fn independent_client_follows_an_authenticated_failover() {
    let farm = Farm::up_with(DABS, 3, "failover-interop", &["--secret", SECRET]);
    let manifest = farm.manifest_path();
    let stdout = dabs_testkit::run_python_check(
        "check_failover.py",
        &[
            "--farm-json".as_ref(),
            manifest.as_os_str(),
            "--secret".as_ref(),
            SECRET.as_ref(),
            "--dabs".as_ref(),
            DABS.as_ref(),
        ],
    );
    println!("{stdout}");
    assert!(stdout.contains("failover interop: "), "unexpected output: {stdout}");
}
