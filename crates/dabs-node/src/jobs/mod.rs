//! The job-execution service's parts that do not need the node (seed 002): the balancer's
//! choice, the results archive, the compute workers, and a job's state as its owner or
//! replica holds it. `node/jobs/` wires them to the farm.

pub mod archive;
pub mod balancer;
pub mod compute;

pub use balancer::Criterion;

use dabs_farm_proto::jobs::{JobRecord, JobView, Outcome, TaskResult};
use std::collections::{BTreeMap, HashMap};

/// Why a job was not accepted; [`SubmitError::status`] is its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The module cannot be run (it does not validate, imports something, lacks the ABI).
    #[error("the module cannot be read: {0}")]
    BadModule(dabs_sandbox::TaskError),
    /// Something is larger than the service takes.
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A job without tasks, or with too many.
    #[error("{0}")]
    BadTasks(String),
    /// The fuel asked for is out of range.
    #[error("fuel {asked} is out of range (1..={max}, [jobs] max_fuel)")]
    BadFuel {
        /// Asked for.
        asked: u64,
        /// The node's limit.
        max: u64,
    },
    /// The notify address is neither `http://` nor `mp://HOST:PORT/QUEUE`.
    #[error("notify {0:?} is neither http://HOST[:PORT]/PATH nor mp://HOST:PORT/QUEUE")]
    BadNotify(String),
    /// No balancer is registered.
    #[error(
        "no load balancer is registered in farm {0} (the decider runs one unless [jobs] balancer = false)"
    )]
    NoBalancer(String),
    /// No compute server is registered.
    #[error("no compute server is registered in farm {0} (every node is one unless [jobs] compute = false)")]
    NoCompute(String),
    /// The node is stopping or draining.
    #[error("node {0} is not taking jobs (stopping or drained); submit to another node")]
    NotTaking(String),
    /// The archive could not keep it.
    #[error("the job could not be archived: {0}")]
    Archive(String),
}

impl SubmitError {
    /// The HTTP status that says it: 400 for what the submitter can fix, 413 for sizes, 503
    /// when the farm cannot take jobs now, 500 for the archive.
    pub fn status(&self) -> u16 {
        match self {
            SubmitError::BadModule(_)
            | SubmitError::BadTasks(_)
            | SubmitError::BadFuel { .. }
            | SubmitError::BadNotify(_) => 400,
            SubmitError::TooLarge { .. } => 413,
            SubmitError::NoBalancer(_) | SubmitError::NoCompute(_) | SubmitError::NotTaking(_) => 503,
            SubmitError::Archive(_) => 500,
        }
    }
}

/// Where a notification goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notify {
    /// A POST of the result's JSON.
    Http(String),
    /// A `JOB_DONE` to an MP endpoint's queue.
    Mp(std::net::SocketAddr, u16),
}

