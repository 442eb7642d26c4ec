//! The MP wire format (version 1), exactly as `shared/spec/mp-wire.md` defines it.
//!
//! This crate does no I/O and owns no clock: callers pass byte slices and clock readings in,
//! and get typed values or typed errors out. Every function here is safe to call on bytes that
//! came straight off the network: none of them panics.

mod codec;
mod codes;
mod reassembly;
mod split;
mod time;

pub use codec::{
    BufferHeader, Datagram, DecodeError, EncodeError, Header, Kind, RawHeader, crc8, decode, encode,
    encoded_len,
};
pub use codes::{NakCode, NakPayload, NakPayloadError, SystemCommand};
pub use reassembly::{Progress, Reassembly, ReassemblyError};
pub use split::{SplitError, Splitter, chunk_size, single_capacity};
pub use time::{HOUR_MS, Latency, SentTime, SentTimeError, latency};

/// Largest MP datagram (one UDP payload), in bytes.
pub const MAX_DATAGRAM: usize = 512;
/// Size of the basic header.
pub const HEADER_LEN: usize = 12;
/// Size of the buffer header present when `MULTI` is set.
pub const BUFFER_HEADER_LEN: usize = 4;
/// Size of the CRC-8 trailer present when the `CRC` bit is set.
pub const CRC_LEN: usize = 1;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Highest value the 5-bit version field can hold.
pub const MAX_VERSION: u8 = 31;
/// Largest number of buffers in one message.
pub const MAX_BUFFERS: usize = u16::MAX as usize;
