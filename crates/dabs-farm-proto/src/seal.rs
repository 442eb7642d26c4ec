//! `FAILOVER` (system command 8) and `DRAIN`, sealed with the farm secret.
//!
//! `FAILOVER` (system command 8): a server tells a client to move to an alternate, with a
//! message nobody without the farm's secret can forge (R-FO-3, shapes fixed by
//! `shared/spec/interop.md`).
//!
//! Payload: CBOR `{"body": B, "mac": M}` where `B` is the CBOR encoding of
//! `{"alternates": [{"addr", "va"}...], "nonce", "issued"}` and `M` is
//! HMAC-SHA256(secret, `"dabs-failover-v1" || server || 0x00 || client || 0x00 || B`), the two
//! addresses as `IP:port` text: the server's it is sent from, the client's it is sent to.

use ciborium::Value;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::SocketAddr;

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"dabs-failover-v1";

/// Where a client may go instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternate {
    /// The alternate server's MP address.
    pub addr: SocketAddr,
    /// Its portion's virtual address.
    pub va: String,
    /// Its MP WebSocket's address (its operator port, `"ws": "ws://IP:PORT/mp"`), for clients
    /// on that channel; `None` when it has no operator interface.
    pub ws: Option<SocketAddr>,
}

impl Alternate {
    /// An alternate at `addr` (MP over UDP, and TCP on the same port) with no WebSocket.
    pub fn at(addr: SocketAddr, va: impl Into<String>) -> Self {
        Self { addr, va: va.into(), ws: None }
    }
}

/// A verified (or to be sent) failover notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// Alternates, best first.
    pub alternates: Vec<Alternate>,
    /// Strictly increasing per server.
    pub nonce: u64,
    /// Unix ms when issued.
    pub issued: u64,
}

/// Why a `FAILOVER` was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailoverError {
    /// Not the documented shape.
    #[error("malformed FAILOVER: {0}")]
    Malformed(String),
    /// The MAC does not match: forged, or meant for another client or from another server.
    #[error("FAILOVER MAC does not verify (forged, or addressed to another client or from another server)")]
    BadMac,
    /// A nonce not above the last one accepted from that server.
    #[error("FAILOVER nonce {nonce} replayed (last accepted from this server: {last})")]
    Replayed {
        /// The nonce received.
        nonce: u64,
        /// The highest accepted before.
        last: u64,
    },
    /// Issued too long ago or too far in the future.
    #[error("FAILOVER issued {skew_ms} ms away from our clock, outside the {window_ms} ms window")]
    Stale {
        /// |now − issued|.
        skew_ms: u64,
        /// The accepted window.
        window_ms: u64,
    },
}

fn mac(secret: &[u8], server: SocketAddr, client: SocketAddr, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(DOMAIN);
    m.update(server.to_string().as_bytes());
    m.update(&[0]);
    m.update(client.to_string().as_bytes());
    m.update(&[0]);
    m.update(body);
    m
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
}

impl Failover {
    /// Encodes and authenticates the notice from `server` to `client`.
    pub fn seal(&self, secret: &[u8], server: SocketAddr, client: SocketAddr) -> Vec<u8> {
        let alternates = self
            .alternates
            .iter()
            .map(|a| {
                let mut m = vec![(text("addr"), text(&a.addr.to_string())), (text("va"), text(&a.va))];
                if let Some(ws) = a.ws {
                    m.push((text("ws"), text(&format!("ws://{ws}/mp"))));
                }
                Value::Map(m)
            })
            .collect();
        let body = Value::Map(vec![
            (text("alternates"), Value::Array(alternates)),
            (text("nonce"), Value::Integer(self.nonce.into())),
            (text("issued"), Value::Integer(self.issued.into())),
        ]);
        let mut b = Vec::new();
        ciborium::into_writer(&body, &mut b).expect("CBOR into a Vec cannot fail");
        let tag = mac(secret, server, client, &b).finalize().into_bytes().to_vec();
        let mut out = Vec::new();
        let outer = Value::Map(vec![(text("body"), Value::Bytes(b)), (text("mac"), Value::Bytes(tag))]);
        ciborium::into_writer(&outer, &mut out).expect("CBOR into a Vec cannot fail");
        out
    }

