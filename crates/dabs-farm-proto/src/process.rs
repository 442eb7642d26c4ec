//! Portions as processes: the contract between a node and a server portion it runs as a
//! program of its own, in any language.
//!
//! The node starts the program with the environment named here, and talks to it over the
//! host's local socket partition: MP datagrams on Unix datagram sockets, with no ACK/NAK and
//! replies still timed (R-MP-6). The node opens one *control* session and one *client*
//! session per client of the portion; a client's requests travel on its session unchanged
//! and the portion's REPLY or NAK goes back to the client unchanged. docs/protocol.md
//! ("Portions as processes") is the same contract in prose, for other languages.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where the portion binds its Unix datagram socket (at most 100 bytes).
pub const ENV_SOCKET: &str = "DABS_PORTION_SOCKET";
/// The node's Unix datagram socket: the source of everything the node sends.
pub const ENV_NODE_SOCKET: &str = "DABS_NODE_SOCKET";
/// The application's name.
pub const ENV_APP: &str = "DABS_APP";
/// The portion's virtual address.
pub const ENV_VA: &str = "DABS_VA";
/// The node's name.
pub const ENV_NODE: &str = "DABS_NODE";
/// The node's lock/timer time-outs, `resource=ms` pairs separated by commas.
pub const ENV_TIMEOUTS: &str = "DABS_TIMEOUTS";

/// The queue a portion accepts client sessions on.
pub const CLIENT_QUEUE: u16 = 1;
/// The queue a portion accepts the control session on.
pub const CONTROL_QUEUE: u16 = 2;

/// Control command: report your figures ([`Status`]); MP's `GET_STATISTICS`. The node sends
/// one every [`STATUS_EVERY`]; the answer is also the portion's heartbeat.
pub const STATUS: u16 = 4;
/// Control command: shut down ([`ShutdownAsk`]); MP's `SHUTDOWN`. Answer once your loop has
/// stopped, then exit.
pub const SHUTDOWN: u16 = 3;

/// How often the node asks for [`Status`].
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// A portion that hears nothing on its control session for this long assumes its node died,
/// and exits.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// The NAK a client gets for a request in flight when its portion process died: the request
/// may or may not have run (an application-range number, so no MP code changes meaning).
pub const NAK_OUTCOME_UNKNOWN: u16 = 0xFFFF;

/// Which session an `OPEN_SESSION` from the node opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The one control session.
    Control,
    /// One client of the portion.
    Client,
}

/// The `OPEN_SESSION` payload the node sends to a portion process (CBOR map).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpen {
    /// The application (every `OPEN_SESSION` names one).
    pub app: String,
    /// Control or client.
    pub role: Role,
    /// For a client: its MP address as text (`udp:IP:PORT`, …), for the portion's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// The answer to [`STATUS`] (CBOR map).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The portion's own description of its state.
    pub state: String,
    /// Client sessions it has now.
    pub clients: u64,
    /// Requests it has handled since it started.
    pub handled: u64,
    /// Resources whose lock or timer timed out since the last [`Status`] (starvation).
    #[serde(default)]
    pub timeouts: Vec<String>,
    /// Errors since the last [`Status`], for the operator.
    #[serde(default)]
    pub errors: Vec<String>,
    /// Its status objects' figures now (seed 003), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<(String, f64)>,
    /// Status objects whose read failed, `name: reason`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figure_faults: Vec<String>,
}

impl Status {
    /// Reads every status object in `objects` into [`Status::figures`] and
    /// [`Status::figure_faults`].
    pub fn read_figures(&mut self, objects: &crate::status::StatusObjects) {
        self.figures.clear();
        self.figure_faults.clear();
        for (name, object) in objects.all() {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.read())) {
                Ok(Ok(v)) if v.is_finite() => self.figures.push((name, v)),
                Ok(Ok(v)) => self.figure_faults.push(format!("{name}: not a number ({v})")),
                Ok(Err(why)) => self.figure_faults.push(format!("{name}: {why}")),
                Err(_) => self.figure_faults.push(format!("{name}: panicked")),
            }
        }
    }
}

/// The [`SHUTDOWN`] payload (CBOR map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownAsk {
    /// Stop now (true) or after finishing pending work (false).
    pub emergency: bool,
}

/// Encodes a contract value as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR into a Vec cannot fail");
    out
}

/// Decodes a contract value, with what was wrong in words.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, String> {
    ciborium::from_reader(payload).map_err(|e| format!("not the expected CBOR map: {e}"))
}

/// `resource=ms,...` for [`ENV_TIMEOUTS`].
pub fn format_timeouts(timeouts: &std::collections::BTreeMap<String, Duration>) -> String {
    timeouts.iter().map(|(k, v)| format!("{k}={}", v.as_millis())).collect::<Vec<_>>().join(",")
}

/// Reads [`ENV_TIMEOUTS`]; a malformed pair is an error naming it.
pub fn parse_timeouts(text: &str) -> Result<std::collections::BTreeMap<String, Duration>, String> {
    let mut out = std::collections::BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not resource=ms"))?;
        let ms: u64 = v.parse().map_err(|_| format!("{pair:?}: {v:?} is not a number of ms"))?;
        out.insert(k.to_owned(), Duration::from_millis(ms));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_payload_is_a_map_with_app() {
        let open = SessionOpen { app: "kv".into(), role: Role::Client, client: Some("udp:1.2.3.4:5".into()) };
        let value: ciborium::Value = ciborium::from_reader(&encode(&open)[..]).unwrap();
        let map = value.as_map().unwrap();
        let key = |k: &str| map.iter().find(|(n, _)| n.as_text() == Some(k)).map(|(_, v)| v.clone());
        assert_eq!(key("app").unwrap().as_text(), Some("kv"));
        assert_eq!(key("role").unwrap().as_text(), Some("client"));
        assert_eq!(decode::<SessionOpen>(&encode(&open)).unwrap(), open);
    }

    #[test]
    fn timeouts_round_trip_and_refuse_garbage() {
        let t = std::collections::BTreeMap::from([
            ("default".to_owned(), Duration::from_millis(250)),
            ("db".to_owned(), Duration::from_secs(2)),
        ]);
        assert_eq!(parse_timeouts(&format_timeouts(&t)).unwrap(), t);
        assert!(parse_timeouts("default=abc").unwrap_err().contains("not a number"));
        assert!(parse_timeouts("default").unwrap_err().contains("resource=ms"));
    }

    #[test]
    fn a_status_without_lists_decodes() {
        let mut bytes = Vec::new();
        let map = std::collections::BTreeMap::from([
            ("state", ciborium::Value::Text("ok".into())),
            ("clients", ciborium::Value::Integer(2.into())),
            ("handled", ciborium::Value::Integer(9.into())),
        ]);
        ciborium::into_writer(&map, &mut bytes).unwrap();
        let s: Status = decode(&bytes).unwrap();
        assert_eq!((s.clients, s.handled, s.timeouts.len()), (2, 9, 0));
        assert!(decode::<Status>(b"\x01").is_err());
    }
}
