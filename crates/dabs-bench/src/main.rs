//! `dabs-bench-transport`: run every transport × payload × clients cell once
//! on loopback and print a Markdown table (or JSON).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use dabs_bench::Transport as _;
use dabs_bench::mp::MpEcho;
use dabs_bench::report::{self, RunInfo, TransportInfo};
use dabs_bench::runner::{self, BenchConfig};

/// Loopback transport benchmark: round-trip p50/p99 and throughput of echo
/// exchanges for raw UDP, TCP, QUIC and MP.
#[derive(Debug, Parser)]
#[command(name = "dabs-bench-transport", version)]
struct Args {
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Warm-up seconds per cell (not measured).
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// Print JSON on stdout instead of the Markdown table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON document to this file.
    #[arg(long, value_name = "PATH")]
    json_out: Option<PathBuf>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,512,4096")]
    sizes: Vec<usize>,
    /// Concurrent client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// Only these transports (by name, e.g. `udp,tcp,quic,"quic 1-stream",mp,mp+crc,mp+enc,mp+crc+enc`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// At most this many measured round trips per cell.
    #[arg(long, default_value_t = 20_000_000)]
    max_round_trips: u64,
    /// Round-trip timeout in milliseconds (a UDP loss costs this much).
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// tokio worker threads (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Sessions opened one after another per MP transport, to time the open (and the key
    /// exchange of the encrypted ones); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    opens: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= 600.0, "--seconds must be in (0, 600]");
    anyhow::ensure!(args.warmup >= 0.0 && args.warmup <= 60.0, "--warmup must be in [0, 60]");
    anyhow::ensure!(
        args.sizes.iter().all(|&s| s <= 60_000),
        "payload sizes must fit one UDP datagram (<= 60000)"
    );
    anyhow::ensure!(
        args.clients.iter().all(|&c| (1..=1024).contains(&c)),
        "client counts must be in 1..=1024"
    );

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("build tokio runtime")?;

    let cfg = BenchConfig {
        duration: Duration::from_secs_f64(args.seconds),
        warmup: Duration::from_secs_f64(args.warmup),
        max_round_trips: args.max_round_trips,
        round_trip_timeout: Duration::from_millis(args.timeout_ms),
        ..BenchConfig::default()
    };
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    if profile == "debug" {
        eprintln!("warning: debug build; numbers are only meaningful from `cargo run --release`");
    }

    let mut transports = dabs_bench::default_transports()?;
    if !args.only.is_empty() {
        transports.retain(|t| args.only.iter().any(|o| o == &t.name()));
        anyhow::ensure!(!transports.is_empty(), "--only matched no transport");
    }
    let info = RunInfo {
        profile: profile.into(),
        available_cores: cores,
        runtime_worker_threads: threads,
        config: cfg.clone(),
        transports: transports
            .iter()
            .map(|t| TransportInfo { name: t.name(), description: t.description() })
            .collect(),
    };

    let started = Instant::now();
    let results =
        runtime.block_on(runner::run_all(&transports, &args.sizes, &args.clients, &cfg, |r| match r {
            Ok(r) => eprintln!(
                "{:>14} {:>5} B x{:<3} p50 {:>8.1} µs  p99 {:>8.1} µs  {:>9.0} rt/s  errors {}",
                r.transport,
                r.payload_bytes,
                r.clients,
                r.p50_us,
                r.p99_us,
                r.round_trips_per_s,
                r.errors.total()
            ),
            Err((name, size, clients, e)) => {
                eprintln!("{name:>14} {size:>5} B x{clients:<3} FAILED: {e:#}")
            }
        }));
    let mut opens = Vec::new();
    if args.opens > 0 {
        let mp = [
            MpEcho::new(false),
            MpEcho::new(true),
            MpEcho::encrypted(false),
            MpEcho::encrypted(true),
            MpEcho::over_tcp(),
        ];
        for t in mp.iter().filter(|t| args.only.is_empty() || args.only.iter().any(|o| *o == t.name())) {
            // A tenth as many unmeasured opens first, to warm caches and the allocator.
            let o = runtime.block_on(t.open_cost(args.opens / 10, args.opens))?;
            eprintln!(
                "{:>14} open x{}  p50 {:>8.1} µs  p99 {:>8.1} µs  mean {:>8.1} µs",
                o.transport, o.samples, o.p50_us, o.p99_us, o.mean_us
            );
            opens.push(o);
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    eprintln!("{} cells in {:.1} s", results.len(), started.elapsed().as_secs_f64());

    let json = report::json(&info, &results, &opens)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{json}")?;
    } else {
        write!(stdout, "{}", report::markdown(&info, &results))?;
        if !opens.is_empty() {
            write!(stdout, "\n{}", report::opens_markdown(&opens))?;
        }
    }
    Ok(())
}
