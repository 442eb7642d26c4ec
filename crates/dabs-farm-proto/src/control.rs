//! The authenticated control plane (docs/protocol.md, "Control-plane authentication"): MACs
//! on `ANNOUNCE`, on node-to-node commands and their answers, and on the proof that opens a
//! node session, each keyed with a key derived from the farm secret ([`crate::keys`]) and
//! bound to the sender's MP address as the receiver sees it on the wire.
//!
//! - **Requests** (`ASSIGN`, `SPAWN`, `SETTINGS`, a node's `RESOLVE_VA`, the node-session
//!   `OPEN_SESSION` proof): CBOR `{"node", "st", "n", "t", "body", "mac"}`, the tag
//!   HMAC-SHA256(control key, [`REQUEST_DOMAIN`] `|| 0x00 || sender || 0x00 || receiver ||
//!   0x00 || node || 0x00 || command (u16 BE) || receiver start (u64 BE) || st (u64 BE) || n
//!   (u64 BE) || t (u64 BE) || body`).
//! - **Answers**: CBOR `{"body", "mac"}`, the tag HMAC-SHA256(control key,
//!   [`REPLY_DOMAIN`] `|| 0x00 || responder || 0x00 || requester || 0x00 || command (u16 BE)
//!   || the request's 32-byte tag || body`).
//! - **Announcements**: a CBOR sequence of two items, the statistics map `S` exactly as
//!   before and `{"t", "mac"}`, the tag HMAC-SHA256(announce key, [`ANNOUNCE_DOMAIN`] `|| 0x00
//!   || sender || 0x00 || t (u64 BE) || S`).
//!
//! Addresses are ASCII `IP:port` text (IPv6 in brackets), as Rust's `SocketAddr` prints them.
//! Replay state ([`ReplayGuard`], [`AnnounceFloor`]) is the receiver's to keep.

use crate::records::NodeStats;
use ciborium::Value;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;

type HmacSha256 = Hmac<Sha256>;

/// Domain label of a node-to-node request's tag.
pub const REQUEST_DOMAIN: &[u8] = b"dabs-control-v1";
/// Domain label of the tag on an answer to an authenticated request.
pub const REPLY_DOMAIN: &[u8] = b"dabs-control-reply-v1";
/// Domain label of an announcement's tag.
pub const ANNOUNCE_DOMAIN: &[u8] = b"dabs-announce-v1";
/// How far (ms) a message's `t` may be from the receiver's clock, either way.
pub const AUTH_WINDOW_MS: u64 = 30_000;
/// Counters of one sender's run accepted out of order: at most this far below its highest.
pub const REPLAY_WINDOW: u64 = 1024;
/// Length of every tag.
pub const TAG_LEN: usize = 32;

/// Why an authenticated message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not the documented shape (or no authentication at all).
    #[error("not authenticated: {0}")]
    Malformed(String),
    /// The tag does not verify: forged, another key, or sent from / to another address.
    #[error("tag does not verify (forged, another farm's key, or another sender or receiver)")]
    BadMac,
    /// `t` is outside the window of the receiver's clock.
    #[error("issued {skew_ms} ms away from our clock, outside the {window_ms} ms window")]
    Stale {
        /// |now − t|.
        skew_ms: u64,
        /// The window.
        window_ms: u64,
    },
    /// A counter (or announcement sequence) already taken from this sender's run.
    #[error("replayed: counter {counter} of {node}'s run {started_ms} was taken already")]
    Replayed {
        /// The sender.
        node: String,
        /// Its run (start time).
        started_ms: u64,
        /// The counter.
        counter: u64,
    },
    /// From a run of the sender older than one already heard.
    #[error("from an earlier run of {node} ({started_ms}, we have heard {known_ms})")]
    OldRun {
        /// The sender.
        node: String,
        /// The run it claims.
        started_ms: u64,
        /// The newest run heard.
        known_ms: u64,
    },
    /// The sender's claimed address is not the one it sent from.
    #[error("claims to be {claimed} but sent from {seen}")]
    WrongSender {
        /// The address it names.
        claimed: SocketAddr,
        /// The datagram's source.
        seen: SocketAddr,
    },
}

/// What a request is bound to besides its contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The sender's MP address (its own for sealing, the datagram's source for opening).
    pub sender: SocketAddr,
    /// The receiver's MP address.
    pub receiver: SocketAddr,
    /// The receiver's start time (Unix ms, as it announces it).
    pub receiver_started_ms: u64,
    /// The MP command number the payload travels in.
    pub command: u16,
}

