//! Running fio with pie's job plus an integrity check, and parsing its JSON output.
//!
//! The measured job is pie's, unchanged:
//! `--name=pie -filename=<dir>/.iotest -direct=1 -rw=readwrite -bs=4k -size=50M -numjobs=1
//! -runtime=1 -group_reporting`. A second job, separated by `--stonewall` so it runs after the
//! first and is reported on its own, writes 1 MiB to `<dir>/.iotest-verify` with direct I/O and
//! crc32c checksums and reads it back (`-verify=crc32c -do_verify=1 -verify_fatal=1`); fio reports
//! a mismatch as error 84 (EILSEQ) on that job. Both files are removed afterwards.
//!
//! Latencies: the mean is fio's `lat_ns.mean` (total latency, submission + completion, which is
//! what pie reports); the p99 is fio's `clat_ns.percentile["99.000000"]` (fio computes
//! percentiles for completion latency only by default). Both are converted to seconds.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tracing::{debug, info, warn};

/// File name of the measured job's test file inside the probed directory (pie's name).
pub const TEST_FILE: &str = ".iotest";
/// File name of the integrity check's file inside the probed directory.
pub const VERIFY_FILE: &str = ".iotest-verify";
/// Name of fio's measured job.
pub const MEASURE_JOB: &str = "pie";
/// Name of fio's integrity-check job.
pub const VERIFY_JOB: &str = "verify";
/// Amount of data the integrity check writes and reads back.
pub const VERIFY_SIZE: &str = "1M";

/// fio error code for a checksum mismatch (EILSEQ).
const EILSEQ: i32 = 84;
/// fio error code for an invalid argument (EINVAL), typically direct I/O being unsupported.
const EINVAL: i32 = 22;

/// One fio run: which binary, where, how much and for how long.
#[derive(Debug, Clone)]
pub struct FioJob {
    /// The fio binary (a name looked up in `PATH`, or a path).
    pub fio: PathBuf,
    /// The directory to test; must exist (fio would silently create it).
    pub dir: PathBuf,
    /// fio `-size` of the measured job, e.g. `50M`.
    pub size: String,
    /// fio `-runtime` of the measured job.
    pub runtime: Duration,
    /// Wall time after which fio is killed.
    pub budget: Duration,
}

/// Measurements of one I/O direction, in seconds, operations/s and bytes/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirectionStats {
    /// Mean total latency (`lat_ns.mean`), seconds.
    pub mean_latency: f64,
    /// 99th percentile completion latency (`clat_ns` percentile 99), seconds, if fio reported it.
    pub p99_latency: Option<f64>,
    /// Operations per second.
    pub iops: f64,
    /// Bandwidth, bytes per second.
    pub bytes_per_second: f64,
}

/// What a successful fio run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Reads of the measured job.
    pub read: DirectionStats,
    /// Writes of the measured job.
    pub write: DirectionStats,
}

/// Why fio produced no usable measurement.
#[derive(Debug, thiserror::Error)]
pub enum FioError {
    /// The fio binary does not exist.
    #[error("fio binary {0:?} not found")]
    NotFound(PathBuf),
    /// The fio binary could not be started for another reason.
    #[error("could not start fio {fio:?}: {source}")]
    Spawn {
        /// The binary.
        fio: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Waiting for fio or reading its output failed.
    #[error("could not collect fio's output: {0}")]
    Wait(io::Error),
    /// fio ran longer than its budget and was killed.
    #[error("fio did not finish within {0:?} and was killed")]
    TimedOut(Duration),
    /// fio exited unsuccessfully without a job error in its output.
    #[error("fio exited with {status}: {stderr}")]
    Exited {
        /// The exit status.
        status: ExitStatus,
        /// fio's last line on stderr.
        stderr: String,
    },
    /// fio's output is not the JSON expected.
    #[error("could not parse fio's JSON output: {0}")]
    Parse(String),
    /// Direct I/O is not supported where the probe ran.
    #[error(
        "fio job {job} failed with EINVAL (error {EINVAL}): direct I/O (O_DIRECT) is probably not supported on this filesystem"
    )]
    DirectIo {
        /// The job that failed.
        job: String,
    },
    /// The data read back differs from the data written.
    #[error("integrity check failed: data read back differs from what was written ({0})")]
    Integrity(String),
    /// A fio job reported an error.
    #[error("fio job {job} failed with error {code}: {description}")]
    Job {
        /// The job that failed.
        job: String,
        /// fio's error code (an errno).
        code: i32,
        /// The OS description of the code.
        description: String,
    },
    /// fio succeeded but did no I/O in one direction.
    #[error("fio job {MEASURE_JOB} did no {0} I/O")]
    NoIo(&'static str),
}

