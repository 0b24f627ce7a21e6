//! Validated series (label sets), samples and the staleness marker.
//!
//! A [`Series`] is checked once, when it is built: labels are sorted by name, names are unique
//! and valid, `__name__` is present and a valid metric name, and labels with an empty value are
//! dropped (Prometheus treats an empty value as an absent label). Invalid input is an error
//! here, at the API boundary, and can never reach the wire. The protobuf encoding of the labels
//! is computed once and reused for every request the series appears in.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The bit pattern Prometheus uses to mark a series as stale (`StaleNaN`).
///
/// It is a signalling NaN distinct from [`f64::NAN`] (`0x7ff8000000000000`), so it must be
/// produced with [`stale_nan`], never with a float operation.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The name of the label that holds the metric name.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// VictoriaMetrics' default limit of labels per series; it silently drops longer series.
pub const MAX_LABELS: usize = 40;
/// VictoriaMetrics' default limit on a label name's length in bytes.
pub const MAX_LABEL_NAME_BYTES: usize = 256;
/// VictoriaMetrics' default limit on a label value's length in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;

/// The staleness marker value: a NaN with the bits [`STALE_NAN_BITS`].
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `value` is the staleness marker (compares bits; an ordinary NaN is not).
pub fn is_stale_nan(value: f64) -> bool {
    value.to_bits() == STALE_NAN_BITS
}

/// Now in milliseconds since the Unix epoch, the unit of [`Sample::timestamp_ms`] (0 if the
/// clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One sample: a value at a point in time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value. Any `f64`, including NaN and infinities.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Sample {
    /// A sample of `value` at `timestamp_ms`.
    pub fn new(value: f64, timestamp_ms: i64) -> Sample {
        Sample {
            value,
            timestamp_ms,
        }
    }

    /// A staleness marker at `timestamp_ms`.
    pub fn stale(timestamp_ms: i64) -> Sample {
        Sample::new(stale_nan(), timestamp_ms)
    }

    /// Whether this sample is a staleness marker.
    pub fn is_stale(&self) -> bool {
        is_stale_nan(self.value)
    }
}

/// Why a label set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    /// No `__name__` label, or an empty one.
    #[error("the series has no metric name (`__name__` is missing or empty)")]
    MissingName,
    /// `__name__` does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}: it must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName(String),
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("invalid label name {0:?}: it must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName(String),
    /// A label name other than `__name__` starts with the reserved `__` prefix.
    #[error("label name {0:?} starts with the reserved prefix `__`")]
    ReservedLabelName(String),
    /// The same label name appears twice.
    #[error("duplicate label name {0:?}")]
    DuplicateLabelName(String),
    /// More labels than VictoriaMetrics accepts.
    #[error("the series has {0} labels; at most {MAX_LABELS} are accepted")]
    TooManyLabels(usize),
    /// A label name longer than VictoriaMetrics accepts.
    #[error("label name {0:?}… is longer than {MAX_LABEL_NAME_BYTES} bytes")]
    LabelNameTooLong(String),
    /// A label value longer than VictoriaMetrics accepts.
    #[error("the value of label {0:?} is longer than {MAX_LABEL_VALUE_BYTES} bytes")]
    LabelValueTooLong(String),
}

/// Whether `name` is a valid metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b':'))
}

/// Whether `name` is a valid label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_'))
}

/// Checks one label name (not `__name__`) and value; `Ok(false)` means "drop it" (empty value).
fn check_label(name: &str, value: &str, allow_reserved: bool) -> Result<bool, SeriesError> {
    if name.len() > MAX_LABEL_NAME_BYTES {
        let cut = name.char_indices().nth(32).map_or(name.len(), |(i, _)| i);
        return Err(SeriesError::LabelNameTooLong(name[..cut].to_owned()));
    }
    if !is_valid_label_name(name) {
        return Err(SeriesError::InvalidLabelName(name.to_owned()));
    }
    if !allow_reserved && name.starts_with("__") {
        return Err(SeriesError::ReservedLabelName(name.to_owned()));
    }
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(SeriesError::LabelValueTooLong(name.to_owned()));
    }
    Ok(!value.is_empty())
}

