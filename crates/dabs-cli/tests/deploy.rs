//! The files in deploy/: the systemd unit and the container file run a node with the sample
//! configuration, and that command line, run here against a copy of the sample, starts a node.

use dabs_node::ready::ReadyLine;
use dabs_testkit::process::wait_exit;
use dabs_testkit::{random_group, repo_root, temp_dir};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");
/// Where the unit and the container install the binary and the configuration.
const INSTALLED: &str = "/usr/local/bin/dabs";
const CONFIG: &str = "/etc/dabs/node.toml";

fn deploy_file(name: &str) -> String {
    let path = repo_root().join("deploy").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The unit's ExecStart command line, split into words (it uses no quoting).
fn exec_start(unit: &str) -> Vec<String> {
    let lines: Vec<&str> = unit.lines().filter_map(|l| l.trim().strip_prefix("ExecStart=")).collect();
    assert_eq!(lines.len(), 1, "one ExecStart in the unit: {lines:?}");
    lines[0].split_whitespace().map(str::to_owned).collect()
}

/// The sample configuration with its paths moved under `dir`, free ports and a group of its
/// own, plus the secret and token files it names.
fn sample_config_in(dir: &Path) -> std::path::PathBuf {
    let sample = deploy_file("node.toml");
    for path in ["/etc/dabs/farm.secret", "/etc/dabs/operator.token", "/var/lib/dabs/node-1"] {
        assert!(sample.contains(&format!("\"{path}\"")), "deploy/node.toml names {path}");
    }
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("farm.secret"), "5a".repeat(32)).unwrap();
    std::fs::write(etc.join("operator.token"), "deploy-test-token-0123456789").unwrap();
    let text = sample
        .replace("\"/etc/dabs/", &format!("\"{}/", etc.display()))
        .replace("\"/var/lib/dabs/", &format!("\"{}/state/", dir.display()))
        .replace("239.255.77.1:47000", &random_group().to_string())
        .replace("127.0.0.1:47101", "127.0.0.1:0")
        .replace("127.0.0.1:8101", "127.0.0.1:0");
    let config = etc.join("node.toml");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn the_unit_and_the_container_run_the_same_command() {
    let argv = exec_start(&deploy_file("dabs-node.service"));
    assert_eq!(argv, [INSTALLED, "node", "--config", CONFIG]);
    let container = deploy_file("Containerfile");
    let entry = container.lines().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec (JSON) form");
    assert_eq!(entry, argv);
    assert!(container.lines().any(|l| l == format!("COPY deploy/node.toml {CONFIG}")), "{container}");
    assert!(
        container.lines().any(|l| l == format!("COPY --from=build /src/target/release/dabs {INSTALLED}"))
    );
}

#[test]
fn the_units_command_line_starts_a_node_from_the_sample_config() {
    let dir = temp_dir("deploy");
    let config = sample_config_in(&dir);
    let argv = exec_start(&deploy_file("dabs-node.service"));
    // The unit's own words, with only the installed paths swapped for the test's.
    let args: Vec<String> = argv[1..]
        .iter()
        .map(|a| if a == CONFIG { config.display().to_string() } else { a.clone() })
        .collect();
    assert_eq!(argv[0], INSTALLED);
    let mut child = Command::new(DABS)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dabs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let ready = ReadyLine::parse(&first);
    // SIGTERM is what systemd (KillSignal) and `docker stop` send: the node must exit 0.
    dabs_testkit::process::signal(&mut child, libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(10)).expect("the node stops on SIGTERM");
    let ready = ready.unwrap_or_else(|e| panic!("no ready line from {args:?}: {e} (got {first:?})"));
    assert_eq!(ready.name, "node-1");
    assert!(ready.operator.is_some(), "the sample serves the operator interface");
    assert!(dir.join("state/node-1").is_dir(), "the node keeps its data in data_dir");
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn systemd_accepts_the_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed; the unit is checked by the other tests only");
        return;
    };
    assert!(out.status.success());
    let dir = temp_dir("unit");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = deploy_file("dabs-node.service").replace(INSTALLED, DABS);
    std::fs::write(dir.join("dabs-node.service"), unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "./dabs-node.service"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings (exit 0): any output is a failure here.
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
