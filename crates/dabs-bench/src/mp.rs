//! MP, the project's own protocol, over UDP through `dabs-net`'s tokio driver.
//!
//! The server is one MP endpoint that accepts every `OPEN_SESSION` on portion queue 1;
//! the request/response is the system command `ECHO` (9), which the endpoint core answers
//! itself with the request's payload, so no application task sits on the server's path.
//! Each benchmark client has its own endpoint (its own UDP socket and driver task) and one
//! session, and does `session.call(ECHO, payload)` per round trip: the REQUEST, its REPLY,
//! and the client's ACK of the REPLY (three datagrams for a single-buffer message).
//!
//! MP datagrams are at most 512 bytes, so a 512-byte payload already takes two buffers
//! and 4 KiB takes nine, each way.
//!
//! The encrypted variants offer security in `OPEN_SESSION`, run the key exchange before the
//! session is used, and seal every datagram (24 bytes more each; the buffer counts above do
//! not change). [`MpEcho::open_cost`] times the opens themselves, where the key exchange is.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::Context as _;
use dabs_farm_proto::shapes::{OpenAsk, SecurityOffer, negotiate_security, open_reply_secured};
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle, SECURITY_SPEC, Session};
use dabs_wire::SystemCommand;
use serde::Serialize;

use crate::{Client, ServerHandle, Transport, async_trait, loopback_any};

/// The server portion's queue, and the client portions' queue.
const QUEUE: u16 = 1;
/// The virtual address the server hands out in its `OPEN_SESSION` REPLY.
const VA: &str = "mp://bench/echo/dasp/1";

/// MP echo transport (ECHO over one session per client).
#[derive(Debug, Clone)]
pub struct MpEcho {
    crc: bool,
    encrypt: bool,
    /// Over TCP (the server listens on its MP port number) instead of UDP.
    tcp: bool,
}

/// How long opening a session takes, one open at a time from one client.
#[derive(Debug, Clone, Serialize)]
pub struct OpenCost {
    /// The transport's name (`mp`, `mp+enc`, ...).
    pub transport: String,
    /// Measured opens.
    pub samples: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

impl MpEcho {
    /// `crc`: whether the datagrams each endpoint originates carry the CRC-8 byte
    /// (the session then uses CRCs both ways).
    pub fn new(crc: bool) -> Self {
        Self { crc, encrypt: false, tcp: false }
    }

    /// Like [`MpEcho::new`], with every session encrypted (Noise NN, ChaCha20-Poly1305).
    pub fn encrypted(crc: bool) -> Self {
        Self { crc, encrypt: true, tcp: false }
    }

    /// MP in clear, CRC off, over TCP (interop.md, "MP over a stream").
    pub fn over_tcp() -> Self {
        Self { crc: false, encrypt: false, tcp: true }
    }

    /// The server's options listen on TCP too when measuring TCP (clients need no listener).
    fn options(&self, server: bool) -> DriverOptions {
        DriverOptions {
            config: Config { crc: self.crc, ..Config::default() },
            tcp: self.tcp && server,
            ..DriverOptions::default()
        }
    }

    /// The `OPEN_SESSION` payload: the application, and the security offer when encrypting.
    fn ask(&self) -> Vec<u8> {
        let security = self.encrypt.then(|| vec![SecurityOffer::of(&SECURITY_SPEC)]);
        OpenAsk { app: Some("bench".into()), security, ..OpenAsk::default() }.to_cbor()
    }

    async fn open(&self, ep: &EndpointHandle, server: SocketAddr) -> anyhow::Result<Session> {
        let session = ep
            .open_with(
                if self.tcp { Addr::Tcp(server) } else { Addr::Udp(server) },
                QUEUE,
                self.ask(),
                self.encrypt,
            )
            .await
            .context("MP OPEN_SESSION")?;
        anyhow::ensure!(session.encrypted == self.encrypt, "session encrypted: {}", session.encrypted);
        Ok(session)
    }

