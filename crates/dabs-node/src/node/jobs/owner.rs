//! A job's owner at work (R-JOB-2, R-JOB-5): every task has a leased compute server or is
//! placed again; results are committed once and copied to the replica; a replica whose
//! owner is gone takes the job over; the submitter is told when it is done.

use super::super::Inner;
use crate::jobs::archive::Committed;
use dabs_farm_proto::jobs::{JobAnswer, JobCall, TaskResult};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Tasks one `RUN` carries at most, and about how many bytes of input.
const RUN_TASKS: usize = 512;
const RUN_BYTES: usize = 256 << 10;
/// Tasks placed per job per round: a job of 100,000 goes out in rounds, each on fresh figures.
const PLACE_PER_ROUND: usize = 4096;

impl Inner {
    /// The owner's loop: places pending tasks, re-places those of lapsed servers, keeps a
    /// replica, and (as a replica) takes over jobs whose owner is gone.
    pub(in crate::node) async fn jobs_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.jobs.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            // Before a lease has passed this node has not heard every member: it would take
            // live owners for dead ones.
            let settled = self.started.elapsed() >= self.config.node.lease;
            let ids: Vec<(String, bool, bool, Option<String>, String)> = self
                .jobs
                .held()
                .values()
                .map(|j| {
                    (
                        j.record.id.clone(),
                        j.owned,
                        j.finished,
                        j.record.replica.clone(),
                        j.record.owner.clone(),
                    )
                })
                .collect();
            for (id, owned, finished, replica, owner) in ids {
                if !owned {
                    if settled && !self.member_alive(&owner) {
                        self.take_over(&id);
                    }
                    continue;
                }
                // Not while it is being copied: its tasks go out naming the replica that has it.
                let copying = self.jobs.copying.lock().unwrap_or_else(|e| e.into_inner()).contains(&id);
                if !finished && !copying {
                    self.dispatch(&id).await;
                }
                if settled
                    && replica.as_deref().is_none_or(|r| !self.member_alive(r))
                    && self.jobs.copying.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone())
                {
                    // One copy at a time per job: `replicate` sets the replica when done.
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.replicate(&id).await;
                        this.jobs.copying.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    });
                }
            }
        }
    }

    /// Job `id`'s owner is gone: this replica owns it now.
    fn take_over(&self, id: &str) {
        let mut held = self.jobs.held();
        let Some(j) = held.get_mut(id) else { return };
        let before = std::mem::replace(&mut j.record.owner, self.me.clone());
        j.owned = true;
        j.record.replica = None;
        if let Err(e) = self.jobs.archive.put_job(&j.record, &[]) {
            tracing::error!(job = %id, error = %e, "taken-over job not archived");
        }
        drop(held);
        self.counters.jobs_taken_over.fetch_add(1, Ordering::Relaxed);
        self.note(format!("took over job {id}: its owner {before} is gone"));
        self.jobs.wake.notify_one();
    }

    /// Places job `id`'s pending tasks through the balancer and sends them to their servers.
    async fn dispatch(self: &Arc<Self>, id: &str) {
        let (pending, record, replaced) = {
            let mut held = self.jobs.held();
            let Some(j) = held.get_mut(id) else { return };
            let replaced = j.reclaim(|n| self.compute_registered(n));
            (j.pending(PLACE_PER_ROUND), j.record.clone(), replaced)
        };
        if replaced > 0 {
            self.counters.job_tasks_replaced.fetch_add(replaced as u64, Ordering::Relaxed);
            self.note(format!("job {id}: {replaced} tasks placed again (their compute server is gone)"));
        }
        if pending.is_empty() {
            if self.jobs.held().get(id).is_some_and(|j| j.complete() && !j.finished) {
                self.finish(id).await;
            }
            return;
        }
        let Some(balancer) = self.balancer() else { return };
        let shares = match self
            .jobs_call(&balancer, &JobCall::Place { job: id.to_owned(), tasks: pending.len() as u32 })
            .await
        {
            Ok(JobAnswer::Shares(s)) => s,
            Ok(other) => {
                tracing::debug!(job = %id, ?other, "balancer placed nothing");
                return;
            }
            Err(e) => {
                tracing::info!(job = %id, %balancer, error = %e, "balancer did not answer");
                return;
            }
        };
        let mut tasks = pending.into_iter();
        let shares: Vec<(String, Vec<u32>)> =
            shares.into_iter().map(|(node, n)| (node, tasks.by_ref().take(n as usize).collect())).collect();
        {
            // Marked before they leave: a result may come back before the RUN's answer.
            let mut held = self.jobs.held();
            let Some(j) = held.get_mut(id) else { return };
            for (node, mine) in &shares {
                for t in mine {
                    j.assigned.insert(*t, node.clone());
                }
            }
        }
        // The replica learns where the tasks run before they run: if this owner dies, the
        // replica waits for their results instead of running them again.
        if let Some(replica) = &record.replica {
            let placed =
                shares.iter().flat_map(|(node, mine)| mine.iter().map(move |t| (*t, node.clone()))).collect();
            let commit =
                JobCall::Commit { job: id.to_owned(), results: vec![], assigned: placed, finished: false };
            if let Err(e) = self.jobs_call(replica, &commit).await {
                tracing::info!(job = %id, %replica, error = %e, "placements not copied to the replica");
            }
        }
        for (node, mine) in shares {
            for chunk in runs(&record, &mine) {
                let (this, node, id) = (self.clone(), node.clone(), id.to_owned());
                let run = JobCall::Run {
                    job: id.clone(),
                    owner: record.owner.clone(),
                    replica: record.replica.clone(),
                    module: record.module,
                    fuel: record.fuel,
                    memory: record.memory,
                    tasks: chunk.iter().map(|t| (*t, record.inputs[*t as usize].clone())).collect(),
                };
                tokio::spawn(async move {
                    if let Err(why) = this.send_run(&node, &run).await {
                        tracing::info!(job = %id, %node, error = %why, "RUN refused; its tasks wait for another server");
                        if let Some(j) = this.jobs.held().get_mut(&id) {
                            for t in &chunk {
                                if j.assigned.get(t) == Some(&node) {
                                    j.assigned.remove(t);
                                }
                            }
                        }
                    }
                });
            }
        }
    }

    async fn send_run(&self, node: &str, run: &JobCall) -> Result<(), String> {
        match self.jobs_call(node, run).await? {
            JobAnswer::Ok => Ok(()),
            JobAnswer::No(why) => Err(why),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Commits results of job `id` as its owner (or as the replica taking them in the owner's
    /// absence): durable here, then on the replica; returns (new, repeated).
    pub(super) async fn commit_results(
        &self,
        id: &str,
        results: Vec<TaskResult>,
    ) -> Result<(u32, u32), String> {
        let owned = self.jobs.held().get(id).ok_or(super::UNKNOWN_JOB)?.owned;
        let done = self.jobs.archive.commit(id, &results).map_err(|e| e.to_string())?;
        let new: Vec<TaskResult> =
            results.into_iter().zip(&done).filter(|(_, d)| **d == Committed::New).map(|(r, _)| r).collect();
        // A result delivered again (its owner died before answering) is not a task run twice.
        let repeated = done.iter().filter(|d| **d == Committed::RanTwice).count() as u32;
        // The replica is read under the same lock the results are added under: a replica named
        // after this point gets these results in the copy's last step (`replicate`).
        let (complete, replica) = {
            let mut held = self.jobs.held();
            let Some(j) = held.get_mut(id) else { return Err(super::UNKNOWN_JOB.into()) };
            j.add(&new);
            (j.complete() && !j.finished, j.record.replica.clone())
        };
        self.counters.job_results_committed.fetch_add(new.len() as u64, Ordering::Relaxed);
        self.counters.job_results_repeated.fetch_add(u64::from(repeated), Ordering::Relaxed);
        if owned
            && !new.is_empty()
            && let Some(replica) = replica
        {
            let copy = JobCall::Commit {
                job: id.to_owned(),
                results: new.clone(),
                assigned: vec![],
                finished: false,
            };
            if let Err(e) = self.jobs_call(&replica, &copy).await {
                // The loop finds a replica that is gone and copies the whole job to another.
                tracing::info!(job = %id, %replica, error = %e, "results not copied to the replica yet");
            }
        }
        // Room freed on a server: the dispatcher places more (or finishes the job).
        if owned && (complete || !new.is_empty()) {
            self.jobs.wake.notify_one();
        }
        Ok((new.len() as u32, repeated))
    }

    /// Every result of job `id` is in: archive it as finished, tell the replica and the
    /// submitter.
    async fn finish(&self, id: &str) {
        let (record, results, failed) = {
            let mut held = self.jobs.held();
            let Some(j) = held.get_mut(id) else { return };
            if j.finished {
                return;
            }
            j.finished = true;
            (j.record.clone(), j.results.values().cloned().collect::<Vec<_>>(), j.view().failed)
        };
        if let Err(e) = self.jobs.archive.finish(id, dabs_net::unix_ms()) {
            tracing::error!(job = %id, error = %e, "finished job not archived as such");
        }
        if let Some(replica) = &record.replica {
            let done =
                JobCall::Commit { job: id.to_owned(), results: vec![], assigned: vec![], finished: true };
            let _ = self.jobs_call(replica, &done).await;
        }
        self.note(format!("job {id} done: {} tasks, {failed} failed", results.len()));
        if let Some(to) = record.notify.clone() {
            self.notify_done(id, &to, &results).await;
        }
    }
}

/// Tasks `tasks` of `record` in `RUN`-sized chunks.
fn runs(record: &dabs_farm_proto::jobs::JobRecord, tasks: &[u32]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for t in tasks {
        let len = record.inputs[*t as usize].len() + 8;
        if !chunk.is_empty() && (chunk.len() == RUN_TASKS || bytes + len > RUN_BYTES) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += len;
        chunk.push(*t);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}
