//! A builder for the configuration a test node needs: the documented keys of
//! `docs/node.example.toml`, checked by the node's own parser before a test uses them.

use dabs_node::config::NodeConfig;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

/// A node's configuration, built up key by key. Every node binds its MP endpoint to a free
/// loopback port and joins its group on loopback unless told otherwise.
#[derive(Debug, Clone)]
pub struct NodeConfigBuilder {
    farm: String,
    group: SocketAddrV4,
    name: String,
    bind: String,
    interface: String,
    seeds: Vec<String>,
    etcd: Option<String>,
    data_dir: PathBuf,
    operator: Option<String>,
    secret: Option<String>,
    accept_encryption: Option<bool>,
    tcp: Option<bool>,
    apps: String,
    extra: String,
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl NodeConfigBuilder {
    /// Node `name` of farm `farm` on multicast group `group`, keeping its data in a directory
    /// named after it beside its configuration file.
    pub fn new(farm: &str, group: SocketAddrV4, name: &str) -> Self {
        NodeConfigBuilder {
            farm: farm.into(),
            group,
            name: name.into(),
            bind: "127.0.0.1:0".into(),
            interface: "127.0.0.1".into(),
            seeds: Vec::new(),
            etcd: None,
            data_dir: PathBuf::from(name),
            operator: None,
            secret: None,
            accept_encryption: None,
            tcp: None,
            apps: String::new(),
            extra: String::new(),
        }
    }

    /// Binds the MP endpoint to `addr` (e.g. a fixed port for a restart on the same address).
    pub fn bind(mut self, addr: impl ToString) -> Self {
        self.bind = addr.to_string();
        self
    }

    /// Joins the group on `ip`'s interface (default loopback).
    pub fn interface(mut self, ip: impl ToString) -> Self {
        self.interface = ip.to_string();
        self
    }

    /// Announces also to these seeds (`IP:PORT`), for networks without multicast.
    pub fn seeds(mut self, seeds: &[std::net::SocketAddr]) -> Self {
        self.seeds = seeds.iter().map(ToString::to_string).collect();
        self
    }

    /// Keeps membership and the decider in the etcd at `url` (`registry = "etcd"`).
    pub fn etcd(mut self, url: &str) -> Self {
        self.etcd = Some(url.to_owned());
        self
    }

    /// Serves the operator interface at `addr` (e.g. `10.88.0.2:0`), reads open without the
    /// token (for tests outside loopback).
    pub fn operator_at(mut self, addr: impl ToString) -> Self {
        self.operator = Some(addr.to_string());
        self.extra
            .push_str("[operator]\nopen_reads = true\ntoken = \"hosts-test-operator-token-0123456789\"\n");
        self
    }

    /// Keeps the data in `dir` (relative to the configuration file's directory, or absolute).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Serves the operator interface on a free loopback port.
    pub fn operator(mut self) -> Self {
        self.operator = Some("127.0.0.1:0".into());
        self
    }

    /// Sets the farm secret (hex).
    pub fn secret(mut self, hex: &str) -> Self {
        self.secret = Some(hex.into());
        self
    }

    /// Sets `node.accept_encryption`.
    pub fn accept_encryption(mut self, accept: bool) -> Self {
        self.accept_encryption = Some(accept);
        self
    }

    /// Sets `node.tcp`: clients may reach the node by MP over TCP.
    pub fn tcp(mut self, on: bool) -> Self {
        self.tcp = Some(on);
        self
    }

    /// Adds an `[[app]]` record for application `name`.
    pub fn app(self, name: &str, start_at_init: bool) -> Self {
        self.app_with(name, &format!("start_at_init = {start_at_init}\n"))
    }

    /// Adds an `[[app]]` record for application `name` with further keys (`KEY = VALUE` lines).
    pub fn app_with(mut self, name: &str, keys: &str) -> Self {
        self.apps.push_str(&format!("\n[[app]]\nname = {}\n{keys}", quoted(name)));
        if !self.apps.ends_with('\n') {
            self.apps.push('\n');
        }
        self
    }

    /// Appends TOML text of further sections (it must begin with a table header, e.g.
    /// `[failover]` or `[health]`).
    pub fn extra(mut self, toml: &str) -> Self {
        assert!(
            toml.trim_start().starts_with('['),
            "extra configuration must begin with a table header: {toml:?}"
        );
        self.extra.push('\n');
        self.extra.push_str(toml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration file's text.
    pub fn toml(&self) -> String {
        let mut out = format!(
            "[farm]\nname = {}\ngroup = \"{}\"\ninterface = {}\n",
            quoted(&self.farm),
            self.group,
            quoted(&self.interface)
        );
        if !self.seeds.is_empty() {
            let seeds: Vec<String> = self.seeds.iter().map(|s| quoted(s)).collect();
            out.push_str(&format!("seeds = [{}]\n", seeds.join(", ")));
        }
        if let Some(url) = &self.etcd {
            out.push_str(&format!("registry = \"etcd\"\netcd = [{}]\n", quoted(url)));
        }
        if let Some(secret) = &self.secret {
            out.push_str(&format!("secret = {}\n", quoted(secret)));
        }
        out.push_str(&format!(
            "\n[node]\nname = {}\nbind = {}\ndata_dir = {}\n",
            quoted(&self.name),
            quoted(&self.bind),
            quoted(&self.data_dir.to_string_lossy())
        ));
        if let Some(at) = &self.operator {
            out.push_str(&format!("operator = {}\n", quoted(at)));
        }
        if let Some(accept) = self.accept_encryption {
            out.push_str(&format!("accept_encryption = {accept}\n"));
        }
        if let Some(on) = self.tcp {
            out.push_str(&format!("tcp = {on}\n"));
        }
        out.push_str(&self.extra);
        out.push_str(&self.apps);
        out
    }

    /// The file this configuration is written to (and read as) in `dir`: `dir/NAME.toml`.
    pub fn path_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.toml", self.name))
    }

    /// The parsed configuration, as if read from `dir/NAME.toml` (a relative data directory is
    /// under `dir`); panics with the parser's file-and-line message when it is refused.
    pub fn build(&self, dir: &Path) -> NodeConfig {
        let path = self.path_in(dir);
        NodeConfig::parse(&self.toml(), &path).unwrap_or_else(|e| panic!("{e}\n{}", self.toml()))
    }

    /// Checks the configuration (as [`NodeConfigBuilder::build`]) and writes it to
    /// `dir/NAME.toml`; returns that path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.build(dir);
        let path = self.path_in(dir);
        std::fs::write(&path, self.toml()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_built_is_what_the_node_reads() {
        let dir = Path::new("/tmp/farm");
        let group = "239.255.3.4:47000".parse().unwrap();
        let c = NodeConfigBuilder::new("t", group, "node-1")
            .data_dir("data \"1\"")
            .operator()
            .secret("00112233445566778899aabbccddeeff")
            .accept_encryption(false)
            .app("calc", true)
            .app_with("slow", "start_at_init = false\nmax_sessions_per_portion = 1")
            .extra("[failover]\nfailover_threshold = 10\nconnection_threshold = 50")
            .build(dir);
        assert_eq!((c.farm.name.as_str(), c.farm.group, c.node.name.as_str()), ("t", group, "node-1"));
        assert_eq!(c.node.data_dir, dir.join("data \"1\""));
        assert!(c.node.operator.is_some() && !c.node.accept_encryption && c.farm.secret.is_some());
        assert_eq!(
            c.apps.iter().map(|a| (a.name.as_str(), a.start_at_init)).collect::<Vec<_>>(),
            [("calc", true), ("slow", false)]
        );
        assert_eq!(c.apps[1].max_sessions_per_portion, 1);
        assert_eq!((c.failover.thresholds.failover, c.failover.thresholds.connection), (10, 50));
    }
}
