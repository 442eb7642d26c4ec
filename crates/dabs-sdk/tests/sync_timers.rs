//! Wait-and-lock primitives and timer objects. All timing runs on tokio's paused clock, so the
//! durations asserted are exact and nothing depends on how fast the machine is.

use dabs_farm_proto::portion::PortionReport;
use dabs_net::SessionId;
use dabs_sdk::sync::{Empty, StarvationReporter, Starved, TimedQueue, TimedSemaphore};
use dabs_sdk::timers::{
    Adjust, Attempt, Callback, Expired, Ratio, ReadOutcome, ReadTimer, ReadTimerConfig, TimedOut,
    TimeoutPattern, WriteTimer, overrun_resource,
};
use std::collections::BTreeMap;
use std::future::pending;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, advance, sleep};

const VA: &str = "calc/7";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Reports = mpsc::UnboundedReceiver<(String, PortionReport)>;

/// A reporter with `db` at 250 ms, `default` at 100 ms, and the channel its reports go to.
fn reporter() -> (StarvationReporter, Reports) {
    let timeouts = BTreeMap::from([("default".to_string(), ms(100)), ("db".to_string(), ms(250))]);
    let (tx, rx) = mpsc::unbounded_channel();
    (StarvationReporter::new(VA, timeouts, tx), rx)
}

/// Everything reported so far, as resource names.
fn drain(rx: &mut Reports) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok((va, report)) = rx.try_recv() {
        assert_eq!(va, VA);
        match report {
            PortionReport::Timeout { resource } => out.push(resource),
            other => panic!("only time-outs are reported, got {other:?}"),
        }
    }
    out
}

