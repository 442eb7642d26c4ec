//! Validation of the `[dns]`, `[jobs]` and `[[subfarm]]` tables and of each application's `policy` and
//! `collect_interval_ms` (seed 003).

use std::time::Duration;

use toml::Spanned;

use super::defaults::{COLLECT_INTERVAL_RANGE_MS, DEFAULT_COLLECT_INTERVAL};
use super::error::ConfigError;
use super::file::{RawDns, RawJobs, RawSubFarm};
use super::read::Cx;
use super::types::{DnsConfig, JobsConfig};
use crate::policy::{Policy, SubFarm};

/// `dns.ttl_s`: never 0 (resolvers would ask for every lookup), at most an hour.
const TTL_RANGE_S: (u64, u64) = (1, 3600);

impl Cx<'_> {
    /// A policy name at `key`.
    pub(crate) fn policy(&self, value: &Spanned<String>, key: &str) -> Result<Policy, ConfigError> {
        value.get_ref().parse().map_err(|e: crate::policy::UnknownPolicy| ConfigError::BadPolicy {
            at: self.at(value),
            key: key.into(),
            message: e.to_string(),
        })
    }

    /// An application's policy and collection interval.
    pub(crate) fn app_policy(
        &self,
        policy: &Option<Spanned<String>>,
        interval: &Option<Spanned<u64>>,
        i: usize,
    ) -> Result<(Policy, Duration), ConfigError> {
        let policy = match policy {
            Some(p) => self.policy(p, &format!("app[{i}].policy"))?,
            None => Policy::LeastLoaded,
        };
        let interval = match interval {
            Some(v) => self.ms_in(v, &format!("app[{i}].collect_interval_ms"), COLLECT_INTERVAL_RANGE_MS)?,
            None => DEFAULT_COLLECT_INTERVAL,
        };
        Ok((policy, interval))
    }

    /// `[jobs]`.
    pub(crate) fn jobs(&self, raw: Option<RawJobs>) -> Result<JobsConfig, ConfigError> {
        let mut cfg = JobsConfig::default();
        let Some(raw) = raw else { return Ok(cfg) };
        cfg.compute = raw.compute.unwrap_or(cfg.compute);
        cfg.balancer = raw.balancer.unwrap_or(cfg.balancer);
        if let Some(t) = &raw.threads {
            cfg.threads = self.int_in(t, "jobs.threads", (1, 256))? as u16;
        }
        if let Some(c) = &raw.criterion {
            cfg.criterion = c.get_ref().parse().map_err(|message| ConfigError::BadPolicy {
                at: self.at(c),
                key: "jobs.criterion".into(),
                message,
            })?;
        }
        if let Some(f) = &raw.max_fuel {
            cfg.max_fuel = self.int_in(f, "jobs.max_fuel", (1_000, 1 << 50))?;
        }
        if let Some(m) = &raw.memory_mb {
            cfg.memory_mb = self.int_in(m, "jobs.memory_mb", (1, 4096))?;
        }
        Ok(cfg)
    }

    /// `[dns]` for farm `farm`.
    pub(crate) fn dns(&self, raw: Option<RawDns>, farm: &str) -> Result<DnsConfig, ConfigError> {
        let mut cfg = DnsConfig::for_farm(farm);
        let Some(raw) = raw else { return Ok(cfg) };
        cfg.enabled = raw.enabled.unwrap_or(true);
        if let Some(b) = &raw.bind {
            cfg.bind = Some(self.socket_addr(b, "dns.bind")?);
        }
        if let Some(z) = &raw.zone {
            let zone = z.get_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            let label_ok = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if zone.is_empty() || zone.len() > 250 || !zone.split('.').all(label_ok) {
                return Err(ConfigError::BadPolicy {
                    at: self.at(z),
                    key: "dns.zone".into(),
                    message: format!(
                        "{:?} is not a DNS zone name (labels of 1 to 63 of a-z 0-9 - _, separated by dots)",
                        z.get_ref()
                    ),
                });
            }
            cfg.zone = format!("{zone}.");
        }
        if let Some(t) = &raw.ttl_s {
            cfg.ttl_s = self.int_in(t, "dns.ttl_s", TTL_RANGE_S)? as u32;
        }
        Ok(cfg)
    }

    /// The `[service]` section: `IPv4/PREFIX` on a named interface, served at the node's MP
    /// port, which must then be fixed (the same on every node).
    pub(crate) fn service(
        &self,
        raw: super::file::RawServiceAddress,
        node: &super::types::NodeSection,
    ) -> Result<super::types::ServiceAddress, ConfigError> {
        let bad = |at: &Spanned<String>, key: &str, message: String| ConfigError::BadService {
            at: self.at(at),
            key: key.into(),
            message,
        };
        let text = raw.address.get_ref();
        let parsed = text.split_once('/').and_then(|(ip, prefix)| {
            Some((
                ip.parse::<std::net::Ipv4Addr>().ok()?,
                prefix.parse::<u8>().ok().filter(|p| (1..=32).contains(p))?,
            ))
        });
        let Some((ip, prefix)) = parsed.filter(|(ip, _)| !ip.is_unspecified() && !ip.is_multicast()) else {
            return Err(bad(
                &raw.address,
                "service.address",
                format!("{text:?} is not an IPv4 address with a prefix (expected e.g. \"10.0.0.100/24\")"),
            ));
        };
        let interface = raw.interface.get_ref().trim();
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
            return Err(bad(
                &raw.interface,
                "service.interface",
                format!("{interface:?} is not an interface name (expected e.g. \"eth0\")"),
            ));
        }
        if node.bind.port() == 0 {
            return Err(bad(&raw.address, "service.address", "clients reach the service address at the node's MP port, so node.bind needs a fixed port (the same on every node), not 0".into()));
        }
        Ok(super::types::ServiceAddress { ip, prefix, interface: interface.to_owned() })
    }

    /// The `[vipa]` section: `IPv4/PREFIX` on an always-up interface (default `lo`); the node
    /// binds to it, so `node.bind` must name it.
    pub(crate) fn vipa(
        &self,
        raw: super::file::RawVipa,
        node: &super::types::NodeSection,
    ) -> Result<super::types::ServiceAddress, ConfigError> {
        let interface = raw.interface.unwrap_or_else(|| super::file::unspanned("lo".to_owned()));
        let address = raw.address.clone();
        let v = self.service(super::file::RawServiceAddress { address: raw.address, interface }, node)?;
        if node.bind.ip() != std::net::IpAddr::V4(v.ip) {
            return Err(ConfigError::BadService {
                at: self.at(&address),
                key: "vipa.address".into(),
                message: format!(
                    "the node sends from its VIPA, so node.bind must be {}:PORT (it is {})",
                    v.ip, node.bind
                ),
            });
        }
        Ok(v)
    }

    /// The `[[subfarm]]` records: unique names, each node in one sub-farm at most.
    pub(crate) fn subfarms(&self, raw: Vec<Spanned<RawSubFarm>>) -> Result<Vec<SubFarm>, ConfigError> {
        let mut out: Vec<SubFarm> = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            let s = s.into_inner();
            let name = self.name(&s.name, &format!("subfarm[{i}].name"))?;
            if out.iter().any(|f| f.name == name) {
                let key = format!("subfarm[{i}].name");
                return Err(ConfigError::ListedTwice { at: self.at(&s.name), key, name });
            }
            let mut nodes = Vec::with_capacity(s.nodes.len());
            for (j, n) in s.nodes.iter().enumerate() {
                let key = format!("subfarm[{i}].nodes[{j}]");
                let node = self.name(n, &key)?;
                if nodes.contains(&node) || out.iter().any(|f| f.nodes.contains(&node)) {
                    return Err(ConfigError::ListedTwice { at: self.at(n), key, name: node });
                }
                nodes.push(node);
            }
            let policy = self.policy(&s.policy, &format!("subfarm[{i}].policy"))?;
            out.push(SubFarm { name, nodes, policy });
        }
        Ok(out)
    }
}
