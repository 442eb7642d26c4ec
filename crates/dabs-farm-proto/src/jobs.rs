//! The job-execution service's contracts (seed 002, R-JOB): the CBOR bodies of `JOBS`
//! (system command 25) between nodes, and the JSON of `JOB_DONE` (26) to MP clients.
//!
//! Roles: the node that accepts a job *owns* it (its execution manager and first archive),
//! one other node keeps a *replica*; the *balancer* (the decider's node) says how many of a
//! job's tasks each compute server takes; *compute servers* run them and send the results to
//! the owner, which commits each task's result once and copies it to the replica.

use serde::{Deserialize, Serialize};

/// A module's SHA-256, its name between nodes.
pub type ModuleHash = [u8; 32];

/// Largest module accepted, bytes (it travels between nodes in one MP message).
pub const MAX_MODULE_BYTES: usize = 768 << 10;
/// Largest sum of a job's inputs, bytes (they travel to the replica in one MP message).
pub const MAX_INPUT_BYTES: usize = 768 << 10;
/// Most tasks in one job.
pub const MAX_TASKS: usize = 100_000;
/// Largest output of one task, bytes.
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;

/// A job as its owner and replica keep it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id (also its address: `mp://FARM/jobs/ID`).
    pub id: String,
    /// The module's SHA-256.
    #[serde(with = "serde_bytes")]
    pub module: ModuleHash,
    /// Fuel per task.
    pub fuel: u64,
    /// Memory cap per task, bytes.
    pub memory: u64,
    /// One task per input, in order.
    pub inputs: Vec<serde_bytes::ByteBuf>,
    /// Where to tell the submitter it is done (`http://…` gets a POST, `mp://HOST:PORT/QUEUE`
    /// a `JOB_DONE`).
    pub notify: Option<String>,
    /// When it was accepted, Unix ms.
    pub submitted_ms: u64,
    /// The node that owns it now.
    pub owner: String,
    /// The node keeping its copy, if the farm has another node.
    pub replica: Option<String>,
}

/// How one task ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Its output.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Why it failed (the sandbox's words).
    Err(String),
}

/// One task's committed result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task's index in the job.
    pub task: u32,
    /// Its output or error.
    pub outcome: Outcome,
    /// The compute server that ran it.
    pub node: String,
    /// When it started running, Unix µs.
    pub started_us: u64,
    /// When it ended, Unix µs.
    pub ended_us: u64,
}

/// A job's state as `GET /api/jobs/ID` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The id.
    pub id: String,
    /// `queued`, `running` or `done`.
    pub state: String,
    /// Tasks in all.
    pub tasks: u32,
    /// Tasks whose result is committed.
    pub done: u32,
    /// Of those, the ones that failed.
    pub failed: u32,
    /// Its owner now.
    pub owner: String,
    /// Its replica now.
    pub replica: Option<String>,
}

/// A node's figures as a compute server, announced with its statistics: its registration
/// (it lapses with the member's lease) and what the balancer chooses by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ComputeStats {
    /// Worker threads.
    #[serde(rename = "th")]
    pub threads: u16,
    /// Tasks queued or running now.
    #[serde(rename = "q")]
    pub queued: u32,
    /// Time spent running tasks since it started, ms.
    #[serde(rename = "b")]
    pub busy_ms: u64,
    /// Tasks completed (an output or a task error) since it started.
    #[serde(rename = "c")]
    pub completed: u64,
    /// Of those, the ones that failed.
    #[serde(rename = "x")]
    pub failed: u64,
    /// When it last completed one, Unix ms (0: never).
    #[serde(rename = "l")]
    pub last_done_ms: u64,
    /// Recent mean time per task, µs (0: none yet).
    #[serde(rename = "r")]
    pub recent_us: u32,
}

