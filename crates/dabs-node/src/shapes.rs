//! CBOR payloads of the runtime's system commands, and the `OPEN_SESSION` shapes fixed by
//! `shared/spec/interop.md`.

use ciborium::Value;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

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
}

impl OpenAsk {
    /// Reads an `OPEN_SESSION` payload: a CBOR map with `app` (or `node`), optionally `va`.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let value: Value =
            ciborium::from_reader(payload).map_err(|e| format!("OPEN_SESSION payload is not CBOR: {e}"))?;
        let Value::Map(entries) = value else {
            return Err("OPEN_SESSION payload is not a CBOR map".into());
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
                    return Err(format!("OPEN_SESSION key {key:?} must be text"));
                }
                _ => {}
            }
        }
        if ask.app.is_none() && ask.node.is_none() {
            return Err("OPEN_SESSION payload has no text key \"app\"".into());
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
        cbor(&Value::Map(m))
    }
}

/// The REPLY payload of `OPEN_SESSION`: `va`, `addr`, `queue`, `security`.
pub fn open_reply(va: &str, addr: SocketAddr, queue: u16) -> Vec<u8> {
    cbor(&Value::Map(vec![
        (Value::Text("va".into()), Value::Text(va.into())),
        (Value::Text("addr".into()), Value::Text(addr.to_string())),
        (Value::Text("queue".into()), Value::Integer(queue.into())),
        (Value::Text("security".into()), Value::Null),
    ]))
}

/// The `va`, `addr` and `queue` of an `OPEN_SESSION` REPLY.
pub fn parse_open_reply(payload: &[u8]) -> Result<(String, SocketAddr, u16), String> {
    let value: Value =
        ciborium::from_reader(payload).map_err(|e| format!("OPEN_SESSION reply is not CBOR: {e}"))?;
    let get = |key: &str| match &value {
        Value::Map(m) => m.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v.clone()),
        _ => None,
    };
    let va = get("va").and_then(|v| v.into_text().ok()).ok_or("OPEN_SESSION reply has no text \"va\"")?;
    let addr = get("addr")
        .and_then(|v| v.into_text().ok())
        .and_then(|t| t.parse().ok())
        .ok_or("OPEN_SESSION reply has no \"addr\" IP:port")?;
    let queue = get("queue")
        .and_then(|v| v.as_integer())
        .and_then(|i| u16::try_from(i).ok())
        .ok_or("OPEN_SESSION reply has no \"queue\"")?;
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

/// Encodes any serializable value as CBOR.
pub fn cbor<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

/// Decodes CBOR into `T`, naming what was expected on failure.
pub fn from_cbor<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| format!("malformed {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_shapes_round_trip() {
        let ask = OpenAsk {
            app: Some("calc".into()),
            va: Some("mp://f/calc/dasp/1".into()),
            node: None,
            class: Some("gold".into()),
            group: None,
        };
        assert_eq!(OpenAsk::parse(&ask.to_cbor()).unwrap(), ask);
        assert!(OpenAsk::parse(&cbor(&Value::Map(vec![]))).unwrap_err().contains("\"app\""));
        assert!(OpenAsk::parse(b"\xff").is_err());
        let reply = open_reply("mp://f/calc/dasp/1", "127.0.0.1:5".parse().unwrap(), 16);
        assert_eq!(
            parse_open_reply(&reply).unwrap(),
            ("mp://f/calc/dasp/1".into(), "127.0.0.1:5".parse().unwrap(), 16)
        );
    }
}
