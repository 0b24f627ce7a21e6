//! The metric catalogue: every family pie-controller exports, declared once, and the typed
//! constructors the rest of the controller builds its [`Update`]s with.
//!
//! The constructors take named label values ([`Probe`]) and typed values (`bool` for
//! `on_time`/`succeed`), so a label cannot end up in another label's place; the store checks the
//! rest (label count, operation per kind) at run time. `docs/metrics.md` lists every family (a
//! test keeps them in step).

use remote_write::DurationHistogram;

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonic counter (its name ends with `_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram with fixed buckets.
    Histogram,
}

/// A metric family: name, help, type, label names and (histograms) bucket bounds.
#[derive(Debug, PartialEq)]
pub struct Family {
    /// The exported name (counters include `_total`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The type.
    pub kind: Kind,
    /// Label names, in the order [`Update::labels`] gives their values.
    pub labels: &'static [&'static str],
    /// Upper bounds of histogram buckets (without `+Inf`); empty for other kinds.
    pub buckets: &'static [f64],
}

/// The labels of per-probe series.
pub const PROBE: &[&str] = &["pie_probe_name", "node", "storage_class"];
/// Bucket bounds of the duration histograms, seconds.
pub const SECONDS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

macro_rules! catalogue {
    ($($id:ident: $name:literal, $kind:ident, $labels:expr, $buckets:expr, $help:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "`: ", $help)]
            pub static $id: Family = Family {
                name: $name,
                help: $help,
                kind: Kind::$kind,
                labels: $labels,
                buckets: $buckets,
            };
        )*
        /// Every family, in exposition order.
        pub static FAMILIES: &[&Family] = &[$(&$id),*];
    };
}

