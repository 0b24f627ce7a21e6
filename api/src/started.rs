//! What a provision probe reports once its Pod runs, and the paths of the controller's API.
//!
//! A probe Pod ends only once the controller has counted its outcome: a mount probe by
//! delivering its result, a provision probe by reporting [`ProvisionStarted`] and waiting for
//! the answer. The controller answers 200 once the Pod's outcome is counted and 503 until then
//! (also while no replica leads), so a Pod that runs while the controller restarts or the
//! Lease moves lives until the new leader has counted it, instead of finishing unseen.

use serde::{Deserialize, Serialize};

use crate::result::{ValidationError, validate_dns_subdomain};

/// Where a mount probe posts its [`crate::ProbeResult`], relative to the controller URL.
pub const RESULTS_PATH: &str = "/api/v1/results";
/// Where a provision probe posts [`ProvisionStarted`], relative to the controller URL.
pub const PROVISION_STARTED_PATH: &str = "/api/v1/provision-started";

/// A provision probe's Pod reports that it runs. The Pod itself is named by the token it
/// presents; the body says which PieProbe and StorageClass it believes it probes, which must
/// match the Pod's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionStarted {
    /// Name of the PieProbe.
    pub pie_probe_name: String,
    /// StorageClass of the ephemeral volume.
    pub storage_class: String,
}

impl ProvisionStarted {
    /// Checks that both names are Kubernetes DNS subdomain names.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_dns_subdomain("pie_probe_name", &self.pie_probe_name)?;
        validate_dns_subdomain("storage_class", &self.storage_class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let started = ProvisionStarted {
            pie_probe_name: "p".into(),
            storage_class: "topolvm-provisioner".into(),
        };
        let json = serde_json::to_string(&started).unwrap();
        assert_eq!(
            json,
            r#"{"pie_probe_name":"p","storage_class":"topolvm-provisioner"}"#
        );
        assert_eq!(
            serde_json::from_str::<ProvisionStarted>(&json).unwrap(),
            started
        );
        started.validate().unwrap();
        let bad = ProvisionStarted {
            storage_class: "Not_A_Name".into(),
            ..started
        };
        assert!(matches!(
            bad.validate(),
            Err(ValidationError::InvalidName {
                field: "storage_class",
                ..
            })
        ));
    }
}
