//! What `dabs demo jobs` and `dabs bench jobs` share: their job module, its inputs, and
//! reading a farm's jobs figures.

pub mod bench;
pub mod demo;

use base64::Engine;
use std::time::{Duration, Instant};

/// The job module's text: x (and optionally a spin count) in, x*x (u64 LE) out.
const BUSY_WAT: &str = include_str!("busy.wat");

/// The job module, assembled.
pub fn busy_module() -> Vec<u8> {
    wat::parse_str(BUSY_WAT).expect("busy.wat is valid WebAssembly text")
}

/// A task's input: x, and `spins` turns of the module's loop.
pub fn input(x: u32, spins: u32) -> Vec<u8> {
    let mut v = x.to_le_bytes().to_vec();
    if spins > 0 {
        v.extend_from_slice(&spins.to_le_bytes());
    }
    v
}

/// What the module answers for x.
pub fn expected(x: u32) -> Vec<u8> {
    (u64::from(x) * u64::from(x)).to_le_bytes().to_vec()
}

/// Spins that make one task take about `target` in this machine's sandbox (measured here,
/// in the same interpreter the compute servers run).
pub fn calibrate(target: Duration) -> u32 {
    let module = dabs_sandbox::Module::new(&busy_module()).expect("the module validates");
    let limits = dabs_sandbox::Limits::default();
    let probe = 200_000u32;
    // The best of a few runs: the machine may be busy for one of them.
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            let _ = module.run(&input(3, probe), &limits);
            t.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    let per_spin = best.as_secs_f64() / f64::from(probe);
    (target.as_secs_f64() / per_spin.max(1e-12)).clamp(1.0, 1e9) as u32
}

/// A job's JSON body: the module and one input per task, base64.
pub fn job_body(module: &[u8], inputs: &[Vec<u8>]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "module": b64.encode(module),
        "inputs": inputs.iter().map(|i| b64.encode(i)).collect::<Vec<_>>(),
    })
}

/// Sums a counter (`dabs_NAME_total`) over the operator URLs that answer.
pub async fn sum_counter(urls: &[String], name: &str) -> u64 {
    let mut total = 0;
    for url in urls {
        if let Ok(text) = fetch_metrics(url).await {
            total += counter_value(&text, name);
        }
    }
    total
}

async fn fetch_metrics(url: &str) -> Result<String, String> {
    tokio::time::timeout(Duration::from_secs(5), dabs_ops::get_text(url, "/metrics"))
        .await
        .map_err(|_| format!("{url} did not answer in 5 s"))?
}

/// The value of `NAME` (a counter's `_total` line, or a gauge) in an OpenMetrics text.
pub fn counter_value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .map_or(0, |v| v as u64)
}

/// The quantile `p` of `values`, in the unit given.
pub fn pct(values: &[f64], p: f64) -> f64 {
    dabs_node::calls::Percentiles::of_ms(values.iter().copied(), p)
}
