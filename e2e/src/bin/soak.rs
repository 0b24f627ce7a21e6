//! `pie-soak` (`task soak`): results at a steady rate through `pie-controller receive` into a
//! VictoriaMetrics that is restarted (cleanly) every few seconds, with the disk buffer on.
//! Samples the controller's RSS and buffer, then checks in VictoriaMetrics that every
//! accepted result arrived exactly once. Exits 1 when anything was lost or duplicated or the
//! RSS grew; prints the figures recorded in docs/reliability.md.
//!
//! Every result k (1, 2, ...) goes to node `soak-<k mod nodes>` with all its values = k, and
//! the controller runs with `--push-interval=1h`, so every sample in VictoriaMetrics belongs to
//! exactly one result: `pie_receiver_requests_total{code="200"}` must hold 1..=accepted once
//! each, and each node's `pie_io_write_latency_on_mount_probe_seconds` exactly its own ks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use e2e::{
    Process, VictoriaMetrics, free_port, http_client, probe_result_json, rss_bytes, scrape_value,
};
use pie_api::units::parse_duration;

/// Soak test of pie-controller receive with the disk buffer and a restarting VictoriaMetrics.
#[derive(Debug, Parser)]
#[command(name = "pie-soak")]
struct Args {
    /// The pie-controller binary (build it with `cargo build --release -p pie-controller`).
    #[arg(long, env = "PIE_SOAK_CONTROLLER")]
    controller: PathBuf,
    /// How long results are posted.
    #[arg(long, env = "PIE_SOAK_DURATION", default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Results per second.
    #[arg(long, env = "PIE_SOAK_RATE", default_value_t = 200)]
    rate: u32,
    /// Restart VictoriaMetrics this often.
    #[arg(long, env = "PIE_SOAK_RESTART_EVERY", default_value = "30s", value_parser = parse_duration)]
    restart_every: Duration,
    /// Distinct nodes the results are spread over.
    #[arg(long, env = "PIE_SOAK_NODES", default_value_t = 50)]
    nodes: u64,
    /// Sample the controller's RSS and buffer this often.
    #[arg(long, env = "PIE_SOAK_SAMPLE_EVERY", default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss: u64,
    buffer_bytes: f64,
    buffer_records: f64,
    pending: f64,
}

#[derive(Debug, Default)]
struct Posted {
    accepted: Vec<u64>,
    refused: Vec<(u64, u16)>,
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(
        args.controller.is_file(),
        "--controller {}: no such file",
        args.controller.display()
    );
    let work = tempfile::tempdir().context("a work directory")?;
    let mut vm = VictoriaMetrics::start().await;
    let url = vm.write_url();
    let (port, metrics_port) = (free_port(), free_port());
    let mut cmd = Command::new(&args.controller);
    cmd.arg("receive")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--remote-write-url", &url])
        .args(["--external-label", "cluster=soak"])
        .args(["--push-interval", "1h"])
        .arg("--remote-write-buffer-dir")
        .arg(work.path().join("buffer"))
        .env("RUST_LOG", "warn");
    let mut controller = Process::spawn("pie-controller", cmd, work.path().join("controller.log"));
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    controller
        .wait_ready(&metrics_url, Duration::from_secs(30))
        .await;
    let pid = controller.pid();
    eprintln!(
        "soak: {} results/s for {:?}, VictoriaMetrics restarted every {:?}",
        args.rate, args.duration, args.restart_every
    );

