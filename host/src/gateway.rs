//! The HTTP gateway (axum): grain calls, probes, metrics and the admin routes.
//!
//! `status_of` is the one place a `CallError` becomes an HTTP status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, RawPathParamsRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawPathParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::grain_id::GrainId;
use crate::message::{CallChain, CallError};
use crate::reminders::{MissedPolicy, ReminderRecord, Schedule};
use crate::silo::Silo;
use crate::storage::Health;

/// Seconds a refused client should wait before retrying (503 responses).
const RETRY_AFTER_SECS: &str = "1";
/// Largest component accepted by `PUT /v1/kinds/{kind}`.
const MAX_COMPONENT_BYTES: usize = 64 << 20;

pub fn router(silo: Arc<Silo>) -> Router {
    // The body limit is enforced by axum while reading; one byte over the payload cap
    // is still read so the cap itself is allowed.
    let limit = silo.config.max_payload_bytes;
    Router::new()
        .route("/v1/grains/{kind}/{key}/{method}", post(call_grain))
        .route("/v1/grains", get(list_activations))
        // A grain method may be called `reminders` too: POST on this path is a call.
        .route(
            "/v1/grains/{kind}/{key}/reminders",
            get(list_reminders).post(call_reminders_method),
        )
        .route("/v1/kinds", get(list_kinds))
        .route(
            "/v1/kinds/{kind}",
            put(deploy_kind).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES)),
        )
        .route("/v1/admin/drain", post(request_drain))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(silo)
}

/// What the listener answers while the silo starts (waiting for the data directory lock,
/// compiling kinds): alive, not ready, no calls.
pub fn starting_router() -> Router {
    let not_yet = || async {
        let body = json!({ "error": "starting", "message": "the silo is starting; retry shortly" });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
            Json(body),
        )
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({ "state": "starting" })),
                )
            }),
        )
        .fallback(not_yet)
}

async fn call_reminders_method(
    State(silo): State<Arc<Silo>>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(call(&silo, params, Some("reminders"), body).await)
}

async fn call_grain(
    State(silo): State<Arc<Silo>>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    respond(call(&silo, params, None, body).await)
}

/// The path's `kind`, `key` and `method` (unless the route fixes it) are read in place:
/// only what the call keeps is copied.
async fn call(
    silo: &Arc<Silo>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    method: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<u8>, CallError> {
    let body = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => CallError::TooLarge(silo.config.max_payload_bytes as u64),
        _ => CallError::BadPayload(r.body_text()),
    })?;
    let params = params.map_err(|r| CallError::BadId(r.body_text()))?;
    let param = |name: &str| {
        params
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v))
            .unwrap_or_default()
    };
    let target =
        GrainId::parse(param("kind"), param("key")).map_err(|e| CallError::BadId(e.to_string()))?;
    let method = method.unwrap_or_else(|| param("method"));
    validate_method(method)?;
    if !silo.lifecycle.is_admitting() {
        return Err(CallError::Draining);
    }
    let deadline = Instant::now() + silo.config.call_timeout();
    let payload = Vec::from(body);
    silo.call(
        target,
        method.to_owned(),
        payload,
        CallChain::default(),
        deadline,
    )
    .await
}

