//! A key-value store on the farm: the second example application (after the calculator).
//!
//! - [`KvOps`]: its operations, declared once; [`KvClientPart`] is the client side.
//! - [`KvServer`]: the server portion, run by `kv-portion` as a program beside the node
//!   (`command = ["…/kv-portion"]` in the node's `[[app]]` record).
//! - The `kv` program is the client: `kv --farm GROUP:PORT put colour blue`.
//!
//! Each portion keeps its own store in memory, so the farm should run one portion of it
//! (`max_sessions_per_portion` high enough); docs/guide.md says what sharing state across
//! portions and moves would take.

use dabs_farm_proto::portion::PortionFactory;
use dabs_sdk::{Handled, PartitionError, PortionFactoryFn, ServerPortion};
use dabs_wire::NakCode;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The application's name on the farm.
pub const APP: &str = "kv";
/// Longest key, bytes.
pub const MAX_KEY: usize = 256;
/// Longest value, bytes.
pub const MAX_VALUE: usize = 64 * 1024;

dabs_sdk::partition! {
    /// The store's operations (commands 256–259).
    pub trait KvOps via KvClientPart, serve serve_kv_ops {
        /// The value under `key`, if any.
        fn get(key: String) -> Option<String> = 256;
        /// Sets `key` to `value`; returns the value it replaced.
        fn put(key: String, value: String) -> Option<String> = 257;
        /// Removes `key`; returns its value.
        fn del(key: String) -> Option<String> = 258;
        /// Every key, in order.
        fn keys() -> Vec<String> = 259;
    }
}

/// The store: one map shared by the portion's workers.
#[derive(Clone, Default)]
pub struct Store {
    map: Arc<Mutex<BTreeMap<String, String>>>,
    /// The journal, opened once for appending.
    journal: Option<Arc<std::fs::File>>,
    work: std::time::Duration,
}

/// How a portion program runs (`kv-portion [--journal FILE] [--work-ms N]`).
#[derive(Clone, Debug, Default, clap::Parser)]
#[command(name = "kv-portion", about = "The kv example's server portion, started by `dabs node`")]
pub struct Options {
    /// Every `put` and `del` executed is appended here as a line `OP KEY PID`, before its
    /// reply goes out: a record that outlives a crash, of what ran.
    #[arg(long, value_name = "FILE")]
    pub journal: Option<std::path::PathBuf>,
    /// Time each write spends after it has run and before its reply goes out, as real work
    /// would: a crash in that window leaves a write executed and unanswered.
    #[arg(long = "work-ms", value_name = "N", value_parser = parse_ms, default_value = "0")]
    pub work: std::time::Duration,
}

fn parse_ms(text: &str) -> Result<std::time::Duration, String> {
    text.parse().map(std::time::Duration::from_millis).map_err(|_| format!("{text:?} is not a number of ms"))
}

impl Options {
    /// Reads `--journal FILE` and `--work-ms N` from `args` (the program's name left out).
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        use clap::Parser;
        Options::try_parse_from(std::iter::once("kv-portion".to_owned()).chain(args))
            .map_err(|e| e.to_string())
    }
}

impl Store {
    /// A store that runs with `options`; fails when the journal cannot be opened.
    pub fn with(options: Options) -> Result<Store, String> {
        let journal = match &options.journal {
            Some(path) => Some(Arc::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open the journal {}: {e}", path.display()))?,
            )),
            None => None,
        };
        Ok(Store { map: Arc::default(), journal, work: options.work })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Journals a write that has run, then spends the configured work time.
    async fn ran(&self, op: &str, key: &str) -> Result<(), PartitionError> {
        if let Some(journal) = &self.journal {
            use std::io::Write;
            // One write(2) of one short line to a file opened for appending: lines from
            // several portions never interleave.
            let line = format!("{op} {key} {}\n", std::process::id());
            (&**journal)
                .write_all(line.as_bytes())
                .map_err(|e| PartitionError::op("journal", format!("cannot journal: {e}")))?;
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        Ok(())
    }
}

fn check_key(key: &str) -> Result<(), PartitionError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(PartitionError::op(
            "bad_key",
            format!("a key has 1 to {MAX_KEY} bytes, this one {}", key.len()),
        ));
    }
    Ok(())
}

