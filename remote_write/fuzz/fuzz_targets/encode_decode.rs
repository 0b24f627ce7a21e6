//! Remote-write encoding round trip: series and samples built from arbitrary bytes (the
//! invalid label sets are rejected by `Series`), encoded and snappy-compressed by
//! `RequestEncoder`, decode with the generated prost types to exactly the same labels, values
//! (bit for bit) and timestamps, in order. Arbitrary bytes given to the decoder never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use remote_write::{ExternalLabels, PreparedSample, RequestEncoder, Sample, Series};

/// Splits `data` into short strings at 0xff bytes.
fn words(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xff)
        .map(|w| String::from_utf8_lossy(&w[..w.len().min(40)]).into_owned())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let _ = remote_write::decode_write_request(data);

    // Layout: [n series words...] 0xfe [samples: 1 byte series index, 8 value, 8 timestamp]*
    let (head, tail) = match data.iter().position(|b| *b == 0xfe) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let words = words(head);
    let mut series = Vec::new();
    for chunk in words.chunks(5) {
        let labels: Vec<(&str, &str)> = chunk[1..]
            .chunks(2)
            .filter(|kv| kv.len() == 2)
            .map(|kv| (kv[0].as_str(), kv[1].as_str()))
            .collect();
        if let Ok(s) = Series::new(&chunk[0], labels) {
            series.push(s);
        }
    }
    if series.is_empty() {
        return;
    }
    let external = ExternalLabels::default();
    let mut prepared = Vec::new();
    let mut expected = Vec::new();
    for rec in tail.chunks_exact(17) {
        let s = &series[rec[0] as usize % series.len()];
        let value = f64::from_bits(u64::from_le_bytes(rec[1..9].try_into().unwrap()));
        let ts = i64::from_le_bytes(rec[9..17].try_into().unwrap());
        prepared.push(PreparedSample::new(s, &external, Sample::new(value, ts)));
        let labels: Vec<(String, String)> = s
            .labels()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        expected.push((labels, value.to_bits(), ts));
    }
    let mut encoder = RequestEncoder::new();
    let request = encoder.encode(&prepared);
    assert!(
        prepared
            .iter()
            .map(PreparedSample::estimated_len)
            .sum::<usize>()
            >= request.raw_len
    );
    let decoded = remote_write::decode_write_request(request.body).expect("our own body decodes");
    let mut got = Vec::new();
    for ts in &decoded.timeseries {
        let labels: Vec<(String, String)> = ts
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect();
        assert!(
            labels.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique names"
        );
        for s in &ts.samples {
            got.push((labels.clone(), s.value.to_bits(), s.timestamp));
        }
    }
    assert_eq!(got, expected);
});
