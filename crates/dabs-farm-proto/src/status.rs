//! Status objects (seed 003): figures a portion publishes about itself (pending operations, a
//! mailbox count) that the node's server monitor reads at the frequency the application's
//! policy asks for. A portion registers objects; the runtime reads them. A read that fails,
//! panics or does not come back in time takes the portion out of the policy's consideration
//! until it answers again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One figure a portion publishes. `read` must be quick: the monitor gives it one collection
/// interval, after which the object counts as silent.
pub trait StatusObject: Send + Sync + 'static {
    /// The figure now, or why it cannot be given.
    fn read(&self) -> Result<f64, String>;
}

impl<F> StatusObject for F
where
    F: Fn() -> Result<f64, String> + Send + Sync + 'static,
{
    fn read(&self) -> Result<f64, String> {
        self()
    }
}

/// The status objects of one portion, by figure name.
#[derive(Default)]
pub struct StatusObjects {
    objects: Mutex<BTreeMap<String, Arc<dyn StatusObject>>>,
}

impl std::fmt::Debug for StatusObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// A figure name that cannot be published.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("status figure name {0:?} must be 1 to 32 characters of a-z, 0-9, '_' or '-'")]
pub struct BadFigureName(pub String);

/// Checks a figure name: short (announcements carry it) and plain (policies name it).
pub fn check_figure_name(name: &str) -> Result<(), BadFigureName> {
    let ok = (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(BadFigureName(name.to_owned())) }
}

impl StatusObjects {
    /// Publishes `object` as figure `name` (replacing one of the same name).
    pub fn publish(&self, name: &str, object: Arc<dyn StatusObject>) -> Result<(), BadFigureName> {
        check_figure_name(name)?;
        self.lock().insert(name.to_owned(), object);
        Ok(())
    }

    /// Withdraws figure `name`.
    pub fn withdraw(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Whether nothing is published.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The published figures' names.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The published objects, to read outside the lock.
    pub fn all(&self) -> Vec<(String, Arc<dyn StatusObject>)> {
        self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<dyn StatusObject>>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_read_withdraw_and_names_are_checked() {
        let objects = StatusObjects::default();
        objects.publish("mailbox", Arc::new(|| Ok(3.0))).unwrap();
        objects.publish("broken", Arc::new(|| Err("disk gone".to_string()))).unwrap();
        let read: Vec<_> = objects.all().into_iter().map(|(n, o)| (n, o.read())).collect();
        assert_eq!(read, vec![("broken".into(), Err("disk gone".into())), ("mailbox".into(), Ok(3.0))]);
        objects.withdraw("broken");
        assert_eq!(objects.names(), vec!["mailbox".to_string()]);
        for bad in ["", "Mail", "a b", &"x".repeat(33)] {
            assert!(objects.publish(bad, Arc::new(|| Ok(0.0))).is_err(), "{bad:?}");
        }
    }
}
