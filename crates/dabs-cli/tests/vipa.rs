//! A virtual interface address (issue 15 item 2, R-POL-5): a node on a host with two links
//! binds to its VIPA, an address on the always-up loopback interface, and sends from it. A
//! router namespace reaches the VIPA by two static routes, one per link, and skips a route
//! whose link is down (`ignore_routes_with_linkdown`); the host does the same with its two
//! default routes. A client behind the router calls the calculator every 10 ms while one link
//! is pulled on the host's side, brought back, and the other pulled on the router's side:
//! every call is answered, and the client's session never notices (no re-open, same server).
//! The longest gap in each phase is printed.

use dabs_calc::{CalcClient, Operands, Profile, Value};
use dabs_net::{Config, DriverOptions};
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::netns::{Netns, run_in};
use dabs_testkit::{NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, random_group, temp_dir};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "766970612d746573742d7365637265742d303132333435363738396162636465";
const VIPA: Ipv4Addr = Ipv4Addr::new(10, 89, 9, 1);
const PORT: u16 = 47000;
/// Calls made at most (every 10 ms), so the loop ends however the network fares.
const MAX_CALLS: usize = 6000;

fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    ns.exec("sh", &["-c", &format!("echo {value} > {path}")]).unwrap_or_else(|e| panic!("{key}: {e}"));
}

fn ip(ns: &Netns, args: &str) {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>()).unwrap_or_else(|e| panic!("ip {args}: {e}"));
}

/// Router `r` between host `h` (two links) and client `c` (one link).
fn topology() -> (Netns, Netns, Netns) {
    let (r, h, c) =
        (Netns::create("vr").unwrap(), Netns::create("vh").unwrap(), Netns::create("vc").unwrap());
    ip(&r, &format!("link add r0 type veth peer name eth0 netns {}", h.name()));
    ip(&r, &format!("link add r1 type veth peer name eth1 netns {}", h.name()));
    ip(&r, &format!("link add r2 type veth peer name eth0 netns {}", c.name()));
    for (dev, addr) in [("r0", "10.89.1.1/24"), ("r1", "10.89.2.1/24"), ("r2", "10.89.3.1/24")] {
        ip(&r, &format!("addr add {addr} dev {dev}"));
        ip(&r, &format!("link set {dev} up"));
    }
    for (dev, addr) in [("eth0", "10.89.1.2/24"), ("eth1", "10.89.2.2/24")] {
        ip(&h, &format!("addr add {addr} dev {dev}"));
        ip(&h, &format!("link set {dev} up"));
    }
    ip(&c, "addr add 10.89.3.2/24 dev eth0");
    ip(&c, "link set eth0 up");
    ip(&c, "route add default via 10.89.3.1");
    sysctl(&r, "net.ipv4.ip_forward", "1");
    for ns in [&r, &h] {
        // A route whose link has no carrier is skipped: the other link's takes over.
        for scope in ["all", "default", "eth0", "eth1", "r0", "r1", "r2"] {
            let _ = ns.exec("sh", &["-c", &format!(
                "[ -d /proc/sys/net/ipv4/conf/{scope} ] && echo 1 > /proc/sys/net/ipv4/conf/{scope}/ignore_routes_with_linkdown"
            )]);
            let _ = ns.exec("sh", &["-c", &format!(
                "[ -d /proc/sys/net/ipv4/conf/{scope} ] && echo 0 > /proc/sys/net/ipv4/conf/{scope}/rp_filter"
            )]);
        }
    }
    // Static routes with failover: the first link preferred, the second behind it.
    ip(&r, &format!("route add {VIPA}/32 via 10.89.1.2 metric 10"));
    ip(&r, &format!("route add {VIPA}/32 via 10.89.2.2 metric 20"));
    ip(&h, "route add default via 10.89.1.1 metric 10");
    ip(&h, "route add default via 10.89.2.1 metric 20");
    (r, h, c)
}

#[derive(Default)]
struct Outcomes {
    answered: usize,
    failed: Vec<String>,
    longest_gap: Duration,
    /// The longest gap in each phase (both links, first down, both again, second down).
    gaps: [Duration; 4],
    reopens: u64,
    servers: Vec<String>,
}