    let started = Instant::now();
    let client = http_client();
    let posted = Arc::new(Mutex::new(Posted::default()));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));

    let sampler = {
        let (samples, client, metrics_url, url) = (
            samples.clone(),
            client.clone(),
            metrics_url.clone(),
            url.clone(),
        );
        let every = args.sample_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Ok(resp) = client.get(&metrics_url).send().await else {
                    continue;
                };
                let text = resp.text().await.unwrap_or_default();
                let get = |name| scrape_value(&text, name, &[("url", &url)]).unwrap_or(0.0);
                let sample = Sample {
                    at: started.elapsed(),
                    rss: rss_bytes(pid).unwrap_or(0),
                    buffer_bytes: get("pie_remote_write_buffer_bytes"),
                    buffer_records: get("pie_remote_write_buffer_records"),
                    pending: get("pie_remote_write_pending_samples"),
                };
                samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(sample);
            }
        })
    };

    // Posting: one result every 1/rate s, each in its own task (at most 256 in flight).
    let poster = {
        let (posted, client) = (posted.clone(), client.clone());
        let (rate, nodes, duration) = (args.rate, args.nodes, args.duration);
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let total = u64::from(rate) * duration.as_secs();
            let mut tasks = Vec::new();
            for k in 1..=total {
                tick.tick().await;
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let (posted, client) = (posted.clone(), client.clone());
                let body =
                    probe_result_json("soak", &format!("soak-{:03}", k % nodes), "sc", k as f64);
                tasks.push(tokio::spawn(async move {
                    let status = client
                        .post(format!("http://127.0.0.1:{port}/api/v1/results"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .map_or(0, |r| r.status().as_u16());
                    let mut p = posted.lock().unwrap_or_else(|e| e.into_inner());
                    if status == 200 {
                        p.accepted.push(k);
                    } else {
                        p.refused.push((k, status));
                    }
                    drop(permit);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };

    let mut downtimes = Vec::new();
    let end = started + args.duration;
    loop {
        let next = Instant::now() + args.restart_every;
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        downtimes.push(vm.restart_gracefully().await);
    }
    poster.await.context("the poster task")?;
    let posting_took = started.elapsed();

    // Drain: the buffer and the queue empty out into the running VictoriaMetrics.
    let drain_started = Instant::now();
    loop {
        let text = client.get(&metrics_url).send().await?.text().await?;
        let get = |name| scrape_value(&text, name, &[("url", &url)]).unwrap_or(0.0);
        if get("pie_remote_write_buffer_records") == 0.0
            && get("pie_remote_write_pending_samples") == 0.0
        {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(300) {
            bail!("the controller did not deliver everything within 5 minutes of the end");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained_in = drain_started.elapsed();
    sampler.abort();
    let final_metrics = client.get(&metrics_url).send().await?.text().await?;
    let metric = |name: &str| scrape_value(&final_metrics, name, &[("url", &url)]).unwrap_or(0.0);
    let dropped = |reason: &str| {
        scrape_value(
            &final_metrics,
            "pie_remote_write_samples_dropped_total",
            &[("url", &url), ("reason", reason)],
        )
        .unwrap_or(0.0)
    };

    // What VictoriaMetrics holds.
    let posted = std::mem::take(&mut *posted.lock().unwrap_or_else(|e| e.into_inner()));
    let accepted = posted.accepted.len() as u64;
    let exported = vm
        .export(r#"{__name__=~"pie_receiver_requests_total|pie_io_write_latency_on_mount_probe_seconds",cluster="soak"}"#)
        .await;
    let mut counter: BTreeMap<u64, u64> = BTreeMap::new();
    let mut latency: BTreeMap<u64, u64> = BTreeMap::new();
    // Timestamps per series (an export may split a series over several lines).
    let mut timestamps: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in &exported {
        timestamps
            .entry(format!("{:?}", s.metric))
            .or_default()
            .extend(&s.timestamps);
        let name = s.metric["__name__"].as_str();
        let target = match name {
            "pie_receiver_requests_total"
                if s.metric.get("code").map(String::as_str) == Some("200") =>
            {
                &mut counter
            }
            "pie_io_write_latency_on_mount_probe_seconds" => {
                let node: u64 = s.metric["node"]
                    .strip_prefix("soak-")
                    .and_then(|n| n.parse().ok())
                    .context("a soak node name")?;
                for v in &s.values {
                    if (*v as u64) % args.nodes != node {
                        bail!("value {v} is on the wrong node {node}");
                    }
                }
                &mut latency
            }
            _ => continue,
        };
        for v in &s.values {
            *target.entry(*v as u64).or_default() += 1;
        }
    }
    let mut same_timestamp = 0u64;
    for ts in timestamps.values_mut() {
        let n = ts.len();
        ts.sort_unstable();
        ts.dedup();
        same_timestamp += (n - ts.len()) as u64;
    }
    let count = |seen: &BTreeMap<u64, u64>, want: &[u64]| {
        let lost = want.iter().filter(|k| !seen.contains_key(k)).count() as u64;
        let duplicated: u64 = seen.values().map(|n| n.saturating_sub(1)).sum();
        (lost, duplicated)
    };
    let mut accepted_ks = posted.accepted.clone();
    accepted_ks.sort_unstable();
    let (lost, duplicated) = count(&latency, &accepted_ks);
    let counter_want: Vec<u64> = (1..=accepted).collect();
    let (counter_lost, counter_duplicated) = count(&counter, &counter_want);
    let unexpected = latency
        .keys()
        .filter(|k| accepted_ks.binary_search(k).is_err())
        .count();

    // RSS: the peak of the second and third minutes against the peak of the last two.
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let peak = |from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .map(|s| s.rss)
            .max()
            .unwrap_or(0)
    };
    let warm = peak(Duration::from_secs(60), Duration::from_secs(180));
    let late = peak(
        posting_took.saturating_sub(Duration::from_secs(120)),
        posting_took,
    );
    let first_rss = samples.first().map_or(0, |s| s.rss);
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let rss_flat = warm == 0 || late as f64 <= warm as f64 * 1.2 + 8.0 * 1048576.0;
    let max_buffer = samples.iter().map(|s| s.buffer_bytes).fold(0.0, f64::max);
    let max_records = samples.iter().map(|s| s.buffer_records).fold(0.0, f64::max);
    let max_pending = samples.iter().map(|s| s.pending).fold(0.0, f64::max);
    let down_max = downtimes.iter().max().copied().unwrap_or_default();
    let down_avg = if downtimes.is_empty() {
        Duration::ZERO
    } else {
        downtimes.iter().sum::<Duration>() / downtimes.len() as u32
    };

    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| posting | {posting_took:.1?} at {} results/s target |",
        args.rate
    );
    println!(
        "| results accepted (200) / refused | {accepted} / {} |",
        posted.refused.len()
    );
    println!(
        "| VictoriaMetrics restarts (SIGTERM, same port and data) | {} (down {down_avg:.2?} on average, {down_max:.2?} at most) |",
        downtimes.len()
    );
    println!("| drained after the end | {drained_in:.1?} |");
    println!(
        "| results lost / duplicated (write-latency gauge) | {lost} / {duplicated} (unexpected values: {unexpected}) |"
    );
    println!(
        "| receiver counter samples lost / duplicated | {counter_lost} / {counter_duplicated} |"
    );
    println!("| samples with a repeated timestamp | {same_timestamp} |");
    println!(
        "| RSS first / peak 60-180 s / peak last 120 s / max | {} / {} / {} / {} |",
        mib(first_rss as f64),
        mib(warm as f64),
        mib(late as f64),
        mib(max_rss as f64)
    );
    println!(
        "| buffer peak bytes / records; pending peak | {} / {max_records} ; {max_pending} samples |",
        mib(max_buffer)
    );
    println!(
        "| buffer records written / replayed / dropped / corrupted | {} / {} / {} / {} |",
        metric("pie_remote_write_buffer_records_written_total"),
        metric("pie_remote_write_buffer_records_replayed_total"),
        metric("pie_remote_write_buffer_records_dropped_total"),
        metric("pie_remote_write_buffer_records_corrupted_total"),
    );
    println!(
        "| samples sent; dropped queue_full / buffer_full / out_of_order | {} ; {} / {} / {} |",
        metric("pie_remote_write_samples_total"),
        dropped("queue_full"),
        dropped("buffer_full"),
        dropped("out_of_order"),
    );
    println!("| RSS flat (late <= 1.2 x warm + 8 MiB) | {rss_flat} |");
    for s in &samples {
        eprintln!(
            "soak: t={:>5.0}s rss={} buffer={} records={} pending={}",
            s.at.as_secs_f64(),
            mib(s.rss as f64),
            mib(s.buffer_bytes),
            s.buffer_records,
            s.pending
        );
    }
    controller.terminate_within(Duration::from_secs(15));

    let mut failures = Vec::new();
    if lost + duplicated + counter_lost + counter_duplicated + same_timestamp > 0 || unexpected > 0
    {
        failures.push("results lost or duplicated");
    }
    if !posted.refused.is_empty() {
        failures.push("results refused");
    }
    if !rss_flat {
        failures.push("RSS grew");
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join(", "));
    }
    eprintln!("soak: ok");
    Ok(())
}
