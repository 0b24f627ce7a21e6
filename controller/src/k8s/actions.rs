//! Carries out the state machine's [`Action`]s against the API server: the counted mark is a
//! merge patch of one annotation on the Pod, a Job is deleted with background propagation (its
//! Pod goes with it), the last outcome is server-side applied to the PieProbe's status under its
//! own field manager, one per probe kind ([`outcome_manager`]), so the reconciler's status
//! applies keep it and neither outcome removes the other. An
//! object already gone is not an error. Transient failures (5xx, 409,
//! 429, connection errors) are retried with exponential backoff.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::crd::PieProbe;
use crate::domain::outcome::machine::{Action, ProbeKind, secs};

/// Field manager of the status' last outcome of `kind`. One per kind: a server-side apply
/// removes the fields its manager applied before and leaves out now, so one manager applying
/// `lastProvisionOutcome` and `lastMountOutcome` in turn would keep only the latest (the real
/// API server did; the status never showed both).
pub fn outcome_manager(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Provision => "pie-controller-provision-outcome",
        ProbeKind::Mount => "pie-controller-mount-outcome",
    }
}
use crate::domain::outcome::observe::ANNOTATION_COUNTED;

/// The merge patch that marks a Pod counted.
pub fn counted_patch() -> serde_json::Value {
    serde_json::json!({ "metadata": { "annotations": { ANNOTATION_COUNTED: "true" } } })
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// The human-readable message of an outcome.
pub fn outcome_message(
    started_after_ms: Option<i64>,
    threshold_ms: i64,
    reason: Option<&str>,
) -> String {
    let threshold = secs(threshold_ms);
    match started_after_ms {
        Some(ms) if ms < threshold_ms => format!("started after {:.1}s", secs(ms)),
        Some(ms) => format!("started after {:.1}s, threshold {threshold:.1}s", secs(ms)),
        None => format!(
            "did not start within {threshold:.1}s ({})",
            reason.unwrap_or("timeout")
        ),
    }
}

/// The server-side apply patch of a PieProbe's status for a [`Action::RecordOutcome`].
pub fn outcome_patch(
    kind: ProbeKind,
    time_ms: i64,
    node: Option<&str>,
    result: &str,
    message: &str,
) -> serde_json::Value {
    let field = match kind {
        ProbeKind::Provision => "lastProvisionOutcome",
        ProbeKind::Mount => "lastMountOutcome",
    };
    let time = k8s_openapi::jiff::Timestamp::from_millisecond(time_ms)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let mut outcome = serde_json::json!({
        "time": k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(time),
        "result": result,
        "message": message,
    });
    if let Some(node) = node {
        outcome["node"] = node.into();
    }
    serde_json::json!({
        "apiVersion": "pie.topolvm.io/v1alpha1",
        "kind": "PieProbe",
        "status": { field: outcome },
    })
}

/// Whether `e` is worth another attempt.
pub fn retryable(e: &kube::Error) -> bool {
    match status_code(e) {
        Some(code) => code >= 500 || code == 409 || code == 429,
        None => matches!(
            e,
            kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_)
        ),
    }
}

/// Carries out `action` once; a 404 (the object is already gone) is success.
pub async fn execute(client: &Client, action: &Action) -> Result<(), kube::Error> {
    let result = match action {
        Action::MarkCounted { namespace, pod } => Api::<Pod>::namespaced(client.clone(), namespace)
            .patch(pod, &PatchParams::default(), &Patch::Merge(counted_patch()))
            .await
            .map(drop),
        Action::DeleteJob { namespace, job } => Api::<Job>::namespaced(client.clone(), namespace)
            .delete(job, &DeleteParams::background())
            .await
            .map(drop),
        Action::RecordOutcome {
            namespace,
            pie_probe,
            kind,
            time_ms,
            node,
            result,
            started_after_ms,
            threshold_ms,
            reason,
        } => Api::<PieProbe>::namespaced(client.clone(), namespace)
            .patch_status(
                pie_probe,
                &PatchParams::apply(outcome_manager(*kind)).force(),
                &Patch::Apply(outcome_patch(
                    *kind,
                    *time_ms,
                    node.as_deref(),
                    result,
                    &outcome_message(*started_after_ms, *threshold_ms, *reason),
                )),
            )
            .await
            .map(drop),
    };
    match result {
        Err(e) if status_code(&e) == Some(404) => Ok(()),
        other => other,
    }
}

