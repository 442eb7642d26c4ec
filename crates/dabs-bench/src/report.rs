//! Output: a Markdown table with ratios to raw UDP, and a JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use crate::mp::OpenCost;
use crate::runner::{BenchConfig, CellResult};

/// Name of the reference transport the ratio columns divide by.
pub const REFERENCE: &str = "udp";

/// Facts about the run printed above the table and stored in the JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `"release"` or `"debug"` (from `debug_assertions`).
    pub profile: String,
    /// CPUs the machine offers the process.
    pub available_cores: usize,
    /// Worker threads of the tokio runtime that drove the run.
    pub runtime_worker_threads: usize,
    /// What was measured and how long.
    pub config: BenchConfig,
    /// `(name, description)` of each transport, in table order.
    pub transports: Vec<TransportInfo>,
}

/// A transport as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct TransportInfo {
    /// Its short name, e.g. `"udp"`.
    pub name: String,
    /// How it is used (framing, streams, options).
    pub description: String,
}

/// The whole JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report<'a> {
    /// Facts about the run.
    pub info: &'a RunInfo,
    /// One result per cell.
    pub results: &'a [CellResult],
    /// Session opens, clear and encrypted (empty when not measured).
    pub opens: &'a [OpenCost],
}

/// Suffix of the encrypted MP transports; the name without it is their clear counterpart.
pub const ENCRYPTED_SUFFIX: &str = "+enc";

/// The clear counterpart of an encrypted cell (`mp+enc` → `mp`), same payload and clients.
fn clear_twin<'a>(results: &'a [CellResult], r: &CellResult) -> Option<&'a CellResult> {
    let clear = r.transport.strip_suffix(ENCRYPTED_SUFFIX)?;
    results
        .iter()
        .find(|x| x.transport == clear && x.payload_bytes == r.payload_bytes && x.clients == r.clients)
}

/// The reference (raw UDP) cell with the same payload and client count.
fn reference<'a>(results: &'a [CellResult], r: &CellResult) -> Option<&'a CellResult> {
    results
        .iter()
        .find(|x| x.transport == REFERENCE && x.payload_bytes == r.payload_bytes && x.clients == r.clients)
}

fn ratio(value: f64, reference: Option<f64>) -> String {
    match reference {
        Some(base) if base > 0.0 && value.is_finite() && base.is_finite() => {
            format!("{:.2}", value / base)
        }
        _ => "–".into(),
    }
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() { format!("{v:.decimals$}") } else { "–".into() }
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Render the Markdown report: run facts, the table, and a line per transport.
pub fn markdown(info: &RunInfo, results: &[CellResult]) -> String {
    let mut out = String::new();
    let cfg = &info.config;
    let _ = writeln!(
        out,
        "Loopback echo, {} build, {} cores available, tokio runtime with {} worker threads; \
         per cell: {:.1} s warm-up, {:.1} s measured (at most {} round trips), round-trip timeout {} ms.\n",
        info.profile,
        info.available_cores,
        info.runtime_worker_threads,
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64(),
        cfg.max_round_trips,
        cfg.round_trip_timeout.as_millis(),
    );
    let _ = writeln!(
        out,
        "| transport | payload | clients | p50 µs | p99 µs | round trips/s | MB/s | errors | p50 ×udp | p99 ×udp | rt/s ×udp |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let base = reference(results, r);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.transport,
            size(r.payload_bytes),
            r.clients,
            num(r.p50_us, 1),
            num(r.p99_us, 1),
            num(r.round_trips_per_s, 0),
            num(r.mb_per_s, 2),
            r.errors.total(),
            ratio(r.p50_us, base.map(|b| b.p50_us)),
            ratio(r.p99_us, base.map(|b| b.p99_us)),
            ratio(r.round_trips_per_s, base.map(|b| b.round_trips_per_s)),
        );
    }
    let _ = writeln!(
        out,
        "\np50/p99: round-trip time of one request, send to echo fully received and checked. \
         round trips/s: all clients together. MB/s: payload bytes (10^6) echoed per second, one direction. \
         errors: echo mismatches + timeouts (losses) + failed calls, warm-up included. \
         ×udp: ratio to raw UDP for the same payload and client count (latency: higher is slower; \
         throughput: lower is slower).\n"
    );
    for t in &info.transports {
        let _ = writeln!(out, "- **{}**: {}", t.name, t.description);
    }
    let encrypted: Vec<(&CellResult, &CellResult)> =
        results.iter().filter_map(|r| clear_twin(results, r).map(|c| (r, c))).collect();
    if !encrypted.is_empty() {
        let _ = writeln!(
            out,
            "\nEncrypted MP against the same MP in clear (×clear: encrypted ÷ clear; latency: \
             higher is slower, throughput: lower is slower):\n"
        );
        let _ = writeln!(
            out,
            "| transport | payload | clients | p50 µs | p99 µs | round trips/s | p50 ×clear | p99 ×clear | rt/s ×clear |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (r, c) in encrypted {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.transport,
                size(r.payload_bytes),
                r.clients,
                num(r.p50_us, 1),
                num(r.p99_us, 1),
                num(r.round_trips_per_s, 0),
                ratio(r.p50_us, Some(c.p50_us)),
                ratio(r.p99_us, Some(c.p99_us)),
                ratio(r.round_trips_per_s, Some(c.round_trips_per_s)),
            );
        }
    }
    out
}

/// Render the cost of opening sessions: one row per transport, and for an encrypted one
/// what the key exchange adds to its clear counterpart's open.
pub fn opens_markdown(opens: &[OpenCost]) -> String {
    let mut out = String::new();
    if opens.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "Opening a session, one open at a time from one client endpoint, each closed before the next \
         (send of OPEN_SESSION to the session handed over; encrypted: including the key exchange):\n"
    );
    let _ = writeln!(
        out,
        "| transport | opens | p50 µs | p99 µs | mean µs | p50 ×clear | key exchange, p50 µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for o in opens {
        let clear =
            o.transport.strip_suffix(ENCRYPTED_SUFFIX).and_then(|c| opens.iter().find(|x| x.transport == c));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            o.transport,
            o.samples,
            num(o.p50_us, 1),
            num(o.p99_us, 1),
            num(o.mean_us, 1),
            ratio(o.p50_us, clear.map(|c| c.p50_us)),
            clear.map_or_else(|| "–".into(), |c| num(o.p50_us - c.p50_us, 1)),
        );
    }
    out
}

/// Render the JSON document (pretty-printed).
pub fn json(info: &RunInfo, results: &[CellResult], opens: &[OpenCost]) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&Report { info, results, opens })
}
