//! The node configuration file (`dabs node --config FILE`): reading, validation and writing.
//!
//! The file is TOML; the documented example is `docs/node.example.toml`. A bad file is refused
//! with a [`ConfigError`] naming the file, the line and column of the offending value, the key
//! and what was expected, so an operator can fix it without reading code.
//!
//! The parts, by role: `types` holds the validated values ([`NodeConfig`] and its sections),
//! `defaults` the values of keys left out and the allowed ranges, `file` the file's layout
//! (serde structs shared by reading and writing, so the key names exist once), `read` parsing
//! and error positions, `validate` and `validate_failover` the checks, `write`
//! [`NodeConfig::to_toml`], `error` the typed [`ConfigError`].

mod defaults;
mod error;
mod file;
mod read;
mod secret;
mod types;
mod validate;
mod validate_failover;
mod validate_policy;
mod write;

pub use defaults::{COLLECT_INTERVAL_RANGE_MS, DEFAULT_COLLECT_INTERVAL};
pub use defaults::{
    DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_INTERFACE, DEFAULT_LEASE, DEFAULT_LOW_WATER, DEFAULT_MAX_CPU_PERCENT,
    DEFAULT_MAX_MESSAGE_LATENCY, DEFAULT_MAX_PORTIONS, DEFAULT_MAX_SESSIONS_PER_PORTION, DEFAULT_TIMEOUT,
    DEFAULT_TIMEOUT_KEY, RETIRE_IDLE_RANGE_MS,
};
pub use error::{ConfigError, Location, SecretError, TokenError};
pub use types::{
    AppConfig, BalanceConfig, DnsConfig, FarmConfig, JobsConfig, LatencyLimits, NodeConfig, NodeSection,
    OperatorAccess, OperatorToken, Registry, ServiceAddress,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_operator;
#[cfg(test)]
mod tests_write;
