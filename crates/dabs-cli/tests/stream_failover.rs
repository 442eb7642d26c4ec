//! FAILOVER to clients on the stream channels (R-MP-7 with R-FO-2): on a 2-node farm, one
//! client speaks MP over TCP to node-1 and one over node-1's WebSocket; draining node-1 moves
//! both to node-2 over their own channel (the WebSocket client to node-2's operator port,
//! which the notice names), the notices verified as interop.md seals them, and their calls
//! carry on.

use dabs_net::{Addr, Config, DriverOptions};
use dabs_sdk::{FarmClient, FarmClientOptions, Transport, decode_reply, encode_args};
use dabs_testkit::{Farm, POLL, eventually_async};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");
const SECRET: &str = "00112233445566778899aabbccddeeff";

async fn client(transport: Transport, farm: SocketAddr) -> FarmClient {
    let config = Config { ack_timeout: Duration::from_millis(100), max_retries: 10, ..Config::default() };
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions { config, ..Default::default() })
        .await
        .unwrap();
    let mut o = FarmClientOptions::new(farm, "calc");
    o.secret = Some((0..16).map(|i| u8::from_str_radix(&SECRET[2 * i..2 * i + 2], 16).unwrap()).collect());
    o.idempotent = true;
    o.transport = transport;
    FarmClient::start(ep, o).await.unwrap_or_else(|e| panic!("a client over {}: {e}", transport.name()))
}

async fn mul(c: &FarmClient, a: i64) -> Result<i64, String> {
    let r = c.call(258, encode_args(&(a, 3i64))).await.map_err(|e| e.to_string())?;
    decode_reply::<i64>(&r).map_err(|e| e.to_string())
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().expect("operator URL http://IP:PORT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_moves_its_tcp_and_websocket_clients_over_their_own_channels() {
    let farm = Farm::up_with(DABS, 2, "stream-failover", &["--secret", SECRET]);
    farm.wait_for_decider();
    let manifest = farm.manifest();
    let node = |i: usize| {
        let n = &manifest["nodes"][i];
        let mp: SocketAddr = n["mp"].as_str().unwrap().parse().unwrap();
        (mp, addr_of(n["operator"].as_str().unwrap()))
    };
    let ((mp1, op1), (mp2, op2)) = (node(0), node(1));
    // Node-1 must know node-2 (and its portion) to name it as the alternate.
    let operators = farm.operators();
    eventually_async(
        "node-1 to see node-2's calculator portion",
        Duration::from_secs(10),
        POLL,
        async || {
            let farm_view = dabs_testkit::http::get_text(&operators[0], "/api/farm");
            farm_view.contains("node-2") && farm_view.matches("mp://").count() >= 2
        },
    )
    .await;
    let tcp = client(Transport::Tcp, mp1).await;
    let ws = client(Transport::WebSocket, op1).await;
    assert_eq!(tcp.server().await, Some(Addr::Tcp(mp1)));
    assert_eq!(ws.server().await, Some(Addr::Ws(op1)));
    assert_eq!(mul(&tcp, 7).await, Ok(21));
    assert_eq!(mul(&ws, 8).await, Ok(24));

    let out = std::process::Command::new(DABS)
        .args(["drain", &mp1.to_string(), "--secret", SECRET])
        .output()
        .unwrap();
    assert!(out.status.success(), "dabs drain: {}", String::from_utf8_lossy(&out.stderr));
    eventually_async("both clients to move to node-2", Duration::from_secs(5), POLL, async || {
        tcp.server().await == Some(Addr::Tcp(mp2)) && ws.server().await == Some(Addr::Ws(op2))
    })
    .await;
    assert_eq!(mul(&tcp, 9).await, Ok(27), "computed on node-2 over TCP");
    assert_eq!(mul(&ws, 10).await, Ok(30), "computed on node-2 over the WebSocket");
    for (name, c) in [("tcp", &tcp), ("ws", &ws)] {
        assert_eq!(c.failovers().accepted.load(Ordering::Relaxed), 1, "{name}: one verified notice");
        assert_eq!(c.failovers().rejected.load(Ordering::Relaxed), 0, "{name}: none refused");
    }
    tcp.stop().await;
    ws.stop().await;
}
