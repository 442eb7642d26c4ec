//! Encrypted client sessions against a real node in this process: calls complete over a
//! seeded lossy path, a replayed or tampered datagram is dropped and counted (never run
//! twice), a node that refuses encryption says so, and a server that answers in clear is
//! refused. A failure prints the seed; replay it with DABS_SEED.

use dabs_net::{Config, DatagramSocket, DriverOptions, EndpointHandle, Error, Stats};
use dabs_node::Node;
use dabs_sdk::{FarmClient, FarmClientOptions, Handled, PortionFactoryFn, ServerPortion};
use dabs_testkit::{NodeConfigBuilder, POLL, eventually_async, random_group};
use dabs_wire::NakCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Echoes the payload and counts how often each payload ran.
struct Counting {
    runs: Arc<Mutex<BTreeMap<Vec<u8>, u32>>>,
}

impl ServerPortion for Counting {
    async fn handle(&mut self, _command: u16, payload: Vec<u8>) -> Handled {
        *self.runs.lock().unwrap().entry(payload.clone()).or_default() += 1;
        Handled::Reply(payload)
    }
}

/// A one-node farm running `echo`, on its own multicast group so parallel tests stay apart.
async fn node(
    accept_encryption: bool,
    runs: Arc<Mutex<BTreeMap<Vec<u8>, u32>>>,
) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfigBuilder::new("enc", random_group(), "solo")
        .data_dir(dir.path())
        .accept_encryption(accept_encryption)
        .app("echo", true)
        .build(dir.path());
    let factory = PortionFactoryFn::new("echo", move || Counting { runs: runs.clone() });
    (Node::start(config, vec![Arc::new(factory)]).await.unwrap(), dir)
}

/// A UDP socket on a lossy path: each datagram, either way, is dropped with probability
/// `loss`, drawn from a seeded generator. It keeps the encrypted datagrams it really sent so
/// the test can play them again.
struct Lossy {
    socket: tokio::net::UdpSocket,
    rng: Mutex<SmallRng>,
    loss: f64,
    sealed_sent: Mutex<Vec<(Vec<u8>, SocketAddr)>>,
}

impl Lossy {
    fn lose(&self) -> bool {
        self.rng.lock().unwrap().random_bool(self.loss)
    }
}

#[derive(Clone)]
struct LossySocket(Arc<Lossy>);

impl DatagramSocket for LossySocket {
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        if self.0.lose() {
            return Ok(buf.len());
        }
        let n = self.0.socket.send_to(buf, to).await?;
        if dabs_wire::decode(buf).is_ok_and(|d| d.header.encrypted) {
            self.0.sealed_sent.lock().unwrap().push((buf.to_vec(), to));
        }
        Ok(n)
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        loop {
            let got = self.0.socket.recv_from(buf).await?;
            if !self.0.lose() {
                return Ok(got);
            }
        }
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.socket.local_addr()
    }
}

fn client_config() -> Config {
    Config { ack_timeout: Duration::from_millis(40), max_retries: 14, ..Config::default() }
}

