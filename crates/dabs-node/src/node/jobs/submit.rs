//! Accepting a job (R-JOB-1): checks that say what to fix, the module read once, the job
//! archived here and on a replica before the id goes back.

use super::super::Inner;
use crate::jobs::{JobState, Notify, SubmitError, new_id};
use dabs_farm_proto::jobs::{JobAnswer, JobCall, JobRecord, MAX_INPUT_BYTES, MAX_MODULE_BYTES, MAX_TASKS};
use dabs_net::unix_ms;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;

/// A job as submitted.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    /// The WebAssembly module's bytes.
    pub module: Vec<u8>,
    /// One task per input.
    pub inputs: Vec<Vec<u8>>,
    /// Fuel per task (`None`: the node's `max_fuel`).
    pub fuel: Option<u64>,
    /// Where to tell the submitter.
    pub notify: Option<String>,
}

/// A job accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub id: String,
    /// The node that keeps its copy, if the farm has another.
    pub replica: Option<String>,
}

impl Inner {
    pub(super) async fn submit(&self, job: Submission) -> Result<Accepted, SubmitError> {
        if self.stopping.load(Ordering::Relaxed) || self.state().failover.draining {
            return Err(SubmitError::NotTaking(self.me.clone()));
        }
        if job.module.len() > MAX_MODULE_BYTES {
            return Err(SubmitError::TooLarge {
                what: "the module",
                size: job.module.len(),
                limit: MAX_MODULE_BYTES,
            });
        }
        let input_bytes: usize = job.inputs.iter().map(Vec::len).sum();
        if input_bytes > MAX_INPUT_BYTES {
            return Err(SubmitError::TooLarge {
                what: "the inputs together",
                size: input_bytes,
                limit: MAX_INPUT_BYTES,
            });
        }
        if job.inputs.is_empty() || job.inputs.len() > MAX_TASKS {
            return Err(SubmitError::BadTasks(format!(
                "a job has 1 to {MAX_TASKS} tasks, one per input; this one has {}",
                job.inputs.len()
            )));
        }
        let max = self.config.jobs.max_fuel;
        let fuel = job.fuel.unwrap_or(max);
        if fuel == 0 || fuel > max {
            return Err(SubmitError::BadFuel { asked: fuel, max });
        }
        if let Some(n) = &job.notify {
            n.parse::<Notify>()?;
        }
        let module = {
            let bytes = job.module.clone();
            tokio::task::spawn_blocking(move || dabs_sandbox::Module::new(&bytes))
                .await
                .map_err(|e| SubmitError::Archive(format!("reading the module: {e}")))?
                .map_err(SubmitError::BadModule)?
        };
        if self.balancer().is_none() {
            return Err(SubmitError::NoBalancer(self.config.farm.name.clone()));
        }
        if self.compute_servers().is_empty() {
            return Err(SubmitError::NoCompute(self.config.farm.name.clone()));
        }
        let hash: [u8; 32] = Sha256::digest(&job.module).into();
        if let Some(pool) = &self.jobs.pool
            && pool.module(&hash).is_none()
        {
            pool.add_module(hash, module);
        }
        let record = JobRecord {
            id: new_id(),
            module: hash,
            fuel,
            memory: self.config.jobs.memory_mb << 20,
            inputs: job.inputs.into_iter().map(serde_bytes::ByteBuf::from).collect(),
            notify: job.notify,
            submitted_ms: unix_ms(),
            owner: self.me.clone(),
            replica: None,
        };
        let archive = |r: Result<(), crate::db::DbError>| r.map_err(|e| SubmitError::Archive(e.to_string()));
        archive(self.jobs.archive.put_module(&hash, &job.module))?;
        archive(self.jobs.archive.put_job(&record, &[]))?;
        let id = record.id.clone();
        // Marked as being copied before the dispatcher can see it.
        self.jobs.copying.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone());
        self.jobs.held().insert(id.clone(), JobState::new(record, true, Vec::new(), false));
        // The copy before the answer: a job whose owner dies right after accepting it is
        // still run, from its replica.
        let replica = self.replicate(&id).await;
        self.jobs.copying.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.counters.jobs_accepted.fetch_add(1, Ordering::Relaxed);
        self.jobs.wake.notify_one();
        tracing::info!(node = %self.me, job = %id, ?replica, "job accepted");
        Ok(Accepted { id, replica })
    }

    /// Copies job `id` (module, record, results, placements) to a member that does not hold it
    /// and names that member its replica; the replica, or `None` when no member took it.
    pub(super) async fn replicate(&self, id: &str) -> Option<String> {
        let (mut record, results, assigned) = {
            let held = self.jobs.held();
            let j = held.get(id)?;
            (
                j.record.clone(),
                j.results.values().cloned().collect::<Vec<_>>(),
                j.assigned.iter().map(|(t, n)| (*t, n.clone())).collect::<Vec<_>>(),
            )
        };
        let module = self.jobs.archive.module(&record.module).ok().flatten()?;
        for candidate in self.replica_candidates() {
            record.replica = Some(candidate.clone());
            let store = JobCall::StoreModule { hash: record.module, bytes: module.clone() };
            if !matches!(self.jobs_call(&candidate, &store).await, Ok(JobAnswer::Ok)) {
                continue;
            }
            // Results in pages, each well within one MP message.
            let mut pages = pages_of(&results, 512 << 10).into_iter();
            let first = pages.next().unwrap_or_default();
            let keep = JobCall::Keep { job: record.clone(), results: first, assigned: assigned.clone() };
            if !matches!(self.jobs_call(&candidate, &keep).await, Ok(JobAnswer::Ok)) {
                continue;
            }
            let mut whole = true;
            for page in pages {
                let commit =
                    JobCall::Commit { job: id.to_owned(), results: page, assigned: vec![], finished: false };
                whole &= matches!(self.jobs_call(&candidate, &commit).await, Ok(JobAnswer::Ok));
            }
            if !whole {
                continue;
            }
            // Named the replica, then sent what was committed while the copy was made: from
            // here on every commit is sent to it as it happens.
            let copied: std::collections::HashSet<u32> = results.iter().map(|r| r.task).collect();
            let (finished, since) = {
                let mut held = self.jobs.held();
                let j = held.get_mut(id)?;
                j.record.replica = Some(candidate.clone());
                let _ = self.jobs.archive.put_job(&j.record, &[]);
                let since: Vec<_> =
                    j.results.values().filter(|r| !copied.contains(&r.task)).cloned().collect();
                (j.finished, since)
            };
            for page in pages_of(&since, 512 << 10) {
                let commit =
                    JobCall::Commit { job: id.to_owned(), results: page, assigned: vec![], finished: false };
                let _ = self.jobs_call(&candidate, &commit).await;
            }
            if finished {
                let done =
                    JobCall::Commit { job: id.to_owned(), results: vec![], assigned: vec![], finished: true };
                let _ = self.jobs_call(&candidate, &done).await;
            }
            return Some(candidate);
        }
        None
    }

    /// Members that could keep a job's replica, the next ones after this node by name
    /// first (so replicas spread over the farm).
    fn replica_candidates(&self) -> Vec<String> {
        let mut others: Vec<String> =
            self.other_members().into_iter().filter(|n| self.registered(n)).collect();
        others.sort();
        let split = others.iter().position(|n| n.as_str() > self.me.as_str()).unwrap_or(0);
        others.rotate_left(split);
        others
    }
}

/// `results` in pages of about `budget` bytes of output each.
pub(super) fn pages_of(
    results: &[dabs_farm_proto::jobs::TaskResult],
    budget: usize,
) -> Vec<Vec<dabs_farm_proto::jobs::TaskResult>> {
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut size = 0;
    for r in results {
        let len = match &r.outcome {
            dabs_farm_proto::jobs::Outcome::Ok(o) => o.len(),
            dabs_farm_proto::jobs::Outcome::Err(e) => e.len(),
        } + r.node.len()
            + 32;
        if !page.is_empty() && size + len > budget {
            pages.push(std::mem::take(&mut page));
            size = 0;
        }
        size += len;
        page.push(r.clone());
    }
    if !page.is_empty() {
        pages.push(page);
    }
    pages
}
