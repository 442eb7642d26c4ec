//! R-LB-7: a portion whose requests keep waiting for a worker grows its own pool (bounded by
//! the operator's ceiling and the server's CPUs) before the farm hears of the waits: every `Grew` report
//! comes before the first `Timeout` on `workers`, the pool never passes its ceiling, and every
//! call is answered once.

use dabs_farm_proto::portion::PortionReport;
use dabs_sdk::{Handled, PortionFactoryFn, ServerPortion};
use std::time::{Duration, Instant};

/// A worker-bound critical section: each request holds its worker for `WORK`.
struct Busy;

const WORK: Duration = Duration::from_millis(25);

impl ServerPortion for Busy {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        tokio::time::sleep(WORK).await;
        Handled::Reply(payload)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_to_its_ceiling_before_the_farm_hears_of_the_waits() {
    // The application would grow to 8; the operator's max_workers (3) and the CPUs bound it.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceiling = cpus.min(3);
    let factory = PortionFactoryFn::new("busy", || Busy).growing(8);
    let timeouts = [("workers".to_owned(), Duration::from_millis(40))].into_iter().collect();
    let mut hosted = dabs_testkit::portion::host_factory("busy", factory, timeouts, Some(3)).await;
    // Waves of concurrent calls, bounded in count and time, until the farm has heard of the
    // waits (the pool at its ceiling) or the bounds are reached.
    const WAVES: usize = 20;
    const PER_WAVE: usize = 24;
    let started = Instant::now();
    let mut reports = Vec::new();
    let mut calls = 0usize;
    for wave in 0..WAVES {
        let answers: Vec<_> = (0..PER_WAVE)
            .map(|i| hosted.session.call_async(300, format!("w{wave}-{i}").into_bytes()))
            .collect();
        for (i, a) in answers.into_iter().enumerate() {
            let got = a.await.expect("every call is answered");
            assert_eq!(got, format!("w{wave}-{i}").into_bytes(), "its own answer");
            calls += 1;
        }
        while let Ok((_, r)) = hosted.reports.try_recv() {
            reports.push(r);
        }
        let heard = reports.iter().any(|r| matches!(r, PortionReport::Timeout { .. }));
        if heard || started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let grew: Vec<(usize, u32)> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            PortionReport::Grew { workers } => Some((i, *workers)),
            _ => None,
        })
        .collect();
    let first_timeout = reports
        .iter()
        .position(|r| matches!(r, PortionReport::Timeout { resource } if resource == "workers"));
    println!("{calls} calls; reports {reports:?}");
    assert_eq!(
        grew.iter().map(|(_, w)| *w as usize).collect::<Vec<_>>(),
        (2..=ceiling).collect::<Vec<_>>(),
        "one worker at a time, up to the ceiling of {ceiling}: {reports:?}"
    );
    let first_timeout = first_timeout.expect("at the ceiling, the waits reach the farm");
    assert!(grew.iter().all(|(i, _)| *i < first_timeout), "growth came first: {reports:?}");
    assert_eq!(
        hosted.figures.handled.load(std::sync::atomic::Ordering::Relaxed),
        calls as u64,
        "each call ran once"
    );
}