/// Waits (bounded) until the node's endpoint counters satisfy `done`, and returns them.
async fn node_stats_until(node: &Node, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    eventually_async(what, Duration::from_secs(5), POLL, async || {
        let s = node.endpoint().stats().await.unwrap();
        if done(&s) { Ok(s) } else { Err(s) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_session_survives_loss_and_drops_replays_and_forgeries() {
    let seed = dabs_testkit::seed();
    let runs = Arc::new(Mutex::new(BTreeMap::new()));
    let (node, _dir) = node(true, runs.clone()).await;
    let lossy = Arc::new(Lossy {
        socket: dabs_net::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap(),
        rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        loss: 0.15,
        sealed_sent: Mutex::new(Vec::new()),
    });
    let options = DriverOptions { config: client_config(), seed: Some(seed), ..Default::default() };
    let endpoint = dabs_net::spawn_with_socket(LossySocket(lossy.clone()), options).unwrap();
    let mut options = FarmClientOptions::new(node.mp_addr(), "echo");
    options.encrypt = true;
    let client =
        FarmClient::start(endpoint.clone(), options).await.unwrap_or_else(|e| panic!("seed {seed}: {e}"));

    const CALLS: u32 = 60;
    for i in 0..CALLS {
        // Every call differs, and the multi-buffer ones are sealed buffer by buffer.
        let payload: Vec<u8> = format!("call {i} ").repeat(if i % 10 == 0 { 120 } else { 3 }).into_bytes();
        let reply =
            client.call(300, payload.clone()).await.unwrap_or_else(|e| panic!("seed {seed}, call {i}: {e}"));
        assert_eq!(reply, payload, "seed {seed}: call {i} answered wrongly");
    }
    let mine = endpoint.stats().await.unwrap();
    assert!(mine.retransmits > 0, "seed {seed}: the path lost nothing, so the test showed nothing");
    assert_eq!(mine.sessions_encrypted, 1, "seed {seed}: one session, keyed once");
    assert_eq!((mine.auth_failures, mine.replays_dropped), (0, 0), "seed {seed}: nothing forged came back");
    let before = node_stats_until(&node, &format!("seed {seed}: the node keys the session"), |s| {
        s.sessions_encrypted == 1
    })
    .await;
    assert_eq!(before.sessions_encrypted, 1, "seed {seed}");
    let runs_before = runs.lock().unwrap().clone();
    assert_eq!(runs_before.len() as u32, CALLS, "seed {seed}: every call ran");
    assert!(runs_before.values().all(|n| *n == 1), "seed {seed}: a call ran twice: {runs_before:?}");

    // Play three delivered datagrams again; then forge one: a fresh nonce (so the replay
    // window lets it through to the tag check) and the CRC made right, so only the tag can
    // tell.
    let sealed = lossy.sealed_sent.lock().unwrap().clone();
    assert!(sealed.len() >= 3, "seed {seed}: only {} sealed datagrams sent", sealed.len());
    for (data, to) in &sealed[sealed.len() - 3..] {
        lossy.socket.send_to(data, *to).await.unwrap();
    }
    let (mut forged, to) = sealed[sealed.len() / 2].clone();
    let decoded = dabs_wire::decode(&forged).unwrap();
    let (crc, nonce_at) = (decoded.header.crc, if decoded.buffer.is_some() { 16 } else { 12 });
    forged[nonce_at..nonce_at + 8].copy_from_slice(&(1u64 << 40).to_be_bytes());
    if crc {
        let last = forged.len() - 1;
        forged[last] = dabs_wire::crc8(&forged[..last]);
    }
    lossy.socket.send_to(&forged, to).await.unwrap();

    let after = node_stats_until(&node, &format!("seed {seed}: the node drops what was played"), |s| {
        s.replays_dropped >= before.replays_dropped + 3 && s.auth_failures > before.auth_failures
    })
    .await;
    assert_eq!(after.replays_dropped - before.replays_dropped, 3, "seed {seed}: each replay counted once");
    assert_eq!(after.auth_failures - before.auth_failures, 1, "seed {seed}: the forgery counted");
    assert_eq!(
        after.requests_delivered, before.requests_delivered,
        "seed {seed}: nothing replayed was delivered"
    );
    // The session is unharmed and nothing ran twice.
    assert_eq!(client.call(300, b"after".to_vec()).await.unwrap(), b"after");
    let runs_after = runs.lock().unwrap().clone();
    assert!(runs_after.values().all(|n| *n == 1), "seed {seed}: a call ran twice: {runs_after:?}");
    client.stop().await;
    node.stop().await;
}

async fn plain_endpoint() -> EndpointHandle {
    let options = DriverOptions { config: client_config(), ..Default::default() };
    dabs_net::spawn("127.0.0.1:0".parse().unwrap(), options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_encryption_answers_nak_13_and_still_serves_clear_clients() {
    let runs = Arc::new(Mutex::new(BTreeMap::new()));
    let (node, _dir) = node(false, runs.clone()).await;
    let mut options = FarmClientOptions::new(node.mp_addr(), "echo");
    options.encrypt = true;
    let refused = FarmClient::start(plain_endpoint().await, options.clone()).await.err().expect("refused");
    match &refused {
        Error::Call(dabs_net::CallError::Nak { code, text }) => {
            assert_eq!(*code, NakCode::EncryptionRefused, "{refused}");
            assert!(text.contains("accept_encryption = false"), "the text says why: {refused}");
        }
        other => panic!("expected NAK 13, got {other}"),
    }
    options.encrypt = false;
    let clear = FarmClient::start(plain_endpoint().await, options).await.unwrap();
    assert_eq!(clear.call(300, b"clear".to_vec()).await.unwrap(), b"clear");
    assert_eq!(runs.lock().unwrap().len(), 1, "only the clear client's call ran");
    assert_eq!(node.endpoint().stats().await.unwrap().sessions_encrypted, 0);
    clear.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asked_for_encryption_refuses_a_reply_in_clear() {
    // A server that keys sessions (its endpoint's default) but writes security: null, as a
    // node that ignores the offer would.
    let server = plain_endpoint().await;
    let mut opens = server.open_requests();
    let mut requests = server.register_queue(16);
    let addr = server.local_addrs().udp;
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let reply = dabs_farm_proto::shapes::open_reply("mp://enc/echo/dasp/1", addr, 16);
            let _ = open.accept(16, reply).await;
        }
    });
    let mut options = FarmClientOptions::new(addr, "echo");
    options.encrypt = true;
    options.max_reopens = 0;
    let err = FarmClient::start(plain_endpoint().await, options).await.err().expect("refused");
    assert!(matches!(&err, Error::NotEncrypted(why) if why.contains("null")), "{err}");
    // Not even STARTED reached the server.
    let nothing = tokio::time::timeout(Duration::from_millis(300), requests.recv()).await;
    assert!(nothing.is_err(), "a request was sent in a session the client refused");
    assert_eq!(server.stats().await.unwrap().sessions_encrypted, 1, "the session was keyed, then dropped");
}
