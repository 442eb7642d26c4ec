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
    let mut args = vec!["calc", "--farm", &farm];
    if tcp {
        args.push("--tcp");
    }
    args.extend(expr);
    dabs_on(hosts, host, &args)
}

/// `dabs ARGS` on `host`: its exit status, and its output with how long it took.
fn dabs_on(hosts: &Hosts, host: usize, args: &[&str]) -> (bool, String) {
    let started = Instant::now();
    let out = hosts.host(host).command(DABS).args(args).output().expect("dabs runs");
    let text = format!(
        "{}{} (after {:?})",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    (out.status.success(), text)
}

/// Two hosts on a bridge, and a node on host 1 taking MP over UDP and TCP on `PORT` and over
/// the WebSocket on its operator port, running the calculator.
fn node_on_host_1(farm: &str) -> (Hosts, NodeProc) {
    let hosts = Hosts::create(2).expect("two hosts on a bridge (root, ip, nft)");
    let dir = temp_dir(farm);
    let me = Hosts::addr(1);
    let config = NodeConfigBuilder::new(farm, random_group(), "node-1")
        .bind(format!("{me}:{PORT}"))
        .interface(me)
        // Off loopback a farm needs its secret (the calculator client needs none).
        .secret("5eed5eed5eed5eed5eed5eed5eed5eed")
        .operator_at(format!("{me}:0"))
        .tcp(true)
        .app_with("calc", "start_at_init = true\n")
        .write(&dir);
    let node = NodeProc::start_in(hosts.host(1).name(), DABS, &config);
    (hosts, node)
}

#[test]
fn the_calculator_answers_over_tcp_when_udp_is_blocked() {
    let (hosts, node) = node_on_host_1("channels");
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

/// `dabs client calc` on host 2 against the node on host 1: its exit status and output.
fn client(hosts: &Hosts, ops: &str, extra: &[&str]) -> (bool, String) {
    let farm = format!("{}:{PORT}", Hosts::addr(1));
    let mut args = vec!["client", "calc", "--farm", &farm, "--ops", ops, "--calls", "40"];
    args.extend(extra);
    dabs_on(hosts, 2, &args)
}

/// Requests the node has delivered to its portions so far (its `/metrics`, read from the
/// switch's namespace).
fn delivered(hosts: &Hosts, ops: &str) -> u64 {
    let ops = ops.to_owned();
    let text =
        dabs_netns::run_in(hosts.switch().name(), move || dabs_testkit::http::get_text(&ops, "/metrics"));
    text.lines()
        .find_map(|l| l.strip_prefix("dabs_mp_requests_delivered_total ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no dabs_mp_requests_delivered_total in\n{text}"))
}

/// Issue 17 items 1-3 and 5: a client delivered in parts fetches only what it needs, falls back
/// UDP → TCP → WebSocket as the bridge blocks each (nftables), and runs `IntegerOps` where the
/// farm places it for its device; every call is answered, correctly, on every channel.
#[test]
fn a_client_delivered_in_parts_falls_back_through_tcp_to_the_websocket() {
    let (hosts, node) = node_on_host_1("delivery");
    let ops = node.url().to_owned();
    let answered = "40 of 40 calls answered correctly, 0 wrong";

    // Nothing blocked: the first set (the UDP channel's module) is enough; no add-on fetched.
    let (ok, text) = client(&hosts, &ops, &["6", "x", "7"]);
    assert!(ok && text.contains("settled on udp") && text.contains(answered), "over UDP: {text}");
    assert!(text.contains("fetched channel-udp") && !text.contains("fetched channel-tcp"), "{text}");
    assert!(text.contains("integer-ops runs in this client's sandbox"), "the host runs it: {text}");
    assert!(text.contains("\n42\n"), "{text}");
    assert!(!text.contains("fetched grouping"), "a feature add-on only when asked for: {text}");
    // A feature add-on, asked for: fetched, verified, and the result written by it.
    let (ok, text) = client(&hosts, &ops, &["--feature", "grouping", "1234", "x", "1000"]);
    assert!(ok && text.contains("fetched grouping") && text.contains("\n1,234,000\n"), "{text}");
    let (ok, text) = client(&hosts, &ops, &["--feature", "sparkles"]);
    assert!(!ok && text.contains("no feature add-on \"sparkles\""), "{text}");

    // UDP blocked: the TCP add-on is fetched only now, and the calculator runs over TCP.
    // Each request reaches the node once: STARTED, the 20 floating-point calls (the integer
    // ones, 6 x 7 among them, run in the client's sandbox) and CLOSE_SESSION.
    hosts.block_to(1, "udp", PORT).expect("nftables dropping UDP to the MP port");
    let before = delivered(&hosts, &ops);
    let (ok, text) = client(&hosts, &ops, &["6", "x", "7"]);
    assert_eq!(delivered(&hosts, &ops) - before, 22, "each request delivered once over TCP: {text}");
    assert!(ok && text.contains("settled on tcp") && text.contains(answered), "over TCP: {text}");
    assert!(text.contains("channel udp: not established"), "{text}");
    assert!(text.contains("fetched channel-tcp") && !text.contains("fetched channel-ws"), "{text}");
    assert!(hosts.dropped("udp") > 0, "the bridge dropped the UDP attempts");

    // TCP to the MP port blocked too: the WebSocket on the operator port.
    hosts.block_to(1, "tcp", PORT).expect("nftables dropping TCP to the MP port");
    let before = delivered(&hosts, &ops);
    let (ok, text) = client(&hosts, &ops, &["6", "x", "7"]);
    assert_eq!(
        delivered(&hosts, &ops) - before,
        22,
        "each request delivered once over the WebSocket: {text}"
    );
    assert!(ok && text.contains("settled on ws") && text.contains(answered), "over the WebSocket: {text}");
    assert!(text.contains("channel tcp: not established") && text.contains("fetched channel-ws"), "{text}");
    assert!(hosts.dropped("tcp") > 0, "the bridge dropped the TCP attempts");

    // A constrained device (no WebAssembly, 16 MiB): the farm keeps IntegerOps on the server,
    // so all 40 calls, 6 x 7, STARTED and CLOSE_SESSION reach it, once each.
    let before = delivered(&hosts, &ops);
    let (ok, text) = client(&hosts, &ops, &["--profile", "constrained", "6", "x", "7"]);
    assert_eq!(delivered(&hosts, &ops) - before, 43, "each request delivered once: {text}");
    assert!(ok && text.contains("integer-ops runs in the server") && text.contains(answered), "{text}");
    assert!(!text.contains("fetched integer-ops"), "a module the device does not run is not fetched: {text}");
    // A ceiling below the module's needs does the same on a capable host.
    let (ok, text) = client(&hosts, &ops, &["--max-memory-mb", "32"]);
    assert!(ok && text.contains("integer-ops runs in the server"), "{text}");

    // A device that cannot use WebSockets drops that add-on, and with UDP and TCP blocked it
    // says clearly that no channel worked.
    let (ok, text) = client(&hosts, &ops, &["--channels", "udp,tcp"]);
    assert!(
        !ok && text.contains("dropped channel-ws") && text.contains("no channel reached the farm"),
        "{text}"
    );

    // A pinned key that is not the farm's: nothing fetched runs.
    let (ok, text) =
        client(&hosts, &ops, &["--publishing-key", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]);
    assert!(!ok && text.contains("not the pinned one"), "{text}");
    drop(node);
    drop(hosts);
}
