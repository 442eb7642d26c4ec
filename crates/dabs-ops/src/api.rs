//! The JSON API, the page, metrics and the OpenAPI document.

use crate::auth::Authorized;
use crate::openapi as doc;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use dabs_node::NodeHandle;
use dabs_node::settings::{SettingsError, SettingsPatch};
use dabs_node::stats::{NodeStats, ServiceTimes, load_score};
use dabs_node::zones::Thresholds;
use serde_json::{Value, json};

const PAGE: &str = include_str!("page.html");

/// The `{"error": {"field", "message"}}` body every refusal carries.
pub(crate) fn error(status: StatusCode, field: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": {"field": field, "message": message.into()}}))).into_response()
}

/// A node's statistics with readable names: the announcement's short wire keys are for the
/// datagram, not for people or API clients. Its load is read against `farm`, the service
/// times of the members it is shown with, and its zone against the farm's `thresholds`.
pub(crate) fn node_view(
    s: &NodeStats,
    leader: Option<&str>,
    farm: &ServiceTimes,
    thresholds: &Thresholds,
) -> Value {
    // An interface bound to every address is reached at the node's own MP address.
    let operator = s.operator.map(|mut a| {
        if a.ip().is_unspecified() {
            a.set_ip(s.mp.ip());
        }
        a
    });
    json!({
        "name": s.node,
        "farm": s.farm,
        "mp": s.mp.to_string(),
        "operator": operator.map(|a| a.to_string()),
        "operator_url": operator.map(|a| format!("http://{a}/")),
        "leader": leader == Some(s.node.as_str()),
        "started_ms": s.started_ms,
        "seq": s.seq,
        "cpu_percent": s.cpu_percent,
        "mem_total_mb": s.mem_total_mb,
        "mem_free_mb": s.mem_free_mb,
        "disk_free_mb": s.disk_free_mb,
        "net_bytes_per_s": s.net_bytes_per_s,
        "accepting": s.accepting,
        "leaving": s.leaving,
        "draining": s.draining,
        "health": s.health,
        "zone": thresholds.zone(s.health).as_str(),
        "client_alerts": s.client_alerts,
        "settings_version": s.settings_version,
        "accepted": s.accepted,
        "sessions": s.sessions(),
        "load": load_score(s, farm),
        "portions": s.portions.iter().map(|p| json!({
            "app": p.app,
            "va": p.va,
            "queue": p.queue,
            "sessions": p.sessions,
            "queue_depth": p.queue_depth,
            "latency_ms": p.latency_ms,
            "timeouts": p.timeouts,
            "service_ms": p.service_ms,
            "rate": p.rate,
            "figures": p.figures.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
            "status_fault": p.status_fault,
        })).collect::<Vec<_>>(),
        "compute": s.compute.map(|c| json!({
            "threads": c.threads,
            "queued": c.queued,
            "busy_ms": c.busy_ms,
            "completed": c.completed,
            "failed": c.failed,
            "last_done_ms": c.last_done_ms,
            "recent_us": c.recent_us,
        })),
        "balancer": s.balancer,
    })
}

/// The operator web page (self-contained HTML, refreshes every second).
#[utoipa::path(get, path = "/", tag = "page", operation_id = "page",
    responses((status = 200, description = "The page", content_type = "text/html", body = String)))]
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// This node: statistics, portions, settings and the farm's leader.
#[utoipa::path(get, path = "/api/node", tag = "views", operation_id = "getNode", security((), ("bearer" = [])),
    responses((status = 200, description = "This node", body = inline(doc::NodeBody))))]
pub(crate) async fn node(State(node): State<NodeHandle>) -> axum::Json<Value> {
    let (members, leader) = node.members();
    let me = node.stats();
    let farm = ServiceTimes::of(members.iter().filter(|m| m.node != me.node).chain([&me]));
    let c = node.counters();
    let count = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({
        "node": node_view(&me, leader.as_deref(), &farm, &node.settings().thresholds()),
        "portions": node.portions(),
        "counters": {
            "spawns": count(&c.spawns),
            "moves": count(&c.moves),
            "failovers": count(&c.failovers),
            "portions_retired": count(&c.portions_retired),
        },
        "settings": node.settings(),
        "leader": leader,
    }))
}

