//! The remote-write client's self-metrics (and its disk buffer's) as store updates: the client
//! keeps absolute counts, so these are `Set`s of the current values, refreshed before every
//! push and every `/metrics` scrape.

use remote_write::EndpointStatsSnapshot;

use super::catalogue::*;
use super::catalogue::{Op, Update};

/// The remote-write client's self-metrics as updates (absolute values).
pub fn remote_write_updates(stats: &[EndpointStatsSnapshot], now_ms: i64) -> Vec<Update> {
    let mut out = Vec::new();
    for s in stats {
        let url = s.url.as_str();
        let set = |family, labels: &[&str], value: f64| {
            Update::new(family, labels.iter().copied(), Op::Set(value), now_ms)
        };
        out.push(set(&RW_SAMPLES_TOTAL, &[url], s.samples_sent as f64));
        out.extend(
            s.dropped
                .iter()
                .map(|(reason, n)| set(&RW_DROPPED_TOTAL, &[url, reason.as_str()], *n as f64)),
        );
        out.push(set(&RW_RETRIED_TOTAL, &[url], s.samples_retried as f64));
        out.extend(
            s.requests
                .iter()
                .map(|(code, n)| set(&RW_REQUESTS_TOTAL, &[url, &code.to_string()], *n as f64)),
        );
        for (encoding, n) in [
            ("snappy", s.bytes_sent_compressed),
            ("raw", s.bytes_sent_raw),
        ] {
            out.push(set(&RW_SENT_BYTES_TOTAL, &[url, encoding], n as f64));
        }
        out.push(set(&RW_PENDING, &[url], s.pending_samples as f64));
        if let Some(t) = s.last_success_timestamp_seconds {
            out.push(set(&RW_LAST_SUCCESS, &[url], t));
        }
        out.push(Update::new(
            &RW_SEND_DURATION,
            [url],
            Op::SetHistogram(s.send_duration.clone()),
            now_ms,
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
    use crate::metrics::store::{Store, Value};
    use remote_write::DurationHistogram;

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
