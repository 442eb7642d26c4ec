//! The page's history: the charts' data, removing members that are down, and the static files
//! the page loads (the charting library, uPlot, is served from here: the page needs no CDN).

use crate::api::error;
use crate::auth::Authorized;
use crate::openapi as doc;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dabs_node::NodeHandle;
use dabs_node::history::{RemoveError, SAMPLES_KEPT};
use serde_json::json;

/// The files under `/assets/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("charts.js", "text/javascript; charset=utf-8", include_str!("charts.js")),
    ("uplot.min.js", "text/javascript; charset=utf-8", include_str!("../assets/uplot/uPlot.iife.min.js")),
    ("uplot.min.css", "text/css; charset=utf-8", include_str!("../assets/uplot/uPlot.min.css")),
    ("uplot.LICENSE", "text/plain; charset=utf-8", include_str!("../assets/uplot/LICENSE")),
];

/// The names `/assets/{file}` serves.
pub(crate) fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(name, ..)| *name)
}

/// The page's static files: its chart code and the uPlot charting library (MIT, uplot.LICENSE).
#[utoipa::path(get, path = "/assets/{file}", tag = "page", operation_id = "asset",
    params(("file" = String, Path, description = "charts.js, uplot.min.js, uplot.min.css or uplot.LICENSE")),
    responses(
        (status = 200, description = "The file (JavaScript, CSS or text)", content_type = "*/*", body = String),
        (status = 404, description = "No such file (field \"file\")", body = doc::Error),
    ))]
pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "file",
            format!("no such asset; there are {}", asset_names().collect::<Vec<_>>().join(", ")),
        ),
    }
}

/// The charts' data: each member's figures, one sample a second over the last 10 minutes, and
/// the farm's.
#[utoipa::path(get, path = "/api/history", tag = "views", operation_id = "getHistory", security((), ("bearer" = [])),
    responses((status = 200, description = "Columns aligned on t", body = doc::History)))]
pub(crate) async fn history(State(node): State<NodeHandle>) -> axum::Json<serde_json::Value> {
    let mut charts = serde_json::to_value(node.charts()).unwrap_or_default();
    charts["interval_s"] = json!(1);
    charts["window_s"] = json!(SAMPLES_KEPT);
    axum::Json(charts)
}

/// Removes a member that is down (and its history) from this node's views.
#[utoipa::path(delete, path = "/api/members/{name}", tag = "views", operation_id = "removeMember", security(("bearer" = [])),
    params(("name" = String, Path, description = "The member's name")),
    responses(
        (status = 200, description = "Removed", body = doc::Removed),
        (status = 404, description = "No member of that name is down (field \"name\")", body = doc::Error),
        (status = 409, description = "It is a live member: only down ones are removed (field \"name\")", body = doc::Error),
        doc::Refusals,
    ))]
pub(crate) async fn remove_member(
    _: Authorized,
    State(node): State<NodeHandle>,
    Path(name): Path<String>,
) -> Response {
    match node.remove_down(&name) {
        Ok(()) => axum::Json(json!({ "removed": name })).into_response(),
        Err(e @ RemoveError::Live(_)) => error(StatusCode::CONFLICT, "name", e.to_string()),
        Err(e @ RemoveError::NotDown(_)) => error(StatusCode::NOT_FOUND, "name", e.to_string()),
    }
}
