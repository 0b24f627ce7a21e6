//! The results JSON as the controller's receiver reads it: arbitrary bytes parsed as a
//! `ProbeResult` never panic, and a result that passes `validate` has names that are DNS
//! subdomains and finite numbers, and comes back from a JSON round trip identical, every float
//! bit for bit (serde_json's `float_roundtrip`). Besides the raw input, a well-formed result
//! object is built from it (names from its words, numbers from its bytes) so validation itself
//! is reached often.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pie_api::ProbeResult;
use pie_api::result::validate_dns_subdomain;

fn check(r: &ProbeResult) {
    if r.validate().is_err() {
        return;
    }
    for (field, name) in [
        ("pie_probe_name", &r.pie_probe_name),
        ("node", &r.node),
        ("storage_class", &r.storage_class),
    ] {
        assert!(validate_dns_subdomain(field, name).is_ok(), "{r:?}");
        assert!(!name.is_empty() && name.is_ascii(), "{r:?}");
    }
    for v in [r.write_latency, r.read_latency] {
        assert!(v.is_finite() && v >= 0.0, "{r:?}");
    }
    let json = serde_json::to_string(r).expect("a valid result serializes");
    let again: ProbeResult = serde_json::from_str(&json).expect("and parses again");
    assert!(again.validate().is_ok(), "{json}");
    assert_eq!(&again, r, "{json}");
}

/// Splits `data` into short strings at 0xff bytes.
fn words(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xff)
        .map(|w| String::from_utf8_lossy(&w[..w.len().min(300)]).into_owned())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<ProbeResult>(data) {
        check(&r);
    }
    let w = words(data);
    let word = |i: usize| w.get(i).cloned().unwrap_or_default();
    let number = |i: usize| {
        let bytes: [u8; 8] = data
            .get(i * 8..i * 8 + 8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 8]);
        let v = f64::from_le_bytes(bytes);
        // JSON has no NaN or infinities; serde_json writes them as null.
        if v.is_finite() {
            serde_json::json!(v)
        } else {
            serde_json::Value::Null
        }
    };
    let mut object = serde_json::json!({
        "pie_probe_name": word(0),
        "node": word(1),
        "storage_class": word(2),
        "write_latency": number(0),
        "read_latency": number(1),
        "performance_probe_succeed": data.first().is_some_and(|b| b & 1 == 1),
        "read_iops": number(2),
        "write_latency_p99": number(3),
    });
    if data.len() % 3 == 0 {
        object["error"] = serde_json::json!(word(3));
    }
    if let Ok(r) = serde_json::from_value::<ProbeResult>(object) {
        check(&r);
    }
});
