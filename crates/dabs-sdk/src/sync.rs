//! Wait-and-lock primitives for a portion's critical sections (R-LB-1).
//!
//! A [`TimedSemaphore`] and a [`TimedQueue`] each guard one resource type and wait at most the
//! time-out configured for that type (`[timeouts]` in the node's configuration, falling back to
//! `default`). A wait that runs out means the portion is starved of that resource: it is reported
//! to the node's load-balancing process as [`PortionReport::Timeout`], which counts it and may
//! start another portion.

use dabs_farm_proto::portion::{PortionContext, PortionReport};
use dabs_farm_proto::timeouts::{DEFAULT_TIMEOUT, DEFAULT_TIMEOUT_KEY};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};

/// A wait on `resource` ran out of time: the portion is starved of it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("starved of `{resource}`: waited {waited:?} (its time-out) without getting it")]
pub struct Starved {
    /// The resource type.
    pub resource: String,
    /// How long it waited: the resource type's time-out.
    pub waited: Duration,
}

/// Tells the load-balancing process which resource type a portion starved on, and counts it.
///
/// Clones share their counts, so one reporter per portion sees every primitive's time-outs.
#[derive(Clone)]
pub struct StarvationReporter {
    inner: Arc<ReporterInner>,
}

struct ReporterInner {
    va: String,
    timeouts: BTreeMap<String, Duration>,
    reports: Option<mpsc::UnboundedSender<(String, PortionReport)>>,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl StarvationReporter {
    /// Reports for the portion at `va` on `reports`, with time-outs per resource type.
    pub fn new(
        va: impl Into<String>,
        timeouts: BTreeMap<String, Duration>,
        reports: mpsc::UnboundedSender<(String, PortionReport)>,
    ) -> Self {
        Self::build(va.into(), timeouts, Some(reports))
    }

    /// Reports for the portion the runtime started with `ctx`.
    pub fn from_context(ctx: &PortionContext) -> Self {
        Self::new(ctx.va.clone(), ctx.timeouts.clone(), ctx.reports.clone())
    }

    /// Counts time-outs but reports them nowhere (tests, code run outside a node).
    pub fn detached(timeouts: BTreeMap<String, Duration>) -> Self {
        Self::build(String::new(), timeouts, None)
    }

    fn build(
        va: String,
        timeouts: BTreeMap<String, Duration>,
        reports: Option<mpsc::UnboundedSender<(String, PortionReport)>>,
    ) -> Self {
        Self { inner: Arc::new(ReporterInner { va, timeouts, reports, counts: Mutex::default() }) }
    }

    /// The portion's virtual address (empty when detached).
    pub fn va(&self) -> &str {
        &self.inner.va
    }

    /// The time-out for `resource`: its own entry, else `default`, else the node's default.
    pub fn timeout_for(&self, resource: &str) -> Duration {
        let t = &self.inner.timeouts;
        t.get(resource).or_else(|| t.get(DEFAULT_TIMEOUT_KEY)).copied().unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Counts a time-out on `resource` and reports it to the load-balancing process.
    pub fn report(&self, resource: &str) {
        *self.counts_mut().entry(resource.to_string()).or_default() += 1;
        tracing::debug!(va = %self.inner.va, resource, "time-out on resource");
        if let Some(tx) = &self.inner.reports {
            // A closed channel means the node is going away; the count still stands.
            let _ =
                tx.send((self.inner.va.clone(), PortionReport::Timeout { resource: resource.to_string() }));
        }
    }

    /// How many time-outs on `resource` were reported.
    pub fn count(&self, resource: &str) -> u64 {
        self.counts_mut().get(resource).copied().unwrap_or(0)
    }

    /// Time-outs reported so far, per resource type.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts_mut().clone()
    }

    /// Time-outs reported so far, all resource types together.
    pub fn total(&self) -> u64 {
        self.counts_mut().values().sum()
    }

    fn counts_mut(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        // Counters stay meaningful even if a holder panicked.
        self.inner.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for StarvationReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StarvationReporter")
            .field("va", &self.inner.va)
            .field("timeouts", &self.inner.timeouts)
            .field("detached", &self.inner.reports.is_none())
            .field("counts", &self.counts())
            .finish()
    }
}

/// A counting semaphore guarding one resource type, whose waits are bounded by its time-out.
#[derive(Debug)]
pub struct TimedSemaphore {
    resource: String,
    semaphore: Semaphore,
    reporter: StarvationReporter,
}

/// A permit of a [`TimedSemaphore`]; released when dropped.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct Permit<'a> {
    _permit: SemaphorePermit<'a>,
}

impl TimedSemaphore {
    /// A semaphore with `permits` permits guarding `resource`.
    pub fn new(resource: &str, permits: usize, reporter: StarvationReporter) -> Self {
        Self { resource: resource.to_string(), semaphore: Semaphore::new(permits), reporter }
    }

