//! The runner: one benchmark cell is one transport × payload size × number of
//! concurrent clients. For each cell it starts a fresh server, connects the
//! clients, runs a warm-up, then records every round trip for a bounded time
//! (and at most a bounded count), and summarises latency and throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::timeout;

use crate::{Client, Transport};

/// Limits and durations of a run. Every loop in the runner is bounded by these.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// Measured time per cell.
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Unmeasured warm-up per cell (after all clients are connected).
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// At most this many measured round trips per cell (all clients together).
    pub max_round_trips: u64,
    /// A round trip not completed within this is counted as a timeout (a loss, for UDP).
    #[serde(serialize_with = "secs")]
    pub round_trip_timeout: Duration,
    /// Timeout for starting a server and for each connect.
    #[serde(serialize_with = "secs")]
    pub setup_timeout: Duration,
    /// A client gives up (stops early) after this many errors in one cell.
    pub max_errors_per_client: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(300),
            max_round_trips: 20_000_000,
            round_trip_timeout: Duration::from_millis(500),
            setup_timeout: Duration::from_secs(5),
            max_errors_per_client: 100,
        }
    }
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Errors seen in one cell, warm-up included.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ErrorCounts {
    /// The echo differed from the request (wrong length or bytes).
    pub mismatch: u64,
    /// No echo within [`BenchConfig::round_trip_timeout`] (for UDP: a lost datagram).
    pub timeout: u64,
    /// `round_trip` returned an error.
    pub failed: u64,
    /// Reconnecting after an error failed.
    pub reconnect_failed: u64,
}

impl ErrorCounts {
    /// Errors of every kind together.
    pub fn total(&self) -> u64 {
        self.mismatch + self.timeout + self.failed + self.reconnect_failed
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.mismatch += other.mismatch;
        self.timeout += other.timeout;
        self.failed += other.failed;
        self.reconnect_failed += other.reconnect_failed;
    }
}

/// The result of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    /// The transport's name.
    pub transport: String,
    /// Bytes of each request (and echo).
    pub payload_bytes: usize,
    /// Clients running at once.
    pub clients: usize,
    /// Successful, checked, measured round trips.
    pub round_trips: u64,
    /// What went wrong, by kind.
    pub errors: ErrorCounts,
    /// Wall time of the measured phase, seconds.
    pub elapsed_s: f64,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 90th percentile round trip, µs.
    pub p90_us: f64,
    /// 99th percentile round trip, µs.
    pub p99_us: f64,
    /// 99.9th percentile round trip, µs.
    pub p999_us: f64,
    /// Slowest round trip, µs.
    pub max_us: f64,
    /// Mean round trip, µs.
    pub mean_us: f64,
    /// Successful round trips per second, all clients together.
    pub round_trips_per_s: f64,
    /// Payload megabytes (10^6 bytes) echoed per second, one direction.
    pub mb_per_s: f64,
}

/// A deterministic payload of `size` bytes; the first 8 bytes (when they fit)
/// carry `tag` so that every request of a run differs from the one before.
pub fn make_payload(size: usize, tag: u64) -> Vec<u8> {
    let mut payload: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7)).collect();
    stamp(&mut payload, tag);
    payload
}

fn stamp(payload: &mut [u8], tag: u64) {
    let bytes = tag.to_le_bytes();
    let n = payload.len().min(8);
    payload[..n].copy_from_slice(&bytes[..n]);
}

/// What one client task hands back.
struct WorkerOutcome {
    hist: Histogram<u64>,
    errors: ErrorCounts,
    finished: Instant,
}

