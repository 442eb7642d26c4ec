//! Sessions, and [`SessionIndex`], the only code that adds, removes or renumbers them: it
//! keeps the sessions by id and, per peer, by their number on the wire, in step.

use super::budget::Meter;
use super::records::{InRecord, InState, Out, Pending, PendingOpen};
use super::{SessionId, Time};
use crate::Addr;
use crate::crypto::{Crypto, ENCRYPTION_OVERHEAD, Sealer};
use dabs_wire::SentTime;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Which side opened the session.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Client,
    Server,
}

/// One session, either side.
pub(super) struct Session {
    /// With `number`, the key of the session in [`SessionIndex`]: private, so that only the
    /// index changes them.
    peer: Addr,
    number: u8,
    pub(super) role: Role,
    pub(super) crc: bool,
    pub(super) remote_queue: u16,
    pub(super) local_queue: u16,
    pub(super) last_active: Time,
    pub(super) next_tx: u8,
    pub(super) last_request_stamp: Box<[u32; 256]>,
    pub(super) last_reply_stamp_in: Box<[u32; 256]>,
    /// When each of those replies was taken: past the idle time-out no copy of it can arrive,
    /// and its stamp (which wraps every hour) must not make a new reply look old.
    pub(super) last_reply_at: Box<[Time; 256]>,
    pub(super) last_reply_stamp_out: Box<[u32; 256]>,
    pub(super) out: HashMap<u8, Out>,
    pub(super) replies: HashMap<u8, Out>,
    pub(super) inc: HashMap<u8, InRecord>,
    pub(super) waiting: VecDeque<Pending>,
    pub(super) reopen_with: Option<(Addr, Vec<u8>)>,
    pub(super) reopening: bool,
    /// The call of this session's confirmed close, once one is under way.
    pub(super) closing: Option<super::CallId>,
    pub(super) crypto: Crypto,
    /// Client: the session (re-)opens encrypted.
    pub(super) wants_encryption: bool,
    /// Client: the `Opened`/`Reopened` event held back until the key exchange completes.
    pub(super) pending_open: Option<PendingOpen>,
    /// Client: key exchanges started since the session last had keys.
    pub(super) key_exchanges: u32,
    /// Client: the server's static public key the session was pinned to: every key exchange
    /// (re-opens too) is Noise_NK with it, never NN, never clear.
    pub(super) pinned: Option<[u8; 32]>,
    /// Bytes this session's half-received messages hold.
    pub(super) held: Meter,
    /// Server: accepted, but its client has neither ACKed the `OPEN_SESSION` REPLY nor sent
    /// a request yet. Changed only through [`SessionIndex::settle_open`], which counts them.
    half_open: bool,
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
            last_reply_at: Box::new([Time::ZERO; 256]),
            last_reply_stamp_out: Box::new([u32::MAX; 256]),
            out: HashMap::new(),
            replies: HashMap::new(),
            inc: HashMap::new(),
            waiting: VecDeque::new(),
            reopen_with: None,
            reopening: false,
            closing: None,
            crypto: Crypto::Plain,
            wants_encryption: false,
            pending_open: None,
            key_exchanges: 0,
            pinned: None,
            held: Meter::default(),
            half_open: false,
        }
    }

    /// The peer's address.
    pub(super) fn peer(&self) -> &Addr {
        &self.peer
    }

    /// The session's number on the wire.
    pub(super) fn number(&self) -> u8 {
        self.number
    }

    /// Server: accepted, but not yet answered by its client (see [`SessionIndex::settle_open`]).
    pub(super) fn is_half_open(&self) -> bool {
        self.half_open
    }

    /// A new server session starts half-open (before [`SessionIndex::insert`]).
    pub(super) fn mark_half_open(&mut self) {
        self.half_open = self.role == Role::Server;
    }

    /// Nothing in flight that the application or its peer still counts on: the idle sweep,
    /// and reclaiming under pressure, may close it.
    pub(super) fn reclaimable(&self) -> bool {
        self.role == Role::Server
            && self.out.is_empty()
            // A parked REPLY is not traffic: it must not keep an idle session alive (nor the
            // REPLY to an `OPEN_SESSION` its client never acknowledged).
            && self.replies.values().all(|o| o.parked || self.half_open)
            // Nor is a half-received message: a live sender repeats it well within the idle
            // time-out, so its sender is gone, and the session (and the peer's
            // partial-message slot) goes with it. A delivered request is the application's,
            // still to be answered: it keeps the session.
            && !self.inc.values().any(|r| matches!(r.state, InState::Delivered { .. }))
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

/// What the endpoint keeps per peer address.
#[derive(Default)]
pub(super) struct Peer {
    /// The peer's sessions by number: private, kept by [`SessionIndex`].
    numbers: HashMap<u8, SessionId>,
    /// The last session number this endpoint (as server) gave the peer.
    next_number: u8,
    pub(super) partials: usize,
    pub(super) opens_seen: HashMap<u8, (SentTime, Option<SessionId>)>,
    pub(super) opens_order: VecDeque<u8>,
}

/// Where datagrams come from, for the caps and budgets per source: a UDP peer's IPv4 address,
/// or the /64 prefix of its IPv6 address (one host usually holds a whole /64), with port 0;
/// a TCP or WebSocket peer counts as the same host's UDP source. A local or in-process peer is its own
/// source.
pub(super) fn source_of(addr: &Addr) -> Addr {
    match addr {
        Addr::Udp(sa) | Addr::Tcp(sa) | Addr::Ws(sa) => {
            let ip = match sa.ip() {
                IpAddr::V4(v4) => IpAddr::V4(v4),
                IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
            };
            Addr::Udp(SocketAddr::new(ip, 0))
        }
        other => other.clone(),
    }
}

/// What one source address uses: peers (ports), server sessions, half-open ones among them,
/// and the bytes its half-received messages hold.
#[derive(Default)]
pub(super) struct SourceUse {
    pub(super) peers: usize,
    pub(super) sessions: usize,
    pub(super) half_open: usize,
    /// Its half-open sessions, oldest first (some may have settled or closed since: checked
    /// when taken).
    pub(super) half_open_order: VecDeque<SessionId>,
    pub(super) held: Meter,
}

/// Every session, by id and by (peer, number). Each session's (peer, number) maps to it and
/// every number maps to a session: a datagram's number either finds its session or nothing.
/// (Kept by hand in two maps, they once disagreed, and a datagram for a number whose session
/// was gone hit a panic that took every session of the driver with it.)
#[derive(Default)]
pub(super) struct SessionIndex {
    sessions: HashMap<SessionId, Session>,
    peers: HashMap<Addr, Peer>,
    /// Per source address (see [`source_of`]), kept in step with the two maps above.
    sources: HashMap<Addr, SourceUse>,
    /// Half-open sessions in all.
    half_open: usize,
}

impl SessionIndex {
    /// Sessions open.
    pub(super) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub(super) fn contains(&self, sid: SessionId) -> bool {
        self.sessions.contains_key(&sid)
    }

    pub(super) fn get(&self, sid: SessionId) -> Option<&Session> {
        self.sessions.get(&sid)
    }

    pub(super) fn get_mut(&mut self, sid: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(&sid)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.sessions.iter().map(|(sid, s)| (*sid, s))
    }

    /// The session `peer` knows by `number`.
    pub(super) fn lookup(&self, peer: &Addr, number: u8) -> Option<SessionId> {
        self.peers.get(peer)?.numbers.get(&number).copied()
    }

    /// The sealer of the session `peer` knows by `number`, if it has keys.
    pub(super) fn sealer(&mut self, peer: &Addr, number: u8) -> Option<&mut Sealer> {
        let sid = self.lookup(peer, number)?;
        self.sessions.get_mut(&sid)?.crypto.sealer()
    }

    /// Adds a session under its id and its (peer, number). Returns the session that held that
    /// (peer, number) until now, if any: the peer reused the number, so it has lost that one.
    #[must_use]
    pub(super) fn insert(&mut self, sid: SessionId, session: Session) -> Option<(SessionId, Session)> {
        let displaced = self.unmap(&session.peer, session.number, sid);
        self.peer_entry(&session.peer).numbers.insert(session.number, sid);
        if session.role == Role::Server {
            let src = self.sources.entry(source_of(&session.peer)).or_default();
            src.sessions += 1;
            if session.half_open {
                src.half_open += 1;
                src.half_open_order.push_back(sid);
                self.half_open += 1;
            }
        }
        self.sessions.insert(sid, session);
        displaced
    }

    /// Removes a session from both maps.
    pub(super) fn remove(&mut self, sid: SessionId) -> Option<Session> {
        let mut s = self.sessions.remove(&sid)?;
        if let Some(p) = self.peers.get_mut(&s.peer)
            && p.numbers.get(&s.number) == Some(&sid)
        {
            p.numbers.remove(&s.number);
        }
        if s.role == Role::Server
            && let Some(src) = self.sources.get_mut(&source_of(&s.peer))
        {
            src.sessions = src.sessions.saturating_sub(1);
            if s.half_open {
                src.half_open = src.half_open.saturating_sub(1);
                self.half_open = self.half_open.saturating_sub(1);
            }
        }
        s.half_open = false;
        Some(s)
    }

    /// Moves a session (re-opened) to a new peer and number. Returns the session that held
    /// them until now, as [`SessionIndex::insert`]; `None` also when `sid` is not open.
    #[must_use]
    pub(super) fn readdress(
        &mut self,
        sid: SessionId,
        peer: Addr,
        number: u8,
    ) -> Option<(SessionId, Session)> {
        let mut s = self.remove(sid)?;
        s.peer = peer;
        s.number = number;
        self.insert(sid, s)
    }

    /// Takes out the session other than `keep` that `peer` knows by `number`.
    fn unmap(&mut self, peer: &Addr, number: u8, keep: SessionId) -> Option<(SessionId, Session)> {
        let old = self.lookup(peer, number).filter(|old| *old != keep)?;
        self.remove(old).map(|s| (old, s))
    }

    pub(super) fn peer(&self, addr: &Addr) -> Option<&Peer> {
        self.peers.get(addr)
    }

    pub(super) fn peer_mut(&mut self, addr: &Addr) -> Option<&mut Peer> {
        self.peers.get_mut(addr)
    }

    /// The peer's entry, created if new.
    pub(super) fn peer_entry(&mut self, addr: &Addr) -> &mut Peer {
        match self.peers.entry(addr.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.sources.entry(source_of(addr)).or_default().peers += 1;
                e.insert(Peer::default())
            }
        }
    }

    /// The meter of what the source of `addr` holds in half-received messages (its peer
    /// entry is created if new, so that the source is kept while they are).
    pub(super) fn source_meter(&mut self, addr: &Addr) -> Meter {
        self.peer_entry(addr);
        self.sources.entry(source_of(addr)).or_default().held.clone()
    }

    /// What the source of `addr` uses, if anything.
    pub(super) fn source(&self, addr: &Addr) -> Option<&SourceUse> {
        self.sources.get(&source_of(addr))
    }

    /// Half-open sessions in all.
    pub(super) fn half_open_count(&self) -> usize {
        self.half_open
    }

    /// The session's client answered (ACKed the `OPEN_SESSION` REPLY, or sent a request): it
    /// is no longer half-open.
    pub(super) fn settle_open(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid).filter(|s| s.half_open) else {
            return;
        };
        s.half_open = false;
        if let Some(src) = self.sources.get_mut(&source_of(&s.peer)) {
            src.half_open = src.half_open.saturating_sub(1);
        }
        self.half_open = self.half_open.saturating_sub(1);
    }

    /// The oldest half-open session of the source of `addr`, if any.
    pub(super) fn oldest_half_open(&mut self, addr: &Addr) -> Option<SessionId> {
        let src = self.sources.get_mut(&source_of(addr))?;
        while let Some(sid) = src.half_open_order.pop_front() {
            if self.sessions.get(&sid).is_some_and(|s| s.half_open) {
                return Some(sid);
            }
        }
        None
    }

    /// Forgets the peers of `addr`'s source that have no session and no partial message.
    pub(super) fn prune_source(&mut self, addr: &Addr) {
        let source = source_of(addr);
        self.prune_where(|a| source_of(a) == source);
    }

    /// Peers tracked.
    pub(super) fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Server: a number for a new session with `addr`, none in use (`None`: all are).
    pub(super) fn free_number(&mut self, addr: &Addr) -> Option<u8> {
        let p = self.peer_entry(addr);
        for _ in 0..255 {
            p.next_number = if p.next_number == 255 { 1 } else { p.next_number + 1 };
            if !p.numbers.contains_key(&p.next_number) {
                return Some(p.next_number);
            }
        }
        None
    }

    /// Forgets peers with no session and no partial message.
    pub(super) fn prune_peers(&mut self) {
        self.prune_where(|_| true);
    }

    fn prune_where(&mut self, mut which: impl FnMut(&Addr) -> bool) {
        let sources = &mut self.sources;
        self.peers.retain(|a, p| {
            let keep = !which(a) || !p.numbers.is_empty() || p.partials > 0;
            if !keep && let Some(src) = sources.get_mut(&source_of(a)) {
                src.peers = src.peers.saturating_sub(1);
            }
            keep
        });
        // A source is kept while it has a peer or holds bytes (its meter must outlive them).
        self.sources.retain(|_, s| s.peers > 0 || s.held.get() > 0 || s.sessions > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::{Role, Session, SessionIndex};
    use crate::Addr;
    use crate::endpoint::SessionId;
    use std::time::Duration;

    fn addr(port: u16) -> Addr {
        Addr::Udp(([127, 0, 0, 1], port).into())
    }

    fn session(port: u16, number: u8) -> Session {
        Session::new(addr(port), number, Role::Client, false, 0, 0, Duration::ZERO)
    }

    #[test]
    fn a_number_always_finds_its_session_or_nothing() {
        let mut index = SessionIndex::default();
        let (a, b, c) = (SessionId(1), SessionId(2), SessionId(3));
        assert!(index.insert(a, session(9, 1)).is_none());
        assert!(index.insert(b, session(9, 2)).is_none());
        // Reusing a number displaces the session that held it, from both maps.
        let (old, _) = index.insert(c, session(9, 1)).expect("displaced");
        assert_eq!(old, a);
        assert!(!index.contains(a));
        assert_eq!(index.lookup(&addr(9), 1), Some(c));
        // Moving a session frees its old number and displaces the new one's holder.
        let (old, _) = index.readdress(c, addr(9), 2).expect("displaced");
        assert_eq!(old, b);
        assert_eq!(index.lookup(&addr(9), 1), None);
        assert_eq!(index.lookup(&addr(9), 2), Some(c));
        assert!(index.remove(c).is_some());
        assert_eq!(index.lookup(&addr(9), 2), None);
        assert!(index.is_empty());
        index.prune_peers();
        assert_eq!(index.peer_count(), 0);
    }
}
