//! MP over a WebSocket: each MP datagram one binary message, at a node's operator port on the
//! path [`PATH`]. The client side connects from the endpoint's own port number (as over TCP);
//! the server side is a connection the operator interface upgraded and hands over.

use super::{MAX_FRAME, StreamIn};
use dabs_proto::Addr;
use futures_util::{SinkExt, StreamExt};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// The path of the MP WebSocket on a node's operator port.
pub const PATH: &str = "/mp";

/// Limits for MP's messages: a frame beyond [`MAX_FRAME`] is not MP, so the library refuses
/// it before buffering it.
pub(crate) fn config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(MAX_FRAME)).max_frame_size(Some(MAX_FRAME))
}

/// Connects to `ws://to/mp` from `local`'s port number (another if that cannot be had).
pub(crate) async fn connect(local: SocketAddr, to: SocketAddr) -> io::Result<WebSocketStream<TcpStream>> {
    let stream = super::tcp::connect(local, to).await?;
    super::tcp::tune(&stream);
    let url = format!("ws://{to}{PATH}");
    let (socket, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(|e| io::Error::other(format!("WebSocket handshake with {to} failed: {e}")))?;
    Ok(socket)
}

/// Runs one WebSocket: binary messages read become [`StreamIn::Frame`]s, datagrams queued in
/// `rx` are written one message each; when either side ends (or the driver is gone) it reports
/// [`StreamIn::Closed`]. A text message, an empty one or one over [`MAX_FRAME`] ends it; with
/// `idle`, so does a time that long without an MP datagram.
pub(crate) async fn serve<S>(
    socket: WebSocketStream<S>,
    peer: Addr,
    id: u64,
    idle: Option<Duration>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    tx: mpsc::UnboundedSender<StreamIn>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut writer, mut reader) = socket.split();
    let read = async {
        // Idle counts from the last MP datagram: pings alone do not keep a connection.
        let mut idle_at = idle.map(|d| tokio::time::Instant::now() + d);
        loop {
            let left = idle_at.map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
            let message = match super::within(left, reader.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    if !matches!(e, tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)
                    {
                        tracing::debug!(%peer, error = %e, "MP over WebSocket: connection closed");
                    }
                    return;
                }
                Ok(None) | Err(_) => return,
            };
            match message {
                Message::Binary(data) if !data.is_empty() && data.len() <= MAX_FRAME => {
                    idle_at = idle.map(|d| tokio::time::Instant::now() + d);
                    if tx.send(StreamIn::Frame(peer.clone(), data.to_vec())).is_err() {
                        return;
                    }
                }
                // Answered by the library on the next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => return,
                other => {
                    tracing::debug!(%peer, kind = ?kind(&other), "MP over WebSocket: not an MP datagram, closed");
                    return;
                }
            }
        }
    };
    let write = async {
        while let Some(first) = rx.recv().await {
            if writer.feed(Message::binary(first)).await.is_err() {
                return;
            }
            // Whatever else is queued goes in the same flush.
            let mut queued = 0;
            while queued < 64
                && let Ok(more) = rx.try_recv()
            {
                if writer.feed(Message::binary(more)).await.is_err() {
                    return;
                }
                queued += 1;
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.close().await;
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
        _ = tx.closed() => {}
    }
    let _ = tx.send(StreamIn::Closed(peer, id));
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(b) if b.is_empty() => "empty binary",
        Message::Binary(_) => "oversized binary",
        _ => "control",
    }
}
