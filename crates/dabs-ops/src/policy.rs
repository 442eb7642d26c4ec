//! Application policies (seed 003, interop.md "The DNS front"): each application's policy,
//! its preferred server and why; reading and swapping the policy live. These endpoints answer
//! a refusal as `{"error": text}`, the shape interop.md fixes for clients in other languages.

use crate::auth::Authorized;
use crate::openapi as doc;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dabs_node::NodeHandle;
use dabs_node::settings::{AppPatch, SettingsPatch};
use serde_json::json;

fn refuse(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": text.into() }))).into_response()
}

/// The body of a policy change.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: String,
}

/// Every application's policy, the server it prefers now and the figures it chose on.
#[utoipa::path(get, path = "/api/applications", tag = "policies", operation_id = "getApplications", security((), ("bearer" = [])),
    responses((status = 200, description = "One entry per application", body = [doc::PolicyView])))]
pub(crate) async fn applications(State(node): State<NodeHandle>) -> axum::Json<serde_json::Value> {
    axum::Json(json!(node.policies()))
}

/// The client networks the `closest` policy has been asked about and each node's measured
/// round trip to them.
#[utoipa::path(get, path = "/api/nearness", tag = "policies", operation_id = "getNearness", security((), ("bearer" = [])),
    responses((status = 200, description = "One entry per client network", body = [doc::NearnessView])))]
pub(crate) async fn nearness(State(node): State<NodeHandle>) -> axum::Json<serde_json::Value> {
    axum::Json(json!(node.nearness()))
}

/// One application's policy, preferred server and ranking.
#[utoipa::path(get, path = "/api/applications/{app}/policy", tag = "policies", operation_id = "getPolicy", security((), ("bearer" = [])),
    params(("app" = String, Path, description = "The application")),
    responses(
        (status = 200, description = "Its policy", body = doc::PolicyView),
        (status = 404, description = "No such application", body = doc::PolicyError),
    ))]
pub(crate) async fn get_policy(State(node): State<NodeHandle>, Path(app): Path<String>) -> Response {
    match node.policies().into_iter().find(|p| p.app == app) {
        Some(view) => axum::Json(json!(view)).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("farm {} runs no application {app:?}", node.farm())),
    }
}

/// Swaps an application's policy; the change reaches every node without a restart, and no
/// client's session is touched: only where new clients go and what DNS answers changes.
#[utoipa::path(put, path = "/api/applications/{app}/policy", tag = "policies", operation_id = "putPolicy", security(("bearer" = [])),
    params(("app" = String, Path, description = "The application")),
    request_body(content = doc::PolicyChange, description = "The new policy"),
    responses(
        (status = 200, description = "The policy in force after the change", body = doc::PolicyView),
        (status = 400, description = "Not a known policy, or not a JSON object {\"policy\": NAME}", body = doc::PolicyError),
        (status = 404, description = "No such application", body = doc::PolicyError),
        doc::Refusals,
    ))]
pub(crate) async fn put_policy(
    _: Authorized,
    State(node): State<NodeHandle>,
    Path(app): Path<String>,
    body: Bytes,
) -> Response {
    if !node.policies().iter().any(|p| p.app == app) {
        return refuse(StatusCode::NOT_FOUND, format!("farm {} runs no application {app:?}", node.farm()));
    }
    let body: PolicyBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("expected {{\"policy\": NAME}}: {e}")),
    };
    let patch = SettingsPatch {
        apps: [(app.clone(), AppPatch { policy: Some(body.policy), ..Default::default() })].into(),
        ..Default::default()
    };
    match node.update_settings(&patch) {
        Ok(_) => match node.policies().into_iter().find(|p| p.app == app) {
            Some(view) => axum::Json(json!(view)).into_response(),
            None => refuse(StatusCode::NOT_FOUND, format!("application {app:?} is gone")),
        },
        Err(e) => refuse(StatusCode::BAD_REQUEST, e.message),
    }
}
