//! Reassembling a multi-buffer message from buffers that arrive in any order.

use crate::codec::{Datagram, Header};
use std::collections::BTreeMap;

/// What adding a buffer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Stored; more buffers are missing.
    Incomplete,
    /// Already held, with the same bytes: ignored.
    Duplicate,
    /// The message is complete: call [`Reassembly::finish`].
    Complete,
}

/// A buffer that does not belong to the message being reassembled, or a message that
/// cannot be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// A single-buffer datagram was offered.
    #[error("datagram has no buffer header, it is not part of a multi-buffer message")]
    NotMultiBuffer,
    /// The message would exceed the receiver's limit.
    #[error("message of {total} buffers (at least {min_len} bytes) exceeds the limit of {max} bytes")]
    TooLarge {
        /// Buffers announced.
        total: u16,
        /// Smallest size such a message can have.
        min_len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// A header field differs from the message's first buffer.
    #[error("buffer header field {field} differs from the message's earlier buffers")]
    HeaderMismatch {
        /// Name of the field.
        field: &'static str,
    },
    /// The buffer total differs from the message's first buffer.
    #[error("buffer announces {found} buffers, the message has {expected}")]
    TotalMismatch {
        /// Total of the first buffer.
        expected: u16,
        /// Total of this buffer.
        found: u16,
    },
    /// A buffer has the wrong payload length (all but the last must be full; the last may
    /// not be empty or over full).
    #[error("buffer {index} carries {len} payload bytes, expected {expected}")]
    WrongLength {
        /// Buffer number.
        index: u16,
        /// Its payload length.
        len: usize,
        /// What it should have been (the full size, or at most that for the last buffer).
        expected: usize,
    },
    /// A buffer arrived twice with different contents.
    #[error("buffer {index} arrived twice with different contents")]
    ConflictingDuplicate {
        /// Buffer number.
        index: u16,
    },
}

/// One message being put back together. Memory grows as buffers arrive: each buffer's bytes
/// are kept on their own until the message is complete, so a message announced large but sent
/// in part holds only what was sent (a receiver that allocated the whole message on its first
/// buffer could be made to reserve a mebibyte per 500-byte datagram).
#[derive(Debug)]
pub struct Reassembly {
    header: Header,
    total: u16,
    chunk: usize,
    parts: BTreeMap<u16, Vec<u8>>,
    held: usize,
}

impl Reassembly {
    /// Prepares to reassemble the message `first` belongs to. `chunk` is the payload size
    /// of a full buffer; `max_message` the largest message the receiver accepts.
    /// `first` is not stored: pass it to [`Reassembly::add`] too. Allocates nothing for the
    /// message's contents.
    pub fn new(first: &Datagram<'_>, chunk: usize, max_message: usize) -> Result<Self, ReassemblyError> {
        let b = first.buffer.ok_or(ReassemblyError::NotMultiBuffer)?;
        let min_len = (usize::from(b.total) - 1) * chunk + 1;
        if min_len > max_message || chunk == 0 {
            return Err(ReassemblyError::TooLarge { total: b.total, min_len, max: max_message });
        }
        Ok(Self { header: first.header, total: b.total, chunk, parts: BTreeMap::new(), held: 0 })
    }

    /// Checks that `d` belongs to this message with a valid length; returns its buffer number.
    fn check(&self, d: &Datagram<'_>) -> Result<u16, ReassemblyError> {
        let b = d.buffer.ok_or(ReassemblyError::NotMultiBuffer)?;
        if let Some(field) = differing_field(&self.header, &d.header) {
            return Err(ReassemblyError::HeaderMismatch { field });
        }
        if b.total != self.total {
            return Err(ReassemblyError::TotalMismatch { expected: self.total, found: b.total });
        }
        let last = b.index + 1 == self.total;
        let len = d.payload.len();
        let length_ok = if last { (1..=self.chunk).contains(&len) } else { len == self.chunk };
        if !length_ok {
            return Err(ReassemblyError::WrongLength { index: b.index, len, expected: self.chunk });
        }
        Ok(b.index)
    }

    /// The bytes adding `d` would make the message hold in addition (0 for a buffer already
    /// held, or one that does not belong), so that a receiver can check a budget first.
    pub fn growth(&self, d: &Datagram<'_>) -> usize {
        match self.check(d) {
            Ok(index) if !self.parts.contains_key(&index) => d.payload.len(),
            _ => 0,
        }
    }

    /// Adds one buffer.
    pub fn add(&mut self, d: &Datagram<'_>) -> Result<Progress, ReassemblyError> {
        self.add_into(d, Vec::new)
    }

    /// Adds one buffer, copied into a buffer from `buffer` (a receiver's pool of spare ones:
    /// then receiving allocates nothing per datagram; see [`Reassembly::finish_with`]).
    pub fn add_into(
        &mut self,
        d: &Datagram<'_>,
        buffer: impl FnOnce() -> Vec<u8>,
    ) -> Result<Progress, ReassemblyError> {
        let index = self.check(d)?;
        if let Some(held) = self.parts.get(&index) {
            if **held != *d.payload {
                return Err(ReassemblyError::ConflictingDuplicate { index });
            }
            return Ok(Progress::Duplicate);
        }
        let mut part = buffer();
        part.clear();
        part.extend_from_slice(d.payload);
        self.parts.insert(index, part);
        self.held += d.payload.len();
        Ok(if self.is_complete() { Progress::Complete } else { Progress::Incomplete })
    }

    /// True once every buffer is held.
    pub fn is_complete(&self) -> bool {
        self.parts.len() == usize::from(self.total)
    }

