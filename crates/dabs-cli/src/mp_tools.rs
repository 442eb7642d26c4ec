//! `dabs mp decode` and `dabs mp encode`: the codec from outside, one datagram per line.

use dabs_wire::{BufferHeader, Datagram, Header, Kind, MAX_DATAGRAM, SentTime, decode, encode};
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufWriter, Write};
use std::process::ExitCode;

/// Reads hex datagrams from stdin, writes one JSON object per line; exit 1 if any failed.
pub fn decode_stdin() -> ExitCode {
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut all_ok = true;
    for line in stdin.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("dabs mp decode: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        let value = match decode_line(line.trim()) {
            Ok(v) => v,
            Err(msg) => {
                all_ok = false;
                json!({ "error": msg })
            }
        };
        if let Err(e) = writeln!(out, "{value}") {
            return crate::out::finish("dabs mp decode", Err(e));
        }
    }
    if let Err(e) = out.flush() {
        return crate::out::finish("dabs mp decode", Err(e));
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn decode_line(line: &str) -> Result<Value, String> {
    let bytes = hex::decode(line).map_err(|e| format!("not a hex string: {e}"))?;
    let d = decode(&bytes).map_err(|e| e.to_string())?;
    Ok(datagram_json(&d))
}

/// The JSON form of a datagram, shared with the trace tool.
pub fn datagram_json(d: &Datagram<'_>) -> Value {
    let h = &d.header;
    json!({
        "kind": h.kind.name(),
        "version": h.version,
        "command": h.command,
        "session": h.session,
        "transaction": h.transaction,
        "encrypted": h.encrypted,
        "crc": h.crc,
        "minutes": h.sent.minutes(),
        "seconds": h.sent.seconds(),
        "ms": h.sent.millis(),
        "dst": h.dst,
        "src": h.src,
        "buffer": d.buffer.map(|b| b.index),
        "total": d.buffer.map(|b| b.total),
        "payload": hex::encode(d.payload),
    })
}

/// Reads JSON objects from stdin, writes hex datagrams; stops at the first invalid line.
pub fn encode_stdin() -> ExitCode {
    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut buf = [0u8; MAX_DATAGRAM];
    for (n, line) in stdin.lines().enumerate() {
        let lineno = n + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("dabs mp encode: cannot read stdin: {e}");
                return ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match encode_line(&line, &mut buf) {
            Ok(len) => {
                if let Err(e) = writeln!(out, "{}", hex::encode(&buf[..len])) {
                    return crate::out::finish("dabs mp encode", Err(e));
                }
            }
            Err(msg) => {
                let _ = out.flush();
                eprintln!("dabs mp encode: line {lineno}: {msg}");
                return ExitCode::FAILURE;
            }
        }
    }
    crate::out::finish("dabs mp encode", out.flush())
}

const FIELDS: [&str; 16] = [
    "kind",
    "version",
    "command",
    "session",
    "transaction",
    "encrypted",
    "crc",
    "minutes",
    "seconds",
    "ms",
    "dst",
    "src",
    "buffer",
    "total",
    "payload",
    "error",
];

fn encode_line(line: &str, out: &mut [u8]) -> Result<usize, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object".into());
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS[..15].contains(&k.as_str())) {
        return Err(format!("field `{unknown}`: unknown field"));
    }
    let kind_name = obj.get("kind").and_then(Value::as_str).ok_or("field `kind`: missing or not a string")?;
    let kind = Kind::from_name(kind_name)
        .ok_or_else(|| format!("field `kind`: {kind_name:?} is not one of request, ack, nak, reply"))?;
    let version = match obj.get("version") {
        None | Some(Value::Null) => dabs_wire::VERSION,
        Some(_) => uint(&obj, "version", 31)? as u8,
    };
    let minutes = uint(&obj, "minutes", 59)? as u8;
    let seconds = uint(&obj, "seconds", 59)? as u8;
    let ms = uint(&obj, "ms", 999)? as u16;
    let header = Header {
        kind,
        version,
        command: uint(&obj, "command", 65535)? as u16,
        session: uint(&obj, "session", 255)? as u8,
        transaction: uint(&obj, "transaction", 255)? as u8,
        sent: SentTime::new(minutes, seconds, ms).map_err(|e| format!("field `{}`: {e}", e.field))?,
        encrypted: boolean(&obj, "encrypted")?,
        crc: boolean(&obj, "crc")?,
        dst: uint(&obj, "dst", 65535)? as u16,
        src: uint(&obj, "src", 65535)? as u16,
    };
    let buffer = match (opt_uint(&obj, "buffer")?, opt_uint(&obj, "total")?) {
        (None, None) => None,
        (Some(index), Some(total)) => {
            if !(2..=65535).contains(&total) {
                return Err(format!("field `total`: {total} is out of range 2..65535"));
            }
            if index >= total {
                return Err(format!("field `buffer`: {index} is not below total {total}"));
            }
            Some(BufferHeader { index: index as u16, total: total as u16 })
        }
        (Some(_), None) => return Err("field `total`: missing while `buffer` is set".into()),
        (None, Some(_)) => return Err("field `buffer`: missing while `total` is set".into()),
    };
    let payload_hex =
        obj.get("payload").and_then(Value::as_str).ok_or("field `payload`: missing or not a string")?;
    let payload = hex::decode(payload_hex).map_err(|e| format!("field `payload`: not a hex string: {e}"))?;
    encode(&header, buffer, &payload, out).map_err(|e| format!("field `payload`: {e}"))
}

fn uint(obj: &Map<String, Value>, field: &str, max: u64) -> Result<u64, String> {
    let v = obj.get(field).ok_or_else(|| format!("field `{field}`: missing"))?;
    let n = v.as_u64().ok_or_else(|| format!("field `{field}`: {v} is not an unsigned integer"))?;
    if n > max {
        return Err(format!("field `{field}`: {n} is out of range 0..{max}"));
    }
    Ok(n)
}

fn opt_uint(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => uint(obj, field, 65535).map(Some),
    }
}

fn boolean(obj: &Map<String, Value>, field: &str) -> Result<bool, String> {
    match obj.get(field) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("field `{field}`: {v} is not true or false")),
        None => Err(format!("field `{field}`: missing")),
    }
}
