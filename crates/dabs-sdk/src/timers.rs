//! Timer objects (R-LB-2): write timers and read timers on one shared base.
//!
//! A timer wraps an underlying call (a write to or a read from some resource) with a time-out
//! and keeps the figures the load-balancing process cares about: attempts, time-outs, and
//! time-outs within a recent interval ([`TimerBase`]).
//!
//! - A [`WriteTimer`] gives each write a time-out, one attempt or several with a growing or
//!   shrinking time-out ([`TimeoutPattern`]). Every timed-out attempt is starvation on the
//!   timer's resource type and is reported.
//! - A [`ReadTimer`] starts from a first time-out and adjusts it after each read ([`Adjust`]).
//!   A read that times out only means nothing came, so it is counted, not reported. Reads that
//!   *never* time out mean messages arrive faster than the portion handles them: after
//!   [`ReadTimerConfig::alert_after`] of them in a row the timer raises an alert, reported as a
//!   time-out on `"<resource>:overrun"` (see [`overrun_resource`]) so the load-balancing process,
//!   which only knows time-outs, counts it and may start another portion.
//!
//! Each comes in three forms: `async` (the future is given the time-out), blocking (the
//! underlying call honours the time-out it is handed, e.g. with `set_read_timeout`, and says
//! [`Expired`] when it runs out), and asynchronous with a callback told which client the call
//! was for and how long it took from the call to the callback ([`Callback`]).

use crate::sync::StarvationReporter;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a timer remembers its time-outs for [`TimerBase::timeouts_in_last`], by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(60);

/// Appended to a read timer's resource type when it reports an alert.
pub const OVERRUN_SUFFIX: &str = ":overrun";

/// The resource name a read timer's alert on `resource` is reported under.
pub fn overrun_resource(resource: &str) -> String {
    format!("{resource}{OVERRUN_SUFFIX}")
}

/// What a blocking underlying call returns when the time-out it was given ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the call's time-out expired")]
pub struct Expired;

impl Expired {
    /// Whether `e` is a blocking socket call running out of its `set_read_timeout` /
    /// `set_write_timeout` (`WouldBlock` on Unix, `TimedOut` on Windows).
    pub fn is_io_timeout(e: &io::Error) -> bool {
        matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
    }
}

/// Every attempt of a write timed out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("writing to `{resource}`: all {attempts} attempt(s) timed out ({waited:?} in all)")]
pub struct TimedOut {
    /// The resource type.
    pub resource: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// From the first attempt to giving up.
    pub waited: Duration,
}

/// What an asynchronous call hands its callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback<K, O> {
    /// Which client the call was for (usually its `SessionId`).
    pub client: K,
    /// How the call ended.
    pub outcome: O,
    /// From the call to the callback.
    pub duration: Duration,
}

/// What all timers share: the resource type, where time-outs go, and the counters.
#[derive(Clone, Debug)]
pub struct TimerBase {
    inner: Arc<BaseInner>,
}

#[derive(Debug)]
struct BaseInner {
    resource: String,
    reporter: StarvationReporter,
    attempts: AtomicU64,
    timeouts: AtomicU64,
    retention: Duration,
    // When recent time-outs happened, oldest first; pruned to `retention`.
    recent: Mutex<VecDeque<Instant>>,
}

impl TimerBase {
    /// A base for timers on `resource`, remembering time-outs for [`DEFAULT_RETENTION`].
    pub fn new(resource: &str, reporter: StarvationReporter) -> Self {
        Self::with_retention(resource, reporter, DEFAULT_RETENTION)
    }

    /// A base remembering time-outs for `retention`, the longest interval
    /// [`timeouts_in_last`](Self::timeouts_in_last) can see.
    pub fn with_retention(resource: &str, reporter: StarvationReporter, retention: Duration) -> Self {
        Self {
            inner: Arc::new(BaseInner {
                resource: resource.to_string(),
                reporter,
                attempts: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                retention,
                recent: Mutex::default(),
            }),
        }
    }

    /// The resource type.
    pub fn resource(&self) -> &str {
        &self.inner.resource
    }

    /// Where time-outs are reported.
    pub fn reporter(&self) -> &StarvationReporter {
        &self.inner.reporter
    }

    /// Underlying calls made (each attempt of a write counts).
    pub fn attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    /// Underlying calls that timed out.
    pub fn timeouts(&self) -> u64 {
        self.inner.timeouts.load(Ordering::Relaxed)
    }

