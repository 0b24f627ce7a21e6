//! The metric store: the one source of truth for every series pie-controller exports.
//!
//! Every family of `docs/metrics.md` is declared here once ([`Family`]); the receiver and the
//! outcome tracker change the store with [`Update`]s and get back the [`Point`]s to push at once;
//! the periodic push re-sends [`Store::snapshot`]; `/metrics` encodes [`Store::families`].
//! Timestamps of one series only ever increase, so remote write never drops a sample as out of
//! order.

use std::collections::BTreeMap;
use std::sync::Mutex;

use remote_write::{DurationHistogram, EndpointStatsSnapshot, Sample, Series};

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

const PROBE: &[&str] = &["pie_probe_name", "node", "storage_class"];
const SECONDS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

macro_rules! family {
    ($id:ident, $name:literal, $kind:ident, $labels:expr, $help:literal) => {
        family!($id, $name, $kind, $labels, &[], $help);
    };
    ($id:ident, $name:literal, $kind:ident, $labels:expr, $buckets:expr, $help:literal) => {
        #[doc = concat!("`", $name, "`: ", $help)]
        pub static $id: Family = Family {
            name: $name,
            help: $help,
            kind: Kind::$kind,
            labels: $labels,
            buckets: $buckets,
        };
    };
}

family!(
    WRITE_LATENCY,
    "pie_io_write_latency_on_mount_probe_seconds",
    Gauge,
    PROBE,
    "fio's mean write latency of the last mount probe."
);
family!(
    READ_LATENCY,
    "pie_io_read_latency_on_mount_probe_seconds",
    Gauge,
    PROBE,
    "fio's mean read latency of the last mount probe."
);
family!(
    PERFORMANCE_TOTAL,
    "pie_performance_on_mount_probe_total",
    Counter,
    &["pie_probe_name", "node", "storage_class", "succeed"],
    "Mount probes whose I/O (fio) succeeded or failed."
);
family!(
    PROVISION_TOTAL,
    "pie_provision_probe_total",
    Counter,
    &["pie_probe_name", "storage_class", "on_time"],
    "Provision probe Pods that started within probeThreshold or not."
);
family!(
    MOUNT_TOTAL,
    "pie_mount_probe_total",
    Counter,
    &["pie_probe_name", "node", "storage_class", "on_time"],
    "Mount probe Pods that started within probeThreshold or not."
);
family!(
    FAILURES_TOTAL,
    "pie_probe_failures_total",
    Counter,
    &["pie_probe_name", "node", "storage_class", "probe", "reason"],
    "Probes that did not start on time, by reason."
);
family!(
    START_DURATION,
    "pie_probe_start_duration_seconds",
    Histogram,
    &["pie_probe_name", "node", "storage_class", "probe"],
    SECONDS,
    "Probe Pod creation to probe container start."
);
family!(
    VOLUME_PROVISION,
    "pie_probe_volume_provision_seconds",
    Histogram,
    &["pie_probe_name", "storage_class"],
    SECONDS,
    "Provision probe's ephemeral PVC created to Bound."
);
family!(
    VOLUME_DELETE,
    "pie_probe_volume_delete_seconds",
    Histogram,
    &["pie_probe_name", "storage_class"],
    SECONDS,
    "Ephemeral PVC deleted to its PV gone."
);
family!(
    VOLUME_DELETE_TOTAL,
    "pie_probe_volume_delete_total",
    Counter,
    &["pie_probe_name", "storage_class", "on_time"],
    "Volume deletions finished within probeThreshold or not."
);
family!(
    NODE_ELIGIBLE,
    "pie_node_eligible",
    Gauge,
    PROBE,
    "1 when the node can run mount probes, 0 when it is NotReady, cordoned or tainted."
);
family!(
    READ_IOPS,
    "pie_io_read_iops_on_mount_probe",
    Gauge,
    PROBE,
    "fio read IOPS of the last mount probe."
);
family!(
    WRITE_IOPS,
    "pie_io_write_iops_on_mount_probe",
    Gauge,
    PROBE,
    "fio write IOPS of the last mount probe."
);
family!(
    READ_BANDWIDTH,
    "pie_io_read_bytes_per_second_on_mount_probe",
    Gauge,
    PROBE,
    "fio read bandwidth of the last mount probe."
);
family!(
    WRITE_BANDWIDTH,
    "pie_io_write_bytes_per_second_on_mount_probe",
    Gauge,
    PROBE,
    "fio write bandwidth of the last mount probe."
);
family!(
    READ_LATENCY_P99,
    "pie_io_read_latency_p99_on_mount_probe_seconds",
    Gauge,
    PROBE,
    "fio p99 read completion latency of the last mount probe."
);
family!(
    WRITE_LATENCY_P99,
    "pie_io_write_latency_p99_on_mount_probe_seconds",
    Gauge,
    PROBE,
    "fio p99 write completion latency of the last mount probe."
);
family!(
    LAST_SUCCESS,
    "pie_mount_probe_last_success_timestamp_seconds",
    Gauge,
    PROBE,
    "Unix time of the last successful mount probe I/O."
);
family!(
    LEADER,
    "pie_controller_leader",
    Gauge,
    &[],
    "1 on the leader."
);
family!(
    RECONCILES_TOTAL,
    "pie_controller_reconciles_total",
    Counter,
    &["result"],
    "PieProbe reconciles."
);
family!(
    RECEIVER_REQUESTS_TOTAL,
    "pie_receiver_requests_total",
    Counter,
    &["code"],
    "Results API requests by HTTP status."
);
family!(
    RW_SAMPLES_TOTAL,
    "pie_remote_write_samples_total",
    Counter,
    &["url"],
    "Samples acknowledged by the remote-write endpoint."
);
family!(
    RW_DROPPED_TOTAL,
    "pie_remote_write_samples_dropped_total",
    Counter,
    &["url", "reason"],
    "Samples dropped."
);
family!(
    RW_RETRIED_TOTAL,
    "pie_remote_write_samples_retried_total",
    Counter,
    &["url"],
    "Samples in retried requests."
);
family!(
    RW_REQUESTS_TOTAL,
    "pie_remote_write_requests_total",
    Counter,
    &["url", "code"],
    "Remote-write requests by HTTP status (0 = no response)."
);
family!(
    RW_SENT_BYTES_TOTAL,
    "pie_remote_write_sent_bytes_total",
    Counter,
    &["url", "encoding"],
    "Bytes of successful remote-write requests."
);
family!(
    RW_PENDING,
    "pie_remote_write_pending_samples",
    Gauge,
    &["url"],
    "Samples queued or in flight."
);
family!(
    RW_LAST_SUCCESS,
    "pie_remote_write_last_success_timestamp_seconds",
    Gauge,
    &["url"],
    "Last successful remote-write request."
);
family!(
    RW_SEND_DURATION,
    "pie_remote_write_send_duration_seconds",
    Histogram,
    &["url"],
    &remote_write::SEND_DURATION_BUCKETS,
    "Remote-write request durations."
);

