//! SIGTERM to `pie-controller receive` delivers what is still pending before the process
//! exits: samples held back by batching (the store's final re-send; a result's own samples are
//! delivered before it is answered), and samples held back because VictoriaMetrics is
//! unreachable when the signal arrives and returns within the shutdown window (10 s). Both once
//! per VictoriaMetrics release (Debian's 1.79, the current one).

use std::time::Duration;

use e2e::{ExportedSeries, PieReceive, VictoriaMetrics, VmRelease, now_millis, test_each_vm};
use serde_json::json;

fn result(probe: &str, i: usize) -> serde_json::Value {
    json!({
        "pie_probe_name": probe,
        "node": "sigterm-node",
        "storage_class": "sigterm-sc",
        "write_latency": i as f64 / 100.0,
        "read_latency": i as f64 / 200.0,
        "performance_probe_succeed": true,
    })
}

fn series<'a>(all: &'a [ExportedSeries], name: &str) -> &'a ExportedSeries {
    all.iter()
        .find(|s| {
            s.metric["__name__"] == name && s.metric.get("succeed").is_none_or(|v| v == "true")
        })
        .unwrap_or_else(|| panic!("no {name} in {all:#?}"))
}

/// The probe's samples after three results and the shutdown's final re-send of the store. The
/// counter, born of the first result's increment, pushed its 0 first (docs/design.md, "Counters
/// show their resets").
fn assert_three_results_and_the_final_push(all: &[ExportedSeries], terminated_ms: i64) {
    let counter = series(all, "pie_performance_on_mount_probe_total");
    assert_eq!(counter.values, [0.0, 1.0, 2.0, 3.0, 3.0], "{counter:?}");
    let write = series(all, "pie_io_write_latency_on_mount_probe_seconds");
    assert_eq!(write.values, [0.01, 0.02, 0.03, 0.03], "{write:?}");
    // The last sample of each is the whole store pushed once more at shutdown.
    for s in [counter, write] {
        let last = *s.timestamps.last().unwrap();
        assert!(last >= terminated_ms, "{s:?}: last sample before SIGTERM");
        assert!(s.timestamps.windows(2).all(|w| w[0] < w[1]), "{s:?}");
    }
}

/// What `selector` exports once the final push is searchable (VictoriaMetrics makes samples
/// searchable within about a second of accepting them; Debian's 1.79 once took longer than the
/// controller's exit), or after 10 s whatever it exports.
async fn after_the_final_push(vm: &VictoriaMetrics, selector: &str) -> Vec<ExportedSeries> {
    vm.export_until(selector, Duration::from_secs(10), |all| {
        all.iter().any(|s| {
            s.metric["__name__"] == "pie_performance_on_mount_probe_total"
                && s.metric.get("succeed").map(String::as_str) == Some("true")
                && s.values.len() >= 5
        })
    })
    .await
}

test_each_vm!(
    sigterm_flushes_samples_held_back_by_batching,
    sigterm_waits_for_victoria_metrics_to_come_back,
);

async fn sigterm_flushes_samples_held_back_by_batching(release: VmRelease) {
    let vm = VictoriaMetrics::start_release(release, &[]).await;
    let mut controller = PieReceive::start(
        &vm.write_url(),
        "e2e-sigterm",
        &[
            "--push-interval",
            "1h",
            "--remote-write-immediate=false",
            "--remote-write-flush-interval",
            "1h",
        ],
    )
    .await;
    // The client's flush timer ticks once when it starts, before the receiver listens; after
    // that nothing is sent until a batch is full (2000 samples) or an hour has passed, except
    // what the receiver settles: a result is answered only once its samples left memory, so
    // each result's samples go at once. What batching holds back is the rest: the store's
    // final re-send at shutdown is queued and waits for the flush, which SIGTERM brings.
    let selector = r#"{__name__=~"pie_.*",cluster="e2e-sigterm"}"#;
    for i in 1..=3 {
        assert_eq!(controller.post(&result("batched", i)).await, 200);
    }
    let answered = vm
        .export(r#"pie_performance_on_mount_probe_total{pie_probe_name="batched",succeed="true"}"#)
        .await;
    assert_eq!(
        answered
            .iter()
            .map(|s| s.values.clone())
            .collect::<Vec<_>>(),
        [vec![0.0, 1.0, 2.0, 3.0]],
        "each result delivered before its answer, despite an hour of batching"
    );

    let terminated = now_millis();
    controller.terminate();
    let status = controller.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        controller.log_tail()
    );
    let all = after_the_final_push(&vm, selector).await;
    assert_three_results_and_the_final_push(&all, terminated);
    let leader = series(&all, "pie_controller_leader");
    assert_eq!(leader.values.last(), Some(&1.0));
    assert!(
        controller
            .log_tail()
            .contains("remote write: everything delivered"),
        "{}",
        controller.log_tail()
    );
}

async fn sigterm_waits_for_victoria_metrics_to_come_back(release: VmRelease) {
    let mut vm = VictoriaMetrics::start_release(release, &[]).await;
    let mut controller = PieReceive::start(
        &vm.write_url(),
        "e2e-sigterm-down",
        &["--push-interval", "1h"],
    )
    .await;
    vm.stop_gracefully().await;
    for i in 1..=3 {
        assert_eq!(controller.post(&result("unreachable", i)).await, 200);
    }
    let terminated = now_millis();
    controller.terminate();
    // VictoriaMetrics is unreachable when the signal arrives and for a second after it: the
    // controller keeps trying instead of exiting; then VictoriaMetrics comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !controller.has_exited(),
        "pie-controller exited while VictoriaMetrics was unreachable; log:\n{}",
        controller.log_tail()
    );
    vm.restart().await;
    let status = controller.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        controller.log_tail()
    );
    let all = after_the_final_push(&vm, r#"{__name__=~"pie_.*",cluster="e2e-sigterm-down"}"#).await;
    assert_three_results_and_the_final_push(&all, terminated);
}
