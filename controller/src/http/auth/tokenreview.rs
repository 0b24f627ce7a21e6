//! `run` mode: the bearer token is the probe Pod's projected ServiceAccount token (audience
//! `pie-controller`). A TokenReview says whose it is and which Pod it is bound to; that Pod must
//! be a probe Pod of pie-controller: a mount probe's triple (PieProbe, node it runs on,
//! StorageClass) is the only one it may report results for, a provision probe may report only
//! its own start. Answers are cached briefly per token.

use pie_api::labels;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use sha1::{Digest, Sha1};

use pie_api::ProbeKey;

use super::{AuthError, Authenticator, Identity};

/// `user.extra` key with the name of the Pod a token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `user.extra` key with the UID of the Pod a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// How long an answer is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 10_000;

type Answer = Result<Identity, AuthError>;

/// Checks tokens with TokenReviews and the bound Pod.
pub struct TokenReviewAuth {
    client: kube::Client,
    audience: String,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 20], (Instant, Answer)>>,
}

impl std::fmt::Debug for TokenReviewAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuth")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuth {
    /// Checks tokens for audience [`labels::TOKEN_AUDIENCE`] with `client`.
    pub fn new(client: kube::Client) -> TokenReviewAuth {
        TokenReviewAuth {
            client,
            audience: labels::TOKEN_AUDIENCE.to_owned(),
            ttl: CACHE_TTL,
            cache: Mutex::default(),
        }
    }

    async fn review(&self, token: &str) -> Answer {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let answer = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .iter()
            .flatten()
            .any(|a| *a == self.audience)
        {
            return Err(AuthError::Invalid(format!(
                "the token is not for audience {}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let namespace = user
            .username
            .as_deref()
            .and_then(|u| u.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(ns, _)| ns.to_owned())
            .ok_or_else(|| AuthError::Forbidden("not a ServiceAccount token".into()))?;
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let (Some(pod_name), Some(pod_uid)) = (first(EXTRA_POD_NAME), first(EXTRA_POD_UID)) else {
            return Err(AuthError::Forbidden(
                "the token is not bound to a Pod".into(),
            ));
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let pod = pods
            .get_opt(&pod_name)
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!("reading Pod {namespace}/{pod_name}: {e}"))
            })?
            .ok_or_else(|| AuthError::Forbidden(format!("Pod {namespace}/{pod_name} is gone")))?;
        if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
            return Err(AuthError::Forbidden(format!(
                "Pod {namespace}/{pod_name} was replaced"
            )));
        }
        probe_identity(&pod, pod_uid).ok_or_else(|| {
            AuthError::Forbidden(format!(
                "Pod {namespace}/{pod_name} is not a probe Pod of pie-controller"
            ))
        })
    }
}

/// Who a probe Pod is: a mount probe with its triple, or a provision probe with its PieProbe
/// and StorageClass (from its labels); `None` for any other Pod.
pub fn probe_identity(pod: &Pod, pod_uid: String) -> Option<Identity> {
    let labels = pod.metadata.labels.as_ref()?;
    let label = |k: &str| labels.get(k).map(String::as_str);
    if label(labels::LABEL_MANAGED_BY) == Some(labels::MANAGER)
        && label(labels::LABEL_COMPONENT) == Some(labels::COMPONENT_PROVISION)
    {
        return Some(Identity::ProvisionProbe {
            pie_probe_name: label(labels::LABEL_PIE_PROBE)?.to_owned(),
            storage_class: label(labels::LABEL_STORAGE_CLASS)?.to_owned(),
            pod_uid,
        });
    }
    Some(Identity::Probe {
        key: probe_key(pod)?,
        pod_uid,
    })
}

/// The triple a mount-probe Pod may report for: its labels, and the node it actually runs on.
pub fn probe_key(pod: &Pod) -> Option<ProbeKey> {
    let labels = pod.metadata.labels.as_ref()?;
    let label = |k: &str| labels.get(k).map(String::as_str);
    if label(labels::LABEL_MANAGED_BY) != Some(labels::MANAGER)
        || label(labels::LABEL_COMPONENT) != Some(labels::COMPONENT_MOUNT)
    {
        return None;
    }
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    if label(labels::LABEL_NODE) != Some(node) {
        return None;
    }
    Some(ProbeKey {
        pie_probe_name: label(labels::LABEL_PIE_PROBE)?.to_owned(),
        node: node.to_owned(),
        storage_class: label(labels::LABEL_STORAGE_CLASS)?.to_owned(),
    })
}

