//! Agent overhead beyond fio's own runtime, and the agent's own peak RSS.
//!
//! Runs the `pie-agent` binary 10 times per scenario against a local controller stand-in:
//! - `fake fio`: fio replaced by a shell script printing a recorded fio 3.33 output;
//! - `real fio`: the real fio with pie's default job (50M, 1 s).
//!
//! Overhead = the agent's wall time (measured here, from spawn to exit) minus fio's wall time as
//! the agent measured it around the child process (its `fio finished` log line). The part of
//! the probe phase after fio (parsing and removing the test files) is shown separately: on a
//! filesystem mounted with `discard`, unlinking fio's 50 MiB file is a synchronous TRIM.
//!
//! Peak RSS is the agent's own VmHWM (fio runs in a child process and is not included), printed
//! by the hidden `--report-peak-rss` flag. Set `PIE_AGENT_BIN` to measure another build of the
//! binary (e.g. the `release` profile one); the default is the one cargo built for this bench.
//!
//! The bench profile keeps symbols and writes to `target/release` too, so to measure the
//! stripped release binary, copy it aside first:
//!
//! ```sh
//! cargo build --release -p pie-agent && cp "$CARGO_TARGET_DIR/release/pie-agent" /tmp/pie-agent-release
//! PIE_AGENT_BIN=/tmp/pie-agent-release cargo bench -p pie-agent --bench overhead
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Controller, Reply, fio_printing_ok_fixture, mount_args};

const RUNS: usize = 10;

struct Sample {
    wall: Duration,
    fio: Duration,
    /// The probe phase (path check, fio, parsing, test-file removal) as the agent logged it.
    probe: Duration,
    rss_kib: u64,
}

fn main() {
    let bin = std::env::var_os("PIE_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pie-agent")));
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    println!("binary: {} ({:.2} MiB)", bin.display(), mib(size));
    let controller = Controller::start(Vec::new(), Reply::status(204));
    let dir = tempfile::tempdir_in("/var/tmp").expect("a temp dir on a real filesystem");

    let fake = fio_printing_ok_fixture(dir.path());
    // One warm-up run (page cache, first connection), not counted.
    run(&bin, &controller, dir.path(), &fake);
    let samples: Vec<Sample> = (0..RUNS)
        .map(|_| run(&bin, &controller, dir.path(), &fake))
        .collect();
    report("fake fio", &samples);

    let samples: Vec<Sample> = (0..RUNS)
        .map(|_| run(&bin, &controller, dir.path(), Path::new("fio")))
        .collect();
    report("real fio, pie's job", &samples);
    assert_eq!(controller.received().len(), 2 * RUNS + 1);
}

/// One agent run, timed from outside; fio's share is the agent's own measurement around the child.
fn run(bin: &Path, controller: &Controller, dir: &Path, fio: &Path) -> Sample {
    let url = controller.url();
    let args = mount_args(
        &url,
        dir.to_str().unwrap(),
        &["--fio", fio.to_str().unwrap(), "--report-peak-rss"],
    );
    let start = Instant::now();
    let out = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(&args)
        .output()
        .expect("pie-agent runs");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let logged = |message: &str| {
        let line = stderr
            .lines()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} line in {stderr}"));
        let seconds = field(line, "seconds=").expect("seconds= in the line");
        Duration::from_secs_f64(seconds)
    };
    let fio = logged("fio finished");
    let probe = logged("I/O probe succeeded");
    let rss_kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("pie-agent peak RSS (VmHWM): "))
        .and_then(|v| v.trim_end_matches(" kB").parse().ok())
        .expect("a peak RSS line");
    Sample {
        wall,
        fio,
        probe,
        rss_kib,
    }
}

fn field(line: &str, name: &str) -> Option<f64> {
    let rest = &line[line.find(name)? + name.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn report(name: &str, samples: &[Sample]) {
    let overhead: Vec<Duration> = samples
        .iter()
        .map(|s| s.wall.saturating_sub(s.fio))
        .collect();
    let walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    // Probe phase beyond fio: path check, JSON parsing and removing the test files.
    let after_fio: Vec<Duration> = samples
        .iter()
        .map(|s| s.probe.saturating_sub(s.fio))
        .collect();
    let rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "{name}: {RUNS} runs, overhead median {:.1} ms, max {:.1} ms \
         (of which probe phase after fio, mostly test-file removal: median {:.1} ms); \
         wall median {:.1} ms; agent peak RSS max {:.2} MiB",
        ms(median(overhead.clone())),
        ms(overhead.iter().copied().max().unwrap_or_default()),
        ms(median(after_fio)),
        ms(median(walls)),
        rss as f64 / 1024.0,
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