    /// Checks shape and MAC (constant-time) and decodes the notice; nonce and time are the
    /// [`FailoverVerifier`]'s business.
    pub fn open(
        payload: &[u8],
        secret: &[u8],
        server: SocketAddr,
        client: SocketAddr,
    ) -> Result<Self, FailoverError> {
        let bad = |m: &str| FailoverError::Malformed(m.to_owned());
        let outer: Value =
            ciborium::from_reader(payload).map_err(|e| FailoverError::Malformed(e.to_string()))?;
        let Value::Map(outer) = outer else { return Err(bad("payload is not a CBOR map")) };
        let body =
            get(&outer, "body").and_then(Value::as_bytes).ok_or_else(|| bad("no byte string \"body\""))?;
        let tag =
            get(&outer, "mac").and_then(Value::as_bytes).ok_or_else(|| bad("no byte string \"mac\""))?;
        mac(secret, server, client, body).verify_slice(tag).map_err(|_| FailoverError::BadMac)?;
        let inner: Value =
            ciborium::from_reader(&body[..]).map_err(|e| FailoverError::Malformed(e.to_string()))?;
        let Value::Map(inner) = inner else { return Err(bad("body is not a CBOR map")) };
        let uint = |k: &str| {
            get(&inner, k)
                .and_then(Value::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .ok_or_else(|| bad(&format!("no unsigned \"{k}\"")))
        };
        let (nonce, issued) = (uint("nonce")?, uint("issued")?);
        let list = get(&inner, "alternates")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no array \"alternates\""))?;
        let mut alternates = Vec::new();
        for a in list {
            let Value::Map(a) = a else { return Err(bad("an alternate is not a map")) };
            let addr = get(a, "addr")
                .and_then(Value::as_text)
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("an alternate has no \"addr\" IP:port"))?;
            let va = get(a, "va")
                .and_then(Value::as_text)
                .ok_or_else(|| bad("an alternate has no \"va\""))?
                .to_owned();
            // An optional WebSocket that cannot be read is left out, not a reason to refuse.
            let ws = get(a, "ws")
                .and_then(Value::as_text)
                .and_then(|t| t.strip_prefix("ws://"))
                .and_then(|t| t.strip_suffix("/mp"))
                .and_then(|t| t.parse().ok());
            alternates.push(Alternate { addr, va, ws });
        }
        Ok(Failover { alternates, nonce, issued })
    }
}

const DRAIN_DOMAIN: &[u8] = b"dabs-drain-v1";

fn drain_mac(secret: &[u8], node: SocketAddr, body: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(DRAIN_DOMAIN);
    m.update(node.to_string().as_bytes());
    m.update(&[0]);
    m.update(body);
    m
}

/// Seals an operator's `DRAIN` (or its undo) for `node`.
pub fn seal_drain(secret: &[u8], node: SocketAddr, drain: bool, nonce: u64, issued: u64) -> Vec<u8> {
    let body = Value::Map(vec![
        (text("drain"), Value::Bool(drain)),
        (text("nonce"), Value::Integer(nonce.into())),
        (text("issued"), Value::Integer(issued.into())),
    ]);
    let mut b = Vec::new();
    ciborium::into_writer(&body, &mut b).expect("CBOR into a Vec cannot fail");
    let tag = drain_mac(secret, node, &b).finalize().into_bytes().to_vec();
    let mut out = Vec::new();
    ciborium::into_writer(
        &Value::Map(vec![(text("body"), Value::Bytes(b)), (text("mac"), Value::Bytes(tag))]),
        &mut out,
    )
    .expect("CBOR into a Vec cannot fail");
    out
}

/// Why a `DRAIN` was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// Not the documented shape.
    #[error("malformed DRAIN: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: forged, or addressed to another node.
    #[error("DRAIN MAC does not verify (forged, or addressed to another node)")]
    BadMac,
    /// Issued too long ago or too far in the future.
    #[error("DRAIN issued {skew_ms} ms away from our clock, outside the {window_ms} ms window")]
    Stale {
        /// |now − issued|.
        skew_ms: u64,
        /// The accepted window.
        window_ms: u64,
    },
}

