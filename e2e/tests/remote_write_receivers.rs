//! The remote-write library against real receivers: VictoriaMetrics single node, vmauth in
//! front of it with the cluster-style `/insert/<accountID>/prometheus/api/v1/write` URL (both
//! once per VictoriaMetrics release: Debian's 1.79 and the current one), and Prometheus'
//! remote-write receiver. Known series are pushed and read back exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{Prometheus, VictoriaMetrics, VmRelease, Vmauth, now_millis, test_each_vm};
use remote_write::{Auth, BatchConfig, Client, ClientConfig, EndpointConfig, Sample, Series};

const WAIT: Duration = Duration::from_secs(20);

fn client_for(endpoint: EndpointConfig) -> Client {
    Client::new(ClientConfig {
        endpoints: vec![endpoint],
        external_labels: vec![("cluster".into(), "e2e".into())],
        batch: BatchConfig {
            flush_interval: Duration::from_millis(100),
            ..BatchConfig::default()
        },
        ..ClientConfig::default()
    })
    .expect("client config")
}

/// The series every test pushes: two probe-like series with three samples each, one of them
/// with awkward label values.
fn known_series(prefix: &str) -> Vec<(Series, Vec<(f64, i64)>)> {
    let base = now_millis() - 60_000;
    let a = Series::new(
        &format!("{prefix}_latency_seconds"),
        [
            ("node", "worker-1"),
            ("storage_class", "topolvm"),
            ("pie_probe_name", "p1"),
        ],
    )
    .unwrap();
    let b = Series::new(
        &format!("{prefix}_probe_total"),
        [
            ("node", "10.0.0.7"),
            ("note", "quote\" brace} ü"),
            ("on_time", "false"),
        ],
    )
    .unwrap();
    vec![
        (
            a,
            vec![(0.00125, base), (0.5, base + 1000), (1e-9, base + 2000)],
        ),
        (b, vec![(1.0, base), (2.0, base + 1000), (3.0, base + 2000)]),
    ]
}

async fn push_all(client: &Client, series: &[(Series, Vec<(f64, i64)>)]) {
    for (s, samples) in series {
        for (v, t) in samples {
            client.push(s, Sample::new(*v, *t));
        }
    }
    tokio::time::timeout(WAIT, client.flush())
        .await
        .expect("flush within the deadline");
}

/// Labels and `(value, timestamp)` pairs of one series.
type Stored = (BTreeMap<String, String>, Vec<(f64, i64)>);

fn expected(series: &[(Series, Vec<(f64, i64)>)]) -> Vec<Stored> {
    let mut out: Vec<_> = series
        .iter()
        .map(|(s, samples)| {
            let mut labels: BTreeMap<String, String> = s
                .labels()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            labels.insert("cluster".into(), "e2e".into());
            (labels, samples.clone())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

async fn assert_in_victoria_metrics(
    vm: &VictoriaMetrics,
    prefix: &str,
    series: &[(Series, Vec<(f64, i64)>)],
) {
    let selector = format!("{{__name__=~\"{prefix}_.*\"}}");
    let got = vm
        .export_until(&selector, WAIT, |s| {
            s.len() == 2 && s.iter().all(|x| x.values.len() == 3)
        })
        .await;
    let got: Vec<_> = got
        .into_iter()
        .map(|s| {
            (
                s.metric,
                s.values.into_iter().zip(s.timestamps).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        got,
        expected(series),
        "VictoriaMetrics log:\n{}",
        vm.log_tail()
    );
}

test_each_vm!(
    victoria_metrics_stores_exactly_what_was_pushed,
    vmauth_routes_the_cluster_style_url_with_bearer_auth,
);

async fn victoria_metrics_stores_exactly_what_was_pushed(release: VmRelease) {
    let vm = VictoriaMetrics::start_release(release, &[]).await;
    let client = client_for(EndpointConfig::new(vm.write_url()));
    let series = known_series("rw_vm");
    push_all(&client, &series).await;
    assert_in_victoria_metrics(&vm, "rw_vm", &series).await;
    let stats = &client.stats()[0];
    assert_eq!(stats.samples_sent, 6);
    assert_eq!(
        stats.requests.keys().copied().collect::<Vec<_>>(),
        vec![204]
    );
    assert!(client.shutdown(WAIT).await.is_complete());
}

async fn vmauth_routes_the_cluster_style_url_with_bearer_auth(release: VmRelease) {
    // VictoriaMetrics single node serves under the vminsert path prefix, so the request path
    // the client sends is exactly the cluster one, end to end through a real vmauth.
    let vm =
        VictoriaMetrics::start_release(release, &["-http.pathPrefix=/insert/0/prometheus"]).await;
    let config = format!(
        "users:\n- bearer_token: \"e2e-token\"\n  url_map:\n  - src_paths: [\"/insert/0/prometheus/api/v1/write\"]\n    url_prefix: \"{}\"\n",
        vm.origin()
    );
    let vmauth = Vmauth::start_release(release, &config, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "e2e-token\n").unwrap();

    let mut endpoint = EndpointConfig::new(format!(
        "{}/insert/0/prometheus/api/v1/write",
        vmauth.base_url()
    ));
    endpoint.auth = Auth::BearerTokenFile(token.clone());
    let client = client_for(endpoint);
    let series = known_series("rw_vmauth");
    push_all(&client, &series).await;
    assert_in_victoria_metrics(&vm, "rw_vmauth", &series).await;

    // A wrong token is refused by vmauth (1.79 answers 400, newer releases 401): dropped,
    // counted, never retried.
    std::fs::write(&token, "wrong-token").unwrap();
    let s = Series::new("rw_vmauth_rejected", [("x", "y")]).unwrap();
    client.push(&s, Sample::new(1.0, now_millis()));
    tokio::time::timeout(WAIT, client.flush()).await.unwrap();
    let stats = &client.stats()[0];
    assert_eq!(stats.dropped(remote_write::DropReason::Http4xx), 1);
    let refused: u64 = stats.requests.range(400..500).map(|(_, n)| n).sum();
    assert_eq!(refused, 1, "{:?}", stats.requests);
    assert_eq!(
        stats.requests.values().sum::<u64>(),
        2,
        "{:?}",
        stats.requests
    );
    assert!(client.shutdown(WAIT).await.is_complete());
}

#[tokio::test]
async fn prometheus_receiver_stores_exactly_what_was_pushed() {
    let prom = Prometheus::start().await;
    let client = client_for(EndpointConfig::new(prom.write_url()));
    let series = known_series("rw_prom");
    push_all(&client, &series).await;
    assert_eq!(client.stats()[0].samples_sent, 6);

    let at = (now_millis() as f64) / 1000.0;
    let deadline = std::time::Instant::now() + WAIT;
    let got = loop {
        let got = prom
            .query_range_vector("{__name__=~\"rw_prom_.*\"}[10m]", at)
            .await;
        if got.len() == 2 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got: Vec<_> = got
        .into_iter()
        .map(|s| {
            (
                s.metric,
                s.samples
                    .into_iter()
                    .map(|(t, v)| (v, t))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(got, expected(&series));
    assert!(client.shutdown(WAIT).await.is_complete());
}
