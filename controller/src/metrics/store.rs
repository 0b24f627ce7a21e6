//! The metric store: the one source of truth for every series pie-controller exports.
//!
//! The families are those of [`catalogue`](super::catalogue); the receiver and the outcome
//! tracker change the store with [`Update`]s and get back the [`Point`]s to push at once; the
//! periodic push re-sends [`Store::snapshot`]; `/metrics` encodes [`Store::families`].
//! Timestamps of one series only ever increase; the pusher queues them in the order they were
//! stamped (see `Pusher`), so remote write never drops a sample as out of order.
//!
//! Two things keep `increase()` right across restarts and leader changes, when another process
//! pushed the same series before (pushed counters restart at 0):
//! - a counter or histogram series born of an increment first pushes its 0, just before the
//!   increment, so the reset shows (a new process whose first value equals the old process's last
//!   one would otherwise look like no change at all);
//! - no timestamp is older than the store's floor ([`Store::set_floor`]: when this process
//!   started, or its term of leadership did), so its samples never interleave with the previous
//!   writer's, even when an outcome is stamped with the (earlier) moment it was decidable.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use remote_write::{Sample, Series};

use super::catalogue::{FAMILIES, Family, Kind, Op, Update};

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

/// A series' label values, in the order of its family's labels. The strings are shared
/// through [`Inner::strings`]: the same node, PieProbe and StorageClass names recur in every
/// family (five series per mount probe at least), so a key costs one small allocation.
type Key = Box<[Arc<str>]>;

type Entries = BTreeMap<Key, Entry>;

#[derive(Debug)]
struct Inner {
    families: Vec<(&'static Family, Entries)>,
    /// Every label value some key holds, once.
    strings: HashSet<Arc<str>>,
}

/// The key of `labels`, its strings shared through `strings` with the other keys.
fn key(strings: &mut HashSet<Arc<str>>, labels: &[String]) -> Key {
    labels
        .iter()
        .map(|l| match strings.get(l.as_str()) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = l.as_str().into();
                strings.insert(shared.clone());
                shared
            }
        })
        .collect()
}

/// Forgets the strings of `strings` no key holds any more.
fn forget_unused(strings: &mut HashSet<Arc<str>>) {
    strings.retain(|s| Arc::strong_count(s) > 1);
}