/// Run one cell: `clients` concurrent clients of `transport`, each doing
/// round trips of `payload_bytes` back to back.
pub async fn run_cell(
    transport: Arc<dyn Transport>,
    payload_bytes: usize,
    clients: usize,
    cfg: &BenchConfig,
) -> anyhow::Result<CellResult> {
    anyhow::ensure!(clients > 0, "need at least one client");
    let name = transport.name();
    let server = timeout(cfg.setup_timeout, transport.start_server())
        .await
        .with_context(|| format!("{name}: server start timed out"))??;
    anyhow::ensure!(
        server.addr().ip().is_loopback(),
        "{name}: server bound to non-loopback {}",
        server.addr()
    );
    let addr = server.addr();

    // Connect every client before the clock starts.
    let mut conns: Vec<Box<dyn Client>> = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = timeout(cfg.setup_timeout, transport.connect(addr))
            .await
            .with_context(|| format!("{name}: connect timed out"))??;
        conns.push(client);
    }

    let measure_start = Instant::now() + cfg.warmup;
    let end = measure_start + cfg.duration;
    let budget = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for (id, client) in conns.into_iter().enumerate() {
        let transport = transport.clone();
        let budget = budget.clone();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(transport, addr, client, id as u64, payload_bytes, measure_start, end, budget, cfg)
                .await
        }));
    }

    let mut hist = new_histogram();
    let mut errors = ErrorCounts::default();
    let mut last_finish = measure_start;
    // Each task ends by itself by `end` plus one round-trip timeout (plus a
    // reconnect); the outer timeout is a backstop.
    let backstop = cfg.warmup + cfg.duration + 2 * cfg.round_trip_timeout + 2 * cfg.setup_timeout;
    for task in tasks {
        let abort = task.abort_handle();
        match timeout(backstop, task).await {
            Ok(Ok(outcome)) => {
                hist.add(&outcome.hist).context("merge histograms")?;
                errors.add(&outcome.errors);
                last_finish = last_finish.max(outcome.finished);
            }
            Ok(Err(join_error)) => {
                return Err(anyhow::anyhow!("{name}: client task failed: {join_error}"));
            }
            Err(_) => {
                abort.abort();
                return Err(anyhow::anyhow!("{name}: client task did not stop in time"));
            }
        }
    }
    server.shutdown().await;

    let elapsed_s = last_finish.saturating_duration_since(measure_start).as_secs_f64().max(1e-9);
    let round_trips = hist.len();
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p90, p99, p999, max, mean) = if round_trips == 0 {
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN, f64::NAN)
    } else {
        (
            us(hist.value_at_quantile(0.50)),
            us(hist.value_at_quantile(0.90)),
            us(hist.value_at_quantile(0.99)),
            us(hist.value_at_quantile(0.999)),
            us(hist.max()),
            hist.mean() / 1000.0,
        )
    };
    let round_trips_per_s = round_trips as f64 / elapsed_s;
    Ok(CellResult {
        transport: name,
        payload_bytes,
        clients,
        round_trips,
        errors,
        elapsed_s,
        p50_us: p50,
        p90_us: p90,
        p99_us: p99,
        p999_us: p999,
        max_us: max,
        mean_us: mean,
        round_trips_per_s,
        mb_per_s: round_trips_per_s * payload_bytes as f64 / 1e6,
    })
}

/// Nanosecond histogram, 1 ns .. 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    transport: Arc<dyn Transport>,
    addr: std::net::SocketAddr,
    client: Box<dyn Client>,
    id: u64,
    payload_bytes: usize,
    measure_start: Instant,
    end: Instant,
    budget: Arc<AtomicU64>,
    cfg: BenchConfig,
) -> WorkerOutcome {
    let mut hist = new_histogram();
    let mut errors = ErrorCounts::default();
    let mut payload = make_payload(payload_bytes, id << 48);
    let mut reply = Vec::with_capacity(payload_bytes);
    let mut client = Some(client);
    let mut seq: u64 = 0;

    loop {
        let now = Instant::now();
        if now >= end || errors.total() >= cfg.max_errors_per_client {
            break;
        }
        let measuring = now >= measure_start;
        if measuring && budget.fetch_add(1, Ordering::Relaxed) >= cfg.max_round_trips {
            break;
        }
        let c = match &mut client {
            Some(c) => c,
            None => match timeout(cfg.setup_timeout, transport.connect(addr)).await {
                Ok(Ok(c)) => client.insert(c),
                _ => {
                    errors.reconnect_failed += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        seq += 1;
        stamp(&mut payload, (id << 48) | seq);

        let t0 = Instant::now();
        let result = timeout(cfg.round_trip_timeout, c.round_trip(&payload, &mut reply)).await;
        let rtt = t0.elapsed();
        let ok = match result {
            Ok(Ok(())) if reply == payload => true,
            Ok(Ok(())) => {
                errors.mismatch += 1;
                false
            }
            Ok(Err(_)) => {
                errors.failed += 1;
                false
            }
            Err(_) => {
                errors.timeout += 1;
                false
            }
        };
        if ok {
            if measuring {
                let _ = hist.record((rtt.as_nanos() as u64).max(1));
            }
        } else {
            // The connection may be out of step (or a late UDP echo may be
            // queued): start over with a new one.
            client = None;
        }
    }
    let finished = Instant::now();
    if let Some(mut c) = client {
        let _ = timeout(Duration::from_millis(200), c.close()).await;
    }
    WorkerOutcome { hist, errors, finished }
}

/// Run every cell: for each transport, each payload size, each client count.
/// `progress` is called after each cell (e.g. to print a line to stderr).
/// A cell that fails to set up is reported through `progress` and skipped.
pub async fn run_all(
    transports: &[Arc<dyn Transport>],
    payload_sizes: &[usize],
    client_counts: &[usize],
    cfg: &BenchConfig,
    mut progress: impl FnMut(Result<&CellResult, (&str, usize, usize, &anyhow::Error)>),
) -> Vec<CellResult> {
    let mut results = Vec::new();
    for transport in transports {
        for &size in payload_sizes {
            for &clients in client_counts {
                match run_cell(transport.clone(), size, clients, cfg).await {
                    Ok(r) => {
                        progress(Ok(&r));
                        results.push(r);
                    }
                    Err(e) => progress(Err((&transport.name(), size, clients, &e))),
                }
            }
        }
    }
    results
}
