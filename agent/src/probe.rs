//! The mount probe: check the mounted volume's directory, run fio, turn the outcome into a
//! [`ProbeResult`]. A failure is a result too; nothing here returns an error.

use std::time::Instant;

use tracing::{info, warn};

use crate::fio::{self, FioJob, Measurement};
use pie_api::ProbeResult;

/// Who the result is for: the names the controller files it under.
#[derive(Debug, Clone)]
pub struct ProbeIdentity {
    /// Name of the PieProbe.
    pub pie_probe_name: String,
    /// Node the probe runs on.
    pub node: String,
    /// Storage class of the probed volume.
    pub storage_class: String,
}

/// Runs the I/O probe described by `job` and returns its result, successful or not.
pub async fn mount_probe(identity: &ProbeIdentity, job: &FioJob) -> ProbeResult {
    let started = Instant::now();
    let outcome = run(job).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut result = match outcome {
        Ok(m) => {
            info!(
                read_latency = m.read.mean_latency,
                write_latency = m.write.mean_latency,
                read_iops = m.read.iops,
                write_iops = m.write.iops,
                seconds = elapsed,
                "I/O probe succeeded"
            );
            success(identity, &m)
        }
        Err(error) => {
            warn!(%error, seconds = elapsed, "I/O probe failed");
            ProbeResult::failure(
                &identity.pie_probe_name,
                &identity.node,
                &identity.storage_class,
                error,
            )
        }
    };
    result.probe_duration_seconds = Some(elapsed);
    result
}

async fn run(job: &FioJob) -> Result<Measurement, String> {
    fio::check_dir(&job.dir).map_err(|e| e.to_string())?;
    info!(path = %job.dir.display(), fio = %job.fio.display(), size = %job.size, runtime = ?job.runtime, "running fio");
    job.run().await.map_err(|e| e.to_string())
}

fn success(identity: &ProbeIdentity, m: &Measurement) -> ProbeResult {
    ProbeResult {
        pie_probe_name: identity.pie_probe_name.clone(),
        node: identity.node.clone(),
        storage_class: identity.storage_class.clone(),
        write_latency: m.write.mean_latency,
        read_latency: m.read.mean_latency,
        performance_probe_succeed: true,
        read_iops: Some(m.read.iops),
        write_iops: Some(m.write.iops),
        read_bytes_per_second: Some(m.read.bytes_per_second),
        write_bytes_per_second: Some(m.write.bytes_per_second),
        read_latency_p99: m.read.p99_latency,
        write_latency_p99: m.write.p99_latency,
        error: None,
        probe_duration_seconds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn identity() -> ProbeIdentity {
        ProbeIdentity {
            pie_probe_name: "p".into(),
            node: "n".into(),
            storage_class: "s".into(),
        }
    }

    fn job(dir: &std::path::Path) -> FioJob {
        FioJob {
            fio: "fio".into(),
            dir: dir.to_owned(),
            size: "2M".into(),
            runtime: Duration::from_secs(1),
            budget: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn success_fills_every_field() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let r = mount_probe(&identity(), &job(tmp.path())).await;
        assert!(r.performance_probe_succeed, "{r:?}");
        assert_eq!(r.error, None);
        assert!(r.read_latency > 0.0 && r.write_latency > 0.0, "{r:?}");
        for v in [
            r.read_iops,
            r.write_iops,
            r.read_bytes_per_second,
            r.write_bytes_per_second,
            r.read_latency_p99,
            r.write_latency_p99,
            r.probe_duration_seconds,
        ] {
            assert!(v.is_some_and(|v| v > 0.0), "{r:?}");
        }
        assert_eq!(r.validate(), Ok(()));
    }

    #[tokio::test]
    async fn a_missing_directory_is_not_created() {
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let missing = tmp.path().join("mounted");
        let r = mount_probe(&identity(), &job(&missing)).await;
        assert!(!r.performance_probe_succeed);
        assert!(
            r.error.as_deref().unwrap().contains("does not exist"),
            "{r:?}"
        );
        assert!(!missing.exists());
        assert!(r.probe_duration_seconds.is_some());
    }
}
