//! Pushes a few pie-like series to a remote-write endpoint, prints what it sent and what the
//! client's self-metrics say, and shuts down cleanly.
//!
//! ```text
//! cargo run -p pie-remote-write --example push -- --url http://127.0.0.1:8428/api/v1/write
//! ```

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use remote_write::{Client, ClientConfig, EndpointConfig, Sample, Series};

/// Push a few example series with the remote-write client.
#[derive(Debug, Parser)]
struct Args {
    /// Remote-write URL (repeatable: every URL gets every sample).
    #[arg(long = "url", env = "PIE_REMOTE_WRITE_URL", required = true)]
    urls: Vec<String>,
    /// External label `name=value` added to every series (repeatable).
    #[arg(
        long = "external-label",
        env = "PIE_EXTERNAL_LABEL",
        value_delimiter = ','
    )]
    external_labels: Vec<String>,
    /// Samples per series, one second apart, ending now.
    #[arg(long, default_value_t = 3)]
    samples: i64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let external_labels = args
        .external_labels
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--external-label {kv:?} is not name=value"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = Client::new(ClientConfig {
        endpoints: args.urls.iter().map(EndpointConfig::new).collect(),
        external_labels,
        ..ClientConfig::default()
    })?;

    let now = remote_write::now_ms();
    let series = [
        Series::new(
            "pie_io_write_latency_on_mount_probe_seconds",
            [
                ("pie_probe_name", "demo"),
                ("node", "worker-1"),
                ("storage_class", "standard"),
            ],
        )?,
        Series::new(
            "pie_mount_probe_total",
            [
                ("pie_probe_name", "demo"),
                ("node", "worker-1"),
                ("storage_class", "standard"),
                ("on_time", "true"),
            ],
        )?,
    ];
    for (i, s) in series.iter().enumerate() {
        for k in 0..args.samples {
            let ts = now - (args.samples - 1 - k) * 1000;
            let value = if i == 0 {
                0.0004 + k as f64 * 0.0001
            } else {
                (k + 1) as f64
            };
            client.push(s, Sample::new(value, ts));
            println!("pushed {s} {value} @{ts}");
        }
    }
    let report = client.shutdown(Duration::from_secs(10)).await;
    for stats in client.stats() {
        println!(
            "endpoint {}: sent {} samples in {} requests ({} bytes compressed), pending {}",
            stats.url,
            stats.samples_sent,
            stats.requests.values().sum::<u64>(),
            stats.bytes_sent_compressed,
            stats.pending_samples
        );
    }
    anyhow::ensure!(
        report.is_complete(),
        "{} samples were not delivered",
        report.undelivered()
    );
    Ok(())
}
