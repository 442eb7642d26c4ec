//! `dabs bench service`: how long a farm's service address is unreachable when its holder's
//! host fails, against keepalived (VRRP) in the same namespaces. Each round makes four hosts
//! on a bridge (`dabs_netns::Hosts`): three hold the address in turn (dabs nodes with a
//! `[service]` section, or keepalived instances), the fourth probes it. Every host runs a
//! UDP echo responder; the prober sends to `ADDRESS:9999` every 10 ms. The holder's host then
//! fails (its link goes down and its process is killed), and the outage is the time from the
//! last echo before the failure to the first after it. Needs root and, for the peers,
//! Debian's keepalived (`scripts/bench-service` installs it).

use crate::bench::pct;
use crate::farm::LocalFarm;
use dabs_netns::{Hosts, run_in};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);
const ECHO_PORT: u16 = 9999;
/// Probes sent at most per round (every 10 ms), so a round ends whatever happens.
const MAX_PROBES: usize = 3000;

/// Who holds the address.
#[derive(Clone, Copy, Debug)]
enum Holder {
    /// dabs nodes with `[service]`.
    Dabs,
    /// keepalived with its defaults: VRRPv2, one advert a second.
    KeepalivedDefaults,
    /// keepalived at its fastest: VRRPv3, an advert every 10 ms.
    KeepalivedFastest,
}

impl Holder {
    fn name(self) -> &'static str {
        match self {
            Holder::Dabs => "dabs farm (multicast registry)",
            Holder::KeepalivedDefaults => "keepalived, defaults (VRRPv2, advert_int 1)",
            Holder::KeepalivedFastest => "keepalived, fastest (VRRPv3, advert_int 0.01)",
        }
    }
}

/// Which of hosts 1..=3 have the address now.
fn holders(hosts: &Hosts) -> Vec<usize> {
    (1..=3)
        .filter(|&i| {
            let out = hosts.host(i).command("ip").args(["-4", "addr", "show", "dev", "eth0"]).output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("inet {SERVICE}/")))
        })
        .collect()
}

/// A thread in namespace `ns` running `f` until `stop`.
fn in_netns(ns: &str, f: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    let ns = ns.to_owned();
    std::thread::spawn(move || run_in(&ns, f))
}

/// Answers every datagram at port 9999 with itself, until `stop`.
fn echo(stop: Arc<AtomicBool>) {
    let Ok(socket) = UdpSocket::bind(("0.0.0.0", ECHO_PORT)) else { return };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

/// Probes the service address every 10 ms and records when each echo came back.
fn probe(stop: Arc<AtomicBool>, echoes: Arc<Mutex<Vec<Instant>>>) {
    let Ok(socket) = UdpSocket::bind("0.0.0.0:0") else { return };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(10)));
    let to = SocketAddr::new(SERVICE.into(), ECHO_PORT);
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    for seq in 0..MAX_PROBES as u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let _ = socket.send_to(&seq.to_be_bytes(), to);
        next += Duration::from_millis(10);
        while Instant::now() < next {
            if socket.recv_from(&mut buf).is_ok() {
                echoes.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
            }
        }
    }
}

