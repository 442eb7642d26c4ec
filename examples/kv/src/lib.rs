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
}

impl Store {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
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
        Ok(self.map().insert(key, value))
    }
    async fn del(&self, key: String) -> Result<Option<String>, PartitionError> {
        check_key(&key)?;
        Ok(self.map().remove(&key))
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
    let store = Store::default();
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
    async fn bad_keys_and_values_are_refused_by_name() {
        let s = Store::default();
        let e = s.get(String::new()).await.unwrap_err();
        assert!(matches!(e, PartitionError::Op { ref code, .. } if code == "bad_key"), "{e}");
        let e = s.put("k".into(), "x".repeat(MAX_VALUE + 1)).await.unwrap_err();
        assert!(matches!(e, PartitionError::Op { ref code, .. } if code == "value_too_large"), "{e}");
    }
}
