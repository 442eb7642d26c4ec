//! CBOR payloads of the runtime's system commands, and the `OPEN_SESSION` shapes fixed by
//! `shared/spec/interop.md`.

use ciborium::Value;
use dabs_proto::{SECURITY_SPEC, SECURITY_SPEC_NK, SecuritySpec};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Why a system command's payload could not be read: what was expected, where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The bytes are not CBOR at all.
    #[error("{what} is not CBOR: {detail}")]
    NotCbor {
        /// The payload it should have been.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// CBOR, but not the map the shape is.
    #[error("{what} is not a CBOR map")]
    NotAMap {
        /// The payload or part of it.
        what: String,
    },
    /// A key holds a value of the wrong type.
    #[error("{what}: {key:?} must be {expected}")]
    WrongType {
        /// The payload or part of it.
        what: String,
        /// The key.
        key: String,
        /// What it must hold.
        expected: &'static str,
    },
    /// An unsigned integer key holds a negative number.
    #[error("{what}: {key:?} is negative")]
    Negative {
        /// The payload or part of it.
        what: String,
        /// The key.
        key: &'static str,
    },
    /// A required key is missing (or unreadable).
    #[error("{what} has no {expected} {key:?}")]
    Missing {
        /// The payload.
        what: &'static str,
        /// The key.
        key: &'static str,
        /// What it must hold.
        expected: &'static str,
    },
    /// A serde-shaped payload (`ASSIGN`, `RESOLVE_VA`, statistics…) did not decode.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The payload it should have been.
        what: String,
        /// The decoder's complaint.
        detail: String,
    },
}

/// Why a server refuses a client's security offer; answered with NAK 13.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecurityRefusal {
    /// This server does not accept encrypted sessions.
    #[error("encryption is turned off here (accept_encryption = false)")]
    TurnedOff,
    /// The client offered only specifications this server does not implement.
    #[error(
        "none of the {offered} offered security specifications is implemented here (this server \
         offers {}-bit {} keyed by {})",
        SECURITY_SPEC.key_size,
        SECURITY_SPEC.cipher,
        SECURITY_SPEC.key_exchange
    )]
    NoneImplemented {
        /// How many specifications were offered.
        offered: usize,
    },
}

/// What an `OPEN_SESSION` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OpenAsk {
    /// The application (`app`), for a client.
    pub app: Option<String>,
    /// The portion the client had (`va`), when it comes back after a move.
    pub va: Option<String>,
    /// The asking node (`node`), for node-to-node sessions.
    pub node: Option<String>,
    /// The client's class (`class`): its own failover and connection thresholds.
    pub class: Option<String>,
    /// The client's device group (`group`): which clients are deferred first.
    pub group: Option<String>,
    /// The client's security offer (`security`): the encryption specifications it accepts,
    /// best first. `None`: no offer, the session stays in clear.
    pub security: Option<Vec<SecurityOffer>>,
    /// What the client's device offers (`device`), for placing mutable modules (R-CL-2).
    pub device: Option<crate::modules::Device>,
}

/// One encryption specification as a CBOR map with the keys of [`SecuritySpec`]: offered by
/// a client in `OPEN_SESSION`, or chosen by the server in its REPLY. Keys a sender leaves
/// out are `None`; keys this version does not know are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SecurityOffer {
    /// `key_size`: bits of each transport key.
    pub key_size: Option<u64>,
    /// `key_exchange`: the key-exchange technique (a Noise protocol name).
    pub key_exchange: Option<String>,
    /// `cipher`: the per-datagram cipher.
    pub cipher: Option<String>,
    /// `signature`: what authenticates each datagram.
    pub signature: Option<String>,
}

impl SecurityOffer {
    /// `spec` with all four keys.
    pub fn of(spec: &SecuritySpec) -> Self {
        Self {
            key_size: Some(spec.key_size.into()),
            key_exchange: Some(spec.key_exchange.into()),
            cipher: Some(spec.cipher.into()),
            signature: Some(spec.signature.into()),
        }
    }

    /// Whether this names `spec`: key size, key exchange and cipher equal; the signature equal
    /// or left out (it follows from the cipher, and its text is descriptive).
    pub fn matches(&self, spec: &SecuritySpec) -> bool {
        self.key_size == Some(spec.key_size.into())
            && self.key_exchange.as_deref() == Some(spec.key_exchange)
            && self.cipher.as_deref() == Some(spec.cipher)
            && self.signature.as_deref().is_none_or(|s| s == spec.signature)
    }

