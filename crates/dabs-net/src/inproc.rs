//! The in-process partition: endpoints in one process reach each other through queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use tokio::sync::mpsc;

/// A datagram between endpoints of this process: (sender id, bytes).
pub(crate) type InprocDatagram = (u64, Vec<u8>);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static REGISTRY: LazyLock<Mutex<HashMap<u64, mpsc::UnboundedSender<InprocDatagram>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Registers a new in-process endpoint; returns its id and its inbox.
pub(crate) fn register() -> (u64, mpsc::UnboundedReceiver<InprocDatagram>) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::unbounded_channel();
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).insert(id, tx);
    (id, rx)
}

/// Removes an endpoint (when its driver stops).
pub(crate) fn unregister(id: u64) {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// True when an endpoint with that id runs in this process.
pub(crate) fn is_live(id: u64) -> bool {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id)
}

/// Delivers a datagram to an in-process endpoint; false if it is gone.
pub(crate) fn send(from: u64, to: u64, data: Vec<u8>) -> bool {
    let tx = REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).get(&to).cloned();
    tx.is_some_and(|tx| tx.send((from, data)).is_ok())
}
