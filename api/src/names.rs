//! Object names and CronJob schedules, byte-for-byte as topolvm/pie computes them, so a migration
//! from pie adopts the existing objects instead of duplicating them. Probe Pods are named after
//! their CronJob, ephemeral PVCs after their Pod, so the prefixes below recognise all of them.

use sha1::{Digest, Sha1};

/// This module's source: the controller hashes it into every desired-object hash, so a change
/// to how objects are named re-applies them.
pub const SOURCE: &str = include_str!("names.rs");

/// The first `n` bytes of `s` (pie's `s[:n]`), shortened to a character boundary for non-ASCII.
fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// First 6 hex characters of sha1(`probe \0 node \0 storage_class`); `node` is "" for provision.
pub fn h6(probe: &str, node: &str, storage_class: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(probe.as_bytes());
    hasher.update([0]);
    hasher.update(node.as_bytes());
    hasher.update([0]);
    hasher.update(storage_class.as_bytes());
    let digest = hasher.finalize();
    digest[..3].iter().map(|b| format!("{b:02x}")).collect()
}

/// Prefix of provision probe CronJobs, and so of their Jobs, Pods and ephemeral PVCs.
pub const PROVISION_PREFIX: &str = "provision-";
/// Prefix of mount probe CronJobs, Jobs and Pods.
pub const MOUNT_PREFIX: &str = "mount-";
/// Prefix of mount probe PVCs.
pub const PVC_PREFIX: &str = "pie-pvc-";

/// Whether an object of `kind` called `name` can be a probe Pod or probe PVC.
pub fn is_probe_object(kind: &str, name: &str) -> bool {
    let probe_pod = name.starts_with(PROVISION_PREFIX) || name.starts_with(MOUNT_PREFIX);
    match kind {
        "Pod" => probe_pod,
        "PersistentVolumeClaim" => probe_pod || name.starts_with(PVC_PREFIX),
        _ => false,
    }
}

/// `provision-<probe[:10]>-<sc[:12]>-<h6>`.
pub fn provision_cronjob(probe: &str, storage_class: &str) -> String {
    format!(
        "{PROVISION_PREFIX}{}-{}-{}",
        prefix(probe, 10),
        prefix(storage_class, 12),
        h6(probe, "", storage_class)
    )
}

/// `mount-<probe[:10]>-<node[:15]>-<sc[:12]>-<h6>`.
pub fn mount_cronjob(probe: &str, node: &str, storage_class: &str) -> String {
    format!(
        "{MOUNT_PREFIX}{}-{}-{}-{}",
        prefix(probe, 10),
        prefix(node, 15),
        prefix(storage_class, 12),
        h6(probe, node, storage_class)
    )
}

/// `pie-pvc-<probe[:10]>-<node[:11]>-<sc[:14]>-<h6>`.
pub fn pvc(probe: &str, node: &str, storage_class: &str) -> String {
    format!(
        "{PVC_PREFIX}{}-{}-{}-{}",
        prefix(probe, 10),
        prefix(node, 11),
        prefix(storage_class, 14),
        h6(probe, node, storage_class)
    )
}

