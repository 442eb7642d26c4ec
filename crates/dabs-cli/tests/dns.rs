//! The DNS front of a farm of real node processes, asked by `dig`: each node, on its own
//! loopback address (127.0.0.2, .3, .4), answers the calculator's name with the server the
//! application's policy prefers; the answer moves when a client's load lands on that server
//! and when the policy is swapped; a node leaving never makes the zone fail; `dabs farm up`
//! prints each node's `dns IP:PORT`.

use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::dns::{Dug, dig, dig_async};
use dabs_testkit::http::json_as;
use dabs_testkit::{Lines, NodeConfigBuilder, NodeProc, PATIENCE, POLL, eventually, random_group, temp_dir};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The `dabs` binary under test.
const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const TOKEN: &str = "dns-test-operator-token-0123456789";
const ZONE: &str = "dnsfarm.dabs";

/// Three nodes on 127.0.0.2..4, each running a calculator portion from the start.
fn farm(extra_app_keys: &str) -> (std::path::PathBuf, Vec<NodeProc>) {
    let dir = temp_dir("dns-farm");
    let group = random_group();
    let nodes: Vec<NodeProc> = (2..=4)
        .map(|i| {
            let config = NodeConfigBuilder::new("dnsfarm", group, &format!("node-{i}"))
                .bind(format!("127.0.0.{i}:0"))
                .operator()
                .app_with("calc", &format!("start_at_init = true\n{extra_app_keys}"))
                .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
                .write(&dir);
            NodeProc::start(DABS, &config)
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url().to_owned()).collect();
    dabs_testkit::membership::wait_for_decider_at(&urls);
    (dir, nodes)
}

fn dns(n: &NodeProc) -> SocketAddr {
    n.ready.dns.expect("the ready line names the DNS front")
}

/// The SRV target's node name, as `node-N`.
fn srv_target(d: &Dug) -> Option<String> {
    let last = d.answers.first()?.split(' ').next_back()?.to_owned();
    last.strip_suffix(&format!(".{ZONE}.")).map(str::to_owned)
}

/// Waits until every node's DNS front names the same preferred server for calc; returns it.
fn agreed_target(nodes: &[NodeProc], not: Option<&str>) -> String {
    eventually("every DNS front naming one preferred server", PATIENCE, POLL, || {
        let targets: Vec<Option<String>> = nodes
            .iter()
            .map(|n| srv_target(&dig(dns(n), &format!("_calc._mp._udp.{ZONE}"), "SRV", &[])))
            .collect();
        match &targets[0] {
            Some(t) if targets.iter().all(|x| x.as_ref() == Some(t)) && not != Some(t.as_str()) => {
                Ok(t.clone())
            }
            _ => Err(format!("{targets:?}")),
        }
    })
}

#[test]
fn the_farm_answers_its_preferred_server_and_the_answer_follows_load_and_policy() {
    let (_dir, nodes) = farm("policy = \"fewest_clients\"\n");
    let by_name = |name: &str| nodes.iter().find(|n| n.ready.name == name).expect("a node of the farm");
    // Every node answers A with an address of the farm, and each node's own name.
    for n in &nodes {
        let d = dig(dns(n), &format!("calc.{ZONE}"), "A", &[]);
        assert_eq!(d.status, "NOERROR", "{d:?}");
        assert!(d.flags.contains(" aa"), "{d:?}");
        assert!(d.answers[0].starts_with(&format!("calc.{ZONE}. 5 IN A 127.0.0.")), "{d:?}");
        let own = dig(dns(n), &format!("{}.{ZONE}", n.ready.name), "A", &["+tcp"]);
        assert_eq!(own.answers, [format!("{}.{ZONE}. 5 IN A {}", n.ready.name, n.mp.ip())]);
        assert_eq!(dig(dns(n), &format!("nobody.{ZONE}"), "A", &[]).status, "NXDOMAIN");
    }
    // Load moves the answer: a client placed on the preferred server (fewest clients) makes
    // another server the preferred one, on every node's DNS front.
    let first = agreed_target(&nodes, None);
    let a = dig(dns(&nodes[0]), &format!("calc.{ZONE}"), "A", &[]);
    assert_eq!(a.answers, [format!("calc.{ZONE}. 5 IN A {}", by_name(&first).mp.ip())], "A and SRV agree");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let group = SocketAddr::V4(nodes[0].ready.group);
    let open = || {
        rt.block_on(async {
            let ep = dabs_testkit::client::endpoint(10).await;
            let c = FarmClient::start(ep, FarmClientOptions::new(group, dabs_calc::APP))
                .await
                .expect("the farm takes the client");
            let server = c.server().await.expect("the client has a server").to_string();
            (c, server)
        })
    };
    // The decider places by its own view of the farm, which may lag node-1's by an
    // announcement: clients go on until one lands on the answered server (fewest clients
    // spreads them, so within a few).
    let mut clients = Vec::new();
    let placed = loop {
        let (c, server) = open();
        clients.push(c);
        if server == by_name(&first).mp.to_string() {
            break Instant::now();
        }
        assert!(clients.len() < 6, "{} clients and none on the preferred {first}", clients.len());
    };
    let second = agreed_target(&nodes, Some(&first));
    println!(
        "DNS answer moved from {first} to {second} {} ms after the client was placed",
        placed.elapsed().as_millis()
    );

    // A policy swap moves it too: `closest` answers, for a client subnet, the server nearest it.
    let (status, body) = json_as(
        Some(TOKEN),
        "PUT",
        nodes[1].url(),
        "/api/applications/calc/policy",
        Some(&json!({"policy": "closest"})),
    );
    assert_eq!(status, 200, "{body}");
    for n in &nodes {
        let ip = n.mp.ip();
        eventually(&format!("closest to {ip} answering {ip}"), PATIENCE, POLL, || {
            let d = dig(dns(&nodes[2]), &format!("calc.{ZONE}"), "A", &[&format!("+subnet={ip}/32")]);
            (d.answers == [format!("calc.{ZONE}. 5 IN A {ip}")]).then_some(()).ok_or(format!("{d:?}"))
        });
    }
    for c in clients {
        rt.block_on(c.stop());
    }
}

#[test]
fn a_node_leaving_never_makes_the_zone_fail() {
    let (_dir, mut nodes) = farm("");
    let leaving = nodes.remove(0);
    let gone = leaving.ready.name.clone();
    let asked = dns(&nodes[0]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Ask without pause while the node dies (SIGKILL on drop) and its lease lapses.
    let stop_at = Instant::now() + Duration::from_secs(30);
    drop(leaving);
    let mut answers = 0;
    loop {
        let d = rt.block_on(dig_async(asked, &format!("_calc._mp._udp.{ZONE}"), "SRV", &[]));
        assert_eq!(d.status, "NOERROR", "the zone failed while {gone} left: {d:?}");
        answers += 1;
        let node = dig(asked, &format!("{gone}.{ZONE}"), "A", &[]);
        if node.status == "NXDOMAIN" {
            assert_ne!(srv_target(&d).as_deref(), Some(gone.as_str()), "{d:?}");
            break;
        }
        assert!(Instant::now() < stop_at, "{gone} still in the zone after 30 s");
    }
    println!("{answers} answers while {gone} left, none failed");
}

#[test]
fn farm_up_prints_each_nodes_dns_address() {
    let dir = temp_dir("dns-farm-up");
    let farm = Lines::spawn(Command::new(DABS).args(["farm", "up", "--nodes", "2", "--dir"]).arg(&dir));
    farm.wait_for("farm up's token line", |lines| lines.iter().any(|l| l.starts_with("token ")));
    let lines = farm.lines();
    let dns: Vec<SocketAddr> = lines
        .iter()
        .filter(|l| l.starts_with("node-"))
        .map(|l| l.split(" dns ").nth(1).unwrap_or_else(|| panic!("no dns in {l:?}")).parse().unwrap())
        .collect();
    assert_eq!(dns.len(), 2, "{lines:?}");
    for at in dns {
        let d = dig(at, "calc.local.dabs", "A", &[]);
        assert_eq!(d.status, "NOERROR", "{d:?}");
    }
    let (status, _) = farm.interrupt();
    assert!(status.success());
}