/// Appends one label as a `TimeSeries.labels` field entry (field 1, a `Label` message with
/// `name` = 1 and `value` = 2). Both strings are non-empty (validated), so the encoding is
/// exactly prost's, and [`LabelEntries`] reads it back.
fn encode_label_field(name: &str, value: &str, out: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    let field = |tag: u32, len: usize| key_len(tag) + encoded_len_varint(len as u64) + len;
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint((field(1, name.len()) + field(2, value.len())) as u64, out);
    encode_key(1, WireType::LengthDelimited, out);
    encode_varint(name.len() as u64, out);
    out.extend_from_slice(name.as_bytes());
    encode_key(2, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value.as_bytes());
}

/// One label read back out of an encoding written by [`encode_label_field`].
struct LabelEntry<'a> {
    /// The whole `TimeSeries.labels` field entry.
    entry: &'a [u8],
    name: &'a str,
    value: &'a str,
}

/// The labels of a concatenation of [`encode_label_field`] entries, in order. Reading them back
/// costs a few varint reads per label; keeping where each sits would cost 20 bytes per label
/// and an allocation per series, and labels are read far less often than a series is held.
#[derive(Clone)]
struct LabelEntries<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> LabelEntries<'a> {
    /// The `n` entries of `encoded`.
    fn new(encoded: &'a [u8], n: usize) -> Self {
        LabelEntries {
            rest: encoded,
            left: n,
        }
    }

    /// Splits a length-delimited field (key byte, varint length, bytes) off the front of `buf`.
    fn field(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (_key, rest) = buf.split_first()?;
        *buf = rest;
        let len = usize::try_from(prost::encoding::decode_varint(buf).ok()?).ok()?;
        let (bytes, rest) = buf.split_at_checked(len)?;
        *buf = rest;
        Some(bytes)
    }

    fn text(bytes: &'a [u8]) -> &'a str {
        // Always valid: the bytes were copied from a `&str`.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl<'a> Iterator for LabelEntries<'a> {
    type Item = LabelEntry<'a>;

    fn next(&mut self) -> Option<LabelEntry<'a>> {
        if self.left == 0 {
            return None;
        }
        let start = self.rest;
        let mut message = Self::field(&mut self.rest)?;
        let entry = &start[..start.len() - self.rest.len()];
        let name = Self::field(&mut message)?;
        let value = Self::field(&mut message)?;
        self.left -= 1;
        Some(LabelEntry {
            entry,
            name: Self::text(name),
            value: Self::text(value),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for LabelEntries<'_> {}

/// A sorted, validated label set whose protobuf encoding is computed once.
///
/// Cheap to clone (reference counted). Two series are equal when their label sets are equal.
#[derive(Clone)]
pub struct Series {
    labels: Arc<Labels>,
    /// A hash of the encoded labels, computed once and kept in the handle itself, so hashing
    /// a series for a map lookup does not touch the shared label data.
    hash: u64,
}

/// Labels sorted by name, kept only as their protobuf encoding: names and values are read
/// back out of it, so a series costs one byte buffer rather than two strings per label (the
/// controller holds five series per mount probe: 75,000 at 5,000 nodes x 3 PieProbes).
struct Labels {
    /// `TimeSeries.labels` field entries for every label, concatenated in name order (shared
    /// with every queued sample of the series).
    encoded: Arc<[u8]>,
    /// How many labels `encoded` holds.
    count: usize,
    /// Where one set of external labels (identified by its id) goes among the entries,
    /// worked out the first time the series is encoded with them.
    placement: OnceLock<(u64, Placement)>,
}

impl Labels {
    /// `pairs` sorted by name, unique, non-empty.
    fn new<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone) -> Labels {
        let mut encoded =
            Vec::with_capacity(pairs.clone().map(|(n, v)| n.len() + v.len() + 8).sum());
        let count = pairs.len();
        for (name, value) in pairs {
            encode_label_field(name, value, &mut encoded);
        }
        Labels {
            encoded: encoded.into(),
            count,
            placement: OnceLock::new(),
        }
    }

    fn entries(&self) -> LabelEntries<'_> {
        LabelEntries::new(&self.encoded, self.count)
    }

    fn pairs(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.entries().map(|e| (e.name, e.value))
    }
}

impl Series {
    /// A series named `name` with `labels` (which must not contain `__name__`).
    pub fn new<K, V>(
        name: &str,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Series, SeriesError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut all: Vec<(Box<str>, Box<str>)> = vec![(METRIC_NAME_LABEL.into(), name.into())];
        all.extend(
            labels
                .into_iter()
                .map(|(k, v)| (k.as_ref().into(), v.as_ref().into())),
        );
        Series::from_pairs(all)
    }

    /// A series from a complete label set that includes `__name__`.
    pub fn from_labels<K, V>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Series, SeriesError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        Series::from_pairs(
            labels
                .into_iter()
                .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
                .collect(),
        )
    }

    fn from_pairs(mut pairs: Vec<(Box<str>, Box<str>)>) -> Result<Series, SeriesError> {
        let mut has_name = false;
        let mut keep = Vec::with_capacity(pairs.len());
        for (name, value) in &pairs {
            if &**name == METRIC_NAME_LABEL {
                if value.is_empty() {
                    return Err(SeriesError::MissingName);
                }
                if !is_valid_metric_name(value) {
                    return Err(SeriesError::InvalidMetricName(value.to_string()));
                }
                has_name = true;
                keep.push(true);
            } else {
                keep.push(check_label(name, value, false)?);
            }
        }
        if !has_name {
            return Err(SeriesError::MissingName);
        }
        let mut keep = keep.into_iter();
        pairs.retain(|_| keep.next().unwrap_or(false));
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SeriesError::DuplicateLabelName(w[0].0.to_string()));
        }
        if pairs.len() > MAX_LABELS {
            return Err(SeriesError::TooManyLabels(pairs.len()));
        }
        let labels = Labels::new(pairs.iter().map(|(n, v)| (&**n, &**v)));
        let mut hasher = std::hash::DefaultHasher::new();
        labels.encoded.hash(&mut hasher);
        Ok(Series {
            hash: hasher.finish(),
            labels: Arc::new(labels),
        })
    }

    /// The metric name (the value of `__name__`).
    pub fn name(&self) -> &str {
        self.get(METRIC_NAME_LABEL).unwrap_or_default()
    }

    /// The value of label `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.labels
            .pairs()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// All labels, sorted by name, `__name__` included.
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.labels.pairs()
    }

    /// The labels' protobuf encoding: concatenated `TimeSeries.labels` field entries.
    pub(crate) fn encoded_labels(&self) -> &Arc<[u8]> {
        &self.labels.encoded
    }

    /// Whether both handles point at the same allocation (a cheap equality shortcut).
    pub(crate) fn same_allocation(&self, other: &Series) -> bool {
        Arc::ptr_eq(&self.labels, &other.labels)
    }
}