impl FioJob {
    /// The fio command-line arguments: pie's job and the integrity-check job.
    pub fn args(&self) -> Vec<String> {
        let dir = self.dir.display();
        vec![
            "--output-format=json".into(),
            format!("--name={MEASURE_JOB}"),
            format!("-filename={dir}/{TEST_FILE}"),
            "-direct=1".into(),
            "-rw=readwrite".into(),
            "-bs=4k".into(),
            format!("-size={}", self.size),
            "-numjobs=1".into(),
            format!("-runtime={}", fio_time(self.runtime)),
            "-group_reporting".into(),
            format!("--name={VERIFY_JOB}"),
            "--stonewall".into(),
            format!("-filename={dir}/{VERIFY_FILE}"),
            "-direct=1".into(),
            "-rw=write".into(),
            "-bs=4k".into(),
            format!("-size={VERIFY_SIZE}"),
            "-verify=crc32c".into(),
            "-do_verify=1".into(),
            "-verify_fatal=1".into(),
            "-verify_state_save=0".into(),
        ]
    }

    /// Runs fio, kills it (and the job processes it forked) once the budget is exceeded, parses
    /// its output and removes the test files, whatever the outcome.
    pub async fn run(&self) -> Result<Measurement, FioError> {
        let result = self.run_fio().await;
        self.remove_test_files();
        result
    }

    async fn run_fio(&self) -> Result<Measurement, FioError> {
        let mut command = tokio::process::Command::new(&self.fio);
        command
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout kills fio's forked job processes too.
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => FioError::NotFound(self.fio.clone()),
            _ => FioError::Spawn {
                fio: self.fio.clone(),
                source,
            },
        })?;
        let pid = child.id();
        let started = std::time::Instant::now();
        let output = match tokio::time::timeout(self.budget, child.wait_with_output()).await {
            Ok(output) => output.map_err(FioError::Wait)?,
            Err(_) => {
                let pid = pid.and_then(|p| i32::try_from(p).ok());
                if let Some(pid) = pid.and_then(rustix::process::Pid::from_raw) {
                    // The group may already be gone; there is nothing else to do then.
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                return Err(FioError::TimedOut(self.budget));
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        info!(status = %output.status, seconds = started.elapsed().as_secs_f64(), "fio finished");
        debug!(stderr = %stderr.trim(), "fio's stderr");
        interpret(output.status, &stdout, &stderr)
    }

    fn remove_test_files(&self) {
        for name in [TEST_FILE, VERIFY_FILE] {
            let path = self.dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "removed test file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(path = %path.display(), error = %e, "could not remove test file"),
            }
        }
    }
}

/// Turns fio's exit status and output into a measurement or the most specific error: a job's
/// error code wins over the bare exit status.
pub fn interpret(status: ExitStatus, stdout: &str, stderr: &str) -> Result<Measurement, FioError> {
    match parse_output(stdout) {
        Ok(output) => {
            output.check_errors(stderr)?;
            if !status.success() {
                return Err(exited(status, stderr));
            }
            output.measurement()
        }
        Err(_) if !status.success() => Err(exited(status, stderr)),
        Err(e) => Err(e),
    }
}

fn exited(status: ExitStatus, stderr: &str) -> FioError {
    let stderr = stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no message on stderr");
    FioError::Exited {
        status,
        stderr: stderr.to_owned(),
    }
}

