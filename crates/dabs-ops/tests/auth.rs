//! Operator credentials over real HTTP, in front of a real node (issue 11, items 3 and 6):
//! changes and the traffic tap need the operator token, a missing or wrong one is refused
//! with 401 and a Bearer challenge and changes nothing, and the read-only views stay open on
//! loopback. Self-contained: its own node and HTTP client.

use dabs_node::Node;
use dabs_node::config::NodeConfig;
use serde_json::Value;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "operator-token-0123456789abcdef";
const WRONG: &str = "operator-token-0123456789abcdeF";

/// A node named node-1 with the calculator, `[operator]` as given, and its operator
/// interface on loopback; each test has its own multicast group.
struct Served {
    node: Node,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(operator_section: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let r = std::hash::RandomState::new().build_hasher().finish();
        let group = format!("239.255.{}.{}:{}", r % 250 + 2, (r >> 8) % 250 + 2, 40_000 + (r >> 16) % 20_000);
        let text = format!(
            "[farm]\nname = \"auth\"\ngroup = \"{group}\"\n\n[node]\nname = \"node-1\"\nbind = \"127.0.0.1:0\"\n\
             operator = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n{operator_section}\n\n[[app]]\nname = \"calc\"\nstart_at_init = true\n",
            dir.path().display()
        );
        let config = NodeConfig::parse(&text, &dir.path().join("node.toml")).unwrap();
        let access = dabs_ops::Access::from_config(&config);
        let addr = config.node.operator.unwrap();
        let node = Node::start(config, vec![dabs_calc::factory()]).await.unwrap();
        let (addr, server) = dabs_ops::serve(node.handle(), addr, access).await.unwrap();
        Served { node, addr, server, _dir: dir }
    }

    async fn stop(self) {
        self.server.abort();
        self.node.stop().await;
    }
}

struct Response {
    status: u16,
    /// Header lines, lower-cased.
    headers: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The refusal of a request without the token, or with a wrong one.
    #[track_caller]
    fn assert_unauthorized(&self, wrong: bool) {
        assert_eq!(self.status, 401, "{}\n{}", self.headers, self.body);
        let challenge = if wrong {
            "www-authenticate: bearer realm=\"dabs operator\", error=\"invalid_token\"\r\n"
        } else {
            "www-authenticate: bearer realm=\"dabs operator\"\r\n"
        };
        assert!(self.headers.contains(challenge), "{}", self.headers);
        assert!(self.headers.contains("content-type: application/json"), "{}", self.headers);
        assert_eq!(self.json()["error"]["field"], "authorization", "{}", self.body);
    }
}

/// One request on a fresh connection, with `Authorization: {auth}` when given. A streaming
/// answer (the trace) is read up to its head and first chunk: its body never ends.
async fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0; 4096];
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).into_owned();
        if n == 0 {
            break text;
        }
        if let Some((head, rest)) = text.split_once("\r\n\r\n")
            && head.to_ascii_lowercase().contains("application/x-ndjson")
            && rest.contains('\n')
        {
            break text;
        }
    };
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = format!("{}\r\n", headers.to_ascii_lowercase());
    let body = if headers.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Response { status, headers, body }
}

