//! Scenario 10, forged results, for real: results posted with no token, with the token of a Pod
//! that is not a probe, of the probe Pod of another node, with a token for another audience (and
//! an expired one, minted with the cluster's own signing key since TokenRequest cannot make one)
//! get 401 or 403 from the real TokenReview path, and nothing is recorded; a token that differs
//! from those in nothing but the refused aspect is accepted, and so is the genuine probe's
//! result.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::cluster::{LOCAL_STORAGE_CLASS, TokenOptions};
use e2e::scenario::{Scenario, group_selector, note, sleeper_pod};
use e2e::{http_client, probe_result_json, scrape_value};
use pie_api::names;

use crate::Env;

const PROBE: &str = "forged";

/// POSTs a result claiming `node` with `token`; returns the status and the body.
async fn post(s: &Scenario, node: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http_client()
        .post(format!("{}/api/v1/results", s.controller.results_url()))
        .header("Content-Type", "application/json")
        .body(probe_result_json(
            PROBE,
            node,
            LOCAL_STORAGE_CLASS,
            0.123_456,
        ));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST the result");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

pub async fn run(env: &'static Env) {
    let s = Scenario::start(env.cluster, "forged").await;
    let (a, b) = (&env.group("shared")[0], &env.group("shared")[1]);
    let sc = LOCAL_STORAGE_CLASS;
    s.create_probe(
        PROBE,
        serde_json::json!({
            "monitoringStorageClass": sc, "probePeriod": 59, "probeThreshold": "30s",
            "disableProvisionProbe": true, "nodeSelector": group_selector("shared"),
        }),
    )
    .await;
    let cron_job = names::mount_cronjob(PROBE, a, sc);
    s.wait("the mount CronJob", Duration::from_secs(60), || async {
        s.cron_jobs(PROBE).await.contains_key(&cron_job)
    })
    .await;

    // The genuine probe: pie-agent with its projected token.
    s.run_now(&cron_job);
    let genuine = format!(
        r#"pie_performance_on_mount_probe_total{{pie_probe_name="{PROBE}",node="{a}",succeed="true"}}"#
    );
    s.wait_increase(&genuine, 1.0, Duration::from_secs(90))
        .await;

    let mut running = BTreeMap::new();
    for (name, node, probe) in [
        ("sleeper-a", a, Some((PROBE, a.as_str(), sc))),
        ("sleeper-b", b, Some((PROBE, b.as_str(), sc))),
        ("not-a-probe", a, None),
    ] {
        running.insert(
            name,
            s.create_running(&sleeper_pod(name, node, probe)).await,
        );
    }
    let metrics_before = s.controller.metrics().await;
    let requests = |m: &str, code: &str| {
        scrape_value(m, "pie_receiver_requests_total", &[("code", code)]).unwrap_or(0.0)
    };

    // Each forgery next to the token that differs from it in the refused aspect only.
    let for_a = s.probe_token(&running["sleeper-a"], "pie-controller").await;
    let other_audience = s.probe_token(&running["sleeper-a"], "not-pie").await;
    let of_b = s.probe_token(&running["sleeper-b"], "pie-controller").await;
    let not_a_probe = s
        .probe_token(&running["not-a-probe"], "pie-controller")
        .await;
    // TokenRequest cannot make an expired token; the cluster's signing key can.
    let expired = s.cluster.mint_token(&TokenOptions {
        pod: Some("sleeper-a".into()),
        audiences: vec!["pie-controller".into()],
        expired: true,
        ..TokenOptions::new(&s.namespace, "pie-probe")
    });
    let forgeries: Vec<(&str, Option<&str>, u16, &str)> = vec![
        ("no token", None, 401, "token"),
        (
            "a token for another audience",
            Some(&other_audience),
            401,
            "",
        ),
        ("an expired token", Some(&expired), 401, ""),
        (
            "the token of a Pod that is not a probe",
            Some(&not_a_probe),
            403,
            "not a probe Pod",
        ),
        (
            "the token of another node's probe Pod",
            Some(&of_b),
            403,
            "may not report",
        ),
    ];
    for (what, token, status, says) in &forgeries {
        let (got, body) = post(&s, a, *token).await;
        assert_eq!(got, *status, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["error"].is_string()),
            "{what}: a JSON message: {body}"
        );
    }
    let metrics_after = s.controller.metrics().await;
    assert_eq!(
        requests(&metrics_after, "401") - requests(&metrics_before, "401"),
        3.0
    );
    assert_eq!(
        requests(&metrics_after, "403") - requests(&metrics_before, "403"),
        2.0
    );
    // Nothing recorded: every series of node a is as it was.
    let of_a = |m: &str| -> Vec<String> {
        m.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("node=\"{a}\"")))
            .filter(|l| !l.starts_with("pie_node_eligible"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        of_a(&metrics_before),
        of_a(&metrics_after),
        "a forgery changed a series"
    );
    note("forged", "every forgery refused, nothing recorded");

    // The same Pod's token for the right audience is accepted: the refusals were for what
    // each token lacked, not for the sleeper Pods.
    let (got, body) = post(&s, a, Some(&for_a)).await;
    assert_eq!(got, 200, "{body}");
    s.wait(
        "the accepted result in VictoriaMetrics",
        Duration::from_secs(30),
        || async {
            s.last(&format!(
                r#"pie_io_write_latency_on_mount_probe_seconds{{pie_probe_name="{PROBE}",node="{a}"}}"#
            ))
            .await
                == Some(0.123_456)
        },
    )
    .await;
    assert_eq!(s.increase(&genuine).await, 2.0);
    s.finish().await;
}