family!(
    RW_BUFFER_BYTES,
    "pie_remote_write_buffer_bytes",
    Gauge,
    &["url"],
    "Bytes of the disk buffer's segment files."
);
family!(
    RW_BUFFER_RECORDS,
    "pie_remote_write_buffer_records",
    Gauge,
    &["url"],
    "Requests waiting in the disk buffer."
);
family!(
    RW_BUFFER_SAMPLES,
    "pie_remote_write_buffer_samples",
    Gauge,
    &["url"],
    "Samples waiting in the disk buffer."
);
family!(
    RW_BUFFER_WRITTEN_TOTAL,
    "pie_remote_write_buffer_records_written_total",
    Counter,
    &["url"],
    "Requests written to the disk buffer."
);
family!(
    RW_BUFFER_REPLAYED_TOTAL,
    "pie_remote_write_buffer_records_replayed_total",
    Counter,
    &["url"],
    "Requests read back from the disk buffer and acknowledged by the endpoint."
);
family!(
    RW_BUFFER_DROPPED_TOTAL,
    "pie_remote_write_buffer_records_dropped_total",
    Counter,
    &["url"],
    "Requests deleted unsent because the disk buffer reached its size cap."
);
family!(
    RW_BUFFER_CORRUPTED_TOTAL,
    "pie_remote_write_buffer_records_corrupted_total",
    Counter,
    &["url"],
    "Damaged spans of the disk buffer skipped (a crash mid-write, a failed checksum)."
);
family!(
    RW_BUFFER_FILES_IGNORED_TOTAL,
    "pie_remote_write_buffer_files_ignored_total",
    Counter,
    &["url"],
    "Foreign, unreadable or empty files found in the disk buffer directory."
);
family!(
    RW_BUFFER_WRITE_ERRORS_TOTAL,
    "pie_remote_write_buffer_write_errors_total",
    Counter,
    &["url"],
    "Requests that could not be written to the disk buffer (kept in memory)."
);

