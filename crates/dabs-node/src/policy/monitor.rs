//! The server monitor: on each node, reads its portions' status objects at the frequency each
//! application's policy asks for (`collect_interval_ms`) and measures each portion's
//! throughput. What it read goes out in the node's announcements (`PortionStats::figures`,
//! `rate`, `status_fault`), where the central monitor ranks on it.

use dabs_farm_proto::records::PortionFigures;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A status object read that failed: `figure: reason`.
pub type ReadFault = String;

/// Reads every status object of one portion, each off the runtime's threads (a slow or stuck
/// object must not hold up the node), giving up after `limit`. A panic is a failure.
pub async fn read_objects(
    figures: Arc<PortionFigures>,
    limit: Duration,
) -> Result<Vec<(String, f32)>, ReadFault> {
    let objects = figures.status.all();
    let mut out = Vec::with_capacity(objects.len());
    for (name, object) in objects {
        let read = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.read()))
        });
        match tokio::time::timeout(limit, read).await {
            Err(_) => return Err(format!("{name}: no answer within {} ms", limit.as_millis())),
            Ok(Err(e)) => return Err(format!("{name}: {e}")),
            Ok(Ok(Err(_))) => return Err(format!("{name}: panicked")),
            Ok(Ok(Ok(Err(why)))) => return Err(format!("{name}: {why}")),
            Ok(Ok(Ok(Ok(v)))) if !v.is_finite() => return Err(format!("{name}: not a number ({v})")),
            Ok(Ok(Ok(Ok(v)))) => out.push((name, v as f32)),
        }
    }
    Ok(out)
}

/// What the monitor knows of one portion.
#[derive(Debug, Default)]
struct Reading {
    /// The figures of the last good read.
    figures: Vec<(String, f32)>,
    /// Why the last read failed, if it did.
    fault: Option<ReadFault>,
    /// When a read last succeeded.
    last_ok: Option<Instant>,
    /// A read started and not finished: since when.
    in_flight: Option<Instant>,
    /// When the next read is due.
    due: Option<Instant>,
    /// Requests handled at the last read, and when.
    handled: Option<(u64, Instant)>,
    /// Requests per second between the last two reads.
    rate: Option<f32>,
    /// Whether the portion publishes any status object.
    publishes: bool,
}

/// The node's server monitor: one reading per hosted portion, by virtual address.
#[derive(Debug, Default)]
pub struct ServerMonitor {
    readings: HashMap<String, Reading>,
}

/// What the announcement carries for one portion.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortionView {
    /// Figures of the last good read.
    pub figures: Vec<(String, f32)>,
    /// Requests per second over the last interval.
    pub rate: Option<f32>,
    /// Why it is out of consideration: a failed read, or no answer for too long.
    pub fault: Option<String>,
}

/// Reads older than this many intervals make a portion's objects silent.
const SILENT_AFTER_INTERVALS: u32 = 3;

impl ServerMonitor {
    /// Whether portion `va` is due for a read (and marks it started when it is).
    pub fn start_read(&mut self, va: &str, publishes: bool, interval: Duration, now: Instant) -> bool {
        let r = self.readings.entry(va.to_owned()).or_default();
        r.publishes = publishes;
        if r.in_flight.is_some() || r.due.is_some_and(|d| now < d) {
            return false;
        }
        r.in_flight = Some(now);
        r.due = Some(now + interval);
        true
    }

    /// A read of `va` finished, the portion having handled `handled` requests by then.
    pub fn finish_read(
        &mut self,
        va: &str,
        result: Result<Vec<(String, f32)>, ReadFault>,
        handled: u64,
        now: Instant,
    ) {
        let Some(r) = self.readings.get_mut(va) else { return };
        r.in_flight = None;
        match result {
            Ok(figures) => {
                r.figures = figures;
                r.fault = None;
                r.last_ok = Some(now);
            }
            Err(why) => r.fault = Some(why),
        }
        if let Some((before, at)) = r.handled {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if secs > 0.0 {
                r.rate = Some((handled.saturating_sub(before) as f64 / secs) as f32);
            }
        }
        r.handled = Some((handled, now));
    }