    fn to_value(&self) -> Value {
        let mut m = Vec::new();
        if let Some(bits) = self.key_size {
            m.push((Value::Text("key_size".into()), Value::Integer(bits.into())));
        }
        for (k, v) in
            [("key_exchange", &self.key_exchange), ("cipher", &self.cipher), ("signature", &self.signature)]
        {
            if let Some(v) = v {
                m.push((Value::Text(k.into()), Value::Text(v.clone())));
            }
        }
        Value::Map(m)
    }

    fn from_value(value: Value, what: &str) -> Result<Self, ShapeError> {
        let Value::Map(entries) = value else {
            return Err(ShapeError::NotAMap { what: what.into() });
        };
        let mut offer = SecurityOffer::default();
        for (k, v) in entries {
            match (k.as_text(), v) {
                (Some("key_size"), Value::Integer(i)) => {
                    offer.key_size = Some(
                        u64::try_from(i)
                            .map_err(|_| ShapeError::Negative { what: what.into(), key: "key_size" })?,
                    );
                }
                (Some("key_exchange"), Value::Text(t)) => offer.key_exchange = Some(t),
                (Some("cipher"), Value::Text(t)) => offer.cipher = Some(t),
                (Some("signature"), Value::Text(t)) => offer.signature = Some(t),
                (Some("key_size"), _) => {
                    return Err(ShapeError::WrongType {
                        what: what.into(),
                        key: "key_size".into(),
                        expected: "an unsigned integer",
                    });
                }
                (Some(key @ ("key_exchange" | "cipher" | "signature")), _) => {
                    return Err(ShapeError::WrongType {
                        what: what.into(),
                        key: key.into(),
                        expected: "text",
                    });
                }
                _ => {}
            }
        }
        Ok(offer)
    }
}

/// The security a server agrees to for an `OPEN_SESSION` with security offer `offer`:
/// `Ok(None)` without an offer (a clear session), `Ok(Some(spec))` for the first offered
/// specification it implements, or the reason it refuses — encryption is turned
/// off here (`accept_encryption` false), or no offered specification is implemented. A
/// refusal is answered with NAK 13 ([`dabs_wire::NakCode::EncryptionRefused`]): an offer is
/// a demand, the client never falls back to clear by itself.
pub fn negotiate_security(
    offer: Option<&[SecurityOffer]>,
    accept_encryption: bool,
) -> Result<Option<SecuritySpec>, SecurityRefusal> {
    let Some(offer) = offer else {
        return Ok(None);
    };
    if !accept_encryption {
        return Err(SecurityRefusal::TurnedOff);
    }
    // The first offered map naming NN or NK (the client pinned the farm's key; the endpoint
    // refuses NK with NAK 13 when it holds no static key).
    for o in offer {
        if let Some(spec) = [SECURITY_SPEC, SECURITY_SPEC_NK].into_iter().find(|spec| o.matches(spec)) {
            return Ok(Some(spec));
        }
    }
    Err(SecurityRefusal::NoneImplemented { offered: offer.len() })
}

fn read_cbor(payload: &[u8], what: &'static str) -> Result<Value, ShapeError> {
    ciborium::from_reader(payload).map_err(|e| ShapeError::NotCbor { what, detail: e.to_string() })
}

