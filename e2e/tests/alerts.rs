//! A broken mount probe makes a real vmalert, evaluating the shipped rules
//! (`deploy/alerts/pie.rules.yml`, unchanged) against a real VictoriaMetrics, fire
//! `PieMountProbeIOErrors` with the probe's labels, and notify; a healthy probe next to it
//! raises nothing.
//!
//! Everything is real: `pie-agent mount-probe` runs fio on a healthy directory and fails on a
//! path that is not a directory (the tests run as root, for whom a read-only directory is
//! writable), posts to `pie-controller receive`, which pushes to VictoriaMetrics; vmalert
//! evaluates every second. `PieMountProbeIOErrors` has `for: 0m` and needs 2 failures in 30m,
//! so two real failed probes make it fire at the next evaluation: no backdated samples needed.
//! Once per VictoriaMetrics release (vmalert and VictoriaMetrics both Debian's 1.79, or both the
//! current one).

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{
    Notifier, PieReceive, VictoriaMetrics, VmRelease, Vmalert, require_binary, shipped_rules,
    test_each_vm,
};

const CLUSTER: &str = "e2e-alerts";
const PROBE: &str = "e2e-probe";
const SC: &str = "e2e-sc";
const BROKEN: &str = "broken-node";
const HEALTHY: &str = "healthy-node";

test_each_vm!(a_broken_mount_probe_fires_pie_mount_probe_io_errors_in_a_real_vmalert);

async fn a_broken_mount_probe_fires_pie_mount_probe_io_errors_in_a_real_vmalert(
    release: VmRelease,
) {
    require_binary("fio", "fio");
    let vm = VictoriaMetrics::start_release(release, &[]).await;
    let notifier = Notifier::start().await;
    let vmalert = Vmalert::start(&shipped_rules(), &vm, notifier.url(), "1s").await;
    let controller = PieReceive::start(&vm.write_url(), CLUSTER, &[]).await;

    let dir = tempfile::tempdir_in(e2e::target_dir()).expect("a work dir on a real filesystem");
    let healthy = dir.path().join("healthy");
    std::fs::create_dir(&healthy).unwrap();
    // Where the volume should be mounted there is a plain file.
    let broken = dir.path().join("broken");
    std::fs::write(&broken, b"not a mounted volume").unwrap();

    for round in 1..=2 {
        let ok = controller.mount_probe(&healthy, HEALTHY, SC, PROBE);
        assert_eq!(
            ok.status.code(),
            Some(0),
            "healthy probe {round}: {}\ncontroller:\n{}",
            String::from_utf8_lossy(&ok.stderr),
            controller.log_tail()
        );
        let failed = controller.mount_probe(&broken, BROKEN, SC, PROBE);
        // 1 = the probe failed and the failure was delivered.
        assert_eq!(
            failed.status.code(),
            Some(1),
            "broken probe {round}: {}\ncontroller:\n{}",
            String::from_utf8_lossy(&failed.stderr),
            controller.log_tail()
        );
        assert!(
            String::from_utf8_lossy(&failed.stderr).contains("is not a directory"),
            "{}",
            String::from_utf8_lossy(&failed.stderr)
        );
    }

    let is_ours = |a: &e2e::VmalertAlert| {
        a.name == "PieMountProbeIOErrors"
            && a.state == "firing"
            && a.labels.get("node").map(String::as_str) == Some(BROKEN)
    };
    let alerts = vmalert
        .alerts_until(Duration::from_secs(60), |alerts| alerts.iter().any(is_ours))
        .await;
    let firing = alerts.iter().find(|a| is_ours(a)).unwrap_or_else(|| {
        panic!(
            "PieMountProbeIOErrors is not firing for {BROKEN}: {alerts:#?}\nvmalert log:\n{}\ncontroller log:\n{}",
            vmalert.log_tail(),
            controller.log_tail()
        )
    });
    let want: BTreeMap<String, String> = [
        ("alertgroup", "pie.alerts"),
        ("alertname", "PieMountProbeIOErrors"),
        ("cluster", CLUSTER),
        ("node", BROKEN),
        ("pie_probe_name", PROBE),
        ("severity", "critical"),
        ("storage_class", SC),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(firing.labels, want);
    assert_eq!(firing.value, "2", "two failed probes in the window");
    assert_eq!(
        firing.annotations["summary"],
        format!("I/O on volumes of {SC} fails on node {BROKEN} ({CLUSTER})")
    );

    // Nothing else is active: not for the healthy node, and no other alert (pending included).
    assert_eq!(
        alerts.iter().filter(|a| !is_ours(a)).collect::<Vec<_>>(),
        Vec::<&e2e::VmalertAlert>::new(),
        "only the broken node's alert may be active"
    );
    // The healthy node was seen by the very expression that fires for the broken one: its
    // failure count is 0, not absent.
    let increases = vm
        .query(
        r#"sum by (node) (increase(pie_performance_on_mount_probe_total{succeed="false",cluster="e2e-alerts"}[30m]))"#,
        )
        .await;
    let by_node: BTreeMap<&str, f64> = increases
        .iter()
        .map(|(labels, v)| (labels["node"].as_str(), *v))
        .collect();
    assert_eq!(
        by_node,
        BTreeMap::from([(BROKEN, 2.0), (HEALTHY, 0.0)]),
        "{increases:?}"
    );

    // Every shipped rule evaluated against pie's real series without error.
    let rules = vmalert.rules().await;
    assert_eq!(rules.len(), 16, "{rules:#?}");
    for rule in &rules {
        assert!(
            rule.health == "ok" && rule.last_error.is_empty(),
            "{rule:?}\nvmalert log:\n{}",
            vmalert.log_tail()
        );
        assert!(!rule.last_evaluation.starts_with("0001"), "{rule:?}");
    }

    // vmalert notified (the Alertmanager API) and wrote the ALERTS series back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = notifier.received();
        let names_nodes: Vec<(String, String)> = got
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["labels"]["node"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        if !names_nodes.is_empty() {
            assert!(
                names_nodes
                    .iter()
                    .all(|(n, node)| n == "PieMountProbeIOErrors" && node == BROKEN),
                "{got:#?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vmalert sent nothing to the notifier; log:\n{}",
            vmalert.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let alerts_series = vm
        .export_until(
            r#"ALERTS{alertname="PieMountProbeIOErrors",alertstate="firing"}"#,
            Duration::from_secs(10),
            |s| !s.is_empty(),
        )
        .await;
    assert_eq!(alerts_series.len(), 1, "{alerts_series:?}");
    assert_eq!(alerts_series[0].metric["node"], BROKEN);
    assert_eq!(alerts_series[0].metric["cluster"], CLUSTER);
}