/// The farm as this node sees it, itself included.
#[utoipa::path(get, path = "/api/farm", tag = "views", operation_id = "getFarm", security((), ("bearer" = [])),
    responses((status = 200, description = "The farm", body = inline(doc::FarmBody))))]
pub(crate) async fn farm(State(node): State<NodeHandle>) -> axum::Json<Value> {
    let (mut members, leader) = node.members();
    // Before its first announcement has come back a node does not list itself yet.
    if !members.iter().any(|m| m.node == node.name()) {
        members.push(node.stats());
    }
    members.sort_by(|a, b| a.node.cmp(&b.node));
    let farm = ServiceTimes::of(&members);
    let thresholds = node.settings().thresholds();
    axum::Json(json!({
        "farm": node.farm(),
        "leader": leader,
        "members": members.iter().map(|m| node_view(m, leader.as_deref(), &farm, &thresholds)).collect::<Vec<_>>(),
        "down": node.down_members(),
    }))
}

/// Recent events (spawns, moves, failovers, members, alerts), oldest first.
#[utoipa::path(get, path = "/api/events", tag = "views", operation_id = "getEvents", security((), ("bearer" = [])),
    responses((status = 200, description = "Events", body = Vec<doc::Event>)))]
pub(crate) async fn events(State(node): State<NodeHandle>) -> axum::Json<Value> {
    axum::Json(json!(node.events()))
}

/// The run-time settings in force.
#[utoipa::path(get, path = "/api/settings", operation_id = "getSettings", tag = "settings", security((), ("bearer" = [])),
    responses((status = 200, description = "Settings", body = doc::Settings)))]
pub(crate) async fn settings(State(node): State<NodeHandle>) -> axum::Json<Value> {
    axum::Json(json!(node.settings()))
}

/// Changes run-time settings; the change reaches every node without a restart.
#[utoipa::path(put, path = "/api/settings", operation_id = "putSettings", tag = "settings", security(("bearer" = [])),
    request_body(content = doc::SettingsPatch, description = "The settings to change"),
    responses(
        (status = 200, description = "The settings after the change (version increased)", body = doc::Settings),
        (status = 400, description = "A value out of range, an unknown key, or a body that is not JSON \
            (field \"body\")", body = doc::Error),
        doc::Refusals,
    ))]
pub(crate) async fn put_settings(_: Authorized, State(node): State<NodeHandle>, body: Bytes) -> Response {
    let applied = patch_from_json(&body).and_then(|patch| node.update_settings(&patch));
    match applied {
        Ok(s) => axum::Json(json!(s)).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.field, e.message),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "metrics", operation_id = "metrics", security((), ("bearer" = [])),
    responses((status = 200, description = "OpenMetrics 1.0 text exposition", content_type = dabs_node::metrics::CONTENT_TYPE, body = String)))]
pub(crate) async fn metrics(State(node): State<NodeHandle>) -> Response {
    ([(header::CONTENT_TYPE, dabs_node::metrics::CONTENT_TYPE)], node.metrics().await).into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "page", operation_id = "openapi",
    responses((status = 200, description = "OpenAPI document", body = Object)))]
pub(crate) async fn openapi() -> axum::Json<Value> {
    axum::Json(crate::openapi::document())
}

pub(crate) async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "path", "no such route; see /openapi.json")
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError { field: field.into(), message: message.into() }
}

const TOP_KEYS: &[&str] = &[
    "max_message_latency_ms",
    "low_water_ms",
    "failover_threshold",
    "connection_threshold",
    "return_threshold",
    "retire_idle_after_ms",
    "apps",
];
const APP_KEYS: &[&str] = &["subgroup", "max_sessions_per_portion", "min_free_memory_mb", "max_cpu_percent"];