impl KvOps for Store {
    async fn get(&self, key: String) -> Result<Option<String>, PartitionError> {
        check_key(&key)?;
        Ok(self.map().get(&key).cloned())
    }
    async fn put(&self, key: String, value: String) -> Result<Option<String>, PartitionError> {
        check_key(&key)?;
        if value.len() > MAX_VALUE {
            return Err(PartitionError::op(
                "value_too_large",
                format!("a value has at most {MAX_VALUE} bytes, this one {}", value.len()),
            ));
        }
        let before = self.map().insert(key.clone(), value);
        self.ran("put", &key).await?;
        Ok(before)
    }
    async fn del(&self, key: String) -> Result<Option<String>, PartitionError> {
        check_key(&key)?;
        let before = self.map().remove(&key);
        self.ran("del", &key).await?;
        Ok(before)
    }
    async fn keys(&self) -> Result<Vec<String>, PartitionError> {
        Ok(self.map().keys().cloned().collect())
    }
}

/// The server portion.
#[derive(Clone, Default)]
pub struct KvServer {
    store: Store,
}

impl ServerPortion for KvServer {
    async fn handle(&mut self, command: u16, payload: Vec<u8>) -> Handled {
        match serve_kv_ops(&self.store, command, &payload).await {
            Some(reply) => Handled::Reply(reply),
            None => Handled::Reject(NakCode::UnknownCommand, format!("kv has no command {command}")),
        }
    }

    fn state(&self) -> String {
        format!("running, {} keys", self.store.map().len())
    }
}

/// The factory a portion program serves: one store per portion, publishing how many keys it
/// holds as the status object `keys` (an application figure, like a mail server's mailbox
/// count: a policy `app_figure:keys` sends new clients to the emptiest store).
pub fn factory() -> Arc<dyn PortionFactory> {
    factory_of(Store::default())
}

/// [`factory`] with `options` (a journal, simulated work); fails when the journal cannot be
/// opened.
pub fn factory_with(options: Options) -> Result<Arc<dyn PortionFactory>, String> {
    Ok(factory_of(Store::with(options)?))
}

fn factory_of(store: Store) -> Arc<dyn PortionFactory> {
    let counted = store.clone();
    Arc::new(
        PortionFactoryFn::new(APP, move || KvServer { store: store.clone() })
            .with_status("keys", move |_| Ok(counted.map().len() as f64)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_del_keys() {
        let s = Store::default();
        assert_eq!(s.put("a".into(), "1".into()).await.unwrap(), None);
        assert_eq!(s.put("a".into(), "2".into()).await.unwrap(), Some("1".into()));
        s.put("b".into(), "3".into()).await.unwrap();
        assert_eq!(s.keys().await.unwrap(), vec!["a".to_string(), "b".into()]);
        assert_eq!(s.del("a".into()).await.unwrap(), Some("2".into()));
        assert_eq!(s.get("a".into()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn writes_that_ran_are_journaled_one_line_each() {
        let path = std::env::temp_dir().join(format!("kv-journal-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let args = ["--journal".to_string(), path.display().to_string(), "--work-ms".into(), "1".into()];
        let s = Store::with(Options::from_args(args).unwrap()).unwrap();
        s.put("a".into(), "1".into()).await.unwrap();
        s.del("a".into()).await.unwrap();
        assert!(s.put(String::new(), "x".into()).await.is_err(), "refused before it ran: not journaled");
        let text = std::fs::read_to_string(&path).unwrap();
        let pid = std::process::id();
        assert_eq!(text, format!("put a {pid}\ndel a {pid}\n"));
        let _ = std::fs::remove_file(&path);
        assert!(Options::from_args(["--work-ms".to_string(), "soon".into()]).is_err());
        assert!(Options::from_args(["--bogus".to_string()]).is_err());
    }

    #[tokio::test]
    async fn bad_keys_and_values_are_refused_by_name() {
        let s = Store::default();
        let e = s.get(String::new()).await.unwrap_err();
        assert!(matches!(e, PartitionError::Op { ref code, .. } if code == "bad_key"), "{e}");
        let e = s.put("k".into(), "x".repeat(MAX_VALUE + 1)).await.unwrap_err();
        assert!(matches!(e, PartitionError::Op { ref code, .. } if code == "value_too_large"), "{e}");
    }
}
