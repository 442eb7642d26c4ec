//! The file's layout: one serde struct per table, read by `toml::from_str` and written by
//! `toml::to_string`, so the key names are defined once for both directions.
//!
//! Values are [`Spanned`] so validation can point at their line; when writing, the spans are
//! empty and unused. Every table refuses unknown keys, so a typo is an error rather than a
//! silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// `value` with an empty span, for writing.
pub(crate) fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(0..0, value)
}

/// The whole file.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawConfig {
    pub(crate) farm: Spanned<RawFarm>,
    pub(crate) node: Spanned<RawNode>,
    pub(crate) timeouts: Option<BTreeMap<String, Spanned<u64>>>,
    pub(crate) latency: Option<RawLatency>,
    pub(crate) balance: Option<RawBalance>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) failover: Option<RawFailover>,
    pub(crate) operator: Option<RawOperator>,
    pub(crate) dns: Option<RawDns>,
    pub(crate) service: Option<RawServiceAddress>,
    pub(crate) vipa: Option<RawVipa>,
    pub(crate) jobs: Option<RawJobs>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) subfarm: Vec<Spanned<RawSubFarm>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) app: Vec<Spanned<RawApp>>,
}

/// `[dns]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawDns {
    pub(crate) enabled: Option<bool>,
    pub(crate) bind: Option<Spanned<String>>,
    pub(crate) zone: Option<Spanned<String>>,
    pub(crate) ttl_s: Option<Spanned<u64>>,
}

/// `[jobs]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawJobs {
    pub(crate) compute: Option<bool>,
    pub(crate) threads: Option<Spanned<u64>>,
    pub(crate) balancer: Option<bool>,
    pub(crate) criterion: Option<Spanned<String>>,
    pub(crate) max_fuel: Option<Spanned<u64>>,
    pub(crate) memory_mb: Option<Spanned<u64>>,
}

/// `[service]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawServiceAddress {
    pub(crate) address: Spanned<String>,
    pub(crate) interface: Spanned<String>,
}

/// `[vipa]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawVipa {
    pub(crate) address: Spanned<String>,
    pub(crate) interface: Option<Spanned<String>>,
}

/// `[[subfarm]]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSubFarm {
    pub(crate) name: Spanned<String>,
    pub(crate) nodes: Vec<Spanned<String>>,
    pub(crate) policy: Spanned<String>,
}

/// `[farm]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawFarm {
    pub(crate) name: Spanned<String>,
    pub(crate) group: Spanned<String>,
    pub(crate) interface: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) seeds: Vec<Spanned<String>>,
    pub(crate) secret: Option<Spanned<String>>,
    pub(crate) secret_file: Option<Spanned<String>>,
    pub(crate) registry: Option<Spanned<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) etcd: Vec<Spanned<String>>,
}

/// `[node]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawNode {
    pub(crate) name: Spanned<String>,
    pub(crate) bind: Spanned<String>,
    pub(crate) data_dir: Spanned<String>,
    pub(crate) operator: Option<Spanned<String>>,
    pub(crate) announce_interval_ms: Option<Spanned<u64>>,
    pub(crate) lease_ms: Option<Spanned<u64>>,
    pub(crate) accept_encryption: Option<bool>,
    pub(crate) tcp: Option<bool>,
    pub(crate) max_portions: Option<Spanned<u64>>,
}

/// `[operator]`: who may use the operator interface.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawOperator {
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) token_file: Option<Spanned<String>>,
    pub(crate) open_reads: Option<bool>,
}

/// `[latency]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawLatency {
    pub(crate) max_message_latency_ms: Option<Spanned<u64>>,
    pub(crate) low_water_ms: Option<Spanned<u64>>,
}

/// `[balance]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawBalance {
    pub(crate) prefer_local: Option<bool>,
    pub(crate) local_headroom_cpu_percent: Option<Spanned<f64>>,
    pub(crate) max_local_portions: Option<u32>,
    pub(crate) spawn_cooldown_ms: Option<Spanned<u64>>,
    pub(crate) retire_idle_after_ms: Option<Spanned<u64>>,
}

/// `[health]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawHealth {
    pub(crate) interval_ms: Option<Spanned<u64>>,
    pub(crate) check_timeout_ms: Option<Spanned<u64>>,
    pub(crate) queue_limit: Option<Spanned<u64>>,
    pub(crate) include_cpu: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) service: Vec<Spanned<RawService>>,
}

/// `[[health.service]]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawService {
    pub(crate) name: Spanned<String>,
    pub(crate) tcp: Option<Spanned<String>>,
    pub(crate) command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) mandatory: bool,
    pub(crate) weight: Option<Spanned<u64>>,
}

/// `[failover]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawFailover {
    pub(crate) failover_threshold: Option<Spanned<u64>>,
    pub(crate) connection_threshold: Option<Spanned<u64>>,
    pub(crate) return_threshold: Option<Spanned<u64>>,
    #[serde(default)]
    pub(crate) first: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) device_groups: Vec<String>,
    pub(crate) batch: Option<Spanned<u64>>,
    pub(crate) batch_interval_ms: Option<Spanned<u64>>,
    pub(crate) return_batch: Option<Spanned<u64>>,
    pub(crate) return_interval_ms: Option<Spanned<u64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) class: Vec<Spanned<RawClass>>,
}

/// `[[failover.class]]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawClass {
    pub(crate) name: Spanned<String>,
    pub(crate) failover_threshold: Option<Spanned<u64>>,
    pub(crate) connection_threshold: Option<Spanned<u64>>,
    pub(crate) return_threshold: Option<Spanned<u64>>,
}

/// `[[app]]`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawApp {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) start_at_init: bool,
    #[serde(default)]
    pub(crate) subgroup: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) min_free_memory_mb: u64,
    pub(crate) max_cpu_percent: Option<Spanned<f64>>,
    pub(crate) max_sessions_per_portion: Option<Spanned<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_workers: Option<Spanned<u64>>,
    /// A program (and its arguments) to run as the server portion, instead of a built-in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) command: Option<Spanned<Vec<String>>>,
    pub(crate) policy: Option<Spanned<String>>,
    pub(crate) collect_interval_ms: Option<Spanned<u64>>,
}
