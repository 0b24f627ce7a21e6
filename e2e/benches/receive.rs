//! The receiver end to end, in one process against a real VictoriaMetrics:
//! - result-to-VictoriaMetrics latency: POST sent -> every sample it produced acknowledged by
//!   VictoriaMetrics (remote-write 2xx), p50/p99 over 1,000 results, default push settings;
//! - receiver throughput from a loopback load generator: results/s and CPU per result
//!   (process CPU: receiver, store, remote write and the load generator together).
//!
//! `cargo bench -p pie-e2e --bench receive`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::VictoriaMetrics;
use pie_controller::http::auth::NoAuth;
use pie_controller::http::results::{self, AnyTarget, Receiver};
use pie_controller::metrics::push::{PushArgs, Pusher};
use pie_controller::metrics::store::Store;

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    push: PushArgs,
}

fn body(i: usize, node: usize) -> String {
    format!(
        r#"{{"pie_probe_name":"bench","node":"node-{node}","storage_class":"sc","write_latency":0.00{i},"read_latency":0.001,"performance_probe_succeed":true,"read_iops":{i},"write_iops":900,"read_bytes_per_second":4096000,"write_bytes_per_second":3686400,"read_latency_p99":0.004,"write_latency_p99":0.005}}"#
    )
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    e2e::cpu_seconds(std::process::id()).expect("read /proc/self/stat")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn start(push: PushArgs) -> (String, Pusher) {
    let pusher = Pusher::new(&push, Arc::new(Store::new())).expect("push config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v1/results", listener.local_addr().unwrap());
    let receiver = Receiver {
        pusher: pusher.clone(),
        auth: Arc::new(NoAuth),
        targets: Arc::new(AnyTarget),
    };
    tokio::spawn(results::serve(listener, receiver, std::future::pending()));
    (url, pusher)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let vm = VictoriaMetrics::start().await;
    let http = e2e::http_client();

    // Latency with default settings.
    let flags = Flags::parse_from(["bench", "--remote-write-url", &vm.write_url()]);
    let (url, pusher) = start(flags.push).await;
    let client = pusher.client().expect("a remote-write client").clone();
    let mut latencies = Vec::with_capacity(1000);
    for i in 0..1000 {
        let sent = Instant::now();
        let before = client.stats()[0].samples_sent;
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body(i % 10, i % 20))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        loop {
            let s = &client.stats()[0];
            if s.pending_samples == 0 && s.samples_sent > before {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort_unstable();
    println!(
        "result -> VictoriaMetrics ack over {} results: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );

    // Throughput: 16 concurrent loopback clients for 5 s, pushing to VictoriaMetrics.
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let http = http.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body(n % 10, worker * 100 + n % 100))
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success());
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "receiver throughput: {total} results in {elapsed:?}: {:.0} results/s, {:.0} µs CPU per result (whole process)",
        total as f64 / elapsed.as_secs_f64(),
        cpu / total as f64 * 1e6
    );
    pusher.shutdown(Duration::from_secs(10)).await;
}
