use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::ApiServerVerifier;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/pie/leases/pie-controller";

/// What the fake API server does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Serves the Lease.
    Up,
    /// Answers 503 to everything (an API server that is there but failing).
    Failing,
}

/// A fake API server holding one Lease with a resourceVersion: GET, POST and PUT (refused with
/// 409 when the resourceVersion is not the current one). `renewed_by` keeps another replica
/// renewing it on every GET.
struct Fake {
    lease: Option<Value>,
    version: u64,
    mode: Mode,
    renewed_by: Option<&'static str>,
    /// PUTs to refuse with 409 before accepting one.
    conflicts: u32,
    puts: Vec<Value>,
}

type Shared = Arc<Mutex<Fake>>;

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

fn micro(secs_ago: i64) -> Value {
    let t = Timestamp::now() - SignedDuration::from_secs(secs_ago);
    serde_json::to_value(MicroTime(t)).unwrap()
}

fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "pie-controller", "namespace": "pie"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "acquireTime": micro(renewed_secs_ago), "renewTime": micro(renewed_secs_ago),
                    "leaseTransitions": 3}})
}

async fn serve(mut api: ApiServerVerifier, fake: Shared) {
    while let Some((request, send)) = api.0.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let body = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (code, reply) = {
            let mut f = fake.lock().unwrap();
            if f.mode == Mode::Failing {
                (503, status(503, "ServiceUnavailable"))
            } else {
                match (method, path.as_str()) {
                    (Method::GET, PATH) => {
                        if let (Some(other), Some(l)) = (f.renewed_by, f.lease.as_mut()) {
                            l["spec"]["holderIdentity"] = other.into();
                            l["spec"]["renewTime"] = micro(0);
                            f.version += 1;
                        }
                        let version = f.version;
                        match f.lease.as_mut() {
                            Some(l) => {
                                l["metadata"]["resourceVersion"] = version.to_string().into();
                                (200, l.clone())
                            }
                            None => (404, status(404, "NotFound")),
                        }
                    }
                    (Method::POST, "/apis/coordination.k8s.io/v1/namespaces/pie/leases") => {
                        if f.lease.is_some() {
                            (409, status(409, "AlreadyExists"))
                        } else {
                            f.version += 1;
                            let mut created = body;
                            created["metadata"]["resourceVersion"] = f.version.to_string().into();
                            f.lease = Some(created.clone());
                            (201, created)
                        }
                    }
                    (Method::PUT, PATH) => {
                        let sent = body["metadata"]["resourceVersion"]
                            .as_str()
                            .map(str::to_owned);
                        if f.conflicts > 0 {
                            f.conflicts -= 1;
                            (409, status(409, "Conflict"))
                        } else if sent != Some(f.version.to_string()) {
                            (409, status(409, "Conflict"))
                        } else {
                            f.version += 1;
                            let mut stored = body.clone();
                            stored["metadata"]["resourceVersion"] = f.version.to_string().into();
                            f.lease = Some(stored.clone());
                            f.puts.push(body);
                            (200, stored)
                        }
                    }
                    (m, p) => panic!("unexpected {m} {p}"),
                }
            }
        };
        send.send_response(
            http::Response::builder()
                .status(code)
                .body(kube::client::Body::from(
                    serde_json::to_vec(&reply).unwrap(),
                ))
                .unwrap(),
        );
    }
}

fn start(lease: Option<Value>, identity: &str) -> (watch::Receiver<Status>, Shared) {
    let (client, api) = ApiServerVerifier::new();
    let fake = Arc::new(Mutex::new(Fake {
        lease,
        version: 1,
        mode: Mode::Up,
        renewed_by: None,
        conflicts: 0,
        puts: Vec::new(),
    }));
    tokio::spawn(serve(api, fake.clone()));
    let rx = elect(
        client,
        Candidate {
            name: LEASE_NAME.into(),
            namespace: "pie".into(),
            identity: identity.into(),
        },
    );
    (rx, fake)
}

/// Waits (in paused time) until the status satisfies `want`, at most `within`.
async fn becomes(
    rx: &mut watch::Receiver<Status>,
    within: Duration,
    want: impl Fn(&Status) -> bool,
) -> bool {
    tokio::time::timeout(within, rx.wait_for(|s| want(s)))
        .await
        .is_ok()
}