impl OpenAsk {
    /// Reads an `OPEN_SESSION` payload: a CBOR map with `app` (or `node`), optionally `va`.
    pub fn parse(payload: &[u8]) -> Result<Self, ShapeError> {
        const WHAT: &str = "OPEN_SESSION payload";
        let Value::Map(entries) = read_cbor(payload, WHAT)? else {
            return Err(ShapeError::NotAMap { what: WHAT.into() });
        };
        let mut ask = OpenAsk::default();
        for (k, v) in entries {
            match (k.as_text(), v) {
                (Some("app"), Value::Text(t)) => ask.app = Some(t),
                (Some("va"), Value::Text(t)) => ask.va = Some(t),
                (Some("node"), Value::Text(t)) => ask.node = Some(t),
                (Some("class"), Value::Text(t)) => ask.class = Some(t),
                (Some("group"), Value::Text(t)) => ask.group = Some(t),
                (Some(key @ ("app" | "va" | "node" | "class" | "group")), _) => {
                    return Err(ShapeError::WrongType {
                        what: WHAT.into(),
                        key: key.into(),
                        expected: "text",
                    });
                }
                (Some("device"), Value::Null) => ask.device = None,
                (Some("device"), v) => ask.device = Some(crate::modules::Device::from_value(v)?),
                (Some("security"), Value::Null) => ask.security = None,
                (Some("security"), v @ Value::Map(_)) => {
                    ask.security = Some(vec![SecurityOffer::from_value(v, "OPEN_SESSION security offer")?]);
                }
                (Some("security"), Value::Array(list)) => {
                    let offers = list
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| {
                            SecurityOffer::from_value(v, &format!("OPEN_SESSION security offer {i}"))
                        })
                        .collect::<Result<_, _>>()?;
                    ask.security = Some(offers);
                }
                (Some("security"), _) => {
                    return Err(ShapeError::WrongType {
                        what: WHAT.into(),
                        key: "security".into(),
                        expected: "null, a map or an array of maps",
                    });
                }
                _ => {}
            }
        }
        if ask.app.is_none() && ask.node.is_none() {
            return Err(ShapeError::Missing { what: WHAT, key: "app", expected: "text key" });
        }
        Ok(ask)
    }

    /// Encodes the ask.
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut m = Vec::new();
        let keys = [
            ("app", &self.app),
            ("va", &self.va),
            ("node", &self.node),
            ("class", &self.class),
            ("group", &self.group),
        ];
        for (k, v) in keys {
            if let Some(v) = v {
                m.push((Value::Text(k.into()), Value::Text(v.clone())));
            }
        }
        if let Some(d) = &self.device {
            m.push((Value::Text("device".into()), d.to_value()));
        }
        // One specification goes as a map, several as a list, best first.
        match self.security.as_deref() {
            None => {}
            Some([one]) => m.push((Value::Text("security".into()), one.to_value())),
            Some(list) => m.push((
                Value::Text("security".into()),
                Value::Array(list.iter().map(SecurityOffer::to_value).collect()),
            )),
        }
        cbor(&Value::Map(m))
    }
}

/// The REPLY payload of `OPEN_SESSION`: `va`, `addr`, `queue`, `security` (null).
pub fn open_reply(va: &str, addr: SocketAddr, queue: u16) -> Vec<u8> {
    open_reply_secured(va, addr, queue, None)
}

/// The REPLY payload of `OPEN_SESSION` with the chosen encryption specification in
/// `security` (null for a clear session).
pub fn open_reply_secured(
    va: &str,
    addr: SocketAddr,
    queue: u16,
    security: Option<&SecuritySpec>,
) -> Vec<u8> {
    open_reply_with_channels(va, addr, queue, security, &[], &[])
}

/// The REPLY payload of `OPEN_SESSION` naming, under `channels`, the server's address for
/// each channel it accepts beside UDP (interop.md: `"udp"`, `"tcp"`, `"ws"` to `"IP:port"` or
/// a URL); left out when `channels` is empty. `placement` says where each of the
/// application's mutable modules runs for this client (`"placement"`: name to `"client"` or
/// `"server"`); left out when empty.
pub fn open_reply_with_channels(
    va: &str,
    addr: SocketAddr,
    queue: u16,
    security: Option<&SecuritySpec>,
    channels: &[(&str, String)],
    placement: &[(String, crate::modules::Placement)],
) -> Vec<u8> {
    let security = security.map_or(Value::Null, |s| SecurityOffer::of(s).to_value());
    let mut entries = vec![
        (Value::Text("va".into()), Value::Text(va.into())),
        (Value::Text("addr".into()), Value::Text(addr.to_string())),
        (Value::Text("queue".into()), Value::Integer(queue.into())),
        (Value::Text("security".into()), security),
    ];
    if !channels.is_empty() {
        let map = channels.iter().map(|(k, v)| (Value::Text((*k).into()), Value::Text(v.clone()))).collect();
        entries.push((Value::Text("channels".into()), Value::Map(map)));
    }
    if !placement.is_empty() {
        let map =
            placement.iter().map(|(k, p)| (Value::Text(k.clone()), Value::Text(p.as_str().into()))).collect();
        entries.push((Value::Text("placement".into()), Value::Map(map)));
    }
    cbor(&Value::Map(entries))
}

