//! A compute server's workers (R-JOB-3, R-JOB-5): threads that run tasks in the sandbox and
//! keep the server's own statistics. A task's failure is its result; nothing a module does
//! reaches the node (wasmi interprets it under a fuel budget and a memory cap).

use dabs_farm_proto::jobs::{ComputeStats, MAX_OUTPUT_BYTES, ModuleHash, Outcome, TaskResult};
use dabs_net::unix_ms;
use dabs_sandbox::{Limits, Module};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::mpsc;

/// One task to run.
pub struct Work {
    /// Its job.
    pub job: String,
    /// Where its result goes (the owner, then the replica).
    pub owner: String,
    /// The job's replica.
    pub replica: Option<String>,
    /// The module.
    pub module: Arc<Module>,
    /// Its index in the job.
    pub task: u32,
    /// Its input.
    pub input: Vec<u8>,
    /// Fuel and memory.
    pub fuel: u64,
    /// Memory cap, bytes.
    pub memory: u64,
}

/// A result on its way to the owner.
pub struct Ran {
    /// Its job.
    pub job: String,
    /// The owner.
    pub owner: String,
    /// The replica.
    pub replica: Option<String>,
    /// The result.
    pub result: TaskResult,
}

#[derive(Default)]
struct Figures {
    queued: AtomicU32,
    busy_us: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    last_done_ms: AtomicU64,
    /// Exponentially weighted mean task time, µs.
    recent_us: AtomicU32,
}

struct Queue {
    work: Mutex<(VecDeque<Work>, bool)>,
    ready: Condvar,
}

/// The worker threads and the modules they have read.
pub struct ComputePool {
    queue: Arc<Queue>,
    figures: Arc<Figures>,
    threads: u16,
    modules: Mutex<HashMap<ModuleHash, Arc<Module>>>,
    handles: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl ComputePool {
    /// Starts `threads` workers; each result goes to `done`, tagged with node name `me`.
    pub fn start(threads: u16, me: &str, done: mpsc::UnboundedSender<Ran>) -> ComputePool {
        let queue = Arc::new(Queue { work: Mutex::new((VecDeque::new(), false)), ready: Condvar::new() });
        let figures = Arc::new(Figures::default());
        let handles = (0..threads.max(1))
            .map(|i| {
                let (queue, figures, done, me) =
                    (queue.clone(), figures.clone(), done.clone(), me.to_owned());
                std::thread::Builder::new()
                    .name(format!("dabs-job-{i}"))
                    .spawn(move || worker(&queue, &figures, &done, &me))
                    .expect("a worker thread starts")
            })
            .collect();
        ComputePool {
            queue,
            figures,
            threads: threads.max(1),
            modules: Mutex::default(),
            handles: Mutex::new(handles),
        }
    }

    /// The module with `hash`, if read before.
    pub fn module(&self, hash: &ModuleHash) -> Option<Arc<Module>> {
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).get(hash).cloned()
    }

