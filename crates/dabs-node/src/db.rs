//! The node's database (redb): portion records, virtual-address mappings, configuration and
//! the farm's latest figures, all surviving a restart.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const PORTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("portions");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
const FARM: TableDefinition<&str, &[u8]> = TableDefinition::new("farm_stats");
const NEXT_PORTION_ID: &str = "next_portion_id";

fn id_from_bytes(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A portion this node runs: its virtual address maps to this node and queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortionRecord {
    /// Virtual address.
    pub va: String,
    /// Application.
    pub app: String,
    /// Queue at the node's endpoint.
    pub queue: u16,
    /// When it was first started (Unix ms).
    pub started_ms: u64,
}

/// A database failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("database {path}: {message}")]
pub struct DbError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// A redb file, with the path its errors name: what the node's database and the jobs
/// archive stand on.
pub(crate) struct RedbFile {
    db: Database,
    path: PathBuf,
}

impl RedbFile {
    /// Opens (or creates) `DIR/FILE` and runs `create` in its first transaction, to create the
    /// tables so reads never meet a missing one.
    pub(crate) fn open(
        dir: &Path,
        file: &str,
        create: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<RedbFile, DbError> {
        let path = dir.join(file);
        let err = |m: String| DbError { path: path.clone(), message: m };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
        let db = Database::create(&path).map_err(|e| err(e.to_string()))?;
        let this = RedbFile { db, path };
        this.write(create)?;
        Ok(this)
    }

    /// A failure, naming the file.
    pub(crate) fn err(&self, e: impl std::fmt::Display) -> DbError {
        DbError { path: self.path.clone(), message: e.to_string() }
    }

    /// Runs `f` in a write transaction and commits it (durably) when it succeeds.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, DbError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let out = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// A read transaction.
    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, DbError> {
        self.db.begin_read().map_err(|e| self.err(e))
    }
}

/// The node's database.
pub struct Db {
    file: RedbFile,
}

impl Db {
    /// Opens (or creates) `DIR/node.redb`.
    pub fn open(dir: &Path) -> Result<Self, DbError> {
        let file = RedbFile::open(dir, "node.redb", |tx| {
            tx.open_table(PORTIONS)?;
            tx.open_table(SETTINGS)?;
            tx.open_table(FARM)?;
            Ok(())
        })?;
        Ok(Db { file })
    }

    fn err(&self, e: impl std::fmt::Display) -> DbError {
        self.file.err(e)
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), DbError> {
        self.file.write(f)
    }

    fn put(&self, table: TableDefinition<&str, &[u8]>, key: &str, value: &[u8]) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(table)?.insert(key, value)?;
            Ok(())
        })
    }

    fn all(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        let tx = self.file.read()?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Records a portion (replacing one with the same virtual address).
    pub fn put_portion(&self, p: &PortionRecord) -> Result<(), DbError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(p, &mut bytes).map_err(|e| self.err(e))?;
        self.put(PORTIONS, &p.va, &bytes)
    }

    /// Records a portion this node named, and raises the stored next portion number to at
    /// least `next_id` in the same transaction, so no name is handed out twice across restarts
    /// (a portion that moved away keeps its name elsewhere in the farm).
    pub fn put_new_portion(&self, p: &PortionRecord, next_id: u64) -> Result<(), DbError> {
        let mut bytes = Vec::new();
        ciborium::into_writer(p, &mut bytes).map_err(|e| self.err(e))?;
        self.write(|tx| {
            tx.open_table(PORTIONS)?.insert(p.va.as_str(), bytes.as_slice())?;
            let mut settings = tx.open_table(SETTINGS)?;
            let stored = settings.get(NEXT_PORTION_ID)?.map(|v| id_from_bytes(v.value())).unwrap_or(0);
            settings.insert(NEXT_PORTION_ID, next_id.max(stored).to_be_bytes().as_slice())?;
            Ok(())
        })
    }

    /// The next portion number to hand out (1 on a new database).
    pub fn next_portion_id(&self) -> Result<u64, DbError> {
        Ok(self.setting(NEXT_PORTION_ID)?.map(|v| id_from_bytes(&v)).unwrap_or(0).max(1))
    }

    /// Forgets a portion.
    pub fn remove_portion(&self, va: &str) -> Result<(), DbError> {
        self.write(|tx| {
            tx.open_table(PORTIONS)?.remove(va)?;
            Ok(())
        })
    }

    /// Every recorded portion. A record that does not decode is an error naming it.
    pub fn portions(&self) -> Result<Vec<PortionRecord>, DbError> {
        self.all(PORTIONS)?
            .into_iter()
            .map(|(k, v)| {
                ciborium::from_reader(&v[..]).map_err(|e| self.err(format!("portion record {k}: {e}")))
            })
            .collect()
    }

    /// Stores a setting.
    pub fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), DbError> {
        self.put(SETTINGS, key, value)
    }

    /// Reads a setting.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.all(SETTINGS)?.into_iter().find(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// Stores a member's latest figures (CBOR).
    pub fn put_farm_stats(&self, node: &str, cbor: &[u8]) -> Result<(), DbError> {
        self.put(FARM, node, cbor)
    }

    /// The farm's figures as last stored: (node, CBOR).
    pub fn farm_stats(&self) -> Result<Vec<(String, Vec<u8>)>, DbError> {
        self.all(FARM)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let rec = PortionRecord {
            va: "mp://demo/calc/dasp/node-1-1".into(),
            app: "calc".into(),
            queue: 16,
            started_ms: 5,
        };
        {
            let db = Db::open(dir.path()).unwrap();
            db.put_portion(&rec).unwrap();
            db.put_setting("config", b"toml").unwrap();
            db.put_farm_stats("node-2", b"\xa0").unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.portions().unwrap(), vec![rec.clone()]);
        assert_eq!(db.setting("config").unwrap().as_deref(), Some(&b"toml"[..]));
        assert_eq!(db.farm_stats().unwrap().len(), 1);
        db.remove_portion(&rec.va).unwrap();
        assert!(db.portions().unwrap().is_empty());
    }

    #[test]
    fn portion_numbers_are_never_handed_out_twice() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |n: u64| PortionRecord {
            va: format!("mp://demo/calc/dasp/node-1-{n}"),
            app: "calc".into(),
            queue: 16,
            started_ms: 5,
        };
        {
            let db = Db::open(dir.path()).unwrap();
            assert_eq!(db.next_portion_id().unwrap(), 1);
            db.put_new_portion(&rec(1), 2).unwrap();
            db.put_new_portion(&rec(3), 4).unwrap();
            // A write that lost a race to a later number does not lower it.
            db.put_new_portion(&rec(2), 3).unwrap();
            // The portion moved away: its record goes, its number stays used.
            db.remove_portion(&rec(3).va).unwrap();
        }
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.next_portion_id().unwrap(), 4);
        assert_eq!(db.portions().unwrap().len(), 2);
    }

    #[test]
    fn unusable_directory_is_a_clear_error() {
        let e = Db::open(Path::new("/proc/dabs-cannot-be-here")).err().unwrap();
        assert!(e.to_string().contains("/proc/dabs-cannot-be-here"), "{e}");
    }
}
