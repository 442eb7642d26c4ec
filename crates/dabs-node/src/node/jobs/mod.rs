//! The node's part in the job-execution service (seed 002): accepting jobs as their owner
//! (`submit.rs`), placing and re-placing their tasks and keeping their replica
//! (`owner.rs`), serving `JOBS` between nodes as balancer, compute server, owner and replica
//! (`serve.rs`), and telling submitters (`notify.rs`). docs/jobs.md says how it fits.

mod notify;
mod owner;
mod serve;
mod submit;

pub use submit::{Accepted, Submission};

use super::{Inner, NodeHandle};
use crate::jobs::archive::Archive;
use crate::jobs::compute::{ComputePool, Ran};
use crate::jobs::{JobState, balancer};
use dabs_farm_proto::jobs::{JobAnswer, JobCall, JobView, TaskResult};
use dabs_farm_proto::shapes::{cbor, from_cbor};
use dabs_wire::SystemCommand;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one `JOBS` call between nodes may take before the caller tries elsewhere.
const CALL_WAIT: Duration = Duration::from_secs(3);

/// What the node keeps for the job service.
pub(super) struct JobsShared {
    pub(super) archive: Archive,
    pub(super) pool: Option<ComputePool>,
    /// Jobs this node owns or keeps the replica of.
    pub(super) held: Mutex<HashMap<String, JobState>>,
    /// Rings the dispatcher: a job arrived, results came in, or a member left.
    pub(super) wake: tokio::sync::Notify,
    /// Results of tasks run here, to the reporter.
    ran: Mutex<Option<mpsc::UnboundedReceiver<Ran>>>,
    /// Where jobs this node does not hold were last found.
    located: Mutex<HashMap<String, String>>,
    /// As the balancer: tasks placed per server since its figures showed them (its
    /// announcement's sequence number then, and the count).
    placed: Mutex<HashMap<String, (u64, u32)>>,
    /// Jobs being copied to a new replica now.
    pub(super) copying: Mutex<std::collections::HashSet<String>>,
}

impl JobsShared {
    /// Opens the archive in `dir` and, on a compute server, starts its workers.
    pub(super) fn open(
        dir: &std::path::Path,
        config: &crate::config::JobsConfig,
        me: &str,
    ) -> Result<JobsShared, crate::db::DbError> {
        let archive = Archive::open(dir)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = config.compute.then(|| ComputePool::start(config.threads, me, tx));
        let held = archive
            .jobs()?
            .into_iter()
            .map(|s| {
                (s.job.id.clone(), JobState::new(s.job.clone(), s.job.owner == me, s.results, s.finished))
            })
            .collect();
        Ok(JobsShared {
            archive,
            pool,
            held: Mutex::new(held),
            wake: tokio::sync::Notify::new(),
            ran: Mutex::new(Some(rx)),
            located: Mutex::default(),
            placed: Mutex::default(),
            copying: Mutex::default(),
        })
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobState>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Calls `node` with a `JOBS` request (this node answers its own directly).
    pub(super) async fn jobs_call(&self, node: &str, call: &JobCall) -> Result<JobAnswer, String> {
        if node == self.me {
            // Boxed: answering a RUN here may call out again (for its module).
            return Ok(Box::pin(self.serve_job_call(call)).await);
        }
        let ask = self.call_node(node, SystemCommand::Jobs.number(), cbor(call));
        let body = tokio::time::timeout(CALL_WAIT, ask)
            .await
            .map_err(|_| format!("{node} did not answer in {CALL_WAIT:?}"))??;
        from_cbor(&body, "JOBS answer").map_err(|e| format!("{node}: {e}"))
    }

    /// A member that may run tasks now: registered, not leaving, not drained.
    pub(super) fn compute_registered(&self, node: &str) -> bool {
        let st = self.state();
        st.members.membership.get(node).is_some_and(|m| {
            m.stats.compute.is_some() && !m.stats.leaving && !m.stats.draining && self.registered(node)
        })
    }

    /// A member that is alive (registered and not leaving): an owner or replica that is
    /// not must be replaced.
    pub(super) fn member_alive(&self, node: &str) -> bool {
        if node == self.me {
            return !self.stopping.load(std::sync::atomic::Ordering::Relaxed);
        }
        let st = self.state();
        st.members.membership.get(node).is_some_and(|m| !m.stats.leaving) && self.registered(node)
    }

    /// The other live members that are not leaving, by name.
    pub(super) fn other_members(&self) -> Vec<String> {
        let st = self.state();
        st.members
            .membership
            .live()
            .filter(|m| m.node != self.me && !m.leaving)
            .map(|m| m.node.clone())
            .collect()
    }

    /// The compute servers registered now, as the balancer sees them.
    pub(super) fn compute_servers(&self) -> Vec<balancer::Server> {
        let placed = self.jobs.placed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let members: Vec<_> = self.state().members.membership.live().cloned().collect();
        members
            .into_iter()
            .filter(|m| self.compute_registered(&m.node))
            .filter_map(|m| {
                let stats = m.compute?;
                let placed_since =
                    placed.get(&m.node).filter(|(seq, _)| *seq == m.seq).map_or(0, |(_, n)| *n);
                Some(balancer::Server { node: m.node, stats, placed_since })
            })
            .collect()
    }

    /// The farm's registered balancer: this node when it is the decider and may balance,
    /// else the member announcing itself as one.
    pub(super) fn balancer(&self) -> Option<String> {
        if self.runs_balancer() {
            return Some(self.me.clone());
        }
        let decider = self.decider();
        let st = self.state();
        let mut found: Vec<&str> = st
            .members
            .membership
            .live()
            .filter(|m| m.balancer && !m.leaving)
            .map(|m| m.node.as_str())
            .collect();
        // Two for a moment while the decider changes: the one the registry names.
        found.sort_by_key(|n| Some(*n) != decider.as_deref());
        found.first().map(|n| (*n).to_owned())
    }

    /// This node runs the farm's balancer: it decides, and its configuration lets it.
    pub(super) fn runs_balancer(&self) -> bool {
        self.config.jobs.balancer && self.is_decider()
    }

    /// Its figures as a compute server, for its announcements and metrics.
    pub(super) fn compute_stats(&self) -> Option<dabs_farm_proto::jobs::ComputeStats> {
        self.jobs.pool.as_ref().map(ComputePool::stats)
    }

    /// Where job `id` is held: this node, or the member that owns (else keeps) it.
    pub(super) async fn locate(&self, id: &str) -> Option<String> {
        let here = self.jobs.held().get(id).map(|j| (j.owned, j.record.owner.clone()));
        match here {
            Some((true, _)) => return Some(self.me.clone()),
            // A replica may lag its owner by the results in flight: the owner answers while
            // it lives.
            Some((false, owner)) if self.member_alive(&owner) => return Some(owner),
            Some((false, _)) => return Some(self.me.clone()),
            None => {}
        }
        let cached = self.jobs.located.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
        if let Some(node) = cached.filter(|n| self.member_alive(n)) {
            return Some(node);
        }
        let others = self.other_members();
        let call = JobCall::Where { job: id.to_owned() };
        let asks = others.iter().map(|n| self.jobs_call(n, &call));
        let answers = futures_util::future::join_all(asks).await;
        let mut best: Option<(bool, String)> = None;
        for (node, answer) in others.into_iter().zip(answers) {
            if let Ok(JobAnswer::Holds(owner)) = answer
                && best.as_ref().is_none_or(|(o, _)| owner && !o)
            {
                best = Some((owner, node));
            }
        }
        let (_, node) = best?;
        self.jobs.located.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_owned(), node.clone());
        Some(node)
    }

