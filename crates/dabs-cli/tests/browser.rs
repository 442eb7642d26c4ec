//! The operator web page in a real headless browser: a three-node farm of real processes with
//! calculator clients calling it throughout, and `tests/browser/operator.mjs` (playwright-core
//! driving Debian's Chromium) using node-1's page, checking the coloured members table, that the
//! charts draw (uPlot series with data, pixels in the members' colours), that the page asks for
//! the operator token (farm.json's) when saving, refuses a wrong one, that the change made with
//! the right one reaches node-3's page and is described in the events, that node-2's page shows
//! a refusal, and that node-3, killed, becomes a red DOWN row that the page's button removes.
//! The script's screenshot of the page (charts and DOWN row) is docs/operator-page.png.
//!
//! Needs `/usr/bin/chromium` and `tests/browser/node_modules`: `.ci/run` installs both
//! (`apt-get install chromium`, `npm ci --prefix tests/browser`). Without them this test fails.

use dabs_testkit::Farm;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Calculator clients calling the farm at `group` until `stop`, a few calls a second each (a
/// call the killed node cannot answer just fails): the charts have calls and latency to show.
/// Returns the calls answered.
fn keep_calling(
    group: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    const CLIENTS: usize = 6;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for c in 0..CLIENTS {
                let (stop, answered) = (stop.clone(), answered.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(ep) = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), Default::default()).await
                    else {
                        return;
                    };
                    let options = dabs_sdk::FarmClientOptions::new(group, "calc");
                    let Ok(client) = dabs_sdk::FarmClient::start(ep, options).await else { return };
                    let mut i = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        if client.call(256, dabs_sdk::encode_args(&(i, c as i64))).await.is_ok() {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    })
}

#[test]
fn operator_page_in_a_headless_browser() {
    require_installed();
    let farm = Farm::up(DABS, 3, "browser");
    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let callers = keep_calling(farm.group(), stop.clone(), answered.clone());
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
    stop.store(true, Ordering::Relaxed);
    // Each client ends after its call in flight (bounded by the client's own time-outs).
    callers.join().expect("the calling clients do not panic");
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let Ok(status) = status else {
        panic!("operator.mjs still running after {SCRIPT_LIMIT:?}; killed:\n{stdout}\n{stderr}");
    };
    assert!(status.success(), "operator.mjs failed ({status}):\n{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failed"), "unexpected operator.mjs output:\n{stdout}\n{stderr}");
    assert!(answered.load(Ordering::Relaxed) > 0, "no call was answered");
    println!(
        "{stdout}calls answered: {}\nscreenshot: {}",
        answered.load(Ordering::Relaxed),
        screenshot.display()
    );
}
