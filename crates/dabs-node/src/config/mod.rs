//! The node configuration file (`dabs node --config FILE`): reading, validation and writing.
//!
//! The file is TOML; the documented example is `docs/node.example.toml`. A bad file is refused
//! with a [`ConfigError`] naming the file, the line and column of the offending value, the key
//! and what was expected, so an operator can fix it without reading code.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::health::{Check, HealthConfig, Service};
use crate::zones::{ClientClass, FailoverPolicy, Thresholds};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Default IPv4 interface for multicast.
pub const DEFAULT_INTERFACE: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Default interval between membership announcements.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(250);
/// Default membership lease.
pub const DEFAULT_LEASE: Duration = Duration::from_millis(1500);
/// Default lock/timer time-out, used for resource types without their own entry.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default high-water mark of message latency.
pub const DEFAULT_MAX_MESSAGE_LATENCY: Duration = Duration::from_millis(200);
/// Default low-water mark of message latency.
pub const DEFAULT_LOW_WATER: Duration = Duration::from_millis(100);
/// Default largest CPU use at which a server is still eligible for an application.
pub const DEFAULT_MAX_CPU_PERCENT: f64 = 100.0;
/// Default number of sessions at which a portion stops being "available".
pub const DEFAULT_MAX_SESSIONS_PER_PORTION: u64 = 1000;
/// Key of the fallback entry in [`NodeConfig::timeouts`].
pub const DEFAULT_TIMEOUT_KEY: &str = "default";

const MIN_SECRET_BYTES: usize = 16;
const ANNOUNCE_RANGE_MS: (u64, u64) = (50, 5000);
const MAX_LEASE_MS: u64 = 60_000;
const TIMEOUT_RANGE_MS: (u64, u64) = (1, 600_000);
const SESSIONS_RANGE: (u64, u64) = (1, 1_000_000);

/// A node's whole configuration, validated and with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The `[farm]` section: what every node of the farm shares.
    pub farm: FarmConfig,
    /// The `[node]` section: this server.
    pub node: NodeSection,
    /// Lock/timer time-out per resource type; always contains [`DEFAULT_TIMEOUT_KEY`].
    pub timeouts: BTreeMap<String, Duration>,
    /// The `[latency]` section.
    pub latency: LatencyLimits,
    /// The `[[app]]` records, in file order; names are unique.
    pub apps: Vec<AppConfig>,
    /// The `[balance]` section: how this node adds capacity when portions starve.
    pub balance: BalanceConfig,
    /// The `[health]` section: self-monitoring (R-FO-1).
    pub health: HealthConfig,
    /// The `[failover]` section: thresholds, classes, order and pace of moving clients.
    pub failover: FailoverPolicy,
}

/// The `[balance]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceConfig {
    /// Start the extra portion on this server while it has headroom (moving costs more).
    pub prefer_local: bool,
    /// This server has headroom while its CPU use is below this, percent.
    pub local_headroom_cpu_percent: f64,
    /// At most this many portions of one application on this server (0: one per CPU).
    pub max_local_portions: u32,
    /// At most one spawn per application per this interval.
    pub spawn_cooldown: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            prefer_local: true,
            local_headroom_cpu_percent: 85.0,
            max_local_portions: 0,
            spawn_cooldown: Duration::from_secs(2),
        }
    }
}

/// The `[farm]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct FarmConfig {
    /// Farm name, the first segment of virtual addresses `mp://FARM/APP/dasp/ID`.
    pub name: String,
    /// Multicast group address and port (224.0.0.0/4, non-zero port).
    pub group: SocketAddrV4,
    /// IPv4 address of the interface that joins the multicast group.
    pub interface: Ipv4Addr,
    /// Unicast MP addresses of other nodes, for networks without multicast.
    pub seeds: Vec<SocketAddr>,
    /// Shared farm secret (decoded bytes, at least 16), from `secret` or `secret_file`.
    pub secret: Option<Vec<u8>>,
}

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSection {
    /// Node name, unique in the farm.
    pub name: String,
    /// Bind address of the node's MP (UDP) endpoint; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Data directory, already resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// Address of the HTTP operator interface, if any.
    pub operator: Option<SocketAddr>,
    /// Interval between membership announcements (50 ms ..= 5 s).
    pub announce_interval: Duration,
    /// How long a node stays a member without announcing (> 2 announce intervals, <= 60 s).
    pub lease: Duration,
    /// Whether clients may open encrypted sessions here (R-MP-5); with `false` a client that
    /// offers security is refused with NAK 13. Default true.
    pub accept_encryption: bool,
}

/// The `[latency]` section: message latency limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyLimits {
    /// High-water mark: latency above this counts as overload.
    pub max_message_latency: Duration,
    /// Low-water mark: latency below this counts as recovered; less than the high-water mark.
    pub low_water: Duration,
}

impl Default for LatencyLimits {
    fn default() -> Self {
        LatencyLimits { max_message_latency: DEFAULT_MAX_MESSAGE_LATENCY, low_water: DEFAULT_LOW_WATER }
    }
}

/// One `[[app]]` record.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Application name, the second segment of virtual addresses.
    pub name: String,
    /// Whether the node starts the application when it initialises.
    pub start_at_init: bool,
    /// Nodes allowed to run the application; empty means every node of the farm.
    pub subgroup: Vec<String>,
    /// A server with less free memory (MiB) is not eligible.
    pub min_free_memory_mb: u64,
    /// A server busier than this (percent, 0 < x <= 100) is not eligible.
    pub max_cpu_percent: f64,
    /// A portion with this many sessions is not "available" (1 ..= 1 000 000).
    pub max_sessions_per_portion: u64,
}

impl AppConfig {
    /// An application record with every optional field at its default.
    pub fn new(name: impl Into<String>) -> Self {
        AppConfig {
            name: name.into(),
            start_at_init: false,
            subgroup: Vec::new(),
            min_free_memory_mb: 0,
            max_cpu_percent: DEFAULT_MAX_CPU_PERCENT,
            max_sessions_per_portion: DEFAULT_MAX_SESSIONS_PER_PORTION,
        }
    }

    /// Whether the subgroup lets node `node` run this application.
    pub fn allows_node(&self, node: &str) -> bool {
        self.subgroup.is_empty() || self.subgroup.iter().any(|n| n == node)
    }
}

