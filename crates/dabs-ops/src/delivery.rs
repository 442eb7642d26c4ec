//! Client delivery on the operator port (R-CL, R-MP-7; interop.md "Client modules" and "MP
//! over a stream"): the module listing per client class, the modules' bytes, the farm's
//! publishing key, and MP over a WebSocket at `/mp`. All open: a client has no operator token,
//! and trusts what it fetches only once the publishing key's signature checks.

use crate::api::error;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dabs_node::{ListingError, NodeHandle};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;

/// The listing's query.
#[derive(Deserialize)]
pub(crate) struct ClassQuery {
    class: Option<String>,
}

/// The modules a client of `class` is entitled to, signed by the farm's publishing key.
#[utoipa::path(get, path = "/api/applications/{app}/modules", tag = "delivery", operation_id = "getModules",
    params(("app" = String, Path, description = "The application"),
           ("class" = String, Query, description = "The client's class (native, web, ...)")),
    responses(
        (status = 200, description = "The modules, never a peer-locked one", body = [crate::openapi::ModuleEntry]),
        (status = 400, description = "No class given", body = crate::openapi::Error),
        (status = 404, description = "No such application, or no modules for that class", body = crate::openapi::Error),
    ))]
pub(crate) async fn listing(
    State(node): State<NodeHandle>,
    Path(app): Path<String>,
    Query(q): Query<ClassQuery>,
) -> Response {
    let Some(class) = q.class.filter(|c| !c.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "class", "say which client class: ?class=CLASS");
    };
    match node.module_listing(&app, &class) {
        Ok(list) => axum::Json(json!(list)).into_response(),
        Err(e @ ListingError::UnknownApplication(_)) => error(StatusCode::NOT_FOUND, "app", e.to_string()),
        Err(e @ ListingError::UnknownClass { .. }) => error(StatusCode::NOT_FOUND, "class", e.to_string()),
    }
}

/// One module's bytes (`application/wasm`); a peer-locked module is never served.
#[utoipa::path(get, path = "/api/applications/{app}/modules/{name}", tag = "delivery", operation_id = "getModule",
    params(("app" = String, Path, description = "The application"), ("name" = String, Path, description = "The module")),
    responses(
        (status = 200, description = "The WebAssembly module", content_type = "application/wasm", body = Vec<u8>),
        (status = 404, description = "No such module for clients", body = crate::openapi::Error),
    ))]
pub(crate) async fn module(
    State(node): State<NodeHandle>,
    Path((app, name)): Path<(String, String)>,
) -> Response {
    match node.module_bytes(&app, &name) {
        Some(bytes) => ([(header::CONTENT_TYPE, "application/wasm")], bytes.to_vec()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "name",
            format!("application {app:?} sends clients no module {name:?}"),
        ),
    }
}

/// The farm's Ed25519 publishing key, which signs every module.
#[utoipa::path(get, path = "/api/farm/publishing-key", tag = "delivery", operation_id = "getPublishingKey",
    responses((status = 200, description = "The 32-byte public key, base64", body = crate::openapi::PublishingKey)))]
pub(crate) async fn publishing_key(State(node): State<NodeHandle>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"ed25519": dabs_farm_proto::modules::base64_encode(&node.publishing_key())}))
}

/// MP over a WebSocket: the upgrade is answered here and the connection handed to the node's
/// MP endpoint, each binary message one MP datagram.
#[utoipa::path(get, path = "/mp", tag = "delivery", operation_id = "mpWebSocket",
    responses(
        (status = 101, description = "Upgraded: MP datagrams, one per binary message"),
        (status = 400, description = "Not a WebSocket upgrade", body = crate::openapi::Error),
        (status = 503, description = "No room for another MP stream connection", body = crate::openapi::Error),
    ))]
pub(crate) async fn websocket(
    State(node): State<NodeHandle>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let Some(key) = upgrade_key(req.headers()) else {
        return closing(error(
            StatusCode::BAD_REQUEST,
            "upgrade",
            "MP here is a WebSocket: send GET with Upgrade: websocket, Sec-WebSocket-Version: 13 and a key",
        ));
    };
    let endpoint = node.endpoint().clone();
    // The place is taken before the 101: a client told yes keeps its connection.
    let Some(permit) = endpoint.stream_permit(peer.ip()) else {
        return closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upgrade",
            "this node takes no more MP stream connections (from this address) now; try another node",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                if !endpoint.attach_websocket(peer, hyper_util::rt::TokioIo::new(upgraded), permit) {
                    tracing::debug!(%peer, "MP over WebSocket: the node's endpoint is gone");
                }
            }
            Err(e) => tracing::debug!(%peer, error = %e, "MP over WebSocket: the upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&dabs_net::websocket_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// A refusal that closes the connection from this side, so the address pair's TIME_WAIT is
/// the node's: the client, which connects from its own MP port number, can connect again
/// from it at once.
fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The client's key when the headers ask for a version-13 WebSocket.
fn upgrade_key(h: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let ok = has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && h.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    ok.then(|| h.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok().map(str::to_owned)).flatten()
}
