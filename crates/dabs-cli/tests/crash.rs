//! Crash honesty (issue 13): a node dies (SIGKILL) with calls in flight. Every call is
//! answered once or fails with an error that says its outcome is unknown; only the clients
//! that marked their operations idempotent send a call again. The servers' own journal (the kv
//! example's portion program appends each write that ran, before replying) counts executions
//! across the dead node and the survivors.

use dabs_net::Config;
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::{NodeConfigBuilder, NodeProc, eventually_async, random_group, temp_dir};
use kv::{KvClientPart, KvOps};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
/// Clients of each kind (idempotent or not).
const CLIENTS: usize = 12;
/// Calls each client makes at most.
const CALLS: usize = 150;
/// Each write's work between running and replying: the window a crash leaves it unanswered.
const WORK_MS: u64 = 5;

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(DABS).with_file_name(name);
    assert!(path.exists(), "{} is missing: run `cargo build -p dabs-example-kv` first", path.display());
    path
}

/// How one call ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Answered,
    Unknown(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_calls_leaves_each_call_answered_once_or_reported_unknown() {
    let dir = temp_dir("crash");
    let journal = dir.join("journal");
    let portion = sibling("kv-portion");
    let command = format!(
        "[{:?}, \"--journal\", {:?}, \"--work-ms\", \"{WORK_MS}\"]",
        portion.display().to_string(),
        journal.display().to_string()
    );
    let group = random_group();
    let mut nodes: Vec<NodeProc> = (1..=3)
        .map(|i| {
            let config = NodeConfigBuilder::new("crash", group, &format!("node-{i}"))
                .operator()
                .app_with(
                    "kv",
                    &format!("command = {command}\nstart_at_init = true\nmax_sessions_per_portion = 100\n"),
                )
                .write(&dir);
            NodeProc::start(DABS, &config)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    tokio::task::spawn_blocking(move || dabs_testkit::membership::wait_for_decider_at(&urls)).await.unwrap();
    let farm = std::net::SocketAddr::V4(group);
    // The victim: node-3 (not the decider, so opens keep being answered).
    let victim = nodes[2].mp.to_string();

    let done = Arc::new(AtomicUsize::new(0));
    let mut runs = Vec::new();
    for i in 0..2 * CLIENTS {
        let idempotent = i % 2 == 1;
        let done = done.clone();
        runs.push(tokio::spawn(async move {
            let options = FarmClientOptions { idempotent, ..FarmClientOptions::new(farm, kv::APP) };
            let client = Arc::new(
                FarmClient::start(
                    dabs_testkit::client::endpoint(Config::default().max_retries).await,
                    options,
                )
                .await
                .expect("a session"),
            );
            let store = KvClientPart::new(client.clone());
            let mut outcomes = BTreeMap::new();
            let started = Instant::now();
            for n in 0..CALLS {
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let key = format!("c{i}-{n}");
                let outcome = match store.put(key.clone(), "v".into()).await {
                    Ok(_) => Outcome::Answered,
                    Err(e) => Outcome::Unknown(e.to_string()),
                };
                outcomes.insert(key, outcome);
                done.fetch_add(1, Ordering::Relaxed);
            }
            (i, idempotent, client.server().await.map(|a| a.to_string()), outcomes)
        }));
    }
    // Kill node-3 once a third of the calls have been made: every client is busy then.
    let d = done.clone();
    eventually_async("a third of the calls made", Duration::from_secs(60), Duration::from_millis(5), || {
        let n = d.load(Ordering::Relaxed);
        async move { (n >= 2 * CLIENTS * CALLS / 3).then_some(()).ok_or(format!("{n} calls")) }
    })
    .await;
    nodes[2].signal(libc::SIGKILL);
    println!("node-3 killed after {} calls", done.load(Ordering::Relaxed));

    let mut results = Vec::new();
    for r in runs {
        results.push(r.await.unwrap());
    }
    nodes[2].wait_exit();
    let text = std::fs::read_to_string(&journal).expect("the portions' journal");
    let mut executions: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        let key = line.split(' ').nth(1).expect("OP KEY PID");
        *executions.entry(key.to_owned()).or_default() += 1;
    }
    let (mut unknown, mut twice, mut answered) = (0, 0, 0);
    for (i, idempotent, _, outcomes) in &results {
        for (key, outcome) in outcomes {
            let ran = executions.get(key).copied().unwrap_or(0);
            match (idempotent, outcome) {
                (false, Outcome::Answered) => {
                    assert_eq!(ran, 1, "client {i}: {key} answered, ran {ran} times");
                    answered += 1;
                }
                (false, Outcome::Unknown(why)) => {
                    assert!(ran <= 1, "client {i}: {key} not idempotent, ran {ran} times ({why})");
                    assert!(
                        why.contains("outcome unknown")
                            || why.contains("without an acknowledgement")
                            || why.contains("session lost"),
                        "client {i}: {key} failed with an error that does not say its outcome is unknown: {why}"
                    );
                    unknown += 1;
                }
                (true, Outcome::Answered) => {
                    assert!(ran >= 1, "client {i}: {key} answered, never ran");
                    twice += usize::from(ran > 1);
                    answered += 1;
                }
                (true, Outcome::Unknown(why)) => panic!("client {i}: idempotent {key} failed: {why}"),
            }
        }
    }
    println!(
        "answered {answered}, outcome unknown {unknown} (not idempotent), ran twice after a re-send {twice} (idempotent)"
    );
    assert!(executions.values().sum::<usize>() >= answered, "every answered call ran");
    assert!(
        unknown + twice > 0 || results.iter().all(|(.., s, _)| s.as_deref() != Some(victim.as_str())),
        "no call was in flight at the crash: the test proved nothing"
    );
}
