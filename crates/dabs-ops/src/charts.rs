//! The page's history: the charts' data, removing members that are down, and the static files
//! the page loads (the charting library, uPlot, is served from here: the page needs no CDN).

use crate::api::error;
use crate::auth::Authorized;
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

pub(crate) async fn history(State(node): State<NodeHandle>) -> axum::Json<serde_json::Value> {
    let mut charts = serde_json::to_value(node.charts()).unwrap_or_default();
    charts["interval_s"] = json!(1);
    charts["window_s"] = json!(SAMPLES_KEPT);
    axum::Json(charts)
}

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
