//! A node's `sessions` figure is the number of client sessions open on a portion now: a session
//! that ends is taken off, so placement sees clients present, not clients ever sent.

use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, DriverOptions};
use dabs_node::Node;
use dabs_sdk::{Handled, PortionFactoryFn, ServerPortion};
use dabs_testkit::{NodeConfigBuilder, POLL, eventually_async, random_group};
use std::time::Duration;

struct Echo;

impl ServerPortion for Echo {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        Handled::Reply(payload)
    }
}

/// A one-node farm on its own multicast group running `echo`.
async fn node(dir: &std::path::Path) -> Node {
    let config = NodeConfigBuilder::new("sessions", random_group(), "node-1")
        .data_dir(dir)
        .app("echo", true)
        .build(dir);
    Node::start(config, vec![std::sync::Arc::new(PortionFactoryFn::new("echo", || Echo))]).await.unwrap()
}

/// Waits (up to a generous deadline, for a loaded machine) until the node announces `want`
/// open sessions on its portion; panics with `what` and the last count if it never does.
async fn sessions_become(node: &Node, want: u64, what: &str) {
    eventually_async(what, Duration::from_secs(10), POLL, async || {
        let now = node.stats().sessions();
        if now == want { Ok(()) } else { Err(format!("the node announces {now} sessions, not {want}")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_is_no_longer_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let client = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let ask = OpenAsk { app: Some("echo".into()), ..Default::default() }.to_cbor();
    let a = client.open(Addr::Udp(node.mp_addr()), 1, ask.clone()).await.unwrap();
    let b = client.open(Addr::Udp(node.mp_addr()), 1, ask).await.unwrap();
    sessions_become(&node, 2, "two sessions open").await;
    assert_eq!(b.call(300, b"hi".to_vec()).await.unwrap(), b"hi");

    a.close();
    sessions_become(&node, 1, "one closed, one still open").await;
    b.close();
    sessions_become(&node, 0, "both closed").await;
    node.stop().await;
}