impl PartialEq for Series {
    fn eq(&self, other: &Series) -> bool {
        self.same_allocation(other)
            || (self.hash == other.hash && self.labels.encoded == other.labels.encoded)
    }
}

impl Eq for Series {}

impl Hash for Series {
    /// Writes the hash computed when the series was built (one `u64`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A hasher that passes on the `u64` a [`Series`] writes: its hash is computed once, at build
/// time, so maps keyed by series need not hash label bytes on every lookup.
#[derive(Debug, Default)]
pub(crate) struct PrehashedSeries(u64);

impl Hasher for PrehashedSeries {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than `Series`; fold the bytes in (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by series that uses their precomputed hashes.
pub(crate) type SeriesMap<V> = HashMap<Series, V, BuildHasherDefault<PrehashedSeries>>;

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Series {
    /// Prometheus notation: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        f.write_str("{")?;
        let mut first = true;
        for (name, value) in self.labels().filter(|(n, _)| *n != METRIC_NAME_LABEL) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{name}={value:?}")?;
        }
        f.write_str("}")
    }
}

/// Where a set of external labels goes among a series' own labels.
#[derive(Clone)]
enum Placement {
    /// Every external entry goes, in order, at this byte offset of the series' encoding.
    At(u32),
    /// The series' entries merged with the external ones (some interleave, or the series
    /// shadows one).
    Merged(Arc<[u8]>),
}

/// [`WireLabels::at`] when the bytes are complete as they are.
const NOWHERE: u32 = u32::MAX;

/// A series' label entries on the wire with one set of external labels, without copying
/// them in the usual case: the series' own encoding with the external entries inserted at one
/// byte offset. Keeping a merged copy instead cost every series a second buffer of its size
/// (at 5,000 nodes x 3 PieProbes, 75,000 buffers of about 200 bytes).
#[derive(Clone)]
pub(crate) struct WireLabels {
    /// The series' own entries, or (`at == NOWHERE`) the complete entries.
    bytes: Arc<[u8]>,
    /// Byte offset in `bytes` where the external entries go.
    at: u32,
}

impl fmt::Debug for WireLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WireLabels")
            .field("label_bytes", &self.bytes.len())
            .field("external_at", &(self.at != NOWHERE).then_some(self.at))
            .finish()
    }
}

