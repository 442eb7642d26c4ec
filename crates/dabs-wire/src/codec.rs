//! Decoding and encoding single datagrams.

use crate::time::{SentTime, SentTimeError};
use crate::{BUFFER_HEADER_LEN, CRC_LEN, HEADER_LEN, MAX_DATAGRAM, MAX_VERSION, VERSION};

const FLAG_MULTI: u8 = 0x80;
const FLAG_ACK: u8 = 0x40;
const FLAG_NAK: u8 = 0x20;
const VERSION_MASK: u8 = 0x1f;
const TIME_ENCRYPTED: u8 = 0x80;
const TIME_CRC: u8 = 0x40;
const MINUTES_MASK: u8 = 0x3f;

// Slice-by-16 tables: the default implementation measured ~3 ns/byte, this one far less
// (docs/benchmarks.md).
const CRC8: crc::Crc<u8, crc::Table<16>> = crc::Crc::<u8, crc::Table<16>>::new(&crc::CRC_8_SMBUS);

/// CRC-8/SMBUS over `bytes` (poly 0x07, init 0, no reflection, no final XOR).
pub fn crc8(bytes: &[u8]) -> u8 {
    CRC8.checksum(bytes)
}

/// What a datagram is: a request, or an answer to one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A new message (neither ACK nor NAK set).
    Request,
    /// Acknowledges a request or a reply.
    Ack,
    /// Refuses a message, with an error number in the payload.
    Nak,
    /// The answer to a request (ACK and NAK both set).
    Reply,
}

impl Kind {
    fn from_flags(flags: u8) -> Self {
        match (flags & FLAG_ACK != 0, flags & FLAG_NAK != 0) {
            (false, false) => Kind::Request,
            (true, false) => Kind::Ack,
            (false, true) => Kind::Nak,
            (true, true) => Kind::Reply,
        }
    }

    fn flags(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Ack => FLAG_ACK,
            Kind::Nak => FLAG_NAK,
            Kind::Reply => FLAG_ACK | FLAG_NAK,
        }
    }

    /// The lower-case name used in tooling output (`request`, `ack`, `nak`, `reply`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Ack => "ack",
            Kind::Nak => "nak",
            Kind::Reply => "reply",
        }
    }

    /// Parses a name produced by [`Kind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "request" => Kind::Request,
            "ack" => Kind::Ack,
            "nak" => Kind::Nak,
            "reply" => Kind::Reply,
            _ => return None,
        })
    }
}

/// The 12-byte basic header, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Request, ACK, NAK or REPLY.
    pub kind: Kind,
    /// Protocol version (5 bits).
    pub version: u8,
    /// System command (0..255) or application command (256..).
    pub command: u16,
    /// Session number; 0 before a session exists.
    pub session: u8,
    /// Transaction number within the session.
    pub transaction: u8,
    /// Sender's clock when the message was first sent.
    pub sent: SentTime,
    /// The payload is authenticated ciphertext.
    pub encrypted: bool,
    /// A CRC-8 byte ends the datagram.
    pub crc: bool,
    /// Receiving portion's queue inside the receiving endpoint.
    pub dst: u16,
    /// Sending portion's queue, for replies.
    pub src: u16,
}

impl Header {
    /// A version-1 header of the given kind with everything else zero.
    pub fn new(kind: Kind, command: u16) -> Self {
        Self {
            kind,
            version: VERSION,
            command,
            session: 0,
            transaction: 0,
            sent: SentTime::default(),
            encrypted: false,
            crc: false,
            dst: 0,
            src: 0,
        }
    }
}

/// Position of one buffer within a multi-buffer message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferHeader {
    /// 0-based buffer number.
    pub index: u16,
    /// Number of buffers in the message (2..65535).
    pub total: u16,
}

/// A decoded datagram borrowing its payload from the received bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The basic header.
    pub header: Header,
    /// Present exactly when `MULTI` was set.
    pub buffer: Option<BufferHeader>,
    /// Payload: after the headers, before the CRC byte.
    pub payload: &'a [u8],
}

