//! A virtual interface address (issue 15 item 2, R-POL-5): a node on a host with two links
//! binds to its VIPA, an address on the always-up loopback interface, and sends from it. A
//! router namespace reaches the VIPA by two static routes, one per link, and skips a route
//! whose link is down (`ignore_routes_with_linkdown`); the host does the same with its two
//! default routes. A client behind the router calls the calculator every 10 ms while one link
//! is pulled on the host's side, brought back, and the other pulled on the router's side:
//! every call is answered, and the client's session never notices (no re-open, same server).
//! The longest gap in each phase is printed.

use dabs_testkit::netns::Netns;
use dabs_testkit::steady::SteadyCaller;
use dabs_testkit::{NodeConfigBuilder, NodeProc, random_group, temp_dir};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "766970612d746573742d7365637265742d303132333435363738396162636465";
const VIPA: Ipv4Addr = Ipv4Addr::new(10, 89, 9, 1);
const PORT: u16 = 47000;

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

    let client = SteadyCaller::start(c.name(), SocketAddr::new(VIPA.into(), PORT));
    client.wait_calls(100, "100 calls over the first link");
    // The first link is pulled on the host's side: its routes go, the second link's serve.
    client.phase(1);
    ip(&h, "link set eth0 down");
    client.wait_calls(100, "100 calls with the first link down");
    client.phase(2);
    ip(&h, "link set eth0 up");
    ip(&h, "route replace default via 10.89.1.1 metric 10");
    client.wait_calls(100, "100 calls with both links up again");
    // The second link is pulled on the router's side: the host sees no carrier on eth1.
    client.phase(3);
    ip(&r, "link set r1 down");
    client.wait_calls(100, "100 calls with the second link down");
    let out = client.finish();
    println!("{out}");
    assert!(out.failed.is_empty(), "calls failed: {:?}", out.failed);
    assert_eq!(out.answered, out.calls);
    assert_eq!(out.reopens, 0, "the session noticed a link going");
    assert_eq!(out.servers, [format!("{VIPA}:{PORT}")], "the client stayed on the VIPA");
    // A carrier lost at the far end of a link reaches the router's routes through the kernel's
    // link watch, which batches such changes for up to a second (docs/farm.md).
    assert!(out.longest_gap < Duration::from_secs(2), "longest gap {:?}", out.longest_gap);
    drop(node);
    drop((r, h, c));
}