/// Reads a settings change from a request body. The JSON is walked before it is deserialized
/// so that a wrong key or type is reported against its own field, not as a parse position.
pub(crate) fn patch_from_json(body: &[u8]) -> Result<SettingsPatch, SettingsError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| refuse("body", format!("not valid JSON: {e}")))?;
    let Some(top) = v.as_object() else {
        return Err(refuse("body", "expected a JSON object of settings to change"));
    };
    for (key, val) in top {
        match key.as_str() {
            "max_message_latency_ms"
            | "low_water_ms"
            | "failover_threshold"
            | "connection_threshold"
            | "return_threshold"
            | "retire_idle_after_ms" => whole(key, val)?,
            "apps" => {
                let Some(apps) = val.as_object() else {
                    return Err(refuse("apps", "expected an object of application name to changes"));
                };
                for (name, changes) in apps {
                    let Some(changes) = changes.as_object() else {
                        return Err(refuse(format!("apps.{name}"), "expected an object of changes"));
                    };
                    for (k, val) in changes {
                        let field = format!("apps.{name}.{k}");
                        match k.as_str() {
                            "max_sessions_per_portion" | "min_free_memory_mb" => whole(&field, val)?,
                            "max_cpu_percent" if !(val.is_number() || val.is_null()) => {
                                return Err(refuse(field, format!("expected a number, got {val}")));
                            }
                            "subgroup" if !(val.is_null() || is_string_list(val)) => {
                                return Err(refuse(
                                    field,
                                    format!("expected a list of node names (strings), got {val}"),
                                ));
                            }
                            k if !APP_KEYS.contains(&k) => {
                                return Err(refuse(
                                    field,
                                    format!("unknown setting; expected one of {}", APP_KEYS.join(", ")),
                                ));
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {
                return Err(refuse(
                    key.as_str(),
                    format!("unknown setting; expected one of {}", TOP_KEYS.join(", ")),
                ));
            }
        }
    }
    serde_json::from_value(v).map_err(|e| refuse("body", e.to_string()))
}

fn whole(field: &str, val: &Value) -> Result<(), SettingsError> {
    if val.is_null() || val.is_u64() {
        Ok(())
    } else {
        Err(refuse(field, format!("expected a whole number of at least 0, got {val}")))
    }
}

fn is_string_list(val: &Value) -> bool {
    val.as_array().is_some_and(|a| a.iter().all(Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> String {
        patch_from_json(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn patches_parse() {
        let p = patch_from_json(
            br#"{"max_message_latency_ms": 300, "apps": {"calc": {"subgroup": ["a"], "max_cpu_percent": 80}}}"#,
        )
        .unwrap();
        assert_eq!(p.max_message_latency_ms, Some(300));
        assert_eq!(p.apps["calc"].subgroup.as_deref(), Some(&["a".to_owned()][..]));
        assert_eq!(p.apps["calc"].max_cpu_percent, Some(80.0));
        assert_eq!(patch_from_json(b"{}").unwrap(), SettingsPatch::default());
    }

    #[test]
    fn bad_patches_name_the_field() {
        assert_eq!(field("{"), "body");
        assert_eq!(field("[1]"), "body");
        assert_eq!(field(r#"{"max_latency": 3}"#), "max_latency");
        assert_eq!(field(r#"{"low_water_ms": "abc"}"#), "low_water_ms");
        assert_eq!(field(r#"{"low_water_ms": -1}"#), "low_water_ms");
        assert_eq!(field(r#"{"apps": 3}"#), "apps");
        assert_eq!(field(r#"{"apps": {"calc": []}}"#), "apps.calc");
        assert_eq!(field(r#"{"apps": {"calc": {"cpu": 1}}}"#), "apps.calc.cpu");
        assert_eq!(field(r#"{"apps": {"calc": {"subgroup": "a,b"}}}"#), "apps.calc.subgroup");
        assert_eq!(field(r#"{"apps": {"calc": {"max_cpu_percent": "x"}}}"#), "apps.calc.max_cpu_percent");
        assert_eq!(
            field(r#"{"apps": {"calc": {"max_sessions_per_portion": 1.5}}}"#),
            "apps.calc.max_sessions_per_portion"
        );
    }
}