/// Why a configuration was refused: the file, the position (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending text, when there is one.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text, when there is one.
    pub column: Option<usize>,
    /// What is wrong and what is expected, starting with the key, e.g. `farm.group: ...`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl NodeConfig {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cx = Cx { text, file: path, dir: path.parent().unwrap_or(Path::new("")) };
        let raw: RawConfig = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
        cx.validate(raw)
    }

    /// The time-out for resource type `resource`, or the `default` one.
    pub fn timeout_for(&self, resource: &str) -> Duration {
        self.timeouts
            .get(resource)
            .or_else(|| self.timeouts.get(DEFAULT_TIMEOUT_KEY))
            .copied()
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    /// The `[[app]]` record named `name`.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// Writes the configuration as TOML that parses back to an equal `NodeConfig`.
    ///
    /// Every key is written, defaults included, so the file shows the values in force.
    /// `data_dir` is written as stored (absolute after [`NodeConfig::parse`]), so the output does
    /// not depend on where it is saved. Durations are written in whole milliseconds.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let FarmConfig { name, group, interface, seeds, secret } = &self.farm;
        out.push_str("[farm]\n");
        kv(&mut out, "name", toml_str(name));
        kv(&mut out, "group", toml_str(&group.to_string()));
        kv(&mut out, "interface", toml_str(&interface.to_string()));
        kv(&mut out, "seeds", toml_list(seeds.iter().map(|s| s.to_string())));
        if let Some(secret) = secret {
            kv(&mut out, "secret", toml_str(&hex_encode(secret)));
        }
        let NodeSection { name, bind, data_dir, operator, announce_interval, lease, accept_encryption } =
            &self.node;
        out.push_str("\n[node]\n");
        kv(&mut out, "name", toml_str(name));
        kv(&mut out, "bind", toml_str(&bind.to_string()));
        kv(&mut out, "data_dir", toml_str(&data_dir.to_string_lossy()));
        if let Some(operator) = operator {
            kv(&mut out, "operator", toml_str(&operator.to_string()));
        }
        kv(&mut out, "announce_interval_ms", announce_interval.as_millis().to_string());
        kv(&mut out, "lease_ms", lease.as_millis().to_string());
        kv(&mut out, "accept_encryption", accept_encryption.to_string());
        out.push_str("\n[timeouts]\n");
        if !self.timeouts.contains_key(DEFAULT_TIMEOUT_KEY) {
            kv(&mut out, DEFAULT_TIMEOUT_KEY, DEFAULT_TIMEOUT.as_millis().to_string());
        }
        for (resource, timeout) in &self.timeouts {
            kv(&mut out, resource, timeout.as_millis().to_string());
        }
        out.push_str("\n[latency]\n");
        kv(&mut out, "max_message_latency_ms", self.latency.max_message_latency.as_millis().to_string());
        kv(&mut out, "low_water_ms", self.latency.low_water.as_millis().to_string());
        out.push_str("\n[balance]\n");
        kv(&mut out, "prefer_local", self.balance.prefer_local.to_string());
        kv(
            &mut out,
            "local_headroom_cpu_percent",
            toml::Value::Float(self.balance.local_headroom_cpu_percent).to_string(),
        );
        kv(&mut out, "max_local_portions", self.balance.max_local_portions.to_string());
        kv(&mut out, "spawn_cooldown_ms", self.balance.spawn_cooldown.as_millis().to_string());
        self.health_toml(&mut out);
        self.failover_toml(&mut out);
        for app in &self.apps {
            out.push_str("\n[[app]]\n");
            kv(&mut out, "name", toml_str(&app.name));
            kv(&mut out, "start_at_init", app.start_at_init.to_string());
            kv(&mut out, "subgroup", toml_list(app.subgroup.iter().cloned()));
            kv(&mut out, "min_free_memory_mb", app.min_free_memory_mb.to_string());
            kv(&mut out, "max_cpu_percent", toml::Value::Float(app.max_cpu_percent).to_string());
            kv(&mut out, "max_sessions_per_portion", app.max_sessions_per_portion.to_string());
        }
        out
    }
}

impl NodeConfig {
    fn health_toml(&self, out: &mut String) {
        let h = &self.health;
        out.push_str("\n[health]\n");
        kv(out, "interval_ms", h.interval.as_millis().to_string());
        kv(out, "check_timeout_ms", h.check_timeout.as_millis().to_string());
        kv(out, "queue_limit", h.queue_limit.to_string());
        kv(out, "include_cpu", h.include_cpu.to_string());
        for s in &h.services {
            let check = match &s.check {
                Check::Mp | Check::Database => continue, // built in
                Check::Tcp(addr) => ("tcp", toml_str(&addr.to_string())),
                Check::Command(argv) => ("command", toml_list(argv.iter().cloned())),
            };
            out.push_str("\n[[health.service]]\n");
            kv(out, "name", toml_str(&s.name));
            kv(out, check.0, check.1);
            kv(out, "mandatory", s.mandatory.to_string());
            kv(out, "weight", s.weight.to_string());
        }
    }

    fn failover_toml(&self, out: &mut String) {
        let f = &self.failover;
        let thresholds = |out: &mut String, t: &Thresholds| {
            kv(out, "failover_threshold", t.failover.to_string());
            kv(out, "connection_threshold", t.connection.to_string());
            kv(out, "return_threshold", t.returning.to_string());
        };
        out.push_str("\n[failover]\n");
        thresholds(out, &f.thresholds);
        kv(out, "first", toml_list(f.first.iter().cloned()));
        kv(out, "device_groups", toml_list(f.device_groups.iter().cloned()));
        kv(out, "batch", f.batch.to_string());
        kv(out, "batch_interval_ms", f.batch_interval.as_millis().to_string());
        kv(out, "return_batch", f.return_batch.to_string());
        kv(out, "return_interval_ms", f.return_interval.as_millis().to_string());
        for c in &f.classes {
            out.push_str("\n[[failover.class]]\n");
            kv(out, "name", toml_str(&c.name));
            thresholds(out, &c.thresholds);
        }
    }
}