impl Authenticator for TokenReviewAuth {
    fn authenticate<'a>(&'a self, token: Option<&'a str>) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let token = token.ok_or(AuthError::Missing)?;
            let key: [u8; 20] = Sha1::digest(token.as_bytes()).into();
            let now = Instant::now();
            if let Some((until, answer)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                && *until > now
            {
                return answer.clone();
            }
            let answer = self.review(token).await;
            if !matches!(answer, Err(AuthError::Unavailable(_))) {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (until, _)| *until > now);
                }
                if cache.len() < CACHE_MAX {
                    cache.insert(key, (now + self.ttl, answer.clone()));
                }
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::fixtures::ApiServerVerifier;

    fn review_answer(authenticated: bool, pod: &str, uid: &str) -> serde_json::Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {},
            "status": {
                "authenticated": authenticated,
                "audiences": ["pie-controller"],
                "user": {
                    "username": "system:serviceaccount:pie:pie-probe",
                    "extra": {
                        EXTRA_POD_NAME: [pod],
                        EXTRA_POD_UID: [uid],
                    }
                }
            }
        })
    }

    fn pod(name: &str, uid: &str, node_label: &str, node: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "pie", "uid": uid,
                "labels": {
                    "app.kubernetes.io/managed-by": "pie-controller",
                    "app.kubernetes.io/component": "mount-probe",
                    "pie-probe": "test-pie-probe",
                    "storage-class": "topolvm-provisioner",
                    "node": node_label,
                }
            },
            "spec": {"nodeName": node, "containers": []}
        })
    }

    async fn expect_review(server: &mut ApiServerVerifier, answer: serde_json::Value) {
        let sent = server
            .expect(
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews?",
                answer,
            )
            .await;
        assert_eq!(sent["spec"]["audiences"], json!(["pie-controller"]));
        assert!(sent["spec"]["token"].is_string());
    }

    #[tokio::test]
    async fn a_probe_pods_token_reports_for_its_own_triple_and_is_cached() {
        let (client, mut server) = ApiServerVerifier::new();
        let auth = TokenReviewAuth::new(client);
        let api = tokio::spawn(async move {
            expect_review(&mut server, review_answer(true, "mount-a-1", "u1")).await;
            server
                .expect(
                    Method::GET,
                    "/api/v1/namespaces/pie/pods/mount-a-1",
                    pod("mount-a-1", "u1", "node-a", "node-a"),
                )
                .await;
            server
        });
        let identity = auth.authenticate(Some("tok-a")).await;
        let _server = api.await.unwrap();
        let want = Identity::Probe {
            key: ProbeKey {
                pie_probe_name: "test-pie-probe".into(),
                node: "node-a".into(),
                storage_class: "topolvm-provisioner".into(),
            },
            pod_uid: "u1".into(),
        };
        assert_eq!(identity, Ok(want.clone()));
        // Cached: no second request (the verifier would time out or the client would fail).
        assert_eq!(auth.authenticate(Some("tok-a")).await, Ok(want));
    }

    #[tokio::test]
    async fn rejected_tokens() {
        let (client, mut server) = ApiServerVerifier::new();
        let auth = TokenReviewAuth::new(client);
        let api = tokio::spawn(async move {
            expect_review(&mut server, review_answer(false, "x", "y")).await;
            expect_review(&mut server, review_answer(true, "mount-b-1", "u2")).await;
            server
                .expect(
                    Method::GET,
                    "/api/v1/namespaces/pie/pods/mount-b-1",
                    // Labelled node-a, but runs on node-b: forged labels do not help.
                    pod("mount-b-1", "u2", "node-a", "node-b"),
                )
                .await;
            expect_review(&mut server, review_answer(true, "mount-c-1", "u3")).await;
            server
                .expect(
                    Method::GET,
                    "/api/v1/namespaces/pie/pods/mount-c-1",
                    pod("mount-c-1", "other-uid", "node-c", "node-c"),
                )
                .await;
            server
        });
        assert!(matches!(
            auth.authenticate(Some("bad")).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("forged-node")).await,
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("replaced-pod")).await,
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
        drop(api.await.unwrap());
        // The API server is gone: 503, and the failure is not cached.
        assert!(matches!(
            auth.authenticate(Some("later")).await,
            Err(AuthError::Unavailable(_))
        ));
    }

    #[test]
    fn a_provision_probe_pod_is_who_its_labels_say() {
        let mut p: Pod = serde_json::from_value(pod("provision-a-1", "u9", "", "node-a")).unwrap();
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert(
            "app.kubernetes.io/component".into(),
            "provision-probe".into(),
        );
        labels.remove("node");
        assert_eq!(
            probe_identity(&p, "u9".into()),
            Some(Identity::ProvisionProbe {
                pie_probe_name: "test-pie-probe".into(),
                storage_class: "topolvm-provisioner".into(),
                pod_uid: "u9".into(),
            })
        );
        p.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("app.kubernetes.io/managed-by");
        assert_eq!(probe_identity(&p, "u9".into()), None, "not pie's");
    }
}