    /// Asks whoever holds job `id`; `Ok(None)` when no member holds it.
    async fn ask_holder(&self, id: &str, call: JobCall) -> Result<Option<JobAnswer>, String> {
        let Some(node) = self.locate(id).await else { return Ok(None) };
        match self.jobs_call(&node, &call).await? {
            JobAnswer::No(why) if why == UNKNOWN_JOB => Ok(None),
            answer => Ok(Some(answer)),
        }
    }
}

/// What a node answers for a job it does not hold.
const UNKNOWN_JOB: &str = "no such job here";

/// A job's results as the API's JSON: `{"id", "results": [{"task", "ok": B64} or
/// {"task", "err": text}, ...]}` (interop.md); with `timing`, each also names the compute
/// server that ran it and when (`node`, `started_us`, `ended_us`).
pub fn result_json(id: &str, results: &[TaskResult], timing: bool) -> serde_json::Value {
    use base64::Engine;
    use dabs_farm_proto::jobs::Outcome;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "id": id,
        "results": results.iter().map(|r| {
            let mut v = serde_json::json!({"task": r.task});
            if timing {
                v["node"] = r.node.clone().into();
                v["started_us"] = r.started_us.into();
                v["ended_us"] = r.ended_us.into();
            }
            match &r.outcome {
                Outcome::Ok(out) => v["ok"] = b64.encode(out).into(),
                Outcome::Err(e) => v["err"] = e.clone().into(),
            }
            v
        }).collect::<Vec<_>>(),
    })
}

impl NodeHandle {
    /// Accepts a job (R-JOB-1): archived here and on a replica before this returns.
    pub async fn submit_job(&self, job: Submission) -> Result<Accepted, crate::jobs::SubmitError> {
        self.0.submit(job).await
    }

    /// A job's state, from whichever member holds it; `Ok(None)`: no such job.
    pub async fn job_view(&self, id: &str) -> Result<Option<JobView>, String> {
        match self.0.ask_holder(id, JobCall::Status { job: id.to_owned() }).await? {
            None => Ok(None),
            Some(JobAnswer::View(v)) => Ok(Some(v)),
            Some(other) => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Every result of job `id` in task order (fetched in pages from its holder).
    pub async fn job_results(&self, id: &str) -> Result<Option<Vec<TaskResult>>, String> {
        let mut all = Vec::new();
        loop {
            let page = JobCall::Results { job: id.to_owned(), from: all.len() as u32, max_bytes: 512 << 10 };
            match self.0.ask_holder(id, page).await? {
                None => return Ok(None),
                Some(JobAnswer::Page { results, more }) => {
                    let got = results.len();
                    all.extend(results);
                    if !more || got == 0 {
                        return Ok(Some(all));
                    }
                }
                Some(other) => return Err(format!("unexpected answer {other:?}")),
            }
        }
    }

    /// Tasks of job `id` finished after the first `after`, waiting up to `wait` for one, and
    /// whether the job is done; `Ok(None)`: no such job.
    pub async fn job_progress(
        &self,
        id: &str,
        after: u32,
        wait: Duration,
    ) -> Result<Option<(Vec<u32>, bool)>, String> {
        let wait_ms = wait.as_millis().min(u128::from(u32::MAX)) as u32;
        match self.0.ask_holder(id, JobCall::Progress { job: id.to_owned(), after, wait_ms }).await? {
            None => Ok(None),
            Some(JobAnswer::Finished { tasks, done }) => Ok(Some((tasks, done))),
            Some(other) => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// This node's figures as a compute server, if it is one.
    pub fn compute_stats(&self) -> Option<dabs_farm_proto::jobs::ComputeStats> {
        self.0.compute_stats()
    }
}
