//! vmauth, VictoriaMetrics' authenticating proxy, for the remote-write tests that push through
//! one.

use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::{Process, VmRelease, free_port};

/// `vmauth` on a free loopback port with the given auth config.
#[derive(Debug)]
pub struct Vmauth {
    process: Process,
    port: u16,
    _dir: TempDir,
}

impl Vmauth {
    /// Starts Debian's vmauth with `config` (YAML) and waits until it answers.
    pub async fn start(config: &str) -> Vmauth {
        Vmauth::start_release(VmRelease::Debian, config, &[]).await
    }

    /// Starts vmauth of `release` with `config` (YAML) and extra command-line flags, and waits
    /// until it answers.
    pub async fn start_release(release: VmRelease, config: &str, extra_args: &[&str]) -> Vmauth {
        let binary = release.binary("vmauth");
        let dir = tempfile::tempdir().expect("create a vmauth dir");
        let config_path = dir.path().join("auth.yml");
        std::fs::write(&config_path, config).expect("write the vmauth config");
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .arg(format!("-auth.config={}", config_path.display()))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-loggerLevel=WARN")
            .args(extra_args);
        let process = Process::spawn_ready(
            "vmauth",
            command,
            dir.path().join("vmauth.log"),
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(30),
        )
        .await;
        Vmauth {
            process,
            port,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills vmauth (SIGKILL), as a crashed node.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// The log tail, for assertion messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}