    /// Buffers held so far.
    pub fn received(&self) -> u16 {
        self.parts.len() as u16 // at most `total`, a u16
    }

    /// Buffers in the message.
    pub fn total(&self) -> u16 {
        self.total
    }

    /// The header every buffer carries.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Payload bytes held so far (for memory accounting): the sum of the buffers received.
    pub fn reserved(&self) -> usize {
        self.held
    }

    /// Buffer numbers not yet received, in order.
    pub fn missing(&self) -> impl Iterator<Item = u16> + '_ {
        (0..self.total).filter(|i| !self.parts.contains_key(i))
    }

    /// The complete message, or `None` (and the partial state back) if buffers are missing.
    pub fn finish(self) -> Result<Vec<u8>, Self> {
        self.finish_with(drop)
    }

    /// Like [`Reassembly::finish`], handing each buffer's storage to `spare` afterwards.
    pub fn finish_with(self, mut spare: impl FnMut(Vec<u8>)) -> Result<Vec<u8>, Self> {
        if !self.is_complete() {
            return Err(self);
        }
        let mut out = Vec::with_capacity(self.held);
        for part in self.parts.into_values() {
            out.extend_from_slice(&part);
            spare(part);
        }
        Ok(out)
    }
}

fn differing_field(a: &Header, b: &Header) -> Option<&'static str> {
    let checks = [
        (a.kind == b.kind, "kind"),
        (a.version == b.version, "version"),
        (a.command == b.command, "command"),
        (a.session == b.session, "session"),
        (a.transaction == b.transaction, "transaction"),
        (a.sent == b.sent, "sent time"),
        (a.encrypted == b.encrypted, "encrypted"),
        (a.crc == b.crc, "crc"),
        (a.dst == b.dst, "destination queue"),
        (a.src == b.src, "source queue"),
    ];
    checks.into_iter().find(|(same, _)| !same).map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Header, Kind, Splitter, chunk_size};

    fn datagrams(msg: &[u8]) -> Vec<(Header, Option<crate::BufferHeader>, Vec<u8>)> {
        let h = Header { session: 3, transaction: 9, ..Header::new(Kind::Request, 300) };
        Splitter::new(msg, false, 0).unwrap().map(|(b, p)| (h, b, p.to_vec())).collect()
    }

    fn dg(p: &(Header, Option<crate::BufferHeader>, Vec<u8>)) -> Datagram<'_> {
        Datagram { header: p.0, buffer: p.1, payload: &p.2 }
    }

    #[test]
    fn any_order_with_duplicates() {
        let msg: Vec<u8> = (0..1900u32).map(|i| (i * 7) as u8).collect();
        let parts = datagrams(&msg);
        let order = [3, 1, 1, 0, 3, 2];
        let mut r = Reassembly::new(&dg(&parts[3]), chunk_size(false, 0), 1 << 20).unwrap();
        let mut seen = Vec::new();
        for i in order {
            seen.push(r.add(&dg(&parts[i])).unwrap());
        }
        use Progress::*;
        assert_eq!(seen, [Incomplete, Incomplete, Duplicate, Incomplete, Duplicate, Complete]);
        assert_eq!(r.finish().unwrap(), msg);
    }

    #[test]
    fn inconsistent_buffers_are_rejected() {
        let msg = vec![1u8; 1200];
        let parts = datagrams(&msg);
        let chunk = chunk_size(false, 0);
        let mut r = Reassembly::new(&dg(&parts[0]), chunk, 1 << 20).unwrap();
        r.add(&dg(&parts[0])).unwrap();

        let mut other = parts[1].clone();
        other.0.transaction = 10;
        assert_eq!(r.add(&dg(&other)), Err(ReassemblyError::HeaderMismatch { field: "transaction" }));

        let mut short = parts[1].clone();
        short.2.pop();
        assert!(matches!(r.add(&dg(&short)), Err(ReassemblyError::WrongLength { index: 1, .. })));

        let mut total = parts[1].clone();
        total.1 = Some(crate::BufferHeader { index: 1, total: 4 });
        assert!(matches!(r.add(&dg(&total)), Err(ReassemblyError::TotalMismatch { .. })));

        let mut changed = parts[0].clone();
        changed.2[5] ^= 1;
        assert_eq!(r.add(&dg(&changed)), Err(ReassemblyError::ConflictingDuplicate { index: 0 }));

        assert_eq!(r.missing().collect::<Vec<_>>(), vec![1, 2]);
        let r = r.finish().unwrap_err();
        assert_eq!(r.received(), 1);
    }

    #[test]
    fn memory_grows_as_buffers_arrive() {
        let parts = datagrams(&vec![3u8; 100_000]);
        let chunk = chunk_size(false, 0);
        let mut r = Reassembly::new(&dg(&parts[7]), chunk, 1 << 20).unwrap();
        assert_eq!(r.reserved(), 0, "nothing is reserved up front");
        assert_eq!(r.growth(&dg(&parts[7])), chunk);
        r.add(&dg(&parts[7])).unwrap();
        assert_eq!(r.reserved(), chunk);
        assert_eq!(r.growth(&dg(&parts[7])), 0, "a repeat adds nothing");
        let last = parts.last().unwrap();
        r.add(&dg(last)).unwrap();
        assert_eq!(r.reserved(), chunk + last.2.len());
    }

    #[test]
    fn limit_is_enforced_before_allocating() {
        let parts = datagrams(&vec![0u8; 5000]);
        let err = Reassembly::new(&dg(&parts[0]), chunk_size(false, 0), 4000).unwrap_err();
        assert!(matches!(err, ReassemblyError::TooLarge { total: 11, .. }));
    }
}