/// The `placement` of an `OPEN_SESSION` REPLY: where each mutable module runs (empty when the
/// server names none; a value other than `"client"` means the server).
pub fn parse_open_placement(payload: &[u8]) -> Result<Vec<(String, crate::modules::Placement)>, ShapeError> {
    Ok(text_map(payload, "placement")?
        .into_iter()
        .map(|(k, v)| {
            let p = if v == "client" {
                crate::modules::Placement::Client
            } else {
                crate::modules::Placement::Server
            };
            (k, p)
        })
        .collect())
}

/// A map of text to text under `key` in an `OPEN_SESSION` REPLY (empty when missing).
fn text_map(payload: &[u8], key: &str) -> Result<Vec<(String, String)>, ShapeError> {
    let Value::Map(entries) = read_cbor(payload, OPEN_REPLY)? else {
        return Err(ShapeError::NotAMap { what: OPEN_REPLY.into() });
    };
    let Some(Value::Map(map)) = entries.into_iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v)
    else {
        return Ok(Vec::new());
    };
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| Some((k.as_text()?.to_owned(), v.as_text()?.to_owned())))
        .collect())
}

/// The `channels` of an `OPEN_SESSION` REPLY: each channel's name and address (empty when
/// the server names none; entries that are not text are skipped).
pub fn parse_open_channels(payload: &[u8]) -> Result<Vec<(String, String)>, ShapeError> {
    text_map(payload, "channels")
}

const OPEN_REPLY: &str = "OPEN_SESSION reply";

/// The `security` of an `OPEN_SESSION` REPLY: the specification the server chose, or `None`
/// when it is null or missing (a clear session).
pub fn parse_open_security(payload: &[u8]) -> Result<Option<SecurityOffer>, ShapeError> {
    let Value::Map(entries) = read_cbor(payload, OPEN_REPLY)? else {
        return Err(ShapeError::NotAMap { what: OPEN_REPLY.into() });
    };
    match entries.into_iter().find(|(k, _)| k.as_text() == Some("security")).map(|(_, v)| v) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => SecurityOffer::from_value(v, "OPEN_SESSION reply \"security\"").map(Some),
    }
}

/// The `va`, `addr` and `queue` of an `OPEN_SESSION` REPLY.
pub fn parse_open_reply(payload: &[u8]) -> Result<(String, SocketAddr, u16), ShapeError> {
    let value = read_cbor(payload, OPEN_REPLY)?;
    let missing = |key, expected| ShapeError::Missing { what: OPEN_REPLY, key, expected };
    let get = |key: &str| match &value {
        Value::Map(m) => m.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v.clone()),
        _ => None,
    };
    let va = get("va").and_then(|v| v.into_text().ok()).ok_or_else(|| missing("va", "text"))?;
    let addr = get("addr")
        .and_then(|v| v.into_text().ok())
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| missing("addr", "IP:port"))?;
    let queue = get("queue")
        .and_then(|v| v.as_integer())
        .and_then(|i| u16::try_from(i).ok())
        .ok_or_else(|| missing("queue", "queue number"))?;
    Ok((va, addr, queue))
}

/// `ASSIGN`: the decider's instruction to answer a client's open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    /// The client's address.
    pub client: SocketAddr,
    /// Its transaction.
    pub tx: u8,
    /// Its stamp, ms within the hour.
    pub stamp: u32,
    /// Its queue.
    pub src: u16,
    /// Whether it used a CRC.
    pub crc: bool,
    /// The application.
    pub app: String,
    /// The portion to use or to start under this address.
    pub va: Option<String>,
    /// Start a new portion rather than use one with room.
    pub start_new: bool,
    /// No server admits new clients (all starving or slow): admit this one anyway unless
    /// draining or stopping.
    #[serde(default)]
    pub overflow: bool,
    /// The client's class, if it named one.
    #[serde(default)]
    pub class: Option<String>,
    /// The client's device group, if it named one.
    #[serde(default)]
    pub group: Option<String>,
    /// The client's security offer was accepted: the chosen node answers with the encryption
    /// specification (or refuses with NAK 13 if it does not accept encryption). Absent from
    /// an older decider: the REPLY says null and an encrypting client gives up.
    #[serde(default)]
    pub security: bool,
    /// With `security`: the client pinned the farm's key, so the session is keyed with Noise
    /// NK and the REPLY names that specification. Absent from an older decider: NN.
    #[serde(default)]
    pub pinned: bool,
    /// The deciding node's fencing token (the creation revision of its key in etcd's
    /// election); under the etcd registry a node refuses an `ASSIGN` whose token is older
    /// than the newest it has seen. Absent under multicast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    /// What the client's device offers, for placing mutable modules.
    #[serde(default)]
    pub device: Option<crate::modules::Device>,
}

