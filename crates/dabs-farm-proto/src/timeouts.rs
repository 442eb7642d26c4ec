//! Time-outs that a portion and its host must read alike.

use std::time::Duration;

/// Default lock/timer time-out, used for resource types without their own entry.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// Key of the fallback entry in a node's per-resource time-outs.
pub const DEFAULT_TIMEOUT_KEY: &str = "default";
