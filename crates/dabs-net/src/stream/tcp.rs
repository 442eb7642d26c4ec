//! MP over TCP: each MP datagram on the connection preceded by its length as a big-endian
//! u16. Connections leave from the endpoint's own UDP port number where they can.

use super::{MAX_FRAME, StreamIn, WRITE_BATCH};
use dabs_proto::Addr;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// A TCP socket bound to `local` with `SO_REUSEADDR`: shareable by this endpoint's own
/// connections, and a listener's port taken again while old connections are still closing.
pub(crate) fn reserve_port(local: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(local), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// A TCP listener at `addr` (the endpoint's UDP address: the same port number).
pub(crate) fn listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = reserve_port(addr)?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `to` from `local`'s port (any port if that cannot be bound: a listener on it,
/// or the last connection to `to` from it still closing).
pub(crate) async fn connect(local: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = if to.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    let from = match (local.ip(), to.ip()) {
        (l, t) if l.is_ipv4() == t.is_ipv4() => SocketAddr::new(l, local.port()),
        (_, t) if t.is_ipv4() => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), local.port()),
        _ => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), local.port()),
    };
    if let Err(e) = socket.bind(from) {
        tracing::debug!(%to, error = %e, "MP over TCP: not from the endpoint's own port");
        return TcpStream::connect(to).await;
    }
    // Only a port that cannot be used falls back; a connection refused or cut while it was
    // being made fails, and the next datagram tries again from the same port.
    match socket.connect(to).await {
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            tracing::debug!(%to, error = %e, "MP over TCP: the last connection from this port is still closing");
            TcpStream::connect(to).await
        }
        r => r,
    }
}

/// Runs one connection: frames read become [`StreamIn::Frame`]s, datagrams queued in `rx`
/// are written; when either side ends (or the driver is gone) it reports
/// [`StreamIn::Closed`]. With `idle`, a connection that brings no frame that long is closed.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: Addr,
    id: u64,
    idle: Option<Duration>,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    tx: mpsc::UnboundedSender<StreamIn>,
) {
    tune(&stream);
    let (mut reader, mut writer) = stream.into_split();
    let read = async {
        loop {
            match super::within(idle, read_frame(&mut reader)).await {
                Ok(Ok(frame)) => {
                    if tx.send(StreamIn::Frame(peer.clone(), frame)).is_err() {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(%peer, error = %e, "MP over TCP: connection closed");
                    }
                    return;
                }
                Err(_) => return,
            }
        }
    };
    let write = async {
        let mut buf = Vec::with_capacity(WRITE_BATCH);
        while let Some(first) = rx.recv().await {
            push_frame(&mut buf, &first);
            while buf.len() < WRITE_BATCH
                && let Ok(more) = rx.try_recv()
            {
                push_frame(&mut buf, &more);
            }
            if writer.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
        let _ = writer.shutdown().await;
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
        _ = tx.closed() => {}
    }
    let _ = tx.send(StreamIn::Closed(peer, id));
}

/// No Nagle delay, and a dead peer noticed within about a minute even when nothing is sent
/// (keepalive) and when sent data goes unacknowledged (`TCP_USER_TIMEOUT`): the connection
/// then ends, and the protocol's retransmission goes out on a new one.
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&keepalive);
    #[cfg(target_os = "linux")]
    let _ = sock.set_tcp_user_timeout(Some(std::time::Duration::from_secs(30)));
}

/// Appends one frame: the datagram's length (big-endian u16), then the datagram.
fn push_frame(buf: &mut Vec<u8>, datagram: &[u8]) {
    let len = u16::try_from(datagram.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&datagram[..usize::from(len)]);
}

/// Reads one frame; a length of 0 or over [`MAX_FRAME`] is an error (the stream is not MP).
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    reader.read_exact(&mut len).await?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes: MP datagrams are 1..={MAX_FRAME} bytes here"),
        ));
    }
    let mut frame = vec![0u8; len];
    reader.read_exact(&mut frame).await?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_bad_length_is_refused() {
        let mut buf = Vec::new();
        push_frame(&mut buf, b"abc");
        push_frame(&mut buf, &[7u8; 512]);
        assert_eq!(&buf[..5], &[0, 3, b'a', b'b', b'c']);
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).await.expect("first"), b"abc");
        assert_eq!(read_frame(&mut r).await.expect("second"), vec![7u8; 512]);
        assert_eq!(read_frame(&mut r).await.expect_err("end").kind(), io::ErrorKind::UnexpectedEof);
        let mut zero: &[u8] = &[0, 0];
        assert_eq!(read_frame(&mut zero).await.expect_err("zero").kind(), io::ErrorKind::InvalidData);
        let mut long: &[u8] = &[0x10, 0x00];
        let e = read_frame(&mut long).await.expect_err("long");
        assert!(e.to_string().contains("4096 bytes"), "{e}");
    }
}