#[test]
fn timeout_for_falls_back_to_default_then_node_default() {
    let (r, _rx) = reporter();
    assert_eq!(r.timeout_for("db"), ms(250));
    assert_eq!(r.timeout_for("cache"), ms(100));
    let bare = StarvationReporter::detached(BTreeMap::new());
    assert_eq!(bare.timeout_for("db"), dabs_farm_proto::timeouts::DEFAULT_TIMEOUT);
    bare.report("db");
    assert_eq!((bare.count("db"), bare.total()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn semaphore_times_out_after_the_resource_timeout_and_reports_it() {
    let (r, mut rx) = reporter();
    let db = TimedSemaphore::new("db", 1, r.clone());
    let held = db.acquire().await.unwrap();
    assert!(db.try_acquire().is_none());

    let start = Instant::now();
    let err = db.acquire().await.unwrap_err();
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(err, Starved { resource: "db".into(), waited: ms(250) });
    assert!(err.to_string().contains("`db`"), "{err}");
    assert_eq!(drain(&mut rx), ["db"]);
    assert_eq!(r.count("db"), 1);
    drop(held);
    assert_eq!(db.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn semaphore_without_its_own_timeout_uses_default() {
    let (r, mut rx) = reporter();
    let cache = TimedSemaphore::new("cache", 0, r.clone());
    assert_eq!(cache.timeout(), ms(100));
    let start = Instant::now();
    let err = cache.acquire().await.unwrap_err();
    assert_eq!((start.elapsed(), err.waited, err.resource.as_str()), (ms(100), ms(100), "cache"));
    assert_eq!(drain(&mut rx), ["cache"]);
    assert_eq!((r.count("cache"), r.count("db")), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn semaphore_waiter_gets_a_permit_released_in_time_without_a_report() {
    let (r, mut rx) = reporter();
    let db = Arc::new(TimedSemaphore::new("db", 1, r.clone()));
    let (taken_tx, taken) = oneshot::channel();
    let holder = tokio::spawn({
        let db = db.clone();
        async move {
            let _permit = db.acquire().await.unwrap();
            taken_tx.send(()).unwrap();
            sleep(ms(60)).await; // holds the permit: the work under test (paused clock)
        }
    });
    taken.await.unwrap();
    let start = Instant::now();
    let _permit = db.acquire().await.unwrap();
    assert_eq!(start.elapsed(), ms(60));
    holder.await.unwrap();
    assert!(drain(&mut rx).is_empty());
    assert_eq!(r.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn queue_push_waits_for_room_then_times_out_and_reports() {
    let (r, mut rx) = reporter();
    let q = TimedQueue::new("db", 2, r.clone());
    q.push(1).await.unwrap();
    q.push(2).await.unwrap();
    assert_eq!((q.len(), q.try_push(9)), (2, Err(9)));

    let start = Instant::now();
    let full = q.push(3).await.unwrap_err();
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(full.item, 3, "the item comes back");
    assert_eq!(Starved::from(full), Starved { resource: "db".into(), waited: ms(250) });
    assert_eq!(drain(&mut rx), ["db"]);
    assert_eq!(r.count("db"), 1);
    assert_eq!(q.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn queue_push_gets_room_made_in_time_and_keeps_order() {
    let (r, mut rx) = reporter();
    let q = Arc::new(TimedQueue::new("db", 1, r));
    q.push("a").await.unwrap();
    let consumer = tokio::spawn({
        let q = q.clone();
        async move {
            sleep(ms(40)).await; // a slow consumer: the work under test (paused clock)
            q.pop().await.unwrap()
        }
    });
    let start = Instant::now();
    q.push("b").await.unwrap();
    assert_eq!(start.elapsed(), ms(40));
    assert_eq!(consumer.await.unwrap(), "a");
    assert_eq!(q.pop().await.unwrap(), "b");
    assert!(q.is_empty());
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test(start_paused = true)]
async fn queue_pop_times_out_empty_without_reporting() {
    let (r, mut rx) = reporter();
    let q: TimedQueue<u8> = TimedQueue::new("jobs", 4, r.clone());
    assert_eq!(q.try_pop(), None);
    let start = Instant::now();
    let err = q.pop().await.unwrap_err();
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(err, Empty { resource: "jobs".into(), waited: ms(100) });
    assert!(drain(&mut rx).is_empty());
    assert_eq!(r.total(), 0);
}

#[test]
fn patterns_give_exact_schedules() {
    let growing = TimeoutPattern::Growing { first: ms(10), factor: 2, max: ms(1000), attempts: 4 };
    assert_eq!(growing.schedule(), [ms(10), ms(20), ms(40), ms(80)]);
    let capped = TimeoutPattern::Growing { first: ms(10), factor: 3, max: ms(50), attempts: 4 };
    assert_eq!(capped.schedule(), [ms(10), ms(30), ms(50), ms(50)]);
    let shrinking = TimeoutPattern::Shrinking { first: ms(80), factor: 2, min: ms(15), attempts: 4 };
    assert_eq!(shrinking.schedule(), [ms(80), ms(40), ms(20), ms(15)]);
    assert_eq!(TimeoutPattern::Fixed(ms(7)).schedule(), [ms(7)]);
    let none = TimeoutPattern::Growing { first: ms(5), factor: 0, max: ms(9), attempts: 0 };
    assert_eq!(none.schedule(), [ms(5)], "at least one attempt");
}

/// A write whose attempts never finish, recording the time-out each attempt was given and when
/// (on the paused clock) it started.
async fn never_finishing_write(pattern: TimeoutPattern) -> (Result<(), TimedOut>, Vec<(Duration, Duration)>) {
    let (r, _rx) = reporter();
    let timer = WriteTimer::new("db", pattern, r);
    let start = Instant::now();
    let mut seen = Vec::new();
    let result = timer
        .write(|a: Attempt| {
            seen.push((a.timeout, start.elapsed()));
            pending::<()>()
        })
        .await;
    (result, seen)
}

#[tokio::test(start_paused = true)]
async fn write_timer_growing_pattern_times_each_attempt_then_gives_up() {
    let (r, mut rx) = reporter();
    let pattern = TimeoutPattern::Growing { first: ms(10), factor: 2, max: ms(1000), attempts: 4 };
    let timer = WriteTimer::new("db", pattern, r.clone());
    let start = Instant::now();
    let mut seen = Vec::new();
    let err = timer
        .write(|a: Attempt| {
            seen.push((a.index, a.timeout, start.elapsed()));
            pending::<()>()
        })
        .await
        .unwrap_err();
    // Each attempt starts when the one before timed out: 0, 10, 30, 70.
    assert_eq!(seen, [(0, ms(10), ms(0)), (1, ms(20), ms(10)), (2, ms(40), ms(30)), (3, ms(80), ms(70))]);
    assert_eq!(err, TimedOut { resource: "db".into(), attempts: 4, waited: ms(150) });
    assert_eq!((timer.base().attempts(), timer.base().timeouts()), (4, 4));
    assert_eq!(r.count("db"), 4);
    assert_eq!(drain(&mut rx), ["db"; 4]);

    // Time-outs came at 10, 30, 70 and 150 ms; now is 150 ms.
    assert_eq!(timer.base().timeouts_in_last(ms(100)), 2);
    assert_eq!(timer.base().timeouts_in_last(ms(120)), 3, "the interval includes its start");
    advance(ms(100)).await;
    assert_eq!(timer.base().timeouts_in_last(ms(100)), 1);
    assert_eq!(timer.base().timeouts_in_last(ms(10)), 0);
}

#[tokio::test(start_paused = true)]
async fn write_timer_shrinking_and_fixed_patterns() {
    let (err, seen) = never_finishing_write(TimeoutPattern::Shrinking {
        first: ms(80),
        factor: 2,
        min: ms(15),
        attempts: 4,
    })
    .await;
    assert_eq!(seen, [(ms(80), ms(0)), (ms(40), ms(80)), (ms(20), ms(120)), (ms(15), ms(140))]);
    assert_eq!(err.unwrap_err().waited, ms(155));

    let (err, seen) = never_finishing_write(TimeoutPattern::Fixed(ms(33))).await;
    assert_eq!(seen, [(ms(33), ms(0))]);
    assert_eq!(err.unwrap_err().attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn write_timer_stops_at_the_first_attempt_in_time() {
    let (r, mut rx) = reporter();
    let pattern = TimeoutPattern::Growing { first: ms(10), factor: 2, max: ms(1000), attempts: 5 };
    let timer = WriteTimer::new("db", pattern, r.clone());
    let start = Instant::now();
    // Each attempt takes 25 ms: the third (40 ms time-out) is the first to finish.
    let got = timer
        .write(|a: Attempt| async move {
            sleep(ms(25)).await; // the attempt's work under test (paused clock)
            a.index
        })
        .await;
    assert_eq!(got, Ok(2));
    assert_eq!(start.elapsed(), ms(10 + 20 + 25));
    assert_eq!((timer.base().attempts(), timer.base().timeouts()), (3, 2));
    assert_eq!(drain(&mut rx), ["db", "db"]);
}

#[tokio::test(start_paused = true)]
async fn write_timer_configured_uses_the_resource_timeout() {
    let (r, _rx) = reporter();
    assert_eq!(WriteTimer::configured("db", r.clone()).pattern(), TimeoutPattern::Fixed(ms(250)));
    assert_eq!(WriteTimer::configured("log", r).pattern(), TimeoutPattern::Fixed(ms(100)));
}

#[test]
fn write_blocking_hands_each_attempt_its_timeout() {
    let (r, mut rx) = reporter();
    let pattern = TimeoutPattern::Shrinking { first: ms(40), factor: 2, min: ms(1), attempts: 3 };
    let timer = WriteTimer::new("disk", pattern, r.clone());
    let mut given = Vec::new();
    // The underlying call "honours" its time-out by reporting it expired, without sleeping.
    let err = timer
        .write_blocking(|a| {
            given.push(a.timeout);
            Err::<(), _>(Expired)
        })
        .unwrap_err();
    assert_eq!(given, [ms(40), ms(20), ms(10)]);
    assert_eq!((err.resource.as_str(), err.attempts), ("disk", 3));
    assert_eq!(drain(&mut rx), ["disk"; 3]);

    let ok = timer.write_blocking(|a| if a.index == 1 { Ok("written") } else { Err(Expired) });
    assert_eq!(ok, Ok("written"));
    assert_eq!((timer.base().attempts(), timer.base().timeouts(), r.count("disk")), (5, 4, 4));
}

#[test]
fn expired_recognises_socket_timeouts() {
    use std::io::{Error, ErrorKind};
    assert!(Expired::is_io_timeout(&Error::from(ErrorKind::WouldBlock)));
    assert!(Expired::is_io_timeout(&Error::from(ErrorKind::TimedOut)));
    assert!(!Expired::is_io_timeout(&Error::from(ErrorKind::ConnectionReset)));
}

fn halving_doubling() -> ReadTimerConfig {
    ReadTimerConfig {
        first: ms(80),
        alert_after: 3,
        adjust: Adjust::Scale {
            after_read: Ratio::new(1, 2),
            after_timeout: Ratio::new(2, 1),
            min: ms(10),
            max: ms(200),
        },
    }
}

#[tokio::test(start_paused = true)]
async fn read_timer_alerts_after_k_reads_in_a_row_and_adjusts_after_each() {
    let (r, mut rx) = reporter();
    let timer = ReadTimer::new("inbox", halving_doubling(), r.clone());
    let mut timeouts = vec![timer.current_timeout()];
    for n in 1..=2 {
        assert_eq!(timer.read(async { n }).await, ReadOutcome::Read { value: n, alert: false });
        timeouts.push(timer.current_timeout());
    }
    assert!(drain(&mut rx).is_empty());
    assert_eq!(timer.in_a_row(), 2);
    let third = timer.read(async { 3 }).await;
    timeouts.push(timer.current_timeout());
    assert_eq!(third, ReadOutcome::Read { value: 3, alert: true });
    assert!(third.is_alert());
    // Halved after each read that answered, never below the 10 ms minimum.
    assert_eq!(timeouts, [ms(80), ms(40), ms(20), ms(10)]);
    assert_eq!((timer.alerts(), timer.in_a_row()), (1, 0), "an alert restarts the run");
    assert_eq!(drain(&mut rx), [overrun_resource("inbox")]);
    assert_eq!(r.count("inbox:overrun"), 1);
    assert_eq!((timer.base().attempts(), timer.base().timeouts()), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn read_timeout_resets_the_run_and_grows_the_timeout() {
    let (r, mut rx) = reporter();
    let timer = ReadTimer::new("inbox", halving_doubling(), r.clone());
    timer.read(async {}).await;
    timer.read(async {}).await;
    assert_eq!((timer.in_a_row(), timer.current_timeout()), (2, ms(20)));

    let start = Instant::now();
    let out = timer.read(pending::<()>()).await;
    assert_eq!(start.elapsed(), ms(20));
    assert_eq!(out, ReadOutcome::TimedOut { timeout: ms(20) });
    assert_eq!((timer.in_a_row(), timer.current_timeout()), (0, ms(40)));
    assert_eq!(timer.base().timeouts(), 1);
    assert!(drain(&mut rx).is_empty(), "a read time-out is idleness, not starvation");

    // The run starts over: two more are not enough, the third alerts.
    assert!(!timer.read(async {}).await.is_alert());
    assert!(!timer.read(async {}).await.is_alert());
    assert_eq!(timer.alerts(), 0);
    assert!(timer.read(async {}).await.is_alert());
    assert_eq!(drain(&mut rx), ["inbox:overrun"]);

    // Time-outs double up to the maximum.
    for _ in 0..6 {
        assert!(timer.read(pending::<()>()).await.is_timed_out());
    }
    assert_eq!(timer.current_timeout(), ms(200));
}

#[tokio::test(start_paused = true)]
async fn read_that_answers_within_its_timeout_after_a_wait() {
    let (r, _rx) = reporter();
    let timer = ReadTimer::new("inbox", ReadTimerConfig::fixed(ms(50), 0), r);
    let start = Instant::now();
    let out = timer
        .read(async {
            sleep(ms(49)).await; // the read's work under test (paused clock)
            "late"
        })
        .await;
    assert_eq!((out.value(), start.elapsed()), (Some("late"), ms(49)));
    for _ in 0..10 {
        assert!(!timer.read(async {}).await.is_alert(), "alert_after 0 never alerts");
    }
    assert_eq!(timer.current_timeout(), ms(50), "Adjust::Keep");
}

#[test]
fn read_blocking_gets_the_current_timeout() {
    let (r, mut rx) = reporter();
    let timer = ReadTimer::new("socket", halving_doubling(), r);
    let mut given = Vec::new();
    let out = timer.read_blocking(|t| {
        given.push(t);
        Err::<(), _>(Expired)
    });
    assert_eq!(out, ReadOutcome::TimedOut { timeout: ms(80) });
    for _ in 0..3 {
        timer.read_blocking(|t| {
            given.push(t);
            Ok(())
        });
    }
    assert_eq!(given, [ms(80), ms(160), ms(80), ms(40)]);
    assert_eq!(timer.alerts(), 1);
    assert_eq!(drain(&mut rx), ["socket:overrun"]);
}

#[tokio::test(start_paused = true)]
async fn read_async_calls_back_with_the_client_and_the_advanced_time() {
    let (r, _rx) = reporter();
    let timer = ReadTimer::new("inbox", ReadTimerConfig::fixed(ms(100), 0), r);
    let (answer_tx, answer) = oneshot::channel::<&str>();
    let (done_tx, done) = oneshot::channel();
    timer.read_async(SessionId(7), async move { answer.await.unwrap() }, move |cb| {
        done_tx.send(cb).unwrap();
    });
    advance(ms(37)).await;
    answer_tx.send("hello").unwrap();
    let cb = done.await.unwrap();
    assert_eq!(
        cb,
        Callback {
            client: SessionId(7),
            outcome: ReadOutcome::Read { value: "hello", alert: false },
            duration: ms(37)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn read_async_time_out_is_called_back_too() {
    let (r, _rx) = reporter();
    let timer = ReadTimer::new("inbox", ReadTimerConfig::fixed(ms(100), 0), r);
    let (done_tx, done) = oneshot::channel();
    let task = timer.read_async("client-a", pending::<u8>(), move |cb| done_tx.send(cb).unwrap());
    let cb = done.await.unwrap();
    task.await.unwrap();
    assert_eq!(
        (cb.client, cb.outcome, cb.duration),
        ("client-a", ReadOutcome::TimedOut { timeout: ms(100) }, ms(100))
    );
}

#[tokio::test(start_paused = true)]
async fn write_async_callbacks_are_per_client_with_their_own_durations() {
    let (r, mut rx) = reporter();
    let pattern = TimeoutPattern::Growing { first: ms(10), factor: 2, max: ms(1000), attempts: 3 };
    let timer = WriteTimer::new("db", pattern, r.clone());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Client 1's write takes 15 ms (first attempt times out at 10, second finishes at 25);
    // client 2's never finishes (10 + 20 + 40 = 70).
    for (client, takes) in [(SessionId(1), Some(ms(15))), (SessionId(2), None)] {
        let calls = calls.clone();
        tasks.push(timer.write_async(
            client,
            move |a: Attempt| async move {
                match takes {
                    Some(d) => sleep(d).await, // the attempt's work under test (paused clock)
                    None => pending::<()>().await,
                }
                a.index
            },
            move |cb| calls.lock().unwrap().push(cb),
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut calls = std::mem::take(&mut *calls.lock().unwrap());
    calls.sort_by_key(|cb| cb.client);
    assert_eq!(
        calls,
        [
            Callback { client: SessionId(1), outcome: Ok(1), duration: ms(25) },
            Callback {
                client: SessionId(2),
                outcome: Err(TimedOut { resource: "db".into(), attempts: 3, waited: ms(70) }),
                duration: ms(70)
            },
        ]
    );
    // One time-out for client 1, three for client 2.
    assert_eq!(r.count("db"), 4);
    assert_eq!(drain(&mut rx).len(), 4);
}

#[tokio::test(start_paused = true)]
async fn reporter_counts_match_the_reports_on_the_channel() {
    let (r, mut rx) = reporter();
    let db = TimedSemaphore::new("db", 0, r.clone());
    let q = TimedQueue::new("slots", 1, r.clone());
    let writes = WriteTimer::new("db", TimeoutPattern::Fixed(ms(5)), r.clone());
    let reads = ReadTimer::new("inbox", ReadTimerConfig::fixed(ms(5), 2), r.clone());

    let _ = db.acquire().await;
    q.push(()).await.unwrap();
    let _ = q.push(()).await;
    let _ = q.push(()).await;
    let _ = writes.write(|_| pending::<()>()).await;
    for _ in 0..4 {
        reads.read(async {}).await;
    }
    let _ = q.pop().await;
    let _ = q.pop().await; // empty: not reported

    let mut on_channel = BTreeMap::<String, u64>::new();
    for resource in drain(&mut rx) {
        *on_channel.entry(resource).or_default() += 1;
    }
    let expected = BTreeMap::from([("db".into(), 2), ("slots".into(), 2), ("inbox:overrun".into(), 2)]);
    assert_eq!(on_channel, expected);
    assert_eq!(r.counts(), expected);
    assert_eq!(r.total(), 6);
}
