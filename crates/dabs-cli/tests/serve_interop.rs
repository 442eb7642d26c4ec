//! Runs the independent Python MP client (tests/interop/check_serve.py, written from the
//! specs alone) against a real `dabs mp serve` process on loopback.

#[test]
fn independent_client_against_mp_serve() {
    dabs_testkit::run_python_check(
        "check_serve.py",
        &["--dabs".as_ref(), env!("CARGO_BIN_EXE_dabs").as_ref()],
    );
}
