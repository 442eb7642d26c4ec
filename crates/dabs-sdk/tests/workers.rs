//! A vertical split runs several workers on one portion queue; a single worker serves one
//! request at a time. Observed as concurrency inside the handler, not as timing.

use dabs_farm_proto::portion::PortionReport;
use dabs_sdk::{Handled, ServerPortion};
use dabs_testkit::portion::{Hosted, host};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static BUSY: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Slow;

impl ServerPortion for Slow {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        let now = BUSY.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(now, Ordering::SeqCst);
        // The work under test: long enough for the other workers' requests to overlap it.
        tokio::time::sleep(Duration::from_millis(30)).await;
        BUSY.fetch_sub(1, Ordering::SeqCst);
        Handled::Reply(payload)
    }
}

async fn peak_concurrency(workers: usize) -> (usize, Vec<PortionReport>) {
    BUSY.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    let Hosted { session: s, events: events_tx, mut reports, .. } = host("slow", || Slow, workers).await;
    let calls: Vec<_> = (0..8u8).map(|i| s.call_async(300, vec![i])).collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), vec![i as u8]);
    }
    let _ = events_tx.send(dabs_farm_proto::portion::RuntimeEvent::Shutdown { emergency: false });
    let mut seen = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), reports.recv()).await {
        let exited = r.1 == PortionReport::Exited;
        seen.push(r.1);
        if exited {
            break;
        }
    }
    (PEAK.load(Ordering::SeqCst), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_one_at_a_time_and_a_split_serves_several() {
    let (peak, reports) = peak_concurrency(1).await;
    assert_eq!(peak, 1);
    assert_eq!(reports, [PortionReport::Started, PortionReport::Exited], "one start, one exit");
    let (peak, reports) = peak_concurrency(4).await;
    assert_eq!(peak, 4, "four workers take four of the eight requests at once");
    assert_eq!(
        reports,
        [PortionReport::Started, PortionReport::Exited],
        "a split portion still starts and exits once"
    );
}
