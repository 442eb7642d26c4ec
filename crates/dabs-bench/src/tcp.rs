//! tokio TCP with `TCP_NODELAY` and u32 big-endian length-prefixed frames.
//!
//! Each request is one frame `[len: u32 BE][payload]`, written with a single
//! `write_all` so that with Nagle off it leaves as one segment; the server
//! echoes the frame the same way. One connection per client.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{Client, MAX_PAYLOAD, ServerHandle, Transport, async_trait, loopback_any};

/// tokio TCP echo transport.
#[derive(Debug, Default, Clone)]
pub struct TcpFramed {
    _private: (),
}

impl TcpFramed {
    /// The framed TCP echo transport.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Transport for TcpFramed {
    fn name(&self) -> String {
        "tcp".into()
    }

    fn description(&self) -> String {
        "tokio TCP, nodelay, one connection per client, u32 BE length-prefixed frames".into()
    }

    async fn start_server(&self) -> anyhow::Result<ServerHandle> {
        let listener = TcpListener::bind(loopback_any()).await.context("bind TCP echo server")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        conns.spawn(async move {
                            let (mut rd, mut wr) = stream.into_split();
                            let (mut buf, mut out) = (Vec::new(), Vec::new());
                            while read_frame(&mut rd, &mut buf).await.is_ok() {
                                if write_frame(&mut wr, &buf, &mut out).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(ServerHandle::new(addr).with_task(task))
    }

    async fn connect(&self, server: SocketAddr) -> anyhow::Result<Box<dyn Client>> {
        let stream = TcpStream::connect(server).await.context("connect TCP client")?;
        stream.set_nodelay(true)?;
        Ok(Box::new(TcpClient { stream, out: Vec::new() }))
    }
}

struct TcpClient {
    stream: TcpStream,
    out: Vec<u8>,
}

#[async_trait]
impl Client for TcpClient {
    async fn round_trip(&mut self, payload: &[u8], reply: &mut Vec<u8>) -> anyhow::Result<()> {
        write_frame(&mut self.stream, payload, &mut self.out).await?;
        read_frame(&mut self.stream, reply).await?;
        Ok(())
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Read one `[len: u32 BE][payload]` frame into `buf` (cleared first).
pub async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let len = rd.read_u32().await? as usize;
    anyhow::ensure!(len <= MAX_PAYLOAD, "frame of {len} bytes exceeds {MAX_PAYLOAD}");
    buf.clear();
    buf.resize(len, 0);
    rd.read_exact(buf).await?;
    Ok(())
}

/// Write one `[len: u32 BE][payload]` frame with a single `write_all`,
/// assembling it in `scratch`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut W,
    payload: &[u8],
    scratch: &mut Vec<u8>,
) -> anyhow::Result<()> {
    anyhow::ensure!(payload.len() <= MAX_PAYLOAD, "payload of {} bytes exceeds {MAX_PAYLOAD}", payload.len());
    scratch.clear();
    scratch.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    scratch.extend_from_slice(payload);
    wr.write_all(scratch).await?;
    Ok(())
}
