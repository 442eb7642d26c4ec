//! The job-execution service's HTTP API (R-JOB, interop.md "Jobs"): submit a job, read its
//! state and results, and follow it as server-sent events. Any node answers for any job: it
//! asks the member that holds it. Refusals are `{"error": text}`, as interop.md fixes them.

use crate::auth::Access;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use dabs_node::{NodeHandle, Submission};
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// Largest request body `POST /api/jobs` reads: a module and inputs at their limits, in base64.
pub(crate) const MAX_BODY: usize = 3 << 20;

fn refuse(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": text.into() }))).into_response()
}

/// A job as `POST /api/jobs` takes it (interop.md).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JobBody {
    module: String,
    inputs: Vec<String>,
    #[serde(default)]
    fuel: Option<u64>,
    #[serde(default)]
    notify: Option<String>,
}

/// Who may submit: with an operator token configured, its bearer; without one, anyone who
/// may read (loopback) — interop.md: "where the farm requires a token".
fn may_submit(access: &Access, headers: &HeaderMap) -> Result<(), crate::auth::Refusal> {
    if access.has_token() || !access.reads_open() {
        return access.check(headers);
    }
    Ok(())
}

/// Submits a job: one task per input; the id comes back at once.
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", operation_id = "submitJob", security((), ("bearer" = [])),
    request_body(content = doc::JobSubmission, description = "The module and the tasks' inputs, base64"),
    responses(
        (status = 202, description = "Accepted: where to follow it", body = doc::JobAccepted),
        (status = 400, description = "The module or the body cannot be read", body = doc::JobError),
        (status = 413, description = "Larger than the service takes", body = doc::JobError),
        (status = 503, description = "No balancer or no compute server is registered", body = doc::JobError),
    ))]
pub(crate) async fn submit(
    State(node): State<NodeHandle>,
    State(access): State<Access>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = may_submit(&access, &headers) {
        return refusal.into_response();
    }
    let job: JobBody = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a job ({e}); expected {{\"module\": B64, \"inputs\": [B64, ...], \"fuel\"?: N, \"notify\"?: URL}}"
                ),
            );
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let module = match b64.decode(job.module.as_bytes()) {
        Ok(m) => m,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("module is not standard base64: {e}")),
    };
    let mut inputs = Vec::with_capacity(job.inputs.len());
    for (i, input) in job.inputs.iter().enumerate() {
        match b64.decode(input.as_bytes()) {
            Ok(bytes) => inputs.push(bytes),
            Err(e) => {
                return refuse(StatusCode::BAD_REQUEST, format!("inputs[{i}] is not standard base64: {e}"));
            }
        }
    }
    let submission = Submission { module, inputs, fuel: job.fuel, notify: job.notify };
    match node.submit_job(submission).await {
        Ok(accepted) => {
            let id = accepted.id;
            let body = json!({
                "id": id,
                "status": format!("/api/jobs/{id}"),
                "result": format!("/api/jobs/{id}/result"),
                "events": format!("/api/jobs/{id}/events"),
                "address": format!("mp://{}/jobs/{id}", node.farm()),
            });
            (StatusCode::ACCEPTED, axum::Json(body)).into_response()
        }
        Err(e) => refuse(StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST), e.to_string()),
    }
}

fn unknown(node: &NodeHandle, id: &str) -> Response {
    refuse(StatusCode::NOT_FOUND, format!("no member of farm {} holds a job {id:?}", node.farm()))
}

fn unavailable(why: String) -> Response {
    refuse(StatusCode::SERVICE_UNAVAILABLE, format!("the job's holder did not answer: {why}"))
}

/// A job's state.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", operation_id = "getJob", security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "Its state", body = doc::JobState),
        (status = 404, description = "No such job", body = doc::JobError),
    ))]
pub(crate) async fn status(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    match node.job_view(&id).await {
        Ok(Some(v)) => axum::Json(json!({
            "id": v.id, "state": v.state, "tasks": v.tasks, "done": v.done, "failed": v.failed,
            "owner": v.owner, "replica": v.replica,
        }))
        .into_response(),
        Ok(None) => unknown(&node, &id),
        Err(e) => unavailable(e),
    }
}

/// `?timing=true`: each result also names its compute server and when it ran.
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub(crate) struct ResultQuery {
    #[serde(default)]
    timing: bool,
}

/// A job's results, in task order, once it is done.
#[utoipa::path(get, path = "/api/jobs/{id}/result", tag = "jobs", operation_id = "getJobResult", security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The job's id"),
        ("timing" = Option<bool>, Query, description = "Also name each task's compute server and its start and end, Unix µs")),
    responses(
        (status = 200, description = "Every task's output or error", body = doc::JobResult),
        (status = 404, description = "No such job", body = doc::JobError),
        (status = 409, description = "Not done yet", body = doc::JobError),
    ))]