    /// The resource type it guards.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// How long [`acquire`](Self::acquire) waits before giving up.
    pub fn timeout(&self) -> Duration {
        self.reporter.timeout_for(&self.resource)
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Adds `n` permits.
    pub fn add_permits(&self, n: usize) {
        self.semaphore.add_permits(n);
    }

    /// Waits (first come, first served) at most the time-out for a permit; a time-out is reported.
    pub async fn acquire(&self) -> Result<Permit<'_>, Starved> {
        let waited = self.timeout();
        match tokio::time::timeout(waited, self.semaphore.acquire()).await {
            Ok(Ok(permit)) => Ok(Permit { _permit: permit }),
            // Only a closed semaphore refuses, and this one is never closed; treat it as starvation
            // rather than panic.
            Ok(Err(_)) | Err(_) => {
                self.reporter.report(&self.resource);
                Err(Starved { resource: self.resource.clone(), waited })
            }
        }
    }

    /// A permit if one is free now; never waits, never reports.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        self.semaphore.try_acquire().ok().map(|permit| Permit { _permit: permit })
    }
}

/// A [`TimedQueue::push`] found no room in time; the item comes back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue full: {starved}")]
pub struct QueueFull<T> {
    /// The item that was not queued.
    pub item: T,
    /// Which resource, and how long it waited.
    pub starved: Starved,
}

impl<T> fmt::Debug for QueueFull<T> {
    // Without the item, so the error is `Debug` (and `Error`) for any `T`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueFull").field("starved", &self.starved).finish_non_exhaustive()
    }
}

impl<T> From<QueueFull<T>> for Starved {
    fn from(e: QueueFull<T>) -> Self {
        e.starved
    }
}

/// A [`TimedQueue::pop`] got no item in time. Not starvation: nothing was reported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("queue `{resource}` stayed empty for {waited:?}")]
pub struct Empty {
    /// The resource type.
    pub resource: String,
    /// How long it waited: the resource type's time-out.
    pub waited: Duration,
}

/// A bounded first-in, first-out queue guarding one resource type, with waits bounded by its
/// time-out.
///
/// Only producers can starve: a push that finds no room within the time-out means the consumers
/// cannot keep up, so it is reported (another portion would help). A pop that finds nothing
/// means the consumer is idle; that is no shortage, so it just returns [`Empty`] unreported.
pub struct TimedQueue<T> {
    resource: String,
    capacity: usize,
    items: Mutex<VecDeque<T>>,
    // Permits count free slots and queued items, so waiters queue fairly in tokio's semaphores
    // and a cancelled wait leaves nothing half done.
    room: Semaphore,
    filled: Semaphore,
    reporter: StarvationReporter,
}

impl<T> TimedQueue<T> {
    /// A queue of at most `capacity` items guarding `resource`.
    ///
    /// # Panics
    /// If `capacity` is zero (nothing could ever be pushed).
    pub fn new(resource: &str, capacity: usize, reporter: StarvationReporter) -> Self {
        assert!(capacity > 0, "a TimedQueue needs room for at least one item");
        Self {
            resource: resource.to_string(),
            capacity,
            items: Mutex::new(VecDeque::with_capacity(capacity)),
            room: Semaphore::new(capacity),
            filled: Semaphore::new(0),
            reporter,
        }
    }

    /// The resource type it guards.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// How long a push or pop waits before giving up.
    pub fn timeout(&self) -> Duration {
        self.reporter.timeout_for(&self.resource)
    }

    /// The most items it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no items are queued.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Queues `item`, waiting at most the time-out for room; a time-out is reported.
    pub async fn push(&self, item: T) -> Result<(), QueueFull<T>> {
        let waited = self.timeout();
        match tokio::time::timeout(waited, self.room.acquire()).await {
            Ok(Ok(slot)) => {
                slot.forget();
                self.put(item);
                Ok(())
            }
            Ok(Err(_)) | Err(_) => {
                self.reporter.report(&self.resource);
                Err(QueueFull { item, starved: Starved { resource: self.resource.clone(), waited } })
            }
        }
    }

    /// Queues `item` if there is room now; never waits, never reports.
    pub fn try_push(&self, item: T) -> Result<(), T> {
        match self.room.try_acquire() {
            Ok(slot) => {
                slot.forget();
                self.put(item);
                Ok(())
            }
            Err(_) => Err(item),
        }
    }

    /// The oldest item, waiting at most the time-out for one; a time-out is not reported.
    pub async fn pop(&self) -> Result<T, Empty> {
        let waited = self.timeout();
        match tokio::time::timeout(waited, self.filled.acquire()).await {
            Ok(Ok(ticket)) => {
                ticket.forget();
                Ok(self.take())
            }
            Ok(Err(_)) | Err(_) => Err(Empty { resource: self.resource.clone(), waited }),
        }
    }

    /// The oldest item if there is one now; never waits.
    pub fn try_pop(&self) -> Option<T> {
        let ticket = self.filled.try_acquire().ok()?;
        ticket.forget();
        Some(self.take())
    }

    fn put(&self, item: T) {
        self.lock().push_back(item);
        self.filled.add_permits(1);
    }

    fn take(&self) -> T {
        // A `filled` permit was taken, so an item is there: permits and items move together.
        let item = self.lock().pop_front().expect("a filled permit stands for a queued item");
        self.room.add_permits(1);
        item
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<T>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> fmt::Debug for TimedQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedQueue")
            .field("resource", &self.resource)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
