//! Raw UDP echo: the ceiling every other transport is compared with.
//!
//! The server echoes each datagram back to its sender. A client owns one
//! connected UDP socket, sends one datagram per request and waits for one
//! datagram back. There is no retransmission: a lost datagram shows up as a
//! runner timeout (counted as an error), after which the runner opens a fresh
//! socket so a late echo cannot be taken for the next one.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use crate::{Client, MAX_PAYLOAD, ServerHandle, Transport, async_trait, loopback_any, udp_socket};

/// Raw UDP echo transport.
#[derive(Debug, Clone)]
pub struct UdpEcho {
    server_loops: usize,
}

impl Default for UdpEcho {
    fn default() -> Self {
        Self { server_loops: 1 }
    }
}

impl UdpEcho {
    /// The classic echo server: one receive/send loop on one socket.
    pub fn new() -> Self {
        Self::default()
    }

    /// `loops` receive/send loops sharing the one server socket. On a 2-core
    /// machine more than one measured no better (and worse for one client,
    /// from extra wake-ups), hence the default of 1.
    pub fn with_server_loops(loops: usize) -> Self {
        Self { server_loops: loops.max(1) }
    }
}

#[async_trait]
impl Transport for UdpEcho {
    fn name(&self) -> String {
        "udp".into()
    }

    fn description(&self) -> String {
        "raw UDP echo, one datagram each way per round trip, no reliability (the ceiling)".into()
    }

    async fn start_server(&self) -> anyhow::Result<ServerHandle> {
        let socket = Arc::new(udp_socket(loopback_any()).context("bind UDP echo server")?);
        let addr = socket.local_addr()?;
        let mut handle = ServerHandle::new(addr);
        for _ in 0..self.server_loops {
            let socket = socket.clone();
            handle = handle.with_task(tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_PAYLOAD];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let _ = socket.send_to(&buf[..n], peer).await;
                }
            }));
        }
        Ok(handle)
    }

    async fn connect(&self, server: SocketAddr) -> anyhow::Result<Box<dyn Client>> {
        let socket = udp_socket(loopback_any()).context("bind UDP client")?;
        socket.connect(server).await.context("connect UDP client")?;
        Ok(Box::new(UdpClient { socket, buf: vec![0u8; MAX_PAYLOAD] }))
    }
}

struct UdpClient {
    socket: tokio::net::UdpSocket,
    buf: Vec<u8>,
}

#[async_trait]
impl Client for UdpClient {
    async fn round_trip(&mut self, payload: &[u8], reply: &mut Vec<u8>) -> anyhow::Result<()> {
        anyhow::ensure!(payload.len() <= MAX_PAYLOAD, "payload too large for one datagram");
        let sent = self.socket.send(payload).await?;
        anyhow::ensure!(sent == payload.len(), "short UDP send: {sent} of {}", payload.len());
        let n = self.socket.recv(&mut self.buf).await?;
        reply.clear();
        reply.extend_from_slice(&self.buf[..n]);
        Ok(())
    }
}