impl WireLabels {
    /// `series`' own entries, complete as they are (no external labels).
    pub(crate) fn own(series: &Series) -> WireLabels {
        WireLabels {
            bytes: series.encoded_labels().clone(),
            at: NOWHERE,
        }
    }

    /// Empty (a free queue slot).
    pub(crate) fn empty() -> WireLabels {
        WireLabels {
            bytes: Arc::from([]),
            at: NOWHERE,
        }
    }

    /// The entries in wire order, in three pieces, given the external labels' `external`
    /// entries (the same set these were placed for).
    pub(crate) fn parts<'a>(&'a self, external: &'a [u8]) -> [&'a [u8]; 3] {
        if self.at == NOWHERE {
            return [&self.bytes, &[], &[]];
        }
        let (head, tail) = self.bytes.split_at(self.at as usize);
        [head, external, tail]
    }
}

/// Labels added to every series a client sends (e.g. `cluster="prod-a"`).
///
/// On a conflict the series' own label wins and the external label is not added, as in
/// Prometheus' remote write. `__name__` cannot be an external label.
#[derive(Clone, Default)]
pub struct ExternalLabels {
    /// Distinguishes label sets in the per-series cache of merged encodings (0 = none).
    id: u64,
    labels: Option<Arc<Labels>>,
}

static NEXT_EXTERNAL_ID: AtomicU64 = AtomicU64::new(1);

