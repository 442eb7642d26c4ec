//! A handler that panics takes only its worker down: the runtime hears of it as an error
//! report, and the portion's other workers go on serving.

use dabs_farm_proto::portion::PortionReport;
use dabs_sdk::{Handled, ServerPortion};
use dabs_testkit::portion::{Hosted, host};
use std::time::Duration;

const BOOM: u16 = 301;

struct Fragile;

impl ServerPortion for Fragile {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> Handled {
        assert_ne!(command, BOOM, "asked to fail");
        Handled::Reply(payload)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_reported_and_the_other_workers_serve_on() {
    let Hosted { session: s, mut reports, .. } = host("fragile", || Fragile, 2).await;
    assert_eq!(reports.recv().await.unwrap().1, PortionReport::Started);
    assert_eq!(s.call(300, vec![1]).await.unwrap(), vec![1]);
    // The request whose handler panicked gets no answer (whether it ran is unknown).
    drop(s.call_async(BOOM, vec![2]));
    let report =
        tokio::time::timeout(Duration::from_secs(10), reports.recv()).await.expect("a report").unwrap();
    match &report.1 {
        PortionReport::Error(e) => {
            assert!(e.contains("worker panicked") && e.contains("asked to fail"), "{e}")
        }
        other => panic!("expected an error report, got {other:?}"),
    }
    for i in 3..8u8 {
        assert_eq!(s.call(300, vec![i]).await.unwrap(), vec![i], "the other worker serves on");
    }
}