/// fio's JSON output (`--output-format=json`), the parts the agent uses.
#[derive(Debug, Clone, Deserialize)]
pub struct FioOutput {
    /// e.g. `fio-3.33`.
    #[serde(rename = "fio version")]
    pub version: String,
    /// One entry per reporting group.
    pub jobs: Vec<FioJobReport>,
}

/// One job (reporting group) of fio's JSON output.
#[derive(Debug, Clone, Deserialize)]
pub struct FioJobReport {
    /// The `--name` of the job.
    pub jobname: String,
    /// fio's error code (an errno), 0 on success.
    pub error: i32,
    /// Read statistics.
    pub read: FioIoStats,
    /// Write statistics.
    pub write: FioIoStats,
}

/// Statistics of one I/O direction of one job.
#[derive(Debug, Clone, Deserialize)]
pub struct FioIoStats {
    /// Bytes transferred.
    pub io_bytes: u64,
    /// Bandwidth, bytes per second.
    pub bw_bytes: f64,
    /// Operations per second.
    pub iops: f64,
    /// Number of I/Os.
    pub total_ios: u64,
    /// Completion latency, nanoseconds.
    pub clat_ns: FioLatency,
    /// Total latency, nanoseconds.
    pub lat_ns: FioLatency,
}

/// A latency distribution in nanoseconds.
#[derive(Debug, Clone, Deserialize)]
pub struct FioLatency {
    /// Mean, nanoseconds.
    pub mean: f64,
    /// Percentiles keyed by fio's formatting (e.g. `"99.000000"`), when computed.
    #[serde(default)]
    pub percentile: BTreeMap<String, f64>,
}

impl FioLatency {
    /// The given percentile in nanoseconds, if fio computed it.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        self.percentile
            .iter()
            .find(|(k, _)| k.parse::<f64>().is_ok_and(|k| k == p))
            .map(|(_, v)| *v)
    }
}

/// Parses fio's JSON output. Anything fio prints before the JSON document (warnings go to stdout
/// in some versions) is skipped.
pub fn parse_output(stdout: &str) -> Result<FioOutput, FioError> {
    let start = if stdout.starts_with('{') {
        0
    } else {
        stdout
            .find("\n{")
            .map(|i| i + 1)
            .ok_or_else(|| FioError::Parse("no JSON document in fio's output".into()))?
    };
    serde_json::from_str(&stdout[start..]).map_err(|e| FioError::Parse(e.to_string()))
}

impl FioOutput {
    /// The first job error, mapped to the most helpful [`FioError`]; `stderr` supplies details
    /// of a verify failure.
    pub fn check_errors(&self, stderr: &str) -> Result<(), FioError> {
        let Some(job) = self.jobs.iter().find(|j| j.error != 0) else {
            return Ok(());
        };
        Err(match job.error {
            EILSEQ if job.jobname == VERIFY_JOB => FioError::Integrity(
                stderr
                    .lines()
                    .map(str::trim)
                    .find(|l| l.contains("verify failed"))
                    .unwrap_or("crc32c mismatch")
                    .to_owned(),
            ),
            EINVAL => FioError::DirectIo {
                job: job.jobname.clone(),
            },
            code => FioError::Job {
                job: job.jobname.clone(),
                code,
                description: describe_errno(code),
            },
        })
    }

    /// The measured job's read and write statistics.
    pub fn measurement(&self) -> Result<Measurement, FioError> {
        let job = self
            .jobs
            .iter()
            .find(|j| j.jobname == MEASURE_JOB)
            .ok_or_else(|| FioError::Parse(format!("no job named {MEASURE_JOB}")))?;
        if job.read.total_ios == 0 {
            return Err(FioError::NoIo("read"));
        }
        if job.write.total_ios == 0 {
            return Err(FioError::NoIo("write"));
        }
        Ok(Measurement {
            read: direction(&job.read),
            write: direction(&job.write),
        })
    }
}

fn direction(stats: &FioIoStats) -> DirectionStats {
    DirectionStats {
        mean_latency: stats.lat_ns.mean / 1e9,
        p99_latency: stats.clat_ns.percentile(99.0).map(|ns| ns / 1e9),
        iops: stats.iops,
        bytes_per_second: stats.bw_bytes,
    }
}

