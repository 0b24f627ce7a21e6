//! Building request bodies: a `WriteRequest` in protobuf, compressed with the snappy block format.
//!
//! Labels are pre-encoded once per [`Series`], and queued samples point at those bytes (and at
//! the external labels' entries, inserted at a byte offset worked out once per series), so
//! encoding a request is mostly copying bytes.
//! Consecutive samples of the same series share one `TimeSeries`; samples of a series that
//! appear further apart get a `TimeSeries` each, in order, as Prometheus' own sender does.
//! Tests decode real bodies with the generated prost types instead of trusting this encoder.

use std::sync::Arc;

use prost::Message;
use prost::encoding::encoded_len_varint;

use crate::proto;
use crate::series::{ExternalLabels, Sample, Series, WireLabels};

// Field keys, `(field number << 3) | wire type`, as single bytes (every field number is < 16).
/// `WriteRequest.timeseries` (1), length-delimited.
const KEY_TIMESERIES: u8 = (1 << 3) | 2;
/// `TimeSeries.samples` (2), length-delimited.
const KEY_SAMPLES: u8 = (2 << 3) | 2;
/// `Sample.value` (1), fixed64 (a double).
const KEY_VALUE: u8 = (1 << 3) | 1;
/// `Sample.timestamp` (2), varint.
const KEY_TIMESTAMP: u8 = 2 << 3;

/// Encoded length of one `Sample` message whose timestamp varint takes `timestamp_len`
/// bytes: a fixed64 double and a varint int64, both always written (explicit zero values are
/// valid proto3 and keep `-0.0` intact). At most 20 bytes.
fn sample_len(timestamp_len: usize) -> usize {
    1 + 8 + 1 + timestamp_len
}

/// `value` as a protobuf varint in the low bytes of a little-endian `u128`, and its length
/// (1 to 10 bytes). Built in a register so that appending it is one 16-byte store: writing
/// the bytes one at a time into a stack buffer and then copying that buffer stalls the CPU
/// (the wide load cannot be forwarded from the narrow stores).
fn varint(value: u64) -> (u128, usize) {
    // TimeSeries lengths: nearly always one or two bytes.
    if value < 0x80 {
        return (u128::from(value), 1);
    }
    if value < 0x4000 {
        return (u128::from(value & 0x7f | 0x80 | (value >> 7) << 8), 2);
    }
    let len = encoded_len_varint(value);
    if len <= 8 {
        // Up to 56 bits (every timestamp of this millennium): spread each 7-bit group into
        // its own byte without data-dependent branches, then set the continuation bit of
        // every byte but the last.
        let mut spread = 0u64;
        for i in 0..8 {
            spread |= ((value >> (7 * i)) & 0x7f) << (8 * i);
        }
        let continuation = 0x8080_8080_8080_8080u64 & ((1u64 << (8 * (len - 1))) - 1);
        return (u128::from(spread | continuation), len);
    }
    // 9 or 10 bytes (negative timestamps): the plain loop.
    let (mut value, mut bytes) = (value, 0u128);
    for i in 0..len - 1 {
        bytes |= u128::from(value as u8 | 0x80) << (8 * i);
        value >>= 7;
    }
    bytes |= u128::from(value as u8) << (8 * (len - 1));
    (bytes, len)
}

/// Appends the first `len` bytes of the varint `bytes` to `out`.
fn append_varint(out: &mut Vec<u8>, (bytes, len): (u128, usize)) {
    let start = out.len();
    out.extend_from_slice(&bytes.to_le_bytes());
    out.truncate(start + len);
}

/// Appends one `TimeSeries.samples` entry (key, length and the `Sample` message) for `value`
/// and `timestamp`, the varint of the sample's timestamp (int64 is encoded as its two's
/// complement u64).
fn write_sample(value: f64, timestamp: (u128, usize), out: &mut Vec<u8>) {
    // The message length (at most 20) fits in one varint byte.
    let len = sample_len(timestamp.1) as u8;
    out.extend_from_slice(&[KEY_SAMPLES, len, KEY_VALUE]);
    out.extend_from_slice(&value.to_bits().to_le_bytes());
    out.push(KEY_TIMESTAMP);
    append_varint(out, timestamp);
}