/// The metric store. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    floor_ms: std::sync::atomic::AtomicI64,
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
            inner: Mutex::new(Inner {
                families: FAMILIES.iter().map(|f| (*f, Entries::new())).collect(),
                strings: HashSet::new(),
            }),
            floor_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// No sample pushed from now on is older than `floor_ms` (set it to when this process, or
    /// its term as leader, began writing).
    pub fn set_floor(&self, floor_ms: i64) {
        self.floor_ms
            .fetch_max(floor_ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn floor(&self) -> i64 {
        self.floor_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `updates` in order and returns the samples to push now (only for series that
    /// changed or were created). An invalid update is skipped and reported; the others apply.
    pub fn apply(
        &self,
        updates: impl IntoIterator<Item = Update>,
    ) -> (Vec<Point>, Vec<StoreError>) {
        let mut points = Vec::new();
        let mut errors = Vec::new();
        let floor = self.floor();
        let mut inner = self.lock();
        for update in updates {
            if let Err(e) = apply_one(&mut inner, update, floor, &mut points) {
                errors.push(e);
            }
        }
        (points, errors)
    }

    /// Every series at `now_ms` (or just after its last timestamp), for the periodic re-send.
    pub fn snapshot(&self, now_ms: i64) -> Vec<Point> {
        let mut points = Vec::new();
        let now_ms = now_ms.max(self.floor());
        for (_, entries) in self.lock().families.iter_mut() {
            for entry in entries.values_mut() {
                entry.points(now_ms, &mut points);
            }
        }
        points
    }

    /// A copy of every family for exposition.
    pub fn families(&self) -> Vec<FamilySnapshot> {
        self.lock()
            .families
            .iter()
            .map(|(family, entries)| FamilySnapshot {
                family,
                series: entries
                    .iter()
                    .map(|(labels, e)| {
                        let labels = labels.iter().map(|l| l.to_string()).collect();
                        (labels, e.value.clone())
                    })
                    .collect(),
            })
            .collect()
    }

    /// The value of `family{labels}`, if the series exists.
    pub fn get(&self, family: &'static Family, labels: &[&str]) -> Option<Value> {
        let inner = self.lock();
        let (_, entries) = inner
            .families
            .iter()
            .find(|(f, _)| std::ptr::eq(*f, family))?;
        let key: Key = labels.iter().map(|s| Arc::from(*s)).collect();
        entries.get(&key).map(|e| e.value.clone())
    }

    /// The number of series (histograms count once).
    pub fn len(&self) -> usize {
        self.lock().families.iter().map(|(_, e)| e.len()).sum()
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
        let mut inner = self.lock();
        for (family, entries) in inner.families.iter_mut() {
            entries.retain(|labels, entry| {
                let pairs: Vec<(&str, &str)> = family
                    .labels
                    .iter()
                    .copied()
                    .zip(labels.iter().map(|l| &**l))
                    .collect();
                if keep(family, &pairs) {
                    return true;
                }
                let ts = now_ms.max(entry.last_ms.saturating_add(1));
                stale.extend(entry.series.iter().map(|s| (s.clone(), ts)));
                false
            });
        }
        if !stale.is_empty() {
            forget_unused(&mut inner.strings);
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
    inner: &mut Inner,
    update: Update,
    floor_ms: i64,
    points: &mut Vec<Point>,
) -> Result<(), StoreError> {
    check(&update)?;
    let family = update.family;
    let Inner { families, strings } = inner;
    let Some((_, entries)) = families.iter_mut().find(|(f, _)| std::ptr::eq(*f, family)) else {
        return Err(StoreError::WrongOp {
            family: family.name,
            op: "unregistered family",
            kind: family.kind,
        });
    };
    let key = key(strings, &update.labels);
    let created = !entries.contains_key(&key);
    if created {
        match Entry::new(family, &update.labels) {
            Ok(entry) => {
                entries.insert(key.clone(), entry);
            }
            Err(e) => {
                drop(key);
                forget_unused(strings);
                return Err(e);
            }
        }
    }
    let Some(entry) = entries.get_mut(&key) else {
        return Ok(());
    };
    let timestamp_ms = update.timestamp_ms.max(floor_ms.saturating_add(1));
    if created && !matches!(update.op, Op::Ensure | Op::Set(_)) {
        // A counter or histogram born of an increment: its 0 first (see the module docs).
        entry.points(timestamp_ms - 1, points);
    }
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
    entry.points(timestamp_ms, points);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalogue::*;

    #[test]
    fn label_values_are_kept_once_and_forgotten_with_their_last_series() {
        let store = Store::new();
        let (_, errors) = store.apply([
            Update::new(&NODE_ELIGIBLE, ["p", "n1", "sc"], Op::Set(1.0), 1000),
            Update::new(&MOUNT_TOTAL, ["p", "n1", "sc", "true"], Op::Ensure, 1000),
            Update::new(&MOUNT_TOTAL, ["p", "n2", "sc", "true"], Op::Ensure, 1000),
        ]);
        assert!(errors.is_empty());
        let strings = |store: &Store| {
            let mut v: Vec<String> = store.lock().strings.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(strings(&store), ["n1", "n2", "p", "sc", "true"]);
        // An invalid update keeps none of its strings.
        let (_, errors) = store.apply([Update::new(
            &MOUNT_TOTAL,
            ["p", "n3", "sc", "x".repeat(5000).as_str()],
            Op::Ensure,
            1000,
        )]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(strings(&store), ["n1", "n2", "p", "sc", "true"]);
        store.retain(2000, |_, labels| !labels.contains(&("node", "n2")));
        assert_eq!(strings(&store), ["n1", "p", "sc", "true"]);
        assert_eq!(
            store.get(&MOUNT_TOTAL, &["p", "n1", "sc", "true"]),
            Some(Value::Scalar(0.0))
        );
        store.retain(3000, |_, _| false);
        assert!(strings(&store).is_empty());
    }

    fn labels(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
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
        // Born of an increment: its 0 first, then 1, then 2.
        let samples: Vec<Sample> = points.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            samples,
            [
                Sample::new(0.0, 999),
                Sample::new(1.0, 1000),
                Sample::new(2.0, 2000)
            ]
        );
        assert_eq!(
            points[2].0.to_string(),
            r#"pie_mount_probe_total{node="n1",on_time="true",pie_probe_name="p",storage_class="sc"}"#
        );
    }

    /// A restarted controller (or a new leader) continues series another process pushed: its
    /// counters restart at 0. Its first increment must still count in `increase()`, which
    /// needs the drop to 0 to show, and none of its samples may be older than its start, or
    /// they would interleave with the old process's. The real API server showed both: late
    /// probes decided right after a restart were stamped with the earlier moment they became
    /// decidable, and went missing from VictoriaMetrics' counters.
    #[test]
    fn a_new_counter_shows_its_reset_and_never_goes_back_before_the_floor() {
        let store = Store::new();
        store.set_floor(10_000);
        let l = labels(&["p", "n1", "sc", "false"]);
        // Decidable at 8 s (before this process started at 10 s), decided now.
        let (points, _) = store.apply([Update::new(&MOUNT_TOTAL, l.clone(), Op::Inc(1.0), 8_000)]);
        let samples: Vec<Sample> = points.iter().map(|(_, s)| *s).collect();
        assert_eq!(
            samples,
            [Sample::new(0.0, 10_000), Sample::new(1.0, 10_001)]
        );
        // Histograms alike.
        let (points, _) = store.apply([Update::new(
            &START_DURATION,
            labels(&["p", "n1", "sc", "mount"]),
            Op::Observe(2.0),
            9_000,
        )]);
        let count: Vec<Sample> = points
            .iter()
            .filter(|(s, _)| {
                s.to_string()
                    .starts_with("pie_probe_start_duration_seconds_count")
            })
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(count, [Sample::new(0.0, 10_000), Sample::new(1.0, 10_001)]);
        // Gauges have no reset to show; Ensure pushes its 0 once.
        let (points, _) = store.apply([Update::new(
            &WRITE_LATENCY,
            labels(&["p", "n1", "sc"]),
            Op::Set(0.5),
            12_000,
        )]);
        assert_eq!(points.len(), 1);
        assert!(
            store
                .snapshot(5_000)
                .iter()
                .all(|(_, s)| s.timestamp_ms >= 10_000)
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
}