/// The body of a `JOBS` request between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobCall {
    /// Owner → replica: keep this module.
    StoreModule {
        /// Its hash.
        #[serde(with = "serde_bytes")]
        hash: ModuleHash,
        /// Its bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Owner → replica: keep this job, its results so far and where its tasks run.
    Keep {
        /// The job.
        job: JobRecord,
        /// Its committed results.
        results: Vec<TaskResult>,
        /// Tasks running now, and where.
        assigned: Vec<(u32, String)>,
    },
    /// Owner → balancer: how many of `tasks` tasks each compute server takes.
    Place {
        /// The job.
        job: String,
        /// Tasks to place.
        tasks: u32,
    },
    /// Owner → compute server: run these tasks and send the results to the owner.
    Run {
        /// The job.
        job: String,
        /// Its owner (results go there) and replica (if the owner is gone).
        owner: String,
        /// The replica.
        replica: Option<String>,
        /// The module to run.
        #[serde(with = "serde_bytes")]
        module: ModuleHash,
        /// Fuel per task.
        fuel: u64,
        /// Memory cap per task, bytes.
        memory: u64,
        /// (index, input) of each task.
        tasks: Vec<(u32, serde_bytes::ByteBuf)>,
    },
    /// Compute server → owner: a module's bytes, please.
    FetchModule {
        /// Its hash.
        #[serde(with = "serde_bytes")]
        hash: ModuleHash,
    },
    /// Compute server → owner (or replica): these tasks ended.
    Done {
        /// The job.
        job: String,
        /// Their results.
        results: Vec<TaskResult>,
    },
    /// Owner → replica: results committed, tasks placed, or the job finished.
    Commit {
        /// The job.
        job: String,
        /// Newly committed results.
        results: Vec<TaskResult>,
        /// Tasks newly placed, and where.
        assigned: Vec<(u32, String)>,
        /// Every result is in and the submitter was told.
        finished: bool,
    },
    /// Any node → any: do you hold this job?
    Where {
        /// The job.
        job: String,
    },
    /// Any node → holder: the job's state.
    Status {
        /// The job.
        job: String,
    },
    /// Any node → holder: results from task `from` on, at most about `max_bytes` of them.
    Results {
        /// The job.
        job: String,
        /// First task.
        from: u32,
        /// Size budget of the answer.
        max_bytes: u32,
    },
    /// Any node → holder: tasks finished after the first `after`, waiting up to `wait_ms`
    /// for one.
    Progress {
        /// The job.
        job: String,
        /// How many finished tasks the asker has seen.
        after: u32,
        /// How long to wait for news, ms.
        wait_ms: u32,
    },
}

/// The body of a `JOBS` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobAnswer {
    /// Done as asked.
    Ok,
    /// Refused, and why.
    No(String),
    /// `Place`: (compute server, number of tasks).
    Shares(Vec<(String, u32)>),
    /// `FetchModule`.
    Module(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `Done`: how many results were new, and how many came from a second run of a task that
    /// had one (kept: the first).
    Committed {
        /// Results new to the archive.
        new: u32,
        /// Results of tasks run twice.
        duplicates: u32,
    },
    /// `Where`: this node holds it, as its owner (`true`) or replica.
    Holds(bool),
    /// `Status`.
    View(JobView),
    /// `Results`: a page of them, and whether more follow.
    Page {
        /// Results in task order.
        results: Vec<TaskResult>,
        /// Tasks after these have results too.
        more: bool,
    },
    /// `Progress`: tasks finished since `after`, in finishing order, and whether all are.
    Finished {
        /// Their indices.
        tasks: Vec<u32>,
        /// Every task is finished.
        done: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::{cbor, from_cbor};

    #[test]
    fn calls_and_answers_round_trip_with_bytes_as_byte_strings() {
        let run = JobCall::Run {
            job: "j1".into(),
            owner: "a".into(),
            replica: Some("b".into()),
            module: [7; 32],
            fuel: 10,
            memory: 1 << 20,
            tasks: vec![(3, serde_bytes::ByteBuf::from(vec![0xffu8; 200]))],
        };
        let bytes = cbor(&run);
        // A byte string is its length and bytes, not one CBOR integer (two bytes for 0xff) per byte.
        assert!(bytes.len() < 350, "{} bytes", bytes.len());
        assert_eq!(from_cbor::<JobCall>(&bytes, "JOBS").unwrap(), run);
        let done = JobAnswer::Page {
            results: vec![TaskResult {
                task: 1,
                outcome: Outcome::Err("trap".into()),
                node: "a".into(),
                started_us: 1,
                ended_us: 2,
            }],
            more: false,
        };
        assert_eq!(from_cbor::<JobAnswer>(&cbor(&done), "JOBS answer").unwrap(), done);
        assert!(from_cbor::<JobCall>(&[0xff, 0x00], "JOBS").is_err());
    }
}
