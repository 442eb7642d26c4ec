//! quinn (QUIC) echo, TLS 1.3 with a self-signed certificate made by rcgen
//! at start-up, rustls with the *ring* provider, ALPN `bench`.
//!
//! One QUIC connection (and one client endpoint, i.e. one UDP socket) per
//! client. Two usages, see [`QuicMode`]:
//!
//! * [`QuicMode::StreamPerRequest`] — the idiomatic QUIC request/response
//!   pattern (what HTTP/3 does): each round trip opens a new bidirectional
//!   stream, writes the payload, finishes the stream, and reads the echo to
//!   the end of the stream. This is the default "quic" row.
//! * [`QuicMode::FramedStream`] — one long-lived bidirectional stream per
//!   connection carrying u32 BE length-prefixed frames, exactly like the TCP
//!   transport: the like-for-like comparison with TCP.
//!
//! Transport parameters are quinn's defaults in both modes.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinSet;

use crate::tcp::{read_frame, write_frame};
use crate::{Client, MAX_PAYLOAD, ServerHandle, Transport, async_trait, loopback_any};

/// ALPN protocol identifier negotiated by client and server.
pub const ALPN: &[u8] = b"bench";
/// Name in the self-signed certificate, and the SNI the client sends.
const SERVER_NAME: &str = "localhost";

/// How requests map onto QUIC streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicMode {
    /// A new bidirectional stream per request; the end of the stream ends the message.
    StreamPerRequest,
    /// One bidirectional stream per connection, u32 BE length-prefixed frames.
    FramedStream,
}

/// quinn echo transport.
pub struct Quic {
    mode: QuicMode,
    server_config: quinn::ServerConfig,
    client_config: quinn::ClientConfig,
}

impl Quic {
    /// Generate a fresh self-signed certificate and the matching client and
    /// server configurations.
    pub fn new(mode: QuicMode) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .context("generate self-signed certificate")?;
        let cert_der: CertificateDer<'static> = certified.cert.der().clone();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der)?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        let server_config =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der)?;
        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        let client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));

        Ok(Self { mode, server_config, client_config })
    }
}

#[async_trait]
impl Transport for Quic {
    fn name(&self) -> String {
        match self.mode {
            QuicMode::StreamPerRequest => "quic".into(),
            QuicMode::FramedStream => "quic 1-stream".into(),
        }
    }

    fn description(&self) -> String {
        match self.mode {
            QuicMode::StreamPerRequest => {
                "quinn, one connection per client, one new bidirectional stream per request \
                 (write + finish, read to end) — idiomatic QUIC request/response"
            }
            QuicMode::FramedStream => {
                "quinn, one connection per client, one long-lived bidirectional stream with \
                 u32 BE length-prefixed frames — like-for-like with tcp"
            }
        }
        .into()
    }

    async fn start_server(&self) -> anyhow::Result<ServerHandle> {
        let endpoint = quinn::Endpoint::server(self.server_config.clone(), loopback_any())
            .context("bind QUIC echo server")?;
        let addr = endpoint.local_addr()?;
        let mode = self.mode;
        let accept_endpoint = endpoint.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Some(incoming) = accept_endpoint.accept().await {
                conns.spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    serve_connection(conn, mode).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(ServerHandle::new(addr)
            .with_task(task)
            .on_shutdown(move || endpoint.close(0u32.into(), b"shutdown")))
    }

    async fn connect(&self, server: SocketAddr) -> anyhow::Result<Box<dyn Client>> {
        let endpoint = quinn::Endpoint::client(loopback_any()).context("bind QUIC client")?;
        let conn = endpoint
            .connect_with(self.client_config.clone(), server, SERVER_NAME)?
            .await
            .context("QUIC handshake")?;
        let stream = match self.mode {
            QuicMode::StreamPerRequest => None,
            QuicMode::FramedStream => Some(conn.open_bi().await.context("open QUIC stream")?),
        };
        Ok(Box::new(QuicClient { _endpoint: endpoint, conn, stream, out: Vec::new() }))
    }
}

/// Echo every bidirectional stream the peer opens, until the connection ends.
async fn serve_connection(conn: quinn::Connection, mode: QuicMode) {
    let mut streams = JoinSet::new();
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        streams.spawn(async move {
            match mode {
                QuicMode::StreamPerRequest => {
                    let Ok(data) = recv.read_to_end(MAX_PAYLOAD).await else {
                        return;
                    };
                    if send.write_all(&data).await.is_ok() {
                        let _ = send.finish();
                    }
                }
                QuicMode::FramedStream => {
                    let (mut buf, mut out) = (Vec::new(), Vec::new());
                    while read_frame(&mut recv, &mut buf).await.is_ok() {
                        if write_frame(&mut send, &buf, &mut out).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        while streams.try_join_next().is_some() {}
    }
}

struct QuicClient {
    /// Kept so the client's UDP socket lives as long as the connection.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    /// The long-lived stream in [`QuicMode::FramedStream`].
    stream: Option<(quinn::SendStream, quinn::RecvStream)>,
    out: Vec<u8>,
}

#[async_trait]
impl Client for QuicClient {
    async fn round_trip(&mut self, payload: &[u8], reply: &mut Vec<u8>) -> anyhow::Result<()> {
        match &mut self.stream {
            None => {
                let (mut send, mut recv) = self.conn.open_bi().await?;
                send.write_all(payload).await?;
                send.finish()?;
                let data = recv.read_to_end(MAX_PAYLOAD).await?;
                reply.clear();
                reply.extend_from_slice(&data);
            }
            Some((send, recv)) => {
                write_frame(send, payload, &mut self.out).await?;
                read_frame(recv, reply).await?;
            }
        }
        Ok(())
    }

    async fn close(&mut self) {
        if let Some((send, _)) = &mut self.stream {
            let _ = send.finish();
        }
        self.conn.close(0u32.into(), b"done");
    }
}