/// `RESOLVE_VA` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// The virtual address asked about.
    pub va: String,
    /// The hosting node's MP address.
    pub addr: SocketAddr,
    /// The portion's queue there.
    pub queue: u16,
    /// The hosting node's name.
    pub node: String,
}

/// `MEASURE` request: the address whose round trip the asked node measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    /// The address probed (a resolver, or a host of a client's network).
    pub target: std::net::IpAddr,
}

/// `MEASURE` answer: the round trip the node measured to the target, or why it has none (an
/// answer, not a NAK: the probe failing is news about the target, not about the session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measured {
    /// The shortest of its probes' round trips, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u32>,
    /// Why there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Encodes any serializable value as CBOR.
pub fn cbor<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

/// Decodes CBOR into `T`, naming what was expected on failure.
pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, ShapeError> {
    ciborium::from_reader(bytes)
        .map_err(|e| ShapeError::Malformed { what: what.into(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_shapes_round_trip() {
        let ask = OpenAsk {
            app: Some("calc".into()),
            va: Some("mp://f/calc/dasp/1".into()),
            class: Some("gold".into()),
            ..Default::default()
        };
        assert_eq!(OpenAsk::parse(&ask.to_cbor()).unwrap(), ask);
        assert!(OpenAsk::parse(&cbor(&Value::Map(vec![]))).unwrap_err().to_string().contains("\"app\""));
        assert!(OpenAsk::parse(b"\xff").is_err());
        let reply = open_reply("mp://f/calc/dasp/1", "127.0.0.1:5".parse().unwrap(), 16);
        assert_eq!(
            parse_open_reply(&reply).unwrap(),
            ("mp://f/calc/dasp/1".into(), "127.0.0.1:5".parse().unwrap(), 16)
        );
        assert_eq!(parse_open_security(&reply), Ok(None));
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (Value::Text(k.into()), v)).collect())
    }

    fn ask_with(security: Value) -> Result<OpenAsk, ShapeError> {
        OpenAsk::parse(&cbor(&map(vec![("app", Value::Text("calc".into())), ("security", security)])))
    }

    #[test]
    fn security_offers_parse_as_a_map_a_list_or_null() {
        let ours = SecurityOffer::of(&SECURITY_SPEC);
        let ask =
            OpenAsk { app: Some("calc".into()), security: Some(vec![ours.clone()]), ..Default::default() };
        assert_eq!(OpenAsk::parse(&ask.to_cbor()).unwrap(), ask);
        let two = OpenAsk {
            security: Some(vec![SecurityOffer { cipher: Some("AES-256-GCM".into()), ..ours.clone() }, ours]),
            ..ask.clone()
        };
        assert_eq!(OpenAsk::parse(&two.to_cbor()).unwrap(), two);
        assert_eq!(ask_with(Value::Null).unwrap().security, None);
        // Unknown keys, in the offer and around it, are ignored.
        let extra = ask_with(map(vec![
            ("cipher", Value::Text("ChaCha20-Poly1305".into())),
            ("rekey_after", Value::Integer(5.into())),
        ]))
        .unwrap();
        assert_eq!(extra.security.unwrap()[0].cipher.as_deref(), Some("ChaCha20-Poly1305"));
        for (bad, needle) in [
            (Value::Bool(true), "must be null, a map or an array of maps"),
            (Value::Array(vec![Value::Integer(1.into())]), "offer 0 is not a CBOR map"),
            (map(vec![("key_size", Value::Text("256".into()))]), "\"key_size\" must be an unsigned integer"),
            (map(vec![("key_size", Value::Integer((-1).into()))]), "negative"),
            (map(vec![("cipher", Value::Integer(1.into()))]), "\"cipher\" must be text"),
        ] {
            let err = ask_with(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn the_server_picks_the_offered_spec_it_implements_or_refuses() {
        let ours = SecurityOffer::of(&SECURITY_SPEC);
        assert_eq!(negotiate_security(None, true), Ok(None));
        assert_eq!(negotiate_security(None, false), Ok(None), "a clear client is served either way");
        assert_eq!(negotiate_security(Some(std::slice::from_ref(&ours)), true), Ok(Some(SECURITY_SPEC)));
        let refused = negotiate_security(Some(std::slice::from_ref(&ours)), false).unwrap_err().to_string();
        assert!(refused.contains("turned off"), "{refused}");
        let other = SecurityOffer { cipher: Some("AES-256-GCM".into()), ..ours.clone() };
        let none = negotiate_security(Some(std::slice::from_ref(&other)), true).unwrap_err().to_string();
        assert!(none.contains("none of the 1 offered") && none.contains("ChaCha20-Poly1305"), "{none}");
        assert_eq!(negotiate_security(Some(&[other, ours.clone()]), true), Ok(Some(SECURITY_SPEC)));
        // The descriptive signature may be left out; the other three keys may not.
        let short = SecurityOffer { signature: None, ..ours.clone() };
        assert_eq!(negotiate_security(Some(&[short]), true), Ok(Some(SECURITY_SPEC)));
        let no_size = SecurityOffer { key_size: None, ..ours };
        assert!(negotiate_security(Some(&[no_size]), true).is_err());
        assert!(negotiate_security(Some(&[]), true).is_err(), "an empty offer names nothing");
    }

    #[test]
    fn the_reply_names_its_channels_only_when_it_has_some() {
        let addr: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let plain = open_reply("mp://f/calc/dasp/1", addr, 16);
        assert!(parse_open_channels(&plain).unwrap().is_empty());
        let both = [("udp", "127.0.0.1:5".to_owned()), ("tcp", "127.0.0.1:5".to_owned())];
        let reply = open_reply_with_channels("mp://f/calc/dasp/1", addr, 16, None, &both, &[]);
        assert_eq!(parse_open_reply(&reply).unwrap(), ("mp://f/calc/dasp/1".into(), addr, 16));
        assert_eq!(
            parse_open_channels(&reply).unwrap(),
            vec![("udp".to_owned(), "127.0.0.1:5".to_owned()), ("tcp".to_owned(), "127.0.0.1:5".to_owned())]
        );
        assert!(matches!(parse_open_channels(b"\x01"), Err(ShapeError::NotAMap { .. })));
    }

    #[test]
    fn the_reply_carries_the_chosen_spec() {
        let addr: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let reply = open_reply_secured("mp://f/calc/dasp/1", addr, 16, Some(&SECURITY_SPEC));
        assert_eq!(parse_open_reply(&reply).unwrap(), ("mp://f/calc/dasp/1".into(), addr, 16));
        let chosen = parse_open_security(&reply).unwrap().expect("a spec");
        assert_eq!(chosen, SecurityOffer::of(&SECURITY_SPEC));
        assert!(chosen.matches(&SECURITY_SPEC));
        let Value::Map(entries) = ciborium::from_reader::<Value, _>(&reply[..]).unwrap() else { panic!() };
        let security = entries.iter().find(|(k, _)| k.as_text() == Some("security")).unwrap();
        assert_eq!(
            security.1,
            map(vec![
                ("key_size", Value::Integer(256.into())),
                ("key_exchange", Value::Text("Noise_NN_25519_ChaChaPoly_BLAKE2s".into())),
                ("cipher", Value::Text("ChaCha20-Poly1305".into())),
                ("signature", Value::Text(SECURITY_SPEC.signature.into())),
            ]),
            "the map docs/protocol.md shows"
        );
        assert!(parse_open_security(&cbor(&map(vec![("security", Value::Bool(true))]))).is_err());
        assert!(parse_open_security(b"\xff").is_err());
    }

    #[test]
    fn an_assign_from_an_older_decider_asks_for_no_security() {
        // ASSIGN as a decider without encryption support writes it.
        #[derive(Serialize)]
        struct OldAssign {
            client: SocketAddr,
            tx: u8,
            stamp: u32,
            src: u16,
            crc: bool,
            app: String,
            va: Option<String>,
            start_new: bool,
            overflow: bool,
        }
        let old = OldAssign {
            client: "127.0.0.1:9".parse().unwrap(),
            tx: 1,
            stamp: 5,
            src: 1,
            crc: true,
            app: "calc".into(),
            va: None,
            start_new: false,
            overflow: true,
        };
        let a: Assign = from_cbor(&cbor(&old), "ASSIGN").unwrap();
        assert!(!a.security && a.overflow);
    }
}
