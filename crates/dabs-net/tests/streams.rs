//! MP over TCP and over a WebSocket (interop.md, "MP over a stream"): the same sessions and
//! calls as over UDP, and connections cut under the calls (by the kernel, `ss -K`, at seeded
//! moments) lose and repeat nothing: the client connects again from its own port, the server
//! finds the same sessions, and each request runs once.

use dabs_net::{Addr, DriverOptions, EndpointHandle};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QUEUE: u16 = 3;
const UPPER: u16 = 300;

/// A server accepting MP over TCP too, upper-casing command 300; it counts each payload's
/// executions and records the peers of the opens it accepted.
struct Server {
    ep: EndpointHandle,
    /// Where the WebSocket front (what a node's operator port does for `/mp`) listens.
    ws: SocketAddr,
    runs: Arc<Mutex<HashMap<Vec<u8>, u32>>>,
    peers: Arc<Mutex<Vec<Addr>>>,
}

async fn server() -> Server {
    let options = DriverOptions { tcp: true, ..DriverOptions::default() };
    let ep =
        dabs_net::spawn("127.0.0.1:0".parse().expect("literal"), options).await.expect("server endpoint");
    let peers: Arc<Mutex<Vec<Addr>>> = Arc::default();
    let runs: Arc<Mutex<HashMap<Vec<u8>, u32>>> = Arc::default();
    let mut opens = ep.open_requests();
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            seen.lock().unwrap().push(open.request.peer.clone());
            let _ = open.accept(QUEUE, b"ok".to_vec()).await;
        }
    });
    let mut requests = ep.register_queue(QUEUE);
    let counted = runs.clone();
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            *counted.lock().unwrap().entry(req.request.payload.clone()).or_default() += 1;
            let reply = req.request.payload.to_ascii_uppercase();
            req.reply(reply);
        }
    });
    let ws = websocket_front(ep.clone()).await;
    Server { ep, ws, runs, peers }
}

/// A minimal HTTP front that answers a WebSocket upgrade on `/mp` (101 with the accept key)
/// and hands the connection to `ep`, as the operator interface does; anything else gets 400.
async fn websocket_front(ep: EndpointHandle) -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("ws front");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let ep = ep.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let (mut key, mut path) = (None, String::new());
                let mut line = String::new();
                while reader.read_line(&mut line).await.unwrap_or(0) > 2 {
                    if let Some(rest) = line.strip_prefix("GET ") {
                        path = rest.split(' ').next().unwrap_or("").to_owned();
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("sec-websocket-key")
                    {
                        key = Some(value.trim().to_owned());
                    }
                    line.clear();
                }
                // Nothing the client sent beyond its headers is lost: it waits for the 101.
                assert!(reader.buffer().is_empty(), "the client spoke before the upgrade");
                let mut stream = reader.into_inner();
                match key.filter(|_| path == dabs_net::WEBSOCKET_PATH) {
                    Some(key) => {
                        let accept = dabs_net::websocket_accept_key(key.as_bytes());
                        let head = format!(
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                        );
                        let permit = ep.stream_permit(peer.ip()).expect("room for the test's connections");
                        if stream.write_all(head.as_bytes()).await.is_ok() {
                            ep.attach_websocket(peer, stream, permit);
                        }
                    }
                    None => {
                        let _ =
                            stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
                    }
                }
            });
        }
    });
    addr
}

fn tcp_of(s: &Server) -> SocketAddr {
    s.ep.local_addrs().tcp.expect("the server listens on TCP")
}

async fn client() -> EndpointHandle {
    dabs_net::spawn("127.0.0.1:0".parse().expect("literal"), DriverOptions::default())
        .await
        .expect("client endpoint")
}

/// The server's address on `channel` ("tcp" or "ws").
fn peer_of(s: &Server, channel: &str) -> Addr {
    if channel == "ws" { Addr::Ws(s.ws) } else { Addr::Tcp(tcp_of(s)) }
}

#[tokio::test]
async fn calls_plain_and_encrypted_and_long_messages_over_tcp() {
    calls_over("tcp").await;
}

#[tokio::test]
async fn calls_plain_and_encrypted_and_long_messages_over_a_websocket() {
    calls_over("ws").await;
}

async fn calls_over(channel: &str) {
    let srv = server().await;
    assert_eq!(tcp_of(&srv).port(), srv.ep.local_addrs().udp.port(), "TCP on the MP port");
    let cli = client().await;
    let s = cli.open(peer_of(&srv, channel), 7, b"{}".to_vec()).await.expect("open over the stream");
    assert_eq!(s.reply, b"ok");
    assert_eq!(s.call(UPPER, b"abc".to_vec()).await.expect("call"), b"ABC");
    let big: Vec<u8> = (0..65_536u32).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(s.call(UPPER, big.clone()).await.expect("64 KiB call"), big.to_ascii_uppercase());
    let e = cli
        .open_encrypted(peer_of(&srv, channel), 8, b"{}".to_vec())
        .await
        .expect("encrypted open over the stream");
    assert_eq!(e.call(UPPER, b"sealed".to_vec()).await.expect("encrypted call"), b"SEALED");
    let peers = srv.peers.lock().unwrap().clone();
    let client_port = cli.local_addrs().udp.port();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers.iter().all(|p| p.socket_addr().is_some_and(|a| a.port() == client_port)
            && p.to_string().starts_with(channel)),
        "both opens came over {channel} from the client's own port: {peers:?}"
    );
    let stats = cli.stats().await.expect("stats");
    assert_eq!(stats.calls_failed, 0);
}

