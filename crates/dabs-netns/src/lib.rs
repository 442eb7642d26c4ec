//! Hosts as Linux network namespaces (issue 13): namespaces this process creates and deletes,
//! and [`Hosts`], N of them on a bridge, each with its own address from 10.88.0.0/24, a range
//! used only inside them. Everything is made with iproute2's `ip` (and nftables' `nft` to drop
//! multicast at the bridge) and removed on drop. Needs root (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a namespace or a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Not root.
    #[error("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run as root")]
    NotRoot,
    /// A command could not run (not installed?).
    #[error("cannot run {program}: {source} (install iproute2 and nftables)")]
    Missing {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
}

fn run(program: &str, args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetnsError::Missing { program: program.into(), source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetnsError::Failed {
        command: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// `ip ARGS...` in the calling thread's namespace (inside [`Netns::run_inside`], that one).
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    run("ip", args)
}

/// A network namespace of this process's own, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `dabs-TAG-PID-N` with its loopback up.
    pub fn create(tag: &str) -> Result<Netns, NetnsError> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(NetnsError::NotRoot);
        }
        let name = format!("dabs-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (for `ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip ARGS...` inside it.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `program ARGS...` inside it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<(), NetnsError> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Lets the loopback carry the farm's multicast (for nodes that all live in this namespace).
    pub fn loopback_multicast(&self) -> Result<(), NetnsError> {
        self.ip(&["link", "set", "lo", "multicast", "on"])?;
        self.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"])
    }

    /// A command that runs `program` inside it (`ip netns exec`, which becomes the program:
    /// signals reach it).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread of its own that has entered the namespace: its sockets, and the
    /// processes it starts, live there. A panic in `f` comes back as this call's panic.
    pub fn run_inside<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a thread of its own inside network namespace `name` (see [`Netns::run_inside`]).
pub fn run_in<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/run/netns/{name}");
    let thread = std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        // SAFETY: a valid namespace descriptor; setns changes this thread's namespace only.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
        f()
    });
    match thread.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The switch's own address on the bridge: where the farm is observed from.
pub const OBSERVER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 254);

/// Hosts on one bridge: each host a namespace with one interface (`eth0`, 10.88.0.N/24) on a
/// bridge in a namespace of its own (the switch, which also holds [`OBSERVER`]).
#[derive(Debug)]
pub struct Hosts {
    // Dropped before the switch: each host's veth goes with its namespace.
    hosts: Vec<Netns>,
    switch: Netns,
}

impl Hosts {
    /// `n` hosts (1..=250) on a bridge, multicast forwarded between them (no IGMP snooping:
    /// nothing on the bridge would answer its queries).
    pub fn create(n: usize) -> Result<Hosts, NetnsError> {
        if !(1..=250).contains(&n) {
            return Err(NetnsError::Failed { command: format!("{n} hosts"), stderr: "1..=250 hosts".into() });
        }
        let switch = Netns::create("sw")?;
        switch.ip(&["link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        switch.ip(&["addr", "add", &format!("{OBSERVER}/24"), "dev", "br0"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut hosts = Vec::with_capacity(n);
        for i in 1..=n {
            let host = Netns::create(&format!("h{i}"))?;
            let port = format!("v{i}");
            switch.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.name(),
            ])?;
            switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
            host.ip(&["addr", "add", &format!("{}/24", Hosts::addr(i)), "dev", "eth0"])?;
            host.ip(&["link", "set", "eth0", "up"])?;
            host.ip(&["route", "add", "224.0.0.0/4", "dev", "eth0"])?;
            hosts.push(host);
        }
        Ok(Hosts { hosts, switch })
    }

    /// Host `i`'s address (1-based).
    pub fn addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, i as u8)
    }

    /// Host `i`'s namespace (1-based).
    pub fn host(&self, i: usize) -> &Netns {
        &self.hosts[i - 1]
    }

    /// The switch's namespace: where the farm is reachable from ([`Netns::run_inside`]).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Drops multicast between the hosts at the bridge (nftables): only unicast crosses, as
    /// on a network that filters multicast.
    pub fn block_multicast(&self) -> Result<(), NetnsError> {
        let rules = "table bridge dabs {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  \
                     ip daddr 224.0.0.0/4 counter drop\n }\n}\n";
        self.nft(rules, "multicast")
    }

    /// Loads nftables `rules` into the switch's namespace (through a file named for `what`).
    fn nft(&self, rules: &str, what: &str) -> Result<(), NetnsError> {
        let path = std::env::temp_dir().join(format!("{}-{what}.nft", self.switch.name()));
        std::fs::write(&path, rules).map_err(|e| NetnsError::Failed {
            command: format!("write {}", path.display()),
            stderr: e.to_string(),
        })?;
        let done = self.switch.exec("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(path);
        done
    }

    /// Drops UDP to host `i`'s `port` at the bridge (nftables), as a network that lets only TCP
    /// through would; TCP to it still crosses.
    pub fn block_udp_to(&self, i: usize, port: u16) -> Result<(), NetnsError> {
        self.block_to(i, "udp", port)
    }

    /// Drops `protocol` (`udp` or `tcp`) to host `i`'s `port` at the bridge (nftables), each
    /// protocol in a table of its own (`dabs_udp`, `dabs_tcp`) with its own counter.
    pub fn block_to(&self, i: usize, protocol: &str, port: u16) -> Result<(), NetnsError> {
        let rules = format!(
            "table bridge dabs_{protocol} {{\n chain forward {{\n  type filter hook forward priority 0; policy accept;\n  \
             ip daddr {} {protocol} dport {port} counter drop\n }}\n}}\n",
            Hosts::addr(i)
        );
        self.nft(&rules, protocol)
    }

    /// UDP packets [`Hosts::block_udp_to`] dropped so far.
    pub fn udp_dropped(&self) -> u64 {
        self.dropped("udp")
    }

    /// Packets of `protocol` that [`Hosts::block_to`] dropped so far.
    pub fn dropped(&self, protocol: &str) -> u64 {
        let table = format!("dabs_{protocol}");
        let Ok(out) = self.switch.command("nft").args(["list", "table", "bridge", &table]).output() else {
            return 0;
        };
        packets_of(&String::from_utf8_lossy(&out.stdout))
    }

    /// Multicast packets the bridge dropped so far ([`Hosts::block_multicast`]'s counter).
    pub fn multicast_dropped(&self) -> u64 {
        let Ok(out) = self.switch.command("nft").args(["list", "table", "bridge", "dabs"]).output() else {
            return 0;
        };
        packets_of(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The packet count of the first `counter` in an `nft list` output.
fn packets_of(listing: &str) -> u64 {
    listing
        .split("packets ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