catalogue! {
    WRITE_LATENCY: "pie_io_write_latency_on_mount_probe_seconds", Gauge, PROBE, &[],
        "fio's mean write latency of the last mount probe.";
    READ_LATENCY: "pie_io_read_latency_on_mount_probe_seconds", Gauge, PROBE, &[],
        "fio's mean read latency of the last mount probe.";
    PERFORMANCE_TOTAL: "pie_performance_on_mount_probe_total", Counter, &["pie_probe_name", "node", "storage_class", "succeed"], &[],
        "Mount probes whose I/O (fio) succeeded or failed.";
    PROVISION_TOTAL: "pie_provision_probe_total", Counter, &["pie_probe_name", "storage_class", "on_time"], &[],
        "Provision probe Pods that started within probeThreshold or not.";
    MOUNT_TOTAL: "pie_mount_probe_total", Counter, &["pie_probe_name", "node", "storage_class", "on_time"], &[],
        "Mount probe Pods that started within probeThreshold or not.";
    FAILURES_TOTAL: "pie_probe_failures_total", Counter, &["pie_probe_name", "node", "storage_class", "probe", "reason"], &[],
        "Probes that did not start on time, by reason.";
    START_DURATION: "pie_probe_start_duration_seconds", Histogram, &["pie_probe_name", "node", "storage_class", "probe"], SECONDS,
        "Probe Pod creation to probe container start.";
    VOLUME_PROVISION: "pie_probe_volume_provision_seconds", Histogram, &["pie_probe_name", "storage_class"], SECONDS,
        "Provision probe's ephemeral PVC created to Bound.";
    VOLUME_DELETE: "pie_probe_volume_delete_seconds", Histogram, &["pie_probe_name", "storage_class"], SECONDS,
        "Ephemeral PVC deleted to its PV gone.";
    VOLUME_DELETE_TOTAL: "pie_probe_volume_delete_total", Counter, &["pie_probe_name", "storage_class", "on_time"], &[],
        "Volume deletions finished within probeThreshold or not.";
    NODE_ELIGIBLE: "pie_node_eligible", Gauge, PROBE, &[],
        "1 when the node can run mount probes, 0 when it is NotReady, cordoned or tainted.";
    READ_IOPS: "pie_io_read_iops_on_mount_probe", Gauge, PROBE, &[],
        "fio read IOPS of the last mount probe.";
    WRITE_IOPS: "pie_io_write_iops_on_mount_probe", Gauge, PROBE, &[],
        "fio write IOPS of the last mount probe.";
    READ_BANDWIDTH: "pie_io_read_bytes_per_second_on_mount_probe", Gauge, PROBE, &[],
        "fio read bandwidth of the last mount probe.";
    WRITE_BANDWIDTH: "pie_io_write_bytes_per_second_on_mount_probe", Gauge, PROBE, &[],
        "fio write bandwidth of the last mount probe.";
    READ_LATENCY_P99: "pie_io_read_latency_p99_on_mount_probe_seconds", Gauge, PROBE, &[],
        "fio p99 read completion latency of the last mount probe.";
    WRITE_LATENCY_P99: "pie_io_write_latency_p99_on_mount_probe_seconds", Gauge, PROBE, &[],
        "fio p99 write completion latency of the last mount probe.";
    LAST_SUCCESS: "pie_mount_probe_last_success_timestamp_seconds", Gauge, PROBE, &[],
        "Unix time of the last successful mount probe I/O.";
    LEADER: "pie_controller_leader", Gauge, &[], &[],
        "1 on the leader.";
    RECONCILES_TOTAL: "pie_controller_reconciles_total", Counter, &["result"], &[],
        "PieProbe reconciles.";
    RECEIVER_REQUESTS_TOTAL: "pie_receiver_requests_total", Counter, &["code"], &[],
        "Results API requests by HTTP status.";
    RW_SAMPLES_TOTAL: "pie_remote_write_samples_total", Counter, &["url"], &[],
        "Samples acknowledged by the remote-write endpoint.";
    RW_DROPPED_TOTAL: "pie_remote_write_samples_dropped_total", Counter, &["url", "reason"], &[],
        "Samples dropped.";
    RW_RETRIED_TOTAL: "pie_remote_write_samples_retried_total", Counter, &["url"], &[],
        "Samples in retried requests.";
    RW_REQUESTS_TOTAL: "pie_remote_write_requests_total", Counter, &["url", "code"], &[],
        "Remote-write requests by HTTP status (0 = no response).";
    RW_SENT_BYTES_TOTAL: "pie_remote_write_sent_bytes_total", Counter, &["url", "encoding"], &[],
        "Bytes of successful remote-write requests.";
    RW_PENDING: "pie_remote_write_pending_samples", Gauge, &["url"], &[],
        "Samples queued or in flight.";
    RW_LAST_SUCCESS: "pie_remote_write_last_success_timestamp_seconds", Gauge, &["url"], &[],
        "Last successful remote-write request.";
    RW_SEND_DURATION: "pie_remote_write_send_duration_seconds", Histogram, &["url"], &remote_write::SEND_DURATION_BUCKETS,
        "Remote-write request durations.";
    RW_BUFFER_BYTES: "pie_remote_write_buffer_bytes", Gauge, &["url"], &[],
        "Bytes of the disk buffer's segment files.";
    RW_BUFFER_RECORDS: "pie_remote_write_buffer_records", Gauge, &["url"], &[],
        "Requests waiting in the disk buffer.";
    RW_BUFFER_SAMPLES: "pie_remote_write_buffer_samples", Gauge, &["url"], &[],
        "Samples waiting in the disk buffer.";
    RW_BUFFER_WRITTEN_TOTAL: "pie_remote_write_buffer_records_written_total", Counter, &["url"], &[],
        "Requests written to the disk buffer.";
    RW_BUFFER_REPLAYED_TOTAL: "pie_remote_write_buffer_records_replayed_total", Counter, &["url"], &[],
        "Requests read back from the disk buffer and acknowledged by the endpoint.";
    RW_BUFFER_DROPPED_TOTAL: "pie_remote_write_buffer_records_dropped_total", Counter, &["url"], &[],
        "Requests deleted unsent because the disk buffer reached its size cap.";
    RW_BUFFER_CORRUPTED_TOTAL: "pie_remote_write_buffer_records_corrupted_total", Counter, &["url"], &[],
        "Damaged spans of the disk buffer skipped (a crash mid-write, a failed checksum).";
    RW_BUFFER_FILES_IGNORED_TOTAL: "pie_remote_write_buffer_files_ignored_total", Counter, &["url"], &[],
        "Foreign, unreadable or empty files found in the disk buffer directory.";
    RW_BUFFER_WRITE_ERRORS_TOTAL: "pie_remote_write_buffer_write_errors_total", Counter, &["url"], &[],
        "Requests that could not be written to the disk buffer (kept in memory).";
}

