//! Validation of the `[farm]`, `[node]`, `[timeouts]`, `[latency]`, `[balance]` and `[[app]]`
//! tables, and of the values they share (names, addresses, ranges). Each check fails with the
//! [`ConfigError`] variant that names it; defaults fill in keys left out.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Spanned;

use super::defaults::{
    ANNOUNCE_RANGE_MS, DEFAULT_ACCEPT_ENCRYPTION, DEFAULT_ANNOUNCE_INTERVAL, DEFAULT_INTERFACE,
    DEFAULT_LEASE, DEFAULT_LOW_WATER, DEFAULT_MAX_CPU_PERCENT, DEFAULT_MAX_MESSAGE_LATENCY,
    DEFAULT_MAX_PORTIONS, DEFAULT_MAX_SESSIONS_PER_PORTION, DEFAULT_TIMEOUT, DEFAULT_TIMEOUT_KEY,
    MAX_LEASE_MS, MAX_PORTIONS_RANGE, PROGRAM_MAX_SESSIONS, RETIRE_IDLE_RANGE_MS, SCORE_RANGE,
    SESSIONS_RANGE, SPAWN_COOLDOWN_RANGE_MS, TIMEOUT_RANGE_MS,
};
use super::error::{ConfigError, Location};
use super::file::{RawApp, RawBalance, RawConfig, RawFarm, RawLatency, RawNode, RawOperator};
use super::read::{Cx, toml_key};
use super::secret::parse_secret;
use super::types::{
    AppConfig, BalanceConfig, FarmConfig, LatencyLimits, NodeConfig, NodeSection, OperatorAccess,
    OperatorToken, Registry,
};