impl ExternalLabels {
    /// Validates `labels`: valid, unique, non-reserved names and non-empty values.
    pub fn new<K, V>(
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<ExternalLabels, SeriesError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut pairs: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (name, value) in labels {
            let (name, value) = (name.as_ref(), value.as_ref());
            if !check_label(name, value, false)? {
                continue;
            }
            pairs.push((name.into(), value.into()));
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SeriesError::DuplicateLabelName(w[0].0.to_string()));
        }
        if pairs.is_empty() {
            return Ok(ExternalLabels::default());
        }
        Ok(ExternalLabels {
            id: NEXT_EXTERNAL_ID.fetch_add(1, Ordering::Relaxed),
            labels: Some(Arc::new(Labels::new(
                pairs.iter().map(|(n, v)| (&**n, &**v)),
            ))),
        })
    }

    /// Whether there are no external labels.
    pub fn is_empty(&self) -> bool {
        self.labels.is_none()
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().flat_map(|l| l.pairs())
    }

    /// The entries of the external labels, in name order (empty without any).
    pub(crate) fn encoded(&self) -> &[u8] {
        self.labels.as_ref().map_or(&[], |l| &l.encoded)
    }

    /// [`ExternalLabels::encoded`], shared (`None` without any).
    pub(crate) fn shared_encoding(&self) -> Option<Arc<[u8]>> {
        self.labels.as_ref().map(|l| l.encoded.clone())
    }

    /// `series`' label entries as they go on the wire with these external labels. Worked out
    /// once per series and cached in it (for the first external label set it meets).
    pub(crate) fn wire(&self, series: &Series) -> WireLabels {
        if self.labels.is_none() {
            return WireLabels::own(series);
        }
        let placement = match series.labels.placement.get() {
            Some((id, placement)) if *id == self.id => placement.clone(),
            Some(_) => self.placement(series),
            None => {
                let (_, placement) = series
                    .labels
                    .placement
                    .get_or_init(|| (self.id, self.placement(series)));
                placement.clone()
            }
        };
        match placement {
            Placement::At(at) => WireLabels {
                bytes: series.encoded_labels().clone(),
                at,
            },
            Placement::Merged(bytes) => WireLabels { bytes, at: NOWHERE },
        }
    }

    /// Where these (non-empty) external labels go among `series`' own: at one byte offset when
    /// every own label sorts before or after all of them (the usual case: one or two external
    /// labels such as `cluster`), otherwise a merged copy.
    fn placement(&self, series: &Series) -> Placement {
        let mut names = self.labels().map(|(name, _)| name);
        let (Some(first), last) = (names.next(), names.last()) else {
            return Placement::At(0);
        };
        let last = last.unwrap_or(first);
        let mut at = 0;
        for label in series.labels.entries() {
            if label.name < first {
                at += label.entry.len();
                continue;
            }
            if label.name > last {
                break;
            }
            // Shadowed by the series, or between two external labels.
            let mut merged = Vec::new();
            self.write_merged(series, &mut merged);
            return Placement::Merged(merged.into());
        }
        // A series' encoding is far below 4 GiB (its labels are bounded in number and size).
        Placement::At(u32::try_from(at).unwrap_or(NOWHERE))
    }

    /// Writes `series`' label entries merged with these external labels, in name order. A
    /// series label shadows an external one.
    fn write_merged(&self, series: &Series, out: &mut Vec<u8>) {
        let Some(ext) = &self.labels else {
            out.extend_from_slice(series.encoded_labels());
            return;
        };
        let mut own = series.labels.entries().peekable();
        let mut external = ext.entries().peekable();
        loop {
            let next = match (own.peek(), external.peek()) {
                (None, None) => break,
                (Some(_), None) => own.next(),
                (None, Some(_)) => external.next(),
                (Some(o), Some(e)) => match o.name.cmp(e.name) {
                    std::cmp::Ordering::Less => own.next(),
                    // The series' own label shadows the external one.
                    std::cmp::Ordering::Equal => {
                        external.next();
                        own.next()
                    }
                    std::cmp::Ordering::Greater => external.next(),
                },
            };
            if let Some(label) = next {
                out.extend_from_slice(label.entry);
            }
        }
    }
}