/// A sample ready to be encoded: the protobuf label entries of its series (with the client's
/// external labels) and the sample. Samples of one series share the label bytes.
#[derive(Clone)]
pub struct PreparedSample {
    labels: WireLabels,
    /// The external labels' entries (shared by every sample of the client).
    external: Option<Arc<[u8]>>,
    /// The sample.
    pub sample: Sample,
}

impl PreparedSample {
    /// Prepares `sample` of `series` for a client with `external` labels.
    pub fn new(series: &Series, external: &ExternalLabels, sample: Sample) -> PreparedSample {
        PreparedSample {
            labels: external.wire(series),
            external: external.shared_encoding(),
            sample,
        }
    }

    /// An upper bound of the protobuf bytes this sample adds to a request: its labels, one
    /// sample (at most 21 bytes with key and length) and the `TimeSeries` framing (at most 12).
    pub fn estimated_len(&self) -> usize {
        estimated_len(labels_len(
            self.labels
                .parts(self.external.as_deref().unwrap_or_default()),
        ))
    }

    fn parts(&self) -> ([&[u8]; 3], Sample) {
        (
            self.labels
                .parts(self.external.as_deref().unwrap_or_default()),
            self.sample,
        )
    }
}

/// The length of label entries in three pieces (see [`WireLabels::parts`]).
pub(crate) fn labels_len(parts: [&[u8]; 3]) -> usize {
    parts[0].len() + parts[1].len() + parts[2].len()
}

/// An upper bound of the protobuf bytes one sample of a series whose label entries take
/// `labels_len` bytes adds to a request (see [`PreparedSample::estimated_len`]).
pub(crate) fn estimated_len(labels_len: usize) -> usize {
    labels_len + 21 + 12
}

impl std::fmt::Debug for PreparedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedSample")
            .field(
                "label_bytes",
                &labels_len(
                    self.labels
                        .parts(self.external.as_deref().unwrap_or_default()),
                ),
            )
            .field("sample", &self.sample)
            .finish()
    }
}

/// Appends the protobuf encoding of a `WriteRequest` holding `entries` (in order) to `out`.
pub fn encode_write_request(entries: &[PreparedSample], out: &mut Vec<u8>) {
    encode_entries(entries, PreparedSample::parts, out, |_| {});
}

/// Whether two samples' label entries are the same series' (the same allocation, split at
/// the same offset): samples of one series in a row share a `TimeSeries`.
fn same_series(a: [&[u8]; 3], b: [&[u8]; 3]) -> bool {
    std::ptr::eq(a[0], b[0]) && std::ptr::eq(a[2], b[2])
}

