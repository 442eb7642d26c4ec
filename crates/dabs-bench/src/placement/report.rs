//! Summaries of runs: quantiles, the Markdown tables and the SVG plot.

use super::*;
use std::fmt::Write as _;

/// One row of a table: a policy in a scenario, over all seeds.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The policy.
    pub policy: Policy,
    /// The offered load.
    pub load: f64,
    /// Mean service time on a speed-1 server, seconds.
    pub mean_service_s: f64,
    /// Median response time over all measured jobs of all seeds, seconds.
    pub p50: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
    /// Largest, seconds.
    pub max: f64,
    /// Mean, seconds.
    pub mean: f64,
    /// Per-server utilisation, averaged over seeds.
    pub utilisation: Vec<f64>,
    /// p99 of each seed alone, seconds (to show the spread between seeds).
    pub p99_per_seed: Vec<f64>,
    /// Some seed's backlog grew past [`UNSTABLE_BACKLOG`]: figures grow with the run length.
    pub unstable: bool,
}

impl Summary {
    /// Highest minus lowest server utilisation.
    pub fn util_spread(&self) -> f64 {
        let max = self.utilisation.iter().copied().fold(f64::MIN, f64::max);
        let min = self.utilisation.iter().copied().fold(f64::MAX, f64::min);
        max - min
    }

    /// Standard deviation of server utilisation.
    pub fn util_sd(&self) -> f64 {
        let n = self.utilisation.len() as f64;
        let mean = self.utilisation.iter().sum::<f64>() / n;
        (self.utilisation.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n).sqrt()
    }
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Pools the runs (one per seed) of one policy in one scenario.
pub fn summarise(sc: &Scenario, policy: Policy, runs: &[RunResult]) -> Summary {
    let mut all: Vec<f64> = runs.iter().flat_map(|r| r.responses.iter().copied()).collect();
    all.sort_by(f64::total_cmp);
    let p99_per_seed = runs
        .iter()
        .map(|r| {
            let mut v = r.responses.clone();
            v.sort_by(f64::total_cmp);
            quantile(&v, 0.99)
        })
        .collect();
    let n = runs.first().map_or(0, |r| r.utilisation.len());
    let utilisation =
        (0..n).map(|i| runs.iter().map(|r| r.utilisation[i]).sum::<f64>() / runs.len() as f64).collect();
    Summary {
        policy,
        load: sc.load,
        mean_service_s: sc.mean_service_s,
        p50: quantile(&all, 0.50),
        p99: quantile(&all, 0.99),
        max: all.last().copied().unwrap_or(f64::NAN),
        mean: all.iter().sum::<f64>() / all.len().max(1) as f64,
        utilisation,
        p99_per_seed,
        unstable: runs.iter().any(|r| r.backlog_at_end as f64 > UNSTABLE_BACKLOG * r.responses.len() as f64),
    }
}

/// Runs every (scenario, policy, seed) cell on `threads` threads; the results are in `cells`
/// order and do not depend on the number of threads.
pub fn run_cells(cells: &[(Scenario, Policy, u64)], threads: usize) -> Vec<RunResult> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; cells.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((sc, policy, seed)) = cells.get(i) else { break };
                    let r = simulate(sc, *policy, *seed);
                    out.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every cell ran"))
        .collect()
}

fn ms(seconds: f64) -> String {
    format!("{:.0}", seconds * 1e3)
}

/// The main table: one row per policy and load, times in ms.
pub fn markdown_table(rows: &[Summary]) -> String {
    let mut s = String::new();
    s.push_str("| policy | load | p50 (ms) | p99 (ms) | max (ms) | utilisation spread (max − min) | utilisation s.d. |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let mark = if r.unstable { " ‡" } else { "" };
        let _ = writeln!(
            s,
            "| {}{mark} | {:.2} | {} | {} | {} | {:.3} | {:.3} |",
            r.policy.name(),
            r.load,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            r.util_spread(),
            r.util_sd()
        );
    }
    s
}