// Raw deserialization structs: values are `Spanned` so validation can point at their line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    farm: Spanned<RawFarm>,
    node: Spanned<RawNode>,
    timeouts: Option<BTreeMap<String, Spanned<u64>>>,
    latency: Option<RawLatency>,
    balance: Option<RawBalance>,
    health: Option<RawHealth>,
    failover: Option<RawFailover>,
    #[serde(default)]
    app: Vec<Spanned<RawApp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawHealth {
    interval_ms: Option<Spanned<u64>>,
    check_timeout_ms: Option<Spanned<u64>>,
    queue_limit: Option<Spanned<u64>>,
    include_cpu: Option<bool>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawService {
    name: Spanned<String>,
    tcp: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    mandatory: bool,
    weight: Option<Spanned<u64>>,
}

/// The three thresholds as written (in `[failover]` and each `[[failover.class]]`).
struct RawThresholds<'a> {
    failover: &'a Option<Spanned<u64>>,
    connection: &'a Option<Spanned<u64>>,
    returning: &'a Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawFailover {
    failover_threshold: Option<Spanned<u64>>,
    connection_threshold: Option<Spanned<u64>>,
    return_threshold: Option<Spanned<u64>>,
    #[serde(default)]
    first: Vec<Spanned<String>>,
    #[serde(default)]
    device_groups: Vec<String>,
    batch: Option<Spanned<u64>>,
    batch_interval_ms: Option<Spanned<u64>>,
    return_batch: Option<Spanned<u64>>,
    return_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    class: Vec<Spanned<RawClass>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawClass {
    name: Spanned<String>,
    failover_threshold: Option<Spanned<u64>>,
    connection_threshold: Option<Spanned<u64>>,
    return_threshold: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawBalance {
    prefer_local: Option<bool>,
    local_headroom_cpu_percent: Option<Spanned<f64>>,
    max_local_portions: Option<u32>,
    spawn_cooldown_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawFarm {
    name: Spanned<String>,
    group: Spanned<String>,
    interface: Option<Spanned<String>>,
    #[serde(default)]
    seeds: Vec<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawNode {
    name: Spanned<String>,
    bind: Spanned<String>,
    data_dir: Spanned<String>,
    operator: Option<Spanned<String>>,
    announce_interval_ms: Option<Spanned<u64>>,
    lease_ms: Option<Spanned<u64>>,
    accept_encryption: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLatency {
    max_message_latency_ms: Option<Spanned<u64>>,
    low_water_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawApp {
    name: Spanned<String>,
    #[serde(default)]
    start_at_init: bool,
    #[serde(default)]
    subgroup: Vec<Spanned<String>>,
    #[serde(default)]
    min_free_memory_mb: u64,
    max_cpu_percent: Option<Spanned<f64>>,
    max_sessions_per_portion: Option<Spanned<u64>>,
}

/// Parsing context: the text and file for error positions, the directory for relative paths.
struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
    dir: &'a Path,
}

impl Cx<'_> {
    fn error(&self, span: Option<Range<usize>>, message: String) -> ConfigError {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = line_column(self.text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError { file: self.file.to_path_buf(), line, column, message }
    }

    fn at<T>(&self, value: &Spanned<T>, message: String) -> ConfigError {
        self.error(Some(value.span()), message)
    }

    /// Turns a toml syntax or type error into a `ConfigError` that names the key.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        // toml keeps the key path private, so find it again from the span.
        let key = span.as_ref().and_then(|s| {
            let root = DeTable::parse(self.text).ok()?;
            locate(root.get_ref(), s.start, "")
        });
        // Say it in TOML's words: keys rather than fields, integers rather than u64.
        let msg = e
            .message()
            .trim_end()
            .replacen("unknown field", "unknown key", 1)
            .replace("expected u64", "expected a non-negative integer");
        let msg = msg.as_str();
        let missing = msg.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
        match (key, missing) {
            (Some(key), Some(field)) => self.error(span, format!("{key}.{field}: required key is missing")),
            // A top-level section is missing: there is no line to point at.
            (None, Some(field)) => self.error(None, format!("[{field}]: required section is missing")),
            (Some(key), None) => self.error(span, format!("{key}: {msg}")),
            (None, None) if DeTable::parse(self.text).is_err() => {
                // Quote the offending text when it is short, e.g. the key of a duplicate key.
                let at = span
                    .as_ref()
                    .and_then(|s| self.text.get(s.clone()))
                    .filter(|t| !t.is_empty() && t.len() <= 40 && !t.contains('\n'))
                    .map(|t| format!(" (at `{t}`)"))
                    .unwrap_or_default();
                self.error(span, format!("invalid TOML: {msg}{at}"))
            }
            (None, None) => self.error(span, msg.to_string()),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<NodeConfig, ConfigError> {
        let farm = self.farm(raw.farm.into_inner())?;
        let node = self.node(raw.node.into_inner())?;
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
        for (i, app) in raw.app.into_iter().enumerate() {
            let app = app.into_inner();
            if let Some(first) = seen.get(app.name.get_ref()) {
                return Err(self.at(
                    &app.name,
                    format!(
                        "app[{i}].name: duplicate application name {:?} (first defined on line {first}; \
                         expected names unique among [[app]])",
                        app.name.get_ref()
                    ),
                ));
            }
            seen.insert(app.name.get_ref().clone(), line_column(self.text, app.name.span().start).0);
            apps.push(self.app(app, i)?);
        }
        let health = self.health(raw.health)?;
        let failover = self.failover(raw.failover)?;
        Ok(NodeConfig { farm, node, timeouts, latency, apps, balance, health, failover })
    }

    fn health(&self, raw: Option<RawHealth>) -> Result<HealthConfig, ConfigError> {
        let mut cfg = HealthConfig::default();
        let Some(raw) = raw else { return Ok(cfg) };
        if let Some(v) = &raw.interval_ms {
            cfg.interval = self.ms_in(v, "health.interval_ms", (50, 60_000))?;
        }
        if let Some(v) = &raw.check_timeout_ms {
            cfg.check_timeout = self.ms_in(v, "health.check_timeout_ms", (10, 60_000))?;
        }
        if let Some(v) = &raw.queue_limit {
            cfg.queue_limit = self.int_in(v, "health.queue_limit", (1, 1_000_000))?;
        }
        cfg.include_cpu = raw.include_cpu.unwrap_or(cfg.include_cpu);
        for (i, s) in raw.service.iter().enumerate() {
            let s = s.get_ref();
            let key = format!("health.service[{i}]");
            let name = self.name(&s.name, &format!("{key}.name"))?;
            if cfg.services.iter().any(|k| k.name == name) {
                return Err(self.at(
                    &s.name,
                    format!("{key}.name: {name:?} is already a service (expected unique names; mp and database are built in)"),
                ));
            }
            let check = match (&s.tcp, &s.command) {
                (Some(tcp), None) => Check::Tcp(self.socket_addr(tcp, &format!("{key}.tcp"))?),
                (None, Some(argv)) if !argv.get_ref().is_empty() => Check::Command(argv.get_ref().clone()),
                (None, Some(argv)) => {
                    return Err(self.at(
                        argv,
                        format!("{key}.command: is empty (expected a program and its arguments)"),
                    ));
                }
                _ => {
                    return Err(self.at(
                        &s.name,
                        format!(
                            "{key}: expected exactly one of tcp = \"IP:PORT\" and command = [\"program\", …]"
                        ),
                    ));
                }
            };
            let weight = match &s.weight {
                Some(w) => self.int_in(w, &format!("{key}.weight"), (0, 100))? as u8,
                None => 50,
            };
            cfg.services.push(Service { name, check, mandatory: s.mandatory, weight });
        }
        Ok(cfg)
    }

    fn thresholds(
        &self,
        raw: &RawThresholds<'_>,
        key: &str,
        base: Thresholds,
    ) -> Result<Thresholds, ConfigError> {
        let get = |v: &Option<Spanned<u64>>, name: &str, default: u8| -> Result<u8, ConfigError> {
            match v {
                Some(v) => Ok(self.int_in(v, &format!("{key}{name}"), (0, 100))? as u8),
                None => Ok(default),
            }
        };
        let failover = get(raw.failover, "failover_threshold", base.failover)?;
        let connection = get(raw.connection, "connection_threshold", base.connection)?;
        // Deferred clients come back no earlier than new ones are let in, unless told otherwise.
        let returning = get(raw.returning, "return_threshold", base.returning.max(connection))?;
        Ok(Thresholds { failover, connection, returning })
    }

    fn failover(&self, raw: Option<RawFailover>) -> Result<FailoverPolicy, ConfigError> {
        let mut cfg = FailoverPolicy::default();
        let Some(raw) = raw else { return Ok(cfg) };
        let written = RawThresholds {
            failover: &raw.failover_threshold,
            connection: &raw.connection_threshold,
            returning: &raw.return_threshold,
        };
        cfg.thresholds = self.thresholds(&written, "failover.", cfg.thresholds)?;
        for (i, f) in raw.first.iter().enumerate() {
            let text = f.get_ref();
            if text.parse::<SocketAddr>().is_err() && text.parse::<std::net::IpAddr>().is_err() {
                return Err(self.at(
                    f,
                    format!("failover.first[{i}]: {text:?} is not a client address (expected \"IP\" or \"IP:PORT\")"),
                ));
            }
            cfg.first.push(text.clone());
        }
        cfg.device_groups = raw.device_groups;
        if let Some(v) = &raw.batch {
            cfg.batch = self.int_in(v, "failover.batch", (1, 100_000))? as usize;
        }
        if let Some(v) = &raw.batch_interval_ms {
            cfg.batch_interval = self.ms_in(v, "failover.batch_interval_ms", (1, 60_000))?;
        }
        if let Some(v) = &raw.return_batch {
            cfg.return_batch = self.int_in(v, "failover.return_batch", (1, 100_000))? as usize;
        }
        if let Some(v) = &raw.return_interval_ms {
            cfg.return_interval = self.ms_in(v, "failover.return_interval_ms", (1, 600_000))?;
        }
        for (i, c) in raw.class.iter().enumerate() {
            let c = c.get_ref();
            let key = format!("failover.class[{i}]");
            let name = self.name(&c.name, &format!("{key}.name"))?;
            if cfg.classes.iter().any(|k| k.name == name) {
                return Err(
                    self.at(&c.name, format!("{key}.name: duplicate class {name:?} (expected unique names)"))
                );
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

    fn int_in(&self, value: &Spanned<u64>, key: &str, (lo, hi): (u64, u64)) -> Result<u64, ConfigError> {
        let v = *value.get_ref();
        if !(lo..=hi).contains(&v) {
            return Err(self.at(value, format!("{key}: {v} is out of range (expected {lo}..={hi})")));
        }
        Ok(v)
    }

    fn farm(&self, raw: RawFarm) -> Result<FarmConfig, ConfigError> {
        let name = self.name(&raw.name, "farm.name")?;
        let text = raw.group.get_ref();
        let group = match text.parse::<SocketAddr>() {
            Ok(SocketAddr::V4(group)) => group,
            _ => {
                return Err(self.at(
                    &raw.group,
                    format!(
                        "farm.group: {text:?} is not an IPv4 address and port \
                         (expected e.g. \"239.255.77.1:47000\")"
                    ),
                ));
            }
        };
        if !group.ip().is_multicast() {
            return Err(self.at(
                &raw.group,
                format!("farm.group: {group} is not a multicast address (expected 224.0.0.0/4)"),
            ));
        }
        if group.port() == 0 {
            return Err(
                self.at(&raw.group, format!("farm.group: {group} has port 0 (expected a non-zero port)"))
            );
        }
        let interface = match &raw.interface {
            None => DEFAULT_INTERFACE,
            Some(v) => v.get_ref().parse::<Ipv4Addr>().map_err(|_| {
                self.at(
                    v,
                    format!(
                        "farm.interface: {:?} is not an IPv4 address (expected e.g. \"127.0.0.1\")",
                        v.get_ref()
                    ),
                )
            })?,
        };
        let mut seeds = Vec::with_capacity(raw.seeds.len());
        for (i, seed) in raw.seeds.iter().enumerate() {
            let key = format!("farm.seeds[{i}]");
            let addr = self.socket_addr(seed, &key)?;
            if addr.port() == 0 || addr.ip().is_multicast() || addr.ip().is_unspecified() {
                return Err(self.at(
                    seed,
                    format!(
                        "{key}: {addr} is not a node's address (expected a unicast IP and a non-zero port)"
                    ),
                ));
            }
            seeds.push(addr);
        }
        let secret = match (&raw.secret, &raw.secret_file) {
            (Some(_), Some(file)) => {
                return Err(self.at(
                    file,
                    "farm.secret_file: farm.secret is also set (expected at most one of secret and secret_file)"
                        .to_string(),
                ));
            }
            (Some(secret), None) => Some(
                parse_secret(secret.get_ref())
                    .map_err(|why| self.at(secret, format!("farm.secret: {why}")))?,
            ),
            (None, Some(file)) => {
                let path = self.resolve(file.get_ref());
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.at(file, format!("farm.secret_file: cannot read {}: {e}", path.display()))
                })?;
                Some(
                    parse_secret(&text).map_err(|why| {
                        self.at(file, format!("farm.secret_file: {}: {why}", path.display()))
                    })?,
                )
            }
            (None, None) => None,
        };
        Ok(FarmConfig { name, group, interface, seeds, secret })
    }

    fn node(&self, raw: RawNode) -> Result<NodeSection, ConfigError> {
        let name = self.name(&raw.name, "node.name")?;
        let bind = self.socket_addr(&raw.bind, "node.bind")?;
        if raw.data_dir.get_ref().is_empty() {
            return Err(
                self.at(&raw.data_dir, "node.data_dir: is empty (expected a directory path)".to_string())
            );
        }
        let data_dir = self.resolve(raw.data_dir.get_ref());
        let operator = raw.operator.as_ref().map(|v| self.socket_addr(v, "node.operator")).transpose()?;
        let announce_interval = match &raw.announce_interval_ms {
            Some(v) => self.ms_in(v, "node.announce_interval_ms", ANNOUNCE_RANGE_MS)?,
            None => DEFAULT_ANNOUNCE_INTERVAL,
        };
        let lease = raw.lease_ms.as_ref().map_or(DEFAULT_LEASE, |v| Duration::from_millis(*v.get_ref()));
        if lease <= announce_interval * 2 || lease > Duration::from_millis(MAX_LEASE_MS) {
            let ms = lease.as_millis();
            let twice = (announce_interval * 2).as_millis();
            let expected = format!(
                "expected more than 2 * node.announce_interval_ms = {twice} and at most {MAX_LEASE_MS}"
            );
            // Without an explicit lease_ms the default is what clashes; point at the interval.
            let err = match (&raw.lease_ms, &raw.announce_interval_ms) {
                (Some(v), _) => self.at(v, format!("node.lease_ms: {ms} is out of range ({expected})")),
                (None, Some(v)) => self.at(
                    v,
                    format!("node.lease_ms: the default {ms} is out of range ({expected}); set lease_ms"),
                ),
                (None, None) => unreachable!("the default lease fits the default announce interval"),
            };
            return Err(err);
        }
        let accept_encryption = raw.accept_encryption.unwrap_or(true);
        Ok(NodeSection { name, bind, data_dir, operator, announce_interval, lease, accept_encryption })
    }

    fn latency(&self, raw: Option<RawLatency>) -> Result<LatencyLimits, ConfigError> {
        let Some(raw) = raw else { return Ok(LatencyLimits::default()) };
        let max = raw.max_message_latency_ms.as_ref().map_or(DEFAULT_MAX_MESSAGE_LATENCY, ms);
        let low = raw.low_water_ms.as_ref().map_or(DEFAULT_LOW_WATER, ms);
        if low >= max {
            let message = format!(
                "latency.low_water_ms: {} is not below latency.max_message_latency_ms = {} \
                 (expected low_water_ms < max_message_latency_ms)",
                low.as_millis(),
                max.as_millis()
            );
            // Point at low_water_ms unless it is the default and only the maximum was set.
            let err = match (&raw.low_water_ms, &raw.max_message_latency_ms) {
                (Some(v), _) | (None, Some(v)) => self.at(v, message),
                (None, None) => unreachable!("the default latency limits are ordered"),
            };
            return Err(err);
        }
        Ok(LatencyLimits { max_message_latency: max, low_water: low })
    }

    fn balance(&self, raw: Option<RawBalance>) -> Result<BalanceConfig, ConfigError> {
        let d = BalanceConfig::default();
        let Some(raw) = raw else { return Ok(d) };
        let headroom = match &raw.local_headroom_cpu_percent {
            Some(v) if !(*v.get_ref() > 0.0 && *v.get_ref() <= 100.0) => {
                let msg = format!(
                    "balance.local_headroom_cpu_percent: {} is out of range (expected 0 < x <= 100)",
                    v.get_ref()
                );
                return Err(self.at(v, msg));
            }
            Some(v) => *v.get_ref(),
            None => d.local_headroom_cpu_percent,
        };
        let cooldown = match &raw.spawn_cooldown_ms {
            Some(v) if !(10..=600_000).contains(v.get_ref()) => {
                let msg = format!(
                    "balance.spawn_cooldown_ms: {} is out of range (expected 10..=600000)",
                    v.get_ref()
                );
                return Err(self.at(v, msg));
            }
            Some(v) => Duration::from_millis(*v.get_ref()),
            None => d.spawn_cooldown,
        };
        Ok(BalanceConfig {
            prefer_local: raw.prefer_local.unwrap_or(d.prefer_local),
            local_headroom_cpu_percent: headroom,
            max_local_portions: raw.max_local_portions.unwrap_or(d.max_local_portions),
            spawn_cooldown: cooldown,
        })
    }

    fn app(&self, raw: RawApp, i: usize) -> Result<AppConfig, ConfigError> {
        let name = self.name(&raw.name, &format!("app[{i}].name"))?;
        let mut subgroup: Vec<String> = Vec::with_capacity(raw.subgroup.len());
        for (j, node) in raw.subgroup.iter().enumerate() {
            let key = format!("app[{i}].subgroup[{j}]");
            let node_name = self.name(node, &key)?;
            if subgroup.contains(&node_name) {
                return Err(
                    self.at(node, format!("{key}: {node_name:?} is listed twice (expected each node once)"))
                );
            }
            subgroup.push(node_name);
        }
        let max_cpu_percent = match &raw.max_cpu_percent {
            None => DEFAULT_MAX_CPU_PERCENT,
            Some(v) => {
                let x = *v.get_ref();
                if !(x > 0.0 && x <= 100.0) {
                    return Err(self.at(
                        v,
                        format!("app[{i}].max_cpu_percent: {x} is out of range (expected 0 < x <= 100)"),
                    ));
                }
                x
            }
        };
        let max_sessions_per_portion = match &raw.max_sessions_per_portion {
            None => DEFAULT_MAX_SESSIONS_PER_PORTION,
            Some(v) => {
                let n = *v.get_ref();
                if !(SESSIONS_RANGE.0..=SESSIONS_RANGE.1).contains(&n) {
                    return Err(self.at(
                        v,
                        format!(
                            "app[{i}].max_sessions_per_portion: {n} is out of range (expected {}..={})",
                            SESSIONS_RANGE.0, SESSIONS_RANGE.1
                        ),
                    ));
                }
                n
            }
        };
        Ok(AppConfig {
            name,
            start_at_init: raw.start_at_init,
            subgroup,
            min_free_memory_mb: raw.min_free_memory_mb,
            max_cpu_percent,
            max_sessions_per_portion,
        })
    }

    fn name(&self, value: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let name = value.get_ref();
        let bad = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'));
        if name.is_empty() || bad.is_some() {
            let what = match bad {
                Some(c) => format!("{name:?} contains {c:?}"),
                None => "the name is empty".to_string(),
            };
            return Err(self.at(value, format!("{key}: {what} (expected one or more of A-Z a-z 0-9 _ -)")));
        }
        Ok(name.clone())
    }

    fn socket_addr(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.at(
                value,
                format!(
                    "{key}: {:?} is not an IP address and port (expected e.g. \"127.0.0.1:47101\" or \"[::1]:47101\")",
                    value.get_ref()
                ),
            )
        })
    }

    fn ms_in(&self, value: &Spanned<u64>, key: &str, (lo, hi): (u64, u64)) -> Result<Duration, ConfigError> {
        let v = *value.get_ref();
        if !(lo..=hi).contains(&v) {
            return Err(
                self.at(value, format!("{key}: {v} is out of range (expected {lo}..={hi} milliseconds)"))
            );
        }
        Ok(Duration::from_millis(v))
    }

    /// Resolves `path` against the config file's directory and makes it absolute, so the
    /// result does not depend on the process's later working directory.
    fn resolve(&self, path: &str) -> PathBuf {
        let joined = self.dir.join(path);
        if joined.is_absolute() { joined } else { std::path::absolute(&joined).unwrap_or(joined) }
    }
}

fn ms(value: &Spanned<u64>) -> Duration {
    Duration::from_millis(*value.get_ref())
}

/// The dotted key path (e.g. `farm.group`, `app[1].name`) whose key or value covers `offset`.
fn locate(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            toml_key(key.get_ref())
        } else {
            format!("{prefix}.{}", toml_key(key.get_ref()))
        };
        if covers(&key.span(), offset) {
            return Some(path);
        }
        if let Some(found) = locate_value(value, offset, path) {
            return Some(found);
        }
    }
    None
}

fn locate_value(value: &Spanned<DeValue<'_>>, offset: usize, path: String) -> Option<String> {
    // Header tables are spread over many lines, so look inside before matching the span.
    match value.get_ref() {
        DeValue::Table(table) => {
            if let Some(found) = locate(table, offset, &path) {
                return Some(found);
            }
        }
        DeValue::Array(array) => {
            for (i, item) in array.iter().enumerate() {
                if let Some(found) = locate_value(item, offset, format!("{path}[{i}]")) {
                    return Some(found);
                }
            }
        }
        _ => {}
    }
    covers(&value.span(), offset).then_some(path)
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset && offset > 0)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// Decodes a hex secret of at least [`MIN_SECRET_BYTES`] bytes; surrounding whitespace is ignored.
fn parse_secret(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let expected = format!("expected an even number of hex digits, at least {}", MIN_SECRET_BYTES * 2);
    // The message never echoes the secret itself.
    if let Some((i, c)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!("is not hex: character {} is {c:?} ({expected})", i + 1));
    }
    if !text.len().is_multiple_of(2) {
        return Err(format!("has an odd number of hex digits, {} ({expected})", text.len()));
    }
    if text.len() < MIN_SECRET_BYTES * 2 {
        return Err(format!("is too short: {} hex digits ({expected})", text.len()));
    }
    let digit = |b: u8| (b as char).to_digit(16).expect("checked hex digit") as u8;
    Ok(text.as_bytes().chunks(2).map(|pair| (digit(pair[0]) << 4) | digit(pair[1])).collect())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kv(out: &mut String, key: &str, value: String) {
    out.push_str(&toml_key(key));
    out.push_str(" = ");
    out.push_str(&value);
    out.push('\n');
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.map(|s| toml_str(&s)).collect();
    format!("[{}]", items.join(", "))
}

/// A key as TOML writes it: bare when it can be, else quoted.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { key.to_string() } else { toml_str(key) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../../docs/node.example.toml");

    const MINIMAL: &str = r#"
[farm]
name = "demo"
group = "239.255.77.1:47000"

[node]
name = "node-1"
bind = "127.0.0.1:47101"
data_dir = "/var/lib/dabs/node-1"
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("/etc/dabs/node.toml"))
    }

    /// Asserts `text` is refused at `line` with a message containing every one of `needles`.
    #[track_caller]
    fn refused(text: &str, line: Option<usize>, needles: &[&str]) -> ConfigError {
        let err = parse(text).expect_err("config should be refused");
        assert_eq!(err.line, line, "wrong line for: {err}");
        assert_eq!(err.column.is_some(), line.is_some(), "column without line: {err}");
        for needle in needles {
            assert!(err.message.contains(needle), "{needle:?} not in: {err}");
        }
        assert_eq!(err.file, Path::new("/etc/dabs/node.toml"));
        err
    }

    /// MINIMAL with `line` added just below `header` (appended with the header if absent).
    fn with(header: &str, line: &str) -> String {
        let header = format!("{header}\n");
        match MINIMAL.find(&header) {
            Some(at) => {
                let at = at + header.len();
                format!("{}{line}\n{}", &MINIMAL[..at], &MINIMAL[at..])
            }
            None => format!("{MINIMAL}\n{header}{line}\n"),
        }
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new("/work/main/docs/node.example.toml");
        let c = NodeConfig::parse(EXAMPLE, path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.farm.name, "demo");
        assert_eq!(c.farm.group, "239.255.77.1:47000".parse().unwrap());
        assert_eq!(c.node.name, "node-1");
        assert_eq!(c.node.bind, "127.0.0.1:47101".parse().unwrap());
        assert_eq!(c.node.data_dir, Path::new("/work/main/docs/data/node-1"));
        let calc = c.app("calc").expect("calc app");
        assert!(calc.start_at_init);
        assert!(c.timeouts.contains_key(DEFAULT_TIMEOUT_KEY));
        assert!(c.latency.low_water < c.latency.max_message_latency);
    }

    #[test]
    fn example_health_and_failover_sections() {
        let c = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.health.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mp", "database", "orders-db", "log-shipper"]);
        assert_eq!(c.health.services[2].check, Check::Tcp("127.0.0.1:5432".parse().unwrap()));
        assert!(c.health.services[2].mandatory);
        assert_eq!(c.health.services[3].weight, 30);
        assert_eq!(c.failover.thresholds, Thresholds { failover: 10, connection: 25, returning: 40 });
        assert_eq!(c.failover.first, ["10.0.0.7"]);
        let gold = c.failover.thresholds_for(Some("gold"));
        assert_eq!(gold, Thresholds { failover: 5, connection: 10, returning: 40 });
        assert_eq!(c.failover.return_batch, 50);
    }

    #[test]
    fn bad_health_and_failover_keys_are_refused_with_their_line() {
        refused(
            &with("[failover]", "failover_threshold = 101"),
            Some(12),
            &["failover.failover_threshold", "0..=100"],
        );
        refused(&with("[failover]", "first = [\"not-an-ip\"]"), Some(12), &["failover.first[0]", "IP:PORT"]);
        refused(&with("[failover]", "batch = 0"), Some(12), &["failover.batch", "1..=100000"]);
        let both = "[[health.service]]\nname = \"x\"\ntcp = \"127.0.0.1:1\"\ncommand = [\"true\"]\n";
        refused(&format!("{MINIMAL}\n{both}"), Some(12), &["health.service[0]", "exactly one of tcp"]);
        let builtin = "[[health.service]]\nname = \"mp\"\ntcp = \"127.0.0.1:1\"\n";
        refused(&format!("{MINIMAL}\n{builtin}"), Some(12), &["already a service", "built in"]);
        let weight = "[[health.service]]\nname = \"y\"\ncommand = [\"true\"]\nweight = 200\n";
        refused(&format!("{MINIMAL}\n{weight}"), Some(14), &["health.service[0].weight", "0..=100"]);
    }

    #[test]
    fn defaults_fill_in() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.farm.interface, Ipv4Addr::LOCALHOST);
        assert!(c.farm.seeds.is_empty());
        assert_eq!(c.farm.secret, None);
        assert_eq!(c.node.operator, None);
        assert_eq!(c.node.announce_interval, Duration::from_millis(250));
        assert_eq!(c.node.lease, Duration::from_millis(1500));
        assert!(c.node.accept_encryption, "encryption is accepted unless turned off");
        assert_eq!(c.timeouts, BTreeMap::from([("default".to_string(), Duration::from_millis(100))]));
        assert_eq!(c.timeout_for("db"), Duration::from_millis(100));
        assert_eq!(c.latency.max_message_latency, Duration::from_millis(200));
        assert_eq!(c.latency.low_water, Duration::from_millis(100));
        assert!(c.apps.is_empty());

        let c = parse(&format!("{MINIMAL}\n[timeouts]\ndb = 250\n[[app]]\nname = \"calc\"\n")).unwrap();
        assert_eq!(c.timeout_for("db"), Duration::from_millis(250));
        assert_eq!(c.timeout_for("lock"), Duration::from_millis(100));
        assert_eq!(c.apps, vec![AppConfig::new("calc")]);
        let app = c.app("calc").unwrap();
        assert!(!app.start_at_init);
        assert_eq!(app.min_free_memory_mb, 0);
        assert_eq!(app.max_cpu_percent, 100.0);
        assert_eq!(app.max_sessions_per_portion, 1000);
        assert!(app.allows_node("anything"));
        assert!(c.app("nope").is_none());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let text = MINIMAL.replace("/var/lib/dabs/node-1", "data/node-1");
        let c = parse(&text).unwrap();
        assert_eq!(c.node.data_dir, Path::new("/etc/dabs/data/node-1"));
        // A bare file name means the current directory; the result is still absolute.
        let c = NodeConfig::parse(&text, Path::new("node.toml")).unwrap();
        assert!(c.node.data_dir.is_absolute());
        assert!(c.node.data_dir.ends_with("data/node-1"));
    }

    #[test]
    fn round_trip_through_to_toml() {
        let example = NodeConfig::parse(EXAMPLE, Path::new("/work/main/docs/node.example.toml")).unwrap();
        let mut full = example.clone();
        full.farm.seeds = vec!["10.0.0.2:47101".parse().unwrap(), "[::1]:47102".parse().unwrap()];
        full.farm.secret = Some((0u8..32).collect());
        full.node.operator = Some("127.0.0.1:8101".parse().unwrap());
        full.node.accept_encryption = false;
        full.node.data_dir = PathBuf::from("/srv/dabs \"quoted\" \\ dir");
        full.timeouts.insert("odd key.with dot".to_string(), Duration::from_millis(7));
        let mut app = AppConfig::new("second_app");
        app.max_cpu_percent = 12.345;
        app.subgroup = vec!["node-2".into(), "node-3".into()];
        full.apps.push(app);
        for (config, dir) in [(example, "/work/main/docs"), (full, "/somewhere/else")] {
            let text = config.to_toml();
            let back = NodeConfig::parse(&text, &Path::new(dir).join("gen.toml"))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, config, "\n{text}");
        }
    }

    #[test]
    fn load_reads_files_and_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.hex"), format!("{}\n", "ab".repeat(16))).unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, with("[farm]", "secret_file = \"secret.hex\"")).unwrap();
        let c = NodeConfig::load(&path).unwrap();
        assert_eq!(c.farm.secret, Some(vec![0xab; 16]));

        let text = with("[farm]", "secret_file = \"missing.hex\"");
        let err = NodeConfig::parse(&text, &path).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.message.starts_with("farm.secret_file: cannot read"), "{err}");

        std::fs::write(dir.path().join("short.hex"), "abcd").unwrap();
        let err = NodeConfig::parse(&with("[farm]", "secret_file = \"short.hex\""), &path).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert!(err.message.contains("too short"), "{err}");
    }

    #[test]
    fn unreadable_file_has_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let err = NodeConfig::load(&path).unwrap_err();
        assert_eq!((err.file.as_path(), err.line, err.column), (path.as_path(), None, None));
        assert_eq!(err.to_string(), format!("{}: {}", path.display(), err.message));
        assert!(err.message.contains("cannot read"), "{err}");
    }

    #[test]
    fn display_shows_file_line_column() {
        let err = refused(&with("[farm]", "grup = 1"), Some(3), &["farm.grup"]);
        assert_eq!(err.column, Some(1));
        assert_eq!(err.to_string(), format!("/etc/dabs/node.toml:3:1: {}", err.message));
    }

    #[test]
    fn bad_configs_point_at_the_line() {
        // MINIMAL: line 2 [farm], 3 name, 4 group, 6 [node], 7 name, 8 bind, 9 data_dir.
        refused(&MINIMAL.replace("bind = \"127.0.0.1:47101\"\n", ""), Some(6), &["node.bind", "missing"]);
        refused(&MINIMAL.replace("name = \"demo\"\n", ""), Some(2), &["farm.name", "missing"]);
        refused(&MINIMAL.replace("[node]", "[nodes]"), Some(6), &["nodes", "unknown key"]);
        refused(&MINIMAL[..MINIMAL.find("[node]").unwrap()], None, &["[node]", "missing"]);
        refused(&with("[node]", "lease = 3000"), Some(7), &["node.lease", "unknown key", "lease_ms"]);
        refused(&with("[[app]]", "name = \"calc\"\nstart_at_int = true"), Some(13), &["app[0].start_at_int"]);
        refused(
            &with("[node]", "announce_interval_ms = \"250\""),
            Some(7),
            &["node.announce_interval_ms", "string"],
        );
        refused(&with("[node]", "announce_interval_ms = -5"), Some(7), &["node.announce_interval_ms"]);
        refused(&with("[farm]", "seeds = \"127.0.0.1:1\""), Some(3), &["farm.seeds", "sequence"]);
        refused("[farm\nname = 1", Some(1), &["invalid TOML"]);
        refused(&with("[farm]", "name = \"again\""), Some(4), &["duplicate key", "`name`"]);
        refused(
            &MINIMAL.replace("239.255.77.1:47000", "10.0.0.1:47000"),
            Some(4),
            &["farm.group: 10.0.0.1:47000 is not a multicast address (expected 224.0.0.0/4)"],
        );
        refused(&MINIMAL.replace("239.255.77.1:47000", "239.255.77.1:0"), Some(4), &["farm.group", "port 0"]);
        refused(&MINIMAL.replace("239.255.77.1:47000", "239.255.77.1"), Some(4), &["farm.group", "IPv4"]);
        refused(&MINIMAL.replace("239.255.77.1:47000", "[ff02::1]:47000"), Some(4), &["farm.group", "IPv4"]);
        refused(
            &MINIMAL.replace("127.0.0.1:47101", "127.0.0.1:70000"),
            Some(8),
            &["node.bind", "IP address and port"],
        );
        refused(&with("[farm]", "interface = \"eth0\""), Some(3), &["farm.interface", "IPv4"]);
        refused(
            &with("[farm]", "seeds = [\n  \"127.0.0.1:1\",\n  \"nope\",\n]"),
            Some(5),
            &["farm.seeds[1]"],
        );
        refused(&with("[farm]", "seeds = [\"127.0.0.1:0\"]"), Some(3), &["farm.seeds[0]", "non-zero port"]);
        refused(&with("[node]", "operator = \"localhost:80\""), Some(7), &["node.operator"]);
        refused(&MINIMAL.replace("\"demo\"", "\"de mo\""), Some(3), &["farm.name", "' '"]);
        refused(&MINIMAL.replace("\"node-1\"", "\"\""), Some(7), &["node.name", "empty"]);
        refused(&with("[[app]]", "name = \"calc/1\""), Some(12), &["app[0].name", "'/'"]);
        refused(
            &with("[[app]]", "name = \"calc\"\nsubgroup = [\"node-1\", \"node 2\"]"),
            Some(13),
            &["app[0].subgroup[1]"],
        );
        refused(
            &with("[[app]]", "name = \"calc\"\nsubgroup = [\"n\", \"n\"]"),
            Some(13),
            &["app[0].subgroup[1]", "twice"],
        );
        refused(
            &with("[latency]", "max_message_latency_ms = 200\nlow_water_ms = 200"),
            Some(13),
            &["latency.low_water_ms", "max_message_latency_ms = 200"],
        );
        refused(
            &with("[latency]", "max_message_latency_ms = 80"),
            Some(12),
            &["latency.low_water_ms", "100"],
        );
        refused(
            &format!("{MINIMAL}\n[[app]]\nname = \"calc\"\n\n[[app]]\nname = \"calc\"\n"),
            Some(15),
            &["app[1].name", "duplicate", "\"calc\"", "line 12"],
        );
        refused(
            &with("[node]", "lease_ms = 500"),
            Some(7),
            &["node.lease_ms", "500", "2 * node.announce_interval_ms = 500"],
        );
        refused(&with("[node]", "lease_ms = 60001"), Some(7), &["node.lease_ms", "60000"]);
        refused(&with("[node]", "announce_interval_ms = 1000"), Some(7), &["node.lease_ms", "default 1500"]);
        refused(
            &with("[node]", "announce_interval_ms = 40"),
            Some(7),
            &["node.announce_interval_ms", "50..=5000"],
        );
        refused(&with("[farm]", "secret = \"xyz\""), Some(3), &["farm.secret", "not hex"]);
        refused(&with("[farm]", "secret = \"0011\""), Some(3), &["farm.secret", "too short"]);
        refused(&with("[farm]", "secret = \"001\""), Some(3), &["farm.secret", "odd"]);
        refused(
            &with("[farm]", &format!("secret = \"{}\"\nsecret_file = \"s.hex\"", "00".repeat(16))),
            Some(4),
            &["farm.secret_file", "at most one"],
        );
        refused(&with("[timeouts]", "db = 0"), Some(12), &["timeouts.db", "1..=600000"]);
        refused(&with("[timeouts]", "\"a b\" = 600001"), Some(12), &["timeouts.\"a b\""]);
        refused(&with("[timeouts]", "db = \"fast\""), Some(12), &["timeouts.db"]);
        refused(
            &with("[latency]", "max_message_latency_ms = 1.5"),
            Some(12),
            &["latency.max_message_latency_ms"],
        );
        refused(
            &with("[[app]]", "name = \"calc\"\nmax_cpu_percent = 0.0"),
            Some(13),
            &["app[0].max_cpu_percent"],
        );
        refused(
            &with("[[app]]", "name = \"calc\"\nmax_cpu_percent = nan"),
            Some(13),
            &["app[0].max_cpu_percent"],
        );
        refused(
            &with("[[app]]", "name = \"calc\"\nmax_sessions_per_portion = 0"),
            Some(13),
            &["max_sessions_per_portion"],
        );
        refused(&with("[[app]]", "start_at_init = true"), Some(11), &["app[0].name", "missing"]);
        refused(&format!("{MINIMAL}app = 5\n"), Some(10), &["node.app"]);
        refused(&format!("app = 5\n{MINIMAL}"), Some(1), &["app", "sequence"]);
        refused("farm = 5\n", Some(1), &["farm", "a table"]);
        refused(&with("[node]", "accept_encryption = \"no\""), Some(7), &["node.accept_encryption", "bool"]);
        refused(
            &with("[farm]", "accept_encryption = false"),
            Some(3),
            &["farm.accept_encryption", "unknown key"],
        );
    }

    #[test]
    fn encryption_can_be_refused() {
        let c = parse(&with("[node]", "accept_encryption = false")).unwrap();
        assert!(!c.node.accept_encryption);
        let back = NodeConfig::parse(&c.to_toml(), Path::new("/etc/dabs/gen.toml")).unwrap();
        assert_eq!(back, c, "written and read back");
    }

    #[test]
    fn valid_edge_values_are_accepted() {
        let text = format!(
            "{}\n[[app]]\nname = \"x\"\nmax_cpu_percent = 100\nmax_sessions_per_portion = 1000000\n",
            MINIMAL.replace("127.0.0.1:47101", "[::]:0")
        );
        let c = parse(&with("[node]", "announce_interval_ms = 50\nlease_ms = 101")).unwrap();
        assert_eq!(c.node.lease, Duration::from_millis(101));
        let c = NodeConfig::parse(&text, Path::new("/n.toml")).unwrap();
        assert_eq!(c.node.bind, "[::]:0".parse().unwrap());
        assert_eq!(c.apps[0].max_cpu_percent, 100.0);
        assert_eq!(c.apps[0].max_sessions_per_portion, 1_000_000);
        let c = parse(&with("[latency]", "low_water_ms = 0")).unwrap();
        assert_eq!(c.latency.low_water, Duration::ZERO);
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_column("ab\ncé\nx", 6), (2, 3));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
