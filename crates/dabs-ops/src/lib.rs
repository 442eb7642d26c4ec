//! A node's operator interface (R-OPS-1): an HTTP API and a live web page showing the farm's
//! members and their statistics, the node's portions, recent events and the run-time
//! settings (which can be changed here), plus Prometheus metrics, an OpenAPI document and a
//! streaming trace of the node's MP traffic.
//!
//! Every change, the traffic trace (and, to come, job submission) needs the operator token
//! ([`Access`], [`Authorized`]); the read-only views are open on loopback.

mod api;
mod auth;
mod charts;
mod client;
mod delivery;
mod jobs;
mod openapi;
mod policy;
mod trace;

pub use auth::{AUTH_FIELD, Access, Authorized, Refusal, require_token};
pub use client::{follow_events, get_json, get_json_with, get_text, post_json, put_json, trace_client};
pub use openapi::document as openapi_document;
pub use trace::{TapRecord, TraceFilter, trace_line};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::FromRef;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};
use dabs_node::NodeHandle;
use std::net::SocketAddr;

/// Every route the router serves, as (method, path): the OpenAPI document must cover them all.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/api/node"),
    ("get", "/api/farm"),
    ("get", "/api/events"),
    ("get", "/api/history"),
    ("delete", "/api/members/{name}"),
    ("get", "/api/settings"),
    ("put", "/api/settings"),
    ("get", "/api/trace"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/assets/{file}"),
    ("get", "/api/applications"),
    ("get", "/api/applications/{app}/policy"),
    ("put", "/api/applications/{app}/policy"),
    ("get", "/api/nearness"),
    ("post", "/api/jobs"),
    ("get", "/api/jobs/{id}"),
    ("get", "/api/jobs/{id}/result"),
    ("get", "/api/jobs/{id}/events"),
    ("get", "/api/applications/{app}/modules"),
    ("get", "/api/applications/{app}/modules/{name}"),
    ("get", "/api/farm/publishing-key"),
    ("get", "/mp"),
];

/// The routes that need the operator token whatever the address (the read-only views need it
/// only where [`Access::reads_open`] is false), as (method, path).
pub const PROTECTED: &[(&str, &str)] = &[
    ("put", "/api/settings"),
    ("get", "/api/trace"),
    ("delete", "/api/members/{name}"),
    ("put", "/api/applications/{app}/policy"),
];

/// The routes' state: the node, and who may use it.
#[derive(Clone)]
struct Ops {
    node: NodeHandle,
    access: Access,
}

impl FromRef<Ops> for NodeHandle {
    fn from_ref(ops: &Ops) -> NodeHandle {
        ops.node.clone()
    }
}

impl FromRef<Ops> for Access {
    fn from_ref(ops: &Ops) -> Access {
        ops.access.clone()
    }
}

/// The operator interface's routes over `node`, guarded by `access` (what [`serve`] runs;
/// tests drive it directly). The changes and the trace take [`Authorized`]; the read-only
/// views sit behind the reads guard; the page, its assets and the OpenAPI document are always
/// open (they hold nothing of the node's, and the page is where an operator enters the token).
pub fn router(node: NodeHandle, access: Access) -> Router {
    let state = Ops { node, access: access.clone() };
    Router::new()
        .route("/api/node", get(api::node))
        .route("/api/farm", get(api::farm))
        .route("/api/events", get(api::events))
        .route("/api/history", get(charts::history))
        .route("/api/members/{name}", delete(charts::remove_member))
        .route("/api/settings", get(api::settings).put(api::put_settings))
        .route("/api/applications", get(policy::applications))
        .route("/api/nearness", get(policy::nearness))
        .route("/api/applications/{app}/policy", get(policy::get_policy).put(policy::put_policy))
        .route("/api/trace", get(trace::handler))
        .route("/api/jobs", post(jobs::submit).layer(DefaultBodyLimit::max(jobs::MAX_BODY)))
        .route("/api/jobs/{id}", get(jobs::status))
        .route("/api/jobs/{id}/result", get(jobs::result))
        .route("/api/jobs/{id}/events", get(jobs::events))
        .route("/metrics", get(api::metrics))
        .route_layer(from_fn_with_state(access, auth::guard_reads))
        .route("/", get(api::page))
        .route("/openapi.json", get(api::openapi))
        .route("/assets/{file}", get(charts::asset))
        // What clients fetch and speak: open, like the page (a client has no token).
        .route("/api/applications/{app}/modules", get(delivery::listing))
        .route("/api/applications/{app}/modules/{name}", get(delivery::module))
        .route("/api/farm/publishing-key", get(delivery::publishing_key))
        .route("/mp", get(delivery::websocket))
        .fallback(api::not_found)
        .with_state(state)
}

/// Binds `addr` (port 0 picks one), tells the node where its operator interface is so the
/// farm can link to it, and serves until the returned task is aborted. An address other
/// than loopback without a token is refused (`InvalidInput`): anyone who could reach it
/// could change the farm's settings and read its traffic.
pub async fn serve(
    node: NodeHandle,
    addr: SocketAddr,
    access: Access,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if !addr.ip().is_loopback() && !access.has_token() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} is not a loopback address and there is no operator token ([operator] token)"),
        ));
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    node.set_operator(bound);
    let app = router(node.clone(), access);
    let task = tokio::spawn(async move {
        // The peer's address names a WebSocket client's MP connection.
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!(error = %e, "operator interface stopped");
        }
    });
    tracing::info!(node = %node.name(), addr = %bound, "operator interface listening");
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_every_route_and_only_those() {
        let doc = openapi_document();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in ROUTES {
            assert!(paths.get(*path).and_then(|p| p.get(*method)).is_some(), "{method} {path} undocumented");
        }
        for (path, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                assert!(ROUTES.contains(&(method.as_str(), path.as_str())), "{method} {path} is not routed");
            }
        }
        // The protected operations declare the bearer scheme; the others may use it.
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["type"], "http");
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (method, path) in ROUTES {
            let security = &doc["paths"][path][method]["security"];
            if PROTECTED.contains(&(method, path)) {
                assert_eq!(security, &serde_json::json!([{"bearer": []}]), "{method} {path}");
                assert!(doc["paths"][path][method]["responses"]["401"].is_object(), "{method} {path}");
            }
        }
        // Every reference resolves.
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name} is not defined");
        }
    }
}
