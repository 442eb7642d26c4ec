//! The operator web page in a real headless browser: a three-node farm of real processes, and
//! `tests/browser/operator.mjs` (playwright-core driving Debian's Chromium) using node-1's page,
//! checking that the page asks for the operator token (farm.json's) when saving, refuses a
//! wrong one, that the change made with the right one reaches node-3's page, and that node-2's
//! page shows a refusal.
//!
//! Needs `/usr/bin/chromium` and `tests/browser/node_modules`: `.ci/run` installs both
//! (`apt-get install chromium`, `npm ci --prefix tests/browser`). Without them this test fails.

use dabs_testkit::Farm;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const CHROMIUM: &str = "/usr/bin/chromium";
/// The script bounds each of its waits; this bounds the whole run in case something hangs.
const SCRIPT_LIMIT: Duration = Duration::from_secs(180);

/// Fails (never skips) when the browser or the script's packages are not installed.
fn require_installed() {
    let install =
        "run .ci/run's install steps: `apt-get install chromium` and `npm ci --prefix tests/browser`";
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {install}");
    assert!(
        Path::new(REPO).join("tests/browser/node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: {install}"
    );
}

#[test]
fn operator_page_in_a_headless_browser() {
    require_installed();
    let farm = Farm::up(DABS, 3, "browser");
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-node-1.png");
    let (stdout_path, stderr_path) = (farm.dir.join("browser.out"), farm.dir.join("browser.err"));
    let mut script = Command::new("node")
        .current_dir(REPO)
        .arg("tests/browser/operator.mjs")
        .arg("--farm-json")
        .arg(farm.manifest_path())
        .arg("--screenshot")
        .arg(&screenshot)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("node must be installed (Node.js 20+)");
    let status = dabs_testkit::process::wait_exit(&mut script, SCRIPT_LIMIT);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let Ok(status) = status else {
        panic!("operator.mjs still running after {SCRIPT_LIMIT:?}; killed:\n{stdout}\n{stderr}");
    };
    assert!(status.success(), "operator.mjs failed ({status}):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "unexpected operator.mjs output:\n{stdout}\n{stderr}");
    println!("{stdout}screenshot: {}", screenshot.display());
}
