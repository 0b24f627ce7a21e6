//! Labels and annotations on probe objects. The first three are topolvm/pie's and select the
//! objects a migration adopts; the controller recognises its probe Pods and PVCs by the rest.

/// This module's source: the controller hashes it into every desired-object hash, so a change
/// to how objects are labelled re-applies them.
pub const SOURCE: &str = include_str!("labels.rs");

/// Label with the StorageClass name (pie's).
pub const LABEL_STORAGE_CLASS: &str = "storage-class";
/// Label with the PieProbe name (pie's).
pub const LABEL_PIE_PROBE: &str = "pie-probe";
/// Label with the node name, on mount probes only (pie's).
pub const LABEL_NODE: &str = "node";
/// `app.kubernetes.io/managed-by`, value [`MANAGER`].
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/component`: [`COMPONENT_PROVISION`] or [`COMPONENT_MOUNT`].
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Value of [`LABEL_MANAGED_BY`], and the server-side apply field manager.
pub const MANAGER: &str = "pie-controller";
/// Component of provision probe objects.
pub const COMPONENT_PROVISION: &str = "provision-probe";
/// Component of mount probe objects.
pub const COMPONENT_MOUNT: &str = "mount-probe";
/// Annotation holding a hash of the desired object, so an unchanged object is not re-applied.
pub const ANNOTATION_DESIRED_HASH: &str = "pie.topolvm.io/desired-hash";
/// Annotation marking a probe Pod whose outcome was counted (value `"true"`). A Pod carrying it
/// is never counted again, also after a restart.
pub const ANNOTATION_COUNTED: &str = "pie.topolvm.io/counted";
/// Name of the probe container (pie's).
pub const CONTAINER_NAME: &str = "probe";
/// Audience of the probe Pod's projected token, checked by the controller's receiver.
pub const TOKEN_AUDIENCE: &str = "pie-controller";
