//! What every harness is made of: a child process that cannot outlive its test, a free loopback
//! port for it, the path of its program, and its footprint (RSS, bytes on disk).
//!
//! A [`Process`] is killed and reaped on drop, so a test that panics leaves nothing running. Its
//! output goes to a log file, not to the test's output, so that a readiness wait that fails can
//! show the last lines and a passing test stays quiet.

use std::fs::File;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http_client;

/// Returns the full path of `binary`, or panics saying which Debian package provides it.
pub fn require_binary(binary: &str, debian_package: &str) -> PathBuf {
    find_binary(binary).unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed: install it with `apt-get install {debian_package}` \
             (or run `task deps`, which installs every program the tests need)"
        )
    })
}

/// Looks `binary` up on `PATH`.
pub fn find_binary(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// A port on 127.0.0.1 that was free a moment ago, handed out once per test process.
///
/// Ports come from [`PORT_RANGE`] below the kernel's ephemeral range, never from `bind(0)`:
/// a port the kernel picks for `bind(0)` or for an outgoing connection is one it may pick again
/// for another process between this check and the child's bind (CI saw a controller fail with
/// "Address already in use" that way). Here the kernel never picks, and the per-process counter
/// never hands a port out twice; `pie-cluster` picks its ports from a range of its own.
pub fn free_port() -> u16 {
    // The range, read once, and the counter walking it.
    static NEXT: OnceLock<(u16, u16, AtomicU32)> = OnceLock::new();
    let (low, high, next) = NEXT.get_or_init(|| {
        let (low, high) = port_range();
        // A random start, so that two test processes running at once walk different ports.
        let start = RandomState::new().build_hasher().finish() % u64::from(high - low);
        (low, high, AtomicU32::new(start as u32))
    });
    let (low, high) = (*low, *high);
    let span = u32::from(high - low);
    for _ in 0..span {
        let port = low + (next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}")
}

/// Where [`free_port`] looks: ports [`PORT_RANGE`] up to the first port of the kernel's
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`).
fn port_range() -> (u16, u16) {
    let (low, default_high) = PORT_RANGE;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(default_high)
        .min(default_high);
    assert!(
        high > low + 1000,
        "the ephemeral port range starts at {high}: free_port needs ports {low}..{default_high} \
         outside it (sysctl net.ipv4.ip_local_port_range)"
    );
    (low, high)
}

/// The ports the test harnesses use: from 20000 up to the kernel's ephemeral range (32768 on
/// Linux by default). `pie-cluster` uses 10000..16000, the scripts (`scripts/lib/ports.py`)
/// 16000..20000.
const PORT_RANGE: (u16, u16) = (20000, 32768);

/// A child process that is killed and reaped on drop. Its output goes to a log file that is
/// printed when the process fails to become ready.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command`, sending stdout and stderr to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Process {
        let out = File::create(&log).expect("create the process log");
        let err = out.try_clone().expect("clone the process log handle");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// [`Process::spawn`], then [`Process::wait_ready`] on `ready_url`: how every harness that
    /// serves HTTP starts.
    pub async fn spawn_ready(
        name: &str,
        command: Command,
        log: PathBuf,
        ready_url: &str,
        timeout: Duration,
    ) -> Process {
        let mut process = Process::spawn(name, command, log);
        process.wait_ready(ready_url, timeout).await;
        process
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The last lines of the process log.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, 30)
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Sends SIGTERM and returns at once; see [`Process::wait_exit`].
    pub fn terminate(&self) {
        if let Err(e) = self.send_term() {
            panic!("SIGTERM to {}: {e}", self.name);
        }
    }

    /// Sends SIGTERM to the process, if it was not stopped yet.
    fn send_term(&self) -> std::io::Result<()> {
        let Some(child) = self.child.as_ref() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| std::io::Error::other(format!("invalid pid {}", child.id())))?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own and returns its exit status,
    /// or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the process to stop (SIGTERM) and waits up to `timeout` for it to exit, then kills
    /// it. Returns whether it exited by itself in time.
    pub fn terminate_within(&mut self, timeout: Duration) -> bool {
        // An error means it is gone already; the loop below reaps it.
        let _ = self.send_term();
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Polls `url` until it answers 200, panicking with the log tail after `timeout`.
    pub async fn wait_ready(&mut self, url: &str, timeout: Duration) {
        let client = http_client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = client.get(url).send().await
                && resp.status().is_success()
            {
                return;
            }
            if self.has_exited() || Instant::now() > deadline {
                panic!(
                    "{} did not become ready at {url}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of the text file `path` (empty if it cannot be read), for failure
/// messages.
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The resident set size of process `pid` in bytes (Linux `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The peak resident set size of process `pid` in bytes (`VmHWM` of `/proc/<pid>/status`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU seconds (user + system, all threads) process `pid` has used (Linux
/// `/proc/<pid>/stat`), for benches that compare the CPU of several processes over one run.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; utime and stime are the 12th and 13th
    // fields after it.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // In USER_HZ, which the kernel reports as 100 on every architecture.
    Some(ticks / 100.0)
}

/// The total size in bytes of the regular files under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let (low, high) = port_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(
            distinct.len(),
            ports.len(),
            "a port handed out twice: {ports:?}"
        );
        for port in ports {
            assert!((low..high).contains(&port), "{port} outside {low}..{high}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("the port is still free");
        }
    }
}