    /// Time-outs at most `interval` ago (no further back than the retention).
    pub fn timeouts_in_last(&self, interval: Duration) -> u64 {
        let now = Instant::now();
        let mut recent = self.recent();
        prune(&mut recent, now, self.inner.retention);
        recent.iter().rev().take_while(|t| now.saturating_duration_since(**t) <= interval).count() as u64
    }

    fn note_attempt(&self) {
        self.inner.attempts.fetch_add(1, Ordering::Relaxed);
    }

    fn note_timeout(&self, report_as: Option<&str>) {
        self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut recent = self.recent();
            recent.push_back(now);
            prune(&mut recent, now, self.inner.retention);
        }
        if let Some(resource) = report_as {
            self.inner.reporter.report(resource);
        }
    }

    fn recent(&self) -> MutexGuard<'_, VecDeque<Instant>> {
        self.inner.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn prune(recent: &mut VecDeque<Instant>, now: Instant, retention: Duration) {
    while recent.front().is_some_and(|t| now.saturating_duration_since(*t) > retention) {
        recent.pop_front();
    }
}

/// The time-outs of a write's attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutPattern {
    /// One attempt with this time-out.
    Fixed(Duration),
    /// `attempts` attempts, the time-out multiplied by `factor` each time, never above `max`.
    Growing {
        /// The first attempt's time-out.
        first: Duration,
        /// Multiplier between attempts (0 counts as 1).
        factor: u32,
        /// The longest time-out.
        max: Duration,
        /// How many attempts (0 counts as 1).
        attempts: u32,
    },
    /// `attempts` attempts, the time-out divided by `factor` each time, never below `min`.
    Shrinking {
        /// The first attempt's time-out.
        first: Duration,
        /// Divisor between attempts (0 counts as 1).
        factor: u32,
        /// The shortest time-out.
        min: Duration,
        /// How many attempts (0 counts as 1).
        attempts: u32,
    },
}

impl TimeoutPattern {
    /// How many attempts a write gets.
    pub fn attempts(&self) -> u32 {
        match *self {
            TimeoutPattern::Fixed(_) => 1,
            TimeoutPattern::Growing { attempts, .. } | TimeoutPattern::Shrinking { attempts, .. } => {
                attempts.max(1)
            }
        }
    }

    /// The time-out of each attempt, in order.
    pub fn schedule(&self) -> Vec<Duration> {
        let mut t = match *self {
            TimeoutPattern::Fixed(d) => d,
            TimeoutPattern::Growing { first, max, .. } => first.min(max),
            TimeoutPattern::Shrinking { first, min, .. } => first.max(min),
        };
        let mut out = Vec::with_capacity(self.attempts() as usize);
        for _ in 0..self.attempts() {
            out.push(t);
            t = self.step(t);
        }
        out
    }

    // Integer steps, so a pattern gives exactly the durations written in it.
    fn step(&self, t: Duration) -> Duration {
        match *self {
            TimeoutPattern::Fixed(d) => d,
            TimeoutPattern::Growing { factor, max, .. } => t.saturating_mul(factor.max(1)).min(max),
            TimeoutPattern::Shrinking { factor, min, .. } => (t / factor.max(1)).max(min),
        }
    }
}

/// One attempt of a write, as handed to the underlying call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// 0 for the first attempt.
    pub index: u32,
    /// This attempt's time-out.
    pub timeout: Duration,
}

/// A timer giving each write a time-out, over one or several attempts.
#[derive(Clone, Debug)]
pub struct WriteTimer {
    base: TimerBase,
    pattern: TimeoutPattern,
}

impl WriteTimer {
    /// A write timer on `resource` with the time-outs of `pattern`.
    pub fn new(resource: &str, pattern: TimeoutPattern, reporter: StarvationReporter) -> Self {
        Self { base: TimerBase::new(resource, reporter), pattern }
    }

    /// One attempt with the time-out configured for `resource`.
    pub fn configured(resource: &str, reporter: StarvationReporter) -> Self {
        let pattern = TimeoutPattern::Fixed(reporter.timeout_for(resource));
        Self::new(resource, pattern, reporter)
    }

    /// The shared counters.
    pub fn base(&self) -> &TimerBase {
        &self.base
    }

    /// The time-outs of its attempts.
    pub fn pattern(&self) -> TimeoutPattern {
        self.pattern
    }

