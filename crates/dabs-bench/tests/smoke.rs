//! Bounded functional checks: every transport echoes correctly, and the runner
//! produces sane numbers for a very short cell. Loopback only.

use std::sync::Arc;
use std::time::Duration;

use dabs_bench::mp::MpEcho;
use dabs_bench::runner::{BenchConfig, run_cell};
use dabs_bench::{Transport, default_transports, smoke_test};

const SIZES: &[usize] = &[0, 1, 8, 64, 512, 4096, 16 * 1024];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_echoes() {
    for t in default_transports().unwrap() {
        smoke_test(t.as_ref(), SIZES).await.unwrap_or_else(|e| panic!("{}: {e:#}", t.name()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_short_cells() {
    let cfg = BenchConfig {
        duration: Duration::from_millis(150),
        warmup: Duration::from_millis(20),
        ..BenchConfig::default()
    };
    for t in default_transports().unwrap() {
        let t: Arc<dyn Transport> = t;
        for clients in [1, 4] {
            let r = run_cell(t.clone(), 512, clients, &cfg).await.unwrap();
            assert_eq!(r.errors.total(), 0, "{} x{clients}: {:?}", r.transport, r.errors);
            assert!(r.round_trips > 10, "{} x{clients}: only {} round trips", r.transport, r.round_trips);
            assert!(r.p50_us > 0.0 && r.p50_us <= r.p99_us, "{r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_budget_is_respected() {
    let cfg = BenchConfig {
        duration: Duration::from_secs(5),
        warmup: Duration::ZERO,
        max_round_trips: 200,
        ..BenchConfig::default()
    };
    let t: Arc<dyn Transport> = Arc::new(dabs_bench::tcp::TcpFramed::new());
    let r = run_cell(t, 64, 2, &cfg).await.unwrap();
    assert_eq!(r.round_trips, 200);
    assert!(r.elapsed_s < 4.0, "stopped on count, not on time: {}", r.elapsed_s);
}

#[test]
fn mp_is_measured_by_default() {
    let names: Vec<String> = default_transports().unwrap().iter().map(|t| t.name()).collect();
    for mp in ["mp", "mp+crc", "mp+enc", "mp+crc+enc"] {
        assert!(names.iter().any(|n| n == mp), "{mp} missing from {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp_multi_buffer_cells_are_clean() {
    let cfg = BenchConfig {
        duration: Duration::from_millis(150),
        warmup: Duration::from_millis(20),
        ..BenchConfig::default()
    };
    for crc in [false, true] {
        let t: Arc<dyn Transport> = Arc::new(MpEcho::new(crc));
        let r = run_cell(t, 4096, 8, &cfg).await.unwrap();
        assert_eq!(r.errors.total(), 0, "{} x8 4 KiB: {:?}", r.transport, r.errors);
        assert!(r.round_trips > 10, "{}: only {} round trips", r.transport, r.round_trips);
    }
    // Sealing is slow in debug builds (the cipher's generic loops are not optimised): stop on
    // a count of round trips rather than on time.
    let cfg = BenchConfig { duration: Duration::from_secs(20), max_round_trips: 24, ..cfg };
    for crc in [false, true] {
        let t: Arc<dyn Transport> = Arc::new(MpEcho::encrypted(crc));
        let r = run_cell(t, 4096, 4, &cfg).await.unwrap();
        assert_eq!(r.errors.total(), 0, "{} x4 4 KiB: {:?}", r.transport, r.errors);
        assert_eq!(r.round_trips, 24, "{}", r.transport);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_costs_are_measured_and_compared_with_clear() {
    let clear = MpEcho::new(false).open_cost(2, 20).await.unwrap();
    let sealed = MpEcho::encrypted(false).open_cost(2, 20).await.unwrap();
    assert_eq!((clear.transport.as_str(), sealed.transport.as_str()), ("mp", "mp+enc"));
    for o in [&clear, &sealed] {
        assert!(o.samples == 20 && o.p50_us > 0.0 && o.p50_us <= o.p99_us, "{o:?}");
    }
    let table = dabs_bench::report::opens_markdown(&[clear, sealed]);
    let row = table.lines().find(|l| l.starts_with("| mp+enc |")).expect("encrypted row");
    assert_eq!(row.matches('|').count(), 8, "ratio and key-exchange columns filled: {row}");
    assert!(!row.contains('–'), "{row}");
}
