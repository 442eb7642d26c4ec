//! Bounded waits for something observable: poll until it holds, and on time-out panic naming
//! what was awaited (and, for checks that say why not, the last reason).

use std::fmt::Debug;
use std::time::Duration;

/// The default time-out of a wait: generous, for a loaded machine (2 cores, several test
/// binaries at once); a wait that holds returns as soon as it does.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The default pause between two polls.
pub const POLL: Duration = Duration::from_millis(20);

/// What one poll of a wait found: done (with a value) or not yet (with why, if it can say).
pub trait Outcome {
    /// What the wait returns once the check holds.
    type Value;
    /// `Ok(value)` when the check holds, else `Err(why not)` for the time-out message.
    fn settle(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn settle(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

fn timed_out(what: &str, timeout: Duration, last: Option<String>) -> ! {
    match last {
        Some(why) => panic!("not within {timeout:?}: {what} (last check: {why})"),
        None => panic!("not within {timeout:?}: {what}"),
    }
}

/// Polls `check` every `poll` until it holds and returns its value; panics after `timeout`
/// naming `what`. A check begun at or after the deadline is always made before giving up, so a
/// wait is never stricter than sleeping `timeout` and checking once.
pub fn eventually<O: Outcome>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let start = std::time::Instant::now();
    loop {
        let begun = start.elapsed();
        match check().settle() {
            Ok(v) => return v,
            Err(why) if begun >= timeout => timed_out(what, timeout, why),
            Err(_) => std::thread::sleep(poll.min(timeout - begun)),
        }
    }
}

/// [`eventually`] for async checks, on tokio's clock (so it also works, at no cost, in paused
/// time).
pub async fn eventually_async<O: Outcome>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> O,
) -> O::Value {
    let start = tokio::time::Instant::now();
    loop {
        let begun = start.elapsed();
        match check().await.settle() {
            Ok(v) => return v,
            Err(why) if begun >= timeout => timed_out(what, timeout, why),
            Err(_) => tokio::time::sleep(poll.min(timeout - begun)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_check_holds() {
        let mut n = 0;
        let v = eventually("n reaches 3", PATIENCE, Duration::ZERO, || {
            n += 1;
            (n == 3).then_some(n * 10)
        });
        assert_eq!(v, 30);
        eventually("true", PATIENCE, POLL, || true);
    }

    #[test]
    fn a_time_out_names_what_was_awaited_and_the_last_reason() {
        let e = std::panic::catch_unwind(|| {
            eventually("the moon", Duration::from_millis(30), Duration::from_millis(5), || {
                Err::<(), _>("still new")
            })
        })
        .unwrap_err();
        let text = e.downcast_ref::<String>().unwrap();
        assert!(text.contains("the moon") && text.contains("still new"), "{text}");
    }

    #[test]
    fn a_check_is_made_at_the_deadline() {
        let start = std::time::Instant::now();
        let timeout = Duration::from_millis(60);
        // Holds only from the deadline on; the poll is longer than the time-out.
        eventually("the deadline", timeout, Duration::from_secs(5), || start.elapsed() >= timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn the_async_wait_runs_on_tokio_time() {
        let start = tokio::time::Instant::now();
        eventually_async("an hour", Duration::from_secs(7200), Duration::from_secs(1), async || {
            start.elapsed() >= Duration::from_secs(3600)
        })
        .await;
    }
}
