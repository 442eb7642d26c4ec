//! `dabs-bench-placement`: the deterministic placement benchmark. Simulates one decider placing
//! jobs on a heterogeneous farm with late load reports, for every policy and load, prints the
//! Markdown tables and writes the plot (`docs/placement.svg`). See `docs/placement.md`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use dabs_bench::placement::{
    LOADS, LatencyFigure, Policy, RunResult, Scenario, Summary, markdown_table, run_cells, summarise,
    svg_plot, utilisation_table,
};

/// Placement benchmark: our placement against round-robin, random, least-connections,
/// power-of-two-choices and a join-shortest-queue oracle, in a discrete-event simulation.
#[derive(Debug, Parser)]
#[command(name = "dabs-bench-placement", version)]
struct Args {
    /// First seed; the runs use this and the following `--seeds - 1` seeds.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seeds per cell.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Measured jobs per run.
    #[arg(long, default_value_t = 200_000)]
    jobs: usize,
    /// Jobs placed before measuring, per run.
    #[arg(long, default_value_t = 20_000)]
    warmup: usize,
    /// Where to write the plot.
    #[arg(long, value_name = "PATH", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/placement.svg"))]
    svg: PathBuf,
    /// Do not write the plot.
    #[arg(long)]
    no_svg: bool,
    /// Skip the sweep over mean service times.
    #[arg(long)]
    no_sweep: bool,
    /// What servers announce as latency: `recent-response` (mean response time of the jobs
    /// finished since the previous report) or `lifetime-wait` (mean wait since start, as the
    /// node's portion figures).
    #[arg(long, default_value = "recent-response", value_parser = ["recent-response", "lifetime-wait"])]
    latency: String,
    /// Worker threads (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Mean service times (speed-1 server, seconds) of the sweep at load 0.9; 1 s is the main table.
const SWEEP: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];