/// Carries out `action`, retrying transient failures (up to `attempts` tries in all, backing
/// off from `min_delay`).
pub async fn execute_with_retries(
    client: &Client,
    action: &Action,
    attempts: usize,
    min_delay: Duration,
) -> Result<(), kube::Error> {
    (|| execute(client, action))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(min_delay)
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(attempts.saturating_sub(1))
                .with_jitter(),
        )
        .when(retryable)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ApiServerVerifier;
    use http::Method;
    use serde_json::json;

    fn not_found() -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
               "message": "not found", "code": 404})
    }

    #[tokio::test]
    async fn marks_a_pod_counted_with_a_merge_patch() {
        let (client, mut api) = ApiServerVerifier::new();
        let action = Action::MarkCounted {
            namespace: "pie".into(),
            pod: "mount-p-n1-sc-abc-1-x".into(),
        };
        let run = tokio::spawn(async move { execute(&client, &action).await });
        let body = api
            .expect(
                Method::PATCH,
                "/api/v1/namespaces/pie/pods/mount-p-n1-sc-abc-1-x?",
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mount-p-n1-sc-abc-1-x"}}),
            )
            .await;
        assert_eq!(
            body,
            json!({"metadata": {"annotations": {"pie.topolvm.io/counted": "true"}}})
        );
        run.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn deletes_a_job_in_the_background() {
        let (client, mut api) = ApiServerVerifier::new();
        let action = Action::DeleteJob {
            namespace: "pie".into(),
            job: "mount-p-n1-sc-abc-1".into(),
        };
        let run = tokio::spawn(async move { execute(&client, &action).await });
        let body = api
            .expect(
                Method::DELETE,
                "/apis/batch/v1/namespaces/pie/jobs/mount-p-n1-sc-abc-1?",
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "mount-p-n1-sc-abc-1"}}),
            )
            .await;
        assert_eq!(body["propagationPolicy"], "Background");
        run.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn applies_the_last_outcome_to_the_status() {
        let (client, mut api) = ApiServerVerifier::new();
        let action = Action::RecordOutcome {
            namespace: "pie".into(),
            pie_probe: "p".into(),
            kind: ProbeKind::Mount,
            time_ms: 1_767_225_607_400,
            node: Some("n1".into()),
            result: "Late",
            started_after_ms: Some(75_000),
            threshold_ms: 60_000,
            reason: None,
        };
        let run = tokio::spawn(async move { execute(&client, &action).await });
        let body = api
            .expect(
                Method::PATCH,
                "/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/p/status?&force=true&fieldManager=pie-controller-mount-outcome",
                json!({"apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
                       "metadata": {"name": "p", "namespace": "pie"},
                       "spec": {"monitoringStorageClass": "sc", "nodeSelector": {"nodeSelectorTerms": []}}}),
            )
            .await;
        assert_eq!(
            body,
            json!({"apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
                   "status": {"lastMountOutcome": {"time": "2026-01-01T00:00:07Z", "node": "n1",
                       "result": "Late", "message": "started after 75.0s, threshold 60.0s"}}})
        );
        run.await.unwrap().unwrap();
        assert_eq!(
            outcome_message(Some(2_500), 60_000, None),
            "started after 2.5s"
        );
        assert_eq!(
            outcome_message(None, 60_000, Some("FailedMount")),
            "did not start within 60.0s (FailedMount)"
        );
        assert!(
            outcome_patch(ProbeKind::Provision, 0, None, "OnTime", "")["status"]
                ["lastProvisionOutcome"]
                .get("node")
                .is_none()
        );
    }

    #[tokio::test]
    async fn an_object_already_gone_is_success() {
        let (client, mut api) = ApiServerVerifier::new();
        let action = Action::DeleteJob {
            namespace: "pie".into(),
            job: "gone".into(),
        };
        let run = tokio::spawn(async move { execute(&client, &action).await });
        api.expect_status(
            Method::DELETE,
            "/apis/batch/v1/namespaces/pie/jobs/gone?",
            404,
            not_found(),
        )
        .await;
        run.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn server_errors_are_retried_and_forbidden_is_not() {
        let (client, mut api) = ApiServerVerifier::new();
        let action = Action::MarkCounted {
            namespace: "pie".into(),
            pod: "p".into(),
        };
        let c = client.clone();
        let a = action.clone();
        let run =
            tokio::spawn(
                async move { execute_with_retries(&c, &a, 3, Duration::from_millis(1)).await },
            );
        let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "ServiceUnavailable", "message": "etcd", "code": 503});
        api.expect_status(
            Method::PATCH,
            "/api/v1/namespaces/pie/pods/p?",
            503,
            unavailable,
        )
        .await;
        api.expect(
            Method::PATCH,
            "/api/v1/namespaces/pie/pods/p?",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
        )
        .await;
        run.await.unwrap().unwrap();

        let run = tokio::spawn(async move {
            execute_with_retries(&client, &action, 3, Duration::from_millis(1)).await
        });
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "Forbidden", "message": "no", "code": 403});
        api.expect_status(
            Method::PATCH,
            "/api/v1/namespaces/pie/pods/p?",
            403,
            forbidden,
        )
        .await;
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(status_code(&err), Some(403), "{err}");
    }

    /// A server-side apply drops what its manager applied before and omits now: the two last
    /// outcomes must be applied by two managers, or each would erase the other.
    #[tokio::test]
    async fn the_two_last_outcomes_are_applied_by_two_field_managers() {
        let (client, mut api) = ApiServerVerifier::new();
        let outcome = |kind| Action::RecordOutcome {
            namespace: "pie".into(),
            pie_probe: "p".into(),
            kind,
            time_ms: 0,
            node: None,
            result: "OnTime",
            started_after_ms: Some(1_000),
            threshold_ms: 60_000,
            reason: None,
        };
        let echo = json!({"apiVersion": "pie.topolvm.io/v1alpha1", "kind": "PieProbe",
                          "metadata": {"name": "p", "namespace": "pie"},
                          "spec": {"monitoringStorageClass": "sc"}});
        let path = "/apis/pie.topolvm.io/v1alpha1/namespaces/pie/pieprobes/p/status?&force=true&fieldManager=";
        for (kind, manager, field) in [
            (
                ProbeKind::Provision,
                "pie-controller-provision-outcome",
                "lastProvisionOutcome",
            ),
            (
                ProbeKind::Mount,
                "pie-controller-mount-outcome",
                "lastMountOutcome",
            ),
        ] {
            let c = client.clone();
            let run = tokio::spawn(async move { execute(&c, &outcome(kind)).await });
            let body = api
                .expect(Method::PATCH, &format!("{path}{manager}"), echo.clone())
                .await;
            assert_eq!(body["status"].as_object().unwrap().len(), 1);
            assert!(body["status"].get(field).is_some(), "{body}");
            run.await.unwrap().unwrap();
        }
    }
}
