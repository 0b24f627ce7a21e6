//! Bad requests to `pie-controller receive` get their 4xx and disturb nothing: each one below
//! carries an otherwise valid result under its own probe name with exactly one defect, so a
//! missing check would put that probe's series into VictoriaMetrics. Afterwards a valid result
//! lands, VictoriaMetrics holds only its series, and the receiver's request counter there
//! matches the answers.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::time::Duration;

use e2e::{PieReceive, VictoriaMetrics, http_client};
use serde_json::json;

/// What a request is, its Authorization header, its content type, its body and the status it
/// must get.
type Case<'a> = (&'a str, Option<String>, Option<&'a str>, Vec<u8>, u16);

fn result(probe: &str) -> serde_json::Value {
    json!({
        "pie_probe_name": probe,
        "node": "e2e-node",
        "storage_class": "e2e-sc",
        "write_latency": 0.002,
        "read_latency": 0.001,
        "performance_probe_succeed": true,
    })
}

fn body(v: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_leave_nothing_in_victoria_metrics() {
    let vm = VictoriaMetrics::start().await;
    let mut controller = PieReceive::start(&vm.write_url(), "e2e-bad", &[]).await;
    http_client(); // installs the TLS crypto provider reqwest needs
    // A new connection for every request: the receiver closes the ones whose body it did not
    // read, and a pooled one could be reused just as it closes.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = controller.results_url();
    let token = controller.token().to_owned();
    let json_ct = ("content-type", "application/json");

    let mut oversized = body(&result("bad-oversized"));
    oversized.extend(std::iter::repeat_n(b' ', 70 * 1024));
    let mut missing_node = result("bad-missing-field");
    missing_node.as_object_mut().unwrap().remove("node");
    let mut negative = result("bad-negative");
    negative["write_latency"] = json!(-1.0);
    let mut wrong_type = result("bad-wrong-type");
    wrong_type["read_latency"] = json!("fast");
    let mut bad_name = result("bad-name");
    bad_name["node"] = json!("Bad_Node");

    // (what, authorization, content type, body, expected status)
    let cases: Vec<Case> = vec![
        (
            "no token",
            None,
            Some(json_ct.1),
            body(&result("bad-no-token")),
            401,
        ),
        (
            "wrong token",
            Some(format!("Bearer {token}x")),
            Some(json_ct.1),
            body(&result("bad-wrong-token")),
            401,
        ),
        (
            "basic auth",
            Some(format!("Basic {token}")),
            Some(json_ct.1),
            body(&result("bad-basic")),
            401,
        ),
        (
            "text/plain",
            Some(format!("Bearer {token}")),
            Some("text/plain"),
            body(&result("bad-text-plain")),
            415,
        ),
        (
            "no content type",
            Some(format!("Bearer {token}")),
            None,
            body(&result("bad-no-content-type")),
            415,
        ),
        (
            "over 64 KiB",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            oversized,
            413,
        ),
        (
            "malformed JSON",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            br#"{"pie_probe_name": "bad-malformed", "node": "#.to_vec(),
            400,
        ),
        (
            "missing field",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            body(&missing_node),
            400,
        ),
        (
            "negative latency",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            body(&negative),
            400,
        ),
        (
            "string latency",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            body(&wrong_type),
            400,
        ),
        (
            "invalid node name",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            body(&bad_name),
            400,
        ),
        (
            "empty body",
            Some(format!("Bearer {token}")),
            Some(json_ct.1),
            Vec::new(),
            400,
        ),
    ];
    let mut answered: BTreeMap<u16, f64> = BTreeMap::new();
    for (what, authorization, content_type, payload, want) in cases {
        let mut request = client.post(&url).body(payload);
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        // The receiver answers 413 from the declared length and closes the connection without
        // reading the body; the kernel may then reset the connection before the client reads
        // the answer. Every attempt reached the receiver and was answered (and counted) 413.
        let mut attempts = 0;
        let resp = loop {
            attempts += 1;
            match request.try_clone().unwrap().send().await {
                Ok(resp) => break resp,
                Err(e) if want == 413 && attempts < 20 => {
                    eprintln!("{what}: attempt {attempts}: {e}; again");
                }
                Err(e) => panic!("{what}: {e:?}"),
            }
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{what}: {text}");
        let error: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {text}"
        );
        *answered.entry(status).or_default() += f64::from(attempts);
    }
    // Wrong method and wrong path, with a valid result and token.
    let get = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let elsewhere = client
        .post(format!("{}/api/v1/result", controller.url()))
        .bearer_auth(&token)
        .header(json_ct.0, json_ct.1)
        .body(body(&result("bad-path")))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status().as_u16(), 404);
    *answered.entry(405).or_default() += 1.0;
    *answered.entry(404).or_default() += 1.0;
    // Not HTTP at all: the connection gets a 400 and is closed; nothing reaches the handler.
    let port = controller.port();
    let garbage = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");

    assert!(!controller.has_exited(), "{}", controller.log_tail());
    assert_eq!(controller.post(&result("good")).await, 200);
    answered.insert(200, 1.0);

    let selector = r#"{__name__=~"pie_.*",cluster="e2e-bad"}"#;
    let all = vm
        .export_until(selector, Duration::from_secs(10), |s| {
            s.iter()
                .any(|s| s.metric.get("pie_probe_name").is_some_and(|p| p == "good"))
                && s.iter().any(|s| {
                    s.metric["__name__"] == "pie_receiver_requests_total"
                        && s.metric["code"] == "200"
                })
        })
        .await;
    let probes: BTreeSet<&str> = all
        .iter()
        .filter_map(|s| s.metric.get("pie_probe_name").map(String::as_str))
        .collect();
    assert_eq!(probes, BTreeSet::from(["good"]), "{all:#?}");
    let good: Vec<&str> = all
        .iter()
        .filter(|s| s.metric.contains_key("pie_probe_name"))
        .map(|s| s.metric["__name__"].as_str())
        .collect();
    assert_eq!(
        good,
        [
            "pie_io_read_latency_on_mount_probe_seconds",
            "pie_io_write_latency_on_mount_probe_seconds",
            "pie_mount_probe_last_success_timestamp_seconds",
            "pie_performance_on_mount_probe_total",
            "pie_performance_on_mount_probe_total",
        ]
    );
    for s in &all {
        assert!(s.metric.values().all(|v| !v.starts_with("bad-")), "{s:?}");
    }
    let counted: BTreeMap<u16, f64> = all
        .iter()
        .filter(|s| s.metric["__name__"] == "pie_receiver_requests_total")
        .map(|s| (s.metric["code"].parse().unwrap(), *s.values.last().unwrap()))
        .collect();
    assert_eq!(counted, answered);
    assert!(!controller.has_exited(), "{}", controller.log_tail());
}