/// The header fields read without any validation, so that a datagram that does not decode
/// can still be answered with a NAK carrying its command, session and transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawHeader {
    /// The version bits as received.
    pub version: u8,
    /// Request, ACK, NAK or REPLY, from the flag bits.
    pub kind: Kind,
    /// Command as received.
    pub command: u16,
    /// Session as received.
    pub session: u8,
    /// Transaction as received.
    pub transaction: u8,
    /// Destination queue as received.
    pub dst: u16,
    /// Source queue as received.
    pub src: u16,
}

impl RawHeader {
    /// Reads the header fields of anything at least 12 bytes long.
    pub fn peek(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            version: h[0] & VERSION_MASK,
            kind: Kind::from_flags(h[0]),
            command: u16::from_be_bytes([h[1], h[2]]),
            session: h[3],
            transaction: h[4],
            dst: u16::from_be_bytes([h[8], h[9]]),
            src: u16::from_be_bytes([h[10], h[11]]),
        })
    }
}

/// Why a datagram could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the basic header.
    #[error("datagram is {len} bytes, shorter than the 12-byte header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// More bytes than an MP datagram may hold.
    #[error("datagram is {len} bytes, longer than the 512-byte maximum")]
    TooLong {
        /// Bytes received.
        len: usize,
    },
    /// A version this implementation does not speak.
    #[error("unsupported protocol version {version} (this endpoint speaks version 1)")]
    UnsupportedVersion {
        /// The version bits received.
        version: u8,
    },
    /// `MULTI` is set but the datagram ends before the buffer header does.
    #[error("MULTI flag set but datagram is {len} bytes, too short for the 4-byte buffer header")]
    MissingBufferHeader {
        /// Bytes received.
        len: usize,
    },
    /// The buffer number is not below the total.
    #[error("buffer number {index} is not below the total of {total} buffers")]
    BufferOutOfRange {
        /// Buffer number received.
        index: u16,
        /// Total received.
        total: u16,
    },
    /// A multi-buffer message must have at least two buffers.
    #[error("buffer total is {total}, a multi-buffer message needs at least 2")]
    TooFewBuffers {
        /// Total received.
        total: u16,
    },
    /// The `CRC` bit is set but no byte is left for it after the headers.
    #[error("CRC flag set but datagram is {len} bytes, leaving no room for the CRC byte")]
    MissingCrc {
        /// Bytes received.
        len: usize,
    },
    /// The CRC byte does not match the bytes before it.
    #[error("CRC mismatch: datagram carries {carried:#04x}, its bytes give {computed:#04x}")]
    CrcMismatch {
        /// The CRC computed over the received bytes.
        computed: u8,
        /// The CRC byte received.
        carried: u8,
    },
    /// A sent-time field out of range.
    #[error("malformed sent time: {0}")]
    BadSentTime(#[from] SentTimeError),
}

impl DecodeError {
    /// The NAK error number a receiver answers this error with.
    pub fn nak_code(&self) -> crate::NakCode {
        match self {
            DecodeError::CrcMismatch { .. } => crate::NakCode::CrcMismatch,
            DecodeError::UnsupportedVersion { .. } => crate::NakCode::UnsupportedVersion,
            _ => crate::NakCode::Malformed,
        }
    }
}

/// Decodes one datagram without copying its payload.
///
/// Checks run in an order that lets a receiver answer usefully: sizes first, then the CRC
/// (so corruption anywhere, even in the version bits or the buffer header, is reported as
/// corruption), then the version, then the layout and field values.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    let len = bytes.len();
    if len > MAX_DATAGRAM {
        return Err(DecodeError::TooLong { len });
    }
    let Some(raw) = RawHeader::peek(bytes) else {
        return Err(DecodeError::TooShort { len });
    };
    // The CRC is checked before anything it protects is believed, the version included:
    // a corrupted version byte must read as corruption (NAK 2), not as another version.
    let crc = bytes[5] & TIME_CRC != 0;
    if crc && len > HEADER_LEN {
        let computed = crc8(&bytes[..len - CRC_LEN]);
        let carried = bytes[len - CRC_LEN];
        if computed != carried {
            return Err(DecodeError::CrcMismatch { computed, carried });
        }
    }
    if raw.version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version: raw.version });
    }
    let multi = bytes[0] & FLAG_MULTI != 0;
    let headers = HEADER_LEN + if multi { BUFFER_HEADER_LEN } else { 0 };
    if len < headers {
        return Err(DecodeError::MissingBufferHeader { len });
    }
    if crc && len < headers + CRC_LEN {
        return Err(DecodeError::MissingCrc { len });
    }
    let end = if crc { len - CRC_LEN } else { len };
    let buffer = if multi {
        let index = u16::from_be_bytes([bytes[12], bytes[13]]);
        let total = u16::from_be_bytes([bytes[14], bytes[15]]);
        if total < 2 {
            return Err(DecodeError::TooFewBuffers { total });
        }
        if index >= total {
            return Err(DecodeError::BufferOutOfRange { index, total });
        }
        Some(BufferHeader { index, total })
    } else {
        None
    };
    let sent = SentTime::new(
        bytes[5] & MINUTES_MASK,
        bytes[6] >> 2,
        (u16::from(bytes[6] & 0x03) << 8) | u16::from(bytes[7]),
    )?;
    Ok(Datagram {
        header: Header {
            kind: raw.kind,
            version: raw.version,
            command: raw.command,
            session: raw.session,
            transaction: raw.transaction,
            sent,
            encrypted: bytes[5] & TIME_ENCRYPTED != 0,
            crc,
            dst: raw.dst,
            src: raw.src,
        },
        buffer,
        payload: &bytes[headers..end],
    })
}

