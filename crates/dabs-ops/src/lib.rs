//! A node's operator interface (R-OPS-1): an HTTP API and a live web page showing the farm's
//! members and their statistics, the node's portions, recent events and the run-time
//! settings (which can be changed here), plus Prometheus metrics, an OpenAPI document and a
//! streaming trace of the node's MP traffic.

mod api;
mod openapi;
mod trace;

pub use openapi::document as openapi_document;
pub use trace::{TapRecord, TraceFilter, get_json, trace_client, trace_line};

use axum::Router;
use axum::routing::get;
use dabs_node::NodeHandle;
use std::net::SocketAddr;

/// Every route the router serves, as (method, path): the OpenAPI document must cover them all.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/api/node"),
    ("get", "/api/farm"),
    ("get", "/api/events"),
    ("get", "/api/settings"),
    ("put", "/api/settings"),
    ("get", "/api/trace"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The operator interface's routes over `node` (what [`serve`] runs; tests drive it directly).
pub fn router(node: NodeHandle) -> Router {
    Router::new()
        .route("/", get(api::page))
        .route("/api/node", get(api::node))
        .route("/api/farm", get(api::farm))
        .route("/api/events", get(api::events))
        .route("/api/settings", get(api::settings).put(api::put_settings))
        .route("/api/trace", get(trace::handler))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi))
        .fallback(api::not_found)
        .with_state(node)
}

/// Binds `addr` (port 0 picks one), tells the node where its operator interface is so the
/// farm can link to it, and serves until the returned task is aborted.
pub async fn serve(
    node: NodeHandle,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    node.set_operator(bound);
    let app = router(node.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
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
        // Every reference resolves.
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["components"]["schemas"].get(name).is_some(), "{name} is not defined");
        }
    }
}