/// `"<crc32(probe+sc+node) % period>-59/<period> * * * *"`: spreads probes over the period.
/// `node` is "" for provision; `period_minutes` must be 1..=59.
pub fn schedule(probe: &str, storage_class: &str, node: &str, period_minutes: u32) -> String {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(probe.as_bytes());
    hasher.update(storage_class.as_bytes());
    hasher.update(node.as_bytes());
    let period = period_minutes.max(1);
    format!("{}-59/{} * * * *", hasher.finalize() % period, period)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent computation of the same rules with plain library calls (no shared helpers).
    fn reference_h6(probe: &str, node: &str, sc: &str) -> String {
        let digest = Sha1::digest(format!("{probe}\0{node}\0{sc}").as_bytes());
        format!("{digest:x}")[..6].to_owned()
    }

    #[test]
    fn probe_objects_are_recognised_by_their_name() {
        let provision = provision_cronjob("p", "sc");
        let mount = mount_cronjob("p", "n", "sc");
        let pvc = pvc("p", "n", "sc");
        for (kind, name, want) in [
            ("Pod", format!("{provision}-29000000-abcde"), true),
            ("Pod", format!("{mount}-29000000-abcde"), true),
            ("Pod", pvc.clone(), false),
            (
                "PersistentVolumeClaim",
                format!("{provision}-x-probe"),
                true,
            ),
            ("PersistentVolumeClaim", pvc, true),
            ("PersistentVolumeClaim", "data-postgres-0".into(), false),
            ("Pod", "postgres-0".into(), false),
            ("Node", mount, false),
        ] {
            assert_eq!(is_probe_object(kind, &name), want, "{kind} {name}");
        }
    }

    #[test]
    fn h6_known_vectors() {
        // Computed independently with `printf '\0\0' | sha1sum` and `printf 'p\0\0sc' | sha1sum`.
        assert_eq!(h6("", "", ""), "1489f9");
        assert_eq!(h6("p", "", "sc"), "78ea1d");
        assert_eq!(h6("p", "", "sc"), reference_h6("p", "", "sc"));
    }

    #[test]
    fn names_table() {
        struct Case {
            probe: &'static str,
            node: &'static str,
            sc: &'static str,
            provision: &'static str,
            mount: &'static str,
            pvc: &'static str,
        }
        let cases = [
            Case {
                probe: "pp",
                node: "n1",
                sc: "sc",
                provision: "provision-pp-sc-",
                mount: "mount-pp-n1-sc-",
                pvc: "pie-pvc-pp-n1-sc-",
            },
            Case {
                probe: "test-pie-probe",
                node: "worker-node-0001.example.com",
                sc: "topolvm-provisioner",
                provision: "provision-test-pie-p-topolvm-prov-",
                mount: "mount-test-pie-p-worker-node-000-topolvm-prov-",
                pvc: "pie-pvc-test-pie-p-worker-node-topolvm-provis-",
            },
            Case {
                probe: "a",
                node: "10.0.123.45",
                sc: "standard",
                provision: "provision-a-standard-",
                mount: "mount-a-10.0.123.45-standard-",
                pvc: "pie-pvc-a-10.0.123.45-standard-",
            },
            Case {
                probe: "exactlyten",
                node: "exactly-15-char",
                sc: "twelve-chars",
                provision: "provision-exactlyten-twelve-chars-",
                mount: "mount-exactlyten-exactly-15-char-twelve-chars-",
                // node[:11] ends in "-": pie leaves the double dash, and so do we.
                pvc: "pie-pvc-exactlyten-exactly-15--twelve-chars-",
            },
        ];
        for c in cases {
            let ph = reference_h6(c.probe, "", c.sc);
            let mh = reference_h6(c.probe, c.node, c.sc);
            assert_eq!(
                provision_cronjob(c.probe, c.sc),
                format!("{}{ph}", c.provision)
            );
            assert_eq!(
                mount_cronjob(c.probe, c.node, c.sc),
                format!("{}{mh}", c.mount)
            );
            assert_eq!(pvc(c.probe, c.node, c.sc), format!("{}{mh}", c.pvc));
            // CronJob names must stay within 52 characters, PVC names within 63.
            assert!(mount_cronjob(c.probe, c.node, c.sc).len() <= 52);
            assert!(provision_cronjob(c.probe, c.sc).len() <= 52);
            assert!(pvc(c.probe, c.node, c.sc).len() <= 63);
        }
    }

    #[test]
    fn long_names_hit_the_length_limits_exactly() {
        let long = "x".repeat(253);
        assert_eq!(mount_cronjob(&long, &long, &long).len(), 52);
        assert_eq!(
            provision_cronjob(&long, &long).len(),
            10 + 10 + 1 + 12 + 1 + 6
        );
        assert_eq!(
            pvc(&long, &long, &long).len(),
            8 + 10 + 1 + 11 + 1 + 14 + 1 + 6
        );
    }

    #[test]
    fn node_only_differs_after_the_prefix_still_gets_distinct_names() {
        let a = mount_cronjob("probe", "worker-node-000000001", "sc");
        let b = mount_cronjob("probe", "worker-node-000000002", "sc");
        assert_ne!(a, b);
        assert_eq!(a[..a.len() - 6], b[..b.len() - 6]);
    }

    #[test]
    fn schedule_table() {
        let crc = |s: &str| crc32fast::hash(s.as_bytes());
        for (probe, sc, node, period) in [
            ("pp", "sc", "", 1),
            ("pp", "sc", "n1", 7),
            ("test-pie-probe", "topolvm-provisioner", "10.0.0.1", 59),
            ("test-pie-probe", "topolvm-provisioner", "", 59),
            ("x", "y", "worker-1", 5),
        ] {
            let c = crc(&format!("{probe}{sc}{node}"));
            assert_eq!(
                schedule(probe, sc, node, period),
                format!("{}-59/{period} * * * *", c % period)
            );
        }
        assert_eq!(schedule("a", "b", "c", 1), "0-59/1 * * * *");
        // crc32("") = 0, so the offset is 0 for any period.
        assert_eq!(schedule("", "", "", 59), "0-59/59 * * * *");
        // crc32("123456789") = 0xCBF43926 = 3421780262; 3421780262 % 7 = 5.
        assert_eq!(schedule("123", "456", "789", 7), "5-59/7 * * * *");
    }

    #[test]
    fn prefix_respects_char_boundaries() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("abc", 10), "abc");
    }
}
