//! MP over TCP where UDP is blocked (issue 17 item 2, R-MP-7; interop.md "MP over a stream"):
//! two hosts (network namespaces on a bridge), a node on host 1 that accepts MP over TCP, and
//! nftables at the bridge dropping UDP to its MP port. `dabs calc` on host 2 fails over UDP
//! (its datagrams are counted at the bridge) and answers over TCP. Needs root.

use dabs_netns::Hosts;
use dabs_testkit::{NodeConfigBuilder, NodeProc, random_group, temp_dir};
use std::time::Instant;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const PORT: u16 = 47000;

/// `dabs calc` on `host` against the node on host 1; its exit status and output.
fn calc(hosts: &Hosts, host: usize, tcp: bool, expr: [&str; 3]) -> (bool, String) {
    let farm = format!("{}:{PORT}", Hosts::addr(1));
    let mut cmd = hosts.host(host).command(DABS);
    cmd.args(["calc", "--farm", &farm]);
    if tcp {
        cmd.arg("--tcp");
    }
    let started = Instant::now();
    let out = cmd.args(expr).output().expect("dabs calc runs");
    let text = format!(
        "{}{} (after {:?})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    (out.status.success(), text)
}

#[test]
fn the_calculator_answers_over_tcp_when_udp_is_blocked() {
    let hosts = Hosts::create(2).expect("two hosts on a bridge (root, ip, nft)");
    let dir = temp_dir("channels");
    let me = Hosts::addr(1);
    let config = NodeConfigBuilder::new("channels", random_group(), "node-1")
        .bind(format!("{me}:{PORT}"))
        .interface(me)
        // Off loopback a farm needs its secret (the calculator client needs none).
        .secret("5eed5eed5eed5eed5eed5eed5eed5eed")
        .operator_at(format!("{me}:0"))
        .tcp(true)
        .app_with("calc", "start_at_init = true\n")
        .write(&dir);
    let node = NodeProc::start_in(hosts.host(1).name(), DABS, &config);
    // Reachable over UDP before the block: the same command, the same farm.
    let (ok, text) = calc(&hosts, 2, false, ["6", "x", "7"]);
    assert!(ok && text.starts_with("42"), "over UDP, before the block: {text}");
    hosts.block_udp_to(1, PORT).expect("nftables dropping UDP to the node's MP port");
    let (ok, text) = calc(&hosts, 2, false, ["6", "x", "7"]);
    assert!(!ok, "over UDP with UDP blocked, the call cannot succeed: {text}");
    assert!(text.contains("cannot reach the farm"), "a clear error: {text}");
    let dropped = hosts.udp_dropped();
    assert!(dropped > 0, "the bridge dropped the UDP datagrams");
    let (ok, text) = calc(&hosts, 2, true, ["6", "x", "7"]);
    assert!(ok && text.starts_with("42"), "over TCP with UDP blocked: {text}");
    let (ok, text) = calc(&hosts, 2, true, ["7", "-", "10"]);
    assert!(ok && text.starts_with("-3"), "a second client over TCP: {text}");
    assert_eq!(hosts.udp_dropped(), dropped, "nothing went by UDP once the clients spoke TCP");
    // The node stops, then the namespaces go (both also when an assertion above fails).
    drop(node);
    drop(hosts);
}
