use std::collections::HashMap;

use axum::http::{Method, Request};
use futures::future::BoxFuture;
use tower::ServiceExt;

use super::*;
use crate::http::auth::{Identity, SharedToken};
use crate::metrics::catalogue;
use crate::metrics::store::{Store, Value};

/// A fixed set of probes; every probe Pod is counted but `uid-not-yet`.
#[derive(Debug, Clone, Default)]
struct FixedTargets(std::collections::BTreeSet<ProbeKey>);

impl Targets for FixedTargets {
    fn contains(&self, triple: &ProbeKey) -> bool {
        self.0.contains(triple)
    }

    fn counted(&self, pod_uid: &str) -> bool {
        pod_uid != "uid-not-yet"
    }
}

/// Tokens mapped to identities; `"down"` means the TokenReview API is unreachable.
#[derive(Debug)]
struct Tokens(HashMap<&'static str, Identity>);

impl Authenticator for Tokens {
    fn authenticate<'a>(
        &'a self,
        token: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            match token {
                None => Err(AuthError::Missing),
                Some("down") => Err(AuthError::Unavailable("API server unreachable".into())),
                Some("other-pod") => Err(AuthError::Forbidden("not a probe Pod".into())),
                Some(t) => self
                    .0
                    .get(t)
                    .cloned()
                    .ok_or_else(|| AuthError::Invalid("unknown".into())),
            }
        })
    }
}

fn triple(node: &str) -> ProbeKey {
    ProbeKey {
        pie_probe_name: "test-pie-probe".into(),
        node: node.into(),
        storage_class: "topolvm-provisioner".into(),
    }
}

fn mount_pod(node: &str, uid: &str) -> Identity {
    Identity::Probe {
        key: triple(node),
        pod_uid: uid.into(),
    }
}

fn provision_pod(probe: &str, uid: &str) -> Identity {
    Identity::ProvisionProbe {
        pie_probe_name: probe.into(),
        storage_class: "topolvm-provisioner".into(),
        pod_uid: uid.into(),
    }
}

fn receiver(auth: Arc<dyn Authenticator>) -> (Router, Arc<Store>) {
    let store = Arc::new(Store::new());
    let targets = FixedTargets([triple("node-a"), triple("node-b")].into());
    let router = router(Receiver {
        pusher: Pusher::without_client(store.clone()),
        auth,
        targets: Arc::new(targets),
    });
    (router, store)
}

fn node_tokens() -> Arc<dyn Authenticator> {
    Arc::new(Tokens(
        [
            ("token-a", mount_pod("node-a", "uid-a")),
            ("token-b", mount_pod("node-b", "uid-b")),
            ("token-a-not-yet", mount_pod("node-a", "uid-not-yet")),
            ("provision", provision_pod("test-pie-probe", "uid-p")),
            (
                "provision-not-yet",
                provision_pod("test-pie-probe", "uid-not-yet"),
            ),
            ("provision-of-other", provision_pod("other-probe", "uid-o")),
            ("shared", Identity::Anyone),
        ]
        .into(),
    ))
}

const VALID: &str = r#"{"pie_probe_name":"test-pie-probe","node":"node-a","storage_class":"topolvm-provisioner","write_latency":0.002,"read_latency":0.001,"performance_probe_succeed":true,"read_iops":1000,"write_iops":900,"read_bytes_per_second":4096000,"write_bytes_per_second":3686400,"read_latency_p99":0.004,"write_latency_p99":0.005}"#;

fn valid_with(field: &str, raw: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(VALID).unwrap();
    v[field] = serde_json::from_str(raw).unwrap();
    v.to_string()
}

fn valid_without(field: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(VALID).unwrap();
    v.as_object_mut().unwrap().remove(field);
    v.to_string()
}

struct Req {
    method: Method,
    path: &'static str,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn post(body: impl Into<Vec<u8>>) -> Req {
    Req {
        method: Method::POST,
        path: "/api/v1/results",
        token: Some("token-a"),
        content_type: Some("application/json"),
        body: body.into(),
    }
}

