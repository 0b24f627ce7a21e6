//! Leader election on a coordination.k8s.io Lease (kube-lease-manager).

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// Name of the Lease the replicas compete for.
pub const LEASE_NAME: &str = "pie-controller";
/// Lease duration in seconds; a dead leader is replaced within about this long.
pub const LEASE_DURATION_SECONDS: u64 = 15;

/// Starts competing for the Lease `LEASE_NAME` in `namespace` as `identity` (the Pod name).
/// The receiver tells whether this replica leads now; dropping it releases the Lease.
pub async fn elect(
    client: Client,
    namespace: &str,
    identity: &str,
) -> Result<watch::Receiver<bool>, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(5)
        .with_field_manager("pie-controller")
        .build()
        .await?;
    let (leading, _task) = manager.watch().await;
    Ok(leading)
}