/// Verifies a `DRAIN` addressed to `node`; returns (drain, nonce). The caller checks the nonce
/// against the last one it accepted.
pub fn open_drain(
    payload: &[u8],
    secret: &[u8],
    node: SocketAddr,
    now_ms: u64,
    window_ms: u64,
) -> Result<(bool, u64), DrainError> {
    use DrainError::Malformed;
    let outer: Value = ciborium::from_reader(payload).map_err(|_| Malformed("not CBOR"))?;
    let Value::Map(outer) = outer else { return Err(Malformed("not a CBOR map")) };
    let body = get(&outer, "body").and_then(Value::as_bytes).ok_or(Malformed("no byte string \"body\""))?;
    let tag = get(&outer, "mac").and_then(Value::as_bytes).ok_or(Malformed("no byte string \"mac\""))?;
    drain_mac(secret, node, body).verify_slice(tag).map_err(|_| DrainError::BadMac)?;
    let inner: Value = ciborium::from_reader(&body[..]).map_err(|_| Malformed("body is not CBOR"))?;
    let Value::Map(inner) = inner else { return Err(Malformed("body is not a CBOR map")) };
    let drain = get(&inner, "drain").and_then(Value::as_bool).ok_or(Malformed("no boolean \"drain\""))?;
    let uint = |k: &str| get(&inner, k).and_then(Value::as_integer).and_then(|i| u64::try_from(i).ok());
    let nonce = uint("nonce").ok_or(Malformed("no unsigned \"nonce\""))?;
    let issued = uint("issued").ok_or(Malformed("no unsigned \"issued\""))?;
    let skew_ms = now_ms.abs_diff(issued);
    if skew_ms > window_ms {
        return Err(DrainError::Stale { skew_ms, window_ms });
    }
    Ok((drain, nonce))
}

/// A client's check of `FAILOVER` notices: MAC, nonce strictly increasing per server, and
/// `issued` within the window of its own clock.
#[derive(Clone, Debug)]
pub struct FailoverVerifier {
    secret: Vec<u8>,
    window_ms: u64,
    last_nonce: HashMap<SocketAddr, u64>,
    /// Notices refused so far (alerts).
    pub rejected: u64,
}

impl FailoverVerifier {
    /// A verifier for the farm secret, accepting notices issued within `window_ms` of now.
    pub fn new(secret: &[u8], window_ms: u64) -> Self {
        Self { secret: secret.to_vec(), window_ms, last_nonce: HashMap::new(), rejected: 0 }
    }

    /// Verifies a notice `server` sent to `client`, at `now_ms` (Unix). A refusal is counted
    /// and logged as an alert; the caller ignores the message.
    pub fn verify(
        &mut self,
        payload: &[u8],
        server: SocketAddr,
        client: SocketAddr,
        now_ms: u64,
    ) -> Result<Failover, FailoverError> {
        let result = self.check(payload, server, client, now_ms);
        if let Err(e) = &result {
            self.rejected += 1;
            tracing::warn!(%server, %client, error = %e, "FAILOVER rejected");
        }
        result
    }