/// Why a datagram could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The version does not fit the 5-bit field.
    #[error("version {0} does not fit the 5-bit version field (0..31)")]
    VersionOutOfRange(u8),
    /// The encoded datagram would exceed 512 bytes.
    #[error("datagram would be {len} bytes, over the 512-byte maximum")]
    TooLong {
        /// The size it would have had.
        len: usize,
    },
    /// The caller's buffer is too small.
    #[error("output buffer holds {available} bytes, datagram needs {needed}")]
    OutputTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The buffer number is not below the total.
    #[error("buffer number {index} is not below the total of {total} buffers")]
    BufferOutOfRange {
        /// Buffer number given.
        index: u16,
        /// Total given.
        total: u16,
    },
    /// A multi-buffer message must have at least two buffers.
    #[error("buffer total is {total}, a multi-buffer message needs at least 2")]
    TooFewBuffers {
        /// Total given.
        total: u16,
    },
}

/// Size of the datagram that [`encode`] would write.
pub fn encoded_len(header: &Header, buffer: Option<BufferHeader>, payload_len: usize) -> usize {
    HEADER_LEN
        + if buffer.is_some() { BUFFER_HEADER_LEN } else { 0 }
        + payload_len
        + if header.crc { CRC_LEN } else { 0 }
}

/// Encodes one datagram into `out`, returning the number of bytes written.
///
/// The CRC byte is computed and appended when `header.crc` is set.
pub fn encode(
    header: &Header,
    buffer: Option<BufferHeader>,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    if header.version > MAX_VERSION {
        return Err(EncodeError::VersionOutOfRange(header.version));
    }
    if let Some(BufferHeader { index, total }) = buffer {
        if total < 2 {
            return Err(EncodeError::TooFewBuffers { total });
        }
        if index >= total {
            return Err(EncodeError::BufferOutOfRange { index, total });
        }
    }
    let len = encoded_len(header, buffer, payload.len());
    if len > MAX_DATAGRAM {
        return Err(EncodeError::TooLong { len });
    }
    let available = out.len();
    let Some(out) = out.get_mut(..len) else {
        return Err(EncodeError::OutputTooSmall { needed: len, available });
    };
    let multi = if buffer.is_some() { FLAG_MULTI } else { 0 };
    out[0] = multi | header.kind.flags() | header.version;
    out[1..3].copy_from_slice(&header.command.to_be_bytes());
    out[3] = header.session;
    out[4] = header.transaction;
    let t = header.sent;
    out[5] = if header.encrypted { TIME_ENCRYPTED } else { 0 }
        | if header.crc { TIME_CRC } else { 0 }
        | t.minutes();
    out[6] = (t.seconds() << 2) | (t.millis() >> 8) as u8;
    out[7] = t.millis() as u8;
    out[8..10].copy_from_slice(&header.dst.to_be_bytes());
    out[10..12].copy_from_slice(&header.src.to_be_bytes());
    let mut at = HEADER_LEN;
    if let Some(b) = buffer {
        out[12..14].copy_from_slice(&b.index.to_be_bytes());
        out[14..16].copy_from_slice(&b.total.to_be_bytes());
        at += BUFFER_HEADER_LEN;
    }
    out[at..at + payload.len()].copy_from_slice(payload);
    if header.crc {
        out[len - CRC_LEN] = crc8(&out[..len - CRC_LEN]);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: Kind::Reply,
            version: 1,
            command: 0x0109,
            session: 7,
            transaction: 42,
            sent: SentTime::new(59, 58, 999).unwrap(),
            encrypted: true,
            crc: true,
            dst: 0xbeef,
            src: 3,
        }
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc8(b"123456789"), 0xF4);
    }

    #[test]
    fn known_bytes() {
        let mut out = [0u8; 64];
        let n = encode(&sample(), None, b"hi", &mut out).unwrap();
        // flags: ACK|NAK|v1 = 0x61; time: ENC|CRC|59 = 0xfb; 58<<2|3 = 0xeb; 999&0xff = 0xe7
        let body = [0x61, 0x01, 0x09, 7, 42, 0xfb, 0xeb, 0xe7, 0xbe, 0xef, 0x00, 0x03, b'h', b'i'];
        assert_eq!(&out[..n - 1], &body);
        assert_eq!(out[n - 1], crc8(&body));
        let d = decode(&out[..n]).unwrap();
        assert_eq!(d.header, sample());
        assert_eq!(d.payload, b"hi");
        assert_eq!(d.buffer, None);
    }

    #[test]
    fn multi_round_trip() {
        let mut out = [0u8; 512];
        let b = Some(BufferHeader { index: 1, total: 3 });
        let n = encode(&sample(), b, &[9; 495], &mut out).unwrap();
        assert_eq!(n, 512);
        let d = decode(&out[..n]).unwrap();
        assert_eq!(d.buffer, b);
        assert_eq!(d.payload.len(), 495);
    }

    #[test]
    fn malformed_datagrams_name_the_problem() {
        let mut ok = [0u8; 20];
        let mut h = sample();
        h.crc = false;
        encode(&h, None, &[1; 8], &mut ok).unwrap();

        assert!(matches!(decode(&ok[..11]), Err(DecodeError::TooShort { len: 11 })));
        assert!(matches!(decode(&[0x01; 513]), Err(DecodeError::TooLong { len: 513 })));

        let mut v7 = ok;
        v7[0] = (v7[0] & !0x1f) | 7;
        assert!(matches!(decode(&v7), Err(DecodeError::UnsupportedVersion { version: 7 })));

        let mut multi = ok;
        multi[0] |= 0x80;
        assert!(matches!(decode(&multi[..14]), Err(DecodeError::MissingBufferHeader { len: 14 })));
        multi[12..16].copy_from_slice(&[0, 3, 0, 3]);
        assert!(matches!(decode(&multi), Err(DecodeError::BufferOutOfRange { index: 3, total: 3 })));
        multi[12..16].copy_from_slice(&[0, 0, 0, 1]);
        assert!(matches!(decode(&multi), Err(DecodeError::TooFewBuffers { total: 1 })));

        let mut crc = ok;
        crc[5] |= 0x40;
        assert!(matches!(decode(&crc[..12]), Err(DecodeError::MissingCrc { len: 12 })));
        let e = decode(&crc).unwrap_err();
        assert!(matches!(e, DecodeError::CrcMismatch { .. }));
        assert_eq!(e.nak_code(), crate::NakCode::CrcMismatch);

        let mut bad_time = ok;
        bad_time[5] = 60;
        assert!(matches!(decode(&bad_time), Err(DecodeError::BadSentTime(_))));
        let msg = decode(&bad_time).unwrap_err().to_string();
        assert!(msg.contains("minutes"), "{msg}");
    }

    #[test]
    fn encode_refuses_what_decode_would() {
        let mut out = [0u8; 600];
        let h = sample();
        assert_eq!(encode(&h, None, &[0; 500], &mut out), Err(EncodeError::TooLong { len: 513 }));
        assert_eq!(
            encode(&h, Some(BufferHeader { index: 2, total: 2 }), &[], &mut out),
            Err(EncodeError::BufferOutOfRange { index: 2, total: 2 })
        );
        assert_eq!(
            encode(&h, None, &[0; 10], &mut out[..5]),
            Err(EncodeError::OutputTooSmall { needed: 23, available: 5 })
        );
    }
}
