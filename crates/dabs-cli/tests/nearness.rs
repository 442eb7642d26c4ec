//! `closest` by measured round trip (seed 003, R-POL-1): three real nodes in a network
//! namespace of the test's own, and far networks behind a TUN device whose round trips to each
//! node the test sets (the kernel here has no `netem`). `dig` with an EDNS client subnet, and a
//! resolver out in a far network, each get the server with the shortest measured round trip to
//! their network, which neither the address prefix nor the start order would pick.

use dabs_dns::proto::op::{Message, MessageType, OpCode, Query};
use dabs_dns::proto::rr::{Name, RData, RecordType};
use dabs_testkit::dns::dig;
use dabs_testkit::http::try_get_json;
use dabs_testkit::netns::{FarNetwork, Netns};
use dabs_testkit::{NodeConfigBuilder, NodeProc, POLL, eventually, random_group, temp_dir};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const ZONE: &str = "nearfarm.dabs";
const SECRET: &str = "6e6561726e6573732d746573742d7365637265742d30313233343536373839";
/// The nodes' addresses, on the namespace's loopback: node-2, node-34, node-66.
const NODES: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 76, 0, 2), Ipv4Addr::new(10, 76, 0, 34), Ipv4Addr::new(10, 76, 0, 66)];
/// A client network clients announce through EDNS Client Subnet: nearest node-66.
const SUBNET: &str = "10.77.1.0/24";
/// A resolver in another far network: nearest node-34.
const RESOLVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 77, 2, 53), 5353);
/// How long measuring may take: the first question starts it; rounds take a few probes.
const MEASURING: Duration = Duration::from_secs(30);

/// The round trip the far network gives a probe from `node` to `far`: by the far address's
/// third octet (1: the client subnet, 2: the resolver's network) and the node's last octet.
fn delay(node: Ipv4Addr, far: Ipv4Addr) -> Duration {
    let ms = match (far.octets()[2], node.octets()[3]) {
        (1, 2) => 40,
        (1, 34) => 20,
        (1, 66) => 2,
        (2, 2) => 40,
        (2, 34) => 2,
        (2, 66) => 20,
        _ => 0,
    };
    Duration::from_millis(ms)
}

fn a_record(answers: &[String]) -> Vec<String> {
    answers.iter().filter_map(|l| l.split(" IN A ").nth(1).map(str::to_owned)).collect()
}

/// Asks `front` for calc's address from the far resolver; the addresses answered.
fn ask_from_resolver(far: &FarNetwork, front: SocketAddr, id: u16) -> Result<Vec<String>, String> {
    let SocketAddr::V4(front) = front else { return Err(format!("{front} is not IPv4")) };
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii(format!("calc.{ZONE}.")).unwrap(), RecordType::A));
    let back = far
        .exchange(RESOLVER, front, &q.to_vec().unwrap(), Duration::from_secs(2))
        .ok_or_else(|| format!("no answer from {front} to the far resolver"))?;
    let m = Message::from_vec(&back.payload).map_err(|e| e.to_string())?;
    Ok(m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect())
}

#[test]
fn closest_answers_the_server_with_the_shortest_measured_round_trip() {
    let ns = Netns::create("near").expect("a network namespace");
    ns.loopback_multicast().expect("multicast on its loopback");
    for ip in NODES {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]).expect("a node address");
    }
    ns.run_inside(|| {
        let far = FarNetwork::start(&format!("dnr{}", std::process::id() % 100_000), "10.77.0.0/16", delay);
        let dir = temp_dir("nearness");
        let group = random_group();
        let nodes: Vec<NodeProc> = NODES
            .iter()
            .map(|ip| {
                let config = NodeConfigBuilder::new("nearfarm", group, &format!("node-{}", ip.octets()[3]))
                    .bind(format!("{ip}:0"))
                    .secret(SECRET)
                    .operator()
                    .app_with("calc", "start_at_init = true\npolicy = \"closest\"\n")
                    .write(&dir);
                NodeProc::start(DABS, &config)
            })
            .collect();
        let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
        dabs_testkit::membership::wait_for_decider_at(&urls);
        let dns = |n: &NodeProc| n.ready.dns.expect("the ready line names the DNS front");

        // A client subnet: every front ends up answering node-66, 2 ms away (node-2, which the
        // start order favours, is 40 ms away; the prefixes are all alike).
        eventually(&format!("every front answering node-66 for {SUBNET}"), MEASURING, POLL, || {
            let answers: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    a_record(
                        &dig(dns(n), &format!("calc.{ZONE}"), "A", &[&format!("+subnet={SUBNET}")]).answers,
                    )
                })
                .collect();
            answers.iter().all(|a| a == &["10.76.0.66"]).then_some(()).ok_or(format!("{answers:?}"))
        });
        // The operator sees the figures, each at least the delay the far network gave it (a
        // round records each node's figure as it comes: the nearest usually first).
        let rtts = eventually(&format!("every node's round trip to {SUBNET}"), MEASURING, POLL, || {
            let view = try_get_json(&urls[0], "/api/nearness")?;
            let net = view
                .as_array()
                .and_then(|v| v.iter().find(|n| n["network"] == SUBNET))
                .ok_or(format!("{SUBNET} not in {view}"))?;
            assert_eq!(net["target"], "10.77.1.1", "a subnet is probed at its first host");
            let rtt = |name: &str| {
                net["round_trips"]
                    .as_array()
                    .and_then(|r| r.iter().find(|x| x["node"] == name))
                    .and_then(|x| x["rtt_ms"].as_f64())
            };
            match (rtt("node-2"), rtt("node-34"), rtt("node-66")) {
                (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
                _ => Err(net.to_string()),
            }
        });
        for (rtt, at_least) in rtts.into_iter().zip([40.0, 20.0, 2.0]) {
            assert!(rtt >= at_least && rtt < at_least + 500.0, "{rtts:?} ms, expected about 40, 20, 2");
        }

        // A resolver without client subnet: its own network decides, node-34 (2 ms).
        let mut id = 0u16;
        for n in &nodes {
            eventually(
                &format!("{} answering node-34 to the far resolver", n.ready.name),
                MEASURING,
                POLL,
                || {
                    id = id.wrapping_add(1);
                    let a = ask_from_resolver(&far, dns(n), id)?;
                    (a == ["10.76.0.34"]).then_some(()).ok_or(format!("{a:?}"))
                },
            );
        }
        // Every node probed both networks, three probes each, through the far network.
        assert!(far.probes() >= 3 * 3 * 2, "{} probes", far.probes());
        drop(nodes);
    });
}
