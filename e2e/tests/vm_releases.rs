//! What holds for both VictoriaMetrics releases the tests run against (Debian's 1.79 and the
//! current one built from VictoriaMetrics' Go module, `e2e/victoriametrics`):
//!
//! - docs/deploy.md's table of tested versions lists exactly these releases, and every program
//!   of the current release is that version;
//! - vmagent relays pie's samples unchanged: `pie-controller receive` pushes every result to a
//!   VictoriaMetrics directly and to another one through vmagent, and both hold the same
//!   series, values and timestamps (once per release: vmagent and VictoriaMetrics of it).

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{
    ExportedSeries, PieReceive, VictoriaMetrics, VmRelease, Vmagent, repo_root, series_count,
    test_each_vm,
};

const RESULTS: usize = 20;

/// The versions in docs/deploy.md's table between the `tested-versions` markers: the first
/// backticked `v…` of each row's second column.
fn documented_versions() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/deploy.md")).unwrap();
    let table = doc
        .split("<!-- BEGIN tested-versions -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- END tested-versions -->").next())
        .expect("docs/deploy.md has the tested-versions markers");
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| release"))
        .map(|row| {
            let column = row.split('|').nth(2).unwrap_or_default();
            column
                .split('`')
                .find(|part| part.starts_with('v'))
                .unwrap_or_else(|| panic!("no `vX.Y.Z` in the row {row}"))
                .to_owned()
        })
        .collect()
}

#[test]
fn the_documented_versions_are_the_tested_ones() {
    let tested: BTreeSet<String> = VmRelease::ALL.iter().map(|r| r.version()).collect();
    assert_eq!(tested.len(), VmRelease::ALL.len(), "{tested:?}");
    assert_eq!(
        documented_versions(),
        tested,
        "docs/deploy.md's table of tested versions"
    );
    // The four programs of the current release are one build of one version.
    let current = VmRelease::Current.version();
    for program in ["victoria-metrics", "vmagent", "vmalert", "vmauth"] {
        let out = std::process::Command::new(VmRelease::Current.binary(program))
            .arg("-version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with(&format!("{program}-")) && text.contains(&format!("-tags-{current}-")),
            "{program} -version: {text}"
        );
    }
}

test_each_vm!(vmagent_relays_pies_samples_unchanged);

async fn vmagent_relays_pies_samples_unchanged(release: VmRelease) {
    let (direct, relayed) = tokio::join!(
        VictoriaMetrics::start_release(release, &[]),
        VictoriaMetrics::start_release(release, &[])
    );
    let vmagent = Vmagent::start(release, &relayed.write_url(), &[]).await;
    let controller = PieReceive::start(
        &direct.write_url(),
        "e2e-vmagent",
        &[
            "--remote-write-url",
            &vmagent.write_url(),
            "--push-interval",
            "1h",
        ],
    )
    .await;
    for i in 0..RESULTS {
        // Binary fractions: exact in JSON, in pie and in VictoriaMetrics.
        let value = (i + 1) as f64 / 8.0;
        controller
            .post_probe_result("relay", &format!("node-{i:02}"), "sc", value)
            .await;
    }

    let selector = r#"{cluster="e2e-vmagent"}"#;
    let samples = |s: &[ExportedSeries]| s.iter().map(|x| x.values.len()).sum::<usize>();
    // Every result's gauges and counters, and the receiver's counter, arrived directly.
    let want = direct
        .export_until(selector, Duration::from_secs(20), |s| {
            series_count(s, "pie_io_read_iops_on_mount_probe") == RESULTS
        })
        .await;
    let got = relayed
        .export_until(selector, Duration::from_secs(30), |s| {
            samples(s) >= samples(&want)
        })
        .await;
    assert_eq!(
        got,
        want,
        "through vmagent vs directly; vmagent log:\n{}\ncontroller log:\n{}",
        vmagent.log_tail(),
        controller.log_tail()
    );

    // And what arrived is what was posted, labels and values.
    for i in 0..RESULTS {
        let node = format!("node-{i:02}");
        let series: Vec<&ExportedSeries> = got
            .iter()
            .filter(|s| s.metric["__name__"] == "pie_io_write_latency_on_mount_probe_seconds")
            .filter(|s| s.metric.get("node") == Some(&node))
            .collect();
        assert_eq!(series.len(), 1, "{node}: {series:?}");
        let labels: Vec<(&str, &str)> = series[0]
            .metric
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("__name__", "pie_io_write_latency_on_mount_probe_seconds"),
                ("cluster", "e2e-vmagent"),
                ("node", node.as_str()),
                ("pie_probe_name", "relay"),
                ("storage_class", "sc"),
            ]
        );
        assert_eq!(series[0].values, [(i + 1) as f64 / 8.0], "{node}");
    }
}