/// keepalived on host `i`, in a process group of its own (killed whole).
fn keepalived(hosts: &Hosts, i: usize, dir: &Path, fastest: bool) -> Result<Child, String> {
    let conf = dir.join(format!("keepalived-{i}.conf"));
    let (version, advert) = if fastest { ("vrrp_version 3\n", "0.01") } else { ("", "1") };
    std::fs::write(
        &conf,
        format!(
            "global_defs {{\n  router_id h{i}\n  {version}}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  \
             interface eth0\n  virtual_router_id 51\n  priority {}\n  advert_int {advert}\n  \
             virtual_ipaddress {{\n    {SERVICE}/24\n  }}\n}}\n",
            200 - i
        ),
    )
    .map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    Command::new("ip")
        .args(["netns", "exec", hosts.host(i).name(), "keepalived", "--dont-fork", "--log-console", "--vrrp"])
        .arg("--use-file")
        .arg(&conf)
        .arg("--pid")
        .arg(dir.join(format!("k{i}.pid")))
        .arg("--vrrp_pid")
        .arg(dir.join(format!("k{i}-vrrp.pid")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start keepalived (install Debian's keepalived): {e}"))
}

/// What runs on hosts 1..=3 for one round.
enum Holders {
    Dabs(LocalFarm),
    Keepalived(Vec<Child>, Hosts),
}

impl Holders {
    fn hosts(&self) -> &Hosts {
        match self {
            Holders::Dabs(farm) => farm.hosts.as_ref().expect("a farm on hosts"),
            Holders::Keepalived(_, hosts) => hosts,
        }
    }

    /// Host `i` fails: its link goes down and its holder process is killed.
    fn fail(&mut self, i: usize) {
        let _ = self.hosts().host(i).ip(&["link", "set", "eth0", "down"]);
        match self {
            Holders::Dabs(farm) => farm.kill(i - 1),
            Holders::Keepalived(children, _) => {
                // SAFETY: kill(2) on the process group of a child of ours.
                unsafe {
                    libc::kill(-(children[i - 1].id() as i32), libc::SIGKILL);
                }
                let _ = children[i - 1].wait();
            }
        }
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        if let Holders::Keepalived(children, _) = self {
            for c in children {
                // SAFETY: as in `fail`.
                unsafe {
                    libc::kill(-(c.id() as i32), libc::SIGKILL);
                }
                let _ = c.wait();
            }
        }
    }
}

/// One round: the outage after the holder's host fails, ms.
fn round(holder: Holder, dir: &Path) -> Result<f64, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let hosts = Hosts::create(4).map_err(|e| e.to_string())?;
    let mut holders_now = match holder {
        Holder::Dabs => {
            let service = format!(
                "start_at_init = true\n\n[service]\naddress = \"{SERVICE}/24\"\ninterface = \"eth0\"\n"
            );
            let secret = crate::farm::generate_secret();
            Holders::Dabs(LocalFarm::start_on(
                3,
                dir,
                Some(&secret),
                None,
                |_| service.clone(),
                Some(hosts),
                None,
            )?)
        }
        Holder::KeepalivedDefaults | Holder::KeepalivedFastest => {
            let fastest = matches!(holder, Holder::KeepalivedFastest);
            let children =
                (1..=3).map(|i| keepalived(&hosts, i, dir, fastest)).collect::<Result<Vec<_>, _>>()?;
            Holders::Keepalived(children, hosts)
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(Mutex::new(Vec::new()));
    let mut threads: Vec<_> = (1..=3)
        .map(|i| {
            let s = stop.clone();
            in_netns(holders_now.hosts().host(i).name(), move || echo(s))
        })
        .collect();
    // Settled: one host has held it for longer than VRRP's master-down interval (3.6 s with
    // one-second adverts), so a preempting backup cannot move it during the round.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held: Option<(usize, Instant)> = None;
    let first = loop {
        let now = holders(holders_now.hosts());
        match (&now[..], held) {
            ([one], Some((h, since))) if *one == h => {
                if since.elapsed() >= Duration::from_millis(4500) {
                    break h;
                }
            }
            ([one], _) => held = Some((*one, Instant::now())),
            _ => held = None,
        }
        if Instant::now() > deadline {
            return Err("no single host held the address for 4.5 s within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (s, e) = (stop.clone(), echoes.clone());
    threads.push(in_netns(holders_now.hosts().host(4).name(), move || probe(s, e)));
    // Steady: echoes for the last second.
    let steady = Instant::now() + Duration::from_secs(10);
    while echoes.lock().map_or(0, |e| e.len()) < 100 {
        if Instant::now() > steady {
            return Err("the address answered no probes".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let failed_at = Instant::now();
    holders_now.fail(first);
    let resumed = Instant::now() + Duration::from_secs(15);
    let gap = loop {
        {
            let e = echoes.lock().unwrap_or_else(|e| e.into_inner());
            let before = e.iter().rev().find(|t| **t <= failed_at).copied();
            if let (Some(before), Some(after)) = (before, e.iter().find(|t| **t > failed_at)) {
                break after.duration_since(before);
            }
        }
        if Instant::now() > resumed {
            return Err("the address answered nothing within 15 s of the failure".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if std::env::var_os("DABS_BENCH_TRACE").is_some() {
        eprintln!("failed host {first}; holders after: {:?}; gap {gap:?}", holders(holders_now.hosts()));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    drop(holders_now);
    Ok(gap.as_secs_f64() * 1000.0)
}

/// Runs `rounds` rounds of each holder and prints a Markdown table or JSON.
pub fn run(rounds: usize, skip_keepalived: bool, as_json: bool) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("dabs-bench-service-{}", std::process::id()));
    let mut cases = vec![Holder::Dabs];
    if !skip_keepalived {
        cases.extend([Holder::KeepalivedDefaults, Holder::KeepalivedFastest]);
    }
    let mut rows = Vec::new();
    for holder in cases {
        let mut ms = Vec::with_capacity(rounds);
        for i in 0..rounds {
            match round(holder, &dir) {
                Ok(m) => ms.push(m),
                Err(e) => {
                    eprintln!("dabs bench service: {}, round {}: {e}", holder.name(), i + 1);
                    return ExitCode::FAILURE;
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        rows.push(json!({
            "holder": holder.name(), "rounds": ms.len(), "p50_ms": pct(&ms, 0.5), "p99_ms": pct(&ms, 0.99),
            "max_ms": ms.last().copied().unwrap_or(0.0),
        }));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = if as_json {
        crate::out::line(serde_json::Value::from(rows))
    } else {
        let mut text = String::from(
            "| holder of the service address | rounds | outage p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|",
        );
        for r in &rows {
            text.push_str(&format!(
                "\n| {} | {} | {:.0} | {:.0} | {:.0} |",
                r["holder"].as_str().unwrap_or(""),
                r["rounds"],
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0)
            ));
        }
        crate::out::line(text)
    };
    crate::out::finish("dabs bench service", out)
}