const SWEEP_POLICIES: [Policy; 5] =
    [Policy::LeastConnections, Policy::PowerOfTwo, Policy::DABS_BEFORE, Policy::DABS, Policy::Oracle];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seeds >= 1 && args.jobs >= 1000, "need at least one seed and 1000 jobs");
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let seeds: Vec<u64> = (args.seed..args.seed + args.seeds).collect();
    let scenario = |load: f64, mean_service_s: f64| Scenario {
        jobs: args.jobs,
        warmup_jobs: args.warmup,
        mean_service_s,
        latency: if args.latency == "lifetime-wait" {
            LatencyFigure::LifetimeWait
        } else {
            LatencyFigure::RecentResponse
        },
        ..Scenario::standard(load)
    };

    // Every cell: (scenario, policy) × seeds.
    let mut groups: Vec<(Scenario, Policy)> = Vec::new();
    for load in LOADS {
        for policy in Policy::MAIN {
            groups.push((scenario(load, 1.0), policy));
        }
    }
    for policy in Policy::PARTS.into_iter().chain([Policy::PowerOfTwoBySpeed]) {
        groups.push((scenario(0.9, 1.0), policy));
    }
    if !args.no_sweep {
        for d in SWEEP.into_iter().filter(|&d| d != 1.0) {
            for policy in SWEEP_POLICIES {
                groups.push((scenario(0.9, d), policy));
            }
        }
    }
    let cells: Vec<(Scenario, Policy, u64)> =
        groups.iter().flat_map(|(sc, p)| seeds.iter().map(move |&s| (sc.clone(), *p, s))).collect();

    let sc = scenario(0.9, 1.0);
    println!("# dabs placement benchmark\n");
    println!(
        "seeds {:?}; {} servers, speeds {:?}; FIFO; exponential demand, mean {} s on a speed-1 server; \
         MMPP arrivals at {}×/{}× the mean rate, mean sojourn {} s; reports every {} ms, {} s old on arrival; latency = {}; \
         {} warm-up + {} measured jobs per run; {} threads\n",
        seeds,
        sc.speeds.len(),
        sc.speeds,
        sc.mean_service_s,
        sc.burst_high,
        sc.burst_low,
        sc.burst_sojourn_s,
        sc.report_interval_s * 1e3,
        sc.report_age_s,
        args.latency,
        sc.warmup_jobs,
        sc.jobs,
        threads
    );

    let started = Instant::now();
    let results = run_cells(&cells, threads);
    let elapsed = started.elapsed();
    let events: u64 = results.iter().map(|r| r.events).sum();
    let per_group: Vec<Summary> = groups
        .iter()
        .zip(results.chunks(seeds.len()))
        .map(|((sc, p), runs): (&(Scenario, Policy), &[RunResult])| summarise(sc, *p, runs))
        .collect();
    let find = |policy: Policy, load: f64, d: f64| {
        per_group
            .iter()
            .find(|s| s.policy == policy && s.load == load && s.mean_service_s == d)
            .expect("every cell ran")
    };

    let main: Vec<Summary> = per_group
        .iter()
        .filter(|s| s.mean_service_s == 1.0 && Policy::MAIN.contains(&s.policy))
        .cloned()
        .collect();
    println!("## All policies (times in ms; the mean service time of a speed-1 server is 1000 ms)\n");
    print!("{}", markdown_table(&main));
    println!(
        "\n‡ unstable: the backlog grew through the run (some server gets more work than it can do), so these figures grow with the run length.\n"
    );

    let (dabs, oracle, p2c, lc) = (
        find(Policy::DABS, 0.9, 1.0),
        find(Policy::Oracle, 0.9, 1.0),
        find(Policy::PowerOfTwo, 0.9, 1.0),
        find(Policy::LeastConnections, 0.9, 1.0),
    );
    let (vs_oracle, vs_p2c) = (dabs.p99 / oracle.p99, dabs.p99 / p2c.p99);
    println!("## Goal at load 0.9, 1 s-old reports\n");
    println!(
        "- dabs p99 {:.0} ms; oracle {:.0} ms; power-of-two-choices {:.0} ms; least-connections {:.0} ms",
        dabs.p99 * 1e3,
        oracle.p99 * 1e3,
        p2c.p99 * 1e3,
        lc.p99 * 1e3
    );
    println!(
        "- dabs / oracle = {vs_oracle:.2} (goal ≤ 1.2): {}",
        if vs_oracle <= 1.2 { "met" } else { "NOT met" }
    );
    println!(
        "- dabs / power-of-two-choices = {vs_p2c:.3} (goal ≤ 0.8): {}",
        if vs_p2c <= 0.8 { "met" } else { "NOT met" }
    );
    println!("- dabs / least-connections = {:.2}", dabs.p99 / lc.p99);
    let per_seed =
        |s: &Summary| s.p99_per_seed.iter().map(|v| format!("{:.0}", v * 1e3)).collect::<Vec<_>>().join(", ");
    println!(
        "- p99 per seed (ms): dabs {}; oracle {}; least-connections {}\n",
        per_seed(dabs),
        per_seed(oracle),
        per_seed(lc)
    );

    println!("## Per-server utilisation at load 0.9 (%)\n");
    let at_09: Vec<Summary> = main.iter().filter(|s| s.load == 0.9).cloned().collect();
    print!("{}", utilisation_table(&at_09, &sc.speeds));

    println!(
        "\n## What each field gives (load 0.9; one at a time, a what-if with exact service times, and a speed-aware baseline)\n"
    );
    println!("| variant | p50 (ms) | p99 (ms) | max (ms) | p99 ÷ oracle | p99 ÷ power-of-two |");
    println!("|---|---:|---:|---:|---:|---:|");
    let before = find(Policy::DABS_BEFORE, 0.9, 1.0);
    let rows = Policy::PARTS.iter().chain(&[Policy::PowerOfTwoBySpeed]).map(|&p| find(p, 0.9, 1.0));
    let rows: Vec<&Summary> = rows.collect();
    let (parts, reference) = rows.split_at(Policy::PARTS.len() - 1);
    let order =
        std::iter::once(before).chain(parts.iter().copied()).chain([dabs]).chain(reference.iter().copied());
    for s in order.chain([oracle]) {
        println!(
            "| {}{} | {:.0} | {:.0} | {:.0} | {:.2} | {:.3} |",
            s.policy.name(),
            if s.unstable { " ‡" } else { "" },
            s.p50 * 1e3,
            s.p99 * 1e3,
            s.max * 1e3,
            s.p99 / oracle.p99,
            s.p99 / p2c.p99
        );
    }

    if !args.no_sweep {
        println!(
            "\n## Sweep: mean service time against the 1 s report age (load 0.9; p99 in units of the speed-1 mean service time)\n"
        );
        print!("| mean service (speed 1) | fastest server's mean |");
        for p in SWEEP_POLICIES {
            print!(" {} |", p.name());
        }
        println!(" dabs ÷ oracle | dabs ÷ P2C |");
        println!("|---:|---:|{}---:|---:|", "---:|".repeat(SWEEP_POLICIES.len()));
        for d in SWEEP {
            print!("| {} s | {} ms |", d, d * 1e3 / 8.0);
            for p in SWEEP_POLICIES {
                let s = find(p, 0.9, d);
                print!(" {:.2}{} |", s.p99 / d, if s.unstable { " ‡" } else { "" });
            }
            let (a, o, q) =
                (find(Policy::DABS, 0.9, d), find(Policy::Oracle, 0.9, d), find(Policy::PowerOfTwo, 0.9, d));
            println!(" {:.2} | {:.3} |", a.p99 / o.p99, a.p99 / q.p99);
        }
    }

    if !args.no_svg {
        let title = format!(
            "p99 response time, {} servers (speeds 1–8), reports {} s old, seeds {}–{}",
            sc.speeds.len(),
            sc.report_age_s,
            seeds[0],
            seeds[seeds.len() - 1]
        );
        std::fs::write(&args.svg, svg_plot(&main, &title))
            .with_context(|| format!("writing {}", args.svg.display()))?;
        println!("\nplot written to {}", args.svg.display());
    }
    println!(
        "\n{} runs, {:.1} M events in {:.1} s ({:.1} M events/s)",
        cells.len(),
        events as f64 / 1e6,
        elapsed.as_secs_f64(),
        events as f64 / 1e6 / elapsed.as_secs_f64()
    );
    Ok(())
}
