//! The calls a node's portions take: how many, and their latency percentiles over the last
//! second, announced to the farm for the operator page's charts. [`Percentiles`] is the one
//! place latency percentiles are computed (an HDR histogram, `hdrhistogram`).

use crate::metrics::LatencyHistogram;
use crate::stats::CallFigures;
use dabs_farm_proto::portion::LatencyObserver;
use hdrhistogram::Histogram;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest latency told apart, µs (an hour); longer ones count as this.
const HIGHEST_US: u64 = 3_600_000_000;

/// Latencies, read back as percentiles to three significant digits.
#[derive(Clone, Debug)]
pub struct Percentiles(Histogram<u64>);

impl Default for Percentiles {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("1 µs ..= 1 h at 3 digits is a valid histogram"),
        )
    }
}

impl Percentiles {
    /// Records one latency of `us` microseconds (clamped to 1 µs ..= 1 h).
    pub fn record_us(&mut self, us: u64) {
        // In bounds by the clamp, so recording cannot fail.
        let _ = self.0.record(us.clamp(1, HIGHEST_US));
    }

    /// Records one latency in milliseconds; a value that is not a number counts as zero.
    pub fn record_ms(&mut self, ms: f64) {
        let us = if ms.is_finite() { (ms * 1e3).max(0.0) } else { 0.0 };
        self.record_us(us as u64);
    }

    /// Latencies recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// True before the first latency.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The latency at quantile `q` (0.5: the median), ms; `None` when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q) as f64 / 1e3)
    }

    /// The quantile `q` of `values_ms` (ms), 0 when there are none: a run's summary.
    pub fn of_ms(values_ms: impl IntoIterator<Item = f64>, q: f64) -> f64 {
        let mut p = Self::default();
        for v in values_ms {
            p.record_ms(v);
        }
        p.quantile_ms(q).unwrap_or(0.0)
    }

    /// Forgets every latency.
    pub fn clear(&mut self) {
        self.0.reset();
    }
}

/// How long one latency window lasts: the page samples once a second.
pub const WINDOW: Duration = Duration::from_secs(1);

struct Window {
    current: Percentiles,
    started: Instant,
    /// p50 and p99 of the last complete window, ms.
    last: (Option<f64>, Option<f64>),
}

/// The node's calls for its announcements: a count, and the current second's percentiles.
pub struct CallLatency {
    total: AtomicU64,
    window: Mutex<Window>,
}

impl CallLatency {
    /// No calls yet.
    pub fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            window: Mutex::new(Window {
                current: Percentiles::default(),
                started: Instant::now(),
                last: (None, None),
            }),
        }
    }

    /// The calls so far and the percentiles of the last complete window (rolled over here, so
    /// the figures are at most a window and a read old).
    pub fn figures(&self) -> CallFigures {
        self.figures_at(Instant::now())
    }

    fn figures_at(&self, now: Instant) -> CallFigures {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(w.started) >= WINDOW {
            w.last = (w.current.quantile_ms(0.5), w.current.quantile_ms(0.99));
            w.current.clear();
            w.started = now;
        }
        CallFigures {
            total: self.total.load(Ordering::Relaxed),
            p50_ms: w.last.0.map(|v| v as f32),
            p99_ms: w.last.1.map(|v| v as f32),
        }
    }
}

impl LatencyObserver for CallLatency {
    fn observe(&self, seconds: f64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.window.lock().unwrap_or_else(|e| e.into_inner()).current.record_ms(seconds * 1e3);
    }
}

impl Default for CallLatency {
    fn default() -> Self {
        Self::new()
    }
}

/// What one portion reports each request's latency to: its application's Prometheus
/// histogram and the node's call figures.
pub struct PortionLatency {
    /// The application's histogram in `/metrics`.
    pub app: LatencyHistogram,
    /// The node's announced call figures.
    pub calls: std::sync::Arc<CallLatency>,
}

impl LatencyObserver for PortionLatency {
    fn observe(&self, seconds: f64) {
        self.app.observe(seconds);
        self.calls.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut p = Percentiles::default();
        assert_eq!(p.quantile_ms(0.5), None);
        for ms in 1..=100 {
            p.record_ms(f64::from(ms));
        }
        assert_eq!(p.len(), 100);
        let (p50, p99) = (p.quantile_ms(0.5).unwrap(), p.quantile_ms(0.99).unwrap());
        assert!((p50 - 50.0).abs() < 0.1, "p50 {p50}");
        assert!((p99 - 99.0).abs() < 0.1, "p99 {p99}");
        // Nonsense is clamped, never a panic.
        p.record_ms(f64::NAN);
        p.record_ms(-3.0);
        p.record_ms(1e12);
        assert_eq!(p.len(), 103);
        assert!(p.quantile_ms(1.0).unwrap() >= 3_600_000.0);
        let values = (1..=1000).map(f64::from);
        assert!((Percentiles::of_ms(values, 0.99) - 990.0).abs() < 1.0);
        assert_eq!(Percentiles::of_ms([], 0.5), 0.0);
    }

    #[test]
    fn each_window_reports_its_own_calls() {
        let calls = CallLatency::new();
        let t0 = calls.window.lock().unwrap().started;
        for ms in [2.0, 2.0, 2.0, 40.0] {
            calls.observe(ms / 1e3);
        }
        // Within the first window: nothing complete yet, but the count is current.
        let f = calls.figures_at(t0);
        assert_eq!((f.total, f.p50_ms, f.p99_ms), (4, None, None));
        let f = calls.figures_at(t0 + WINDOW);
        assert_eq!(f.total, 4);
        assert!((f.p50_ms.unwrap() - 2.0).abs() < 0.01 && (f.p99_ms.unwrap() - 40.0).abs() < 0.05, "{f:?}");
        // A quiet window after it has no percentiles.
        let f = calls.figures_at(t0 + WINDOW * 2);
        assert_eq!((f.total, f.p50_ms, f.p99_ms), (4, None, None));
    }
}
