//! The operator interface over real HTTP, in front of a real node running the calculator.

use dabs_node::Node;
use dabs_testkit::{NodeConfigBuilder, POLL, eventually_async, random_group};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The operator token of the node under test (credentials themselves: tests/auth.rs).
const TOKEN: &str = "api-test-token-0123456789abcdef";

/// A node with its operator interface; each test has its own multicast group, so nodes of
/// tests running side by side do not join one farm.
struct Served {
    node: Node,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfigBuilder::new("ops", random_group(), "node-1")
            .app("calc", true)
            .extra(&format!("[operator]\ntoken = \"{TOKEN}\"\n"))
            .build(dir.path());
        let access = dabs_ops::Access::from_config(&config);
        let node = Node::start(config, vec![dabs_calc::factory()]).await.unwrap();
        let (addr, server) =
            dabs_ops::serve(node.handle(), "127.0.0.1:0".parse().unwrap(), access).await.unwrap();
        Served { node, addr, server, _dir: dir }
    }

    async fn stop(self) {
        self.server.abort();
        self.node.stop().await;
    }

    async fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, None, None).await
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    async fn put_settings(&self, body: &str) -> (u16, Value) {
        let r = request(self.addr, "PUT", "/api/settings", Some(body), Some(TOKEN)).await;
        (r.status, serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body)))
    }
}

