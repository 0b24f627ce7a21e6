//! Scenario 8, exactly once: the controller is killed with SIGKILL while probe Pods run and
//! while late ones are about to be decided, and restarted; then a second replica waits as a
//! follower (its `/readyz` and its results API answer 503, as documented) and takes over when the
//! leader is killed (Lease handover), with probe Pods reaching the controller through a
//! readiness-gated Service. Throughout, the test keeps its own ledger of every probe Pod the
//! cluster ran; at the end VictoriaMetrics' counters (across the restarts' resets) equal the
//! ledger per probe, node and outcome: no Pod counted twice, none lost, and every started mount
//! probe's result delivered once.

use std::time::{Duration, Instant};

use e2e::ReadyService;
use e2e::cluster::{LOCAL_STORAGE_CLASS, PieController};
use e2e::now_millis;
use e2e::scenario::{PodLedger, Scenario, group_selector, note, sleeper_pod};
use pie_api::names;

use crate::Env;

const PROBE: &str = "once";
const THRESHOLD_MS: i64 = 20_000;

/// Waits until the ledger has a Pod created after `after_ms` that matches `which`; returns its
/// creation time.
async fn next_pod(
    ledger: &PodLedger,
    after_ms: i64,
    which: impl Fn(&e2e::scenario::PodRecord) -> bool,
) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        if let Some(r) = ledger
            .records()
            .values()
            .filter(|r| r.created_ms > after_ms && which(r))
            .min_by_key(|r| r.created_ms)
        {
            return r.created_ms;
        }
        assert!(Instant::now() < deadline, "no new probe Pod in 150 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long the test lets pass after pie's counted mark appears on a Pod before it kills the
/// controller. pie marks a Pod first and then records its outcome, which leaves memory one
/// remote write later; a `kill -9` in between loses that one outcome (docs/design.md, "Exactly
/// once"), and the other order would count it twice instead: a moment no order of two writes
/// to two stores closes. The kills here fall outside it; every other moment is fair game.
const AFTER_MARK_MS: i64 = 1_000;

/// Pods of one scheduled batch are created within this of each other.
const BATCH_SPREAD_MS: i64 = 10_000;

/// Waits until `at_ms` has come and every Pod of the batch created at `created_ms`, except the
/// stuck node's mount Pod (which never starts), has carried pie's counted mark for
/// [`AFTER_MARK_MS`]: the kill then lands while the batch's Pods still run (their results are
/// not in yet) but no outcome is between its mark and its sample.
async fn after_batch_counted(ledger: &PodLedger, created_ms: i64, stuck: &str, at_ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = now_millis();
        let records = ledger.records();
        let waiting: Vec<&e2e::scenario::PodRecord> = records
            .values()
            .filter(|r| (r.created_ms - created_ms).abs() < BATCH_SPREAD_MS)
            .filter(|r| !(r.probe == "mount" && r.node == stuck))
            .filter(|r| r.marked_ms.is_none_or(|m| now - m < AFTER_MARK_MS))
            .collect();
        if waiting.is_empty() && now >= at_ms {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the batch created at {created_ms} is not counted after 60 s: {waiting:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(env: &'static Env) {
    let service = ReadyService::start(Vec::new()).await;
    let url = service.url().to_owned();
    let mut s = Scenario::start_with(env.cluster, "exactly-once", |o| {
        o.controller_url = Some(url);
        o.identity = "replica-a".into();
        // Every outcome counted is logged, for the failure message.
        o.log = Some("info,kube=warn,pie_controller::k8s::tracker=debug".into());
    })
    .await;
    service.add(s.controller.backend());
    let ledger = PodLedger::start(s.client.clone(), &s.namespace).await;
    let nodes = env.group("shared");
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 1,
            "probeThreshold": format!("{}s", THRESHOLD_MS / 1000),
            "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    // The first node's mounts fail: its probe Pods never start and are late at 20 s.
    let stuck = &nodes[0];
    let stuck_pvc = names::pvc(PROBE, stuck, sc);
    s.wait("the mount PVCs", Duration::from_secs(60), || async {
        s.pvcs(PROBE).await.contains_key(&stuck_pvc)
    })
    .await;
    s.kubectl(&["annotate", "pvc", &stuck_pvc, "faults.pie.test/mount=fail"]);

    // SIGKILL while probe Pods run (once the batch's started Pods are counted, at least 2 s
    // after it was created; their results are still to come) and while late ones are about to
    // be decided (19.5 s after), three times; restarted at once, as the kubelet restarts a
    // container.
    let mut last = now_millis();
    for round in 0..3 {
        let created = next_pod(&ledger, last, |_| true).await;
        let offset = if round % 2 == 0 {
            2_000
        } else {
            THRESHOLD_MS - 500
        };
        after_batch_counted(&ledger, created, stuck, created + offset).await;
        s.controller.kill();
        let at = now_millis() - created;
        s.controller.restart().await;
        note(
            "exactly-once",
            &format!("killed and restarted {at} ms after a batch was created"),
        );
        last = created + 5_000;
    }

    // A second replica, the follower: not Ready, and its results API says so.
    let mut follower_options = s.controller.options().clone();
    follower_options.identity = "replica-b".into();
    let mut follower = PieController::start_follower(s.cluster, follower_options).await;
    service.add(follower.backend());
    assert!(!follower.is_ready().await, "a follower is not Ready");
    let sleeper = s
        .create_running(&sleeper_pod(
            "sleeper",
            &nodes[1],
            Some((PROBE, nodes[1].as_str(), sc)),
        ))
        .await;
    let token = s.probe_token(&sleeper, "pie-controller").await;
    let answer = e2e::http_client()
        .post(format!("{}/api/v1/results", follower.results_url()))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(e2e::probe_result_json(PROBE, &nodes[1], sc, 1.0))
        .send()
        .await
        .expect("POST to the follower");
    assert_eq!(answer.status().as_u16(), 503, "the follower answers 503");
    let body = answer.text().await.unwrap_or_default();
    assert!(body.contains("not the leader"), "{body}");

    // The leader dies 1.5 s before the next batch is created, so that batch starts and runs
    // while no replica leads (the Lease is not taken over before it expires): its Pods wait for
    // a leader to answer them (the agent retries) and the follower counts them once it leads.
    let mut next_batch = (now_millis() / 60_000 + 1) * 60_000;
    if next_batch - now_millis() < 5_000 {
        next_batch += 60_000;
    }
    after_batch_counted(&ledger, next_batch - 60_000, stuck, next_batch - 1_500).await;
    s.controller.kill();
    let killed_ms = now_millis();
    s.wait(
        "the follower to lead (Ready)",
        Duration::from_secs(60),
        || async { follower.is_ready().await },
    )
    .await;
    let leads_ms = now_millis();
    let leaderless: Vec<String> = ledger
        .records()
        .values()
        .filter(|r| r.started_ms.is_some_and(|t| t > killed_ms && t < leads_ms))
        .map(|r| r.name.clone())
        .collect();
    note(
        "exactly-once",
        &format!(
            "the follower leads {:.1} s after the leader was killed; probe Pods started \
             meanwhile: {leaderless:?}",
            (leads_ms - killed_ms) as f64 / 1000.0
        ),
    );
    assert!(
        !leaderless.is_empty(),
        "no probe Pod started while no replica led (killed at {killed_ms}, led at {leads_ms}): \
         the handover did not test what it is for"
    );

    // Two more scheduled minutes under the new leader, then cut at a quiet moment.
    let after_handover = now_millis();
    let cut = ledger
        .quiet_cut(
            THRESHOLD_MS,
            after_handover + 60_000,
            Duration::from_secs(240),
        )
        .await;

    if let Some(mismatch) = s
        .counted_against_ledger(&ledger, PROBE, THRESHOLD_MS, cut, true)
        .await
    {
        panic!(
            "{mismatch}\n{}\nthe leader's whole log:\n{}\nthe follower's whole log:\n{}",
            s.diagnostics().await,
            s.controller.log(),
            follower.log()
        );
    }
    follower.kill();
    s.finish().await;
}