impl fmt::Debug for ExternalLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.labels()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_entry_is_prosts_encoding_and_reads_back() {
        use prost::Message;
        let long = "v".repeat(300);
        let cases = [
            ("a", "1"),
            ("node", "pie-node-4601"),
            ("x", long.as_str()),
            ("ü", "ß€"),
        ];
        let mut all = Vec::new();
        for (name, value) in cases {
            let mut ours = Vec::new();
            encode_label_field(name, value, &mut ours);
            let mut prosts = Vec::new();
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut prosts);
            crate::proto::Label {
                name: name.into(),
                value: value.into(),
            }
            .encode_length_delimited(&mut prosts)
            .unwrap();
            assert_eq!(ours, prosts, "{name}={value}");
            let labels = Labels::new([(name, value)].into_iter());
            assert_eq!(labels.pairs().collect::<Vec<_>>(), vec![(name, value)]);
            assert_eq!(labels.entries().next().unwrap().entry, &prosts[..]);
            all.push(prosts);
        }
        // Several together (multi-byte lengths among them) read back entry by entry.
        let labels = Labels::new(cases.into_iter());
        assert_eq!(&*labels.encoded, &all.concat()[..]);
        assert_eq!(labels.pairs().collect::<Vec<_>>(), cases);
        assert_eq!(labels.entries().len(), 4);
        let entries: Vec<&[u8]> = labels.entries().map(|e| e.entry).collect();
        assert_eq!(entries, all.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn labels_are_sorted_and_empty_values_dropped() {
        let s = Series::new("up", [("job", "x"), ("a", "1"), ("empty", "")]).unwrap();
        let labels: Vec<_> = s.labels().collect();
        assert_eq!(labels, vec![("__name__", "up"), ("a", "1"), ("job", "x")]);
        assert_eq!(s.name(), "up");
        assert_eq!(s.get("job"), Some("x"));
        assert_eq!(s.get("empty"), None);
        assert_eq!(s.to_string(), r#"up{a="1",job="x"}"#);
    }

    #[test]
    fn validation_table() {
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Result<(), SeriesError>);
        let long_name = "a".repeat(MAX_LABEL_NAME_BYTES + 1);
        let long_value = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
        let many: Vec<(String, String)> = (0..MAX_LABELS)
            .map(|i| (format!("l{i}"), "v".into()))
            .collect();
        let cases: Vec<Case> = vec![
            ("ok", vec![("a", "b")], Ok(())),
            ("ok:colon_name", vec![], Ok(())),
            ("_leading_underscore", vec![("_x", "1")], Ok(())),
            ("", vec![], Err(SeriesError::MissingName)),
            (
                "1abc",
                vec![],
                Err(SeriesError::InvalidMetricName("1abc".into())),
            ),
            (
                "a-b",
                vec![],
                Err(SeriesError::InvalidMetricName("a-b".into())),
            ),
            (
                "ok",
                vec![("bad-name", "1")],
                Err(SeriesError::InvalidLabelName("bad-name".into())),
            ),
            (
                "ok",
                vec![("a:b", "1")],
                Err(SeriesError::InvalidLabelName("a:b".into())),
            ),
            (
                "ok",
                vec![("9a", "1")],
                Err(SeriesError::InvalidLabelName("9a".into())),
            ),
            (
                "ok",
                vec![("", "1")],
                Err(SeriesError::InvalidLabelName("".into())),
            ),
            (
                "ok",
                vec![("é", "1")],
                Err(SeriesError::InvalidLabelName("é".into())),
            ),
            (
                "ok",
                vec![("__x", "1")],
                Err(SeriesError::ReservedLabelName("__x".into())),
            ),
            (
                "ok",
                vec![("__name__", "other")],
                Err(SeriesError::DuplicateLabelName("__name__".into())),
            ),
            (
                "ok",
                vec![("a", "1"), ("a", "2")],
                Err(SeriesError::DuplicateLabelName("a".into())),
            ),
            (
                "ok",
                vec![(&long_name, "1")],
                Err(SeriesError::LabelNameTooLong("a".repeat(32))),
            ),
            (
                "ok",
                vec![("a", &long_value)],
                Err(SeriesError::LabelValueTooLong("a".into())),
            ),
        ];
        for (name, labels, want) in cases {
            let got = Series::new(name, labels.clone()).map(|_| ());
            assert_eq!(got, want, "{name} {labels:?}");
        }
        // 40 labels plus __name__ is one too many.
        assert_eq!(
            Series::new("ok", many.clone()).map(|_| ()),
            Err(SeriesError::TooManyLabels(MAX_LABELS + 1))
        );
        assert!(Series::new("ok", many[1..].to_vec()).is_ok());
        // Values may hold anything (quotes, newlines, non-ASCII).
        assert!(Series::new("ok", [("a", "\"\n}ü")]).is_ok());
        // A duplicate with an empty value is dropped before the duplicate check.
        assert!(Series::new("ok", [("a", "1"), ("a", "")]).is_ok());
    }

    #[test]
    fn from_labels_requires_name() {
        assert_eq!(
            Series::from_labels([("a", "1")]).map(|_| ()),
            Err(SeriesError::MissingName)
        );
        let s = Series::from_labels([("a", "1"), ("__name__", "m")]).unwrap();
        assert_eq!(s, Series::new("m", [("a", "1")]).unwrap());
    }

    #[test]
    fn stale_nan_bits() {
        let v = stale_nan();
        assert!(v.is_nan());
        assert_eq!(v.to_bits(), 0x7ff0_0000_0000_0002);
        assert!(is_stale_nan(v));
        assert!(!is_stale_nan(f64::NAN));
        assert_ne!(f64::NAN.to_bits(), STALE_NAN_BITS);
        assert!(Sample::stale(5).is_stale());
        assert!(!Sample::new(f64::NAN, 5).is_stale());
    }

    #[test]
    fn equality_and_hash_follow_labels() {
        use std::collections::HashSet;
        let a = Series::new("m", [("x", "1"), ("y", "2")]).unwrap();
        let b = Series::new("m", [("y", "2"), ("x", "1")]).unwrap();
        let c = Series::new("m", [("x", "1")]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let set: HashSet<Series> = [a, b, c].into_iter().collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn external_labels_validation() {
        assert!(ExternalLabels::new([("cluster", "a")]).is_ok());
        assert!(ExternalLabels::new([("cluster", "")]).unwrap().is_empty());
        assert_eq!(
            ExternalLabels::new([("__name__", "x")]).map(|_| ()),
            Err(SeriesError::ReservedLabelName("__name__".into()))
        );
        assert_eq!(
            ExternalLabels::new([("c", "1"), ("c", "2")]).map(|_| ()),
            Err(SeriesError::DuplicateLabelName("c".into()))
        );
    }

    /// The wire labels against an oracle that knows nothing of placements: every label of
    /// the series, the external ones it lacks added, sorted, each encoded on its own.
    #[test]
    fn external_labels_go_on_the_wire_in_name_order_without_a_copy_when_they_can() {
        let oracle = |series: &Series, ext: &[(&str, &str)]| {
            let mut all: std::collections::BTreeMap<&str, &str> = ext.iter().copied().collect();
            all.extend(series.labels());
            let mut out = Vec::new();
            for (name, value) in all {
                encode_label_field(name, value, &mut out);
            }
            out
        };
        let series = Series::new("up", [("node", "n1"), ("zone", "z")]).unwrap();
        // (external labels, where the series' own bytes are split; `None`: not used)
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: [Case; 7] = [
            (&[], None),
            (&[("cluster", "a")], Some("after __name__")),
            (&[("A", "x")], Some("first")),
            (&[("zzz", "x"), ("zz", "y")], Some("last")),
            (&[("cluster", "a"), ("dc", "b")], Some("after __name__")),
            (&[("cluster", "a"), ("region", "r")], None), // node sorts between them
            (&[("node", "other")], None),                 // the series shadows it
        ];
        for (ext, split) in cases {
            let external = ExternalLabels::new(ext.iter().copied()).unwrap();
            let wire = external.wire(&series);
            assert_eq!(
                wire.parts(external.encoded()).concat(),
                oracle(&series, ext),
                "{ext:?}"
            );
            let shared = Arc::ptr_eq(&wire.bytes, series.encoded_labels());
            assert_eq!(shared, split.is_some() || ext.is_empty(), "{ext:?}");
            let at = wire.at as usize;
            match split {
                Some("first") => assert_eq!(at, 0),
                Some("last") => assert_eq!(at, series.encoded_labels().len()),
                Some(_) => {
                    let name = series.labels.entries().next().unwrap().entry.len();
                    assert_eq!(at, name, "right after __name__");
                }
                None => assert_eq!(wire.at, NOWHERE, "{ext:?}"),
            }
        }
        // The placement is worked out once per series (for the first external label set it
        // meets): a merged copy is not made again.
        let series = Series::new("up", [("node", "n1"), ("zone", "z")]).unwrap();
        let external = ExternalLabels::new([("cluster", "a"), ("region", "r")]).unwrap();
        let (first, second) = (external.wire(&series), external.wire(&series));
        assert!(Arc::ptr_eq(&first.bytes, &second.bytes));
        // Another external label set on the same series is still right (not cached).
        let other = ExternalLabels::new([("cluster", "b")]).unwrap();
        assert_eq!(
            other.wire(&series).parts(other.encoded()).concat(),
            oracle(&series, &[("cluster", "b")])
        );
    }
}
