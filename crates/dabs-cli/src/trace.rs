//! `dabs trace --node URL`: the debug tool. Streams a node's MP traffic, tapped inside its
//! endpoint (no root, no packet capture), decoded, one datagram per line.

use serde_json::Value;
use std::process::ExitCode;

/// One trace record for people: time, direction, peer, kind, command, session, transaction,
/// buffer, size, `ENC` for an encrypted datagram, latency.
pub fn human(v: &Value) -> String {
    if let Some(n) = v.get("lagged") {
        return format!("... {n} datagrams not shown (the trace could not keep up)");
    }
    let at = v["at_ms"].as_u64().unwrap_or(0);
    let time =
        format!("{:02}:{:02}:{:02}.{:03}", at / 3_600_000 % 24, at / 60_000 % 60, at / 1000 % 60, at % 1000);
    let dir = if v["dir"] == "out" { "->" } else { "<-" };
    let peer = v["peer"].as_str().unwrap_or("?");
    if let Some(e) = v["error"].as_str() {
        return format!("{time} {dir} {peer:<21} undecodable: {e}");
    }
    let command = v["command"].as_u64().unwrap_or(0);
    let name = v["command_name"].as_str().map(str::to_owned).unwrap_or_else(|| format!("app {command}"));
    let buffer = match (v["buffer"].as_u64(), v["total"].as_u64()) {
        (Some(b), Some(t)) => format!(" buf {}/{}", b + 1, t),
        _ => String::new(),
    };
    let latency = v["latency_ms"].as_u64().map(|l| format!(" latency {l} ms")).unwrap_or_default();
    let sealed = if v["encrypted"] == true { " ENC" } else { "" };
    format!(
        "{time} {dir} {peer:<21} {:<7} {name:<14} s{} t{} q{}->{}{buffer} {} B{sealed}{latency}",
        v["kind"].as_str().unwrap_or("?"),
        v["session"],
        v["transaction"],
        v["src"],
        v["dst"],
        v["bytes"],
    )
}

/// Runs `dabs trace`. `command` is a number or a system command name in any case (`ECHO`,
/// `open_session`); an unknown name is refused (exit status 2) before the node is asked.
/// `token` is the operator token the trace needs.
pub fn run(
    node: &str,
    session: Option<u8>,
    va: Option<&str>,
    command: Option<impl std::fmt::Display>,
    json: bool,
    token: Option<&str>,
) -> ExitCode {
    let mut query = Vec::new();
    if let Some(s) = session {
        query.push(format!("session={s}"));
    }
    if let Some(c) = command {
        match dabs_ops::TraceFilter::parse_command(&c.to_string()) {
            Ok(n) => query.push(format!("command={n}")),
            Err(e) => {
                eprintln!("dabs trace: --command: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(v) = va {
        let encoded: String = v
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        query.push(format!("va={encoded}"));
    }
    let base = node.trim_end_matches('/');
    let base = if base.starts_with("http://") { base.to_owned() } else { format!("http://{base}") };
    let query = query.join("&");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // A write that fails (the reader of a pipe went away) ends the trace: kept here, and the
    // stream dropped through `stopped`.
    let failed: std::cell::RefCell<Option<std::io::Error>> = std::cell::RefCell::new(None);
    let stopped = tokio::sync::Notify::new();
    let result = rt.block_on(async {
        tokio::select! {
            r = dabs_ops::trace_client(&base, token, &query, |v| {
                if failed.borrow().is_some() {
                    return;
                }
                let written = if json { crate::out::line(&v) } else { crate::out::line(human(&v)) };
                if let Err(e) = written {
                    *failed.borrow_mut() = Some(e);
                    stopped.notify_one();
                }
            }) => r,
            _ = stopped.notified() => Ok(()),
            _ = crate::serve::wait_for_stop() => Ok(()),
        }
    });
    if let Some(e) = failed.into_inner() {
        return crate::out::finish("dabs trace", Err(e));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dabs trace: {e}");
            if e.starts_with(dabs_ops::AUTH_FIELD) && token.is_none() {
                eprintln!("dabs trace: give the operator token with --token or DABS_TOKEN");
            }
            ExitCode::FAILURE
        }
    }
}