/// The `reason` of [`RW_DROPPED_TOTAL`] for samples the disk buffer's size cap deleted.
pub const BUFFER_FULL: &str = "buffer_full";

/// What an [`Update`] does to its series.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create the series at 0 if it does not exist (both `on_time` values from the start).
    Ensure,
    /// Add to a counter or gauge.
    Inc(f64),
    /// Set a gauge (or a counter mirrored from elsewhere).
    Set(f64),
    /// Add one observation to a histogram.
    Observe(f64),
    /// Replace a histogram with cumulative `(upper bound, count)` buckets, count and sum.
    SetHistogram(DurationHistogram),
}

/// One change of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The family.
    pub family: &'static Family,
    /// Label values, in the order of [`Family::labels`].
    pub labels: Vec<String>,
    /// The change.
    pub op: Op,
    /// When it happened, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Update {
    /// An update of `family{labels}`.
    pub fn new<S: Into<String>>(
        family: &'static Family,
        labels: impl IntoIterator<Item = S>,
        op: Op,
        timestamp_ms: i64,
    ) -> Update {
        Update {
            family,
            labels: labels.into_iter().map(Into::into).collect(),
            op,
            timestamp_ms,
        }
    }
}

/// The probe a series is about, by label name. Families without a `node` label (provision
/// and volume families) ignore `node`; provision probes' other series carry `node=""`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe<'a> {
    /// `pie_probe_name`.
    pub pie_probe_name: &'a str,
    /// `node` (`""` for provision probes).
    pub node: &'a str,
    /// `storage_class`.
    pub storage_class: &'a str,
}

impl<'a> Probe<'a> {
    /// A mount probe's labels.
    pub fn mount(pie_probe_name: &'a str, node: &'a str, storage_class: &'a str) -> Probe<'a> {
        Probe {
            pie_probe_name,
            node,
            storage_class,
        }
    }

    /// A provision probe's labels (`node=""`).
    pub fn provision(pie_probe_name: &'a str, storage_class: &'a str) -> Probe<'a> {
        Probe::mount(pie_probe_name, "", storage_class)
    }

    fn labels(&self) -> [&'a str; 3] {
        [self.pie_probe_name, self.node, self.storage_class]
    }
}

