//! The portion framework times each handler and keeps the portion's service time: busy time per
//! request, divided among the workers of a vertical split. On tokio's paused clock, so the
//! figures are exact and do not depend on how fast the machine is.

use dabs_farm_proto::portion::RuntimeEvent;
use dabs_sdk::{Handled, ServerPortion};
use dabs_testkit::portion::{Hosted, host};
use std::time::Duration;

/// Takes as many milliseconds as the first byte of the request says.
struct Sleeper;

impl ServerPortion for Sleeper {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        // The work under test (paused clock: exactly this long).
        tokio::time::sleep(Duration::from_millis(u64::from(payload[0]))).await;
        Handled::Reply(payload)
    }
}

/// Serves `requests` (handler milliseconds) one after another on a portion of `workers`
/// workers; returns the portion's service time, ms.
async fn service_ms(workers: usize, requests: &[u8]) -> Option<f64> {
    let Hosted { session: s, figures, events: events_tx, .. } = host("sleeper", || Sleeper, workers).await;
    assert_eq!(figures.service_ms(), None, "nothing handled yet");
    for &ms in requests {
        assert_eq!(s.call(300, vec![ms]).await.unwrap(), vec![ms]);
    }
    let _ = events_tx.send(RuntimeEvent::Shutdown { emergency: false });
    figures.service_ms()
}

#[tokio::test(start_paused = true)]
async fn each_handler_is_timed_and_a_split_shares_the_time() {
    // Within a few seconds nothing decays measurably: the mean of 10, 20 and 30 ms.
    let one = service_ms(1, &[10, 20, 30]).await.unwrap();
    assert!((one - 20.0).abs() < 0.05, "{one}");
    // Four workers on one queue: each request holds a quarter of the portion.
    let four = service_ms(4, &[40, 40]).await.unwrap();
    assert!((four - 10.0).abs() < 0.05, "{four}");
}
