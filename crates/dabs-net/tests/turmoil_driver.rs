//! The real tokio driver, with its real timers, under turmoil's deterministic network and
//! clock: bursty seeded loss and a two-second partition while calls are in flight. Every call
//! must be answered correctly, exactly once. A failure prints the seed that replays it.

use dabs_net::{Addr, Config, DatagramSocket, DriverOptions};
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct SimSocket(turmoil::net::UdpSocket);

impl DatagramSocket for SimSocket {
    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.0.send_to(buf, to).await
    }
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.0.recv_from(buf).await
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

const QUEUE: u16 = 3;
const REVERSE: u16 = 301;

/// Seeds run by default. 3 and 13 once failed: turmoil's link outages drop everything still
/// in flight, so the head of every 17-datagram burst was lost round after round (now rounds
/// are rotated and re-sent ones paced), and a client gave up on a request whose REPLY was
/// arriving (a partial REPLY now counts as the ACK; a REPLY the server stops pushing is kept
/// for the client's probes). 6 was reported failing too; 18 needed the pacing. Seeds 1..=20
/// pass (runs are not bit-for-bit replays: tokio's select and the wall clock vary).
const SEEDS: [u64; 7] = [1, 2, 3, 4, 6, 13, 18];

#[test]
fn driver_survives_loss_and_a_partition() {
    match dabs_testkit::replay_seed() {
        Some(seed) => run(seed),
        None => SEEDS.into_iter().for_each(run),
    }
}

fn run(seed: u64) {
    println!("seed {seed} (replay with DABS_SEED={seed})");
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(300))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(5))
        .fail_rate(0.05)
        .repair_rate(0.6)
        .build();

    let executed = Arc::new(Mutex::new(Vec::<u64>::new()));
    let ran = executed.clone();
    sim.host("server", move || {
        let ran = ran.clone();
        async move {
            let socket = SimSocket(turmoil::net::UdpSocket::bind("0.0.0.0:9000").await?);
            let options = DriverOptions { seed: Some(seed), ..Default::default() };
            let ep = dabs_net::spawn_with_socket(socket, options)?;
            let mut opens = ep.open_requests();
            let mut requests = ep.register_queue(QUEUE);
            loop {
                tokio::select! {
                    Some(open) = opens.recv() => { open.accept(QUEUE, vec![]).await.ok(); }
                    Some(req) = requests.recv() => {
                        ran.lock().unwrap().push(u64::from_be_bytes(req.request.payload[..8].try_into().unwrap()));
                        let reply: Vec<u8> = req.request.payload.iter().rev().copied().collect();
                        req.reply(reply);
                    }
                }
            }
        }
    });

    sim.client("client", async move {
        let socket = SimSocket(turmoil::net::UdpSocket::bind("0.0.0.0:9001").await?);
        let config = Config { max_retries: 10, ..Config::default() };
        let ep = dabs_net::spawn_with_socket(
            socket,
            DriverOptions { config, seed: Some(seed ^ 1), ..Default::default() },
        )?;
        let server = SocketAddr::new(turmoil::lookup("server"), 9000);
        let session =
            ep.open(Addr::Udp(server), 1, vec![]).await.map_err(|e| format!("seed {seed}: open: {e}"))?;

        // Cut the link for two seconds while calls are in flight (simulated time: the fault
        // schedule under test, not a wait).
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            turmoil::partition("client", "server");
            tokio::time::sleep(Duration::from_secs(2)).await;
            turmoil::repair("client", "server");
        });

        let mut answered = HashSet::new();
        for batch in 0..40u64 {
            // Spread the calls so the partition below falls in the middle of them (the load's
            // pace, in simulated time).
            tokio::time::sleep(Duration::from_millis(25)).await;
            let calls: Vec<_> = (0..8u64)
                .map(|i| {
                    let id = batch * 8 + i;
                    let size = if id % 10 == 0 { 8_000 } else { 40 };
                    let mut payload = id.to_be_bytes().to_vec();
                    payload.resize(size, (id % 251) as u8);
                    (id, payload.clone(), session.call_async(REVERSE, payload))
                })
                .collect();
            for (id, payload, call) in calls {
                let reply = call.await.map_err(|e| format!("seed {seed}: call {id} failed: {e}"))?;
                let expected: Vec<u8> = payload.iter().rev().copied().collect();
                assert!(reply == expected, "seed {seed}: wrong reply for {id}");
                assert!(answered.insert(id), "seed {seed}: {id} answered twice");
            }
        }
        assert_eq!(answered.len(), 320, "seed {seed}");
        let stats = ep.stats().await.unwrap();
        assert!(stats.retransmits > 0, "seed {seed}: the loss and the partition must have cost retransmits");
        Ok(())
    });

    sim.run().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let ran = executed.lock().unwrap();
    let unique: HashSet<_> = ran.iter().collect();
    assert_eq!(unique.len(), ran.len(), "seed {seed}: a request ran twice");
    assert_eq!(ran.len(), 320, "seed {seed}");
}