pub(crate) async fn result(
    State(node): State<NodeHandle>,
    Path(id): Path<String>,
    Query(q): Query<ResultQuery>,
) -> Response {
    match node.job_view(&id).await {
        Ok(Some(v)) if v.state != "done" => refuse(
            StatusCode::CONFLICT,
            format!(
                "job {id} is {}: {} of {} tasks done; follow /api/jobs/{id}/events",
                v.state, v.done, v.tasks
            ),
        ),
        Ok(Some(_)) => match node.job_results(&id).await {
            Ok(Some(results)) => axum::Json(dabs_node::result_json(&id, &results, q.timing)).into_response(),
            Ok(None) => unknown(&node, &id),
            Err(e) => unavailable(e),
        },
        Ok(None) => unknown(&node, &id),
        Err(e) => unavailable(e),
    }
}

/// A job's progress as server-sent events: `task` per finished task (data: its index), then
/// `done` (data: the result URL).
#[utoipa::path(get, path = "/api/jobs/{id}/events", tag = "jobs", operation_id = "getJobEvents", security((), ("bearer" = [])),
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = doc::JobError),
    ))]
pub(crate) async fn events(State(node): State<NodeHandle>, Path(id): Path<String>) -> Response {
    // The first question finds the job (or says there is none) before the stream starts.
    let first = match node.job_progress(&id, 0, Duration::ZERO).await {
        Ok(Some(p)) => p,
        Ok(None) => return unknown(&node, &id),
        Err(e) => return unavailable(e),
    };
    let stream = futures_util::stream::unfold(
        (node, id, 0u32, Some(first), false),
        |(node, id, seen, mut ready, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let (tasks, done) = match ready.take() {
                    Some(p) => p,
                    None => match node.job_progress(&id, seen, Duration::from_secs(10)).await {
                        Ok(Some(p)) => p,
                        // Its holder is gone for now: ask again (another member takes it over).
                        Ok(None) | Err(_) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                let seen = seen + tasks.len() as u32;
                let mut events: Vec<Result<Event, Infallible>> =
                    tasks.iter().map(|t| Ok(Event::default().event("task").data(t.to_string()))).collect();
                if done {
                    events.push(Ok(Event::default().event("done").data(format!("/api/jobs/{id}/result"))));
                }
                if events.is_empty() {
                    continue;
                }
                return Some((futures_util::stream::iter(events), (node, id, seen, None, done)));
            }
        },
    );
    use futures_util::StreamExt;
    Sse::new(stream.flatten()).keep_alive(KeepAlive::default()).into_response()
}

/// The shapes the OpenAPI document shows.
pub(crate) mod doc {
    #![allow(dead_code)] // The types exist for their schemas: nothing constructs them.
    use utoipa::ToSchema;

    /// A job to run.
    #[derive(ToSchema)]
    pub(crate) struct JobSubmission {
        /// The WebAssembly module, standard base64
        module: String,
        /// One task per input, each standard base64
        inputs: Vec<String>,
        /// Fuel per task (default and most: the node's [jobs] max_fuel)
        fuel: Option<u64>,
        /// Told when the job is done: http://… gets a POST of the result, mp://HOST:PORT/QUEUE a JOB_DONE
        notify: Option<String>,
    }

    /// Where to follow an accepted job.
    #[derive(ToSchema)]
    pub(crate) struct JobAccepted {
        /// The job's id
        id: String,
        /// Its state's path
        status: String,
        /// Its result's path
        result: String,
        /// Its event stream's path
        events: String,
        /// Its MP address, mp://FARM/jobs/ID
        address: String,
    }

    /// A job's state.
    #[derive(ToSchema)]
    pub(crate) struct JobState {
        /// The id
        id: String,
        /// queued, running or done
        state: String,
        /// Tasks in all
        tasks: u32,
        /// Tasks with a committed result
        done: u32,
        /// Of those, the ones that failed
        failed: u32,
        /// The member that owns it now
        owner: String,
        /// The member keeping its copy
        replica: Option<String>,
    }

    /// One task's result: `ok` (base64 output) or `err`.
    #[derive(ToSchema)]
    pub(crate) struct TaskResult {
        /// Its index
        task: u32,
        /// Its output, standard base64
        ok: Option<String>,
        /// Why it failed
        err: Option<String>,
        /// The compute server that ran it (with ?timing=true)
        node: Option<String>,
        /// When it started, Unix µs (with ?timing=true)
        started_us: Option<u64>,
        /// When it ended, Unix µs (with ?timing=true)
        ended_us: Option<u64>,
    }

    /// A job's results.
    #[derive(ToSchema)]
    pub(crate) struct JobResult {
        /// The id
        id: String,
        /// In task order
        results: Vec<TaskResult>,
    }

    /// A refusal, as interop.md fixes it.
    #[derive(ToSchema)]
    pub(crate) struct JobError {
        /// What is wrong and what to do
        error: String,
    }
}