impl std::str::FromStr for Notify {
    type Err = SubmitError;
    fn from_str(s: &str) -> Result<Notify, SubmitError> {
        let bad = || SubmitError::BadNotify(s.to_owned());
        if let Some(rest) = s.strip_prefix("mp://") {
            let (addr, queue) = rest.rsplit_once('/').ok_or_else(bad)?;
            return Ok(Notify::Mp(addr.parse().map_err(|_| bad())?, queue.parse().map_err(|_| bad())?));
        }
        match s.strip_prefix("http://") {
            Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(Notify::Http(s.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// A job as its owner or replica holds it in memory.
pub struct JobState {
    /// The record.
    pub record: JobRecord,
    /// This node owns it (else it keeps the replica).
    pub owned: bool,
    /// Committed results by task.
    pub results: BTreeMap<u32, TaskResult>,
    /// Tasks running now, and where.
    pub assigned: HashMap<u32, String>,
    /// Tasks in the order their results were committed (what the events stream tells).
    pub order: Vec<u32>,
    /// Every result is in and the submitter was told.
    pub finished: bool,
    /// Woken on each commit: the count of results.
    pub progress: tokio::sync::watch::Sender<u32>,
}

impl JobState {
    /// A job held here, with the results it came with.
    pub fn new(record: JobRecord, owned: bool, results: Vec<TaskResult>, finished: bool) -> JobState {
        let order: Vec<u32> = results.iter().map(|r| r.task).collect();
        let (progress, _) = tokio::sync::watch::channel(order.len() as u32);
        JobState {
            record,
            owned,
            results: results.into_iter().map(|r| (r.task, r)).collect(),
            assigned: HashMap::new(),
            order,
            finished,
            progress,
        }
    }

    /// Tasks in all.
    pub fn tasks(&self) -> u32 {
        self.record.inputs.len() as u32
    }

    /// Every task has its result.
    pub fn complete(&self) -> bool {
        self.results.len() as u32 == self.tasks()
    }

    /// Takes the results not committed yet (the rest are repeats); returns the new ones.
    pub fn add(&mut self, results: &[TaskResult]) -> Vec<TaskResult> {
        let mut new = Vec::new();
        for r in results {
            if r.task < self.tasks() && !self.results.contains_key(&r.task) {
                self.results.insert(r.task, r.clone());
                self.assigned.remove(&r.task);
                self.order.push(r.task);
                new.push(r.clone());
            }
        }
        if !new.is_empty() {
            self.progress.send_replace(self.results.len() as u32);
        }
        new
    }

    /// Puts tasks assigned to servers that are no longer registered back to pending; returns
    /// how many.
    pub fn reclaim(&mut self, registered: impl Fn(&str) -> bool) -> usize {
        let before = self.assigned.len();
        self.assigned.retain(|_, node| registered(node));
        before - self.assigned.len()
    }

    /// Up to `limit` tasks with neither a result nor a server, in task order.
    pub fn pending(&self, limit: usize) -> Vec<u32> {
        (0..self.tasks())
            .filter(|t| !self.results.contains_key(t) && !self.assigned.contains_key(t))
            .take(limit)
            .collect()
    }

    /// The state as the API shows it.
    pub fn view(&self) -> JobView {
        let done = self.results.len() as u32;
        JobView {
            id: self.record.id.clone(),
            state: if self.complete() {
                "done"
            } else if done > 0 || !self.assigned.is_empty() {
                "running"
            } else {
                "queued"
            }
            .into(),
            tasks: self.tasks(),
            done,
            failed: self.results.values().filter(|r| matches!(r.outcome, Outcome::Err(_))).count() as u32,
            owner: self.record.owner.clone(),
            replica: self.record.replica.clone(),
        }
    }
}

/// A new job id: the time and randomness, unique without coordination, safe in a URL path.
pub fn new_id() -> String {
    format!("{:011x}{:08x}", dabs_net::unix_ms(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> JobRecord {
        JobRecord {
            id: new_id(),
            module: [0; 32],
            fuel: 1,
            memory: 1,
            inputs: vec![serde_bytes::ByteBuf::new(); n],
            notify: None,
            submitted_ms: 0,
            owner: "a".into(),
            replica: None,
        }
    }

    fn result(task: u32) -> TaskResult {
        TaskResult { task, outcome: Outcome::Ok(vec![]), node: "x".into(), started_us: 0, ended_us: 0 }
    }

    #[test]
    fn results_are_taken_once_and_tasks_of_lost_servers_return_to_pending() {
        let mut j = JobState::new(record(4), true, vec![result(0)], false);
        assert_eq!(j.pending(10), vec![1, 2, 3]);
        j.assigned.insert(1, "dead".into());
        j.assigned.insert(2, "alive".into());
        assert_eq!(j.pending(10), vec![3]);
        assert_eq!(j.view().state, "running");
        assert_eq!(
            j.add(&[result(0), result(2), result(9)]).len(),
            1,
            "a repeat and an unknown task are not new"
        );
        assert_eq!(j.reclaim(|n| n == "alive"), 1);
        assert_eq!(j.pending(10), vec![1, 3]);
        j.add(&[result(1), result(3)]);
        assert!(j.complete());
        assert_eq!(j.order, vec![0, 2, 1, 3]);
        assert_eq!(*j.progress.borrow(), 4);
        assert_eq!(j.view().state, "done");
    }

    #[test]
    fn notify_addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            "http://127.0.0.1:9/x".parse::<Notify>().unwrap(),
            Notify::Http("http://127.0.0.1:9/x".into())
        );
        assert_eq!(
            "mp://127.0.0.1:9000/7".parse::<Notify>().unwrap(),
            Notify::Mp("127.0.0.1:9000".parse().unwrap(), 7)
        );
        for bad in ["https://x/", "mp://nowhere/7", "mp://127.0.0.1:9000", "ftp://x", "http:///x"] {
            let e = bad.parse::<Notify>().unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert!(e.to_string().contains("mp://HOST:PORT/QUEUE"), "{e}");
        }
        assert_ne!(new_id(), new_id());
    }
}
