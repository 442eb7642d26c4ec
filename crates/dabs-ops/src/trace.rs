//! The traffic trace: the endpoint's tap as a stream of NDJSON lines (its client is in
//! `client.rs`).

use crate::api::error;
use crate::auth::Authorized;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use dabs_net::TapRecord;
use dabs_node::NodeHandle;
use dabs_wire::{RawHeader, SystemCommand, decode, latency};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use tokio::sync::broadcast::error::RecvError;

/// Which datagrams a trace shows; `None` lets everything through, and the filters that are
/// set must all pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceFilter {
    /// Only this session byte (as on the wire: numbers are per peer, so two clients may both
    /// have a session 1).
    pub session: Option<u8>,
    /// Only this command number.
    pub command: Option<u16>,
    /// Only the traffic of the portion on this queue of this endpoint: incoming datagrams
    /// whose destination queue is it, outgoing ones whose source queue is it. The queue at the
    /// other end is never looked at: it is the peer's own numbering, and any peer may use the
    /// same number for a portion of its own.
    pub portion_queue: Option<u16>,
}

impl TraceFilter {
    /// True when `rec` passes. The header is read without validation so that datagrams that
    /// do not decode are filtered (and shown) like the rest; one too short for a header passes
    /// only when no filter is set.
    pub fn matches(&self, rec: &TapRecord) -> bool {
        if *self == TraceFilter::default() {
            return true;
        }
        let Some(h) = RawHeader::peek(&rec.data) else {
            return false;
        };
        // Whoever sends a datagram puts its own queue in `src` and the receiver's in `dst`;
        // ACKs, NAKs and REPLYs swap the queues of what they answer, so they follow the same
        // rule and show with the requests they answer.
        let ours = if rec.outgoing { h.src } else { h.dst };
        self.session.is_none_or(|s| s == h.session)
            && self.command.is_none_or(|c| c == h.command)
            && self.portion_queue.is_none_or(|q| q == ours)
    }

    /// Reads a command for the `command` filter: a number 0..65535, or a system command's name
    /// in any case (`ECHO`, `open_session`, `KEY_EXCHANGE`, ...).
    pub fn parse_command(text: &str) -> Result<u16, String> {
        let text = text.trim();
        if let Ok(n) = text.parse::<u16>() {
            return Ok(n);
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{text} is not a command number 0..65535"));
        }
        let named = system_commands();
        if let Some((n, _)) = named.iter().find(|(_, name)| name.eq_ignore_ascii_case(text)) {
            return Ok(*n);
        }
        let names: Vec<&str> = named.iter().map(|(_, name)| *name).collect();
        Err(format!(
            "unknown command {text:?}: give a number 0..65535 or a system command name ({})",
            names.join(", ")
        ))
    }
}

/// Every system command the trace names ([`command_name`]), by number.
fn system_commands() -> Vec<(u16, &'static str)> {
    (0..=255).filter_map(|n| command_name(n).map(|name| (n, name))).collect()
}

/// One trace line for `rec`: the decoded header with readable names, the latency of incoming
/// datagrams from their sent-time stamp, or the decode error (other fields null).
pub fn trace_line(rec: &TapRecord) -> Value {
    let dir = if rec.outgoing { "out" } else { "in" };
    match decode(&rec.data) {
        Ok(d) => {
            let h = d.header;
            json!({
                "at_ms": rec.at_ms,
                "dir": dir,
                "peer": rec.peer.to_string(),
                "kind": h.kind.name(),
                "command": h.command,
                "command_name": command_name(h.command),
                "session": h.session,
                "transaction": h.transaction,
                "dst": h.dst,
                "src": h.src,
                "buffer": d.buffer.map(|b| b.index),
                "total": d.buffer.map(|b| b.total),
                "payload_len": d.payload.len(),
                // Sealed: the payload is nonce + ciphertext + tag, only the header is readable.
                "encrypted": h.encrypted,
                "bytes": rec.data.len(),
                // Our own stamp on an outgoing datagram says nothing about the network.
                "latency_ms": (!rec.outgoing).then(|| latency(h.sent, rec.at_ms).millis),
                "error": null,
            })
        }
        Err(e) => json!({
            "at_ms": rec.at_ms,
            "dir": dir,
            "peer": rec.peer.to_string(),
            "kind": null,
            "command": null,
            "command_name": null,
            "session": null,
            "transaction": null,
            "dst": null,
            "src": null,
            "buffer": null,
            "total": null,
            "payload_len": null,
            "encrypted": null,
            "bytes": rec.data.len(),
            "latency_ms": null,
            "error": e.to_string(),
        }),
    }
}

