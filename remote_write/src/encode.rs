//! Building request bodies: a `WriteRequest` in protobuf, compressed with the snappy block format.
//!
//! Labels are pre-encoded once per [`Series`] (merged with the external labels once, too), and
//! queued samples point at those bytes, so encoding a request is mostly copying bytes.
//! Consecutive samples of the same series share one `TimeSeries`; samples of a series that
//! appear further apart get a `TimeSeries` each, in order, as Prometheus' own sender does.
//! Tests decode real bodies with the generated prost types instead of trusting this encoder.

use std::sync::Arc;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::proto;
use crate::series::{ExternalLabels, Sample, Series};

/// Encoded length of one `Sample` message: a fixed64 double and a varint int64, both always
/// written (explicit zero values are valid proto3 and keep `-0.0` intact).
fn sample_len(sample: &Sample) -> usize {
    1 + 8 + 1 + encoded_len_varint(sample.timestamp_ms as u64)
}

fn write_sample(sample: &Sample, out: &mut Vec<u8>) {
    // TimeSeries.samples = 2, LEN.
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(sample_len(sample) as u64, out);
    // Sample.value = 1, fixed64 (double).
    encode_key(1, WireType::SixtyFourBit, out);
    out.extend_from_slice(&sample.value.to_bits().to_le_bytes());
    // Sample.timestamp = 2, varint (int64: two's complement as u64).
    encode_key(2, WireType::Varint, out);
    encode_varint(sample.timestamp_ms as u64, out);
}

/// A sample ready to be encoded: the protobuf label entries of its series (merged with the
/// client's external labels) and the sample. Samples of one series share the label bytes.
#[derive(Clone)]
pub struct PreparedSample {
    labels: Arc<[u8]>,
    /// The sample.
    pub sample: Sample,
}

impl PreparedSample {
    /// Prepares `sample` of `series` for a client with `external` labels.
    pub fn new(series: &Series, external: &ExternalLabels, sample: Sample) -> PreparedSample {
        PreparedSample {
            labels: external.merged(series),
            sample,
        }
    }

    /// An upper bound of the protobuf bytes this sample adds to a request: its labels, one
    /// sample (at most 21 bytes with key and length) and the `TimeSeries` framing (at most 12).
    pub fn estimated_len(&self) -> usize {
        self.labels.len() + 21 + 12
    }
}

impl std::fmt::Debug for PreparedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSample")
            .field("label_bytes", &self.labels.len())
            .field("sample", &self.sample)
            .finish()
    }
}

/// Appends the protobuf encoding of a `WriteRequest` holding `entries` (in order) to `out`.
pub fn encode_write_request(entries: &[PreparedSample], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < entries.len() {
        let labels = &entries[i].labels;
        let mut j = i + 1;
        while j < entries.len() && Arc::ptr_eq(&entries[j].labels, labels) {
            j += 1;
        }
        let samples_len: usize = entries[i..j]
            .iter()
            .map(|e| {
                let len = sample_len(&e.sample);
                1 + encoded_len_varint(len as u64) + len
            })
            .sum();
        // WriteRequest.timeseries = 1, LEN.
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint((labels.len() + samples_len) as u64, out);
        out.extend_from_slice(labels);
        for e in &entries[i..j] {
            write_sample(&e.sample, out);
        }
        i = j;
    }
}

/// The largest uncompressed `WriteRequest` [`decode_write_request`] accepts: twice
/// VictoriaMetrics' request limit (this client never sends more than that limit).
pub const MAX_DECODED_REQUEST_BYTES: usize = 2 * crate::VICTORIA_METRICS_MAX_REQUEST_BYTES;

/// Errors decoding a request body.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The snappy header announces more than [`MAX_DECODED_REQUEST_BYTES`]; nothing was
    /// allocated for it.
    #[error("the body decompresses to {0} bytes, more than {MAX_DECODED_REQUEST_BYTES}")]
    TooLarge(usize),
    /// The body is not valid snappy block-format data.
    #[error("snappy: {0}")]
    Snappy(#[from] snap::Error),
    /// The decompressed bytes are not a valid `WriteRequest`.
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Decodes a request body (snappy block format, then protobuf) into a `WriteRequest`.
///
/// The size announced by the snappy header is checked against [`MAX_DECODED_REQUEST_BYTES`]
/// before anything is allocated, so a small hostile body cannot make it allocate gigabytes.
pub fn decode_write_request(body: &[u8]) -> Result<proto::WriteRequest, DecodeError> {
    let len = snap::raw::decompress_len(body)?;
    if len > MAX_DECODED_REQUEST_BYTES {
        return Err(DecodeError::TooLarge(len));
    }
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    Ok(proto::WriteRequest::decode(raw.as_slice())?)
}

/// Encodes and compresses requests, reusing its buffers between requests.
pub struct RequestEncoder {
    raw: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl std::fmt::Debug for RequestEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestEncoder").finish_non_exhaustive()
    }
}

