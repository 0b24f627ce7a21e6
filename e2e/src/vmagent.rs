//! vmagent, the relay admins put between senders and VictoriaMetrics: it accepts remote write,
//! queues what it accepted (in memory, then on disk under `-remoteWrite.tmpDataPath`) and
//! forwards it with remote write.

use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::{Process, VmRelease, free_port};

/// `vmagent` of a [`VmRelease`] on a free loopback port, forwarding to one remote-write URL,
/// with its queue in a temporary directory.
#[derive(Debug)]
pub struct Vmagent {
    process: Process,
    port: u16,
    _dir: TempDir,
}

impl Vmagent {
    /// Starts vmagent of `release` forwarding to `remote_write_url`, plus `extra_args`, and
    /// waits until it answers.
    pub async fn start(release: VmRelease, remote_write_url: &str, extra_args: &[&str]) -> Vmagent {
        let binary = release.binary("vmagent");
        let dir = tempfile::tempdir().expect("create a vmagent dir");
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .arg(format!("-remoteWrite.url={remote_write_url}"))
            .arg(format!(
                "-remoteWrite.tmpDataPath={}",
                dir.path().join("queue").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-loggerLevel=WARN")
            .args(extra_args);
        let process = Process::spawn_ready(
            "vmagent",
            command,
            dir.path().join("vmagent.log"),
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(30),
        )
        .await;
        Vmagent {
            process,
            port,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Prometheus remote-write URL vmagent accepts.
    pub fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.base_url())
    }

    /// The log tail, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
