//! The store in the Prometheus text format 0.0.4 (encoded by the `prometheus` crate), served
//! at `/metrics`. Families without series are left out.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::metrics::catalogue::Kind;
use crate::metrics::store::{FamilySnapshot, Store, Value};

pub use prometheus::TEXT_FORMAT;

fn family(snapshot: &FamilySnapshot) -> MetricFamily {
    let f = snapshot.family;
    let mut out = MetricFamily::default();
    out.set_name(f.name.to_owned());
    out.set_help(f.help.to_owned());
    out.set_field_type(match f.kind {
        Kind::Counter => MetricType::COUNTER,
        Kind::Gauge => MetricType::GAUGE,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    let metrics = snapshot
        .series
        .iter()
        .map(|(values, value)| {
            let labels = f
                .labels
                .iter()
                .zip(values)
                .filter(|(_, v)| !v.is_empty())
                .map(|(name, v)| {
                    let mut l = LabelPair::default();
                    l.set_name((*name).to_owned());
                    l.set_value(v.clone());
                    l
                })
                .collect();
            let mut m = Metric::from_label(labels);
            match (f.kind, value) {
                (Kind::Counter, Value::Scalar(v)) => {
                    let mut c = Counter::default();
                    c.set_value(*v);
                    m.set_counter(c);
                }
                (Kind::Gauge, Value::Scalar(v)) => {
                    let mut g = Gauge::default();
                    g.set_value(*v);
                    m.set_gauge(g);
                }
                (Kind::Histogram, Value::Histogram { counts, sum }) => {
                    let mut h = Histogram::default();
                    let mut cumulative = 0;
                    let buckets = f
                        .buckets
                        .iter()
                        .zip(counts)
                        .map(|(le, n)| {
                            cumulative += n;
                            let mut b = Bucket::default();
                            b.set_upper_bound(*le);
                            b.set_cumulative_count(cumulative);
                            b
                        })
                        .collect();
                    h.set_bucket(buckets);
                    h.set_sample_count(counts.iter().sum());
                    h.set_sample_sum(*sum);
                    m.set_histogram(h);
                }
                _ => {}
            }
            m
        })
        .collect();
    out.set_metric(metrics);
    out
}

/// The store as Prometheus text (call `refresh` first to fold in live self-metrics).
pub fn encode(store: &Store) -> String {
    let families: Vec<MetricFamily> = store
        .families()
        .iter()
        .filter(|f| !f.series.is_empty())
        .map(family)
        .collect();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
}

/// Called before each scrape, e.g. to copy the remote-write client's self-metrics in.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    refresh: Refresh,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state((store, refresh));
    axum::serve(listener, app).await
}

async fn metrics(State((store, refresh)): State<(Arc<Store>, Refresh)>) -> impl IntoResponse {
    refresh();
    ([(CONTENT_TYPE, TEXT_FORMAT)], encode(&store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalogue;
    use crate::metrics::catalogue::{Op, Update};

    fn filled() -> Store {
        let s = Store::new();
        let l = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (_, errors) = s.apply([
            Update::new(
                &catalogue::MOUNT_TOTAL,
                l(&["p", "n1", "sc", "true"]),
                Op::Inc(3.0),
                1,
            ),
            Update::new(
                &catalogue::MOUNT_TOTAL,
                l(&["p", "n1", "sc", "false"]),
                Op::Ensure,
                1,
            ),
            Update::new(
                &catalogue::WRITE_LATENCY,
                l(&["p", "n1", "sc"]),
                Op::Set(0.25),
                1,
            ),
            Update::new(
                &catalogue::START_DURATION,
                l(&["p", "", "sc", "provision"]),
                Op::Observe(3.0),
                1,
            ),
            Update::new(&catalogue::LEADER, l(&[]), Op::Set(1.0), 1),
            Update::new(
                &catalogue::RECEIVER_REQUESTS_TOTAL,
                l(&["400"]),
                Op::Inc(1.0),
                1,
            ),
        ]);
        assert!(errors.is_empty(), "{errors:?}");
        s
    }

    #[test]
    fn text_has_pies_names_and_types() {
        let text = encode(&filled());
        for line in [
            "# TYPE pie_mount_probe_total counter",
            r#"pie_mount_probe_total{pie_probe_name="p",node="n1",storage_class="sc",on_time="true"} 3"#,
            r#"pie_mount_probe_total{pie_probe_name="p",node="n1",storage_class="sc",on_time="false"} 0"#,
            "# TYPE pie_io_write_latency_on_mount_probe_seconds gauge",
            r#"pie_io_write_latency_on_mount_probe_seconds{pie_probe_name="p",node="n1",storage_class="sc"} 0.25"#,
            r#"pie_probe_start_duration_seconds_bucket{pie_probe_name="p",storage_class="sc",probe="provision",le="5"} 1"#,
            r#"pie_probe_start_duration_seconds_bucket{pie_probe_name="p",storage_class="sc",probe="provision",le="+Inf"} 1"#,
            "pie_controller_leader 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn promtool_accepts_the_output() {
        let Ok(status) = std::process::Command::new("promtool")
            .arg("--version")
            .output()
        else {
            panic!("promtool is required (Debian package `prometheus`)");
        };
        assert!(status.status.success());
        let text = encode(&filled());
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