async fn send(router: &Router, req: Req) -> (StatusCode, serde_json::Value) {
    let mut builder = Request::builder().method(req.method).uri(req.path);
    if let Some(t) = req.token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(ct) = req.content_type {
        builder = builder.header(CONTENT_TYPE, ct);
    }
    let response = router
        .clone()
        .oneshot(builder.body(Body::from(req.body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"));
    (status, json)
}

/// `send`, also returning the `Retry-After` header.
async fn send_with_retry_after(
    router: &Router,
    req: Req,
) -> (StatusCode, serde_json::Value, Option<String>) {
    let mut builder = Request::builder().method(req.method).uri(req.path);
    if let Some(t) = req.token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some(ct) = req.content_type {
        builder = builder.header(CONTENT_TYPE, ct);
    }
    let response = router
        .clone()
        .oneshot(builder.body(Body::from(req.body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap(), retry_after)
}

const STARTED: &str =
    r#"{"pie_probe_name":"test-pie-probe","storage_class":"topolvm-provisioner"}"#;

fn started(token: &'static str, body: &str) -> Req {
    Req {
        path: "/api/v1/provision-started",
        token: Some(token),
        ..post(body)
    }
}

/// A provision probe's start is acknowledged only once its Pod is counted (503 with
/// Retry-After until then), only for the Pod's own PieProbe, and only from a provision probe
/// Pod; a mount probe's result is accepted only once its Pod is counted too. Nothing of it
/// touches the store.
#[tokio::test]
async fn probe_pods_are_answered_only_once_counted() {
    let (router, store) = receiver(node_tokens());
    let before = probe_series(&store);
    let cases: Vec<(&str, Req, StatusCode, &str)> = vec![
        (
            "counted",
            started("provision", STARTED),
            StatusCode::OK,
            "counted",
        ),
        (
            "not counted yet",
            started("provision-not-yet", STARTED),
            StatusCode::SERVICE_UNAVAILABLE,
            "not counted yet",
        ),
        (
            "another PieProbe's Pod",
            started("provision-of-other", STARTED),
            StatusCode::FORBIDDEN,
            "not of test-pie-probe",
        ),
        (
            "a mount probe's token",
            started("token-a", STARTED),
            StatusCode::FORBIDDEN,
            "only a provision probe Pod",
        ),
        (
            "a shared token",
            started("shared", STARTED),
            StatusCode::FORBIDDEN,
            "only a provision probe Pod",
        ),
        (
            "an invalid body",
            started("provision", r#"{"pie_probe_name":"X","storage_class":"y"}"#),
            StatusCode::BAD_REQUEST,
            "invalid report",
        ),
        (
            "no token",
            Req {
                token: None,
                ..started("provision", STARTED)
            },
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        ),
        (
            "a provision Pod's token posting a result",
            Req {
                token: Some("provision"),
                ..post(VALID)
            },
            StatusCode::FORBIDDEN,
            "may not report",
        ),
    ];
    for (what, req, want, says) in cases {
        let (status, body, _) = send_with_retry_after(&router, req).await;
        assert_eq!(status, want, "{what}: {body}");
        let text = body.to_string();
        assert!(text.contains(says), "{what}: {text}");
    }
    assert_eq!(probe_series(&store), before, "nothing recorded");
    // A mount probe whose start is not counted yet: 503, retry in a second, nothing recorded.
    let (status, body, retry_after) = send_with_retry_after(
        &router,
        Req {
            token: Some("token-a-not-yet"),
            ..post(VALID)
        },
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(probe_series(&store), before, "nothing recorded");
    // Counted: accepted.
    let (status, _, _) = send_with_retry_after(&router, post(VALID)).await;
    assert_eq!(status, StatusCode::OK);
}

/// The store without the receiver's own request counter.
type Series = Vec<(Vec<String>, Value)>;

fn probe_series(store: &Store) -> Vec<(&'static str, Series)> {
    store
        .families()
        .into_iter()
        .filter(|f| !std::ptr::eq(f.family, &catalogue::RECEIVER_REQUESTS_TOTAL))
        .map(|f| (f.family.name, f.series))
        .collect()
}

#[tokio::test]
async fn bad_inputs_are_rejected_with_their_status_and_change_nothing() {
    let (router, store) = receiver(node_tokens());
    let big = valid_with("error", &format!("\"{}\"", "x".repeat(MAX_BODY_BYTES)));
    let cases: Vec<(&str, Req, StatusCode)> = vec![
        (
            "malformed JSON",
            post("{\"pie_probe_name\":"),
            StatusCode::BAD_REQUEST,
        ),
        ("not an object", post("[1,2,3]"), StatusCode::BAD_REQUEST),
        (
            "trailing garbage",
            post(format!("{VALID}}}")),
            StatusCode::BAD_REQUEST,
        ),
        ("empty body", post(""), StatusCode::BAD_REQUEST),
        ("whitespace body", post("  \n"), StatusCode::BAD_REQUEST),
        (
            "latency as string",
            post(valid_with("write_latency", "\"0.1\"")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "NaN as string",
            post(valid_with("read_latency", "\"NaN\"")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "Inf as string",
            post(valid_with("read_latency", "\"Infinity\"")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bare NaN",
            post(VALID.replace("0.002", "NaN")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "overflowing number",
            post(VALID.replace("0.002", "1e999")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative latency",
            post(valid_with("write_latency", "-0.5")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "negative iops",
            post(valid_with("read_iops", "-1")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "succeed as string",
            post(valid_with("performance_probe_succeed", "\"true\"")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "node as number",
            post(valid_with("node", "7")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing node",
            post(valid_without("node")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing read_latency",
            post(valid_without("read_latency")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing succeed",
            post(valid_without("performance_probe_succeed")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "name with a quote",
            post(valid_with("pie_probe_name", r#""te\"st""#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "name with a newline",
            post(valid_with("node", r#""node-a\nx""#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "name with a brace",
            post(valid_with("storage_class", r#""sc}""#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "non-ASCII name",
            post(valid_with("node", r#""nöde""#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty name",
            post(valid_with("node", r#""""#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "upper-case name",
            post(valid_with("node", r#""Node-A""#)),
            StatusCode::BAD_REQUEST,
        ),
        (
            "name too long",
            post(valid_with("node", &format!("\"{}\"", "a".repeat(254)))),
            StatusCode::BAD_REQUEST,
        ),
        (
            "invalid UTF-8",
            post(b"{\"node\":\"\xff\"}".to_vec()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "body over the limit",
            post(big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "text/plain",
            Req {
                content_type: Some("text/plain"),
                ..post(VALID)
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "no content type",
            Req {
                content_type: None,
                ..post(VALID)
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "form content type",
            Req {
                content_type: Some("application/x-www-form-urlencoded"),
                ..post(VALID)
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "unknown probe",
            post(valid_with("pie_probe_name", "\"other-probe\"")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown node",
            post(valid_with("node", "\"node-z\"")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown storage class",
            post(valid_with("storage_class", "\"other\"")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing token",
            Req {
                token: None,
                ..post(VALID)
            },
            StatusCode::UNAUTHORIZED,
        ),
        (
            "invalid token",
            Req {
                token: Some("forged"),
                ..post(VALID)
            },
            StatusCode::UNAUTHORIZED,
        ),
        (
            "token of another node",
            Req {
                token: Some("token-b"),
                ..post(VALID)
            },
            StatusCode::FORBIDDEN,
        ),
        (
            "token of a non-probe Pod",
            Req {
                token: Some("other-pod"),
                ..post(VALID)
            },
            StatusCode::FORBIDDEN,
        ),
        (
            "TokenReview unavailable",
            Req {
                token: Some("down"),
                ..post(VALID)
            },
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "GET instead of POST",
            Req {
                method: Method::GET,
                ..post("")
            },
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "PUT instead of POST",
            Req {
                method: Method::PUT,
                ..post(VALID)
            },
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "unknown path",
            Req {
                path: "/api/v2/results",
                ..post(VALID)
            },
            StatusCode::NOT_FOUND,
        ),
    ];
    assert!(cases.len() >= 25);
    let before = probe_series(&store);
    let mut expected_codes: HashMap<String, f64> = HashMap::new();
    for (name, req, want) in cases {
        let (status, body) = send(&router, req).await;
        assert_eq!(status, want, "{name}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{name}: no error message in {body}");
        *expected_codes.entry(want.as_str().to_owned()).or_default() += 1.0;
    }
    assert_eq!(probe_series(&store), before, "bad input changed the store");
    for (code, n) in &expected_codes {
        assert_eq!(
            store.get(&catalogue::RECEIVER_REQUESTS_TOTAL, &[code]),
            Some(Value::Scalar(*n)),
            "requests with code {code}"
        );
    }

    // A valid result afterwards is accepted, on both paths.
    let (status, body) = send(&router, post(VALID)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = send(
        &router,
        Req {
            path: "/",
            token: Some("shared"),
            ..post(VALID)
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let labels = ["test-pie-probe", "node-a", "topolvm-provisioner"];
    assert_eq!(
        store.get(
            &catalogue::PERFORMANCE_TOTAL,
            &[labels[0], labels[1], labels[2], "true"]
        ),
        Some(Value::Scalar(2.0))
    );
    assert_eq!(
        store.get(
            &catalogue::PERFORMANCE_TOTAL,
            &[labels[0], labels[1], labels[2], "false"]
        ),
        Some(Value::Scalar(0.0))
    );
    assert_eq!(
        store.get(&catalogue::WRITE_LATENCY, &labels),
        Some(Value::Scalar(0.002))
    );
    assert_eq!(
        store.get(&catalogue::READ_IOPS, &labels),
        Some(Value::Scalar(1000.0))
    );
    assert_eq!(
        store.get(&catalogue::WRITE_LATENCY_P99, &labels),
        Some(Value::Scalar(0.005))
    );
    assert_eq!(
        store.get(&catalogue::RECEIVER_REQUESTS_TOTAL, &["200"]),
        Some(Value::Scalar(2.0))
    );
}

#[tokio::test]
async fn pies_own_result_and_failures() {
    let (router, store) = receiver(Arc::new(SharedToken::new("s").unwrap()));
    let pie = r#"{"pie_probe_name":"test-pie-probe","node":"node-b","storage_class":"topolvm-provisioner","write_latency":0.1,"read_latency":0.2,"performance_probe_succeed":false}"#;
    let (status, body) = send(
        &router,
        Req {
            path: "/",
            token: Some("s"),
            content_type: Some("application/json; charset=utf-8"),
            ..post(pie)
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let l = ["test-pie-probe", "node-b", "topolvm-provisioner"];
    assert_eq!(
        store.get(&catalogue::PERFORMANCE_TOTAL, &[l[0], l[1], l[2], "false"]),
        Some(Value::Scalar(1.0))
    );
    assert_eq!(
        store.get(&catalogue::PERFORMANCE_TOTAL, &[l[0], l[1], l[2], "true"]),
        Some(Value::Scalar(0.0))
    );
    assert_eq!(
        store.get(&catalogue::WRITE_LATENCY, &l),
        None,
        "a failed probe sets no latency"
    );
    assert_eq!(store.get(&catalogue::LAST_SUCCESS, &l), None);
}

/// A probe's number is stored as the double its JSON text names, bit for bit.
#[tokio::test]
async fn numbers_reach_the_store_bit_for_bit() {
    let (router, store) = receiver(node_tokens());
    let text = "0.0010040000000000001";
    let (status, body) = send(&router, post(valid_with("write_latency", text))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let Some(Value::Scalar(stored)) = store.get(
        &catalogue::WRITE_LATENCY,
        &["test-pie-probe", "node-a", "topolvm-provisioner"],
    ) else {
        panic!("no write latency")
    };
    assert_eq!(stored.to_bits(), text.parse::<f64>().unwrap().to_bits());
}

#[test]
fn updates_of_a_successful_result() {
    let r: ProbeResult = serde_json::from_str(VALID).unwrap();
    let updates = result_updates(&r, 5_000);
    let names: Vec<&str> = updates.iter().map(|u| u.family.name).collect();
    assert_eq!(
        names,
        [
            "pie_performance_on_mount_probe_total",
            "pie_performance_on_mount_probe_total",
            "pie_io_write_latency_on_mount_probe_seconds",
            "pie_io_read_latency_on_mount_probe_seconds",
            "pie_io_read_iops_on_mount_probe",
            "pie_io_write_iops_on_mount_probe",
            "pie_io_read_bytes_per_second_on_mount_probe",
            "pie_io_write_bytes_per_second_on_mount_probe",
            "pie_io_read_latency_p99_on_mount_probe_seconds",
            "pie_io_write_latency_p99_on_mount_probe_seconds",
            "pie_mount_probe_last_success_timestamp_seconds",
        ]
    );
    assert_eq!(updates.last().unwrap().op, Op::Set(5.0));
}