/// The name of a system command, `KEY_EXCHANGE` included (the endpoint core owns that one).
fn command_name(command: u16) -> Option<&'static str> {
    match SystemCommand::from_number(command) {
        Some(c) => Some(c.name()),
        None => (command == dabs_net::KEY_EXCHANGE).then_some("KEY_EXCHANGE"),
    }
}

fn line(v: &Value) -> Result<Bytes, Infallible> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

/// A refused query: status, field and message.
type Refusal = (StatusCode, String, String);

/// Reads `session`, `command` (a number or a system command name) and `va` from the query;
/// `va` must name a portion here, and is looked up once: its queue at this endpoint.
fn filter_from_query(node: &NodeHandle, q: &BTreeMap<String, String>) -> Result<TraceFilter, Refusal> {
    let bad = |field: &str, message: String| (StatusCode::BAD_REQUEST, field.to_owned(), message);
    let mut f = TraceFilter::default();
    for (key, val) in q {
        match key.as_str() {
            "session" => {
                f.session =
                    Some(val.parse().map_err(|_| bad("session", format!("{val:?} is not a number 0..255")))?);
            }
            "command" => f.command = Some(TraceFilter::parse_command(val).map_err(|e| bad("command", e))?),
            "va" => {
                let queue = node.portions().into_iter().find(|p| p.va == *val).map(|p| p.queue);
                let Some(queue) = queue else {
                    return Err((
                        StatusCode::NOT_FOUND,
                        "va".to_owned(),
                        format!("no portion {val} on this node; trace it on the node that runs it"),
                    ));
                };
                f.portion_queue = Some(queue);
            }
            _ => return Err(bad(key, "unknown parameter; expected session, command or va".into())),
        }
    }
    Ok(f)
}

/// Live trace of the datagrams this node's endpoint sends and receives.
///
/// Newline-delimited JSON, one TraceLine per datagram (or a TraceLag when the reader fell
/// behind), until the client disconnects.
#[utoipa::path(get, path = "/api/trace", operation_id = "trace", tag = "trace", security(("bearer" = [])),
    params(
        ("session" = Option<u8>, Query, maximum = 255, description = "Only this session byte"),
        ("command" = Option<String>, Query, description = "Only this command: a number 0..65535, or a \
            system command name in any case (echo, OPEN_SESSION); an unknown name is refused (400) with \
            the list of names"),
        ("va" = Option<String>, Query, description = "Only this node's portion with this virtual address: \
            datagrams arriving for its queue here and datagrams it sends (ACKs, NAKs and REPLYs included); \
            404 if no portion here has it"),
    ),
    responses(
        (status = 200, description = "A stream of lines", content_type = "application/x-ndjson",
            body = crate::openapi::TraceItem),
        (status = 400, description = "A parameter is malformed (a session that is not a number, an \
            unknown command name)", body = crate::openapi::Error),
        (status = 404, description = "No portion with that virtual address on this node",
            body = crate::openapi::Error),
        crate::openapi::Refusals,
    ))]
