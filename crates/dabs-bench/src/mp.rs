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

use std::net::SocketAddr;

use anyhow::Context as _;
use ciborium::Value;
use dabs_net::{Addr, Config, DriverOptions, EndpointHandle, Session};
use dabs_wire::SystemCommand;

use crate::{Client, ServerHandle, Transport, async_trait, loopback_any};

/// The server portion's queue, and the client portions' queue.
const QUEUE: u16 = 1;
/// The virtual address the server hands out in its `OPEN_SESSION` REPLY.
const VA: &str = "mp://bench/echo/dasp/1";

/// MP echo transport (ECHO over one session per client).
#[derive(Debug, Clone)]
pub struct MpEcho {
    crc: bool,
}

impl MpEcho {
    /// `crc`: whether the datagrams each endpoint originates carry the CRC-8 byte
    /// (the session then uses CRCs both ways).
    pub fn new(crc: bool) -> Self {
        Self { crc }
    }

    fn options(&self) -> DriverOptions {
        DriverOptions { config: Config { crc: self.crc, ..Config::default() }, ..DriverOptions::default() }
    }
}

/// A CBOR map with text keys.
fn cbor_map(entries: Vec<(&str, Value)>) -> Vec<u8> {
    let map = Value::Map(entries.into_iter().map(|(k, v)| (Value::Text(k.into()), v)).collect());
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).expect("writing CBOR to a Vec cannot fail");
    out
}

#[async_trait]
impl Transport for MpEcho {
    fn name(&self) -> String {
        if self.crc { "mp+crc" } else { "mp" }.into()
    }

    fn description(&self) -> String {
        format!(
            "MP over UDP (dabs-net driver), CRC {}, one endpoint + one session per client, \
             system command ECHO answered by the server's endpoint core; REQUEST + REPLY + ACK \
             per round trip, 512-byte datagrams (512 B = 2 buffers, 4 KiB = 9 buffers each way); \
             default timers (ACK time-out 200 ms)",
            if self.crc { "on" } else { "off" }
        )
    }

    async fn start_server(&self) -> anyhow::Result<ServerHandle> {
        let ep = dabs_net::spawn(loopback_any(), self.options()).await.context("bind MP echo server")?;
        let addr = ep.local_addrs().udp;
        let mut opens = ep.open_requests();
        // A round trip through the driver's command queue: the open sink above is in place
        // before any client can send OPEN_SESSION.
        ep.stats().await.context("MP server did not start")?;
        let reply = cbor_map(vec![
            ("va", Value::Text(VA.into())),
            ("addr", Value::Text(addr.to_string())),
            ("queue", Value::Integer(QUEUE.into())),
            ("security", Value::Null),
        ]);
        let task = tokio::spawn(async move {
            while let Some(open) = opens.recv().await {
                let _ = open.accept(QUEUE, reply.clone()).await;
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
        let ep = dabs_net::spawn(loopback_any(), self.options()).await.context("bind MP client")?;
        let payload = cbor_map(vec![("app", Value::Text("bench".into()))]);
        let session = ep.open(Addr::Udp(server), QUEUE, payload).await.context("MP OPEN_SESSION")?;
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
