//! A session and the per-peer table that names sessions by their number on the wire.

use super::records::{InRecord, Out, Pending, PendingOpen};
use super::{SessionId, Time};
use crate::Addr;
use crate::crypto::{Crypto, ENCRYPTION_OVERHEAD};
use dabs_wire::SentTime;
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Client,
    Server,
}

pub(super) struct Session {
    pub(super) peer: Addr,
    pub(super) number: u8,
    pub(super) role: Role,
    pub(super) crc: bool,
    pub(super) remote_queue: u16,
    pub(super) local_queue: u16,
    pub(super) last_active: Time,
    pub(super) next_tx: u8,
    pub(super) last_request_stamp: Box<[u32; 256]>,
    pub(super) last_reply_stamp_in: Box<[u32; 256]>,
    pub(super) last_reply_stamp_out: Box<[u32; 256]>,
    pub(super) out: HashMap<u8, Out>,
    pub(super) replies: HashMap<u8, Out>,
    pub(super) inc: HashMap<u8, InRecord>,
    pub(super) waiting: VecDeque<Pending>,
    pub(super) reopen_with: Option<(Addr, Vec<u8>)>,
    pub(super) reopening: bool,
    pub(super) crypto: Crypto,
    /// Client: the session (re-)opens encrypted.
    pub(super) wants_encryption: bool,
    /// Client: the `Opened`/`Reopened` event held back until the key exchange completes.
    pub(super) pending_open: Option<PendingOpen>,
    /// Client: key exchanges started since the session last had keys.
    pub(super) key_exchanges: u32,
}

impl Session {
    pub(super) fn new(
        peer: Addr,
        number: u8,
        role: Role,
        crc: bool,
        remote: u16,
        local: u16,
        now: Time,
    ) -> Self {
        Self {
            peer,
            number,
            role,
            crc,
            remote_queue: remote,
            local_queue: local,
            last_active: now,
            next_tx: 1,
            last_request_stamp: Box::new([u32::MAX; 256]),
            last_reply_stamp_in: Box::new([u32::MAX; 256]),
            last_reply_stamp_out: Box::new([u32::MAX; 256]),
            out: HashMap::new(),
            replies: HashMap::new(),
            inc: HashMap::new(),
            waiting: VecDeque::new(),
            reopen_with: None,
            reopening: false,
            crypto: Crypto::Plain,
            wants_encryption: false,
            pending_open: None,
            key_exchanges: 0,
        }
    }

    /// Bytes encryption adds to each datagram of this session.
    pub(super) fn overhead(&self) -> usize {
        if self.crypto.is_plain() && !self.wants_encryption { 0 } else { ENCRYPTION_OVERHEAD }
    }

    /// False while a key exchange is under way: requests wait.
    pub(super) fn ready(&self) -> bool {
        !matches!(self.crypto, Crypto::Handshake(_)) && self.pending_open.is_none()
    }

    /// A transaction number not in flight and not last used with this very stamp, so that
    /// the receiver can tell the new use from the old one.
    pub(super) fn alloc_tx(&mut self, stamp: SentTime) -> Option<u8> {
        let ms = stamp.millis_of_hour();
        for _ in 0..255 {
            let t = self.next_tx;
            self.next_tx = if t == 255 { 1 } else { t + 1 };
            if !self.out.contains_key(&t) && self.last_request_stamp[usize::from(t)] != ms {
                self.last_request_stamp[usize::from(t)] = ms;
                return Some(t);
            }
        }
        None
    }
}

#[derive(Default)]
pub(super) struct Peer {
    pub(super) sessions: HashMap<u8, SessionId>,
    pub(super) next_number: u8,
    pub(super) partials: usize,
    pub(super) opens_seen: HashMap<u8, (SentTime, Option<SessionId>)>,
    pub(super) opens_order: VecDeque<u8>,
}
