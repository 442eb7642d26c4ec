//! A client that calls the calculator every 10 ms from inside a network namespace while a
//! test breaks the farm's network, and records every call's outcome, the longest gap between
//! answers (also per phase of the test), the servers it talked to and whether it kept its
//! virtual address.

use crate::{PATIENCE, POLL, eventually};
use dabs_calc::{CalcClient, Operands, Profile, Value};
use dabs_net::{Config, DriverOptions};
use dabs_sdk::{FarmClient, FarmClientOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Calls made at most (about a minute), so the loop ends however the farm fares.
const MAX_CALLS: usize = 6000;
/// Phases told apart in [`Outcomes::gaps`].
pub const PHASES: usize = 8;

/// What the client saw.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Calls made.
    pub calls: usize,
    /// Calls answered correctly.
    pub answered: usize,
    /// Calls that ended in a typed error, with it.
    pub failed: Vec<String>,
    /// The longest time between two answers.
    pub longest_gap: Duration,
    /// The longest gap in each phase ([`SteadyCaller::phase`]).
    pub gaps: [Duration; PHASES],
    /// Re-opens the farm client made.
    pub reopens: u64,
    /// The servers it talked to, in order, without repeats.
    pub servers: Vec<String>,
    /// Its virtual address at the end is the one it started with.
    pub va_kept: bool,
}

/// One line: calls, answered, failed, the longest gap (and per phase up to the last used),
/// re-opens and servers.
impl std::fmt::Display for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used = self.gaps.iter().rposition(|g| !g.is_zero()).map_or(1, |i| i + 1);
        let gaps: Vec<u128> = self.gaps[..used].iter().map(Duration::as_millis).collect();
        write!(
            f,
            "{} calls: {} answered, {} failed, longest gap between answers {} ms (per phase {gaps:?}), \
             {} re-opens, servers {:?}",
            self.calls,
            self.answered,
            self.failed.len(),
            self.longest_gap.as_millis(),
            self.reopens,
            self.servers
        )
    }
}

/// The running client; [`SteadyCaller::finish`] stops it and returns what it saw.
pub struct SteadyCaller {
    calls: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    thread: JoinHandle<Outcomes>,
}

impl SteadyCaller {
    /// Starts the client in namespace `netns`, opening through `farm` (a group, a node or a
    /// service address). Its endpoint re-sends every 50 ms, so a gap measures the farm, not
    /// the client's back-off.
    pub fn start(netns: &str, farm: SocketAddr) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let (n, d, p) = (calls.clone(), done.clone(), phase.clone());
        let netns = netns.to_owned();
        let thread = std::thread::spawn(move || {
            crate::netns::run_in(&netns, move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(call_steadily(farm, n, d, p))
            })
        });
        SteadyCaller { calls, done, phase, thread }
    }

    /// Waits until `n` more calls have been made.
    pub fn wait_calls(&self, n: usize, what: &str) {
        let start = self.calls.load(Ordering::Relaxed);
        eventually(what, PATIENCE, POLL, || {
            let now = self.calls.load(Ordering::Relaxed);
            (now >= start + n).then_some(()).ok_or(format!("{} calls so far", now - start))
        })
    }

    /// Starts phase `i` (below [`PHASES`]): gaps from now on count there.
    pub fn phase(&self, i: usize) {
        self.phase.store(i.min(PHASES - 1), Ordering::Relaxed);
    }

    /// Stops the client and returns what it saw.
    pub fn finish(self) -> Outcomes {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

async fn call_steadily(
    farm: SocketAddr,
    calls: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
) -> Outcomes {
    let config = Config {
        ack_timeout: Duration::from_millis(50),
        ack_timeout_max: Duration::from_millis(50),
        max_retries: 60,
        ..Config::default()
    };
    let ep = dabs_net::spawn(
        "0.0.0.0:0".parse().expect("literal"),
        DriverOptions { config, ..Default::default() },
    )
    .await
    .expect("a client endpoint");
    let fc = Arc::new(
        FarmClient::start(ep, FarmClientOptions::new(farm, dabs_calc::APP))
            .await
            .unwrap_or_else(|e| panic!("the client cannot open through {farm}: {e}")),
    );
    let va = fc.va();
    let calc = CalcClient::new(fc.clone(), Profile::Thin);
    let mut out = Outcomes::default();
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 0..MAX_CALLS {
        if done.load(Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        calls.store(i + 1, Ordering::Relaxed);
        out.calls = i + 1;
        match calc.compute("+", Operands::Int(i as i64, 1)).await {
            Ok(Value::Int(v)) if v == i as i64 + 1 => {
                let gap = last.elapsed();
                out.longest_gap = out.longest_gap.max(gap);
                let at = phase.load(Ordering::Relaxed);
                out.gaps[at] = out.gaps[at].max(gap);
                last = Instant::now();
                out.answered += 1;
            }
            Ok(v) => panic!("call {i} answered wrongly: {v:?}"),
            Err(e) => out.failed.push(format!("call {i}: {e}")),
        }
        let server = fc.server().await.map(|s| s.to_string()).unwrap_or_default();
        if out.servers.last() != Some(&server) {
            out.servers.push(server);
        }
    }
    out.reopens = fc.reopens();
    out.va_kept = fc.va() == va;
    out
}