fn bool_label(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// One of the gauges a mount probe's result sets (`pie_probe_name`, `node`, `storage_class`):
/// the latencies, IOPS, bandwidths, p99s and the last-success time, and `pie_node_eligible`.
pub fn probe_gauge(family: &'static Family, probe: Probe<'_>, value: f64, at_ms: i64) -> Update {
    debug_assert_eq!(
        family.labels, PROBE,
        "{} is not a per-probe gauge",
        family.name
    );
    Update::new(family, probe.labels(), Op::Set(value), at_ms)
}

/// `pie_performance_on_mount_probe_total{succeed}`.
pub fn performance_total(probe: Probe<'_>, succeed: bool, op: Op, at_ms: i64) -> Update {
    let [p, n, sc] = probe.labels();
    Update::new(
        &PERFORMANCE_TOTAL,
        [p, n, sc, bool_label(succeed)],
        op,
        at_ms,
    )
}

/// `pie_provision_probe_total{on_time}`.
pub fn provision_total(probe: Probe<'_>, on_time: bool, op: Op, at_ms: i64) -> Update {
    Update::new(
        &PROVISION_TOTAL,
        [
            probe.pie_probe_name,
            probe.storage_class,
            bool_label(on_time),
        ],
        op,
        at_ms,
    )
}

/// `pie_mount_probe_total{on_time}`.
pub fn mount_total(probe: Probe<'_>, on_time: bool, op: Op, at_ms: i64) -> Update {
    let [p, n, sc] = probe.labels();
    Update::new(&MOUNT_TOTAL, [p, n, sc, bool_label(on_time)], op, at_ms)
}

/// One more `pie_probe_failures_total{probe, reason}`.
pub fn failure(probe: Probe<'_>, kind: &str, reason: &str, at_ms: i64) -> Update {
    let [p, n, sc] = probe.labels();
    Update::new(
        &FAILURES_TOTAL,
        [p, n, sc, kind, reason],
        Op::Inc(1.0),
        at_ms,
    )
}

/// One observation of `pie_probe_start_duration_seconds{probe}`.
pub fn start_duration(probe: Probe<'_>, kind: &str, seconds: f64, at_ms: i64) -> Update {
    let [p, n, sc] = probe.labels();
    Update::new(
        &START_DURATION,
        [p, n, sc, kind],
        Op::Observe(seconds),
        at_ms,
    )
}

/// One observation of `pie_probe_volume_provision_seconds`.
pub fn volume_provision(probe: Probe<'_>, seconds: f64, at_ms: i64) -> Update {
    Update::new(
        &VOLUME_PROVISION,
        [probe.pie_probe_name, probe.storage_class],
        Op::Observe(seconds),
        at_ms,
    )
}

/// One observation of `pie_probe_volume_delete_seconds`.
pub fn volume_delete(probe: Probe<'_>, seconds: f64, at_ms: i64) -> Update {
    Update::new(
        &VOLUME_DELETE,
        [probe.pie_probe_name, probe.storage_class],
        Op::Observe(seconds),
        at_ms,
    )
}

/// `pie_probe_volume_delete_total{on_time}`.
pub fn volume_delete_total(probe: Probe<'_>, on_time: bool, op: Op, at_ms: i64) -> Update {
    Update::new(
        &VOLUME_DELETE_TOTAL,
        [
            probe.pie_probe_name,
            probe.storage_class,
            bool_label(on_time),
        ],
        op,
        at_ms,
    )
}

/// `pie_controller_leader`: 1 while this replica holds the Lease.
pub fn leader(leading: bool, at_ms: i64) -> Update {
    let value = if leading { 1.0 } else { 0.0 };
    Update::new(&LEADER, [] as [&str; 0], Op::Set(value), at_ms)
}

/// One more `pie_controller_reconciles_total{result="ok"|"error"}`.
pub fn reconcile(ok: bool, at_ms: i64) -> Update {
    let result = if ok { "ok" } else { "error" };
    Update::new(&RECONCILES_TOTAL, [result], Op::Inc(1.0), at_ms)
}

/// One more `pie_receiver_requests_total{code}`.
pub fn receiver_request(code: &str, at_ms: i64) -> Update {
    Update::new(&RECEIVER_REQUESTS_TOTAL, [code], Op::Inc(1.0), at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::store::Store;

    #[test]
    fn every_family_name_is_valid_and_unique() {
        let mut names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAMILIES.len());
        for f in FAMILIES {
            assert!(remote_write::is_valid_metric_name(f.name), "{}", f.name);
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert_eq!(
                f.kind == Kind::Histogram,
                !f.buckets.is_empty(),
                "{}",
                f.name
            );
        }
    }

    #[test]
    fn every_family_is_in_the_metrics_reference() {
        let doc = include_str!("../../../docs/metrics.md");
        for f in FAMILIES {
            assert!(
                doc.contains(&format!("`{}`", f.name)),
                "{} not in docs/metrics.md",
                f.name
            );
        }
    }

    /// Every constructor builds an update the store accepts: the right number of labels in
    /// the family's order and an operation its kind allows.
    #[test]
    fn constructors_build_valid_updates() {
        let mount = Probe::mount("p", "n", "sc");
        let provision = Probe::provision("p", "sc");
        let updates = [
            probe_gauge(&WRITE_LATENCY, mount, 0.1, 1),
            probe_gauge(&NODE_ELIGIBLE, mount, 1.0, 1),
            performance_total(mount, true, Op::Inc(1.0), 1),
            provision_total(provision, false, Op::Ensure, 1),
            mount_total(mount, true, Op::Inc(1.0), 1),
            failure(provision, "provision", "timeout", 1),
            start_duration(mount, "mount", 2.0, 1),
            volume_provision(provision, 2.0, 1),
            volume_delete(provision, 2.0, 1),
            volume_delete_total(provision, true, Op::Inc(1.0), 1),
            leader(true, 1),
            reconcile(false, 1),
            receiver_request("200", 1),
        ];
        let store = Store::new();
        let (_, errors) = store.apply(updates);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(store.get(&MOUNT_TOTAL, &["p", "n", "sc", "true"]).is_some());
        assert!(store.get(&PROVISION_TOTAL, &["p", "sc", "false"]).is_some());
        assert!(
            store
                .get(&FAILURES_TOTAL, &["p", "", "sc", "provision", "timeout"])
                .is_some()
        );
        assert!(store.get(&RECONCILES_TOTAL, &["error"]).is_some());
    }
}