/// Who sent a request, and its place in the sender's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The sending node's name.
    pub node: String,
    /// The sender's start time (Unix ms): its run.
    pub started_ms: u64,
    /// Its counter, from 1, one more per sealed request of the run.
    pub counter: u64,
    /// When it was sealed (Unix ms).
    pub issued_ms: u64,
}

/// A request whose tag verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Who and when.
    pub stamp: Stamp,
    /// The command's own payload.
    pub body: Vec<u8>,
    /// Its tag: the answer is bound to it.
    pub mac: [u8; TAG_LEN],
}

fn hmac(key: &[u8; 32]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn request_mac(key: &[u8; 32], route: &Route, stamp: &Stamp, body: &[u8]) -> HmacSha256 {
    let mut m = hmac(key);
    m.update(REQUEST_DOMAIN);
    m.update(&[0]);
    m.update(route.sender.to_string().as_bytes());
    m.update(&[0]);
    m.update(route.receiver.to_string().as_bytes());
    m.update(&[0]);
    m.update(stamp.node.as_bytes());
    m.update(&[0]);
    m.update(&route.command.to_be_bytes());
    m.update(&route.receiver_started_ms.to_be_bytes());
    m.update(&stamp.started_ms.to_be_bytes());
    m.update(&stamp.counter.to_be_bytes());
    m.update(&stamp.issued_ms.to_be_bytes());
    m.update(body);
    m
}

fn reply_mac(
    key: &[u8; 32],
    responder: SocketAddr,
    requester: SocketAddr,
    command: u16,
    request: &[u8; TAG_LEN],
    body: &[u8],
) -> HmacSha256 {
    let mut m = hmac(key);
    m.update(REPLY_DOMAIN);
    m.update(&[0]);
    m.update(responder.to_string().as_bytes());
    m.update(&[0]);
    m.update(requester.to_string().as_bytes());
    m.update(&[0]);
    m.update(&command.to_be_bytes());
    m.update(request);
    m.update(body);
    m
}

fn announce_mac(key: &[u8; 32], sender: SocketAddr, issued_ms: u64, stats: &[u8]) -> HmacSha256 {
    let mut m = hmac(key);
    m.update(ANNOUNCE_DOMAIN);
    m.update(&[0]);
    m.update(sender.to_string().as_bytes());
    m.update(&[0]);
    m.update(&issued_ms.to_be_bytes());
    m.update(stats);
    m
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn uint(n: u64) -> Value {
    Value::Integer(n.into())
}

fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
}

fn to_vec(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

fn malformed(m: impl Into<String>) -> AuthError {
    AuthError::Malformed(m.into())
}

fn map_of(value: Value, what: &str) -> Result<Vec<(Value, Value)>, AuthError> {
    match value {
        Value::Map(m) => Ok(m),
        _ => Err(malformed(format!("{what} is not a CBOR map"))),
    }
}

fn uint_of(map: &[(Value, Value)], key: &str) -> Result<u64, AuthError> {
    get(map, key)
        .and_then(Value::as_integer)
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| malformed(format!("no unsigned {key:?}")))
}

fn bytes_of<'a>(map: &'a [(Value, Value)], key: &str) -> Result<&'a [u8], AuthError> {
    get(map, key)
        .and_then(Value::as_bytes)
        .map(Vec::as_slice)
        .ok_or_else(|| malformed(format!("no byte string {key:?}")))
}

fn tag_of(map: &[(Value, Value)]) -> Result<[u8; TAG_LEN], AuthError> {
    <[u8; TAG_LEN]>::try_from(bytes_of(map, "mac")?).map_err(|_| malformed("\"mac\" is not 32 bytes"))
}

fn in_window(issued_ms: u64, now_ms: u64) -> Result<(), AuthError> {
    let skew_ms = now_ms.abs_diff(issued_ms);
    if skew_ms > AUTH_WINDOW_MS {
        return Err(AuthError::Stale { skew_ms, window_ms: AUTH_WINDOW_MS });
    }
    Ok(())
}

/// The sealed request as a CBOR map value (an `OPEN_SESSION` proof nests it under `"auth"`).
pub fn seal_request_value(
    key: &[u8; 32],
    route: &Route,
    stamp: &Stamp,
    body: &[u8],
) -> (Value, [u8; TAG_LEN]) {
    let tag: [u8; TAG_LEN] = request_mac(key, route, stamp, body).finalize().into_bytes().into();
    let value = Value::Map(vec![
        (text("node"), text(&stamp.node)),
        (text("st"), uint(stamp.started_ms)),
        (text("n"), uint(stamp.counter)),
        (text("t"), uint(stamp.issued_ms)),
        (text("body"), Value::Bytes(body.to_vec())),
        (text("mac"), Value::Bytes(tag.to_vec())),
    ]);
    (value, tag)
}

