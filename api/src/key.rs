//! The probe key: which mount probe a result, a probe Pod or a series is about.

use std::fmt;

/// A mount probe: the (PieProbe, node, StorageClass) a result is about. Results, the probe
/// Pod's identity and the receiver's list of managed probes are all compared by this key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeKey {
    /// PieProbe name.
    pub pie_probe_name: String,
    /// Node name.
    pub node: String,
    /// StorageClass name.
    pub storage_class: String,
}

impl ProbeKey {
    /// The key of PieProbe `pie_probe_name`'s mount probe on `node` for `storage_class`.
    pub fn new(pie_probe_name: &str, node: &str, storage_class: &str) -> ProbeKey {
        ProbeKey {
            pie_probe_name: pie_probe_name.to_owned(),
            node: node.to_owned(),
            storage_class: storage_class.to_owned(),
        }
    }
}

impl fmt::Display for ProbeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pie_probe_name={} node={} storage_class={}",
            self.pie_probe_name, self.node, self.storage_class
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_labels() {
        assert_eq!(
            ProbeKey::new("p", "n", "sc").to_string(),
            "pie_probe_name=p node=n storage_class=sc"
        );
    }
}