    /// Runs `attempt` until one finishes within its time-out or the attempts run out; each
    /// time-out is counted and reported.
    ///
    /// A write that fails rather than times out is the caller's business: make `T` a `Result`.
    pub async fn write<T, F, A>(&self, mut attempt: A) -> Result<T, TimedOut>
    where
        A: FnMut(Attempt) -> F,
        F: Future<Output = T>,
    {
        let start = Instant::now();
        for (index, timeout) in (0..).zip(self.pattern.schedule()) {
            self.base.note_attempt();
            match tokio::time::timeout(timeout, attempt(Attempt { index, timeout })).await {
                Ok(value) => return Ok(value),
                Err(_) => self.base.note_timeout(Some(self.base.resource())),
            }
        }
        Err(self.gave_up(start))
    }

    /// [`write`](Self::write) for a blocking underlying call, which must honour the time-out it
    /// is handed and return [`Expired`] when it runs out.
    pub fn write_blocking<T>(
        &self,
        mut call: impl FnMut(Attempt) -> Result<T, Expired>,
    ) -> Result<T, TimedOut> {
        let start = Instant::now();
        for (index, timeout) in (0..).zip(self.pattern.schedule()) {
            self.base.note_attempt();
            match call(Attempt { index, timeout }) {
                Ok(value) => return Ok(value),
                Err(Expired) => self.base.note_timeout(Some(self.base.resource())),
            }
        }
        Err(self.gave_up(start))
    }

    /// [`write`](Self::write) on its own task, handing `callback` the client, the outcome and
    /// the time from this call. Must be called within a tokio runtime.
    pub fn write_async<K, T, F, A, C>(&self, client: K, attempt: A, callback: C) -> JoinHandle<()>
    where
        K: Send + 'static,
        T: Send + 'static,
        F: Future<Output = T> + Send,
        A: FnMut(Attempt) -> F + Send + 'static,
        C: FnOnce(Callback<K, Result<T, TimedOut>>) + Send + 'static,
    {
        let start = Instant::now();
        let timer = self.clone();
        tokio::spawn(async move {
            let outcome = timer.write(attempt).await;
            callback(Callback { client, outcome, duration: start.elapsed() });
        })
    }

    fn gave_up(&self, start: Instant) -> TimedOut {
        TimedOut {
            resource: self.base.resource().to_string(),
            attempts: self.pattern.attempts(),
            waited: start.elapsed(),
        }
    }
}

/// An exact multiplier `num / den` for time-outs (`den` 0 counts as 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    /// Numerator.
    pub num: u32,
    /// Denominator.
    pub den: u32,
}

impl Ratio {
    /// Leaves a time-out as it is.
    pub const ONE: Ratio = Ratio { num: 1, den: 1 };

    /// `num / den`.
    pub const fn new(num: u32, den: u32) -> Self {
        Ratio { num, den }
    }

    /// `d * num / den`, to the nanosecond, saturating.
    pub fn apply(self, d: Duration) -> Duration {
        let nanos = d.as_nanos() * u128::from(self.num) / u128::from(self.den.max(1));
        u64::try_from(nanos).map_or(Duration::MAX, Duration::from_nanos)
    }
}

/// How a read timer's time-out changes after each read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjust {
    /// It never changes.
    Keep,
    /// Multiplied by `after_read` after a read that answered and by `after_timeout` after one
    /// that timed out, then kept within `min..=max` (`max` wins if they cross).
    Scale {
        /// After a read that answered in time.
        after_read: Ratio,
        /// After a read that timed out.
        after_timeout: Ratio,
        /// The shortest time-out.
        min: Duration,
        /// The longest time-out.
        max: Duration,
    },
}

impl Adjust {
    /// The time-out following `current` after a read that did or did not time out.
    pub fn next(&self, current: Duration, timed_out: bool) -> Duration {
        match *self {
            Adjust::Keep => current,
            Adjust::Scale { after_read, after_timeout, min, max } => {
                let ratio = if timed_out { after_timeout } else { after_read };
                ratio.apply(current).max(min).min(max)
            }
        }
    }
}

/// How a [`ReadTimer`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTimerConfig {
    /// The first read's time-out.
    pub first: Duration,
    /// Reads in a row without a time-out that raise an alert (0: never).
    pub alert_after: u32,
    /// How the time-out changes after each read.
    pub adjust: Adjust,
}

impl ReadTimerConfig {
    /// A constant time-out `first`, alerting after `alert_after` reads in a row that answered.
    pub fn fixed(first: Duration, alert_after: u32) -> Self {
        Self { first, alert_after, adjust: Adjust::Keep }
    }
}

/// How one timed read ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome<T> {
    /// It answered in time.
    Read {
        /// The answer.
        value: T,
        /// This read completed a run of reads without a time-out and raised an alert.
        alert: bool,
    },
    /// Nothing within `timeout`.
    TimedOut {
        /// The time-out it had.
        timeout: Duration,
    },
}