#[test]
fn a_node_on_its_vipa_carries_on_through_either_link() {
    let (r, h, c) = topology();
    let dir = temp_dir("vipa");
    let config = NodeConfigBuilder::new("vipa", random_group(), "node-1")
        .bind(format!("{VIPA}:{PORT}"))
        .interface(VIPA)
        .secret(SECRET)
        .app_with("calc", "start_at_init = true\n")
        .extra(&format!("[vipa]\naddress = \"{VIPA}/32\"\ninterface = \"lo\"\n"))
        .write(&dir);
    let node = NodeProc::start_in(h.name(), DABS, &config);
    assert_eq!(node.mp, SocketAddr::new(VIPA.into(), PORT), "the node is on its VIPA");

    let calls = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(0));
    let (n, d, p) = (calls.clone(), done.clone(), phase.clone());
    let client_ns = c.name().to_owned();
    let client = std::thread::spawn(move || {
        run_in(&client_ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let config = Config {
                    ack_timeout: Duration::from_millis(50),
                    ack_timeout_max: Duration::from_millis(50),
                    max_retries: 60,
                    ..Config::default()
                };
                let ep = dabs_net::spawn(
                    "0.0.0.0:0".parse().unwrap(),
                    DriverOptions { config, ..Default::default() },
                )
                .await
                .unwrap();
                let farm = SocketAddr::new(VIPA.into(), PORT);
                let fc = Arc::new(
                    FarmClient::start(ep, FarmClientOptions::new(farm, dabs_calc::APP))
                        .await
                        .expect("the client opens at the VIPA through the router"),
                );
                let calc = CalcClient::new(fc.clone(), Profile::Thin);
                let mut out = Outcomes::default();
                let mut last = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for i in 0..MAX_CALLS {
                    if d.load(Ordering::Relaxed) {
                        break;
                    }
                    tick.tick().await;
                    n.store(i + 1, Ordering::Relaxed);
                    match calc.compute("+", Operands::Int(i as i64, 1)).await {
                        Ok(Value::Int(v)) if v == i as i64 + 1 => {
                            out.longest_gap = out.longest_gap.max(last.elapsed());
                            let at = p.load(Ordering::Relaxed).min(3);
                            out.gaps[at] = out.gaps[at].max(last.elapsed());
                            last = Instant::now();
                            out.answered += 1;
                        }
                        Ok(v) => panic!("call {i} answered wrongly: {v:?}"),
                        Err(e) => out.failed.push(format!("call {i}: {e}")),
                    }
                    let server = fc.server().await.map(|s| s.to_string()).unwrap_or_default();
                    if out.servers.last() != Some(&server) {
                        out.servers.push(server);
                    }
                }
                out.reopens = fc.reopens();
                out
            })
        })
    });
    let wait_calls = |k: usize, what: &str| {
        let start = calls.load(Ordering::Relaxed);
        eventually(what, PATIENCE, POLL, || {
            let now = calls.load(Ordering::Relaxed);
            (now >= start + k).then_some(()).ok_or(format!("{} calls so far", now - start))
        })
    };
    wait_calls(100, "100 calls over the first link");
    // The first link is pulled on the host's side: its routes go, the second link's serve.
    phase.store(1, Ordering::Relaxed);
    ip(&h, "link set eth0 down");
    wait_calls(100, "100 calls with the first link down");
    phase.store(2, Ordering::Relaxed);
    ip(&h, "link set eth0 up");
    ip(&h, "route replace default via 10.89.1.1 metric 10");
    wait_calls(100, "100 calls with both links up again");
    // The second link is pulled on the router's side: the host sees no carrier on eth1.
    phase.store(3, Ordering::Relaxed);
    ip(&r, "link set r1 down");
    wait_calls(100, "100 calls with the second link down");
    done.store(true, Ordering::Relaxed);
    let out = client.join().unwrap();
    let total = calls.load(Ordering::Relaxed);
    println!(
        "{total} calls: {} answered, {} failed, longest gap {} ms (per phase: {:?}), re-opens {}, servers {:?}",
        out.answered,
        out.failed.len(),
        out.longest_gap.as_millis(),
        out.gaps.map(|g| g.as_millis()),
        out.reopens,
        out.servers
    );
    assert!(out.failed.is_empty(), "calls failed: {:?}", out.failed);
    assert_eq!(out.answered, total);
    assert_eq!(out.reopens, 0, "the session noticed a link going");
    assert_eq!(out.servers, [format!("{VIPA}:{PORT}")], "the client stayed on the VIPA");
    // A carrier lost at the far end of a link reaches the router's routes through the kernel's
    // link watch, which batches such changes for up to a second (docs/farm.md).
    assert!(out.longest_gap < Duration::from_secs(2), "longest gap {:?}", out.longest_gap);
    drop(node);
    drop((r, h, c));
}