impl Cx<'_> {
    /// The whole file, validated, with defaults filled in.
    pub(crate) fn validate(&self, raw: RawConfig) -> Result<NodeConfig, ConfigError> {
        let bind_at = self.at(&raw.node.get_ref().bind);
        let farm = self.farm(raw.farm.into_inner())?;
        let node = raw.node.into_inner();
        let operator_at = node.operator.as_ref().map(|v| self.at(v));
        let node = self.node(node)?;
        let mut timeouts = BTreeMap::new();
        for (resource, ms) in raw.timeouts.unwrap_or_default() {
            let key = format!("timeouts.{}", toml_key(&resource));
            let timeout = self.ms_in(&ms, &key, TIMEOUT_RANGE_MS)?;
            timeouts.insert(resource, timeout);
        }
        timeouts.entry(DEFAULT_TIMEOUT_KEY.to_string()).or_insert(DEFAULT_TIMEOUT);
        let latency = self.latency(raw.latency)?;
        let balance = self.balance(raw.balance)?;
        let mut apps = Vec::with_capacity(raw.app.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, app) in raw.app.into_iter().enumerate() {
            let app = app.into_inner();
            if let Some(&first_line) = seen.get(app.name.get_ref()) {
                return Err(ConfigError::DuplicateApp {
                    at: self.at(&app.name),
                    index,
                    name: app.name.get_ref().clone(),
                    first_line,
                });
            }
            seen.insert(app.name.get_ref().clone(), self.line_of(&app.name));
            apps.push(self.app(app, index)?);
        }
        let health = self.health(raw.health)?;
        let failover = self.failover(raw.failover)?;
        let operator = self.operator(raw.operator, &node, operator_at)?;
        let dns = self.dns(raw.dns, &farm.name)?;
        let subfarms = self.subfarms(raw.subfarm)?;
        let service = raw.service.map(|s| self.service(s, &node)).transpose()?;
        let vipa = raw.vipa.map(|v| self.vipa(v, &node)).transpose()?;
        let jobs = self.jobs(raw.jobs)?;
        let config = NodeConfig {
            farm,
            node,
            timeouts,
            latency,
            apps,
            balance,
            health,
            failover,
            operator,
            dns,
            subfarms,
            service,
            vipa,
            jobs,
        };
        // Without a secret anyone who can reach the node could steer it: only on this host.
        if config.farm.secret.is_none() && !config.loopback_only() {
            return Err(ConfigError::SecretRequired { at: bind_at, bind: config.node.bind });
        }
        Ok(config)
    }

    /// The `[operator]` section. `node.operator` (at `operator_at`) off loopback needs a token.
    fn operator(
        &self,
        raw: Option<RawOperator>,
        node: &NodeSection,
        operator_at: Option<Location>,
    ) -> Result<OperatorAccess, ConfigError> {
        let raw = raw.unwrap_or(RawOperator { token: None, token_file: None, open_reads: None });
        let token = match (&raw.token, &raw.token_file) {
            (Some(_), Some(file)) => return Err(ConfigError::TokenTwice { at: self.at(file) }),
            (Some(token), None) => Some(
                OperatorToken::new(token.get_ref())
                    .map_err(|source| ConfigError::BadToken { at: self.at(token), source })?,
            ),
            (None, Some(file)) => {
                let path = self.resolve(file.get_ref());
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(source) => {
                        return Err(ConfigError::TokenFileUnreadable { at: self.at(file), path, source });
                    }
                };
                match OperatorToken::new(&text) {
                    Ok(token) => Some(token),
                    Err(source) => return Err(ConfigError::BadTokenFile { at: self.at(file), path, source }),
                }
            }
            (None, None) => None,
        };
        if let (Some(addr), Some(at), None) = (node.operator, operator_at, &token)
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::OperatorWithoutToken { at, addr });
        }
        Ok(OperatorAccess { token, open_reads: raw.open_reads })
    }

    fn farm(&self, raw: RawFarm) -> Result<FarmConfig, ConfigError> {
        let name = self.name(&raw.name, "farm.name")?;
        let group = match raw.group.get_ref().parse::<SocketAddr>() {
            Ok(SocketAddr::V4(group)) => group,
            _ => {
                return Err(ConfigError::GroupNotIpv4 {
                    at: self.at(&raw.group),
                    value: raw.group.into_inner(),
                });
            }
        };
        if !group.ip().is_multicast() {
            return Err(ConfigError::GroupNotMulticast { at: self.at(&raw.group), group });
        }
        if group.port() == 0 {
            return Err(ConfigError::GroupPortZero { at: self.at(&raw.group), group });
        }
        let interface = match &raw.interface {
            None => DEFAULT_INTERFACE,
            Some(v) => v.get_ref().parse::<Ipv4Addr>().map_err(|_| ConfigError::NotIpv4 {
                at: self.at(v),
                key: "farm.interface".to_string(),
                value: v.get_ref().clone(),
            })?,
        };
        let mut seeds = Vec::with_capacity(raw.seeds.len());
        for (i, seed) in raw.seeds.iter().enumerate() {
            let key = format!("farm.seeds[{i}]");
            let addr = self.socket_addr(seed, &key)?;
            if addr.port() == 0 || addr.ip().is_multicast() || addr.ip().is_unspecified() {
                return Err(ConfigError::NotNodeAddr { at: self.at(seed), key, addr });
            }
            seeds.push(addr);
        }
        let secret = match (&raw.secret, &raw.secret_file) {
            (Some(_), Some(file)) => return Err(ConfigError::SecretTwice { at: self.at(file) }),
            (Some(secret), None) => Some(
                parse_secret(secret.get_ref())
                    .map_err(|source| ConfigError::BadSecret { at: self.at(secret), source })?,
            ),
            (None, Some(file)) => {
                let path = self.resolve(file.get_ref());
                let text = match std::fs::read_to_string(&path) {
                    Ok(text) => text,
                    Err(source) => {
                        return Err(ConfigError::SecretFileUnreadable { at: self.at(file), path, source });
                    }
                };
                match parse_secret(&text) {
                    Ok(secret) => Some(secret),
                    Err(source) => {
                        return Err(ConfigError::BadSecretFile { at: self.at(file), path, source });
                    }
                }
            }
            (None, None) => None,
        };
        let registry = self.registry(&raw.registry, &raw.etcd)?;
        Ok(FarmConfig { name, group, interface, seeds, secret, registry })
    }

    /// `farm.registry` and `farm.etcd`: endpoints only with etcd, and etcd only in a build
    /// that has it.
    fn registry(
        &self,
        registry: &Option<Spanned<String>>,
        etcd: &[Spanned<String>],
    ) -> Result<Registry, ConfigError> {
        let kind = registry.as_ref().map(|r| r.get_ref().as_str()).unwrap_or("multicast");
        match kind {
            "multicast" => match etcd.first() {
                Some(first) => Err(ConfigError::EtcdWithoutRegistry { at: self.at(first) }),
                None => Ok(Registry::Multicast),
            },
            "etcd" => {
                let at = registry.as_ref().map(|r| self.at(r)).unwrap_or_else(|| self.location(None));
                if !cfg!(feature = "etcd") {
                    return Err(ConfigError::EtcdNotBuilt { at });
                }
                if etcd.is_empty() {
                    return Err(ConfigError::EtcdEndpointsMissing { at });
                }
                let mut endpoints = Vec::with_capacity(etcd.len());
                for (index, e) in etcd.iter().enumerate() {
                    let url = e.get_ref();
                    let host_port = url.strip_prefix("http://").unwrap_or(url);
                    if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
                        return Err(ConfigError::BadEtcdEndpoint {
                            at: self.at(e),
                            index,
                            value: url.clone(),
                        });
                    }
                    endpoints.push(format!("http://{host_port}"));
                }
                Ok(Registry::Etcd { endpoints })
            }
            other => Err(ConfigError::BadRegistry {
                at: registry.as_ref().map(|r| self.at(r)).unwrap_or_else(|| self.location(None)),
                value: other.to_owned(),
            }),
        }
    }

    fn node(&self, raw: RawNode) -> Result<NodeSection, ConfigError> {
        let name = self.name(&raw.name, "node.name")?;
        let bind = self.socket_addr(&raw.bind, "node.bind")?;
        if raw.data_dir.get_ref().is_empty() {
            return Err(ConfigError::EmptyDataDir { at: self.at(&raw.data_dir) });
        }
        let data_dir = self.resolve(raw.data_dir.get_ref());
        let operator = raw.operator.as_ref().map(|v| self.socket_addr(v, "node.operator")).transpose()?;
        let announce_interval = match &raw.announce_interval_ms {
            Some(v) => self.ms_in(v, "node.announce_interval_ms", ANNOUNCE_RANGE_MS)?,
            None => DEFAULT_ANNOUNCE_INTERVAL,
        };
        let lease = raw.lease_ms.as_ref().map_or(DEFAULT_LEASE, ms);
        if lease <= announce_interval * 2 || lease > Duration::from_millis(MAX_LEASE_MS) {
            // Without an explicit lease_ms the default is what clashes; point at the interval.
            let at = match (&raw.lease_ms, &raw.announce_interval_ms) {
                (Some(v), _) | (None, Some(v)) => self.at(v),
                (None, None) => unreachable!("the default lease fits the default announce interval"),
            };
            return Err(ConfigError::LeaseOutOfRange {
                at,
                lease_ms: millis(lease),
                twice_announce_ms: millis(announce_interval * 2),
                max_ms: MAX_LEASE_MS,
                defaulted: raw.lease_ms.is_none(),
            });
        }
        let accept_encryption = raw.accept_encryption.unwrap_or(DEFAULT_ACCEPT_ENCRYPTION);
        let tcp = raw.tcp.unwrap_or(false);
        let max_portions = match &raw.max_portions {
            Some(v) => self.int_in(v, "node.max_portions", MAX_PORTIONS_RANGE)? as u32,
            None => DEFAULT_MAX_PORTIONS,
        };
        Ok(NodeSection {
            name,
            bind,
            data_dir,
            operator,
            announce_interval,
            lease,
            accept_encryption,
            tcp,
            max_portions,
        })
    }

    fn latency(&self, raw: Option<RawLatency>) -> Result<LatencyLimits, ConfigError> {
        let Some(raw) = raw else { return Ok(LatencyLimits::default()) };
        let max = raw.max_message_latency_ms.as_ref().map_or(DEFAULT_MAX_MESSAGE_LATENCY, ms);
        let low = raw.low_water_ms.as_ref().map_or(DEFAULT_LOW_WATER, ms);
        if low >= max {
            // Point at low_water_ms unless it is the default and only the maximum was set.
            let at = match (&raw.low_water_ms, &raw.max_message_latency_ms) {
                (Some(v), _) | (None, Some(v)) => self.at(v),
                (None, None) => unreachable!("the default latency limits are ordered"),
            };
            return Err(ConfigError::LowWaterNotBelowMax {
                at,
                low_water_ms: millis(low),
                max_message_latency_ms: millis(max),
            });
        }
        Ok(LatencyLimits { max_message_latency: max, low_water: low })
    }

    fn balance(&self, raw: Option<RawBalance>) -> Result<BalanceConfig, ConfigError> {
        let d = BalanceConfig::default();
        let Some(raw) = raw else { return Ok(d) };
        let headroom = match &raw.local_headroom_cpu_percent {
            Some(v) => self.percent(v, "balance.local_headroom_cpu_percent")?,
            None => d.local_headroom_cpu_percent,
        };
        let cooldown = match &raw.spawn_cooldown_ms {
            // Checked as a plain integer: its message says no unit, as it always has.
            Some(v) => {
                Duration::from_millis(self.int_in(v, "balance.spawn_cooldown_ms", SPAWN_COOLDOWN_RANGE_MS)?)
            }
            None => d.spawn_cooldown,
        };
        let retire = match &raw.retire_idle_after_ms {
            Some(v) => {
                Duration::from_millis(self.int_in(v, "balance.retire_idle_after_ms", RETIRE_IDLE_RANGE_MS)?)
            }
            None => d.retire_idle_after,
        };
        Ok(BalanceConfig {
            prefer_local: raw.prefer_local.unwrap_or(d.prefer_local),
            local_headroom_cpu_percent: headroom,
            max_local_portions: raw.max_local_portions.unwrap_or(d.max_local_portions),
            spawn_cooldown: cooldown,
            retire_idle_after: retire,
        })
    }

    fn app(&self, raw: RawApp, i: usize) -> Result<AppConfig, ConfigError> {
        let name = self.name(&raw.name, &format!("app[{i}].name"))?;
        let mut subgroup: Vec<String> = Vec::with_capacity(raw.subgroup.len());
        for (j, node) in raw.subgroup.iter().enumerate() {
            let key = format!("app[{i}].subgroup[{j}]");
            let node_name = self.name(node, &key)?;
            if subgroup.contains(&node_name) {
                return Err(ConfigError::ListedTwice { at: self.at(node), key, name: node_name });
            }
            subgroup.push(node_name);
        }
        let max_cpu_percent = match &raw.max_cpu_percent {
            None => DEFAULT_MAX_CPU_PERCENT,
            Some(v) => self.percent(v, &format!("app[{i}].max_cpu_percent"))?,
        };
        // A program portion's clients are sessions from one node socket, and MP numbers a
        // peer's sessions in one byte.
        let program = raw.command.is_some();
        let sessions_range = if program { (SESSIONS_RANGE.0, PROGRAM_MAX_SESSIONS) } else { SESSIONS_RANGE };
        let max_sessions_per_portion = match &raw.max_sessions_per_portion {
            None if program => PROGRAM_MAX_SESSIONS,
            None => DEFAULT_MAX_SESSIONS_PER_PORTION,
            Some(v) => self.int_in(v, &format!("app[{i}].max_sessions_per_portion"), sessions_range)?,
        };
        let max_workers = match &raw.max_workers {
            None => None,
            Some(v) => Some(self.int_in(v, &format!("app[{i}].max_workers"), (1, 1024))? as u32),
        };
        let command = match &raw.command {
            None => Vec::new(),
            Some(c) => self.command(c, &format!("app[{i}].command"))?,
        };
        let (policy, collect_interval) = self.app_policy(&raw.policy, &raw.collect_interval_ms, i)?;
        if command.is_empty()
            && let Some(known) = self.known_apps
            && !known.contains(&name.as_str())
        {
            return Err(ConfigError::UnknownApplication {
                at: self.at(&raw.name),
                name,
                known: known.iter().map(|k| (*k).to_owned()).collect(),
            });
        }
        Ok(AppConfig {
            command,
            name,
            start_at_init: raw.start_at_init,
            subgroup,
            min_free_memory_mb: raw.min_free_memory_mb,
            max_cpu_percent,
            max_sessions_per_portion,
            max_workers,
            policy,
            collect_interval,
        })
    }

    /// A portion program and its arguments: not empty, no empty program name; a relative
    /// program path with a `/` is anchored at the file's folder, a bare name is found on PATH.
    fn command(&self, value: &Spanned<Vec<String>>, key: &str) -> Result<Vec<String>, ConfigError> {
        let mut command = value.get_ref().clone();
        match command.first_mut() {
            Some(program) if !program.trim().is_empty() => {
                let path = std::path::Path::new(program.as_str());
                if path.is_relative() && program.contains('/') {
                    *program = self.dir.join(path).to_string_lossy().into_owned();
                }
                Ok(command)
            }
            _ => Err(ConfigError::EmptyAppCommand { at: self.at(value), key: key.into() }),
        }
    }

    /// A name of letters, digits, `_` and `-`; not empty.
    pub(crate) fn name(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let name = value.get_ref();
        let bad = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'));
        if name.is_empty() || bad.is_some() {
            return Err(ConfigError::InvalidName {
                at: self.at(value),
                key: key.to_string(),
                name: name.clone(),
                bad,
            });
        }
        Ok(name.clone())
    }

    /// An `IP:PORT`.
    pub(crate) fn socket_addr(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse::<SocketAddr>().map_err(|_| ConfigError::NotSocketAddr {
            at: self.at(value),
            key: key.to_string(),
            value: value.get_ref().clone(),
        })
    }

    /// An integer in `min..=max`.
    pub(crate) fn int_in(
        &self,
        value: &Spanned<u64>,
        key: &str,
        (min, max): (u64, u64),
    ) -> Result<u64, ConfigError> {
        let v = *value.get_ref();
        if !(min..=max).contains(&v) {
            return Err(ConfigError::OutOfRange {
                at: self.at(value),
                key: key.to_string(),
                value: v,
                min,
                max,
            });
        }
        Ok(v)
    }

    /// A score (service weight, health threshold) in 0..=100.
    pub(crate) fn score(&self, value: &Spanned<u64>, key: &str) -> Result<u8, ConfigError> {
        let v = self.int_in(value, key, SCORE_RANGE)?;
        Ok(u8::try_from(v).expect("a score is at most 100"))
    }

    /// A duration in `min..=max` milliseconds.
    pub(crate) fn ms_in(
        &self,
        value: &Spanned<u64>,
        key: &str,
        (min, max): (u64, u64),
    ) -> Result<Duration, ConfigError> {
        let v = *value.get_ref();
        if !(min..=max).contains(&v) {
            return Err(ConfigError::MsOutOfRange {
                at: self.at(value),
                key: key.to_string(),
                value: v,
                min,
                max,
            });
        }
        Ok(Duration::from_millis(v))
    }

    /// A percentage with 0 < x <= 100 (NaN refused).
    fn percent(&self, value: &Spanned<f64>, key: &str) -> Result<f64, ConfigError> {
        let x = *value.get_ref();
        if !(x > 0.0 && x <= 100.0) {
            return Err(ConfigError::PercentOutOfRange {
                at: self.at(value),
                key: key.to_string(),
                value: x,
            });
        }
        Ok(x)
    }
}

fn ms(value: &Spanned<u64>) -> Duration {
    Duration::from_millis(*value.get_ref())
}

/// Whole milliseconds of a duration that came from a `u64` of milliseconds (or a constant).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