    /// Keeps a module read from its bytes.
    pub fn add_module(&self, hash: ModuleHash, module: Module) -> Arc<Module> {
        let module = Arc::new(module);
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).insert(hash, module.clone());
        module
    }

    /// Queues tasks.
    pub fn submit(&self, work: impl IntoIterator<Item = Work>) {
        let mut q = self.queue.work.lock().unwrap_or_else(|e| e.into_inner());
        let before = q.0.len();
        q.0.extend(work);
        self.figures.queued.fetch_add((q.0.len() - before) as u32, Ordering::Relaxed);
        self.queue.ready.notify_all();
    }

    /// Its figures, as announced.
    pub fn stats(&self) -> ComputeStats {
        let f = &self.figures;
        ComputeStats {
            threads: self.threads,
            queued: f.queued.load(Ordering::Relaxed),
            busy_ms: f.busy_us.load(Ordering::Relaxed) / 1000,
            completed: f.completed.load(Ordering::Relaxed),
            failed: f.failed.load(Ordering::Relaxed),
            last_done_ms: f.last_done_ms.load(Ordering::Relaxed),
            recent_us: f.recent_us.load(Ordering::Relaxed),
        }
    }

    /// Stops the workers once their current task ends (without waiting for that: a task
    /// may have seconds of fuel left); queued tasks are dropped, and their owner places them
    /// again when this node leaves the farm.
    pub fn stop(&self) {
        let mut q = self.queue.work.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = q.0.len() as u32;
        q.0.clear();
        q.1 = true;
        self.figures.queued.fetch_sub(dropped, Ordering::Relaxed);
        self.queue.ready.notify_all();
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn worker(queue: &Queue, figures: &Figures, done: &mpsc::UnboundedSender<Ran>, me: &str) {
    loop {
        let work = {
            let mut q = queue.work.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.1 {
                    return;
                }
                if let Some(w) = q.0.pop_front() {
                    break w;
                }
                q = queue.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let limits = Limits {
            fuel: work.fuel,
            memory_bytes: usize::try_from(work.memory).unwrap_or(usize::MAX),
            output_bytes: MAX_OUTPUT_BYTES,
        };
        let started_us = unix_us();
        let outcome = match work.module.run(&work.input, &limits) {
            Ok(out) => Outcome::Ok(out),
            Err(e) => Outcome::Err(e.to_string()),
        };
        let ended_us = unix_us();
        let took = ended_us.saturating_sub(started_us);
        figures.busy_us.fetch_add(took, Ordering::Relaxed);
        figures.completed.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Err(_)) {
            figures.failed.fetch_add(1, Ordering::Relaxed);
        }
        figures.last_done_ms.store(unix_ms(), Ordering::Relaxed);
        let recent = figures.recent_us.load(Ordering::Relaxed);
        let took32 = took.min(u64::from(u32::MAX)) as u32;
        let next = if recent == 0 {
            took32.max(1)
        } else {
            ((u64::from(recent) * 7 + u64::from(took32)) / 8) as u32
        };
        figures.recent_us.store(next.max(1), Ordering::Relaxed);
        figures.queued.fetch_sub(1, Ordering::Relaxed);
        let result = TaskResult { task: work.task, outcome, node: me.to_owned(), started_us, ended_us };
        if done.send(Ran { job: work.job, owner: work.owner, replica: work.replica, result }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOUBLE: &str = r#"(module (memory (export "memory") 1)
        (func (export "alloc") (param i32) (result i32) i32.const 16)
        (func (export "run") (param $p i32) (param $n i32) (result i64)
          (i32.store8 (i32.const 0) (i32.mul (i32.load8_u (local.get $p)) (i32.const 2)))
          (i64.const 1)))"#;

    #[tokio::test]
    async fn tasks_run_on_the_workers_and_failures_are_results() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let pool = ComputePool::start(2, "me", tx);
        let m = pool.add_module([0; 32], Module::new(&wat::parse_str(DOUBLE).unwrap()).unwrap());
        let work = |task: u32, input: Vec<u8>, fuel| Work {
            job: "j".into(),
            owner: "o".into(),
            replica: None,
            module: m.clone(),
            task,
            input,
            fuel,
            memory: 1 << 20,
        };
        pool.submit((0..10).map(|i| work(i, vec![i as u8], 1_000_000)));
        pool.submit([work(10, vec![1], 1)]);
        let mut seen = HashMap::new();
        for _ in 0..11 {
            let r =
                tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
            seen.insert(r.result.task, r.result.outcome);
        }
        for i in 0..10u32 {
            assert_eq!(seen[&i], Outcome::Ok(vec![i as u8 * 2]));
        }
        assert!(matches!(&seen[&10], Outcome::Err(e) if e.contains("fuel")), "{:?}", seen[&10]);
        let s = pool.stats();
        assert_eq!((s.completed, s.failed, s.queued, s.threads), (11, 1, 0, 2));
        assert!(s.last_done_ms > 0 && s.recent_us > 0);
        assert!(pool.module(&[0; 32]).is_some() && pool.module(&[1; 32]).is_none());
        pool.stop();
    }
}