/// [`encode_write_request`] for entries of any type: `parts` gives an entry's label entries
/// in three pieces to write one after the other (the same for every sample of a series; see
/// [`WireLabels::parts`]) and its sample. Calls `after_series` with `out` after each
/// `TimeSeries`.
pub(crate) fn encode_entries<'e, 't, E>(
    entries: &'e [E],
    parts: impl Fn(&'e E) -> ([&'t [u8]; 3], Sample),
    out: &mut Vec<u8>,
    mut after_series: impl FnMut(&mut Vec<u8>),
) {
    let write_labels = |out: &mut Vec<u8>, labels: [&[u8]; 3]| {
        out.extend_from_slice(labels[0]);
        out.extend_from_slice(labels[1]);
        out.extend_from_slice(labels[2]);
    };
    let mut i = 0;
    while i < entries.len() {
        let (labels, first) = parts(&entries[i]);
        let mut j = i + 1;
        while j < entries.len() && same_series(parts(&entries[j]).0, labels) {
            j += 1;
        }
        if j == i + 1 {
            // One sample (the usual case when a whole store is pushed): its timestamp's
            // varint is computed once, for both the lengths and the bytes.
            let timestamp = varint(first.timestamp_ms as u64);
            let samples_len = 2 + sample_len(timestamp.1);
            out.push(KEY_TIMESERIES);
            append_varint(out, varint((labels_len(labels) + samples_len) as u64));
            write_labels(out, labels);
            write_sample(first.value, timestamp, out);
        } else {
            let group = &entries[i..j];
            // Each sample's key and length take 2 bytes: a Sample is at most 20 bytes long.
            let samples_len: usize = group
                .iter()
                .map(|e| 2 + sample_len(encoded_len_varint(parts(e).1.timestamp_ms as u64)))
                .sum();
            out.push(KEY_TIMESERIES);
            append_varint(out, varint((labels_len(labels) + samples_len) as u64));
            write_labels(out, labels);
            for e in group {
                let sample = parts(e).1;
                write_sample(sample.value, varint(sample.timestamp_ms as u64), out);
            }
        }
        after_series(out);
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

/// The snappy block size: `snap` (like the reference implementation) compresses its input
/// in independent blocks of this many bytes after one header giving the total length.
const SNAPPY_BLOCK: usize = 1 << 16;

/// The most bytes the snappy header (a varint of the uncompressed length) takes.
const SNAPPY_HEADER_MAX: usize = 10;

/// Encodes and compresses requests, reusing its buffers between requests.
///
/// The protobuf is compressed block by block as it is produced, while each 64 KiB block is
/// still in the CPU cache, instead of encoding the whole request and then reading it back
/// from memory to compress it. Since `snap` compresses every block independently, the body
/// is byte for byte what compressing the whole protobuf at once gives (a test checks this).
pub struct RequestEncoder {
    /// Protobuf bytes not compressed yet (less than a block, plus the last series).
    raw: Vec<u8>,
    /// `SNAPPY_HEADER_MAX` bytes of room for the header, then the compressed blocks.
    compressed: Vec<u8>,
    /// One compressed block, with the header `snap` gives it.
    block: Vec<u8>,
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

/// Compresses `raw` (at most one block) with `snappy` and appends the compressed block,
/// without the header `snap` puts before it, to `compressed`.
fn compress_block(
    snappy: &mut snap::raw::Encoder,
    raw: &[u8],
    block: &mut Vec<u8>,
    compressed: &mut Vec<u8>,
) {
    debug_assert!(raw.len() <= SNAPPY_BLOCK);
    let max = snap::raw::max_compress_len(raw.len());
    if block.len() < max {
        block.resize(max, 0);
    }
    let n = snappy.compress(raw, block).expect(
        "a block is far below snappy's input limit and the buffer has max_compress_len bytes",
    );
    let header = encoded_len_varint(raw.len() as u64);
    compressed.extend_from_slice(&block[header..n]);
}

impl RequestEncoder {
    /// A new encoder with empty buffers.
    pub fn new() -> RequestEncoder {
        RequestEncoder {
            raw: Vec::new(),
            compressed: Vec::new(),
            block: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// Encodes `entries` and compresses the result with the snappy block format.
    pub fn encode(&mut self, entries: &[PreparedSample]) -> EncodedRequest<'_> {
        self.encode_entries(entries, PreparedSample::parts)
    }

    /// [`RequestEncoder::encode`] for entries of any type (see [`encode_entries`]).
    pub(crate) fn encode_entries<'e, 't, E>(
        &mut self,
        entries: &'e [E],
        parts: impl Fn(&'e E) -> ([&'t [u8]; 3], Sample),
    ) -> EncodedRequest<'_> {
        let RequestEncoder {
            raw,
            compressed,
            block,
            snappy,
        } = self;
        raw.clear();
        compressed.clear();
        compressed.resize(SNAPPY_HEADER_MAX, 0);
        // Protobuf bytes compressed so far.
        let mut raw_done = 0;
        // Compresses every full block in `raw` and keeps the rest.
        let mut compress_full_blocks = |raw: &mut Vec<u8>| {
            let mut done = 0;
            while raw.len() - done >= SNAPPY_BLOCK {
                compress_block(snappy, &raw[done..done + SNAPPY_BLOCK], block, compressed);
                done += SNAPPY_BLOCK;
            }
            if done > 0 {
                raw_done += done;
                raw.copy_within(done.., 0);
                raw.truncate(raw.len() - done);
            }
        };
        encode_entries(entries, parts, raw, &mut compress_full_blocks);
        let raw_len = raw_done + raw.len();
        if !raw.is_empty() {
            compress_block(snappy, raw, block, compressed);
        }
        // The header, the total length, goes right before the first block.
        let (header, header_len) = varint(raw_len as u64);
        let start = SNAPPY_HEADER_MAX - header_len;
        compressed[start..SNAPPY_HEADER_MAX].copy_from_slice(&header.to_le_bytes()[..header_len]);
        EncodedRequest {
            body: &compressed[start..],
            raw_len,
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

    /// With external labels the label entries go out in pieces (the series' own, split where
    /// the external ones go in); consecutive samples of a series still share a `TimeSeries`,
    /// and two series never do.
    #[test]
    fn external_labels_keep_a_series_samples_together() {
        let a = series("pie_a", &[("node", "n1"), ("storage_class", "sc")]);
        let b = series("pie_b", &[("node", "n1"), ("storage_class", "sc")]);
        let entries = vec![
            (a.clone(), Sample::new(1.0, 1)),
            (a.clone(), Sample::new(2.0, 2)),
            (b.clone(), Sample::new(3.0, 3)),
            (a.clone(), Sample::new(4.0, 4)),
        ];
        let external = ExternalLabels::new([("cluster", "c")]).unwrap();
        let prepared = prep(&entries, &external);
        let mut enc = RequestEncoder::new();
        let req = enc.encode(&prepared);
        let decoded = decode_write_request(req.body).unwrap();
        let got: Vec<_> = decoded
            .timeseries
            .iter()
            .map(|ts| (labels_of(ts), ts.samples.len()))
            .collect();
        let labels = |name: &str| -> Vec<(String, String)> {
            [
                ("__name__", name),
                ("cluster", "c"),
                ("node", "n1"),
                ("storage_class", "sc"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .to_vec()
        };
        assert_eq!(
            got,
            [
                (labels("pie_a"), 2),
                (labels("pie_b"), 1),
                (labels("pie_a"), 1)
            ]
        );
        let estimated: usize = prepared.iter().map(PreparedSample::estimated_len).sum();
        assert!(req.raw_len <= estimated, "{} > {estimated}", req.raw_len);
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
    fn block_by_block_compression_equals_compressing_the_whole_protobuf() {
        let ext = ExternalLabels::new([("cluster", "prod-a")]).unwrap();
        let many: Vec<Series> = (0..3000)
            .map(|i| series("pie_mount_probe_total", &[("node", &format!("worker-{i}"))]))
            .collect();
        let big = series("m", &[("x", &"v".repeat(4000)), ("y", &"w".repeat(4000))]);
        let cases: Vec<Vec<(Series, Sample)>> = vec![
            vec![],
            vec![(many[0].clone(), Sample::new(1.0, 1))],
            // Several blocks of one-sample series.
            many.iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), Sample::new(i as f64, 1_700_000_000_000)))
                .collect(),
            // One series with 10,000 samples: a TimeSeries longer than a block.
            (0..10_000)
                .map(|i| (many[1].clone(), Sample::new(0.5, i)))
                .collect(),
            // Large label sets, each spanning block boundaries now and then.
            (0..40)
                .map(|i| (big.clone(), Sample::new(2.0, i)))
                .collect(),
        ];
        let mut encoder = RequestEncoder::new();
        for (i, case) in cases.iter().enumerate() {
            let prepared = prep(case, &ext);
            let mut raw = Vec::new();
            encode_write_request(&prepared, &mut raw);
            let whole = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
            let request = encoder.encode(&prepared);
            assert_eq!(request.raw_len, raw.len(), "case {i}");
            assert_eq!(
                request.body,
                &whole[..],
                "case {i}: {} raw bytes",
                raw.len()
            );
        }
        // Lengths just past 64 KiB - 1, 64 KiB, 64 KiB + 1 and 128 KiB.
        for target in [
            SNAPPY_BLOCK - 1,
            SNAPPY_BLOCK,
            SNAPPY_BLOCK + 1,
            2 * SNAPPY_BLOCK,
        ] {
            let mut entries: Vec<(Series, Sample)> = Vec::new();
            let mut raw = Vec::new();
            while raw.len() < target {
                let n = entries.len();
                entries.push((many[n % many.len()].clone(), Sample::new(0.0, n as i64 + 1)));
                raw.clear();
                encode_write_request(&prep(&entries, &ext), &mut raw);
            }
            let prepared = prep(&entries, &ext);
            let whole = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
            assert_eq!(
                encoder.encode(&prepared).body,
                &whole[..],
                "~{target} raw bytes"
            );
        }
    }

    #[test]
    fn varint_matches_prost_for_every_length() {
        let mut values = vec![0, u64::MAX, i64::MIN as u64, -1i64 as u64];
        for bits in 1..64 {
            values.extend([(1u64 << bits) - 1, 1u64 << bits, (1u64 << bits) + 1]);
        }
        for value in values {
            let mut theirs = Vec::new();
            prost::encoding::encode_varint(value, &mut theirs);
            let mut ours = Vec::new();
            append_varint(&mut ours, varint(value));
            assert_eq!(ours, theirs, "{value:#x}");
        }
    }

    #[test]
    fn matches_prost_for_every_varint_width() {
        // Timestamps of 1 to 10 varint bytes (negative ones take 10), and label sets whose
        // TimeSeries length needs 1, 2 and 3 varint bytes.
        let timestamps = [
            1,
            127,
            128,
            16_383,
            16_384,
            1_700_000_000_000,
            i64::MAX,
            -1,
            i64::MIN,
        ];
        // Label values are limited to 4 KiB, so the 3-byte case takes several labels.
        for (value_len, count) in [(1, 1), (200, 1), (4000, 5)] {
            let value = "v".repeat(value_len);
            let names: Vec<String> = (0..count).map(|i| format!("x{i}")).collect();
            let pairs: Vec<(&str, &str)> =
                names.iter().map(|n| (n.as_str(), value.as_str())).collect();
            let s = series("m", &pairs);
            // Two samples per series in one TimeSeries, then the series again further on.
            let other = series("other", &[]);
            let mut entries = Vec::new();
            for &ts in &timestamps {
                entries.push((s.clone(), Sample::new(-0.5, ts)));
                entries.push((s.clone(), Sample::new(f64::INFINITY, ts)));
                entries.push((other.clone(), Sample::new(3.25, ts)));
            }
            let mut ours = Vec::new();
            encode_write_request(&prep(&entries, &ExternalLabels::default()), &mut ours);
            let label = |name: &str, value: &str| proto::Label {
                name: name.into(),
                value: value.into(),
            };
            let sample = |value: f64, timestamp: i64| proto::Sample { value, timestamp };
            let mut timeseries = Vec::new();
            for &ts in &timestamps {
                timeseries.push(proto::TimeSeries {
                    labels: std::iter::once(label("__name__", "m"))
                        .chain(names.iter().map(|n| label(n, &value)))
                        .collect(),
                    samples: vec![sample(-0.5, ts), sample(f64::INFINITY, ts)],
                });
                timeseries.push(proto::TimeSeries {
                    labels: vec![label("__name__", "other")],
                    samples: vec![sample(3.25, ts)],
                });
            }
            let theirs = proto::WriteRequest {
                timeseries,
                metadata: vec![],
            }
            .encode_to_vec();
            assert_eq!(ours, theirs, "{count} label values of {value_len} bytes");
        }
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