fn describe_errno(code: i32) -> String {
    let text = io::Error::from_raw_os_error(code).to_string();
    // "Permission denied (os error 13)" -> "Permission denied"
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// fio's notation for a duration: whole seconds as a bare number (pie passes `-runtime=1`),
/// otherwise milliseconds with fio's `ms` suffix.
fn fio_time(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

/// Checks that `dir` exists and is a directory; fio would create a missing one and so hide a
/// volume that was never mounted.
pub fn check_dir(dir: &Path) -> Result<(), DirError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DirError::NotADirectory(dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DirError::Missing(dir.to_owned())),
        Err(source) => Err(DirError::Inaccessible {
            dir: dir.to_owned(),
            source,
        }),
    }
}

/// Why the probed directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory does not exist.
    #[error("path {0:?} does not exist (is the volume mounted?)")]
    Missing(PathBuf),
    /// The path is not a directory.
    #[error("path {0:?} is not a directory")]
    NotADirectory(PathBuf),
    /// The path cannot be examined.
    #[error("cannot access path {dir:?}: {source}")]
    Inaccessible {
        /// The path.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const OK: &str = include_str!("../tests/fixtures/fio-3.33-ok.json");
    const EACCES: &str = include_str!("../tests/fixtures/fio-3.33-eacces.json");
    const EACCES_STDERR: &str = include_str!("../tests/fixtures/fio-3.33-eacces.stderr");
    const MISMATCH: &str = include_str!("../tests/fixtures/fio-3.33-verify-mismatch.json");
    const MISMATCH_STDERR: &str = include_str!("../tests/fixtures/fio-3.33-verify-mismatch.stderr");

    fn exit(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    fn job(dir: &Path) -> FioJob {
        FioJob {
            fio: "fio".into(),
            dir: dir.to_owned(),
            size: "50M".into(),
            runtime: Duration::from_secs(1),
            budget: Duration::from_secs(30),
        }
    }

    #[test]
    fn fixture_ok_parses_every_field() {
        let out = parse_output(OK).unwrap();
        assert_eq!(out.version, "fio-3.33");
        assert_eq!(out.jobs.len(), 2);
        let pie = &out.jobs[0];
        // Values copied from the fixture file.
        assert_eq!(pie.jobname, "pie");
        assert_eq!(pie.error, 0);
        let m = interpret(exit(0), OK, "").unwrap();
        assert_eq!(m.read.mean_latency, pie.read.lat_ns.mean / 1e9);
        assert_eq!(m.read.iops, pie.read.iops);
        assert_eq!(m.read.bytes_per_second, pie.read.bw_bytes);
        assert_eq!(
            m.write.p99_latency,
            Some(pie.write.clat_ns.percentile["99.000000"] / 1e9)
        );
        for d in [m.read, m.write] {
            assert!(d.mean_latency > 1e-7 && d.mean_latency < 1.0, "{d:?}");
            let p99 = d.p99_latency.unwrap();
            assert!(p99 > 1e-7 && p99 < 10.0, "{d:?}");
            assert!(d.iops > 1.0, "{d:?}");
            assert!(d.bytes_per_second >= d.iops * 4096.0 * 0.99, "{d:?}");
        }
    }

    #[test]
    fn fixture_with_job_error_is_a_job_failure() {
        let err = interpret(exit(1), EACCES, EACCES_STDERR).unwrap_err();
        match &err {
            FioError::Job { job, code, .. } => assert_eq!((job.as_str(), *code), ("pie", 13)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "fio job pie failed with error 13: Permission denied"
        );
    }

    #[test]
    fn fixture_with_verify_mismatch_is_an_integrity_failure() {
        let err = interpret(exit(1), MISMATCH, MISMATCH_STDERR).unwrap_err();
        assert!(matches!(err, FioError::Integrity(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("integrity check failed"), "{msg}");
        assert!(msg.contains("verify failed at file"), "{msg}");
    }

    #[test]
    fn einval_is_reported_as_direct_io_unsupported() {
        let json = OK.replacen("\"error\" : 0", "\"error\" : 22", 1);
        let err = interpret(exit(1), &json, "").unwrap_err();
        assert!(err.to_string().contains("O_DIRECT"), "{err}");
    }

    #[test]
    fn non_zero_exit_without_json_reports_stderr() {
        let err = interpret(exit(1), "", "fio: something\nfio: bad option 'x'\n\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "fio exited with exit status: 1: fio: bad option 'x'"
        );
    }

    #[test]
    fn non_zero_exit_with_clean_json_is_still_a_failure() {
        let err = interpret(exit(1), OK, "fio: oops").unwrap_err();
        assert!(matches!(err, FioError::Exited { .. }), "{err:?}");
    }

    #[test]
    fn unparsable_output_is_a_parse_error() {
        for bad in ["", "hello", "{\"jobs\": 3}", "{ truncated"] {
            let err = interpret(exit(0), bad, "").unwrap_err();
            assert!(matches!(err, FioError::Parse(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn text_before_the_json_is_skipped() {
        let noisy = format!("fio: note: something\n{OK}");
        assert!(interpret(exit(0), &noisy, "").is_ok());
    }

    #[test]
    fn no_reads_is_a_failure() {
        let out = parse_output(OK).unwrap();
        let mut out = out.clone();
        out.jobs[0].read.total_ios = 0;
        assert!(matches!(out.measurement(), Err(FioError::NoIo("read"))));
    }

    #[test]
    fn args_are_pies_job_plus_verify() {
        let args = job(Path::new("/mounted")).args();
        let pie: Vec<&str> = args[1..10].iter().map(String::as_str).collect();
        assert_eq!(
            pie,
            [
                "--name=pie",
                "-filename=/mounted/.iotest",
                "-direct=1",
                "-rw=readwrite",
                "-bs=4k",
                "-size=50M",
                "-numjobs=1",
                "-runtime=1",
                "-group_reporting"
            ]
        );
        assert!(args.contains(&"-verify=crc32c".to_owned()));
        assert!(args.contains(&"-filename=/mounted/.iotest-verify".to_owned()));
    }

    #[test]
    fn fio_time_notation() {
        assert_eq!(fio_time(Duration::from_secs(1)), "1");
        assert_eq!(fio_time(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fio_time(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn check_dir_cases() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(check_dir(tmp.path()).is_ok());
        let missing = tmp.path().join("nope");
        let err = check_dir(&missing).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = check_dir(&file).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    /// Real fio on a real filesystem: /var/tmp, not /tmp, which may be a tmpfs where O_DIRECT
    /// is not supported on older kernels.
    #[tokio::test]
    async fn real_fio_measures_and_cleans_up() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let mut job = job(tmp.path());
        job.size = "4M".into();
        let m = job.run().await.unwrap();
        for d in [m.read, m.write] {
            assert!(d.mean_latency > 0.0 && d.mean_latency < 1.0, "{d:?}");
            assert!(d.p99_latency.unwrap() > 0.0, "{d:?}");
            assert!(d.iops > 0.0 && d.bytes_per_second > 0.0, "{d:?}");
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_hanging_fio_is_killed_at_the_budget() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let script = tmp.path().join("fio");
        let pid_file = tmp.path().join("grandchild.pid");
        // Like fio, the script forks a worker; the whole process group must be killed.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nsleep 30 &\necho $! > '{}'\nwait\n",
                pid_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut job = job(tmp.path());
        job.fio = script;
        job.budget = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let err = job.run().await.unwrap_err();
        assert!(matches!(err, FioError::TimedOut(_)), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Gone, or a zombie waiting for a PID 1 that does not reap.
        while std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.starts_with(" Z"))
        }) {
            assert!(std::time::Instant::now() < deadline, "worker still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_missing_fio_is_not_found() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let mut job = job(tmp.path());
        job.fio = tmp.path().join("no-such-fio");
        let err = job.run().await.unwrap_err();
        assert!(matches!(err, FioError::NotFound(_)), "{err:?}");
    }
}
