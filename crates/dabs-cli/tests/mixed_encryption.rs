//! A farm set up unevenly: the decider refuses encryption, another node accepts it. An
//! encrypting client opening through the group must be placed on the node that accepts it,
//! and a clear client may go anywhere.

use dabs_net::{Addr, DriverOptions};
use dabs_node::Node;
use dabs_node::config::NodeConfig;
use dabs_sdk::{FarmClient, FarmClientOptions};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

async fn node(group: &str, i: usize, dir: &std::path::Path, accept: bool) -> Node {
    let text = format!(
        "[farm]\nname = \"mixed\"\ngroup = \"{group}\"\ninterface = \"127.0.0.1\"\n\n\
         [node]\nname = \"node-{i}\"\nbind = \"127.0.0.1:0\"\ndata_dir = \"{}\"\naccept_encryption = {accept}\n\n\
         [[app]]\nname = \"calc\"\nstart_at_init = true\n",
        dir.join(format!("node-{i}")).display()
    );
    let config =
        NodeConfig::parse(&text, &dir.join(format!("node-{i}.toml"))).unwrap_or_else(|e| panic!("{e}"));
    Node::start(config, vec![dabs_calc::factory()]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decider_that_refuses_encryption_places_encrypting_clients_on_a_node_that_accepts() {
    let dir = std::env::temp_dir().join(format!("dabs-mixed-enc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = std::hash::RandomState::new().build_hasher().finish();
    let group = format!("239.255.{}.{}:{}", r % 250 + 2, (r >> 8) % 250 + 2, 40_000 + (r >> 16) % 20_000);
    // node-1 is older, so it decides group opens, and it refuses encryption.
    let refusing = node(&group, 1, &dir, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let accepting = node(&group, 2, &dir, true).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let farm: std::net::SocketAddr = group.parse().unwrap();
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