/// Seals `body` as the payload of request `route.command`; returns it and its tag (to check
/// the answer with).
pub fn seal_request(key: &[u8; 32], route: &Route, stamp: &Stamp, body: &[u8]) -> (Vec<u8>, [u8; TAG_LEN]) {
    let (value, tag) = seal_request_value(key, route, stamp, body);
    (to_vec(&value), tag)
}

/// Checks a sealed request's tag (constant time) against `route` — whose `sender` must be the
/// datagram's source and `receiver` and `receiver_started_ms` this node's own — and its time
/// against `now_ms`. Replays are the caller's [`ReplayGuard`]'s business.
pub fn open_request_value(
    key: &[u8; 32],
    route: &Route,
    value: Value,
    now_ms: u64,
) -> Result<Opened, AuthError> {
    let map = map_of(value, "sealed request")?;
    let node = get(&map, "node").and_then(Value::as_text).ok_or_else(|| malformed("no text \"node\""))?;
    let stamp = Stamp {
        node: node.to_owned(),
        started_ms: uint_of(&map, "st")?,
        counter: uint_of(&map, "n")?,
        issued_ms: uint_of(&map, "t")?,
    };
    let body = bytes_of(&map, "body")?;
    let mac = tag_of(&map)?;
    request_mac(key, route, &stamp, body).verify_slice(&mac).map_err(|_| AuthError::BadMac)?;
    in_window(stamp.issued_ms, now_ms)?;
    Ok(Opened { stamp, body: body.to_vec(), mac })
}

/// [`open_request_value`] on a whole payload.
pub fn open_request(key: &[u8; 32], route: &Route, payload: &[u8], now_ms: u64) -> Result<Opened, AuthError> {
    let value: Value = ciborium::from_reader(payload).map_err(|_| malformed("not CBOR"))?;
    open_request_value(key, route, value, now_ms)
}

/// Whether a payload is shaped as a sealed request (a CBOR map with a `"mac"`): a node's
/// `RESOLVE_VA` is, a client's is not.
pub fn looks_sealed(payload: &[u8]) -> bool {
    matches!(ciborium::from_reader::<Value, _>(payload), Ok(Value::Map(m)) if get(&m, "mac").is_some())
}

/// Seals the answer to the request whose tag is `request`.
pub fn seal_reply(
    key: &[u8; 32],
    responder: SocketAddr,
    requester: SocketAddr,
    command: u16,
    request: &[u8; TAG_LEN],
    body: &[u8],
) -> Vec<u8> {
    let tag = reply_mac(key, responder, requester, command, request, body).finalize().into_bytes();
    to_vec(&Value::Map(vec![
        (text("body"), Value::Bytes(body.to_vec())),
        (text("mac"), Value::Bytes(tag.to_vec())),
    ]))
}

/// Checks an answer from `responder` (the session's peer) to our request tagged `request`.
pub fn open_reply(
    key: &[u8; 32],
    responder: SocketAddr,
    requester: SocketAddr,
    command: u16,
    request: &[u8; TAG_LEN],
    payload: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let value: Value = ciborium::from_reader(payload).map_err(|_| malformed("answer is not CBOR"))?;
    let map = map_of(value, "answer")?;
    let body = bytes_of(&map, "body")?;
    let mac = tag_of(&map)?;
    reply_mac(key, responder, requester, command, request, body)
        .verify_slice(&mac)
        .map_err(|_| AuthError::BadMac)?;
    Ok(body.to_vec())
}

/// Bytes the authentication item of an announcement takes at most.
const ANNOUNCE_TRAILER_MAX: usize = 1 + 2 + 9 + 4 + 2 + TAG_LEN;

/// The datagrams announcing `stats` from `sender`, issued at `issued_ms`: one, or a part per
/// datagram when its portions need more ([`NodeStats::to_parts`]); each is the statistics map
/// followed by its own authentication item.
pub fn seal_announcements(
    key: &[u8; 32],
    sender: SocketAddr,
    stats: &NodeStats,
    issued_ms: u64,
) -> Vec<Vec<u8>> {
    let capacity = dabs_wire::single_capacity(true, 0) - ANNOUNCE_TRAILER_MAX;
    stats
        .to_parts(capacity)
        .into_iter()
        .map(|mut body| {
            let tag = announce_mac(key, sender, issued_ms, &body).finalize().into_bytes();
            let trailer =
                Value::Map(vec![(text("t"), uint(issued_ms)), (text("mac"), Value::Bytes(tag.to_vec()))]);
            body.extend_from_slice(&to_vec(&trailer));
            body
        })
        .collect()
}

