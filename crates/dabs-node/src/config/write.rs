//! Writing a configuration back as TOML, through the file layout and `toml`'s serializer.

use std::collections::BTreeMap;
use std::time::Duration;

use super::defaults::{DEFAULT_TIMEOUT, DEFAULT_TIMEOUT_KEY};
use super::file::{
    RawApp, RawBalance, RawClass, RawConfig, RawDns, RawFailover, RawFarm, RawHealth, RawLatency, RawNode,
    RawOperator, RawService, RawSubFarm, unspanned,
};
use super::secret::hex_encode;
use super::types::{
    AppConfig, BalanceConfig, DnsConfig, FarmConfig, LatencyLimits, NodeConfig, NodeSection, OperatorAccess,
    Registry,
};
use crate::health::{Check, HealthConfig};
use crate::zones::{FailoverPolicy, Thresholds};

impl NodeConfig {
    /// Writes the configuration as TOML that parses back to an equal `NodeConfig`.
    ///
    /// Every key is written, defaults included, so the file shows the values in force.
    /// `data_dir` is written as stored (absolute after [`NodeConfig::parse`]), so the output does
    /// not depend on where it is saved. Durations are written in whole milliseconds. The
    /// built-in health services (`mp`, `database`) are not written: reading adds them.
    pub fn to_toml(&self) -> String {
        let mut timeouts: BTreeMap<String, _> =
            self.timeouts.iter().map(|(resource, timeout)| (resource.clone(), ms(*timeout))).collect();
        timeouts.entry(DEFAULT_TIMEOUT_KEY.to_string()).or_insert_with(|| ms(DEFAULT_TIMEOUT));
        let raw = RawConfig {
            farm: unspanned(farm(&self.farm)),
            node: unspanned(node(&self.node)),
            timeouts: Some(timeouts),
            latency: Some(latency(&self.latency)),
            balance: Some(balance(&self.balance)),
            health: Some(health(&self.health)),
            failover: Some(failover(&self.failover)),
            operator: operator(&self.operator),
            dns: Some(dns(&self.dns)),
            service: self.service.as_ref().map(|s| super::file::RawServiceAddress {
                address: string(format!("{}/{}", s.ip, s.prefix)),
                interface: string(&s.interface),
            }),
            vipa: self.vipa.as_ref().map(|s| super::file::RawVipa {
                address: string(format!("{}/{}", s.ip, s.prefix)),
                interface: Some(string(&s.interface)),
            }),
            jobs: Some(super::file::RawJobs {
                compute: Some(self.jobs.compute),
                threads: Some(unspanned(u64::from(self.jobs.threads))),
                balancer: Some(self.jobs.balancer),
                criterion: Some(string(self.jobs.criterion.name())),
                max_fuel: Some(unspanned(self.jobs.max_fuel)),
                memory_mb: Some(unspanned(self.jobs.memory_mb)),
            }),
            subfarm: self.subfarms.iter().map(|f| unspanned(subfarm(f))).collect(),
            app: self.apps.iter().map(|a| unspanned(app(a))).collect(),
        };
        // The layout holds only strings, integers, floats, booleans, arrays and tables, with
        // string keys, all of which TOML can express.
        toml::to_string(&raw).expect("the configuration file layout is always serializable")
    }
}

