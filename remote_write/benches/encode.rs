//! Encode + compress throughput of 1M samples over 10k series with pie-like label sets
//! (`__name__` plus 4 labels, plus the external label `cluster`), in requests of 2000 samples
//! (the default batch), next to snappy alone compressing the same protobuf bytes.
//!
//! `cargo bench -p pie-remote-write --bench encode`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use remote_write::{
    ExternalLabels, PreparedSample, RequestEncoder, Sample, Series, encode_write_request,
};

const SAMPLES: usize = 1_000_000;
const SERIES: usize = 10_000;
const BATCH: usize = 2000;

const METRICS: [&str; 5] = [
    "pie_io_write_latency_on_mount_probe_seconds",
    "pie_io_read_latency_on_mount_probe_seconds",
    "pie_mount_probe_total",
    "pie_performance_on_mount_probe_total",
    "pie_provision_probe_total",
];

fn series() -> Vec<Series> {
    (0..SERIES)
        .map(|i| {
            Series::new(
                METRICS[i % METRICS.len()],
                [
                    (
                        "node",
                        format!("worker-{:04}.cluster.example", i / 5 % 2000),
                    ),
                    ("pie_probe_name", format!("probe-{}", i / 10_000)),
                    ("storage_class", "topolvm-provisioner".to_string()),
                    (
                        "on_time",
                        if i % 2 == 0 { "true" } else { "false" }.to_string(),
                    ),
                ],
            )
            .unwrap()
        })
        .collect()
}

/// Samples as the client's queue holds them (prepared with the external labels when pushed),
/// round-robin over the series as a full re-push of the controller's store produces them.
fn batches(series: &[Series], external: &ExternalLabels) -> Vec<Vec<PreparedSample>> {
    let base = 1_700_000_000_000i64;
    let all: Vec<PreparedSample> = (0..SAMPLES)
        .map(|i| {
            let round = (i / SERIES) as i64;
            let sample = Sample::new((i % 997) as f64 * 0.001, base + round * 30_000);
            PreparedSample::new(&series[i % SERIES], external, sample)
        })
        .collect();
    all.chunks(BATCH).map(<[PreparedSample]>::to_vec).collect()
}

fn bench(c: &mut Criterion) {
    let series = series();
    let external = ExternalLabels::new([("cluster", "prod-a")]).unwrap();
    let batches = batches(&series, &external);

    // The raw protobuf of every request, for snappy alone.
    let raw: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            encode_write_request(b, &mut out);
            out
        })
        .collect();
    let raw_bytes: usize = raw.iter().map(Vec::len).sum();
    let mut encoder = RequestEncoder::new();
    let compressed_bytes: usize = batches.iter().map(|b| encoder.encode(b).body.len()).sum();
    eprintln!(
        "{SAMPLES} samples, {SERIES} series: {:.1} protobuf bytes/sample, {:.1} compressed bytes/sample, {} requests",
        raw_bytes as f64 / SAMPLES as f64,
        compressed_bytes as f64 / SAMPLES as f64,
        batches.len()
    );

    let mut group = c.benchmark_group("remote_write_1M_samples");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.bench_function("encode_and_compress", |b| {
        let mut encoder = RequestEncoder::new();
        b.iter(|| {
            let mut total = 0;
            for batch in &batches {
                total += encoder.encode(black_box(batch)).body.len();
            }
            black_box(total)
        })
    });
    group.bench_function("snappy_alone", |b| {
        let mut snappy = snap::raw::Encoder::new();
        let longest = raw.iter().map(Vec::len).max().unwrap_or(0);
        let mut out = vec![0; snap::raw::max_compress_len(longest)];
        b.iter(|| {
            let mut total = 0;
            for r in &raw {
                total += snappy.compress(black_box(r), &mut out).unwrap();
            }
            black_box(total)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
