//! Validation of the `[health]` and `[failover]` tables (R-FO-1..4): services, thresholds,
//! client classes and the pace of moving clients.

use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::defaults::{
    BATCH_INTERVAL_RANGE_MS, BATCH_RANGE, CHECK_TIMEOUT_RANGE_MS, DEFAULT_SERVICE_WEIGHT,
    HEALTH_INTERVAL_RANGE_MS, QUEUE_LIMIT_RANGE, RETURN_INTERVAL_RANGE_MS,
};
use super::error::ConfigError;
use super::file::{RawFailover, RawHealth};
use super::read::Cx;
use crate::health::{Check, HealthConfig, Service};
use crate::zones::{ClientClass, FailoverPolicy, Thresholds};

/// The three thresholds as written (in `[failover]` and each `[[failover.class]]`).
struct RawThresholds<'a> {
    failover: &'a Option<Spanned<u64>>,
    connection: &'a Option<Spanned<u64>>,
    returning: &'a Option<Spanned<u64>>,
}

impl Cx<'_> {
    /// `[health]`; the built-in services `mp` and `database` come first.
    pub(crate) fn health(&self, raw: Option<RawHealth>) -> Result<HealthConfig, ConfigError> {
        let mut cfg = HealthConfig::default();
        let Some(raw) = raw else { return Ok(cfg) };
        if let Some(v) = &raw.interval_ms {
            cfg.interval = self.ms_in(v, "health.interval_ms", HEALTH_INTERVAL_RANGE_MS)?;
        }
        if let Some(v) = &raw.check_timeout_ms {
            cfg.check_timeout = self.ms_in(v, "health.check_timeout_ms", CHECK_TIMEOUT_RANGE_MS)?;
        }
        if let Some(v) = &raw.queue_limit {
            cfg.queue_limit = self.int_in(v, "health.queue_limit", QUEUE_LIMIT_RANGE)?;
        }
        cfg.include_cpu = raw.include_cpu.unwrap_or(cfg.include_cpu);
        for (index, s) in raw.service.iter().enumerate() {
            let s = s.get_ref();
            let key = format!("health.service[{index}]");
            let name = self.name(&s.name, &format!("{key}.name"))?;
            if cfg.services.iter().any(|k| k.name == name) {
                return Err(ConfigError::DuplicateService { at: self.at(&s.name), index, name });
            }
            let check = match (&s.tcp, &s.command) {
                (Some(tcp), None) => Check::Tcp(self.socket_addr(tcp, &format!("{key}.tcp"))?),
                (None, Some(argv)) if !argv.get_ref().is_empty() => Check::Command(argv.get_ref().clone()),
                (None, Some(argv)) => return Err(ConfigError::EmptyCommand { at: self.at(argv), index }),
                _ => return Err(ConfigError::ServiceCheck { at: self.at(&s.name), index }),
            };
            let weight = match &s.weight {
                Some(w) => self.score(w, &format!("{key}.weight"))?,
                None => DEFAULT_SERVICE_WEIGHT,
            };
            cfg.services.push(Service { name, check, mandatory: s.mandatory, weight });
        }
        Ok(cfg)
    }

    /// Thresholds under `key` (with its trailing dot); unset ones come from `base`.
    fn thresholds(
        &self,
        raw: &RawThresholds<'_>,
        key: &str,
        base: Thresholds,
    ) -> Result<Thresholds, ConfigError> {
        let get = |v: &Option<Spanned<u64>>, name: &str, default: u8| match v {
            Some(v) => self.score(v, &format!("{key}{name}")),
            None => Ok(default),
        };
        let failover = get(raw.failover, "failover_threshold", base.failover)?;
        let connection = get(raw.connection, "connection_threshold", base.connection)?;
        // Deferred clients come back no earlier than new ones are let in, unless told otherwise.
        let returning = get(raw.returning, "return_threshold", base.returning.max(connection))?;
        Ok(Thresholds { failover, connection, returning })
    }

    /// `[failover]` and its `[[failover.class]]` records.
    pub(crate) fn failover(&self, raw: Option<RawFailover>) -> Result<FailoverPolicy, ConfigError> {
        let mut cfg = FailoverPolicy::default();
        let Some(raw) = raw else { return Ok(cfg) };
        let written = RawThresholds {
            failover: &raw.failover_threshold,
            connection: &raw.connection_threshold,
            returning: &raw.return_threshold,
        };
        cfg.thresholds = self.thresholds(&written, "failover.", cfg.thresholds)?;
        for (index, f) in raw.first.iter().enumerate() {
            let text = f.get_ref();
            if text.parse::<SocketAddr>().is_err() && text.parse::<IpAddr>().is_err() {
                return Err(ConfigError::NotClientAddr { at: self.at(f), index, value: text.clone() });
            }
            cfg.first.push(text.clone());
        }
        cfg.device_groups = raw.device_groups;
        if let Some(v) = &raw.batch {
            cfg.batch = to_usize(self.int_in(v, "failover.batch", BATCH_RANGE)?);
        }
        if let Some(v) = &raw.batch_interval_ms {
            cfg.batch_interval = self.ms_in(v, "failover.batch_interval_ms", BATCH_INTERVAL_RANGE_MS)?;
        }
        if let Some(v) = &raw.return_batch {
            cfg.return_batch = to_usize(self.int_in(v, "failover.return_batch", BATCH_RANGE)?);
        }
        if let Some(v) = &raw.return_interval_ms {
            cfg.return_interval = self.ms_in(v, "failover.return_interval_ms", RETURN_INTERVAL_RANGE_MS)?;
        }
        for (index, c) in raw.class.iter().enumerate() {
            let c = c.get_ref();
            let key = format!("failover.class[{index}]");
            let name = self.name(&c.name, &format!("{key}.name"))?;
            if cfg.classes.iter().any(|k| k.name == name) {
                return Err(ConfigError::DuplicateClass { at: self.at(&c.name), index, name });
            }
            let written = RawThresholds {
                failover: &c.failover_threshold,
                connection: &c.connection_threshold,
                returning: &c.return_threshold,
            };
            let thresholds = self.thresholds(&written, &format!("{key}."), cfg.thresholds)?;
            cfg.classes.push(ClientClass { name, thresholds });
        }
        Ok(cfg)
    }
}

/// A batch size, already checked to be at most [`BATCH_RANGE`]'s upper bound.
fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("batch sizes are at most 100000")
}
