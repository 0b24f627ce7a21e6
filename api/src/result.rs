//! The probe result a mount probe posts to the controller.
//!
//! This is the wire type shared by the agent (which sends it) and the controller's receiver (which
//! imports it from here). It is a superset of topolvm/pie's JSON: pie's six fields are required,
//! every field added by this project is optional and left out of the JSON when absent, so the
//! receiver accepts results from pie's own probe and pie-agent, and unknown fields are ignored.

use serde::{Deserialize, Serialize};

/// Longest `error` string [`ProbeResult::validate`] accepts, in bytes.
pub const MAX_ERROR_LEN: usize = 1024;

/// Longest Kubernetes DNS subdomain name (RFC 1123), in bytes.
pub const MAX_DNS_SUBDOMAIN_LEN: usize = 253;

/// The outcome of one mount probe on one node for one storage class.
///
/// Latencies are in seconds, bandwidth in bytes per second. On failure the latencies are `0.0`
/// (pie's fields are not optional) and `error` says what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Name of the PieProbe this probe belongs to.
    pub pie_probe_name: String,
    /// Node the probe ran on.
    pub node: String,
    /// Storage class of the probed volume.
    pub storage_class: String,
    /// Mean write latency (fio's `lat_ns.mean`), seconds.
    pub write_latency: f64,
    /// Mean read latency (fio's `lat_ns.mean`), seconds.
    pub read_latency: f64,
    /// Whether the I/O probe ran to completion and the data read back matched.
    pub performance_probe_succeed: bool,
    /// Read operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops: Option<f64>,
    /// Write operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops: Option<f64>,
    /// Read bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bytes_per_second: Option<f64>,
    /// Write bandwidth, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bytes_per_second: Option<f64>,
    /// 99th percentile read completion latency (fio's `clat_ns` percentile 99), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_latency_p99: Option<f64>,
    /// 99th percentile write completion latency (fio's `clat_ns` percentile 99), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_latency_p99: Option<f64>,
    /// Why the probe failed; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time of the whole I/O probe (path check, fio, integrity check, clean-up), seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_duration_seconds: Option<f64>,
}

/// Why a [`ProbeResult`] is not acceptable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// A name field is not a Kubernetes DNS subdomain name.
    #[error("{field} {value:?} is not a valid Kubernetes name: {reason}")]
    InvalidName {
        /// The JSON field name.
        field: &'static str,
        /// The offending value, cut to 64 characters.
        value: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A number is NaN, infinite or negative.
    #[error("{field} must be a finite number >= 0, got {value}")]
    InvalidNumber {
        /// The JSON field name.
        field: &'static str,
        /// The offending value.
        value: f64,
    },
    /// The error string is too long.
    #[error("error is {len} bytes long, at most {MAX_ERROR_LEN} are allowed")]
    ErrorTooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl ProbeResult {
    /// A failed probe result: zero latencies, no measurements, `error` set (cut to
    /// [`MAX_ERROR_LEN`] bytes on a character boundary).
    pub fn failure(
        pie_probe_name: &str,
        node: &str,
        storage_class: &str,
        error: impl Into<String>,
    ) -> Self {
        let mut error = error.into();
        truncate_on_char_boundary(&mut error, MAX_ERROR_LEN);
        Self {
            pie_probe_name: pie_probe_name.to_owned(),
            node: node.to_owned(),
            storage_class: storage_class.to_owned(),
            write_latency: 0.0,
            read_latency: 0.0,
            performance_probe_succeed: false,
            read_iops: None,
            write_iops: None,
            read_bytes_per_second: None,
            write_bytes_per_second: None,
            read_latency_p99: None,
            write_latency_p99: None,
            error: Some(error),
            probe_duration_seconds: None,
        }
    }

    /// Checks what the receiver relies on: names are Kubernetes DNS subdomain names, every
    /// number is finite and not negative, and `error` is at most [`MAX_ERROR_LEN`] bytes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_dns_subdomain("pie_probe_name", &self.pie_probe_name)?;
        validate_dns_subdomain("node", &self.node)?;
        validate_dns_subdomain("storage_class", &self.storage_class)?;
        let numbers = [
            ("write_latency", Some(self.write_latency)),
            ("read_latency", Some(self.read_latency)),
            ("read_iops", self.read_iops),
            ("write_iops", self.write_iops),
            ("read_bytes_per_second", self.read_bytes_per_second),
            ("write_bytes_per_second", self.write_bytes_per_second),
            ("read_latency_p99", self.read_latency_p99),
            ("write_latency_p99", self.write_latency_p99),
            ("probe_duration_seconds", self.probe_duration_seconds),
        ];
        for (field, value) in numbers {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(ValidationError::InvalidNumber { field, value });
            }
        }
        if let Some(error) = &self.error
            && error.len() > MAX_ERROR_LEN
        {
            return Err(ValidationError::ErrorTooLong { len: error.len() });
        }
        Ok(())
    }
}