/// The `reason` of [`RW_DROPPED_TOTAL`] for samples the disk buffer's size cap deleted.
pub const BUFFER_FULL: &str = "buffer_full";

/// Every family, in exposition order.
pub static FAMILIES: [&Family; 38] = [
    &WRITE_LATENCY,
    &READ_LATENCY,
    &PERFORMANCE_TOTAL,
    &PROVISION_TOTAL,
    &MOUNT_TOTAL,
    &FAILURES_TOTAL,
    &START_DURATION,
    &VOLUME_PROVISION,
    &VOLUME_DELETE,
    &VOLUME_DELETE_TOTAL,
    &NODE_ELIGIBLE,
    &READ_IOPS,
    &WRITE_IOPS,
    &READ_BANDWIDTH,
    &WRITE_BANDWIDTH,
    &READ_LATENCY_P99,
    &WRITE_LATENCY_P99,
    &LAST_SUCCESS,
    &LEADER,
    &RECONCILES_TOTAL,
    &RECEIVER_REQUESTS_TOTAL,
    &RW_SAMPLES_TOTAL,
    &RW_DROPPED_TOTAL,
    &RW_RETRIED_TOTAL,
    &RW_REQUESTS_TOTAL,
    &RW_SENT_BYTES_TOTAL,
    &RW_PENDING,
    &RW_LAST_SUCCESS,
    &RW_SEND_DURATION,
    &RW_BUFFER_BYTES,
    &RW_BUFFER_RECORDS,
    &RW_BUFFER_SAMPLES,
    &RW_BUFFER_WRITTEN_TOTAL,
    &RW_BUFFER_REPLAYED_TOTAL,
    &RW_BUFFER_DROPPED_TOTAL,
    &RW_BUFFER_CORRUPTED_TOTAL,
    &RW_BUFFER_FILES_IGNORED_TOTAL,
    &RW_BUFFER_WRITE_ERRORS_TOTAL,
];

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

/// A sample to push.
pub type Point = (Series, Sample);

/// Why an update was not applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The number of label values does not match the family.
    #[error("{family}: {got} label values given, {want} expected")]
    LabelCount {
        /// The family name.
        family: &'static str,
        /// Values given.
        got: usize,
        /// Values expected.
        want: usize,
    },
    /// The operation does not fit the family's type.
    #[error("{family}: {op} does not apply to a {kind:?}")]
    WrongOp {
        /// The family name.
        family: &'static str,
        /// The operation.
        op: &'static str,
        /// The family's type.
        kind: Kind,
    },
    /// A label value is not acceptable for remote write.
    #[error("{family}: {error}")]
    Series {
        /// The family name.
        family: &'static str,
        /// What is wrong.
        error: remote_write::SeriesError,
    },
}

/// The value of one series.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter or gauge value.
    Scalar(f64),
    /// A histogram: per-bucket (not cumulative) counts with the `+Inf` bucket last, sum.
    Histogram {
        /// Counts per bucket, `buckets.len() + 1` entries.
        counts: Vec<u64>,
        /// Sum of observations.
        sum: f64,
    },
}

#[derive(Debug)]
struct Entry {
    value: Value,
    /// The last timestamp pushed (or stamped) for this series.
    last_ms: i64,
    /// Remote-write series: the one series of a scalar; for a histogram every `_bucket` (with
    /// `+Inf` last), then `_sum` and `_count`.
    series: Vec<Series>,
}

