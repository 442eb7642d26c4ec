//! Whole announcements (issue 13): a node running 50 portions announces every one of them in
//! parts, and the rest of the farm sees all of them: another node's operator API lists them,
//! its `RESOLVE_VA` resolves each, and the decider sends a client coming back to any of them
//! (through the group, with its virtual address) to that portion.

use dabs_farm_proto::shapes::{OpenAsk, Resolved, cbor};
use dabs_net::Addr;
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::{NodeConfigBuilder, NodeProc, POLL, eventually_async, random_group, temp_dir};
use dabs_wire::SystemCommand;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const PORTIONS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_fifty_portions_is_seen_whole_by_the_farm() {
    let dir = temp_dir("announcements");
    let group = random_group();
    // One client per portion: each client opened at node-a starts a portion of its own.
    let app = "start_at_init = false\nmax_sessions_per_portion = 1\n";
    let start = |name: &str| {
        let config =
            NodeConfigBuilder::new("whole", group, name).operator().app_with("calc", app).write(&dir);
        NodeProc::start(DABS, &config)
    };
    let (a, b) = (start("node-a"), start("node-b"));
    let urls = [a.url().to_owned(), b.url().to_owned()];
    tokio::task::spawn_blocking(move || dabs_testkit::membership::wait_for_decider_at(&urls)).await.unwrap();

    let ep = dabs_testkit::client::endpoint(10).await;
    let mut clients = Vec::new();
    for i in 0..PORTIONS {
        let options =
            FarmClientOptions { queue: 100 + i as u16, ..FarmClientOptions::new(a.mp, dabs_calc::APP) };
        clients.push(FarmClient::start(ep.clone(), options).await.expect("node-a takes the client"));
    }
    let vas: BTreeSet<String> = clients.iter().map(|c| c.va().expect("a virtual address")).collect();
    assert_eq!(vas.len(), PORTIONS, "one portion per client");

    // node-b's operator API lists every one of node-a's portions.
    let url = b.url().to_owned();
    let want = vas.clone();
    eventually_async("node-b seeing all 50 of node-a's portions", Duration::from_secs(20), POLL, || {
        let (url, want) = (url.clone(), want.clone());
        async move {
            let farm = dabs_ops::get_json(&url, "/api/farm").await?;
            let seen: BTreeSet<String> = farm["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["name"] == "node-a")
                .flat_map(|m| m["portions"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p["va"].as_str().map(str::to_owned))
                .collect();
            (seen == want).then_some(()).ok_or(format!("{} of {}", seen.len(), want.len()))
        }
    })
    .await;

    // node-b's RESOLVE_VA resolves each to node-a.
    let observer = dabs_testkit::client::endpoint(10).await;
    let ask = OpenAsk { node: Some("test".into()), ..Default::default() }.to_cbor();
    let s = observer.open(Addr::Udp(b.mp), 0, ask).await.expect("a tool's session with node-b");
    for va in &vas {
        let reply = s
            .call(SystemCommand::ResolveVa.number(), cbor(&BTreeMap::from([("va", va.clone())])))
            .await
            .unwrap_or_else(|e| panic!("node-b does not resolve {va}: {e}"));
        let r: Resolved = ciborium::from_reader(&reply[..]).unwrap();
        assert_eq!((r.node.as_str(), r.addr), ("node-a", a.mp), "{va}");
    }

    // Placement: clients coming back through the group with their address go to their own
    // portion on node-a, whichever part of the announcement listed it.
    let group_addr = SocketAddr::V4(a.ready.group);
    let back = dabs_testkit::client::endpoint(10).await;
    for va in vas.iter().step_by(7) {
        let ask = OpenAsk { app: Some(dabs_calc::APP.into()), va: Some(va.clone()), ..Default::default() };
        let session =
            back.open(Addr::Udp(group_addr), 1, ask.to_cbor()).await.expect("an open through the group");
        assert_eq!(session.peer, Addr::Udp(a.mp), "{va} placed elsewhere");
        let (placed, ..) = dabs_farm_proto::shapes::parse_open_reply(&session.reply).expect("an open reply");
        assert_eq!(&placed, va);
        session.close();
    }
    drop(clients);
}