    /// What to announce for `va` now.
    pub fn view(&self, va: &str, interval: Duration, now: Instant) -> PortionView {
        let Some(r) = self.readings.get(va) else { return PortionView::default() };
        let silent_after = interval * SILENT_AFTER_INTERVALS;
        let fault = if let Some(why) = &r.fault {
            Some(why.clone())
        } else if let Some(since) = r.in_flight.filter(|t| now.saturating_duration_since(*t) > interval) {
            Some(format!("silent for {} ms", now.saturating_duration_since(since).as_millis()))
        } else if r.publishes && r.last_ok.is_some_and(|t| now.saturating_duration_since(t) > silent_after) {
            Some(format!(
                "no good read for {} ms",
                now.saturating_duration_since(r.last_ok.unwrap()).as_millis()
            ))
        } else {
            None
        };
        PortionView { figures: r.figures.clone(), rate: r.rate, fault }
    }

    /// Forgets portions no longer hosted.
    pub fn retain(&mut self, hosted: impl Fn(&str) -> bool) {
        self.readings.retain(|va, _| hosted(va));
    }
}

/// Requests a portion has handled so far.
pub fn handled(figures: &PortionFigures) -> u64 {
    figures.handled.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_figures_and_names_what_failed() {
        let f = Arc::new(PortionFigures::default());
        f.status.publish("pending", Arc::new(|| Ok(4.0))).unwrap();
        f.status.publish("mailbox", Arc::new(|| Ok(12.0))).unwrap();
        let got = read_objects(f.clone(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, vec![("mailbox".into(), 12.0), ("pending".into(), 4.0)]);
        f.status.publish("broken", Arc::new(|| Err("disk gone".into()))).unwrap();
        assert_eq!(read_objects(f.clone(), Duration::from_secs(5)).await.unwrap_err(), "broken: disk gone");
        f.status.publish("broken", Arc::new(|| panic!("bug in the object"))).unwrap();
        assert_eq!(read_objects(f.clone(), Duration::from_secs(5)).await.unwrap_err(), "broken: panicked");
        f.status.publish("broken", Arc::new(|| Ok(f64::NAN))).unwrap();
        assert!(read_objects(f.clone(), Duration::from_secs(5)).await.unwrap_err().contains("not a number"));
        // A stuck object: the read gives up at its limit (the blocked thread is the object's).
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let stuck = std::sync::Mutex::new(stuck);
        f.status
            .publish(
                "broken",
                Arc::new(move || {
                    let _ = stuck.lock().unwrap().recv();
                    Ok(1.0)
                }),
            )
            .unwrap();
        let e = read_objects(f.clone(), Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e, "broken: no answer within 100 ms");
        release.send(()).unwrap();
    }

    #[test]
    fn due_reads_rates_and_silence() {
        let mut m = ServerMonitor::default();
        let t0 = Instant::now();
        let iv = Duration::from_millis(100);
        assert!(m.start_read("va", true, iv, t0));
        assert!(!m.start_read("va", true, iv, t0 + iv * 2), "one read at a time");
        // Still in flight after an interval: silent.
        assert_eq!(m.view("va", iv, t0 + iv * 2).fault.as_deref(), Some("silent for 200 ms"));
        m.finish_read("va", Ok(vec![("pending".into(), 3.0)]), 100, t0 + iv * 2);
        let v = m.view("va", iv, t0 + iv * 2);
        assert_eq!((v.fault, v.rate, v.figures), (None, None, vec![("pending".into(), 3.0)]));
        // Next read one second later, 50 more requests: 50/s.
        let t1 = t0 + Duration::from_millis(1200);
        assert!(m.start_read("va", true, iv, t1));
        m.finish_read("va", Err("pending: db down".into()), 150, t1);
        let v = m.view("va", iv, t1);
        assert_eq!(v.fault.as_deref(), Some("pending: db down"));
        assert_eq!(v.rate, Some(50.0));
        // It answers again: back in consideration.
        let t2 = t1 + iv;
        assert!(m.start_read("va", true, iv, t2));
        m.finish_read("va", Ok(vec![]), 150, t2);
        assert_eq!(m.view("va", iv, t2).fault, None);
        // No read for longer than 3 intervals (the monitor itself stalled): silent.
        assert!(m.view("va", iv, t2 + iv * 4).fault.unwrap().starts_with("no good read for"));
        m.retain(|_| false);
        assert_eq!(m.view("va", iv, t2), PortionView::default());
    }
}