    /// Opens `warmup + samples` sessions one after another from one client endpoint to a
    /// fresh server, closing each before the next, and times the measured ones: send of
    /// `OPEN_SESSION` to the session handed over (REPLY, its ACK, and for an encrypted
    /// session the `KEY_EXCHANGE` request, its REPLY and the derived keys).
    pub async fn open_cost(&self, warmup: usize, samples: usize) -> anyhow::Result<OpenCost> {
        anyhow::ensure!(samples > 0, "need at least one open");
        let server = self.start_server().await?;
        let ep = dabs_net::spawn(loopback_any(), self.options(false)).await.context("bind MP client")?;
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        for i in 0..warmup + samples {
            let t0 = Instant::now();
            let session = self.open(&ep, server.addr()).await?;
            let ns = t0.elapsed().as_nanos() as u64;
            if i >= warmup {
                hist.record(ns.max(1))?;
            }
            session.close();
        }
        ep.shutdown().await;
        server.shutdown().await;
        let us = |ns: u64| ns as f64 / 1000.0;
        Ok(OpenCost {
            transport: self.name(),
            samples,
            p50_us: us(hist.value_at_quantile(0.5)),
            p99_us: us(hist.value_at_quantile(0.99)),
            mean_us: hist.mean() / 1000.0,
        })
    }
}

#[async_trait]
impl Transport for MpEcho {
    fn name(&self) -> String {
        if self.tcp {
            return "mp/tcp".into();
        }
        match (self.crc, self.encrypt) {
            (false, false) => "mp",
            (true, false) => "mp+crc",
            (false, true) => "mp+enc",
            (true, true) => "mp+crc+enc",
        }
        .into()
    }

    fn description(&self) -> String {
        format!(
            "MP over {} (dabs-net driver), CRC {}, one endpoint + one session per client, \
             system command ECHO answered by the server's endpoint core; REQUEST + REPLY + ACK \
             per round trip, 512-byte datagrams (512 B = 2 buffers, 4 KiB = 9 buffers each way); \
             default timers (ACK time-out 200 ms){}",
            if self.tcp { "TCP (2-byte length before each datagram, TCP_NODELAY)" } else { "UDP" },
            if self.crc { "on" } else { "off" },
            if self.encrypt {
                "; encrypted: Noise_NN_25519_ChaChaPoly_BLAKE2s key exchange at open (not in the \
                 measured round trips), ChaCha20-Poly1305 with an 8-byte nonce and 16-byte tag on \
                 every datagram (ACKs too)"
            } else {
                ""
            }
        )
    }

    async fn start_server(&self) -> anyhow::Result<ServerHandle> {
        let ep = dabs_net::spawn(loopback_any(), self.options(true)).await.context("bind MP echo server")?;
        let addr = ep.local_addrs().udp;
        let mut opens = ep.open_requests();
        // A round trip through the driver's command queue: the open sink above is in place
        // before any client can send OPEN_SESSION.
        ep.stats().await.context("MP server did not start")?;
        let task = tokio::spawn(async move {
            while let Some(open) = opens.recv().await {
                // Answer the security offer as a node does (the endpoint does the exchange).
                let offer = OpenAsk::parse(&open.payload).ok().and_then(|a| a.security);
                let spec = negotiate_security(offer.as_deref(), true).ok().flatten();
                let _ = open.accept(QUEUE, open_reply_secured(VA, addr, QUEUE, spec.as_ref())).await;
            }
        });
        let stopper = ep.clone();
        Ok(ServerHandle::new(addr).with_task(task).on_shutdown(move || {
            // The hook is synchronous; the driver stops when this command is handled (and in
            // any case once the last handle is dropped).
            tokio::spawn(async move { stopper.shutdown().await });
        }))
    }

    async fn connect(&self, server: SocketAddr) -> anyhow::Result<Box<dyn Client>> {
        let ep = dabs_net::spawn(loopback_any(), self.options(false)).await.context("bind MP client")?;
        let session = self.open(&ep, server).await?;
        Ok(Box::new(MpClient { ep, session }))
    }
}

struct MpClient {
    /// The client's own endpoint; dropping its last handle (here and in `session`) stops it.
    ep: EndpointHandle,
    session: Session,
}

#[async_trait]
impl Client for MpClient {
    async fn round_trip(&mut self, payload: &[u8], reply: &mut Vec<u8>) -> anyhow::Result<()> {
        *reply = self.session.call(SystemCommand::Echo.number(), payload.to_vec()).await?;
        Ok(())
    }

    async fn close(&mut self) {
        self.session.close();
        self.ep.shutdown().await;
    }
}
