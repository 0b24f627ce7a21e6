//! Leader election on a coordination.k8s.io Lease (kube-lease-manager).

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Name of the Lease the replicas compete for.
pub const LEASE_NAME: &str = "pie-controller";
/// Lease duration in seconds; a dead leader is replaced within about this long.
pub const LEASE_DURATION_SECONDS: u64 = 15;

/// Starts competing for the Lease `LEASE_NAME` in `namespace` as `identity` (the Pod name).
/// The receiver tells whether this replica leads now; dropping it releases the Lease.
pub async fn elect(
    client: Client,
    namespace: &str,
    identity: &str,
) -> Result<watch::Receiver<bool>, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(5)
        .with_field_manager("pie-controller")
        .build()
        .await?;
    let (leading, _task) = manager.watch().await;
    Ok(leading)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http::Method;
    use serde_json::{Value, json};

    use super::*;
    use crate::fixtures::ApiServerVerifier;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/pie/leases/pie-controller";

    fn merge(into: &mut Value, patch: &Value) {
        match (into, patch) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(k);
                    } else {
                        merge(a.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b.clone(),
        }
    }

    /// A fake API server holding one Lease: GET, POST (create) and PATCH (merged) on it.
    async fn lease_server(mut api: ApiServerVerifier, lease: Arc<Mutex<Option<Value>>>) {
        while let Some((request, send)) = api.0.next_request().await {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let mut stored = lease.lock().unwrap();
            let (status, reply) = match (method, path.as_str()) {
                (Method::GET, PATH) => match stored.as_ref() {
                    Some(l) => (200, l.clone()),
                    None => (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": "not found"}),
                    ),
                },
                (Method::POST, "/apis/coordination.k8s.io/v1/namespaces/pie/leases") => {
                    let mut created = body;
                    created["metadata"]["resourceVersion"] = "1".into();
                    *stored = Some(created.clone());
                    (201, created)
                }
                (Method::PATCH, PATH) => {
                    let l = stored.get_or_insert_with(|| json!({}));
                    merge(l, &body);
                    (200, l.clone())
                }
                (m, p) => panic!("unexpected {m} {p}"),
            };
            drop(stored);
            send.send_response(
                http::Response::builder()
                    .status(status)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&reply).unwrap(),
                    ))
                    .unwrap(),
            );
        }
    }

    fn lease_held_by(holder: &str, renewed_secs_ago: i64) -> Value {
        let renew = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago);
        let renew = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(renew);
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "pie-controller", "namespace": "pie", "resourceVersion": "5"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "acquireTime": renew, "renewTime": renew}})
    }

    async fn leads_within(rx: &mut watch::Receiver<bool>, wait: Duration) -> bool {
        tokio::time::timeout(wait, rx.wait_for(|l| *l))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn takes_a_missing_lease() {
        let (client, api) = ApiServerVerifier::new();
        let lease = Arc::new(Mutex::new(None));
        tokio::spawn(lease_server(api, lease.clone()));
        let mut rx = elect(client, "pie", "replica-a").await.unwrap();
        assert!(leads_within(&mut rx, Duration::from_secs(5)).await);
        let l = lease.lock().unwrap().clone().unwrap();
        assert_eq!(l["spec"]["holderIdentity"], "replica-a");
        assert_eq!(l["spec"]["leaseDurationSeconds"], LEASE_DURATION_SECONDS);
    }

    #[tokio::test]
    async fn follows_while_another_replica_renews_and_takes_over_an_expired_lease() {
        let (client, api) = ApiServerVerifier::new();
        let lease = Arc::new(Mutex::new(Some(lease_held_by("replica-b", 0))));
        tokio::spawn(lease_server(api, lease.clone()));
        let mut rx = elect(client.clone(), "pie", "replica-a").await.unwrap();
        assert!(
            !leads_within(&mut rx, Duration::from_secs(2)).await,
            "replica-b holds a fresh lease"
        );
        assert_eq!(
            lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
            "replica-b"
        );
        drop(rx);

        // replica-b stopped renewing 60 s ago (its lease lasts 15 s).
        *lease.lock().unwrap() = Some(lease_held_by("replica-b", 60));
        let mut rx = elect(client, "pie", "replica-a").await.unwrap();
        assert!(leads_within(&mut rx, Duration::from_secs(5)).await);
        assert_eq!(
            lease.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"],
            "replica-a"
        );
    }
}
