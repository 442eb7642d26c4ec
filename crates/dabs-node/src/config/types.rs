//! The validated configuration: what the rest of the node reads.
//!
//! These types hold values, not text: durations, addresses, decoded secrets. The file's own
//! layout (key names, milliseconds, hex) is [`super::file`]'s business.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use super::defaults::{
    DEFAULT_COLLECT_INTERVAL, DEFAULT_MAX_CPU_PERCENT, DEFAULT_MAX_SESSIONS_PER_PORTION, DEFAULT_TIMEOUT,
    DEFAULT_TIMEOUT_KEY,
};
use super::error::TokenError;
use crate::health::HealthConfig;
use crate::zones::FailoverPolicy;

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
    /// The `[operator]` section: who may use the operator interface (`node.operator`).
    pub operator: OperatorAccess,
    /// The `[dns]` section: the node's authoritative DNS front.
    pub dns: DnsConfig,
    /// The `[[subfarm]]` records: named sets of nodes ranked by a policy of their own.
    pub subfarms: Vec<crate::policy::SubFarm>,
    /// The `[service]` section: the farm's floating service address, if it has one.
    pub service: Option<ServiceAddress>,
    /// The `[vipa]` section: this host's virtual interface address, which the node binds to
    /// and sends from, reachable through any of the host's links.
    pub vipa: Option<ServiceAddress>,
    /// The `[jobs]` section: this node's part in the job-execution service (seed 002).
    pub jobs: JobsConfig,
}

/// The `[jobs]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// The node runs tasks (registers as a compute server).
    pub compute: bool,
    /// Worker threads running tasks.
    pub threads: u16,
    /// The node runs the farm's balancer when it is the decider.
    pub balancer: bool,
    /// What the balancer chooses compute servers by.
    pub criterion: crate::jobs::Criterion,
    /// Most fuel a job may give each task (and the fuel of a job that names none).
    pub max_fuel: u64,
    /// Memory cap per task, MiB.
    pub memory_mb: u64,
}

impl Default for JobsConfig {
    /// A compute server with a thread per CPU (at most 8), and a balancer when deciding, by
    /// least total busy time; 1 G fuel and 64 MiB per task.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u16;
        JobsConfig {
            compute: true,
            threads: cpus,
            balancer: true,
            criterion: crate::jobs::Criterion::LeastBusy,
            max_fuel: 1_000_000_000,
            memory_mb: 64,
        }
    }
}

/// An address on an interface: the `[service]` section (one healthy node of the farm holds
/// it at a time, docs/farm.md "The service address") or the `[vipa]` section (this host's
/// virtual interface address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddress {
    /// The address, IPv4.
    pub ip: std::net::Ipv4Addr,
    /// Its prefix length on the interface (1 ..= 32).
    pub prefix: u8,
    /// The interface the holder adds it to (and sends gratuitous ARP on).
    pub interface: String,
}

/// The `[dns]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Whether the node serves DNS at all (default true).
    pub enabled: bool,
    /// UDP and TCP address; `None`: the node's bind address with a free port.
    pub bind: Option<SocketAddr>,
    /// The zone, lower case with a trailing dot (default `FARM.dabs.`).
    pub zone: String,
    /// Time to live of every answer, seconds (1 ..= 3600, default 5).
    pub ttl_s: u32,
}

impl DnsConfig {
    /// The defaults for farm `farm`.
    pub fn for_farm(farm: &str) -> Self {
        DnsConfig {
            enabled: true,
            bind: None,
            zone: format!("{}.dabs.", farm.to_ascii_lowercase()),
            ttl_s: 5,
        }
    }
}

/// The `[operator]` section: the credentials of the operator interface.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorAccess {
    /// The bearer token that every change, the traffic tap and job submission need, from
    /// `token` or `token_file`. Without one those are refused; required when `node.operator`
    /// is not a loopback address.
    pub token: Option<OperatorToken>,
    /// Whether the read-only views (`GET /api/...`, `/metrics`) are open without the token.
    /// `None` (left out): open when `node.operator` is a loopback address, closed otherwise;
    /// see [`NodeConfig::operator_reads_open`].
    pub open_reads: Option<bool>,
}