/// Checks that `value` is a Kubernetes DNS subdomain name (RFC 1123): at most 253 bytes,
/// dot-separated labels of lower-case letters, digits and `-`, each starting and ending with a
/// letter or digit. `field` names the value in the error.
pub fn validate_dns_subdomain(field: &'static str, value: &str) -> Result<(), ValidationError> {
    let invalid = |reason| ValidationError::InvalidName {
        field,
        value: value.chars().take(64).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > MAX_DNS_SUBDOMAIN_LEN {
        return Err(invalid("must be at most 253 characters"));
    }
    for label in value.split('.') {
        if label.is_empty() {
            return Err(invalid("must not have empty dot-separated parts"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "must consist of lower case letters, digits, '-' and '.'",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("must start and end with a letter or digit"));
        }
    }
    Ok(())
}

fn truncate_on_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_result() -> ProbeResult {
        ProbeResult {
            pie_probe_name: "test-pie-probe".into(),
            node: "worker-1.example.com".into(),
            storage_class: "topolvm-provisioner".into(),
            write_latency: 0.000_4,
            read_latency: 0.000_3,
            performance_probe_succeed: true,
            read_iops: Some(1200.5),
            write_iops: Some(1100.0),
            read_bytes_per_second: Some(4_917_248.0),
            write_bytes_per_second: Some(4_505_600.0),
            read_latency_p99: Some(0.002),
            write_latency_p99: Some(0.003),
            error: None,
            probe_duration_seconds: Some(1.25),
        }
    }

    #[test]
    fn pies_original_json_deserializes_with_new_fields_absent() {
        let pie = r#"{"pie_probe_name":"test-pie-probe","node":"node1","storage_class":"sc",
            "write_latency":0.00123,"read_latency":0.000456,"performance_probe_succeed":true}"#;
        let r: ProbeResult = serde_json::from_str(pie).unwrap();
        assert_eq!(r.pie_probe_name, "test-pie-probe");
        assert_eq!(r.node, "node1");
        assert_eq!(r.storage_class, "sc");
        assert_eq!(r.write_latency, 0.00123);
        assert_eq!(r.read_latency, 0.000456);
        assert!(r.performance_probe_succeed);
        assert_eq!(r.read_iops, None);
        assert_eq!(r.error, None);
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let json = r#"{"pie_probe_name":"p","node":"n","storage_class":"s","write_latency":0,
            "read_latency":0,"performance_probe_succeed":false,"from_the_future":1}"#;
        let r: ProbeResult = serde_json::from_str(json).unwrap();
        assert!(!r.performance_probe_succeed);
    }

    #[test]
    fn a_missing_pie_field_is_rejected() {
        let json = r#"{"pie_probe_name":"p","node":"n","storage_class":"s","write_latency":0,
            "performance_probe_succeed":false}"#;
        let err = serde_json::from_str::<ProbeResult>(json).unwrap_err();
        assert!(err.to_string().contains("read_latency"), "{err}");
    }

    /// The receiver turns these numbers into samples: a 17-digit value must arrive as the
    /// double it names (the correctly rounded one, as Rust's own parser gives it), not one ulp
    /// off as serde_json's default fast parser gives some of them.
    #[test]
    fn floats_parse_bit_for_bit() {
        for text in [
            "0.0010040000000000001",
            "0.30000000000000004",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "123456.78901234567",
            "5e-324",
        ] {
            let json = format!(
                r#"{{"pie_probe_name":"p","node":"n","storage_class":"s","write_latency":{text},
                "read_latency":0,"performance_probe_succeed":true}}"#
            );
            let r: ProbeResult = serde_json::from_str(&json).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(r.write_latency.to_bits(), want.to_bits(), "{text}");
            let again: ProbeResult =
                serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(again.write_latency.to_bits(), want.to_bits(), "{text}");
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let r = ok_result();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ProbeResult>(&json).unwrap(), r);
        let mut failed = ProbeResult::failure("p", "n", "s", "fio not found");
        failed.probe_duration_seconds = Some(0.5);
        let json = serde_json::to_string(&failed).unwrap();
        assert_eq!(serde_json::from_str::<ProbeResult>(&json).unwrap(), failed);
    }

    #[test]
    fn absent_options_are_not_serialized() {
        let json = serde_json::to_value(ProbeResult::failure("p", "n", "s", "boom")).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "error",
                "node",
                "performance_probe_succeed",
                "pie_probe_name",
                "read_latency",
                "storage_class",
                "write_latency"
            ]
        );
    }

    #[test]
    fn failure_cuts_long_errors_on_a_char_boundary() {
        let r = ProbeResult::failure("p", "n", "s", "é".repeat(MAX_ERROR_LEN));
        let error = r.error.as_deref().unwrap();
        assert!(error.len() <= MAX_ERROR_LEN && error.len() >= MAX_ERROR_LEN - 1);
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn validate_accepts_a_good_result() {
        assert_eq!(ok_result().validate(), Ok(()));
        let mut long = ok_result();
        long.node = format!("{}.{}", "a".repeat(63), "b".repeat(189));
        assert_eq!(long.node.len(), 253);
        assert_eq!(long.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_inputs() {
        type Mutation = fn(&mut ProbeResult);
        let cases: &[(&str, Mutation, &str)] = &[
            ("empty node", |r| r.node.clear(), "node"),
            ("upper case node", |r| r.node = "Worker-1".into(), "node"),
            ("node too long", |r| r.node = "a".repeat(254), "at most 253"),
            ("leading dash", |r| r.node = "-a".into(), "start and end"),
            (
                "trailing dash in label",
                |r| r.node = "a-.b".into(),
                "start and end",
            ),
            ("empty label", |r| r.node = "a..b".into(), "empty"),
            (
                "underscore",
                |r| r.storage_class = "a_b".into(),
                "storage_class",
            ),
            (
                "slash",
                |r| r.pie_probe_name = "a/b".into(),
                "pie_probe_name",
            ),
            (
                "NaN latency",
                |r| r.write_latency = f64::NAN,
                "write_latency",
            ),
            (
                "negative latency",
                |r| r.read_latency = -1.0,
                "read_latency",
            ),
            (
                "infinite latency",
                |r| r.read_latency = f64::INFINITY,
                "read_latency",
            ),
            ("negative iops", |r| r.read_iops = Some(-0.5), "read_iops"),
            (
                "NaN p99",
                |r| r.write_latency_p99 = Some(f64::NAN),
                "write_latency_p99",
            ),
            (
                "NaN bandwidth",
                |r| r.write_bytes_per_second = Some(f64::NAN),
                "write_bytes",
            ),
            (
                "negative duration",
                |r| r.probe_duration_seconds = Some(-2.0),
                "probe_duration",
            ),
            (
                "long error",
                |r| r.error = Some("x".repeat(MAX_ERROR_LEN + 1)),
                "1025 bytes",
            ),
        ];
        for (name, mutate, expected) in cases {
            let mut r = ok_result();
            mutate(&mut r);
            let err = r.validate().expect_err(name);
            assert!(err.to_string().contains(expected), "{name}: {err}");
        }
    }
}