impl<T> ReadOutcome<T> {
    /// The answer, if there was one in time.
    pub fn value(self) -> Option<T> {
        match self {
            ReadOutcome::Read { value, .. } => Some(value),
            ReadOutcome::TimedOut { .. } => None,
        }
    }

    /// Whether the read timed out.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, ReadOutcome::TimedOut { .. })
    }

    /// Whether the read raised an alert.
    pub fn is_alert(&self) -> bool {
        matches!(self, ReadOutcome::Read { alert: true, .. })
    }
}

/// A timer for reads: an adjusting time-out and an alert when reads never time out.
#[derive(Clone, Debug)]
pub struct ReadTimer {
    base: TimerBase,
    config: ReadTimerConfig,
    state: Arc<Mutex<ReadState>>,
}

#[derive(Debug)]
struct ReadState {
    current: Duration,
    in_a_row: u32,
    alerts: u64,
}

impl ReadTimer {
    /// A read timer on `resource`.
    pub fn new(resource: &str, config: ReadTimerConfig, reporter: StarvationReporter) -> Self {
        Self {
            base: TimerBase::new(resource, reporter),
            config,
            state: Arc::new(Mutex::new(ReadState { current: config.first, in_a_row: 0, alerts: 0 })),
        }
    }

    /// The shared counters.
    pub fn base(&self) -> &TimerBase {
        &self.base
    }

    /// Its configuration.
    pub fn config(&self) -> &ReadTimerConfig {
        &self.config
    }

    /// The time-out the next read gets.
    pub fn current_timeout(&self) -> Duration {
        self.state().current
    }

    /// Reads in a row without a time-out since the last time-out or alert.
    pub fn in_a_row(&self) -> u32 {
        self.state().in_a_row
    }

    /// Alerts raised so far.
    pub fn alerts(&self) -> u64 {
        self.state().alerts
    }

    /// Runs `read` with the current time-out, then updates the run, the time-out and the alert.
    pub async fn read<T>(&self, read: impl Future<Output = T>) -> ReadOutcome<T> {
        let timeout = self.begin();
        let value = tokio::time::timeout(timeout, read).await.ok();
        self.finish(timeout, value)
    }

    /// [`read`](Self::read) for a blocking underlying call, which must honour the time-out it is
    /// handed and return [`Expired`] when it runs out.
    pub fn read_blocking<T>(&self, call: impl FnOnce(Duration) -> Result<T, Expired>) -> ReadOutcome<T> {
        let timeout = self.begin();
        let value = call(timeout).ok();
        self.finish(timeout, value)
    }

    /// [`read`](Self::read) on its own task, handing `callback` the client, the outcome and the
    /// time from this call. Must be called within a tokio runtime.
    pub fn read_async<K, T, C>(
        &self,
        client: K,
        read: impl Future<Output = T> + Send + 'static,
        callback: C,
    ) -> JoinHandle<()>
    where
        K: Send + 'static,
        T: Send + 'static,
        C: FnOnce(Callback<K, ReadOutcome<T>>) + Send + 'static,
    {
        let start = Instant::now();
        let timer = self.clone();
        tokio::spawn(async move {
            let outcome = timer.read(read).await;
            callback(Callback { client, outcome, duration: start.elapsed() });
        })
    }

    fn begin(&self) -> Duration {
        self.base.note_attempt();
        self.state().current
    }

    fn finish<T>(&self, timeout: Duration, value: Option<T>) -> ReadOutcome<T> {
        let Some(value) = value else {
            // Nothing came: the portion is idle, not starved, so this is counted, not reported.
            self.base.note_timeout(None);
            let mut state = self.state();
            state.in_a_row = 0;
            state.current = self.config.adjust.next(state.current, true);
            return ReadOutcome::TimedOut { timeout };
        };
        let alert = {
            let mut state = self.state();
            state.current = self.config.adjust.next(state.current, false);
            state.in_a_row += 1;
            let alert = self.config.alert_after > 0 && state.in_a_row >= self.config.alert_after;
            if alert {
                state.in_a_row = 0;
                state.alerts += 1;
            }
            alert
        };
        if alert {
            tracing::debug!(
                resource = self.base.resource(),
                "reads never time out: messages outrun the portion"
            );
            self.base.reporter().report(&overrun_resource(self.base.resource()));
        }
        ReadOutcome::Read { value, alert }
    }

    fn state(&self) -> MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
