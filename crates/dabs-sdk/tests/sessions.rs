//! A node's `sessions` figure is the number of client sessions open on a portion now: a session
//! that ends is taken off, so placement sees clients present, not clients ever sent.

use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, DriverOptions};
use dabs_node::Node;
use dabs_node::config::NodeConfig;
use dabs_sdk::{Handled, PortionFactoryFn, ServerPortion};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

struct Echo;

impl ServerPortion for Echo {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        Handled::Reply(payload)
    }
}

/// A one-node farm on its own multicast group running `echo`.
async fn node(dir: &std::path::Path) -> Node {
    let r = std::hash::RandomState::new().build_hasher().finish();
    let group = format!("239.255.{}.{}:{}", r % 250 + 2, (r >> 8) % 250 + 2, 40_000 + (r >> 16) % 20_000);
    let text = format!(
        "[farm]\nname = \"sessions\"\ngroup = \"{group}\"\n\n[node]\nname = \"node-1\"\nbind = \"127.0.0.1:0\"\n\
         data_dir = \"{}\"\n\n[[app]]\nname = \"echo\"\nstart_at_init = true\n",
        dir.display()
    );
    let config = NodeConfig::parse(&text, &dir.join("node.toml")).unwrap();
    Node::start(config, vec![std::sync::Arc::new(PortionFactoryFn::new("echo", || Echo))]).await.unwrap()
}

/// Waits (up to a generous deadline, for a loaded machine) until the node announces `want`
/// open sessions on its portion; returns what it last announced.
async fn sessions_become(node: &Node, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = node.stats().sessions();
        if now == want || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_is_no_longer_counted() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let client = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let ask = OpenAsk { app: Some("echo".into()), ..Default::default() }.to_cbor();
    let a = client.open(Addr::Udp(node.mp_addr()), 1, ask.clone()).await.unwrap();
    let b = client.open(Addr::Udp(node.mp_addr()), 1, ask).await.unwrap();
    assert_eq!(sessions_become(&node, 2).await, 2, "two sessions open");
    assert_eq!(b.call(300, b"hi".to_vec()).await.unwrap(), b"hi");

    a.close();
    assert_eq!(sessions_become(&node, 1).await, 1, "one closed, one still open");
    b.close();
    assert_eq!(sessions_become(&node, 0).await, 0, "both closed");
    node.stop().await;
}
