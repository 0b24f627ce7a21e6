//! What each subcommand does, from parsed flags to an exit code.

use tracing::{error, info};

use crate::cli::{MountProbeArgs, ProvisionProbeArgs};
use crate::deliver::{Deliverer, DeliveryError, PROVISION_STARTED_PATH, RESULTS_PATH};
use crate::fio::FioJob;
use crate::probe::{ProbeIdentity, mount_probe};
use crate::provision::write_check;
use pie_api::result::validate_dns_subdomain;
use pie_api::{ProbeResult, ProvisionStarted};

/// The process exit codes (see [`crate::cli::EXIT_CODES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The probe succeeded (and its result was delivered).
    Success = 0,
    /// The probe failed (and, for mount-probe, the failure was delivered).
    ProbeFailed = 1,
    /// Bad flags or values.
    Usage = 2,
    /// The result could not be delivered.
    NotDelivered = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e as u8)
    }
}

/// `mount-probe`: validate the flags, probe, deliver the result whatever it is.
pub async fn run_mount_probe(args: MountProbeArgs) -> Exit {
    let identity = ProbeIdentity {
        pie_probe_name: args.pie_probe_name,
        node: args.node_name,
        storage_class: args.storage_class,
    };
    let checked = [
        ("--pie-probe-name", &identity.pie_probe_name),
        ("--node-name", &identity.node),
        ("--storage-class", &identity.storage_class),
    ];
    for (flag, value) in checked {
        if let Err(e) = validate_dns_subdomain("name", value) {
            eprintln!("error: {flag}: {e}");
            return Exit::Usage;
        }
    }
    let deliverer = match deliverer(
        &args.controller_url,
        RESULTS_PATH,
        args.token_file,
        args.ca_file.as_deref(),
        args.timeout,
    ) {
        Ok(d) => d,
        Err(exit) => return exit,
    };
    let job = FioJob {
        fio: args.fio,
        dir: args.path,
        size: args.size,
        runtime: args.runtime,
        budget: args.fio_timeout,
    };
    info!(path = %job.dir.display(), node = %identity.node, storage_class = %identity.storage_class, pie_probe = %identity.pie_probe_name, "mount probe starting");
    let mut result = mount_probe(&identity, &job).await;
    if let Err(e) = result.validate() {
        // The receiver would reject it; report why instead of losing the probe.
        result = ProbeResult::failure(
            &identity.pie_probe_name,
            &identity.node,
            &identity.storage_class,
            format!("invalid measurement: {e}"),
        );
    }
    info!(url = %deliverer.url(), succeed = result.performance_probe_succeed, "delivering result");
    match deliverer.deliver(&result).await {
        Ok(_) if result.performance_probe_succeed => Exit::Success,
        Ok(_) => Exit::ProbeFailed,
        Err(e) => {
            error!("{e}");
            Exit::NotDelivered
        }
    }
}

/// A [`Deliverer`] to `path` of the controller, or the exit code a bad flag means.
fn deliverer(
    controller_url: &str,
    path: &str,
    token_file: Option<std::path::PathBuf>,
    ca_file: Option<&std::path::Path>,
    timeout: std::time::Duration,
) -> Result<Deliverer, Exit> {
    match Deliverer::new(controller_url, path, token_file, ca_file, timeout) {
        Ok(d) => Ok(d),
        Err(e @ (DeliveryError::InvalidUrl { .. } | DeliveryError::CaFile { .. })) => {
            eprintln!("error: {e}");
            Err(Exit::Usage)
        }
        Err(e) => {
            error!("{e}");
            Err(Exit::NotDelivered)
        }
    }
}

/// `provision-probe`: the optional write check, then, with `--controller-url`, report the
/// start and wait until the controller has counted it (so a Pod that runs while no controller
/// leads lives until one does, instead of finishing unseen); without it, exit at once as
/// topolvm/pie's probe did.
pub async fn run_provision_probe(args: ProvisionProbeArgs) -> Exit {
    let report = match &args.controller_url {
        None => None,
        Some(url) => {
            let (Some(pie_probe_name), Some(storage_class)) =
                (args.pie_probe_name.clone(), args.storage_class.clone())
            else {
                eprintln!("error: --controller-url needs --pie-probe-name and --storage-class");
                return Exit::Usage;
            };
            let started = ProvisionStarted {
                pie_probe_name,
                storage_class,
            };
            if let Err(e) = started.validate() {
                eprintln!("error: {e}");
                return Exit::Usage;
            }
            match deliverer(
                url,
                PROVISION_STARTED_PATH,
                args.token_file.clone(),
                args.ca_file.as_deref(),
                args.timeout,
            ) {
                Ok(d) => Some((d, started)),
                Err(exit) => return exit,
            }
        }
    };
    let checked = match &args.path {
        None => {
            info!("provision probe started");
            Exit::Success
        }
        Some(path) => match write_check(path) {
            Ok(()) => {
                info!(path = %path.display(), "provision probe wrote, synced and read back a file");
                Exit::Success
            }
            Err(e) => {
                error!("provision probe failed: {e}");
                Exit::ProbeFailed
            }
        },
    };
    let Some((deliverer, started)) = report else {
        return checked;
    };
    match deliverer.deliver(&started).await {
        Ok(_) => {
            info!("the controller counted this provision probe");
            checked
        }
        Err(e) => {
            error!("{e}");
            Exit::NotDelivered
        }
    }
}

/// The process's peak resident set size (`VmHWM` in `/proc/self/status`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_read() {
        let kib = peak_rss_kib().unwrap();
        assert!(kib > 100 && kib < 10 * 1024 * 1024, "{kib}");
    }

    #[test]
    fn exit_codes_match_the_help_text() {
        for (exit, code) in [
            (Exit::Success, 0),
            (Exit::ProbeFailed, 1),
            (Exit::Usage, 2),
            (Exit::NotDelivered, 3),
        ] {
            assert_eq!(exit as u8, code);
            assert!(crate::cli::EXIT_CODES.contains(&format!("  {code}  ")));
        }
    }
}
