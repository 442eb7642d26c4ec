//! Intermediate monitors on a farm of real node processes (seed 003): four nodes in two
//! sub-farms with different local policies (east: fewest clients; west: least loaded) under a
//! third, global one (fewest clients, each sub-farm standing as the mean of its members).
//! Clients placed on chosen nodes move both the order inside a sub-farm and the order of the
//! sub-farms; every node's ranking and its DNS answer follow.

use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::dns::dig;
use dabs_testkit::http::json;
use dabs_testkit::{NodeConfigBuilder, NodeProc, POLL, eventually, random_group, temp_dir};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SUBFARMS: &str = "\
[[subfarm]]
name = \"east\"
nodes = [\"node-2\", \"node-3\"]
policy = \"fewest_clients\"

[[subfarm]]
name = \"west\"
nodes = [\"node-4\", \"node-5\"]
policy = \"least_loaded\"
";
/// Announcements travel, rankings follow: a few announce intervals, with room for a slow machine.
const FOLLOW: Duration = Duration::from_secs(20);

/// (node, sub-farm) in calc's ranking at `url`, best first.
fn ranking(url: &str) -> Vec<(String, String)> {
    let (status, view) = json("GET", url, "/api/applications/calc/policy", None);
    assert_eq!(status, 200, "{view}");
    view["ranked"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (r["node"].as_str().unwrap_or("?").to_owned(), r["subfarm"].as_str().unwrap_or("-").to_owned())
        })
        .collect()
}

fn expect(order: &[(&str, &str)]) -> Vec<(String, String)> {
    order.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect()
}

/// Waits until every node ranks `order` and every DNS front answers its first node's address.
fn every_node_ranks(nodes: &[NodeProc], order: &[(&str, &str)]) {
    let want = expect(order);
    let first = nodes.iter().find(|n| n.ready.name == order[0].0).expect("a node").mp.ip().to_string();
    eventually(&format!("every node ranking {want:?}"), FOLLOW, POLL, || {
        for n in nodes {
            let got = ranking(n.url());
            if got != want {
                return Err(format!("{}: {got:?}", n.ready.name));
            }
            let dns = n.ready.dns.expect("a DNS front");
            let a = dig(dns, "calc.subfarms.dabs", "A", &[]);
            if !a.answers.iter().any(|l| l.ends_with(&format!(" A {first}"))) {
                return Err(format!("{} answers {:?}", n.ready.name, a.answers));
            }
        }
        Ok(())
    });
}

#[test]
fn two_subfarms_rank_inside_by_their_own_policy_and_stand_as_one_to_the_global_one() {
    let dir = temp_dir("subfarms");
    let group = random_group();
    let nodes: Vec<NodeProc> = (2..=5)
        .map(|i| {
            let config = NodeConfigBuilder::new("subfarms", group, &format!("node-{i}"))
                .bind(format!("127.0.0.{i}:0"))
                .operator()
                .extra(SUBFARMS)
                .app_with("calc", "start_at_init = true\npolicy = \"fewest_clients\"\n")
                .write(&dir);
            NodeProc::start(DABS, &config)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    dabs_testkit::membership::wait_for_decider_at(&urls);
    let view: Value = json("GET", &urls[0], "/api/applications/calc/policy", None).1;
    assert!(
        view["ranked"].as_array().is_some_and(|r| r.iter().any(|x| x["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("sub-farm west (least_loaded): load ")))),
        "{view}"
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mp = |name: &str| nodes.iter().find(|n| n.ready.name == name).expect("a node").mp;
    // Clients opened straight at one node stay there (a direct open is answered by that node).
    let open_at = |at: SocketAddr| {
        rt.block_on(async {
            let ep = dabs_testkit::client::endpoint(10).await;
            let c =
                FarmClient::start(ep, FarmClientOptions::new(at, dabs_calc::APP)).await.expect("a session");
            assert_eq!(
                c.server().await.expect("a server").to_string(),
                at.to_string(),
                "a direct open stays at its node"
            );
            c
        })
    };
    // East: 2 clients on node-2; west: 1 on node-4. Inside east, fewer clients first (node-3);
    // inside west, the lighter first (node-5); globally west (mean 0.5 clients) before east (1).
    let mut clients = vec![open_at(mp("node-2")), open_at(mp("node-2")), open_at(mp("node-4"))];
    every_node_ranks(
        &nodes,
        &[("node-5", "west"), ("node-4", "west"), ("node-3", "east"), ("node-2", "east")],
    );
    // Two more on node-5: west's mean (1.5) passes east's (1), and inside west node-4 (1
    // client) is now the lighter.
    clients.push(open_at(mp("node-5")));
    clients.push(open_at(mp("node-5")));
    every_node_ranks(
        &nodes,
        &[("node-3", "east"), ("node-2", "east"), ("node-4", "west"), ("node-5", "west")],
    );
    drop(clients);
    drop(rt);
}
