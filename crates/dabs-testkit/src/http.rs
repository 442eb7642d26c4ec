//! One HTTP/1.1 exchange with a node's operator interface, over a plain blocking socket (the
//! tests need no HTTP client library for this).

use std::io::{Read, Write};
use std::time::Duration;

/// One request to `base` (`http://IP:PORT`, a trailing `/` allowed) with an optional JSON
/// body: the status and the body as text (de-chunked). Errors say which request failed.
pub fn request(method: &str, base: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    request_as(None, method, base, path, body)
}

/// [`request`] with the operator token (`Authorization: Bearer TOKEN`) when given.
pub fn request_as(
    token: Option<&str>,
    method: &str,
    base: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let fail = |e: std::io::Error| format!("{method} {base}{path}: {e}");
    let mut stream = std::net::TcpStream::connect(host).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
    let body = body.unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(fail)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {base}{path}: no status line in {text:?}"))?;
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    Ok((status, payload))
}

/// Joins the chunks of a chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// [`request`] whose answer is JSON: the status and the parsed body; panics when the node
/// cannot be reached or does not answer JSON.
pub fn json(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    json_as(None, method, base, path, body)
}

/// [`json`] with the operator token when given.
pub fn json_as(
    token: Option<&str>,
    method: &str,
    base: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) =
        request_as(token, method, base, path, body.as_deref()).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {base}{path}: answer is not JSON ({e}): {text}"));
    (status, json)
}

/// `GET path` that must answer 200: the body as text.
pub fn get_text(base: &str, path: &str) -> String {
    match request("GET", base, path, None) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET {base}{path}: {status} {body}"),
        Err(e) => panic!("{e}"),
    }
}

/// `GET path` answered 200 with JSON, or why not (for waits that poll a node still starting).
pub fn try_get_json(base: &str, path: &str) -> Result<serde_json::Value, String> {
    match request("GET", base, path, None)? {
        (200, text) => serde_json::from_str(&text).map_err(|e| format!("GET {base}{path}: {e}: {text}")),
        (status, text) => Err(format!("GET {base}{path}: {status} {text}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_are_joined() {
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
