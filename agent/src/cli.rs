//! The command line: subcommands, flags (each also a `PIE_*` environment variable) and their
//! value parsers.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pie_api::units::{parse_duration, parse_size};

/// Exit codes, shown at the end of `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (mount-probe: the probe succeeded and its result was delivered; provision-probe
     with --controller-url: and the controller counted it)
  1  the probe failed (mount-probe: the failure was delivered to the controller)
  2  usage error: bad flag or value; nothing was probed or sent
  3  the result (mount-probe) or the start (provision-probe) could not be delivered
     (unreachable, rejected, --timeout passed)";

/// The probe that runs inside pie's probe Pods.
#[derive(Debug, Parser)]
#[command(name = "pie-agent", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing EnvFilter syntax), logs go to stderr.
    #[arg(long, env = "PIE_LOG", default_value = "info", global = true, value_parser = parse_log_filter)]
    pub log: String,
    /// Print the agent's own peak RSS (VmHWM) to stderr at exit (for benchmarks).
    #[arg(long, env = "PIE_REPORT_PEAK_RSS", global = true, hide = true)]
    pub report_peak_rss: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run fio on the mounted volume and post the result to the controller.
    #[command(after_help = EXIT_CODES)]
    MountProbe(Box<MountProbeArgs>),
    /// The Pod starting is the measurement: with --path, check that a small file can be
    /// written, fsynced and read back; with --controller-url, report the start and wait until
    /// the controller has counted it; then exit.
    #[command(after_help = EXIT_CODES)]
    ProvisionProbe(ProvisionProbeArgs),
    /// Print the version.
    Version,
}

/// Flags of `mount-probe`.
#[derive(Debug, Clone, Args)]
pub struct MountProbeArgs {
    /// Base URL of the controller's result receiver; results are posted to URL/api/v1/results.
    #[arg(
        long,
        env = "PIE_CONTROLLER_URL",
        visible_alias = "destination-address"
    )]
    pub controller_url: String,
    /// Directory where the volume is mounted; must exist.
    #[arg(long, env = "PIE_PATH")]
    pub path: PathBuf,
    /// Name of the node the probe runs on.
    #[arg(long, env = "PIE_NODE_NAME")]
    pub node_name: String,
    /// Storage class of the probed volume.
    #[arg(long, env = "PIE_STORAGE_CLASS")]
    pub storage_class: String,
    /// Name of the PieProbe.
    #[arg(long, env = "PIE_PROBE_NAME")]
    pub pie_probe_name: String,
    /// File holding a bearer token for the controller, re-read on every attempt.
    #[arg(long, env = "PIE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CAs trusted for an https controller URL, instead of the system's roots.
    #[arg(long, env = "PIE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// fio binary.
    #[arg(long, env = "PIE_FIO", default_value = "fio")]
    pub fio: PathBuf,
    /// fio -size of the measured job (e.g. 50M, 1G).
    #[arg(long, env = "PIE_SIZE", default_value = "50M", value_parser = parse_size)]
    pub size: String,
    /// fio -runtime of the measured job (e.g. 1s, 500ms, 2m; a bare number is seconds).
    #[arg(long, env = "PIE_RUNTIME", default_value = "1s", value_parser = parse_duration)]
    pub runtime: Duration,
    /// Kill fio if it has not finished after this long.
    #[arg(long, env = "PIE_FIO_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub fio_timeout: Duration,
    /// Overall deadline for delivering the result, retries included.
    #[arg(long, env = "PIE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags of `provision-probe`.
#[derive(Debug, Clone, Args)]
pub struct ProvisionProbeArgs {
    /// Directory of the ephemeral volume to write a small file to; must exist.
    #[arg(long, env = "PIE_PATH")]
    pub path: Option<PathBuf>,
    /// Base URL of the controller; the start is reported to URL/api/v1/provision-started and
    /// the probe waits until the controller has counted it. Without it the probe exits at once.
    #[arg(long, env = "PIE_CONTROLLER_URL")]
    pub controller_url: Option<String>,
    /// Name of the PieProbe (with --controller-url).
    #[arg(long, env = "PIE_PROBE_NAME")]
    pub pie_probe_name: Option<String>,
    /// Storage class of the ephemeral volume (with --controller-url).
    #[arg(long, env = "PIE_STORAGE_CLASS")]
    pub storage_class: Option<String>,
    /// File holding a bearer token for the controller, re-read on every attempt.
    #[arg(long, env = "PIE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CAs trusted for an https controller URL, instead of the system's roots.
    #[arg(long, env = "PIE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the controller to count the probe, retries included.
    #[arg(long, env = "PIE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Checks a tracing filter directive.
pub fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn destination_address_is_an_alias_and_env_vars_work() {
        let cli = Cli::try_parse_from([
            "pie-agent",
            "mount-probe",
            "--destination-address",
            "http://c:8082",
            "--path",
            "/mounted",
            "--node-name",
            "n",
            "--storage-class",
            "s",
            "--pie-probe-name",
            "p",
        ])
        .unwrap();
        let Command::MountProbe(args) = cli.command else {
            panic!("wrong subcommand");
        };
        assert_eq!(args.controller_url, "http://c:8082");
        assert_eq!(args.size, "50M");
        assert_eq!(args.runtime, Duration::from_secs(1));
        assert_eq!(args.timeout, Duration::from_secs(60));
        assert_eq!(args.fio_timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let err = Cli::try_parse_from(["pie-agent", "provision-probe", "--log", "[["]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["pie-agent", "mount-probe"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