/// Per-server utilisation of each row, in percent.
pub fn utilisation_table(rows: &[Summary], speeds: &[f64]) -> String {
    let mut s = String::from("| policy | load |");
    for sp in speeds {
        let _ = write!(s, " ×{sp} |");
    }
    s.push_str("\n|---|---:|");
    s.push_str(&"---:|".repeat(speeds.len()));
    s.push('\n');
    for r in rows {
        let _ = write!(s, "| {} | {:.2} |", r.policy.name(), r.load);
        for u in &r.utilisation {
            let _ = write!(s, " {:.0} |", 100.0 * u);
        }
        s.push('\n');
    }
    s
}

/// A hand-written SVG: p99 response time against load, one line per policy, log scale.
/// Unstable points are drawn hollow.
pub fn svg_plot(rows: &[Summary], title: &str) -> String {
    let (w, h) = (800.0, 500.0);
    let (left, right, top, bottom) = (80.0, 190.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let p99s: Vec<f64> = rows.iter().map(|r| r.p99 * 1e3).filter(|v| v.is_finite() && *v > 0.0).collect();
    let lo = 10f64.powf(p99s.iter().copied().fold(f64::MAX, f64::min).log10().floor());
    let hi = 10f64.powf(p99s.iter().copied().fold(f64::MIN, f64::max).log10().ceil());
    let (xmin, xmax) = (0.45, 1.0);
    let x = |load: f64| left + (load - xmin) / (xmax - xmin) * pw;
    let y = |ms: f64| top + (hi.log10() - ms.log10()) / (hi.log10() - lo.log10()) * ph;
    let colours = ["#9e9e9e", "#8c564b", "#ff7f0e", "#1f77b4", "#bcbd22", "#d62728", "#2ca02c"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        left + pw / 2.0
    );
    let mut decade = lo;
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v > hi * 1.0001 {
                break;
            }
            let yy = y(v);
            let stroke = if m == 1.0 { "#b0b0b0" } else { "#e8e8e8" };
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}"/>"#,
                left + pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                yy + 4.0,
                format_ms(v)
            );
        }
        decade *= 10.0;
    }
    for load in LOADS {
        let xx = x(load);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#e8e8e8"/>"##,
            top + ph
        );
        let _ =
            writeln!(s, r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{load}</text>"#, top + ph + 18.0);
    }
    let _ =
        writeln!(s, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered load</text>"#,
        left + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">p99 response time (log scale)</text>"#,
        top + ph / 2.0
    );
    for (k, policy) in Policy::MAIN.iter().enumerate() {
        let colour = colours[k % colours.len()];
        let pts: Vec<(f64, f64, bool)> = rows
            .iter()
            .filter(|r| r.policy == *policy)
            .map(|r| (x(r.load), y(r.p99 * 1e3), r.unstable))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let dash = match *policy {
            Policy::Oracle | Policy::DABS_BEFORE => r#" stroke-dasharray="6 4""#,
            // Round-robin and random overlap: show both.
            Policy::RoundRobin => r#" stroke-dasharray="2 3""#,
            _ => "",
        };
        let width = match *policy {
            Policy::DABS => 3,
            Policy::RoundRobin => 6,
            _ => 2,
        };
        let path: Vec<String> = pts.iter().map(|(a, b, _)| format!("{a:.1},{b:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="{width}"{dash}/>"#,
            path.join(" ")
        );
        for (a, b, unstable) in &pts {
            let fill = if *unstable { "white" } else { colour };
            let _ = writeln!(
                s,
                r#"<circle cx="{a:.1}" cy="{b:.1}" r="3.5" fill="{fill}" stroke="{colour}" stroke-width="1.5"/>"#
            );
        }
        let ly = top + 12.0 + 22.0 * k as f64;
        let lx = left + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="{width}"{dash}/>"#,
            lx + 26.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 32.0, ly + 4.0, policy.short());
    }
    let note_y = top + 12.0 + 22.0 * Policy::MAIN.len() as f64 + 10.0;
    let _ = writeln!(
        s,
        r##"<circle cx="{:.1}" cy="{note_y:.1}" r="3.5" fill="white" stroke="#555" stroke-width="1.5"/>"##,
        left + pw + 27.0
    );
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">unstable</text>"#, left + pw + 46.0, note_y + 4.0);
    s.push_str("</svg>\n");
    s
}

fn format_ms(v: f64) -> String {
    if v >= 1000.0 { format!("{} s", v / 1000.0) } else { format!("{v} ms") }
}
