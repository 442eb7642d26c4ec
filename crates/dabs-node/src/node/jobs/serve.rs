//! `JOBS` as every role answers it, and the compute server's reporter, which sends what its
//! workers ran to each job's owner (or, with the owner gone, its replica) until committed.

use super::super::Inner;
use super::UNKNOWN_JOB;
use super::submit::pages_of;
use crate::jobs::JobState;
use crate::jobs::balancer;
use crate::jobs::compute::{Ran, Work};
use dabs_farm_proto::jobs::{JobAnswer, JobCall, ModuleHash};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Results one `DONE` carries at most.
const DONE_RESULTS: usize = 1024;
/// How long a result is offered to a job's owner and replica before it is given up (the job's
/// new owner places the task again).
const REPORT_FOR: Duration = Duration::from_secs(30);

impl Inner {
    /// Answers one `JOBS` request, whoever sent it (this node's own calls come here directly).
    pub(in crate::node) async fn serve_job_call(&self, call: &JobCall) -> JobAnswer {
        match call {
            JobCall::StoreModule { hash, bytes } => match self.jobs.archive.put_module(hash, bytes) {
                Ok(()) => JobAnswer::Ok,
                Err(e) => JobAnswer::No(e.to_string()),
            },
            JobCall::Keep { job, results, assigned } => {
                if let Err(e) = self.jobs.archive.put_job(job, results) {
                    return JobAnswer::No(e.to_string());
                }
                let mut state = JobState::new(job.clone(), false, results.clone(), false);
                state.assigned = assigned.iter().cloned().collect();
                self.jobs.held().insert(job.id.clone(), state);
                JobAnswer::Ok
            }
            JobCall::Place { tasks, .. } => self.place(*tasks),
            JobCall::Run { job, owner, replica, module, fuel, memory, tasks } => {
                let Some(pool) = &self.jobs.pool else {
                    return JobAnswer::No(format!("{} is not a compute server", self.me));
                };
                let module = match self.module_for(module, owner, replica.as_deref()).await {
                    Ok(m) => m,
                    Err(why) => return JobAnswer::No(why),
                };
                pool.submit(tasks.iter().map(|(task, input)| Work {
                    job: job.clone(),
                    owner: owner.clone(),
                    replica: replica.clone(),
                    module: module.clone(),
                    task: *task,
                    input: input.to_vec(),
                    fuel: *fuel,
                    memory: *memory,
                }));
                JobAnswer::Ok
            }
            JobCall::FetchModule { hash } => match self.jobs.archive.module(hash) {
                Ok(Some(bytes)) => JobAnswer::Module(bytes),
                Ok(None) => JobAnswer::No("no such module here".into()),
                Err(e) => JobAnswer::No(e.to_string()),
            },
            JobCall::Done { job, results } => match self.commit_results(job, results.clone()).await {
                Ok((new, duplicates)) => JobAnswer::Committed { new, duplicates },
                Err(why) => JobAnswer::No(why),
            },
            JobCall::Commit { job, results, assigned, finished } => {
                if let Err(e) = self.jobs.archive.commit(job, results) {
                    return JobAnswer::No(e.to_string());
                }
                if *finished && let Err(e) = self.jobs.archive.finish(job, dabs_net::unix_ms()) {
                    return JobAnswer::No(e.to_string());
                }
                let mut held = self.jobs.held();
                let Some(j) = held.get_mut(job) else { return JobAnswer::No(UNKNOWN_JOB.into()) };
                j.add(results);
                for (t, node) in assigned {
                    if !j.results.contains_key(t) {
                        j.assigned.insert(*t, node.clone());
                    }
                }
                j.finished |= *finished;
                JobAnswer::Ok
            }
            JobCall::Where { job } => match self.jobs.held().get(job) {
                Some(j) => JobAnswer::Holds(j.owned),
                None => JobAnswer::No(UNKNOWN_JOB.into()),
            },
            JobCall::Status { job } => match self.jobs.held().get(job) {
                Some(j) => JobAnswer::View(j.view()),
                None => JobAnswer::No(UNKNOWN_JOB.into()),
            },
            JobCall::Results { job, from, max_bytes } => match self.jobs.held().get(job) {
                Some(j) => {
                    let rest: Vec<_> = j.results.range(from..).map(|(_, r)| r.clone()).collect();
                    let mut pages = pages_of(&rest, *max_bytes as usize).into_iter();
                    let results = pages.next().unwrap_or_default();
                    JobAnswer::Page { results, more: pages.next().is_some() }
                }
                None => JobAnswer::No(UNKNOWN_JOB.into()),
            },
            JobCall::Progress { job, after, wait_ms } => self.progress(job, *after, *wait_ms).await,
        }
    }

