//! Operator credentials from the command line (issue 11, item 3): `dabs farm up` makes the
//! token, prints it and writes it to farm.json; the nodes' interfaces refuse changes and the
//! trace without it; `dabs trace` sends it (`--token`, `DABS_TOKEN`) and says what is wrong
//! when it is missing; a node whose interface would be reachable off loopback without a token
//! does not start.

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
use dabs_testkit::temp_dir;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `dabs farm up --nodes 1` with `extra` arguments and stdout read: its lines up to
/// `manifest …`; stopped with SIGINT on drop.
struct Up {
    child: Child,
    dir: std::path::PathBuf,
    lines: Vec<String>,
}

impl Up {
    fn start(name: &str, extra: &[&str]) -> Up {
        let dir = temp_dir(name);
        let mut child = Command::new(DABS)
            .args(["farm", "up", "--nodes", "1", "--dir"])
            .arg(&dir)
            .args(extra)
            .env_remove("DABS_TOKEN")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        for line in out.by_ref() {
            let line = line.unwrap();
            let last = line.starts_with("manifest ");
            lines.push(line);
            if last {
                break;
            }
        }
        std::thread::spawn(move || out.for_each(drop));
        assert!(lines.last().is_some_and(|l| l.starts_with("manifest ")), "farm up printed {lines:?}");
        Up { child, dir, lines }
    }

    /// The word after `key` on the line that starts with it.
    fn printed(&self, key: &str) -> Option<String> {
        let prefix = format!("{key} ");
        self.lines.iter().find_map(|l| l.strip_prefix(&prefix)).map(|rest| rest.trim().to_owned())
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("farm.json")).unwrap()).unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `dabs trace` against `url` with `args`, stopped after at most `limit` (SIGINT): exit
/// status, stdout, stderr.
fn trace(
    url: &str,
    args: &[&str],
    env_token: Option<&str>,
    limit: Duration,
) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(DABS);
    cmd.args(["trace", "--node", url, "--json"]).args(args).env_remove("DABS_TOKEN");
    if let Some(t) = env_token {
        cmd.env("DABS_TOKEN", t);
    }
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let id = child.id();
    let t = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() && t.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !waiter.is_finished() {
        // SAFETY: kill(2) on our own child, not yet reaped (its waiter has not returned).
        unsafe {
            libc::kill(id as i32, libc::SIGINT);
        }
    }
    let out = waiter.join().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn farm_up_makes_a_token_that_guards_its_nodes() {
    let up = Up::start("opauth-made", &[]);
    let token = up.printed("token").expect("a `token …` line");
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert_eq!(up.manifest()["token"], token.as_str(), "farm.json carries it too");
    let file = up.dir.join("operator.token");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), token);
    use std::os::unix::fs::PermissionsExt;
    for private in [&file, &up.dir.join("farm.json")] {
        let mode = std::fs::metadata(private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} readable by its owner only", private.display());
    }
    assert!(
        !std::fs::read_to_string(up.dir.join("node-1.toml")).unwrap().contains(&token),
        "not in the config"
    );
    let line = up.printed("node-1").unwrap();
    let url = line.split(" operator ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().to_owned();

    let change = json!({"max_message_latency_ms": 345});
    let (status, v) = dabs_testkit::http::json("PUT", &url, "/api/settings", Some(&change));
    assert_eq!((status, v["error"]["field"].as_str()), (401, Some("authorization")), "{v}");
    let (status, v) = dabs_testkit::http::json_as(
        Some("0".repeat(64).as_str()),
        "PUT",
        &url,
        "/api/settings",
        Some(&change),
    );
    assert_eq!(status, 401, "{v}");
    let (status, v) = dabs_testkit::http::json_as(Some(&token), "PUT", &url, "/api/settings", Some(&change));
    assert_eq!((status, v["max_message_latency_ms"].as_u64()), (200, Some(345)), "{v}");
    let (status, v) = dabs_testkit::http::json("GET", &url, "/api/settings", None);
    assert_eq!((status, v["version"].as_u64()), (200, Some(1)), "reads are open on loopback: {v}");

    // `dabs trace` without the token ends at once, saying why and what to give.
    let (code, out, err) = trace(&url, &[], None, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("dabs trace: authorization: this needs the operator token"), "{err}");
    assert!(err.contains("--token or DABS_TOKEN"), "{err}");
    let (code, _, err) = trace(&url, &["--token", &"f".repeat(64)], None, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("dabs trace: authorization: the operator token is wrong"), "{err}");
    // With it (flag or environment) it streams until stopped.
    for (args, env) in [(vec!["--token", token.as_str()], None), (vec![], Some(token.as_str()))] {
        let (code, out, err) = trace(&url, &args, env, Duration::from_millis(1500));
        assert_eq!(code, Some(0), "{err}");
        let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or("null")).unwrap();
        assert!(first["dir"].is_string(), "a decoded datagram: {out}");
    }
}

#[test]
fn farm_up_takes_the_token_it_is_given() {
    let given = "my-own-operator-token-42";
    let up = Up::start("opauth-given", &["--token", given]);
    assert_eq!(up.printed("token").as_deref(), Some(given));
    assert_eq!(up.manifest()["token"], given);
    let url = up.manifest()["nodes"][0]["operator"].as_str().unwrap().to_owned();
    let (status, v) = dabs_testkit::http::json_as(
        Some(given),
        "PUT",
        &url,
        "/api/settings",
        Some(&json!({"low_water_ms": 60})),
    );
    assert_eq!(status, 200, "{v}");

    let dir = temp_dir("opauth-short");
    let out = Command::new(DABS)
        .args(["farm", "up", "--nodes", "1", "--token", "short", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the operator token has 5 characters (expected 16..=256)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The attack: a node whose operator interface anyone on the network reaches, with no
/// credential between them and the farm's settings and traffic. It must not start.
#[test]
fn a_node_serving_off_loopback_without_a_token_does_not_start() {
    let dir = temp_dir("opauth-open");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        "[farm]\nname = \"open\"\ngroup = \"239.255.9.9:47999\"\n\n[node]\nname = \"n\"\nbind = \"127.0.0.1:0\"\n\
         operator = \"0.0.0.0:0\"\ndata_dir = \"data\"\n",
    )
    .unwrap();
    let out = Command::new(DABS).args(["node", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let at =
        format!("dabs node: {}:8:12: node.operator: 0.0.0.0:0 is not a loopback address", config.display());
    assert!(err.starts_with(&at), "{err}");
    assert!(!dir.join("data").exists(), "refused before anything starts");
    let _ = std::fs::remove_dir_all(&dir);
}
