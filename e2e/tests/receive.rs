//! `pie-controller receive` with a real VictoriaMetrics and a real `pie-agent mount-probe`
//! running fio: pie's mount-probe series and the fio extras reach VictoriaMetrics with the right
//! labels and values within 2 s of the agent exiting, and `/metrics` passes `promtool check
//! metrics`. Once per VictoriaMetrics release (Debian's 1.79, the current one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{
    ExportedSeries, MOUNT_RESULT_GAUGES, Process, VictoriaMetrics, VmRelease, free_port,
    http_client, pie_binaries, require_binary, target_dir, test_each_vm,
};

/// `name{labels} value` lines of a Prometheus text exposition, labels as a map with
/// `__name__`.
fn parse_exposition(text: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match key.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (key, ""),
        };
        let mut map = BTreeMap::from([("__name__".to_owned(), name.to_owned())]);
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').expect("label pair");
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        out.insert(map, value.parse().expect("sample value"));
    }
    out
}

/// Every series one successful mount-probe result produces: the gauges and the read and write
/// `pie_performance_on_mount_probe_total` counters.
fn mount_series() -> Vec<&'static str> {
    let mut all = MOUNT_RESULT_GAUGES.to_vec();
    all.extend(["pie_performance_on_mount_probe_total"; 2]);
    all
}

fn last(series: &ExportedSeries) -> f64 {
    *series.values.last().expect("a sample")
}

test_each_vm!(receive_pushes_a_real_mount_probe_to_victoria_metrics);

async fn receive_pushes_a_real_mount_probe_to_victoria_metrics(release: VmRelease) {
    require_binary("fio", "fio");
    let (controller_bin, agent_bin) = (&pie_binaries().controller, &pie_binaries().agent);
    let vm = VictoriaMetrics::start_release(release, &[]).await;
    let dir = tempfile::tempdir_in(target_dir()).expect("a work dir on a real filesystem");
    let token = dir.path().join("token");
    std::fs::write(&token, "e2e-shared-token\n").unwrap();

    let (port, metrics_port) = (free_port(), free_port());
    let mut controller_cmd = Command::new(controller_bin);
    controller_cmd
        .arg("receive")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .arg("--auth-token-file")
        .arg(&token)
        .args(["--remote-write-url", &vm.write_url()])
        .args(["--external-label", "cluster=e2e"])
        .env("RUST_LOG", "info");
    let mut controller = Process::spawn(
        "pie-controller",
        controller_cmd,
        dir.path().join("controller.log"),
    );
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    controller
        .wait_ready(&metrics_url, Duration::from_secs(30))
        .await;

    let volume = dir.path().join("mounted");
    std::fs::create_dir(&volume).unwrap();
    let output = run_agent(agent_bin, port, &volume, &token);
    let exited = Instant::now();
    assert!(
        output.status.success(),
        "pie-agent failed: {}\ncontroller log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        controller.log_tail()
    );

    let selector = r#"{__name__=~"pie_.*",pie_probe_name="e2e-probe"}"#;
    let exported = vm
        .export_until(selector, Duration::from_secs(2), |s| {
            s.len() >= mount_series().len()
        })
        .await;
    let elapsed = exited.elapsed();
    let names: Vec<&str> = exported
        .iter()
        .map(|s| s.metric["__name__"].as_str())
        .collect();
    let mut expected = mount_series();
    expected.sort_unstable();
    let mut got = names.clone();
    got.sort_unstable();
    assert_eq!(
        got,
        expected,
        "series in VictoriaMetrics after {elapsed:?}; controller log:\n{}",
        controller.log_tail()
    );
    // export_until polls every 100 ms and force-flushes first; the data was there in time.
    assert!(
        elapsed <= Duration::from_millis(2_500),
        "took {elapsed:?} (2 s + one poll)"
    );

    let metrics = http_client()
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let store = parse_exposition(&metrics);
    for series in &exported {
        let labels = &series.metric;
        assert_eq!(labels["cluster"], "e2e", "{labels:?}");
        assert_eq!(labels["node"], "e2e-node", "{labels:?}");
        assert_eq!(labels["storage_class"], "e2e-sc", "{labels:?}");
        let mut without_cluster = labels.clone();
        without_cluster.remove("cluster");
        let in_store = store
            .get(&without_cluster)
            .unwrap_or_else(|| panic!("{labels:?} is not in /metrics:\n{metrics}"));
        // VictoriaMetrics keeps about 12 significant digits.
        assert!(
            (last(series) - in_store).abs() <= in_store.abs() * 1e-9,
            "{labels:?}: VictoriaMetrics {} vs /metrics {in_store}",
            last(series)
        );
        let name = labels["__name__"].as_str();
        let value = last(series);
        match name {
            "pie_performance_on_mount_probe_total" => {
                let want = if labels["succeed"] == "true" {
                    1.0
                } else {
                    0.0
                };
                assert_eq!(value, want, "{labels:?}");
            }
            "pie_mount_probe_last_success_timestamp_seconds" => {
                let now = e2e::now_millis() as f64 / 1000.0;
                assert!(now - value < 60.0 && value <= now, "{value} vs {now}");
            }
            n if n.contains("latency") => {
                assert!(value > 0.0 && value < 10.0, "{name} = {value}")
            }
            _ => assert!(value > 0.0, "{name} = {value}"),
        }
    }

    // /metrics passes promtool and carries the self-metrics.
    let promtool = require_binary("promtool", "prometheus");
    let checked = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(write(dir.path(), "metrics.txt", &metrics)).unwrap())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for line in [
        r#"pie_receiver_requests_total{code="200"} 1"#,
        "pie_controller_leader 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(
        metrics.contains("pie_remote_write_samples_total{url="),
        "{metrics}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run_agent(agent: &Path, port: u16, volume: &Path, token: &Path) -> std::process::Output {
    Command::new(agent)
        .arg("mount-probe")
        .args(["--controller-url", &format!("http://127.0.0.1:{port}")])
        .arg("--path")
        .arg(volume)
        .args(["--node-name", "e2e-node"])
        .args(["--storage-class", "e2e-sc"])
        .args(["--pie-probe-name", "e2e-probe"])
        .arg("--token-file")
        .arg(token)
        .args(["--size", "8M"])
        .output()
        .expect("run pie-agent")
}