#[tokio::test]
async fn a_stream_that_is_not_mp_is_closed_and_the_server_carries_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = server().await;
    let mut junk = tokio::net::TcpStream::connect(tcp_of(&srv)).await.expect("connect");
    // A length of 4096: more than any MP datagram.
    junk.write_all(&[0x10, 0x00, 1, 2, 3]).await.expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), junk.read(&mut buf))
        .await
        .expect("the server closes the stream")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let cli = client().await;
    let s = cli.open(Addr::Tcp(tcp_of(&srv)), 7, b"{}".to_vec()).await.expect("open after the junk");
    assert_eq!(s.call(UPPER, b"still".to_vec()).await.expect("call"), b"STILL");
}

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Kills (`ss -K`) every TCP socket on this host whose destination port is `port`: the
/// client's connections to the server, as a middlebox or a lost link would.
fn cut(port: u16) -> bool {
    std::process::Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &port.to_string()])
        .output()
        .is_ok_and(|o| {
            o.status.success() && o.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() > 1
        })
}

#[tokio::test]
async fn a_websocket_that_does_not_speak_mp_is_closed_and_the_server_carries_on() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let srv = server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/mp", srv.ws)).await.expect("upgrade");
    ws.send(Message::text("hello")).await.expect("send text");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the server closes a WebSocket that sends text");
    let cli = client().await;
    let s = cli.open(Addr::Ws(srv.ws), 7, b"{}".to_vec()).await.expect("open after the junk");
    assert_eq!(s.call(UPPER, b"still".to_vec()).await.expect("call"), b"STILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_under_calls_lose_and_repeat_nothing() {
    cut_under_calls("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_cut_under_calls_lose_and_repeat_nothing() {
    cut_under_calls("ws").await;
}

async fn cut_under_calls(channel: &str) {
    assert!(is_root(), "this test cuts TCP connections with `ss -K`: run it as root (CI does)");
    let seed: u64 = std::env::var("DABS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("seed {seed} (DABS_SEED={seed} replays the cuts' timing), over {channel}");
    let srv = server().await;
    let to = peer_of(&srv, channel);
    let port = to.socket_addr().expect("a network address").port();
    let cli = client().await;
    let s = Arc::new(cli.open(to, 7, b"{}".to_vec()).await.expect("open over the stream"));
    // Calls go on until this many cuts have hit them (or the bounds below).
    const CUTS: u32 = 15;
    const MAX_CALLS: usize = 50_000;
    const WORKERS: usize = 8;
    let started = Instant::now();
    let limit = Duration::from_secs(60);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cuts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    // The cutter: at seeded intervals, bounded in count and time.
    let (stop, made) = (done.clone(), cuts.clone());
    let cutter = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
            if tokio::task::spawn_blocking(move || cut(port)).await.unwrap_or(false) {
                made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (s, cuts, next) = (s.clone(), cuts.clone(), next.clone());
            tokio::spawn(async move {
                while cuts.load(std::sync::atomic::Ordering::Relaxed) < CUTS && started.elapsed() < limit {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= MAX_CALLS {
                        break;
                    }
                    let payload = format!("call-{i}").into_bytes();
                    let got = s.call(UPPER, payload.clone()).await.map_err(|e| format!("call {i}: {e}"))?;
                    if got != payload.to_ascii_uppercase() {
                        return Err(format!("call {i} answered {got:?}"));
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker").unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    cutter.await.expect("cutter");
    let (cuts, calls) = (
        cuts.load(std::sync::atomic::Ordering::Relaxed),
        next.load(std::sync::atomic::Ordering::Relaxed).min(MAX_CALLS),
    );
    let runs = srv.runs.lock().unwrap().clone();
    println!("{cuts} connections cut under {calls} calls in {:?}", started.elapsed());
    assert!(cuts >= CUTS, "only {cuts} cuts in {limit:?} (seed {seed})");
    assert_eq!(runs.len(), calls, "every call ran (seed {seed})");
    let twice: Vec<_> =
        runs.iter().filter(|(_, n)| **n != 1).map(|(p, n)| (String::from_utf8_lossy(p), n)).collect();
    let peers = srv.peers.lock().unwrap().clone();
    let stats = cli.stats().await.expect("client stats");
    assert!(
        twice.is_empty(),
        "ran more than once: {twice:?}; opens from {peers:?}; client {stats:?} (seed {seed})"
    );
    assert_eq!(peers.len(), 1, "one session throughout, no re-open: {peers:?} (seed {seed})");
}
