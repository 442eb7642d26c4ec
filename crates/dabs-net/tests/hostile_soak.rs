//! A seeded hostile-traffic soak against a real UDP endpoint on loopback (issue 11, R-SEC-3):
//! forged, replayed, truncated, corrupted, half-sent and flooding datagrams from several
//! sockets, for a bounded count and time. The process's resident memory stays within a stated
//! bound, and a legitimate client opens and calls during the attack and after it.

use dabs_net::{Addr, DriverOptions, EndpointHandle};
use dabs_wire::{BufferHeader, Header, Kind, SentTime, SystemCommand, chunk_size, decode, encode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const QUEUE: u16 = 3;
const MAX_DATAGRAMS: usize = 40_000;
const MAX_TIME: Duration = Duration::from_secs(8);
/// Resident memory may grow by at most this much: the endpoint's reassembly budget (64 MiB by
/// default) plus room for sessions, tables and the allocator.
const RSS_BOUND: u64 = 96 << 20;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

async fn server() -> EndpointHandle {
    let ep = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let mut opens = ep.open_requests();
    tokio::spawn(async move {
        while let Some(open) = opens.recv().await {
            let _ = open.accept(QUEUE, b"ok".to_vec()).await;
        }
    });
    let mut requests = ep.register_queue(QUEUE);
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let p = req.request.payload.clone();
            req.reply(p);
        }
    });
    ep
}

/// A legitimate client opens a session and calls once; true when the echo came back.
async fn legit(client: &EndpointHandle, to: SocketAddr) -> bool {
    let work = async {
        let s = client.open(Addr::Udp(to), 1, b"{}".to_vec()).await.ok()?;
        let r = s.call(300, b"hello".to_vec()).await.ok()?;
        s.close();
        Some(r == b"hello")
    };
    tokio::time::timeout(Duration::from_secs(5), work).await.ok().flatten().unwrap_or(false)
}

fn datagram(h: &Header, b: Option<BufferHeader>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 512];
    let n = encode(h, b, payload, &mut out).unwrap();
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_traffic_is_bounded_and_a_legitimate_client_still_gets_in() {
    let seed: u64 = std::env::var("SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("hostile soak seed {seed} (rerun with SOAK_SEED={seed})");
    let mut rng = SmallRng::seed_from_u64(seed);
    let srv = server().await;
    let to = srv.local_addrs().udp;
    let client = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    assert!(legit(&client, to).await, "seed {seed}: no call before the attack");
    let before = rss_bytes();

    // Hostile sockets on other loopback addresses (other sources than the client's).
    let mut hostile = Vec::new();
    for i in 2..8u8 {
        hostile.push(UdpSocket::bind(SocketAddr::from(([127, 0, 0, i], 0))).await.unwrap());
    }
    let legit_task = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            let start = Instant::now();
            while start.elapsed() < MAX_TIME {
                ok += usize::from(legit(&client, to).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ok
        })
    };

    let total = (((1usize << 20) - 1) / chunk_size(false, 0) + 1) as u16;
    let mut sessions: Vec<(usize, u8)> = Vec::new();
    let mut sent_log: Vec<(usize, Vec<u8>)> = Vec::new();
    let start = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 600];
    while sent < MAX_DATAGRAMS && start.elapsed() < MAX_TIME {
        let who = rng.random_range(0..hostile.len());
        let stamp = SentTime::from_unix_millis(dabs_net::unix_ms());
        let d = match rng.random_range(0..100) {
            // Flooding opens (the server accepts them all: half-open sessions).
            0..=4 => datagram(
                &Header {
                    transaction: rng.random_range(1..=255),
                    sent: stamp,
                    src: 9,
                    ..Header::new(Kind::Request, SystemCommand::OpenSession.number())
                },
                None,
                b"{}",
            ),
            // Half-sent 1 MiB messages in sessions the server gave us.
            5..=64 if !sessions.is_empty() => {
                let (w, session) = sessions[rng.random_range(0..sessions.len())];
                // Few transactions, so that buffers pile up in the same half-sent messages.
                let h = Header {
                    session,
                    transaction: rng.random_range(1..=8),
                    sent: SentTime::from_unix_millis(1000),
                    dst: QUEUE,
                    src: 9,
                    ..Header::new(Kind::Request, 300)
                };
                let index = rng.random_range(0..total - 1);
                let payload = vec![0x5A; chunk_size(false, 0)];
                let d = datagram(&h, Some(BufferHeader { index, total }), &payload);
                hostile[w].send_to(&d, to).await.ok();
                sent += 1;
                continue;
            }
            // Replayed: an earlier datagram again.
            65..=74 if !sent_log.is_empty() => sent_log[rng.random_range(0..sent_log.len())].1.clone(),
            // Truncated or corrupted copies of an earlier one.
            75..=84 if !sent_log.is_empty() => {
                let mut d = sent_log[rng.random_range(0..sent_log.len())].1.clone();
                if rng.random_bool(0.5) {
                    d.truncate(rng.random_range(0..d.len()));
                } else {
                    let i = rng.random_range(0..d.len());
                    d[i] ^= 1 << rng.random_range(0..8);
                }
                d
            }
            // Forged: random bytes.
            _ => (0..rng.random_range(0..=512)).map(|_| rng.random()).collect(),
        };
        hostile[who].send_to(&d, to).await.ok();
        sent += 1;
        // Only non-empty datagrams are copied later: truncating or corrupting needs a byte.
        if sent_log.len() < 256 && !d.is_empty() {
            sent_log.push((who, d));
        }
        // Learn session numbers from REPLYs to our opens (bounded).
        for (w, sock) in hostile.iter().enumerate() {
            while let Ok((n, _)) = sock.try_recv_from(&mut buf) {
                if let Ok(r) = decode(&buf[..n])
                    && r.header.kind == Kind::Reply
                    && r.header.command == SystemCommand::OpenSession.number()
                    && sessions.len() < 4096
                {
                    sessions.push((w, r.header.session));
                }
            }
        }
        if sent % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let elapsed = start.elapsed();
    let ok_during = legit_task.await.unwrap();
    let stats = srv.stats().await.unwrap();
    let after = rss_bytes();
    let ok_after = legit(&client, to).await;
    println!(
        "seed {seed}: {sent} hostile datagrams in {elapsed:?}; resident {} -> {} MiB; reassembly {} bytes \
         (peak {}), {} refused, {} sessions reclaimed, {} opens refused, {} legitimate calls during, after: {ok_after}",
        before >> 20,
        after >> 20,
        stats.reassembly_bytes,
        stats.reassembly_peak_bytes,
        stats.reassembly_refused,
        stats.sessions_reclaimed,
        stats.opens_refused,
        ok_during,
    );
    assert!(
        after.saturating_sub(before) <= RSS_BOUND,
        "seed {seed}: resident memory grew by {} MiB",
        (after - before) >> 20
    );
    assert!(stats.reassembly_peak_bytes <= 64 << 20, "seed {seed}");
    assert!(ok_during > 0, "seed {seed}: no legitimate call got through during the attack");
    assert!(ok_after, "seed {seed}: no legitimate call after the attack");
}