/// A finished request body and the size of its uncompressed protobuf.
#[derive(Debug)]
pub struct EncodedRequest<'a> {
    /// The snappy-compressed body.
    pub body: &'a [u8],
    /// The protobuf size before compression.
    pub raw_len: usize,
}

impl Default for RequestEncoder {
    fn default() -> RequestEncoder {
        RequestEncoder::new()
    }
}

impl RequestEncoder {
    /// A new encoder with empty buffers.
    pub fn new() -> RequestEncoder {
        RequestEncoder {
            raw: Vec::new(),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// Encodes `entries` and compresses the result with the snappy block format.
    pub fn encode(&mut self, entries: &[PreparedSample]) -> EncodedRequest<'_> {
        self.raw.clear();
        encode_write_request(entries, &mut self.raw);
        let max = snap::raw::max_compress_len(self.raw.len());
        if self.compressed.len() < max {
            self.compressed.resize(max, 0);
        }
        let n = self
            .snappy
            .compress(&self.raw, &mut self.compressed)
            .expect("the output buffer has max_compress_len bytes");
        EncodedRequest {
            body: &self.compressed[..n],
            raw_len: self.raw.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{STALE_NAN_BITS, stale_nan};

    fn series(name: &str, labels: &[(&str, &str)]) -> Series {
        Series::new(name, labels.iter().copied()).unwrap()
    }

    fn prep(entries: &[(Series, Sample)], ext: &ExternalLabels) -> Vec<PreparedSample> {
        entries
            .iter()
            .map(|(s, x)| PreparedSample::new(s, ext, *x))
            .collect()
    }

    fn labels_of(ts: &proto::TimeSeries) -> Vec<(String, String)> {
        ts.labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect()
    }

    #[test]
    fn round_trip_through_snappy_and_prost() {
        let a = series("pie_a", &[("node", "n1"), ("storage_class", "sc")]);
        let b = series("pie_b", &[("node", "n2")]);
        let entries = vec![
            (a.clone(), Sample::new(1.5, 1_700_000_000_000)),
            (a.clone(), Sample::new(-0.0, 1_700_000_001_000)),
            (b.clone(), Sample::new(f64::INFINITY, 0)),
            (a.clone(), Sample::new(0.0, -5)),
            (b.clone(), Sample::stale(1_700_000_002_000)),
        ];
        let mut enc = RequestEncoder::new();
        let req = enc.encode(&prep(&entries, &ExternalLabels::default()));
        let raw_len = req.raw_len;
        let decoded = decode_write_request(req.body).unwrap();
        assert_eq!(
            decoded.timeseries.len(),
            4,
            "consecutive samples of `a` share a TimeSeries"
        );
        assert_eq!(
            labels_of(&decoded.timeseries[0]),
            vec![
                ("__name__".into(), "pie_a".into()),
                ("node".into(), "n1".into()),
                ("storage_class".into(), "sc".into())
            ]
        );
        let s0 = &decoded.timeseries[0].samples;
        assert_eq!(s0.len(), 2);
        assert_eq!((s0[0].value, s0[0].timestamp), (1.5, 1_700_000_000_000));
        assert_eq!(s0[1].value.to_bits(), (-0.0f64).to_bits());
        assert_eq!(decoded.timeseries[1].samples[0].value, f64::INFINITY);
        assert_eq!(decoded.timeseries[2].samples[0].timestamp, -5);
        assert_eq!(
            decoded.timeseries[3].samples[0].value.to_bits(),
            STALE_NAN_BITS
        );
        assert!(raw_len > 0);
        assert!(decoded.metadata.is_empty());
    }

    #[test]
    fn matches_prost_encoding_of_the_same_message() {
        let a = series("m", &[("x", "y")]);
        let entries = vec![(a, Sample::new(2.0, 7))];
        let mut ours = Vec::new();
        encode_write_request(&prep(&entries, &ExternalLabels::default()), &mut ours);
        let theirs = proto::WriteRequest {
            timeseries: vec![proto::TimeSeries {
                labels: vec![
                    proto::Label {
                        name: "__name__".into(),
                        value: "m".into(),
                    },
                    proto::Label {
                        name: "x".into(),
                        value: "y".into(),
                    },
                ],
                samples: vec![proto::Sample {
                    value: 2.0,
                    timestamp: 7,
                }],
            }],
            metadata: vec![],
        }
        .encode_to_vec();
        assert_eq!(
            ours, theirs,
            "non-zero fields encode byte for byte like prost"
        );
    }

    #[test]
    fn external_labels_merge_in_order_and_series_wins() {
        let ext = ExternalLabels::new([
            ("cluster", "prod-a"),
            ("zone", "z1"),
            ("A", "upper"),
            ("node", "ext"),
        ])
        .unwrap();
        let s = series("m", &[("node", "n1"), ("b", "2")]);
        let mut enc = RequestEncoder::new();
        let prepared = prep(&[(s.clone(), Sample::new(1.0, 1))], &ext);
        let req = enc.encode(&prepared);
        let decoded = decode_write_request(req.body).unwrap();
        assert_eq!(
            labels_of(&decoded.timeseries[0]),
            vec![
                ("A".into(), "upper".into()),
                ("__name__".into(), "m".into()),
                ("b".into(), "2".into()),
                ("cluster".into(), "prod-a".into()),
                ("node".into(), "n1".into()),
                ("zone".into(), "z1".into()),
            ]
        );
        assert!(prepared[0].estimated_len() >= req.raw_len);
    }

    #[test]
    fn estimate_bounds_the_real_size() {
        let s = series(
            "pie_io_read_latency_on_mount_probe_seconds",
            &[
                ("node", "worker-1"),
                ("pie_probe_name", "p"),
                ("storage_class", "topolvm"),
            ],
        );
        for ts in [0, 1, -1, i64::MAX, i64::MIN, 1_700_000_000_000] {
            let mut out = Vec::new();
            let prepared = prep(
                &[(s.clone(), Sample::new(1.0, ts))],
                &ExternalLabels::default(),
            );
            encode_write_request(&prepared, &mut out);
            assert!(out.len() <= prepared[0].estimated_len(), "ts {ts}");
        }
    }

    #[test]
    fn stale_marker_keeps_its_bits() {
        let s = series("m", &[]);
        let mut enc = RequestEncoder::new();
        let req = enc.encode(&prep(
            &[(s, Sample::new(stale_nan(), 3))],
            &ExternalLabels::default(),
        ));
        let decoded = decode_write_request(req.body).unwrap();
        assert_eq!(
            decoded.timeseries[0].samples[0].value.to_bits(),
            0x7ff0_0000_0000_0002
        );
    }

    #[test]
    fn body_is_snappy_block_format_not_framed() {
        let s = series("m", &[]);
        let mut enc = RequestEncoder::new();
        let req = enc.encode(&prep(
            &[(s, Sample::new(1.0, 1))],
            &ExternalLabels::default(),
        ));
        // The framed format starts with the stream identifier chunk 0xff 06 00 00 "sNaPpY".
        assert_ne!(req.body.first(), Some(&0xff));
        assert!(snap::raw::Decoder::new().decompress_vec(req.body).is_ok());
    }

    #[test]
    fn a_huge_announced_size_is_refused_before_allocating() {
        // Found by the encode_decode fuzz target: a 6-byte body announcing ~4 GiB.
        let body = [0xf0, 0xff, 0xff, 0xff, 0x0f, 0x00];
        assert!(matches!(
            decode_write_request(&body),
            Err(DecodeError::TooLarge(n)) if n > MAX_DECODED_REQUEST_BYTES
        ));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode_write_request(b"not snappy at all").is_err());
        let junk = snap::raw::Encoder::new()
            .compress_vec(&[0xff, 0xff, 0xff])
            .unwrap();
        assert!(matches!(
            decode_write_request(&junk),
            Err(DecodeError::Protobuf(_))
        ));
    }
}
