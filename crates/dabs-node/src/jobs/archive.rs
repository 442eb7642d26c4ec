//! The results archive (R-JOB-4): a node's jobs, their modules and their committed results in
//! a redb database of its own (`DATA_DIR/jobs.redb`), each commit durable before it is
//! acknowledged. A task's result is inserted only if the task has none: the first result to
//! arrive is the one committed, whatever runs later.

use crate::db::{DbError, RedbFile};
use dabs_farm_proto::jobs::{JobRecord, ModuleHash, TaskResult};
use dabs_farm_proto::shapes::{cbor, from_cbor};
use redb::{ReadableTable, TableDefinition};
use std::path::Path;

const MODULES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("modules");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const RESULTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("results");
/// Jobs whose every result is in and whose submitter was told.
const FINISHED: TableDefinition<&str, u64> = TableDefinition::new("finished");

/// A job as the archive gives it back after a restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    /// The job.
    pub job: JobRecord,
    /// Its committed results, in task order.
    pub results: Vec<TaskResult>,
    /// Every result is in and the submitter was told.
    pub finished: bool,
}

/// What committing one result did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// The task had no result: this one is kept.
    New,
    /// The same result again (the same run, delivered twice): nothing changes.
    Again,
    /// Another run of a task that has a result (it ran twice): the first is kept.
    RanTwice,
}

/// The archive.
pub struct Archive {
    file: RedbFile,
}

impl Archive {
    /// Opens (or creates) `DIR/jobs.redb`.
    pub fn open(dir: &Path) -> Result<Archive, DbError> {
        let file = RedbFile::open(dir, "jobs.redb", |tx| {
            tx.open_table(MODULES)?;
            tx.open_table(JOBS)?;
            tx.open_table(RESULTS)?;
            tx.open_table(FINISHED)?;
            Ok(())
        })?;
        Ok(Archive { file })
    }

    fn err(&self, e: impl std::fmt::Display) -> DbError {
        self.file.err(e)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, DbError> {
        self.file.write(f)
    }

    /// Keeps a module's bytes under its hash.
    pub fn put_module(&self, hash: &ModuleHash, bytes: &[u8]) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(MODULES)?.insert(hash.as_slice(), bytes)?;
            Ok(())
        })
    }

    /// A module's bytes, if kept here.
    pub fn module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>, DbError> {
        let tx = self.file.read()?;
        let t = tx.open_table(MODULES).map_err(|e| self.err(e))?;
        Ok(t.get(hash.as_slice()).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    /// Keeps a job (replacing its record: a new owner or replica) and any results it came with.
    pub fn put_job(&self, job: &JobRecord, results: &[TaskResult]) -> Result<(), DbError> {
        let bytes = cbor(job);
        let encoded: Vec<(u32, Vec<u8>)> = results.iter().map(|r| (r.task, cbor(r))).collect();
        self.write(|tx| {
            tx.open_table(JOBS)?.insert(job.id.as_str(), bytes.as_slice())?;
            let mut t = tx.open_table(RESULTS)?;
            for (task, r) in &encoded {
                if t.get((job.id.as_str(), *task))?.is_none() {
                    t.insert((job.id.as_str(), *task), r.as_slice())?;
                }
            }
            Ok(())
        })
    }

    /// Commits `results` of job `id` in one durable transaction; for each, what it did (a task
    /// that has a result keeps it).
    pub fn commit(&self, id: &str, results: &[TaskResult]) -> Result<Vec<Committed>, DbError> {
        let encoded: Vec<(u32, Vec<u8>)> = results.iter().map(|r| (r.task, cbor(r))).collect();
        self.write(|tx| {
            let mut t = tx.open_table(RESULTS)?;
            let mut done = Vec::with_capacity(encoded.len());
            for (task, r) in &encoded {
                let before = t.get((id, *task))?.map(|v| v.value().to_vec());
                done.push(match before {
                    None => {
                        t.insert((id, *task), r.as_slice())?;
                        Committed::New
                    }
                    Some(b) if b == *r => Committed::Again,
                    Some(_) => Committed::RanTwice,
                });
            }
            Ok(done)
        })
    }

    /// Marks job `id` finished (its submitter told).
    pub fn finish(&self, id: &str, at_ms: u64) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(FINISHED)?.insert(id, at_ms)?;
            Ok(())
        })
    }

    /// Every job kept here, with its results: what a restarted node serves and resumes. A
    /// record that does not decode is an error naming the job.
    pub fn jobs(&self) -> Result<Vec<Stored>, DbError> {
        let tx = self.file.read()?;
        let jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
        let results = tx.open_table(RESULTS).map_err(|e| self.err(e))?;
        let finished = tx.open_table(FINISHED).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in jobs.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let id = k.value().to_owned();
            let job: JobRecord =
                from_cbor(v.value(), "job record").map_err(|e| self.err(format!("job {id}: {e}")))?;
            let mut rs = Vec::new();
            for r in results.range((id.as_str(), 0)..=(id.as_str(), u32::MAX)).map_err(|e| self.err(e))? {
                let (_, v) = r.map_err(|e| self.err(e))?;
                rs.push(from_cbor(v.value(), "task result").map_err(|e| self.err(format!("job {id}: {e}")))?);
            }
            let done = finished.get(id.as_str()).map_err(|e| self.err(e))?.is_some();
            out.push(Stored { job, results: rs, finished: done });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dabs_farm_proto::jobs::Outcome;

    fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.into(),
            module: [1; 32],
            fuel: 100,
            memory: 1 << 20,
            inputs: vec![serde_bytes::ByteBuf::from(vec![1, 2]); 3],
            notify: None,
            submitted_ms: 5,
            owner: "a".into(),
            replica: Some("b".into()),
        }
    }

    fn result(task: u32, out: u8, node: &str) -> TaskResult {
        TaskResult { task, outcome: Outcome::Ok(vec![out]), node: node.into(), started_us: 1, ended_us: 2 }
    }

    #[test]
    fn the_first_result_of_a_task_is_the_one_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let a = Archive::open(dir.path()).unwrap();
            a.put_module(&[1; 32], b"wasm").unwrap();
            a.put_job(&job("j"), &[result(0, 10, "x")]).unwrap();
            assert_eq!(
                a.commit("j", &[result(0, 99, "y"), result(2, 12, "y")]).unwrap(),
                vec![Committed::RanTwice, Committed::New]
            );
            assert_eq!(
                a.commit("j", &[result(2, 77, "z"), result(2, 12, "y")]).unwrap(),
                vec![Committed::RanTwice, Committed::Again]
            );
            a.put_job(&job("other"), &[]).unwrap();
            a.finish("j", 9).unwrap();
        }
        let a = Archive::open(dir.path()).unwrap();
        assert_eq!(a.module(&[1; 32]).unwrap().as_deref(), Some(&b"wasm"[..]));
        assert_eq!(a.module(&[2; 32]).unwrap(), None);
        let jobs = a.jobs().unwrap();
        let j = jobs.iter().find(|s| s.job.id == "j").unwrap();
        assert!(j.finished);
        assert_eq!(j.results, vec![result(0, 10, "x"), result(2, 12, "y")]);
        let other = jobs.iter().find(|s| s.job.id == "other").unwrap();
        assert!(!other.finished && other.results.is_empty());
    }
}