/// Checks an announcement heard from `from` (the datagram's source): its tag, that it names
/// `from` as its MP address, and its time. Replays are the caller's [`AnnounceFloor`]'s.
pub fn open_announcement(
    key: &[u8; 32],
    from: SocketAddr,
    payload: &[u8],
    now_ms: u64,
) -> Result<NodeStats, AuthError> {
    let mut rest = payload;
    let _: Value = ciborium::from_reader(&mut rest).map_err(|_| malformed("statistics are not CBOR"))?;
    let stats_bytes = &payload[..payload.len() - rest.len()];
    if rest.is_empty() {
        return Err(malformed("no authentication item after the statistics"));
    }
    let trailer: Value =
        ciborium::from_reader(rest).map_err(|_| malformed("authentication item is not CBOR"))?;
    let trailer = map_of(trailer, "authentication item")?;
    let issued_ms = uint_of(&trailer, "t")?;
    let mac = tag_of(&trailer)?;
    announce_mac(key, from, issued_ms, stats_bytes).verify_slice(&mac).map_err(|_| AuthError::BadMac)?;
    in_window(issued_ms, now_ms)?;
    let stats = NodeStats::from_cbor(stats_bytes).map_err(|e| malformed(e.to_string()))?;
    if stats.mp != from {
        return Err(AuthError::WrongSender { claimed: stats.mp, seen: from });
    }
    Ok(stats)
}