impl Entry {
    fn new(family: &'static Family, labels: &[String]) -> Result<Entry, StoreError> {
        let err = |error| StoreError::Series {
            family: family.name,
            error,
        };
        let pairs = || {
            family
                .labels
                .iter()
                .copied()
                .zip(labels.iter().map(String::as_str))
        };
        let (value, series) = match family.kind {
            Kind::Counter | Kind::Gauge => (
                Value::Scalar(0.0),
                vec![Series::new(family.name, pairs()).map_err(err)?],
            ),
            Kind::Histogram => {
                let mut series = Vec::with_capacity(family.buckets.len() + 3);
                let bucket = format!("{}_bucket", family.name);
                let bounds = family
                    .buckets
                    .iter()
                    .map(|b| format_bound(*b))
                    .chain(["+Inf".to_owned()]);
                for le in bounds {
                    series.push(
                        Series::new(&bucket, pairs().chain([("le", le.as_str())])).map_err(err)?,
                    );
                }
                for suffix in ["_sum", "_count"] {
                    series.push(
                        Series::new(&format!("{}{suffix}", family.name), pairs()).map_err(err)?,
                    );
                }
                (
                    Value::Histogram {
                        counts: vec![0; family.buckets.len() + 1],
                        sum: 0.0,
                    },
                    series,
                )
            }
        };
        Ok(Entry {
            value,
            last_ms: i64::MIN,
            series,
        })
    }

    /// The entry's samples at `timestamp_ms` (moved past the last one pushed), and that
    /// timestamp remembered.
    fn points(&mut self, timestamp_ms: i64, out: &mut Vec<Point>) {
        let ts = timestamp_ms.max(self.last_ms.saturating_add(1));
        self.last_ms = ts;
        match &self.value {
            Value::Scalar(v) => out.push((self.series[0].clone(), Sample::new(*v, ts))),
            Value::Histogram { counts, sum } => {
                let mut cumulative = 0;
                let buckets = self.series.len() - 2;
                for (series, n) in self.series[..buckets].iter().zip(counts) {
                    cumulative += n;
                    out.push((series.clone(), Sample::new(cumulative as f64, ts)));
                }
                out.push((self.series[buckets].clone(), Sample::new(*sum, ts)));
                out.push((
                    self.series[buckets + 1].clone(),
                    Sample::new(cumulative as f64, ts),
                ));
            }
        }
    }
}

/// Prometheus' notation of a bucket bound (`0.5`, `1`, `2.5`).
fn format_bound(b: f64) -> String {
    format!("{b}")
}

/// A copy of one family's series for exposition.
#[derive(Debug, Clone)]
pub struct FamilySnapshot {
    /// The family.
    pub family: &'static Family,
    /// `(label values, value)` of every series, sorted by labels.
    pub series: Vec<(Vec<String>, Value)>,
}

type Entries = BTreeMap<Vec<String>, Entry>;

/// The metric store. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    families: Mutex<Vec<(&'static Family, Entries)>>,
}

impl Default for Store {
    fn default() -> Store {
        Store::new()
    }
}