pub(crate) async fn handler(
    _: Authorized,
    State(node): State<NodeHandle>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let filter = match filter_from_query(&node, &q) {
        Ok(f) => f,
        Err((status, field, message)) => return error(status, &field, message),
    };
    let rx = node.endpoint().tap();
    // The receiver lives in the body: when the client goes away hyper drops the body, and the
    // tap costs nothing again.
    let lines = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(r) => {
                    let rec = r;
                    if filter.matches(&rec) {
                        return Some((line(&trace_line(&rec)), (rx, filter)));
                    }
                }
                Err(RecvError::Lagged(n)) => return Some((line(&json!({ "lagged": n })), (rx, filter))),
                Err(RecvError::Closed) => return None,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson"), (header::CACHE_CONTROL, "no-store")],
        Body::from_stream(lines),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dabs_net::Addr;
    use dabs_wire::{Header, Kind, SentTime, encode};

    fn record(outgoing: bool, header: Header, at_ms: u64) -> TapRecord {
        let mut data = vec![0; 64];
        let n = encode(&header, None, b"hello", &mut data).unwrap();
        data.truncate(n);
        TapRecord { at_ms, outgoing, peer: Addr::Udp("127.0.0.1:9".parse().unwrap()), data }
    }

    fn header() -> Header {
        let mut h = Header::new(Kind::Request, 1);
        h.session = 3;
        h.transaction = 9;
        h.dst = 16;
        h.src = 2;
        h.sent = SentTime::from_unix_millis(1_000_000);
        h
    }

    #[test]
    fn lines_name_the_fields() {
        let v = trace_line(&record(false, header(), 1_000_040));
        assert_eq!(v["dir"], "in");
        assert_eq!(v["kind"], "request");
        assert_eq!(v["command_name"], "OPEN_SESSION");
        assert_eq!((v["session"].as_u64(), v["transaction"].as_u64()), (Some(3), Some(9)));
        assert_eq!((v["dst"].as_u64(), v["src"].as_u64()), (Some(16), Some(2)));
        assert_eq!(v["payload_len"], 5);
        assert_eq!(v["latency_ms"], 40);
        assert_eq!(v["peer"], "127.0.0.1:9");
        assert!(v["buffer"].is_null() && v["error"].is_null());
        assert_eq!(v["encrypted"], false);
        let sealed = trace_line(&record(false, Header { encrypted: true, ..header() }, 1_000_040));
        assert_eq!(sealed["encrypted"], true);
        let exchange = trace_line(&record(false, Header { command: 22, ..header() }, 1_000_040));
        assert_eq!(exchange["command_name"], "KEY_EXCHANGE");
        let out = trace_line(&record(true, header(), 1_000_040));
        assert_eq!(out["dir"], "out");
        assert!(out["latency_ms"].is_null());
    }

    #[test]
    fn undecodable_datagrams_carry_the_error() {
        let rec = TapRecord { at_ms: 1, outgoing: false, peer: Addr::InProc(4), data: vec![1, 2, 3] };
        let v = trace_line(&rec);
        assert!(v["error"].as_str().unwrap().contains("shorter"));
        assert!(v["kind"].is_null() && v["session"].is_null());
        assert_eq!(v["bytes"], 3);
    }

    #[test]
    fn filters_read_the_header() {
        let rec = record(false, header(), 0);
        assert!(TraceFilter::default().matches(&rec));
        assert!(TraceFilter { session: Some(3), command: Some(1), portion_queue: Some(16) }.matches(&rec));
        assert!(!TraceFilter { session: Some(4), ..Default::default() }.matches(&rec));
        assert!(!TraceFilter { command: Some(300), ..Default::default() }.matches(&rec));
        assert!(!TraceFilter { portion_queue: Some(17), ..Default::default() }.matches(&rec));
        // Every filter that is set must pass.
        assert!(!TraceFilter { session: Some(3), command: Some(300), ..Default::default() }.matches(&rec));
        assert!(
            !TraceFilter { session: Some(3), portion_queue: Some(2), ..Default::default() }.matches(&rec)
        );
        // Too short for a header: shown only unfiltered.
        let short = TapRecord { at_ms: 1, outgoing: false, peer: Addr::InProc(4), data: vec![1, 2, 3] };
        assert!(TraceFilter::default().matches(&short));
        assert!(!TraceFilter { session: Some(0), ..Default::default() }.matches(&short));
        assert!(!TraceFilter { portion_queue: Some(0), ..Default::default() }.matches(&short));
    }

    /// A datagram of `kind` between our queue `ours` and the peer's queue `theirs`, in the
    /// direction `outgoing`, with the queues where its sender puts them.
    fn between(outgoing: bool, kind: Kind, command: u16, session: u8, ours: u16, theirs: u16) -> TapRecord {
        let (dst, src) = if outgoing { (theirs, ours) } else { (ours, theirs) };
        let h = Header { session, transaction: 1, dst, src, ..Header::new(kind, command) };
        record(outgoing, h, 0)
    }

    #[test]
    fn the_portion_filter_takes_only_that_portions_traffic_here() {
        // Our portion A is on queue 16, portion B on queue 17. A's client uses queue 1; B's
        // client happens to use queue 16 at its end, and B also calls a portion on queue 16 of
        // another node: none of B's traffic carries A's queue at *this* endpoint.
        let a = TraceFilter { portion_queue: Some(16), ..Default::default() };
        let (open, app) = (SystemCommand::OpenSession.number(), 256);
        let ours = [
            // The session opened to A: the REPLY comes from A's queue, the client ACKs it there.
            between(true, Kind::Reply, open, 1, 16, 1),
            between(false, Kind::Ack, open, 1, 16, 1),
            // A request to A, its ACK, REPLY, the client's ACK of the REPLY.
            between(false, Kind::Request, app, 1, 16, 1),
            between(true, Kind::Ack, app, 1, 16, 1),
            between(true, Kind::Reply, app, 1, 16, 1),
            between(false, Kind::Ack, app, 1, 16, 1),
            // A NAK from A, and A's own call out to somebody and its answer.
            between(true, Kind::Nak, app, 1, 16, 1),
            between(true, Kind::Request, app, 4, 16, 30),
            between(false, Kind::Reply, app, 4, 16, 30),
            between(false, Kind::Nak, app, 4, 16, 30),
        ];
        let theirs = [
            // The OPEN_SESSION request is addressed to the node's runtime (queue 0).
            between(false, Kind::Request, open, 0, 0, 1),
            // B's client on queue 16 of its endpoint: request, ACK, REPLY, ACK.
            between(false, Kind::Request, app, 2, 17, 16),
            between(true, Kind::Ack, app, 2, 17, 16),
            between(true, Kind::Reply, app, 2, 17, 16),
            between(false, Kind::Ack, app, 2, 17, 16),
            // B calling a portion on queue 16 of another endpoint, and its answers.
            between(true, Kind::Request, app, 5, 17, 16),
            between(false, Kind::Reply, app, 5, 17, 16),
            between(false, Kind::Nak, app, 5, 17, 16),
            // The runtime's farm traffic.
            between(true, Kind::Request, SystemCommand::Announce.number(), 0, 0, 0),
        ];
        for rec in &ours {
            assert!(a.matches(rec), "A's traffic left out: {}", trace_line(rec));
        }
        for rec in &theirs {
            assert!(!a.matches(rec), "not A's traffic shown: {}", trace_line(rec));
        }
        // Matching either queue, as the filter once did, would have let B's traffic in.
        let either = |r: &TapRecord| RawHeader::peek(&r.data).is_some_and(|h| h.dst == 16 || h.src == 16);
        assert_eq!(theirs.iter().filter(|r| either(r)).count(), 7);
        // A datagram that does not decode is judged by the header it still has.
        let mut damaged = between(false, Kind::Request, app, 1, 16, 1);
        damaged.data[0] = (damaged.data[0] & !0x1f) | 7;
        assert!(trace_line(&damaged)["error"].is_string());
        assert!(a.matches(&damaged));
        damaged.data[8..10].copy_from_slice(&17u16.to_be_bytes());
        assert!(!a.matches(&damaged));
    }

    #[test]
    fn commands_are_numbers_or_system_names() {
        assert_eq!(TraceFilter::parse_command("9"), Ok(9));
        assert_eq!(TraceFilter::parse_command("65535"), Ok(65535));
        assert_eq!(TraceFilter::parse_command("ECHO"), Ok(9));
        assert_eq!(TraceFilter::parse_command("echo"), Ok(9));
        assert_eq!(TraceFilter::parse_command(" Open_Session "), Ok(1));
        assert_eq!(TraceFilter::parse_command("key_exchange"), Ok(22));
        assert_eq!(TraceFilter::parse_command("ALERT"), Ok(23));
        for c in SystemCommand::ALL {
            assert_eq!(TraceFilter::parse_command(c.name()), Ok(c.number()));
            assert_eq!(TraceFilter::parse_command(&c.name().to_lowercase()), Ok(c.number()));
        }
        let e = TraceFilter::parse_command("70000").unwrap_err();
        assert!(e.contains("0..65535"), "{e}");
        let e = TraceFilter::parse_command("OPEN").unwrap_err();
        assert!(e.contains("unknown command \"OPEN\"") && e.contains("OPEN_SESSION, CLOSE_SESSION"), "{e}");
        assert!(e.contains("DRAIN, KEY_EXCHANGE, ALERT"), "listed by number: {e}");
        assert!(TraceFilter::parse_command("").is_err());
        assert!(TraceFilter::parse_command("-1").is_err());
    }
}
