//! Sustained samples/s into a real VictoriaMetrics on loopback, with the CPU seconds the sender
//! process and VictoriaMetrics used for the same samples.
//!
//! `cargo bench -p pie-e2e --bench vm_throughput [-- [SAMPLES] [current] [vmauth]]` (default
//! 4,000,000 samples over 10,000 series with pie-like labels, default batching, pushed as the
//! controller pushes its store: a snapshot of all 10,000 series at a time with
//! `Client::push_many`). Against Debian's VictoriaMetrics 1.79 unless `current` names the
//! current release (e2e/victoriametrics); `vmauth` pushes through a vmauth of the same release
//! in front of it, whose CPU counts as the receiver's.

use std::time::{Duration, Instant};

use e2e::{VictoriaMetrics, VmRelease, Vmauth};
use remote_write::{Client, ClientConfig, EndpointConfig, Sample, Series};

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    e2e::cpu_seconds(pid).expect("read /proc/<pid>/stat")
}

async fn rows_inserted(vm: &VictoriaMetrics) -> u64 {
    let text = e2e::scrape(&format!("{}/metrics", vm.base_url())).await;
    e2e::scrape_value(
        &text,
        "vm_rows_inserted_total",
        &[("type", "promremotewrite")],
    )
    .unwrap_or(0.0) as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let samples: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    let release = if args.iter().any(|a| a == "current") {
        VmRelease::Current
    } else {
        VmRelease::Debian
    };
    const SERIES: usize = 10_000;
    let vm = VictoriaMetrics::start_release(release, &[]).await;
    let vmauth = if args.iter().any(|a| a == "vmauth") {
        let config = format!(
            "users:\n- bearer_token: \"bench\"\n  url_prefix: \"{}\"\n",
            vm.origin()
        );
        Some(Vmauth::start_release(release, &config, &[]).await)
    } else {
        None
    };
    let own_pid = std::process::id();
    // The receiver: VictoriaMetrics, plus vmauth when it is in front.
    let receiver_pids: Vec<u32> = std::iter::once(vm.pid())
        .chain(vmauth.as_ref().map(Vmauth::pid))
        .collect();
    let receiver_cpu = || {
        receiver_pids
            .iter()
            .map(|pid| cpu_seconds(*pid))
            .sum::<f64>()
    };
    println!(
        "receiver           VictoriaMetrics {} ({release:?}){}",
        release.version(),
        if vmauth.is_some() {
            " behind vmauth"
        } else {
            ""
        }
    );
    let series: Vec<Series> = (0..SERIES)
        .map(|i| {
            Series::new(
                "pie_bench_samples",
                [
                    ("node", format!("worker-{:04}", i % 2000)),
                    ("pie_probe_name", format!("probe-{}", i / 2000)),
                    ("storage_class", "topolvm-provisioner".to_string()),
                    ("on_time", "true".to_string()),
                ],
            )
            .unwrap()
        })
        .collect();
    let mut endpoint = match &vmauth {
        Some(vmauth) => EndpointConfig::new(format!("{}/api/v1/write", vmauth.base_url())),
        None => EndpointConfig::new(vm.write_url()),
    };
    let token_dir = tempfile::tempdir().unwrap();
    if vmauth.is_some() {
        let token = token_dir.path().join("token");
        std::fs::write(&token, "bench\n").unwrap();
        endpoint.auth = remote_write::Auth::BearerTokenFile(token);
    }
    let client = Client::new(ClientConfig {
        endpoints: vec![endpoint],
        queue_capacity: 100_000,
        ..ClientConfig::default()
    })
    .unwrap();

    let (cpu_self0, cpu_vm0) = (cpu_seconds(own_pid), receiver_cpu());
    let started = Instant::now();
    let base = 1_700_000_000_000i64;
    // As the controller pushes its metric store: a snapshot of every series at once, with
    // `push_many`, one snapshot per second of sample time.
    let mut snapshot: Vec<(Series, Sample)> = Vec::with_capacity(SERIES);
    let mut pushed = 0;
    while pushed < samples {
        let round = (pushed / SERIES) as i64;
        let n = SERIES.min(samples - pushed);
        snapshot.clear();
        snapshot.extend(series[..n].iter().enumerate().map(|(j, s)| {
            (
                s.clone(),
                Sample::new((pushed + j) as f64, base + round * 1000),
            )
        }));
        // Keep below the queue bound so nothing is dropped: this measures delivery.
        while client.stats()[0].pending_samples > 50_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        client.push_many(&snapshot);
        pushed += n;
    }
    client.flush().await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_self, cpu_vm) = (cpu_seconds(own_pid) - cpu_self0, receiver_cpu() - cpu_vm0);
    let stats = client.stats()[0].clone();
    assert!(client.shutdown(Duration::from_secs(10)).await.is_complete());
    vm.force_flush().await;
    let inserted = rows_inserted(&vm).await;
    assert_eq!(
        stats.samples_sent as usize, samples,
        "every sample delivered"
    );
    assert_eq!(
        inserted as usize, samples,
        "VictoriaMetrics counted every row"
    );
    println!("samples            {samples}");
    println!("wall seconds       {elapsed:.2}");
    println!("samples/s          {:.0}", samples as f64 / elapsed);
    println!(
        "requests           {}",
        stats.requests.values().sum::<u64>()
    );
    println!(
        "bytes/sample       {:.1} compressed, {:.1} raw",
        stats.bytes_sent_compressed as f64 / samples as f64,
        stats.bytes_sent_raw as f64 / samples as f64
    );
    println!("sender CPU s       {cpu_self:.2}");
    println!("receiver CPU s     {cpu_vm:.2}");
    println!("sender / receiver  {:.1}%", 100.0 * cpu_self / cpu_vm);
}
