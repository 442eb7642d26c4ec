//! A farm set up unevenly: the decider refuses encryption, another node accepts it. An
//! encrypting client opening through the group must be placed on the node that accepts it,
//! and a clear client may go anywhere.

use dabs_net::{Addr, DriverOptions};
use dabs_node::Node;
use dabs_sdk::{FarmClient, FarmClientOptions};
use dabs_testkit::membership::wait_for_decider;
use dabs_testkit::{NodeConfigBuilder, random_group, temp_dir};
use std::net::SocketAddrV4;

async fn node(group: SocketAddrV4, i: usize, dir: &std::path::Path, accept: bool) -> Node {
    let config = NodeConfigBuilder::new("mixed", group, &format!("node-{i}"))
        .accept_encryption(accept)
        .app("calc", true)
        .build(dir);
    Node::start(config, vec![dabs_calc::factory()]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_that_refuses_encryption_places_encrypting_clients_on_a_node_that_accepts() {
    let dir = temp_dir("mixed-enc");
    let group = random_group();
    // node-1 is older (started first; a tie goes to the name), so it decides group opens,
    // and it refuses encryption.
    let refusing = node(group, 1, &dir, false).await;
    let accepting = node(group, 2, &dir, true).await;
    let decider = wait_for_decider(&[refusing.handle(), accepting.handle()]).await;
    assert_eq!(decider, "node-1");
    let farm = std::net::SocketAddr::V4(group);
    for i in 0..4 {
        let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
        let options = FarmClientOptions { encrypt: true, ..FarmClientOptions::new(farm, "calc") };
        let client =
            FarmClient::start(ep, options).await.unwrap_or_else(|e| panic!("encrypting client {i}: {e}"));
        assert_eq!(client.server().await, Some(Addr::Udp(accepting.mp_addr())), "client {i}");
        let reply = client.call(258, dabs_sdk::encode_args(&(6i64, 7i64))).await.unwrap();
        assert_eq!(dabs_sdk::decode_reply::<i64>(&reply), Ok(42));
        client.stop().await;
    }
    refusing.stop().await;
    accepting.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