struct Response {
    status: u16,
    /// Header lines, lower-cased.
    headers: String,
    body: String,
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`, so the body ends with
/// it), with the operator token when given.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    // Lossy: a module's bytes (application/wasm) are not text; their headers are.
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = headers.to_ascii_lowercase();
    let body = if headers.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Response { status, headers, body }
}

/// The status line and headers of a response whose body may never end, lower-cased.
async fn response_head(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0; 1024];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed before the headers ended");
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&raw).to_ascii_lowercase()
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_and_its_farm_are_shown() {
    let s = Served::start().await;
    let v = s.get_json("/api/node").await;
    assert_eq!(v["node"]["name"], "node-1");
    assert_eq!(v["node"]["farm"], "ops");
    assert_eq!(v["node"]["mp"], s.node.mp_addr().to_string());
    assert_eq!(v["node"]["operator"], s.addr.to_string(), "serve tells the node where it listens");
    assert_eq!(v["settings"]["version"], 0);
    assert_eq!(v["settings"]["apps"]["calc"]["max_sessions_per_portion"], 1000);
    let portions = v["portions"].as_array().unwrap();
    assert_eq!(portions.len(), 1, "{v}");
    assert_eq!(portions[0]["app"], "calc");
    assert!(portions[0]["va"].as_str().unwrap().starts_with("mp://ops/calc/dasp/"));

    // The node hears its own announcements and becomes the farm's leader.
    let farm = eventually_async("node-1 to lead its farm", Duration::from_secs(3), POLL, async || {
        let farm = s.get_json("/api/farm").await;
        if farm["leader"] == "node-1" { Ok(farm) } else { Err(format!("no leader: {farm}")) }
    })
    .await;
    assert_eq!(farm["farm"], "ops");
    let members = farm["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["name"], "node-1");
    assert_eq!(members[0]["leader"], true);
    assert_eq!(members[0]["operator_url"], format!("http://{}/", s.addr));
    assert_eq!(members[0]["portions"].as_array().unwrap().len(), 1);
    // No client yet: nothing accepted, no service time measured, and the load is the next
    // client (1) plus host pressure.
    assert_eq!(members[0]["accepted"], 0);
    assert!(members[0]["portions"][0]["service_ms"].is_null(), "{farm}");
    let load = members[0]["load"].as_f64().unwrap();
    assert!((1.0..=4.0).contains(&load), "{load}");
    assert!(portions[0]["service_ms"].is_null());
    assert_eq!(s.get_json("/api/node").await["leader"], "node-1");

    let events = s.get_json("/api/events").await;
    assert!(
        events.as_array().unwrap().iter().any(|e| e["text"].as_str().unwrap().contains("initialisation")),
        "{events}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_change_at_run_time_and_bad_values_are_refused() {
    let s = Served::start().await;
    let (status, v) = s.put_settings(r#"{"max_message_latency_ms": 300}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["version"].as_u64(), v["max_message_latency_ms"].as_u64()), (Some(1), Some(300)));
    assert_eq!(v["changed_by"], "node-1");
    assert_eq!(s.get_json("/api/settings").await["max_message_latency_ms"], 300);

    let (status, v) = s.put_settings(r#"{"low_water_ms": 999999}"#).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["field"], "low_water_ms");
    assert!(v["error"]["message"].as_str().unwrap().contains("below max_message_latency_ms"), "{v}");

    let (status, v) = s.put_settings(r#"{"max_latency": 3}"#).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["field"], "max_latency");

    let (status, v) = s.put_settings(r#"{"apps": {"calc": {"max_cpu_percent": 0}}}"#).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["field"], "apps.calc.max_cpu_percent");

    let (status, v) = s.put_settings("max_message_latency_ms=5").await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["field"], "body");

    let (status, v) =
        s.put_settings(r#"{"apps": {"calc": {"subgroup": ["node-1"], "max_cpu_percent": 80}}}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], 2, "refusals change nothing");
    assert_eq!(v["apps"]["calc"]["subgroup"][0], "node-1");
    let node = s.get_json("/api/node").await;
    assert_eq!(node["settings"]["version"], 2);
    assert_eq!(node["node"]["settings_version"], 2);
    let events = s.get_json("/api/events").await;
    // The event says what changed, from what to what.
    let text = events.to_string();
    assert!(text.contains("settings v2 made here: apps.calc.subgroup [] → [node-1]"), "{events}");
    assert!(text.contains("apps.calc.max_cpu_percent 100 → 80"), "{events}");
    s.stop().await;
}

/// Issue 19: Prometheus reads /metrics with every family's type (parsed by the reference
/// OpenMetrics parser in tests/interop/check_metrics.py), and the Grafana dashboard in docs/
/// asks only for names the node exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_openmetrics_and_feed_the_dashboard() {
    let s = Served::start().await;
    let url = format!("http://{}/metrics", s.addr);
    let dashboard = dabs_testkit::repo_root().join("docs/grafana-dashboard.json");
    let out = tokio::task::spawn_blocking(move || {
        dabs_testkit::run_python_check(
            "check_metrics.py",
            &["--url".as_ref(), url.as_ref(), "--dashboard".as_ref(), dashboard.as_os_str()],
        )
    })
    .await
    .unwrap();
    assert!(out.contains("6 passed, 0 failed"), "{out}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_and_api_document() {
    let s = Served::start().await;
    let m = s.get("/metrics").await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers.contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        m.headers
    );
    assert!(m.body.contains("dabs_mp_datagrams_received_total"), "{}", m.body);

    let page = s.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.headers.contains("content-type: text/html"));
    for id in [
        "members",
        "portions",
        "events",
        "node-name",
        "updated",
        "save-settings",
        "settings-status",
        "token-form",
        "operator-token",
    ] {
        assert!(page.body.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    assert!(!page.body.contains("src=\"http") && !page.body.contains("href=\"http"), "no external assets");
    // The charting library and the page's chart code come from the node itself, with its licence.
    for (file, kind, needle) in [
        ("uplot.min.js", "text/javascript", "uPlot"),
        ("uplot.min.css", "text/css", ".uplot"),
        ("charts.js", "text/javascript", "dabsCharts"),
        ("uplot.LICENSE", "text/plain", "MIT License"),
    ] {
        assert!(
            page.body.contains(&format!("/assets/{file}")) || file.ends_with("LICENSE"),
            "{file} not loaded"
        );
        let r = s.get(&format!("/assets/{file}")).await;
        assert_eq!(r.status, 200, "{file}");
        assert!(r.headers.contains(&format!("content-type: {kind}")), "{file}: {}", r.headers);
        assert!(r.body.contains(needle), "{file} lacks {needle}");
    }
    let missing = s.get("/assets/nope.js").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("uplot.min.js"), "{}", missing.body);

    let doc = s.get_json("/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "utoipa writes OpenAPI 3.1");
    for (method, path) in dabs_ops::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path} is not in /openapi.json");
        // Every documented route is served (the trace streams, so only its head is read).
        if *method == "get" && *path != "/api/trace" {
            let path = path
                .replace("{file}", "uplot.min.js")
                .replace("{app}", "calc")
                .replace("{name}", "integer-ops")
                .replace("/modules", "/modules?class=native")
                .replace("?class=native/", "/");
            if path.contains("/modules/") {
                let r = s.get(&path).await;
                assert_eq!(r.status, 200, "GET {path}");
                assert!(r.headers.contains("content-type: application/wasm"), "{}", r.headers);
                assert!(r.body.starts_with("\0asm"), "a WebAssembly module");
                // A peer-locked module is never served, nor listed (R-CL-4).
                let locked = s.get("/api/applications/calc/modules/floating-point-ops").await;
                assert_eq!(locked.status, 404, "{}", locked.body);
                let listed = s.get("/api/applications/calc/modules?class=native").await;
                assert!(!listed.body.contains("floating-point-ops"), "{}", listed.body);
                assert!(listed.body.contains("\"signature\""), "{}", listed.body);
                let unclassed = s.get("/api/applications/calc/modules").await;
                assert_eq!(unclassed.status, 400, "{}", unclassed.body);
                let unknown = s.get("/api/applications/calc/modules?class=phone").await;
                assert!(unknown.status == 404 && unknown.body.contains("native"), "{}", unknown.body);
                continue;
            }
            if path == "/mp" {
                // Only a WebSocket upgrade is taken there (tests/delivery.rs speaks MP over it).
                let r = s.get(&path).await;
                assert_eq!(r.status, 400, "GET /mp without an upgrade: {}", r.body);
                assert!(r.body.contains("WebSocket"), "{}", r.body);
                continue;
            }
            if path.contains("{id}") {
                // A job id this node never issued: a clear 404, on each of the job's routes.
                let r = s.get(&path.replace("{id}", "nosuchjob")).await;
                assert_eq!(r.status, 404, "GET {path}: {}", r.body);
                assert!(r.body.contains("nosuchjob"), "GET {path} names the id: {}", r.body);
                continue;
            }
            assert_eq!(s.get(&path).await.status, 200, "GET {path}");
        }
    }
    for schema in ["NodeView", "Portion", "Event", "Settings", "SettingsPatch", "Error"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "no {schema} schema");
    }

    let missing = s.get("/api/nope").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("\"error\""));
    s.stop().await;
}

/// Follows the trace until the first line, for at most `limit`.
async fn first_trace_line(addr: SocketAddr, query: &str, limit: Duration) -> Result<Value, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let base = format!("http://{addr}");
    let query = query.to_owned();
    let client = tokio::spawn(async move {
        dabs_ops::trace_client(&base, Some(TOKEN), &query, |line| {
            let _ = tx.send(line);
        })
        .await
    });
    let got = tokio::time::timeout(limit, rx.recv()).await;
    match got {
        Ok(Some(line)) => {
            // Dropping the client closes its connection; the server then drops its tap.
            client.abort();
            Ok(line)
        }
        Ok(None) => Err(client.await.unwrap().expect_err("a trace without lines ended cleanly")),
        Err(_) => {
            client.abort();
            Err("no trace line in time".into())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_streams_datagrams() {
    let s = Served::start().await;
    let line = first_trace_line(s.addr, "", Duration::from_secs(2)).await.unwrap();
    for key in ["at_ms", "dir", "peer", "kind", "command", "session", "dst", "src", "bytes", "error"] {
        assert!(line.get(key).is_some(), "no {key} in {line}");
    }
    assert!(line["error"].is_null(), "{line}");
    assert!(line["dir"] == "out" || line["dir"] == "in");

    // Announcements are sessionless: session 0 lets them through, another session does not.
    let line = first_trace_line(s.addr, "?session=0", Duration::from_secs(2)).await.unwrap();
    assert_eq!(line["session"], 0);
    assert!(first_trace_line(s.addr, "session=77", Duration::from_millis(700)).await.is_err());

    let e = first_trace_line(s.addr, "session=abc", Duration::from_secs(2)).await.unwrap_err();
    assert!(e.starts_with("session: "), "{e}");
    let e = first_trace_line(s.addr, "va=mp://ops/calc/dasp/nope", Duration::from_secs(2)).await.unwrap_err();
    assert!(e.starts_with("va: "), "{e}");
    let e = first_trace_line(s.addr, "colour=red", Duration::from_secs(2)).await.unwrap_err();
    assert!(e.starts_with("colour: "), "{e}");

    // A portion's virtual address is accepted (its traffic shows once clients call it).
    let va = s.get_json("/api/node").await["portions"][0]["va"].as_str().unwrap().to_owned();
    let head = response_head(s.addr, &format!("/api/trace?va={va}&command=300")).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/x-ndjson"), "{head}");
    s.stop().await;
}

#[test]
fn trace_client_needs_plain_http() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = rt.block_on(dabs_ops::trace_client("https://127.0.0.1:1", None, "", |_| {})).unwrap_err();
    assert!(e.contains("http://"), "{e}");
}

/// The keys of `value` against `schema` (in `doc`): every key it has is described, every
/// required one is there; `at` names the place for the failure message.
fn check_keys(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check_keys(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        // Nullable references are `oneOf: [{"type": "null"}, {"$ref": …}]`.
        if value.is_null() {
            assert!(choices.iter().any(|c| c["type"] == "null"), "{at}: null where the schema has no null");
            return;
        }
        let schema = choices.iter().find(|c| c["type"] != "null").unwrap();
        return check_keys(doc, schema, value, at);
    }
    match value {
        Value::Object(map) if schema["properties"].is_object() => {
            for key in map.keys() {
                let s = &schema["properties"][key];
                assert!(s.is_object(), "{at}.{key} is served but not in the document");
                check_keys(doc, s, &map[key], &format!("{at}.{key}"));
            }
            for key in schema["required"].as_array().into_iter().flatten() {
                assert!(map.contains_key(key.as_str().unwrap()), "{at}.{key} is required but not served");
            }
        }
        Value::Object(map) if schema["additionalProperties"].is_object() => {
            for (key, v) in map {
                check_keys(doc, &schema["additionalProperties"], v, &format!("{at}.{key}"));
            }
        }
        Value::Array(items) => {
            assert!(schema["items"].is_object(), "{at} is an array the document does not describe as one");
            for (i, v) in items.iter().enumerate() {
                check_keys(doc, &schema["items"], v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_what_the_handlers_serve() {
    let s = Served::start().await;
    let doc = s.get_json("/openapi.json").await;
    // Wait for the node's own announcement, so the farm lists a member with its portion.
    eventually_async("the node in its own farm view", Duration::from_secs(20), POLL, || async {
        let farm = s.get_json("/api/farm").await;
        (farm["members"].as_array().is_some_and(|m| !m.is_empty())).then_some(())
    })
    .await;
    for (path, served) in [
        ("/api/node", "/api/node"),
        ("/api/farm", "/api/farm"),
        ("/api/events", "/api/events"),
        ("/api/settings", "/api/settings"),
        ("/api/applications", "/api/applications"),
        ("/api/applications/{app}/policy", "/api/applications/calc/policy"),
        ("/api/nearness", "/api/nearness"),
    ] {
        let body = s.get_json(served).await;
        let schema = &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{path}: no JSON response schema");
        check_keys(&doc, schema, &body, path);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_router_serves_is_in_the_document() {
    let s = Served::start().await;
    let doc = s.get_json("/openapi.json").await;
    let documented = |method: &str, path: &str| doc["paths"][path][method.to_lowercase()].is_object();
    // Every path anyone names: the document, the route list, the page's requests, and some that
    // an API like this might grow.
    let mut paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    paths.extend(dabs_ops::ROUTES.iter().map(|(_, p)| p.to_string()));
    let page = s.get("/").await.body;
    for part in page.split("/api/").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        paths.push(format!("/api/{name}"));
    }
    paths.extend(
        ["/api", "/api/", "/api/portions", "/api/history", "/api/members", "/health"].map(String::from),
    );
    paths.sort();
    paths.dedup();
    let client = reqwest::Client::new();
    let mut served = 0;
    for path in &paths {
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            // No token: guarded routes answer 401, which still says they are routed, and the
            // trace does not start streaming.
            let response = client
                .request(method.parse().unwrap(), format!("http://{}{path}", s.addr))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let body: Value = if status == 404 {
                serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default()
            } else {
                Value::Null
            };
            let routed = status != 405 && !(status == 404 && body["error"]["field"] == "path");
            assert_eq!(
                routed,
                documented(method, path),
                "{method} {path}: the router {} it, the document {}",
                if routed { "serves" } else { "does not serve" },
                if documented(method, path) { "has it" } else { "does not" }
            );
            served += usize::from(routed);
        }
    }
    assert_eq!(served, dabs_ops::ROUTES.len(), "every documented operation was reached");
    s.stop().await;
}
