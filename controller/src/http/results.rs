//! The results API: `POST /api/v1/results` (and `POST /` for pie's own probe images) with the
//! agent's [`ProbeResult`].
//!
//! Every check happens before the store is touched, so bad input loses nothing and changes
//! nothing: 405 wrong method, 401 no or bad token, 415 not JSON, 413 body over 64 KiB, 400
//! unparsable or invalid result, 422 a probe this controller does not manage, 403 a probe
//! reporting for another one, 503 the token cannot be checked now or this replica is not the
//! leader (the agent retries). Errors are
//! `{"error": "..."}`.

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use pie_api::{ProbeKey, ProbeResult};
use serde_json::json;

use crate::http::auth::{AuthError, Authenticator, bearer};
use crate::metrics::catalogue;
use crate::metrics::catalogue::{Op, Probe, Update};
use crate::metrics::push::Pusher;
use remote_write::now_ms;

/// Largest accepted body, bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Which mount probes results are accepted for.
pub trait Targets: Send + Sync + fmt::Debug {
    /// Whether `triple` is a mount probe this controller manages.
    fn contains(&self, triple: &ProbeKey) -> bool;

    /// Whether this replica knows its probes (the leader with synced caches); others answer
    /// 503 so the probe retries and reaches the leader.
    fn ready(&self) -> bool {
        true
    }
}

/// Every probe (the `receive` mode: no Kubernetes to ask).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyTarget;

impl Targets for AnyTarget {
    fn contains(&self, _: &ProbeKey) -> bool {
        true
    }
}

/// What the receiver needs.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Where accepted results go.
    pub pusher: Pusher,
    /// Checks the bearer token.
    pub auth: Arc<dyn Authenticator>,
    /// The probes results are accepted for.
    pub targets: Arc<dyn Targets>,
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// The receiver's routes.
pub fn router(receiver: Receiver) -> Router {
    let store = receiver.pusher.clone();
    Router::new()
        .route("/api/v1/results", post(receive))
        .route("/", post(receive))
        .method_not_allowed_fallback(|| async {
            err(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: POST a result",
            )
        })
        .fallback(|| async { err(StatusCode::NOT_FOUND, "not found: POST /api/v1/results") })
        .with_state(receiver)
        .layer(middleware::from_fn_with_state(store, count_requests))
}

async fn count_requests(State(pusher): State<Pusher>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    pusher.record([catalogue::receiver_request(
        response.status().as_str(),
        now_ms(),
    )]);
    response
}

/// Serves the receiver on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    receiver: Receiver,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(receiver))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = check(&receiver, &headers, body).await?;
    let updates = result_updates(&result, now_ms());
    let errors = receiver.pusher.record(updates);
    if let Some(e) = errors.first() {
        // Validation makes this unreachable; report it rather than lose it silently.
        return Err(err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    Ok(Json(json!({ "status": "accepted" })))
}

/// Every check of a request, in order; the parsed result when all pass.
async fn check(
    receiver: &Receiver,
    headers: &HeaderMap,
    body: Body,
) -> Result<ProbeResult, ApiError> {
    let authorization = match headers.get(AUTHORIZATION).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "invalid Authorization header",
            ));
        }
    };
    let identity = receiver
        .auth
        .authenticate(bearer(authorization))
        .await
        .map_err(|e| match e {
            AuthError::Missing | AuthError::Invalid(_) => {
                err(StatusCode::UNAUTHORIZED, e.to_string())
            }
            AuthError::Forbidden(_) => err(StatusCode::FORBIDDEN, e.to_string()),
            AuthError::Unavailable(_) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        })?;
    if !is_json(headers) {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        ));
    }
    let too_large = || {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(err(StatusCode::BAD_REQUEST, "empty body: POST a result"));
    }
    let result: ProbeResult = serde_json::from_slice(&bytes)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid result: {e}")))?;
    result
        .validate()
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid result: {e}")))?;
    if !receiver.targets.ready() {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader or its caches are not synced yet; retry",
        ));
    }
    let triple = ProbeKey {
        pie_probe_name: result.pie_probe_name.clone(),
        node: result.node.clone(),
        storage_class: result.storage_class.clone(),
    };
    if !receiver.targets.contains(&triple) {
        return Err(err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("no mount probe managed by this controller for {triple}"),
        ));
    }
    if !identity.may_report(&triple) {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!("this token may not report for {triple}"),
        ));
    }
    Ok(result)
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(Ok(value)) = headers.get(CONTENT_TYPE).map(|v| v.to_str()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

/// The store updates of an accepted result received at `now_ms`: pie's counter (both
/// `succeed` values exist), and on success pie's latency gauges, the fio extras present and the
/// last-success time.
pub fn result_updates(r: &ProbeResult, now_ms: i64) -> Vec<Update> {
    let probe = Probe::mount(&r.pie_probe_name, &r.node, &r.storage_class);
    let succeed = r.performance_probe_succeed;
    let mut updates = vec![
        catalogue::performance_total(probe, !succeed, Op::Ensure, now_ms),
        catalogue::performance_total(probe, succeed, Op::Inc(1.0), now_ms),
    ];
    if succeed {
        let gauges = [
            (&catalogue::WRITE_LATENCY, Some(r.write_latency)),
            (&catalogue::READ_LATENCY, Some(r.read_latency)),
            (&catalogue::READ_IOPS, r.read_iops),
            (&catalogue::WRITE_IOPS, r.write_iops),
            (&catalogue::READ_BANDWIDTH, r.read_bytes_per_second),
            (&catalogue::WRITE_BANDWIDTH, r.write_bytes_per_second),
            (&catalogue::READ_LATENCY_P99, r.read_latency_p99),
            (&catalogue::WRITE_LATENCY_P99, r.write_latency_p99),
            (&catalogue::LAST_SUCCESS, Some(now_ms as f64 / 1000.0)),
        ];
        for (family, value) in gauges {
            if let Some(v) = value {
                updates.push(catalogue::probe_gauge(family, probe, v, now_ms));
            }
        }
    }
    updates
}

#[cfg(test)]
mod tests;