/// One sender run's counters taken: the highest and a bitmap of the [`REPLAY_WINDOW`] below.
#[derive(Clone, Debug, Default)]
struct Window {
    started_ms: u64,
    highest: u64,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Window {
    fn bit(&mut self, counter: u64) -> (&mut u64, u64) {
        let i = (counter % REPLAY_WINDOW) as usize;
        (&mut self.seen[i / 64], 1 << (i % 64))
    }

    fn take(&mut self, counter: u64) -> bool {
        if counter == 0 {
            return false;
        }
        if counter > self.highest {
            // Slide: forget the counters that fall out of the window.
            let shift = counter - self.highest;
            if shift >= REPLAY_WINDOW {
                self.seen = Default::default();
            } else {
                for c in self.highest + 1..=counter {
                    let (word, bit) = self.bit(c);
                    *word &= !bit;
                }
            }
            self.highest = counter;
            let (word, bit) = self.bit(counter);
            *word |= bit;
            return true;
        }
        if self.highest - counter >= REPLAY_WINDOW {
            return false;
        }
        let (word, bit) = self.bit(counter);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// A receiver's replay state for sealed requests: per sender, its newest run and the
/// counters taken in it. Only requests whose tag verified may be passed in, so the map holds
/// key holders only.
#[derive(Clone, Debug, Default)]
pub struct ReplayGuard {
    by_node: HashMap<String, Window>,
}

impl ReplayGuard {
    /// Takes `stamp`'s counter, or says why it was taken before.
    pub fn check(&mut self, stamp: &Stamp) -> Result<(), AuthError> {
        let w = self.by_node.entry(stamp.node.clone()).or_default();
        if stamp.started_ms < w.started_ms {
            return Err(AuthError::OldRun {
                node: stamp.node.clone(),
                started_ms: stamp.started_ms,
                known_ms: w.started_ms,
            });
        }
        if stamp.started_ms > w.started_ms {
            *w = Window { started_ms: stamp.started_ms, ..Default::default() };
        }
        if w.take(stamp.counter) {
            Ok(())
        } else {
            Err(AuthError::Replayed {
                node: stamp.node.clone(),
                started_ms: stamp.started_ms,
                counter: stamp.counter,
            })
        }
    }
}

/// A receiver's replay state for announcements: the newest (start time, sequence) heard from
/// each node and the parts of it taken, kept after the node lapses, so an old announcement
/// cannot bring it back.
#[derive(Clone, Debug, Default)]
pub struct AnnounceFloor {
    by_node: HashMap<String, (u64, u64, u64)>,
}

impl AnnounceFloor {
    /// Takes `stats` if its (start time, sequence) is above the floor for its node, or is the
    /// floor's with a part not taken yet: `Ok(true)`. `Ok(false)` is a part already taken (the
    /// same datagram by another path, group and unicast): harmless, ignored.
    pub fn check(&mut self, stats: &NodeStats) -> Result<bool, AuthError> {
        let now = (stats.started_ms, stats.seq);
        let bit = 1u64 << stats.part.map_or(0, |p| p.index.min(63));
        match self.by_node.get_mut(&stats.node) {
            Some(&mut (st, ..)) if stats.started_ms < st => Err(AuthError::OldRun {
                node: stats.node.clone(),
                started_ms: stats.started_ms,
                known_ms: st,
            }),
            Some((st, sq, taken)) if now == (*st, *sq) => {
                let fresh = *taken & bit == 0;
                *taken |= bit;
                Ok(fresh)
            }
            Some(&mut (st, sq, _)) if now < (st, sq) => Err(AuthError::Replayed {
                node: stats.node.clone(),
                started_ms: stats.started_ms,
                counter: stats.seq,
            }),
            _ => {
                self.by_node.insert(stats.node.clone(), (now.0, now.1, bit));
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FarmKeys, Purpose};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn route() -> Route {
        Route {
            sender: addr("127.0.0.1:4001"),
            receiver: addr("127.0.0.1:4002"),
            receiver_started_ms: 77,
            command: 20,
        }
    }

    fn stamp(counter: u64) -> Stamp {
        Stamp { node: "node-1".into(), started_ms: 1_000, counter, issued_ms: 50_000 }
    }

    #[test]
    fn a_request_verifies_only_with_its_key_route_and_time() {
        let keys = FarmKeys::derive(b"0123456789abcdef0123456789abcdef");
        let key = keys.key(Purpose::Control);
        let (sealed, tag) = seal_request(key, &route(), &stamp(1), b"spawn");
        let opened = open_request(key, &route(), &sealed, 51_000).unwrap();
        assert_eq!((opened.body.as_slice(), opened.stamp, opened.mac), (&b"spawn"[..], stamp(1), tag));
        let other = FarmKeys::derive(b"another secret, also 32 bytes!!!");
        assert_eq!(
            open_request(other.key(Purpose::Control), &route(), &sealed, 51_000),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            open_request(keys.key(Purpose::Announce), &route(), &sealed, 51_000),
            Err(AuthError::BadMac)
        );
        for changed in [
            Route { sender: addr("127.0.0.1:4009"), ..route() },
            Route { receiver: addr("127.0.0.1:4009"), ..route() },
            Route { receiver_started_ms: 78, ..route() },
            Route { command: 18, ..route() },
        ] {
            assert_eq!(open_request(key, &changed, &sealed, 51_000), Err(AuthError::BadMac), "{changed:?}");
        }
        assert_eq!(
            open_request(key, &route(), &sealed, 50_000 + AUTH_WINDOW_MS + 1),
            Err(AuthError::Stale { skew_ms: AUTH_WINDOW_MS + 1, window_ms: AUTH_WINDOW_MS })
        );
        assert!(matches!(open_request(key, &route(), b"\xa0", 0), Err(AuthError::Malformed(_))));
        assert!(looks_sealed(&sealed) && !looks_sealed(b"\xa0"));

        let answer = seal_reply(key, route().receiver, route().sender, 20, &tag, b"ok");
        assert_eq!(open_reply(key, route().receiver, route().sender, 20, &tag, &answer).unwrap(), b"ok");
        assert_eq!(
            open_reply(key, route().receiver, route().sender, 20, &[0; 32], &answer),
            Err(AuthError::BadMac),
            "an answer is bound to its request"
        );
        assert_eq!(
            open_reply(key, addr("127.0.0.1:9"), route().sender, 20, &tag, &answer),
            Err(AuthError::BadMac),
            "and to its responder"
        );
    }

    #[test]
    fn the_tag_is_the_documented_hmac() {
        let key = [7u8; 32];
        let (sealed, tag) = seal_request(&key, &route(), &stamp(5), b"B");
        let mut m = HmacSha256::new_from_slice(&key).unwrap();
        m.update(b"dabs-control-v1\x00127.0.0.1:4001\x00127.0.0.1:4002\x00node-1\x00");
        m.update(&20u16.to_be_bytes());
        for n in [77u64, 1_000, 5, 50_000] {
            m.update(&n.to_be_bytes());
        }
        m.update(b"B");
        assert_eq!(m.finalize().into_bytes().as_slice(), &tag);
        let v: Value = ciborium::from_reader(&sealed[..]).unwrap();
        let keys: Vec<_> = v.as_map().unwrap().iter().map(|(k, _)| k.as_text().unwrap().to_owned()).collect();
        assert_eq!(keys, ["node", "st", "n", "t", "body", "mac"]);
    }

    #[test]
    fn counters_are_taken_once_per_run_in_any_order_within_the_window() {
        let mut g = ReplayGuard::default();
        for n in [3, 1, 2, 5] {
            assert_eq!(g.check(&stamp(n)), Ok(()), "{n}");
        }
        assert!(matches!(g.check(&stamp(2)), Err(AuthError::Replayed { .. })));
        assert!(matches!(g.check(&stamp(0)), Err(AuthError::Replayed { .. })));
        assert_eq!(g.check(&stamp(5 + REPLAY_WINDOW)), Ok(()));
        assert!(matches!(g.check(&stamp(5)), Err(AuthError::Replayed { .. })), "fell out of the window");
        assert_eq!(g.check(&stamp(4 + REPLAY_WINDOW)), Ok(()));
        // A new run starts over; the old one is refused from then on.
        assert_eq!(g.check(&Stamp { started_ms: 2_000, ..stamp(1) }), Ok(()));
        assert!(matches!(g.check(&stamp(9_999)), Err(AuthError::OldRun { .. })));
        // Another sender has its own counters.
        assert_eq!(g.check(&Stamp { node: "node-2".into(), ..stamp(1) }), Ok(()));
    }

    #[test]
    fn each_announcement_datagram_fits_and_is_bound_to_its_sender() {
        let key = [9u8; 32];
        let mut s = NodeStats::example("node-1234567", 100_000);
        s.mp = addr("127.0.0.1:4001");
        let sealed = seal_announcements(&key, s.mp, &s, 10_000).swap_remove(0);
        assert!(sealed.len() <= dabs_wire::single_capacity(true, 0), "{} bytes", sealed.len());
        let back = open_announcement(&key, s.mp, &sealed, 10_500).unwrap();
        assert_eq!((back.node.as_str(), back.mp), ("node-1234567", s.mp));
        assert!(!back.portions.is_empty());
        // Old readers still read the statistics: they are the first item, as before.
        assert_eq!(NodeStats::from_cbor(&sealed).unwrap(), back);
        assert_eq!(open_announcement(&key, addr("127.0.0.1:4002"), &sealed, 10_500), Err(AuthError::BadMac));
        assert_eq!(open_announcement(&[1; 32], s.mp, &sealed, 10_500), Err(AuthError::BadMac));
        assert!(matches!(open_announcement(&key, s.mp, &s.to_cbor(), 10_500), Err(AuthError::Malformed(_))));
        // Renamed: the statistics change under the tag.
        let mut renamed = NodeStats::from_cbor(&sealed).unwrap();
        renamed.node = "evil".into();
        let mut forged = renamed.to_cbor();
        forged.extend_from_slice(&sealed[NodeStats::from_cbor(&sealed).unwrap().to_cbor().len()..]);
        assert_eq!(open_announcement(&key, s.mp, &forged, 10_500), Err(AuthError::BadMac));
        // A member whose statistics name another address than it sends from.
        let elsewhere = seal_announcements(&key, addr("127.0.0.1:4002"), &s, 10_000).swap_remove(0);
        assert!(matches!(
            open_announcement(&key, addr("127.0.0.1:4002"), &elsewhere, 10_500),
            Err(AuthError::WrongSender { .. })
        ));

        let mut floor = AnnounceFloor::default();
        assert_eq!(floor.check(&back), Ok(true));
        assert_eq!(floor.check(&back), Ok(false), "the same part again: a duplicate");
        let second = NodeStats { part: Some(crate::records::Part { index: 1, count: 2 }), ..back.clone() };
        assert_eq!(floor.check(&second), Ok(true), "another part of the same announcement");
        let next = NodeStats { seq: back.seq + 1, ..back.clone() };
        assert_eq!(floor.check(&next), Ok(true));
        assert!(matches!(floor.check(&back), Err(AuthError::Replayed { .. })));
        let older_run = NodeStats { started_ms: back.started_ms - 1, seq: 1_000, ..back.clone() };
        assert!(matches!(floor.check(&older_run), Err(AuthError::OldRun { .. })));
        let restarted = NodeStats { started_ms: back.started_ms + 1, seq: 1, ..back };
        assert_eq!(floor.check(&restarted), Ok(true));
    }
}
