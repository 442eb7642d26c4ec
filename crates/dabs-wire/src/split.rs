//! Splitting a message into buffers.

use crate::codec::BufferHeader;
use crate::{BUFFER_HEADER_LEN, CRC_LEN, HEADER_LEN, MAX_BUFFERS, MAX_DATAGRAM};

/// Payload bytes that fit a single-buffer datagram, given the CRC choice and any per-datagram
/// overhead a layer above adds inside the payload (encryption).
pub fn single_capacity(crc: bool, overhead: usize) -> usize {
    (MAX_DATAGRAM - HEADER_LEN - if crc { CRC_LEN } else { 0 }).saturating_sub(overhead)
}

/// Payload bytes in every full buffer of a multi-buffer message.
pub fn chunk_size(crc: bool, overhead: usize) -> usize {
    single_capacity(crc, overhead).saturating_sub(BUFFER_HEADER_LEN)
}

/// A message too large for MP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message of {len} bytes exceeds the largest MP message of {max} bytes")]
pub struct SplitError {
    /// Message size.
    pub len: usize,
    /// Largest size with these settings.
    pub max: usize,
}

/// Cuts a message into the buffers that carry it: one datagram if it fits, else full
/// buffers of [`chunk_size`] bytes and a shorter last one.
#[derive(Clone, Debug)]
pub struct Splitter<'a> {
    message: &'a [u8],
    chunk: usize,
    total: usize,
    next: usize,
}

impl<'a> Splitter<'a> {
    /// Plans the buffers for `message`.
    pub fn new(message: &'a [u8], crc: bool, overhead: usize) -> Result<Self, SplitError> {
        let chunk = chunk_size(crc, overhead);
        let max = chunk * MAX_BUFFERS;
        if message.len() <= single_capacity(crc, overhead) {
            return Ok(Self { message, chunk, total: 1, next: 0 });
        }
        if chunk == 0 || message.len() > max {
            return Err(SplitError { len: message.len(), max });
        }
        Ok(Self { message, chunk, total: message.len().div_ceil(chunk), next: 0 })
    }

    /// Number of datagrams the message takes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The buffer header and payload of buffer `index` (header `None` for a single buffer).
    /// Returns `None` past the last buffer.
    pub fn buffer(&self, index: usize) -> Option<(Option<BufferHeader>, &'a [u8])> {
        if index >= self.total {
            return None;
        }
        if self.total == 1 {
            return Some((None, self.message));
        }
        let start = index * self.chunk;
        let end = (start + self.chunk).min(self.message.len());
        let header = BufferHeader { index: index as u16, total: self.total as u16 };
        Some((Some(header), &self.message[start..end]))
    }
}

impl<'a> Iterator for Splitter<'a> {
    type Item = (Option<BufferHeader>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.buffer(self.next)?;
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_match_the_spec() {
        assert_eq!(single_capacity(false, 0), 500);
        assert_eq!(single_capacity(true, 0), 499);
        assert_eq!(chunk_size(false, 0), 496);
        assert_eq!(chunk_size(true, 0), 495);
    }

    #[test]
    fn single_and_multi() {
        assert_eq!(Splitter::new(&[0; 500], false, 0).unwrap().total(), 1);
        assert_eq!(Splitter::new(&[], false, 0).unwrap().total(), 1);
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let parts: Vec<_> = Splitter::new(&msg, false, 0).unwrap().collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].1.len(), 496);
        assert_eq!(parts[2].1.len(), 8);
        assert_eq!(parts[2].0, Some(BufferHeader { index: 2, total: 3 }));
        assert_eq!(parts.iter().flat_map(|p| p.1.iter().copied()).collect::<Vec<_>>(), msg);
    }

    #[test]
    fn too_large_is_refused() {
        let max = 496 * 65535;
        let big = vec![0u8; max + 1];
        assert_eq!(Splitter::new(&big, false, 0).unwrap_err(), SplitError { len: max + 1, max });
        assert_eq!(Splitter::new(&big[..max], false, 0).unwrap().total(), 65535);
    }
}