    fn check(
        &mut self,
        payload: &[u8],
        server: SocketAddr,
        client: SocketAddr,
        now_ms: u64,
    ) -> Result<Failover, FailoverError> {
        let f = Failover::open(payload, &self.secret, server, client)?;
        let skew_ms = now_ms.abs_diff(f.issued);
        if skew_ms > self.window_ms {
            return Err(FailoverError::Stale { skew_ms, window_ms: self.window_ms });
        }
        let last = self.last_nonce.get(&server).copied();
        if let Some(last) = last
            && f.nonce <= last
        {
            return Err(FailoverError::Replayed { nonce: f.nonce, last });
        }
        self.last_nonce.insert(server, f.nonce);
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn notice(nonce: u64, issued: u64) -> Failover {
        Failover {
            alternates: vec![
                Alternate::at(addr("127.0.0.1:47102"), "mp://demo/calc/dasp/node-2-1"),
                Alternate {
                    addr: addr("127.0.0.1:47103"),
                    va: "mp://demo/calc/dasp/node-3-1".into(),
                    ws: Some(addr("127.0.0.1:8103")),
                },
            ],
            nonce,
            issued,
        }
    }

    #[test]
    fn a_sealed_notice_verifies_once() {
        let (server, client) = (addr("127.0.0.1:47101"), addr("127.0.0.1:50000"));
        let mut v = FailoverVerifier::new(SECRET, 5_000);
        let sealed = notice(1, 1_000_000).seal(SECRET, server, client);
        assert_eq!(v.verify(&sealed, server, client, 1_000_100), Ok(notice(1, 1_000_000)));
        // The same notice again is a replay.
        assert_eq!(
            v.verify(&sealed, server, client, 1_000_200),
            Err(FailoverError::Replayed { nonce: 1, last: 1 })
        );
        let next = notice(2, 1_000_300).seal(SECRET, server, client);
        assert!(v.verify(&next, server, client, 1_000_400).is_ok());
        assert_eq!(v.rejected, 1);
    }

    #[test]
    fn forged_misaddressed_and_stale_notices_are_refused() {
        let (server, client) = (addr("127.0.0.1:47101"), addr("127.0.0.1:50000"));
        let mut v = FailoverVerifier::new(SECRET, 5_000);
        let forged = notice(1, 1_000_000).seal(b"not the farm secret, not at all!", server, client);
        assert_eq!(v.verify(&forged, server, client, 1_000_000), Err(FailoverError::BadMac));
        let other_client = notice(1, 1_000_000).seal(SECRET, server, addr("127.0.0.1:50001"));
        assert_eq!(v.verify(&other_client, server, client, 1_000_000), Err(FailoverError::BadMac));
        let other_server = notice(1, 1_000_000).seal(SECRET, server, client);
        assert_eq!(
            v.verify(&other_server, addr("127.0.0.1:47999"), client, 1_000_000),
            Err(FailoverError::BadMac)
        );
        let stale = notice(1, 1_000_000).seal(SECRET, server, client);
        assert_eq!(
            v.verify(&stale, server, client, 1_010_000),
            Err(FailoverError::Stale { skew_ms: 10_000, window_ms: 5_000 })
        );
        let mut tampered = notice(1, 1_000_000).seal(SECRET, server, client);
        let n = tampered.len();
        tampered[n - 40] ^= 1;
        assert!(v.verify(&tampered, server, client, 1_000_000).is_err());
        assert!(matches!(v.verify(b"\xff", server, client, 0), Err(FailoverError::Malformed(_))));
        assert_eq!(v.rejected, 6);
    }

    #[test]
    fn drain_is_authenticated_and_addressed() {
        let node = addr("127.0.0.1:47101");
        let sealed = seal_drain(SECRET, node, true, 5, 1_000);
        assert_eq!(open_drain(&sealed, SECRET, node, 1_500, 30_000), Ok((true, 5)));
        assert_eq!(
            open_drain(&sealed, b"another secret entirely, 32 byte", node, 1_500, 30_000),
            Err(DrainError::BadMac)
        );
        assert_eq!(
            open_drain(&sealed, SECRET, addr("127.0.0.1:47102"), 1_500, 30_000),
            Err(DrainError::BadMac),
            "addressed to one node"
        );
        assert_eq!(
            open_drain(&sealed, SECRET, node, 100_000, 30_000),
            Err(DrainError::Stale { skew_ms: 99_000, window_ms: 30_000 })
        );
        assert!(matches!(open_drain(b"\xff", SECRET, node, 0, 1), Err(DrainError::Malformed(_))));
    }

    #[test]
    fn the_mac_input_is_the_documented_one() {
        // Recompute the MAC by hand from interop.md and compare with what seal() sent.
        let (server, client) = (addr("127.0.0.1:47101"), addr("127.0.0.1:50000"));
        let sealed = notice(7, 42).seal(SECRET, server, client);
        let outer: Value = ciborium::from_reader(&sealed[..]).unwrap();
        let Value::Map(m) = outer else { panic!() };
        let body = get(&m, "body").unwrap().as_bytes().unwrap().clone();
        let tag = get(&m, "mac").unwrap().as_bytes().unwrap().clone();
        let mut input = b"dabs-failover-v1".to_vec();
        input.extend_from_slice(b"127.0.0.1:47101\x00127.0.0.1:50000\x00");
        input.extend_from_slice(&body);
        let mut h = HmacSha256::new_from_slice(SECRET).unwrap();
        h.update(&input);
        assert_eq!(h.finalize().into_bytes().to_vec(), tag);
        assert_eq!(tag.len(), 32);
    }
}
