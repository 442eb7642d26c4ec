//! Caps per source address and relief under pressure: one host cannot fill the endpoint's
//! tables and lock other clients out (R-SEC-3). A source is an IPv4 address or an IPv6 /64
//! ([`source_of`](super::session::source_of)); local and in-process peers are not capped.

use super::session::Session;
use super::{CloseReason, Endpoint, SessionId, Time};
use crate::Addr;
use std::time::Duration;

/// After a relief that could not make room, the next waits this long: under a flood, the
/// endpoint must not scan its whole table for every datagram.
const RELIEF_BACKOFF: Duration = Duration::from_millis(100);

impl Endpoint {
    /// Room for `addr` in the peer table (it may be new). `Err`: why not (NAK 10).
    pub(super) fn admit_peer(&mut self, now: Time, addr: &Addr) -> Result<(), &'static str> {
        if self.sessions.peer(addr).is_some() {
            return Ok(());
        }
        let cap = self.io.config.max_peers_per_source;
        if !addr.is_reliable_link() && self.source_peers(addr) >= cap {
            // Its peers without a session first (opens left to other nodes, say), then its
            // oldest idle sessions.
            self.sessions.prune_source(addr);
            if self.source_peers(addr) >= cap {
                self.reclaim_from_source(now, addr, cap / 8 + 1);
                self.sessions.prune_source(addr);
            }
            if self.source_peers(addr) >= cap {
                return Err("too many peers from this address");
            }
        }
        if self.sessions.peer_count() >= self.io.config.max_peers {
            self.relieve(now);
            if self.sessions.peer_count() >= self.io.config.max_peers {
                return Err("too many peers");
            }
        }
        Ok(())
    }

    /// Room for one more server session from the source of `addr`. `Err`: why not.
    pub(super) fn admit_session(&mut self, now: Time, addr: &Addr) -> Result<(), &'static str> {
        if addr.is_reliable_link() {
            return Ok(());
        }
        // A half-open session past the cap replaces the source's oldest: a client that never
        // answers its REPLY holds a slot only until its own source needs it.
        let half_cap = self.io.config.max_half_open_per_source.max(1);
        while self.sessions.source(addr).is_some_and(|s| s.half_open >= half_cap) {
            let Some(old) = self.sessions.oldest_half_open(addr) else {
                break;
            };
            self.reclaim(old);
        }
        let cap = self.io.config.max_sessions_per_source;
        if self.sessions.source(addr).is_some_and(|s| s.sessions >= cap) {
            self.reclaim_from_source(now, addr, cap / 8 + 1);
            if self.sessions.source(addr).is_some_and(|s| s.sessions >= cap) {
                return Err("too many sessions from this address");
            }
        }
        Ok(())
    }

    fn source_peers(&self, addr: &Addr) -> usize {
        self.sessions.source(addr).map_or(0, |s| s.peers)
    }

    /// Whether a session may be closed early to make room: a server session whose client has
    /// not answered yet, or that has been idle for `reclaim_idle_after`, with nothing in flight.
    fn may_reclaim(&self, now: Time, s: &Session) -> bool {
        s.reclaimable()
            && (s.is_half_open() || now.saturating_sub(s.last_active) >= self.io.config.reclaim_idle_after)
    }

    /// Closes up to `n` of the sessions of `addr`'s source that may be reclaimed, oldest idle
    /// first.
    fn reclaim_from_source(&mut self, now: Time, addr: &Addr, n: usize) {
        let source = super::session::source_of(addr);
        let mut victims: Vec<(Time, SessionId)> = self
            .sessions
            .iter()
            .filter(|(_, s)| super::session::source_of(s.peer()) == source && self.may_reclaim(now, s))
            .map(|(sid, s)| (s.last_active, sid))
            .collect();
        victims.sort_unstable();
        for (_, sid) in victims.into_iter().take(n) {
            self.reclaim(sid);
        }
    }

    /// The peer table is full: forget peers without sessions, then close the oldest idle (and
    /// half-open) server sessions until an eighth of the table is free again.
    fn relieve(&mut self, now: Time) {
        if now < self.relief_not_before {
            return;
        }
        self.sessions.prune_peers();
        let max = self.io.config.max_peers;
        let target = max - max / 8;
        let excess = self.sessions.peer_count().saturating_sub(target);
        if excess > 0 {
            let mut victims: Vec<(Time, SessionId)> = self
                .sessions
                .iter()
                .filter(|(_, s)| self.may_reclaim(now, s))
                .map(|(sid, s)| (s.last_active, sid))
                .collect();
            victims.sort_unstable();
            for (_, sid) in victims.into_iter().take(excess) {
                self.reclaim(sid);
            }
            self.sessions.prune_peers();
        }
        if self.sessions.peer_count() >= max {
            self.relief_not_before = now + RELIEF_BACKOFF;
        }
    }

    /// Closes up to `n` of `sessions` that are idle for `reclaim_idle_after` with nothing in
    /// flight (server sessions only), longest idle first, as if they had expired; returns how
    /// many. For the layers above that run out of room of their own (a farm node whose
    /// portion's seats are nearly all taken). Unlike the relief under the endpoint's own
    /// pressure, a session just accepted whose client has not ACKed yet is not taken: its
    /// client is most likely alive, its ACK on the way.
    pub fn reclaim_idle(&mut self, now: Time, sessions: &[SessionId], n: usize) -> usize {
        let mut victims: Vec<(Time, SessionId)> = sessions
            .iter()
            .filter_map(|sid| self.sessions.get(*sid).map(|s| (sid, s)))
            .filter(|(_, s)| {
                s.reclaimable() && now.saturating_sub(s.last_active) >= self.io.config.reclaim_idle_after
            })
            .map(|(sid, s)| (s.last_active, *sid))
            .collect();
        victims.sort_unstable();
        victims.dedup_by_key(|v| v.1);
        let n = victims.len().min(n);
        for (_, sid) in victims.into_iter().take(n) {
            self.reclaim(sid);
        }
        n
    }

    /// Closes a server session early to make room (as if it had expired).
    fn reclaim(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.remove(sid) {
            self.io.stats.sessions_reclaimed += 1;
            self.drop_session_calls(s, CloseReason::Idle, sid);
        }
    }

    /// Whether the endpoint is near its limits: the peer table or the reassembly budget seven
    /// eighths full. A farm node announces itself as not accepting then, so that the decider
    /// places new clients elsewhere rather than have this node refuse them.
    pub fn is_full(&self) -> bool {
        let c = &self.io.config;
        self.sessions.peer_count() >= c.max_peers - c.max_peers / 8
            || self.io.held.get() >= c.reassembly_total - c.reassembly_total / 8
    }
}