/// Whole milliseconds, as the `_ms` keys hold them.
fn ms(d: Duration) -> toml::Spanned<u64> {
    unspanned(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn string(s: impl ToString) -> toml::Spanned<String> {
    unspanned(s.to_string())
}

fn farm(f: &FarmConfig) -> RawFarm {
    RawFarm {
        name: string(&f.name),
        group: string(f.group),
        interface: Some(string(f.interface)),
        seeds: f.seeds.iter().map(string).collect(),
        secret: f.secret.as_deref().map(|s| string(hex_encode(s))),
        secret_file: None,
        registry: Some(string(match f.registry {
            Registry::Multicast => "multicast",
            Registry::Etcd { .. } => "etcd",
        })),
        etcd: f.registry.etcd().unwrap_or_default().iter().map(string).collect(),
    }
}

fn node(n: &NodeSection) -> RawNode {
    RawNode {
        name: string(&n.name),
        bind: string(n.bind),
        data_dir: string(n.data_dir.to_string_lossy()),
        operator: n.operator.map(string),
        announce_interval_ms: Some(ms(n.announce_interval)),
        lease_ms: Some(ms(n.lease)),
        accept_encryption: Some(n.accept_encryption),
        tcp: Some(n.tcp),
        max_portions: Some(unspanned(u64::from(n.max_portions))),
    }
}

/// `[operator]`, left out when it says nothing (no token, reads as the address implies). The
/// token is written as it is: a configuration kept where others may read it must have its
/// token taken out first, as the node does before storing its own.
fn operator(o: &OperatorAccess) -> Option<RawOperator> {
    (o.token.is_some() || o.open_reads.is_some()).then(|| RawOperator {
        token: o.token.as_ref().map(|t| string(t.expose())),
        token_file: None,
        open_reads: o.open_reads,
    })
}

fn latency(l: &LatencyLimits) -> RawLatency {
    RawLatency {
        max_message_latency_ms: Some(ms(l.max_message_latency)),
        low_water_ms: Some(ms(l.low_water)),
    }
}

fn balance(b: &BalanceConfig) -> RawBalance {
    RawBalance {
        prefer_local: Some(b.prefer_local),
        local_headroom_cpu_percent: Some(unspanned(b.local_headroom_cpu_percent)),
        max_local_portions: Some(b.max_local_portions),
        spawn_cooldown_ms: Some(ms(b.spawn_cooldown)),
        retire_idle_after_ms: Some(ms(b.retire_idle_after)),
    }
}

fn health(h: &HealthConfig) -> RawHealth {
    let service = h
        .services
        .iter()
        .filter_map(|s| {
            let (tcp, command) = match &s.check {
                Check::Mp | Check::Database => return None, // built in
                Check::Tcp(addr) => (Some(string(addr)), None),
                Check::Command(argv) => (None, Some(unspanned(argv.clone()))),
            };
            Some(unspanned(RawService {
                name: string(&s.name),
                tcp,
                command,
                mandatory: s.mandatory,
                weight: Some(unspanned(u64::from(s.weight))),
            }))
        })
        .collect();
    RawHealth {
        interval_ms: Some(ms(h.interval)),
        check_timeout_ms: Some(ms(h.check_timeout)),
        queue_limit: Some(unspanned(h.queue_limit)),
        include_cpu: Some(h.include_cpu),
        service,
    }
}

/// The three thresholds as `(failover, connection, return)` keys' values.
type Written = (Option<toml::Spanned<u64>>, Option<toml::Spanned<u64>>, Option<toml::Spanned<u64>>);

fn thresholds(t: &Thresholds) -> Written {
    let score = |v: u8| Some(unspanned(u64::from(v)));
    (score(t.failover), score(t.connection), score(t.returning))
}

fn failover(f: &FailoverPolicy) -> RawFailover {
    let (failover_threshold, connection_threshold, return_threshold) = thresholds(&f.thresholds);
    let class = f
        .classes
        .iter()
        .map(|c| {
            let (failover_threshold, connection_threshold, return_threshold) = thresholds(&c.thresholds);
            unspanned(RawClass {
                name: string(&c.name),
                failover_threshold,
                connection_threshold,
                return_threshold,
            })
        })
        .collect();
    RawFailover {
        failover_threshold,
        connection_threshold,
        return_threshold,
        first: f.first.iter().map(string).collect(),
        device_groups: f.device_groups.clone(),
        batch: Some(unspanned(f.batch as u64)),
        batch_interval_ms: Some(ms(f.batch_interval)),
        return_batch: Some(unspanned(f.return_batch as u64)),
        return_interval_ms: Some(ms(f.return_interval)),
        class,
    }
}

fn app(a: &AppConfig) -> RawApp {
    RawApp {
        name: string(&a.name),
        start_at_init: a.start_at_init,
        subgroup: a.subgroup.iter().map(string).collect(),
        min_free_memory_mb: a.min_free_memory_mb,
        max_cpu_percent: Some(unspanned(a.max_cpu_percent)),
        max_sessions_per_portion: Some(unspanned(a.max_sessions_per_portion)),
        max_workers: a.max_workers.map(|n| unspanned(u64::from(n))),
        command: (!a.command.is_empty()).then(|| unspanned(a.command.clone())),
        policy: Some(string(&a.policy)),
        collect_interval_ms: Some(ms(a.collect_interval)),
    }
}

fn dns(d: &DnsConfig) -> RawDns {
    RawDns {
        enabled: Some(d.enabled),
        bind: d.bind.map(string),
        zone: Some(string(&d.zone)),
        ttl_s: Some(unspanned(u64::from(d.ttl_s))),
    }
}

fn subfarm(f: &crate::policy::SubFarm) -> RawSubFarm {
    RawSubFarm {
        name: string(&f.name),
        nodes: f.nodes.iter().map(string).collect(),
        policy: string(&f.policy),
    }
}