impl Store {
    /// An empty store with every family of [`FAMILIES`].
    pub fn new() -> Store {
        Store {
            families: Mutex::new(FAMILIES.iter().map(|f| (*f, Entries::new())).collect()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static Family, Entries)>> {
        self.families.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `updates` in order and returns the samples to push now (only for series that
    /// changed or were created). An invalid update is skipped and reported; the others apply.
    pub fn apply(
        &self,
        updates: impl IntoIterator<Item = Update>,
    ) -> (Vec<Point>, Vec<StoreError>) {
        let mut points = Vec::new();
        let mut errors = Vec::new();
        let mut families = self.lock();
        for update in updates {
            if let Err(e) = apply_one(&mut families, update, &mut points) {
                errors.push(e);
            }
        }
        (points, errors)
    }

    /// Checks `update` without applying it.
    pub fn check(update: &Update) -> Result<(), StoreError> {
        check(update)?;
        Entry::new(update.family, &update.labels).map(|_| ())
    }

    /// Every series at `now_ms` (or just after its last timestamp), for the periodic re-send.
    pub fn snapshot(&self, now_ms: i64) -> Vec<Point> {
        let mut points = Vec::new();
        for (_, entries) in self.lock().iter_mut() {
            for entry in entries.values_mut() {
                entry.points(now_ms, &mut points);
            }
        }
        points
    }

    /// A copy of every family for exposition.
    pub fn families(&self) -> Vec<FamilySnapshot> {
        self.lock()
            .iter()
            .map(|(family, entries)| FamilySnapshot {
                family,
                series: entries
                    .iter()
                    .map(|(labels, e)| (labels.clone(), e.value.clone()))
                    .collect(),
            })
            .collect()
    }

    /// The value of `family{labels}`, if the series exists.
    pub fn get(&self, family: &'static Family, labels: &[&str]) -> Option<Value> {
        let families = self.lock();
        let (_, entries) = families.iter().find(|(f, _)| std::ptr::eq(*f, family))?;
        let key: Vec<String> = labels.iter().map(|s| (*s).to_owned()).collect();
        entries.get(&key).map(|e| e.value.clone())
    }

    /// The number of series (histograms count once).
    pub fn len(&self) -> usize {
        self.lock().iter().map(|(_, e)| e.len()).sum()
    }

    /// Whether the store holds no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every series for which `keep(family, labels)` is false and returns the
    /// remote-write series to mark stale, with the timestamp to mark them at (just after their
    /// last sample, at least `now_ms`).
    pub fn retain(
        &self,
        now_ms: i64,
        mut keep: impl FnMut(&Family, &[(&str, &str)]) -> bool,
    ) -> Vec<(Series, i64)> {
        let mut stale = Vec::new();
        for (family, entries) in self.lock().iter_mut() {
            entries.retain(|labels, entry| {
                let pairs: Vec<(&str, &str)> = family
                    .labels
                    .iter()
                    .copied()
                    .zip(labels.iter().map(String::as_str))
                    .collect();
                if keep(family, &pairs) {
                    return true;
                }
                let ts = now_ms.max(entry.last_ms.saturating_add(1));
                stale.extend(entry.series.iter().map(|s| (s.clone(), ts)));
                false
            });
        }
        stale
    }
}

fn check(update: &Update) -> Result<(), StoreError> {
    let family = update.family;
    if update.labels.len() != family.labels.len() {
        return Err(StoreError::LabelCount {
            family: family.name,
            got: update.labels.len(),
            want: family.labels.len(),
        });
    }
    let op = match (&update.op, family.kind) {
        (Op::Ensure, _) => return Ok(()),
        (Op::Inc(_) | Op::Set(_), Kind::Counter | Kind::Gauge) => return Ok(()),
        (Op::Observe(_) | Op::SetHistogram(_), Kind::Histogram) => return Ok(()),
        (Op::Inc(_), _) => "Inc",
        (Op::Set(_), _) => "Set",
        (Op::Observe(_), _) => "Observe",
        (Op::SetHistogram(_), _) => "SetHistogram",
    };
    Err(StoreError::WrongOp {
        family: family.name,
        op,
        kind: family.kind,
    })
}

fn apply_one(
    families: &mut [(&'static Family, Entries)],
    update: Update,
    points: &mut Vec<Point>,
) -> Result<(), StoreError> {
    check(&update)?;
    let family = update.family;
    let Some((_, entries)) = families.iter_mut().find(|(f, _)| std::ptr::eq(*f, family)) else {
        return Err(StoreError::WrongOp {
            family: family.name,
            op: "unregistered family",
            kind: family.kind,
        });
    };
    let created = !entries.contains_key(&update.labels);
    if created {
        let entry = Entry::new(family, &update.labels)?;
        entries.insert(update.labels.clone(), entry);
    }
    let Some(entry) = entries.get_mut(&update.labels) else {
        return Ok(());
    };
    match (&update.op, &mut entry.value) {
        (Op::Ensure, _) => {
            if !created {
                return Ok(());
            }
        }
        (Op::Inc(d), Value::Scalar(v)) => *v += d,
        (Op::Set(x), Value::Scalar(v)) => *v = *x,
        (Op::Observe(x), Value::Histogram { counts, sum }) => {
            let i = family
                .buckets
                .iter()
                .position(|le| x <= le)
                .unwrap_or(family.buckets.len());
            counts[i] += 1;
            *sum += x;
        }
        (Op::SetHistogram(h), Value::Histogram { counts, sum }) => {
            let mut previous = 0;
            for (i, slot) in counts.iter_mut().enumerate() {
                let cumulative = h.buckets.get(i).map_or(h.count, |(_, n)| *n);
                *slot = cumulative.saturating_sub(previous);
                previous = cumulative;
            }
            *sum = h.sum_seconds;
        }
        _ => unreachable!("checked above"),
    }
    entry.points(update.timestamp_ms, points);
    Ok(())
}

/// The remote-write client's self-metrics as updates (absolute values).
pub fn remote_write_updates(stats: &[EndpointStatsSnapshot], now_ms: i64) -> Vec<Update> {
    let mut out = Vec::new();
    for s in stats {
        let url = s.url.clone();
        let u = |family, labels: Vec<String>, op| Update::new(family, labels, op, now_ms);
        out.push(u(
            &RW_SAMPLES_TOTAL,
            vec![url.clone()],
            Op::Set(s.samples_sent as f64),
        ));
        for (reason, n) in &s.dropped {
            out.push(u(
                &RW_DROPPED_TOTAL,
                vec![url.clone(), reason.as_str().to_owned()],
                Op::Set(*n as f64),
            ));
        }
        out.push(u(
            &RW_RETRIED_TOTAL,
            vec![url.clone()],
            Op::Set(s.samples_retried as f64),
        ));
        for (code, n) in &s.requests {
            out.push(u(
                &RW_REQUESTS_TOTAL,
                vec![url.clone(), code.to_string()],
                Op::Set(*n as f64),
            ));
        }
        for (encoding, n) in [
            ("snappy", s.bytes_sent_compressed),
            ("raw", s.bytes_sent_raw),
        ] {
            out.push(u(
                &RW_SENT_BYTES_TOTAL,
                vec![url.clone(), encoding.to_owned()],
                Op::Set(n as f64),
            ));
        }
        out.push(u(
            &RW_PENDING,
            vec![url.clone()],
            Op::Set(s.pending_samples as f64),
        ));
        if let Some(t) = s.last_success_timestamp_seconds {
            out.push(u(&RW_LAST_SUCCESS, vec![url.clone()], Op::Set(t)));
        }
        out.push(u(
            &RW_SEND_DURATION,
            vec![url],
            Op::SetHistogram(s.send_duration.clone()),
        ));
    }
    out
}

/// The disk buffers' self-metrics as updates (absolute values), for a client that has them.
/// Samples deleted by the size cap join the other drops as
/// `pie_remote_write_samples_dropped_total{reason="buffer_full"}`.
pub fn buffer_updates(stats: &[EndpointStatsSnapshot], now_ms: i64) -> Vec<Update> {
    let mut out = Vec::new();
    for s in stats {
        let b = &s.buffer;
        let url = || vec![s.url.clone()];
        for (family, n) in [
            (&RW_BUFFER_BYTES, b.bytes),
            (&RW_BUFFER_RECORDS, b.records),
            (&RW_BUFFER_SAMPLES, b.samples),
            (&RW_BUFFER_WRITTEN_TOTAL, b.records_written),
            (&RW_BUFFER_REPLAYED_TOTAL, b.records_replayed),
            (&RW_BUFFER_DROPPED_TOTAL, b.records_dropped),
            (&RW_BUFFER_CORRUPTED_TOTAL, b.records_corrupted),
            (&RW_BUFFER_FILES_IGNORED_TOTAL, b.files_ignored),
            (&RW_BUFFER_WRITE_ERRORS_TOTAL, b.write_errors),
        ] {
            out.push(Update::new(family, url(), Op::Set(n as f64), now_ms));
        }
        out.push(Update::new(
            &RW_DROPPED_TOTAL,
            [s.url.clone(), BUFFER_FULL.to_owned()],
            Op::Set(b.samples_dropped as f64),
            now_ms,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

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

    #[test]
    fn counters_add_and_push_the_new_value() {
        let store = Store::new();
        let l = labels(&["p", "n1", "sc", "true"]);
        let (points, errors) = store.apply([
            Update::new(&MOUNT_TOTAL, l.clone(), Op::Inc(1.0), 1000),
            Update::new(&MOUNT_TOTAL, l.clone(), Op::Inc(1.0), 2000),
        ]);
        assert!(errors.is_empty());
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].1, Sample::new(2.0, 2000));
        assert_eq!(
            points[1].0.to_string(),
            r#"pie_mount_probe_total{node="n1",on_time="true",pie_probe_name="p",storage_class="sc"}"#
        );
    }

    #[test]
    fn timestamps_of_a_series_only_increase() {
        let store = Store::new();
        let l = labels(&["p", "n1", "sc"]);
        let (p, _) = store.apply([Update::new(&WRITE_LATENCY, l.clone(), Op::Set(1.0), 5000)]);
        assert_eq!(p[0].1.timestamp_ms, 5000);
        let (p, _) = store.apply([Update::new(&WRITE_LATENCY, l.clone(), Op::Set(2.0), 4000)]);
        assert_eq!(p[0].1, Sample::new(2.0, 5001));
        let snap = store.snapshot(5001);
        assert_eq!(snap[0].1, Sample::new(2.0, 5002));
    }

    #[test]
    fn ensure_creates_at_zero_once() {
        let store = Store::new();
        let l = labels(&["p", "sc", "false"]);
        let (p, _) = store.apply([Update::new(&PROVISION_TOTAL, l.clone(), Op::Ensure, 1)]);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1.value, 0.0);
        store.apply([Update::new(&PROVISION_TOTAL, l.clone(), Op::Inc(1.0), 2)]);
        let (p, _) = store.apply([Update::new(&PROVISION_TOTAL, l, Op::Ensure, 3)]);
        assert!(p.is_empty(), "an existing series is not reset");
        assert_eq!(
            store.get(&PROVISION_TOTAL, &["p", "sc", "false"]),
            Some(Value::Scalar(1.0))
        );
    }

    #[test]
    fn histograms_push_buckets_sum_and_count() {
        let store = Store::new();
        let l = labels(&["p", "sc"]);
        store.apply([Update::new(&VOLUME_DELETE, l.clone(), Op::Observe(0.7), 1)]);
        let (p, _) = store.apply([Update::new(&VOLUME_DELETE, l, Op::Observe(1000.0), 2)]);
        assert_eq!(p.len(), SECONDS.len() + 3);
        let find = |name: &str, le: Option<&str>| {
            p.iter()
                .find(|(s, _)| s.name() == name && s.get("le") == le)
                .map(|(_, v)| v.value)
        };
        assert_eq!(
            find("pie_probe_volume_delete_seconds_bucket", Some("0.5")),
            Some(0.0)
        );
        assert_eq!(
            find("pie_probe_volume_delete_seconds_bucket", Some("1")),
            Some(1.0)
        );
        assert_eq!(
            find("pie_probe_volume_delete_seconds_bucket", Some("600")),
            Some(1.0)
        );
        assert_eq!(
            find("pie_probe_volume_delete_seconds_bucket", Some("+Inf")),
            Some(2.0)
        );
        assert_eq!(
            find("pie_probe_volume_delete_seconds_count", None),
            Some(2.0)
        );
        assert_eq!(
            find("pie_probe_volume_delete_seconds_sum", None),
            Some(1000.7)
        );
    }

    #[test]
    fn invalid_updates_are_rejected_and_change_nothing() {
        let store = Store::new();
        let (_, errors) = store.apply([
            Update::new(&MOUNT_TOTAL, labels(&["p"]), Op::Inc(1.0), 1),
            Update::new(&VOLUME_DELETE, labels(&["p", "sc"]), Op::Inc(1.0), 1),
            Update::new(
                &WRITE_LATENCY,
                labels(&["p", "n", "sc"]),
                Op::Observe(1.0),
                1,
            ),
            Update::new(&RW_SAMPLES_TOTAL, vec!["x".repeat(5000)], Op::Set(1.0), 1),
        ]);
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(store.is_empty());
    }

    #[test]
    fn retain_removes_series_and_returns_stale_markers() {
        let store = Store::new();
        store.apply([
            Update::new(&WRITE_LATENCY, labels(&["p", "n1", "sc"]), Op::Set(1.0), 10),
            Update::new(&WRITE_LATENCY, labels(&["p", "n2", "sc"]), Op::Set(1.0), 10),
            Update::new(&VOLUME_DELETE, labels(&["p", "sc"]), Op::Observe(1.0), 10),
        ]);
        let stale = store.retain(5, |_, labels| !labels.contains(&("node", "n2")));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].1, 11);
        assert_eq!(store.len(), 2);
        let stale = store.retain(100, |f, _| f.kind != Kind::Histogram);
        assert_eq!(stale.len(), SECONDS.len() + 3);
    }

    #[tokio::test]
    async fn remote_write_stats_become_absolute_values() {
        let store = Store::new();
        let client = remote_write::Client::new(remote_write::ClientConfig {
            endpoints: vec![remote_write::EndpointConfig::new("http://vm/api/v1/write")],
            ..remote_write::ClientConfig::default()
        })
        .unwrap();
        let stats = EndpointStatsSnapshot {
            samples_sent: 7,
            dropped: remote_write::DropReason::ALL
                .iter()
                .map(|r| (*r, 1))
                .collect(),
            samples_retried: 2,
            requests: [(204, 3), (0, 1)].into(),
            bytes_sent_compressed: 10,
            bytes_sent_raw: 20,
            pending_samples: 4,
            last_success_timestamp_seconds: Some(12.5),
            send_duration: DurationHistogram {
                buckets: remote_write::SEND_DURATION_BUCKETS
                    .iter()
                    .map(|b| (*b, u64::from(*b >= 0.1)))
                    .collect(),
                count: 2,
                sum_seconds: 40.1,
            },
            ..client.stats().remove(0)
        };
        let (_, errors) = store.apply(remote_write_updates(std::slice::from_ref(&stats), 1));
        assert!(errors.is_empty(), "{errors:?}");
        store.apply(remote_write_updates(&[stats], 2));
        let url = "http://vm/api/v1/write";
        assert_eq!(
            store.get(&RW_SAMPLES_TOTAL, &[url]),
            Some(Value::Scalar(7.0))
        );
        assert_eq!(
            store.get(&RW_REQUESTS_TOTAL, &[url, "204"]),
            Some(Value::Scalar(3.0))
        );
        let Some(Value::Histogram { counts, sum }) = store.get(&RW_SEND_DURATION, &[url]) else {
            panic!("no histogram")
        };
        assert_eq!(counts.iter().sum::<u64>(), 2);
        assert_eq!(counts[4], 1, "0.1 bucket");
        assert_eq!(counts[counts.len() - 1], 1, "+Inf bucket");
        assert_eq!(sum, 40.1);
    }

    #[tokio::test]
    async fn buffer_stats_become_absolute_values_and_cap_drops_a_reason() {
        let client = remote_write::Client::new(remote_write::ClientConfig {
            endpoints: vec![remote_write::EndpointConfig::new("http://vm/api/v1/write")],
            ..remote_write::ClientConfig::default()
        })
        .unwrap();
        let stats = EndpointStatsSnapshot {
            buffer: remote_write::BufferStats {
                bytes: 4096,
                records: 3,
                samples: 30,
                records_written: 10,
                records_replayed: 7,
                records_dropped: 2,
                samples_dropped: 20,
                records_corrupted: 1,
                files_ignored: 4,
                write_errors: 5,
            },
            ..client.stats().remove(0)
        };
        let store = Store::new();
        let mut updates = remote_write_updates(std::slice::from_ref(&stats), 1);
        updates.extend(buffer_updates(std::slice::from_ref(&stats), 1));
        let (_, errors) = store.apply(updates);
        assert!(errors.is_empty(), "{errors:?}");
        let url = "http://vm/api/v1/write";
        let get = |f: &'static Family, l: &[&str]| match store.get(f, l) {
            Some(Value::Scalar(v)) => v,
            other => panic!("{}: {other:?}", f.name),
        };
        assert_eq!(get(&RW_BUFFER_BYTES, &[url]), 4096.0);
        assert_eq!(get(&RW_BUFFER_RECORDS, &[url]), 3.0);
        assert_eq!(get(&RW_BUFFER_SAMPLES, &[url]), 30.0);
        assert_eq!(get(&RW_BUFFER_WRITTEN_TOTAL, &[url]), 10.0);
        assert_eq!(get(&RW_BUFFER_REPLAYED_TOTAL, &[url]), 7.0);
        assert_eq!(get(&RW_BUFFER_DROPPED_TOTAL, &[url]), 2.0);
        assert_eq!(get(&RW_BUFFER_CORRUPTED_TOTAL, &[url]), 1.0);
        assert_eq!(get(&RW_BUFFER_FILES_IGNORED_TOTAL, &[url]), 4.0);
        assert_eq!(get(&RW_BUFFER_WRITE_ERRORS_TOTAL, &[url]), 5.0);
        assert_eq!(get(&RW_DROPPED_TOTAL, &[url, BUFFER_FULL]), 20.0);
        assert_eq!(get(&RW_DROPPED_TOTAL, &[url, "queue_full"]), 0.0);
        // A later snapshot replaces the values (gauges go down, counters are mirrored).
        let later = EndpointStatsSnapshot {
            buffer: remote_write::BufferStats {
                bytes: 0,
                records: 0,
                samples: 0,
                records_replayed: 10,
                ..stats.buffer
            },
            ..stats
        };
        store.apply(buffer_updates(&[later], 2));
        assert_eq!(get(&RW_BUFFER_BYTES, &[url]), 0.0);
        assert_eq!(get(&RW_BUFFER_REPLAYED_TOTAL, &[url]), 10.0);
    }
}