/// An operator token: 16 to 256 visible ASCII characters, no spaces. It never shows in
/// `Debug` output, so logging a configuration does not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken(String);

impl OperatorToken {
    /// Fewest characters of a token.
    pub const MIN_LEN: usize = 16;
    /// Most characters of a token.
    pub const MAX_LEN: usize = 256;

    /// Checks `text` (surrounding whitespace ignored) and keeps it as a token.
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if let Some((i, found)) = text.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter { position: i + 1, found });
        }
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&text.len()) {
            return Err(TokenError::Length { len: text.len() });
        }
        Ok(OperatorToken(text.to_owned()))
    }

    /// The token's text, for the one place that compares it (in constant time) or writes it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(<redacted>)")
    }
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
    /// A portion without clients this long is retired (stopped, its record removed), down to
    /// the application's minimum here; zero: never. The farm's run-time settings override it.
    pub retire_idle_after: Duration,
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
    /// Where membership and the decider live: announcements (the default) or etcd.
    pub registry: Registry,
}

/// The engine that keeps the farm's membership and chooses its decider.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Registry {
    /// Announcements over the multicast group and the seeds; the oldest member decides.
    #[default]
    Multicast,
    /// Leased keys in etcd and its election API (farms beyond one network).
    Etcd {
        /// Client URLs of the etcd cluster, `http://HOST:PORT`.
        endpoints: Vec<String>,
    },
}

impl Registry {
    /// The etcd endpoints, when etcd is the registry.
    pub fn etcd(&self) -> Option<&[String]> {
        match self {
            Registry::Multicast => None,
            Registry::Etcd { endpoints } => Some(endpoints),
        }
    }
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
    /// Whether clients may reach this node by MP over TCP (interop.md, "MP over a stream")
    /// on its MP port number, for networks that block UDP. Default false.
    pub tcp: bool,
    /// Portions this node runs at most, every application together (1 ..= 65 520, default
    /// 256): a start beyond it — spawned, assigned, restored — is refused.
    pub max_portions: u32,
}

impl NodeConfig {
    /// Whether everything this node sends or hears stays on this host: its endpoint, its
    /// multicast interface and every seed are loopback. Only such a node may run without a
    /// farm secret.
    pub fn loopback_only(&self) -> bool {
        self.node.bind.ip().is_loopback()
            && self.farm.interface.is_loopback()
            && self.farm.seeds.iter().all(|s| s.ip().is_loopback())
    }
}

/// The `[latency]` section: message latency limits.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyLimits {
    /// High-water mark: latency above this counts as overload.
    pub max_message_latency: Duration,
    /// Low-water mark: latency below this counts as recovered; less than the high-water mark.
    pub low_water: Duration,
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
    /// A growing portion adds workers up to this many at most (1 ..= 1024; R-LB-7); `None`:
    /// the application's own ceiling and the server's CPUs.
    pub max_workers: Option<u32>,
    /// The program (then its arguments) run as the server portion; empty for an application
    /// built into the node. A relative program path with a `/` is taken from the file's folder.
    pub command: Vec<String>,
    /// The policy that picks its preferred server (`policy`, default `least_loaded`).
    pub policy: crate::policy::Policy,
    /// How often the server monitor reads its portions' status objects (`collect_interval_ms`).
    pub collect_interval: Duration,
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
            max_workers: None,
            command: Vec::new(),
            policy: crate::policy::Policy::LeastLoaded,
            collect_interval: DEFAULT_COLLECT_INTERVAL,
        }
    }

    /// Whether the subgroup lets node `node` run this application.
    pub fn allows_node(&self, node: &str) -> bool {
        self.subgroup.is_empty() || self.subgroup.iter().any(|n| n == node)
    }
}

impl NodeConfig {
    /// Whether the operator interface's read-only views are open without the token:
    /// `operator.open_reads` when set, else whether `node.operator` is a loopback address.
    pub fn operator_reads_open(&self) -> bool {
        self.operator.open_reads.unwrap_or_else(|| self.node.operator.is_none_or(|a| a.ip().is_loopback()))
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
}