/// The chunks' data, as far as they go.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_the_trace_need_the_token() {
    let s = Served::start(&format!("[operator]\ntoken = \"{TOKEN}\"")).await;
    let change = r#"{"max_message_latency_ms": 321}"#;

    // No token, a wrong one, another scheme, the token without a scheme: refused, nothing changes.
    request(s.addr, "PUT", "/api/settings", None, change).await.assert_unauthorized(false);
    request(s.addr, "PUT", "/api/settings", Some(&bearer(WRONG)), change).await.assert_unauthorized(true);
    request(s.addr, "PUT", "/api/settings", Some(&bearer("")), change).await.assert_unauthorized(true);
    let basic = "Basic b3BlcmF0b3I6b3BlcmF0b3ItdG9rZW4tMDEyMzQ1Njc4OWFiY2RlZg==";
    request(s.addr, "PUT", "/api/settings", Some(basic), change).await.assert_unauthorized(false);
    request(s.addr, "PUT", "/api/settings", Some(TOKEN), change).await.assert_unauthorized(false);
    let settings = request(s.addr, "GET", "/api/settings", None, "").await.json();
    assert_eq!(
        (settings["version"].as_u64(), settings["max_message_latency_ms"].as_u64()),
        (Some(0), Some(200))
    );
    let events = request(s.addr, "GET", "/api/events", None, "").await.body;
    assert!(!events.contains("settings changed"), "{events}");

    // The token: the change is made.
    let r = request(s.addr, "PUT", "/api/settings", Some(&bearer(TOKEN)), change).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["version"].as_u64(), r.json()["max_message_latency_ms"].as_u64()),
        (Some(1), Some(321))
    );
    // Refusals are checked before the body: a bad value without the token is still a 401.
    request(s.addr, "PUT", "/api/settings", None, "{not json").await.assert_unauthorized(false);
    let r = request(s.addr, "PUT", "/api/settings", Some(&bearer(TOKEN)), "{not json").await;
    assert_eq!((r.status, r.json()["error"]["field"].as_str()), (400, Some("body")));

    // The traffic tap: the same.
    request(s.addr, "GET", "/api/trace", None, "").await.assert_unauthorized(false);
    request(s.addr, "GET", "/api/trace?session=0", Some(&bearer(WRONG)), "").await.assert_unauthorized(true);
    let r = request(s.addr, "GET", "/api/trace?session=0", Some(&bearer(TOKEN)), "").await;
    assert_eq!(r.status, 200, "{}", r.headers);
    let first: Value = serde_json::from_str(r.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["session"], 0, "a decoded datagram: {first}");
    // And through the client `dabs trace` uses.
    let base = format!("http://{}", s.addr);
    let e = dabs_ops::trace_client(&base, None, "", |_| {}).await.unwrap_err();
    assert!(e.starts_with("authorization: this needs the operator token"), "{e}");
    let e = dabs_ops::trace_client(&base, Some(WRONG), "", |_| {}).await.unwrap_err();
    assert_eq!(e, "authorization: the operator token is wrong");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = tokio::spawn(async move {
        dabs_ops::trace_client(&base, Some(TOKEN), "session=0", |line| {
            let _ = tx.send(line);
        })
        .await
    });
    let line = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(line["session"], 0, "{line}");
    client.abort();

    // On loopback the read-only views, the page and the document are open.
    for path in ["/", "/api/node", "/api/farm", "/api/events", "/api/settings", "/metrics", "/openapi.json"] {
        let r = request(s.addr, "GET", path, None, "").await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }
    assert_eq!(request(s.addr, "GET", "/api/settings", None, "").await.json()["version"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_nothing_can_change() {
    let s = Served::start("").await;
    for auth in [None, Some(bearer(TOKEN))] {
        let r = request(s.addr, "PUT", "/api/settings", auth.as_deref(), r#"{"low_water_ms": 50}"#).await;
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["error"]["field"], "authorization");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("[operator] token"), "{}", r.body);
        let r = request(s.addr, "GET", "/api/trace", auth.as_deref(), "").await;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(request(s.addr, "GET", "/api/settings", None, "").await.json()["version"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_reads_need_the_token_too() {
    let s = Served::start(&format!("[operator]\ntoken = \"{TOKEN}\"\nopen_reads = false")).await;
    for path in ["/api/node", "/api/farm", "/api/events", "/api/settings", "/metrics"] {
        request(s.addr, "GET", path, None, "").await.assert_unauthorized(false);
        request(s.addr, "GET", path, Some(&bearer(WRONG)), "").await.assert_unauthorized(true);
        let r = request(s.addr, "GET", path, Some(&bearer(TOKEN)), "").await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    }
    // The page (where the token is entered) and the document hold nothing of the node's.
    for path in ["/", "/openapi.json"] {
        assert_eq!(request(s.addr, "GET", path, None, "").await.status, 200, "GET {path}");
    }
    let r = request(s.addr, "PUT", "/api/settings", Some(&bearer(TOKEN)), r#"{"low_water_ms": 50}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_off_loopback_without_a_token_is_refused() {
    let s = Served::start("").await;
    let open = dabs_ops::Access::new(None, true);
    let e = dabs_ops::serve(s.node.handle(), "0.0.0.0:0".parse().unwrap(), open).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("not a loopback address"), "{e}");
    s.stop().await;
}
