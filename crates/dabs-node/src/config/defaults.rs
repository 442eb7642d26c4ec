//! The values keys take when they are left out, and the ranges validation allows.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::types::{BalanceConfig, LatencyLimits};

/// Default IPv4 interface for multicast.
pub const DEFAULT_INTERFACE: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Default interval between membership announcements.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(250);
/// Default membership lease.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(1500);
// Shared with the portion frameworks, which read the same table of time-outs.
pub use dabs_farm_proto::timeouts::{DEFAULT_TIMEOUT, DEFAULT_TIMEOUT_KEY};
/// Default high-water mark of message latency.
pub const DEFAULT_MAX_MESSAGE_LATENCY: Duration = Duration::from_millis(200);
/// Default low-water mark of message latency.
pub const DEFAULT_LOW_WATER: Duration = Duration::from_millis(100);
/// Default largest CPU use at which a server is still eligible for an application.
pub const DEFAULT_MAX_CPU_PERCENT: f64 = 100.0;
/// Default interval at which the server monitor reads an application's status objects.
pub const DEFAULT_COLLECT_INTERVAL: Duration = Duration::from_millis(250);
/// `app.collect_interval_ms`: a status object silent for longer than 3 intervals counts as
/// silent, so the shortest is a few announce intervals' worth of reads per second.
pub const COLLECT_INTERVAL_RANGE_MS: (u64, u64) = (50, 10_000);
/// Default number of sessions at which a portion stops being "available".
pub const DEFAULT_MAX_SESSIONS_PER_PORTION: u64 = 1000;

/// `node.max_portions` when left out: portions one node runs at most, all applications.
pub const DEFAULT_MAX_PORTIONS: u32 = 256;
/// `node.max_portions`: at least one, at most one per portion queue (16..=65535).
pub(crate) const MAX_PORTIONS_RANGE: (u64, u64) = (1, 65_520);

/// `node.accept_encryption` when left out.
pub(crate) const DEFAULT_ACCEPT_ENCRYPTION: bool = true;
/// `health.service[].weight` when left out.
pub(crate) const DEFAULT_SERVICE_WEIGHT: u8 = 50;

/// Fewest bytes of a farm secret.
pub(crate) const MIN_SECRET_BYTES: usize = 16;
/// Inclusive ranges, `(lowest, highest)`; the `_MS` ones are milliseconds.
pub(crate) const ANNOUNCE_RANGE_MS: (u64, u64) = (50, 5000);
/// Longest `node.lease_ms`; the shortest is more than twice the announce interval.
pub(crate) const MAX_LEASE_MS: u64 = 60_000;
pub(crate) const TIMEOUT_RANGE_MS: (u64, u64) = (1, 600_000);
pub(crate) const SESSIONS_RANGE: (u64, u64) = (1, 1_000_000);
/// Most clients of a portion run as a program: its sessions all come from the node's one
/// local socket, and MP numbers one peer's sessions 1..=255 (one kept spare for control).
pub(crate) const PROGRAM_MAX_SESSIONS: u64 = 254;
pub(crate) const SPAWN_COOLDOWN_RANGE_MS: (u64, u64) = (10, 600_000);
/// `[balance] retire_idle_after_ms`: 0 (never) up to a day.
pub const RETIRE_IDLE_RANGE_MS: (u64, u64) = (0, 86_400_000);
pub(crate) const HEALTH_INTERVAL_RANGE_MS: (u64, u64) = (50, 60_000);
pub(crate) const CHECK_TIMEOUT_RANGE_MS: (u64, u64) = (10, 60_000);
pub(crate) const QUEUE_LIMIT_RANGE: (u64, u64) = (1, 1_000_000);
/// Service weights and health thresholds.
pub(crate) const SCORE_RANGE: (u64, u64) = (0, 100);
/// `failover.batch` and `failover.return_batch`.
pub(crate) const BATCH_RANGE: (u64, u64) = (1, 100_000);
pub(crate) const BATCH_INTERVAL_RANGE_MS: (u64, u64) = (1, 60_000);
pub(crate) const RETURN_INTERVAL_RANGE_MS: (u64, u64) = (1, 600_000);

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            prefer_local: true,
            local_headroom_cpu_percent: 85.0,
            max_local_portions: 0,
            spawn_cooldown: Duration::from_secs(2),
            retire_idle_after: Duration::from_secs(60),
        }
    }
}

impl Default for LatencyLimits {
    fn default() -> Self {
        LatencyLimits { max_message_latency: DEFAULT_MAX_MESSAGE_LATENCY, low_water: DEFAULT_LOW_WATER }
    }
}
