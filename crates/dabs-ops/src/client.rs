//! The client side of the operator interface, on reqwest: one JSON document, or the traffic
//! trace as a stream of lines. Plain `http://` only, as the nodes serve it.

use serde_json::Value;
use std::time::Duration;

/// How long connecting to a node may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `GET path` to an operator interface at `base_url` (`http://HOST:PORT`), with the
/// operator token when there is one. A refusal becomes `Err("FIELD: message")` from the node's
/// `{"error": {"field", "message"}}` body (or its `{"error": text}`), or the status and body.
async fn get(base_url: &str, token: Option<&str>, path: &str) -> Result<reqwest::Response, String> {
    send(base_url, token, reqwest::Method::GET, path, None).await
}

/// Sends `method path` with an optional JSON `body`; see [`get`] for refusals.
async fn send(
    base_url: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<reqwest::Response, String> {
    let base = base_url.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(format!("{base_url}: only http:// URLs are supported"));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let mut request = client.request(method.clone(), format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token.trim());
    }
    if let Some(body) = body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
    }
    let response = request.send().await.map_err(|e| format!("{method} {base}{path} failed: {e}"))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let bytes = response.bytes().await.unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Err(match (v["error"]["field"].as_str(), v["error"]["message"].as_str(), v["error"].as_str()) {
        (Some(f), Some(m), _) => format!("{f}: {m}"),
        (.., Some(text)) => format!("{status}: {text}"),
        _ => format!("{status}: {}", String::from_utf8_lossy(&bytes)),
    })
}

/// Sends `PUT path` with JSON `body` and the operator `token`; the node's answer as JSON.
pub async fn put_json(
    base_url: &str,
    token: Option<&str>,
    path: &str,
    body: &Value,
) -> Result<Value, String> {
    let response = send(base_url, token, reqwest::Method::PUT, path, Some(body)).await?;
    let bytes = response.bytes().await.map_err(|e| format!("PUT {path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("PUT {path}: not JSON: {e}"))
}

/// Sends `POST path` with JSON `body` (and the operator `token`, if any); the answer as JSON.
pub async fn post_json(
    base_url: &str,
    token: Option<&str>,
    path: &str,
    body: &Value,
) -> Result<Value, String> {
    let response = send(base_url, token, reqwest::Method::POST, path, Some(body)).await?;
    let bytes = response.bytes().await.map_err(|e| format!("POST {path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("POST {path}: not JSON: {e}"))
}

/// Follows a server-sent event stream at `path`, calling `on_event(event, data)` for each
/// event until it returns `false` or the node closes the stream.
pub async fn follow_events(
    base_url: &str,
    token: Option<&str>,
    path: &str,
    mut on_event: impl FnMut(&str, &str) -> bool,
) -> Result<(), String> {
    let mut response = get(base_url, token, path).await?;
    let mut pending = Vec::new();
    let (mut event, mut data) = (String::new(), String::new());
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("event stream broken: {e}"))? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() || !event.is_empty() {
                    let kind = if event.is_empty() { "message" } else { event.as_str() };
                    if !on_event(kind, data.trim_end_matches('\n')) {
                        return Ok(());
                    }
                }
                event.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
                data.push('\n');
            }
        }
    }
    Ok(())
}

/// Fetches one JSON document from an operator interface (`http://IP:PORT`, path `/api/...`)
/// whose read-only views are open (on loopback, by default).
pub async fn get_json(base_url: &str, path: &str) -> Result<Value, String> {
    get_json_with(base_url, None, path).await
}

/// Fetches a text document (e.g. `/metrics`) from an operator interface whose reads are open.
pub async fn get_text(base_url: &str, path: &str) -> Result<String, String> {
    get(base_url, None, path).await?.text().await.map_err(|e| format!("GET {path}: {e}"))
}

/// [`get_json`] with the operator token, for views guarded off loopback.
pub async fn get_json_with(base_url: &str, token: Option<&str>, path: &str) -> Result<Value, String> {
    let bytes = get(base_url, token, path).await?.bytes().await.map_err(|e| format!("GET {path}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("GET {path}: not JSON: {e}"))
}

/// Streams a node's `/api/trace` (with `query`, e.g. `session=3&command=9`) with the operator
/// `token`, calling `on_line` with each decoded datagram until the node closes the stream. A
/// refusal is `Err("FIELD: message")` (`authorization: …` for a missing or wrong token).
/// Dropping the future closes the connection, and the node's tap with it.
pub async fn trace_client(
    base_url: &str,
    token: Option<&str>,
    query: &str,
    mut on_line: impl FnMut(Value),
) -> Result<(), String> {
    let query = query.trim_start_matches('?');
    let path = if query.is_empty() { "/api/trace".to_owned() } else { format!("/api/trace?{query}") };
    let mut response = get(base_url, token, &path).await?;
    let mut pending = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("trace stream broken: {e}"))? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let text: Vec<u8> = pending.drain(..=end).collect();
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v = serde_json::from_slice(&text)
                .map_err(|e| format!("bad trace line {:?}: {e}", String::from_utf8_lossy(&text)))?;
            on_line(v);
        }
    }
    Ok(())
}