#[tokio::test(start_paused = true)]
async fn takes_a_missing_lease() {
    let (mut rx, fake) = start(None, "replica-a");
    assert!(
        becomes(&mut rx, Duration::from_secs(5), |s| s.leading
            && s.reachable)
        .await
    );
    let f = fake.lock().unwrap();
    let l = f.lease.as_ref().unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "replica-a");
    assert_eq!(l["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(l["spec"]["leaseTransitions"], 0);
}

#[tokio::test(start_paused = true)]
async fn follows_while_another_replica_renews() {
    let (mut rx, fake) = start(Some(lease("replica-b", 0)), "replica-a");
    fake.lock().unwrap().renewed_by = Some("replica-b");
    assert!(becomes(&mut rx, Duration::from_secs(5), |s| s.reachable).await);
    assert!(
        !becomes(&mut rx, Duration::from_secs(60), |s| s.leading).await,
        "replica-b renews all the while"
    );
    assert!(
        fake.lock().unwrap().puts.is_empty(),
        "never wrote the Lease"
    );
}

#[tokio::test(start_paused = true)]
async fn takes_over_a_lease_its_holder_stopped_renewing() {
    // Renewed just now by replica-b, which then dies: taken after one duration, not before.
    let (mut rx, fake) = start(Some(lease("replica-b", 0)), "replica-a");
    assert!(
        !becomes(&mut rx, LEASE_DURATION - Duration::from_secs(2), |s| s
            .leading)
        .await,
        "not before the Lease expires"
    );
    assert!(becomes(&mut rx, Duration::from_secs(6), |s| s.leading).await);
    let f = fake.lock().unwrap();
    let l = f.lease.as_ref().unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "replica-a");
    assert_eq!(
        l["spec"]["leaseTransitions"], 4,
        "a new holder counts a transition"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_abandoned_long_ago_is_taken_at_once() {
    let (mut rx, _) = start(Some(lease("replica-b", 600)), "replica-a");
    assert!(becomes(&mut rx, Duration::from_secs(3), |s| s.leading).await);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_replica_renews_its_own_lease_at_once() {
    // The same identity (a restarted container keeps its Pod name).
    let (mut rx, fake) = start(Some(lease("replica-a", 3)), "replica-a");
    assert!(becomes(&mut rx, Duration::from_secs(3), |s| s.leading).await);
    let f = fake.lock().unwrap();
    assert_eq!(
        f.lease.as_ref().unwrap()["spec"]["leaseTransitions"],
        3,
        "renewing is not a transition"
    );
}

#[tokio::test(start_paused = true)]
async fn steps_down_without_the_api_server_and_leads_again_when_it_returns() {
    let (mut rx, fake) = start(None, "replica-a");
    assert!(
        becomes(&mut rx, Duration::from_secs(5), |s| s.leading
            && s.reachable)
        .await
    );
    fake.lock().unwrap().mode = Mode::Failing;
    let failed = Instant::now();
    assert!(becomes(&mut rx, Duration::from_secs(10), |s| !s.reachable).await);
    assert!(
        rx.borrow().leading,
        "still leading while the renew deadline has not passed"
    );
    assert!(becomes(&mut rx, Duration::from_secs(15), |s| !s.leading).await);
    let stepped_down = failed.elapsed();
    assert!(
        stepped_down >= RENEW_DEADLINE - RETRY_PERIOD && stepped_down < LEASE_DURATION,
        "stepped down after {stepped_down:?}: after the renew deadline, before anyone else may lead"
    );
    fake.lock().unwrap().mode = Mode::Up;
    assert!(
        becomes(&mut rx, Duration::from_secs(5), |s| s.leading
            && s.reachable)
        .await
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_race_is_following_not_an_error() {
    // The Lease expired long ago; another replica writes it between our read and our write,
    // twice: those rounds are lost (409), the third is won.
    let (mut rx, fake) = start(Some(lease("replica-b", 600)), "replica-a");
    fake.lock().unwrap().conflicts = 2;
    assert!(becomes(&mut rx, Duration::from_secs(3), |s| s.reachable).await);
    assert!(!rx.borrow().leading);
    assert!(
        becomes(&mut rx, Duration::from_secs(6), |s| s.leading
            && s.reachable)
        .await
    );
    assert_eq!(fake.lock().unwrap().conflicts, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_status_releases_the_lease() {
    let (mut rx, fake) = start(None, "replica-a");
    assert!(becomes(&mut rx, Duration::from_secs(5), |s| s.leading).await);
    drop(rx);
    tokio::time::sleep(RETRY_PERIOD * 2).await;
    let f = fake.lock().unwrap();
    let last = f.puts.last().expect("a release");
    assert!(
        last["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "{last}"
    );
    assert_eq!(last["spec"]["leaseDurationSeconds"], 1);
}