fn respond(result: Result<Vec<u8>, CallError>) -> Response {
    match result {
        Ok(reply) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            reply,
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

fn validate_method(method: &str) -> Result<(), CallError> {
    crate::grain_id::validate_method(method).map_err(|e| CallError::BadId(e.to_string()))
}

/// The one mapping from `CallError` to HTTP status.
pub fn status_of(e: &CallError) -> StatusCode {
    match e {
        CallError::BadId(_) | CallError::BadPayload(_) => StatusCode::BAD_REQUEST,
        CallError::UnknownKind(_) | CallError::UnknownMethod(_) => StatusCode::NOT_FOUND,
        CallError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        CallError::App(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CallError::Trapped(_) | CallError::MemoryLimit(_) => StatusCode::INTERNAL_SERVER_ERROR,
        CallError::Deadline => StatusCode::GATEWAY_TIMEOUT,
        CallError::Overloaded | CallError::Draining => StatusCode::SERVICE_UNAVAILABLE,
        CallError::Cycle(_) => StatusCode::LOOP_DETECTED,
    }
}

fn error_response(e: &CallError) -> Response {
    let mut body = json!({ "error": e.code(), "message": e.to_string() });
    if let CallError::Trapped(incident) | CallError::MemoryLimit(incident) = e {
        body["incident"] = json!(incident);
    }
    let mut response = (status_of(e), Json(body)).into_response();
    if status_of(e) == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

/// Fails once a storage write failed for a reason other than a full disk: sled's I/O
/// errors are sticky and only a restart recovers. A full disk only drops readiness: the
/// silo reopens its store by itself once space returns, and a restart would not help.
async fn healthz(State(silo): State<Arc<Silo>>) -> Response {
    match silo.storage.health() {
        Health::Healthy | Health::Stalled => "ok".into_response(),
        Health::Failed => {
            let body = json!({ "error": "storage", "message": "a storage write failed; restart the silo" });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn readyz(State(silo): State<Arc<Silo>>) -> Response {
    let state = silo.lifecycle.state();
    let storage = silo.storage.health();
    if storage == Health::Stalled {
        let body = json!({ "state": state, "storage": "full: waiting for space to reopen" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let status = if silo.lifecycle.is_ready() && storage == Health::Healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "state": state }))).into_response()
}

async fn list_reminders(
    State(silo): State<Arc<Silo>>,
    Path((kind, key)): Path<(String, String)>,
) -> Response {
    let grain = match GrainId::parse(&kind, &key) {
        Ok(g) => g,
        Err(e) => return error_response(&CallError::BadId(e.to_string())),
    };
    if silo.kinds.get(&grain.kind).is_none() {
        return error_response(&CallError::UnknownKind(grain.kind));
    }
    match silo.storage.reminders_of(&grain) {
        Ok(records) => {
            let reminders: Vec<_> = records.iter().map(reminder_json).collect();
            Json(json!({ "grain": grain.to_string(), "reminders": reminders })).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "storage", "message": e.to_string() })),
        )
            .into_response(),
    }
}

fn reminder_json(r: &ReminderRecord) -> serde_json::Value {
    let schedule = match &r.schedule {
        Schedule::Every { period_ms } => json!({ "every_ms": period_ms }),
        Schedule::Cron(expr) => json!({ "cron": expr }),
    };
    let missed = match r.missed {
        MissedPolicy::FireOnce => json!("fire-once"),
        MissedPolicy::Skip => json!("skip"),
        MissedPolicy::CatchUp(n) => json!({ "catch-up": n }),
    };
    let history: Vec<_> = r
        .history
        .iter()
        .map(|t| {
            json!({
                "scheduled_ms": t.scheduled_ms,
                "fired_ms": t.fired_ms,
                "attempts": t.attempts,
                "ok": t.error.is_none(),
                "error": t.error,
            })
        })
        .collect();
    json!({
        "name": r.name,
        "schedule": schedule,
        "missed": missed,
        "next_due_ms": r.next_due_ms,
        "history": history,
    })
}

async fn metrics(State(silo): State<Arc<Silo>>) -> Response {
    silo.metrics
        .reminders_stored
        .set(silo.storage.reminder_count() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        silo.metrics.encode(),
    )
        .into_response()
}

async fn list_kinds(State(silo): State<Arc<Silo>>) -> Json<serde_json::Value> {
    let activations = silo.catalog.summaries();
    let kinds: Vec<_> = silo
        .kinds
        .list()
        .iter()
        .map(|k| {
            let count = activations.iter().filter(|a| a.kind == k.name).count();
            json!({ "kind": k.name, "version": k.version, "activations": count })
        })
        .collect();
    Json(json!({ "kinds": kinds }))
}

async fn list_activations(State(silo): State<Arc<Silo>>) -> Json<serde_json::Value> {
    Json(json!({ "activations": silo.catalog.summaries() }))
}

async fn deploy_kind(
    State(silo): State<Arc<Silo>>,
    Path(kind): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(denied) = authorize_admin(&silo, peer, &headers) {
        return denied.into_response();
    }
    let wasm = match body {
        Ok(b) => b,
        Err(r) => {
            let body = json!({ "error": "bad-component", "message": r.body_text() });
            return (r.status(), Json(body)).into_response();
        }
    };
    let deploying = silo.clone();
    let result = tokio::task::spawn_blocking(move || deploying.deploy(&kind, &wasm)).await;
    match result {
        Ok(Ok(deployed)) => Json(json!(deployed)).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(file = %e.file, reason = %e.reason, "refused deploy");
            let body = json!({ "error": "bad-component", "message": e.to_string() });
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
        Err(e) => {
            let body = json!({ "error": "internal", "message": e.to_string() });
            (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response()
        }
    }
}

async fn request_drain(
    State(silo): State<Arc<Silo>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(denied) = authorize_admin(&silo, peer, &headers) {
        return denied.into_response();
    }
    silo.lifecycle.drain_requested.cancel();
    (StatusCode::ACCEPTED, Json(json!({ "state": "draining" }))).into_response()
}

/// Why an admin request was refused.
struct Denied(StatusCode, &'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let body = json!({ "error": "forbidden", "message": self.1 });
        (self.0, Json(body)).into_response()
    }
}

/// With a configured token: a matching bearer token (compared in constant time). Without
/// one: loopback clients only.
fn authorize_admin(silo: &Silo, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Denied> {
    let deny = Denied;
    match &silo.config.admin_token {
        Some(token) => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(deny(
                    StatusCode::UNAUTHORIZED,
                    "admin routes need the bearer token",
                ))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err(deny(
            StatusCode::FORBIDDEN,
            "admin routes answer loopback clients only when no admin_token is configured",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert!(validate_method("increment").is_ok());
        assert!(validate_method("get-all_2").is_ok());
        for bad in ["", "a/b", "a b", "é", &"m".repeat(129), "a\u{1b}b"] {
            assert!(validate_method(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_error_has_a_status() {
        let errors = [
            CallError::UnknownKind("x".into()),
            CallError::BadId("x".into()),
            CallError::UnknownMethod("x".into()),
            CallError::BadPayload("x".into()),
            CallError::App("x".into()),
            CallError::Trapped("x".into()),
            CallError::Deadline,
            CallError::Overloaded,
            CallError::Draining,
            CallError::Cycle("x".into()),
            CallError::TooLarge(1),
            CallError::MemoryLimit("x".into()),
        ];
        let statuses: Vec<u16> = errors.iter().map(|e| status_of(e).as_u16()).collect();
        assert_eq!(
            statuses,
            [404, 400, 404, 400, 422, 500, 504, 503, 503, 508, 413, 500]
        );
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