    /// As the balancer: the shares of `tasks` tasks.
    fn place(&self, tasks: u32) -> JobAnswer {
        if !self.runs_balancer() {
            return JobAnswer::No(format!("{} is not the farm's balancer", self.me));
        }
        let servers = self.compute_servers();
        // Work ahead for two announcement intervals: the servers' figures are that stale at most.
        let ahead = self.config.node.announce_interval * 2;
        let shares = balancer::place(tasks, &servers, self.config.jobs.criterion, ahead);
        let mut placed = self.jobs.placed.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.state();
        for (node, n) in &shares {
            let seq = st.members.membership.get(node).map_or(0, |m| m.stats.seq);
            let entry = placed.entry(node.clone()).or_insert((seq, 0));
            if entry.0 != seq {
                *entry = (seq, 0);
            }
            entry.1 += n;
        }
        JobAnswer::Shares(shares)
    }

    /// Tasks finished after the first `after`, waiting up to `wait_ms` for one.
    async fn progress(&self, job: &str, after: u32, wait_ms: u32) -> JobAnswer {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(wait_ms.min(30_000)));
        loop {
            let mut watch = {
                let held = self.jobs.held();
                let Some(j) = held.get(job) else { return JobAnswer::No(UNKNOWN_JOB.into()) };
                let news: Vec<u32> = j.order.iter().skip(after as usize).copied().collect();
                if !news.is_empty() || j.complete() {
                    return JobAnswer::Finished { tasks: news, done: j.complete() };
                }
                j.progress.subscribe()
            };
            if tokio::time::timeout_at(deadline, watch.changed()).await.is_err() {
                return JobAnswer::Finished { tasks: Vec::new(), done: false };
            }
        }
    }

    /// The module `hash`, read before, kept here, or fetched from the job's owner or replica.
    async fn module_for(
        &self,
        hash: &ModuleHash,
        owner: &str,
        replica: Option<&str>,
    ) -> Result<Arc<dabs_sandbox::Module>, String> {
        let pool = self.jobs.pool.as_ref().ok_or("not a compute server")?;
        if let Some(m) = pool.module(hash) {
            return Ok(m);
        }
        let mut bytes = self.jobs.archive.module(hash).map_err(|e| e.to_string())?;
        for from in std::iter::once(owner).chain(replica) {
            if bytes.is_some() {
                break;
            }
            if let Ok(JobAnswer::Module(b)) =
                self.jobs_call(from, &JobCall::FetchModule { hash: *hash }).await
            {
                bytes = Some(b);
            }
        }
        let bytes = bytes.ok_or("the module could be fetched from neither the owner nor the replica")?;
        let module = tokio::task::spawn_blocking(move || dabs_sandbox::Module::new(&bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(pool.add_module(*hash, module))
    }

    /// The compute server's reporter: results in batches, each to its job's owner, else its
    /// replica, until one commits them.
    pub(in crate::node) async fn report_jobs_loop(self: Arc<Self>) {
        let Some(mut ran) = self.jobs.ran.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        while let Some(first) = ran.recv().await {
            let mut batch = vec![first];
            while batch.len() < DONE_RESULTS {
                match ran.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            // One DONE per job; the jobs' reports go out together.
            let mut by_job: BTreeMap<String, Vec<Ran>> = BTreeMap::new();
            for r in batch {
                by_job.entry(r.job.clone()).or_default().push(r);
            }
            let sends = by_job.into_values().map(|rs| self.report(rs));
            futures_util::future::join_all(sends).await;
        }
    }

    async fn report(&self, rs: Vec<Ran>) {
        let (job, owner, replica) = (rs[0].job.clone(), rs[0].owner.clone(), rs[0].replica.clone());
        let done = JobCall::Done { job: job.clone(), results: rs.into_iter().map(|r| r.result).collect() };
        let until = tokio::time::Instant::now() + REPORT_FOR;
        let mut pause = Duration::from_millis(20);
        while tokio::time::Instant::now() < until {
            // The owner, else the replica, else whoever holds the job now (a replica named
            // after these tasks left, or one that took it over).
            let mut targets: Vec<String> = std::iter::once(owner.clone()).chain(replica.clone()).collect();
            if targets.iter().all(|t| !self.member_alive(t))
                && let Some(holder) = self.locate(&job).await
            {
                targets.push(holder);
            }
            for to in targets.iter().map(String::as_str) {
                if !self.member_alive(to) {
                    continue;
                }
                match self.jobs_call(to, &done).await {
                    Ok(JobAnswer::Committed { .. }) => return,
                    Ok(other) => tracing::debug!(%job, %to, ?other, "results not taken"),
                    Err(e) => tracing::debug!(%job, %to, error = %e, "results not delivered"),
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        tracing::warn!(%job, %owner, "results given up: neither the job's owner nor its replica took them");
    }
}
