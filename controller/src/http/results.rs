//! The probes' API: `POST /api/v1/results` (and `POST /` for pie's own probe images) with the
//! agent's [`ProbeResult`], and `POST /api/v1/provision-started` with a provision probe's
//! [`ProvisionStarted`].
//!
//! Every check happens before the store is touched, so bad input loses nothing and changes
//! nothing: 405 wrong method, 401 no or bad token, 415 not JSON, 413 body over 64 KiB, 400
//! unparsable or invalid body, 422 a probe this controller does not manage, 403 a probe
//! reporting for another one, 503 (with `Retry-After: 1`) the token cannot be checked now, this
//! replica is not the leader, or the probe Pod's outcome is not counted yet (the agent retries).
//! Errors are `{"error": "..."}`.
//!
//! A probe Pod's report is accepted only once the outcome tracker has counted the Pod (from its
//! start), so the Pod, which waits for the answer, cannot finish before anyone counted it: a Pod
//! that runs while the controller restarts or the Lease moves is counted by the next leader.

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
use pie_api::{PROVISION_STARTED_PATH, ProbeKey, ProbeResult, ProvisionStarted, RESULTS_PATH};
use serde_json::json;

use crate::http::auth::{AuthError, Authenticator, Identity, bearer};
use crate::metrics::catalogue;
use crate::metrics::catalogue::{Op, Probe, Update};
use crate::metrics::push::{Pusher, SETTLE_TIMEOUT};
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

    /// Whether the outcome of the probe Pod with UID `pod_uid` is counted.
    fn counted(&self, _pod_uid: &str) -> bool {
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
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            tracing::debug!(status = self.0.as_u16(), error = %self.1, "probe request: retry later");
        } else {
            tracing::info!(status = self.0.as_u16(), error = %self.1, "probe request refused");
        }
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            // Each 503 here passes within a second or a Lease duration: come back soon.
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, 1.into());
        }
        response
    }
}

fn err(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// The receiver's routes.
pub fn router(receiver: Receiver) -> Router {
    let store = receiver.pusher.clone();
    Router::new()
        .route(RESULTS_PATH, post(receive))
        .route("/", post(receive))
        .route(PROVISION_STARTED_PATH, post(provision_started))
        .method_not_allowed_fallback(|| async {
            err(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: POST a result",
            )
        })
        .fallback(|| async {
            err(
                StatusCode::NOT_FOUND,
                "not found: POST /api/v1/results or /api/v1/provision-started",
            )
        })
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
    // Answer once the result is out of memory (delivered, or on disk), so that a controller
    // killed in between loses nothing the probe was told was taken: the probe retries. Past
    // the bound (VictoriaMetrics down and no disk buffer), the result stays queued.
    if !receiver.pusher.settle(SETTLE_TIMEOUT).await {
        tracing::debug!("a result is accepted before it left memory (remote write is slow)");
    }
    Ok(Json(json!({ "status": "accepted" })))
}

/// `POST /api/v1/provision-started`: 200 once the outcome of the provision probe Pod behind the
/// token is counted, 503 until then.
async fn provision_started(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let identity = authenticate(&receiver, &headers).await?;
    let started: ProvisionStarted = read_json(&headers, body).await?;
    started
        .validate()
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid report: {e}")))?;
    let Identity::ProvisionProbe {
        pie_probe_name,
        storage_class,
        pod_uid,
    } = identity
    else {
        return Err(err(
            StatusCode::FORBIDDEN,
            "only a provision probe Pod reports its start (with its own token)",
        ));
    };
    if (pie_probe_name.as_str(), storage_class.as_str())
        != (
            started.pie_probe_name.as_str(),
            started.storage_class.as_str(),
        )
    {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!(
                "this token is a provision probe of {pie_probe_name} on {storage_class}, not of {} on {}",
                started.pie_probe_name, started.storage_class
            ),
        ));
    }
    not_leader(&receiver)?;
    if !receiver.targets.counted(&pod_uid) {
        return Err(not_counted());
    }
    Ok(Json(json!({ "status": "counted" })))
}

fn not_leader(receiver: &Receiver) -> Result<(), ApiError> {
    if receiver.targets.ready() {
        return Ok(());
    }
    Err(err(
        StatusCode::SERVICE_UNAVAILABLE,
        "this replica is not the leader or its caches are not synced yet; retry",
    ))
}

fn not_counted() -> ApiError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "this probe Pod's start is not counted yet; retry",
    )
}

/// Who sent the request (401, 403 or 503 when that cannot be told).
async fn authenticate(receiver: &Receiver, headers: &HeaderMap) -> Result<Identity, ApiError> {
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
    receiver
        .auth
        .authenticate(bearer(authorization))
        .await
        .map_err(|e| match e {
            AuthError::Missing | AuthError::Invalid(_) => {
                err(StatusCode::UNAUTHORIZED, e.to_string())
            }
            AuthError::Forbidden(_) => err(StatusCode::FORBIDDEN, e.to_string()),
            AuthError::Unavailable(_) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        })
}

/// The JSON body as `T` (415 not JSON, 413 too large, 400 empty or unparsable).
async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
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
    serde_json::from_slice(&bytes)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid result: {e}")))
}

/// Every check of a result, in order; the parsed result when all pass.
async fn check(
    receiver: &Receiver,
    headers: &HeaderMap,
    body: Body,
) -> Result<ProbeResult, ApiError> {
    let identity = authenticate(receiver, headers).await?;
    let result: ProbeResult = read_json(headers, body).await?;
    result
        .validate()
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid result: {e}")))?;
    not_leader(receiver)?;
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
    if let Some(pod_uid) = identity.pod_uid()
        && !receiver.targets.counted(pod_uid)
    {
        return Err(not_counted());
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
