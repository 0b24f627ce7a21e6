//! The segment file format: records written one after another, and a reader that survives
//! any damage.
//!
//! A record is a 16-byte header followed by its payload:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `pRW1` (also the format version) |
//! | 4..8 | payload length, `u32` little-endian, at most [`MAX_PAYLOAD`] |
//! | 8..12 | sample count, `u32` little-endian |
//! | 12..16 | CRC-32 (IEEE) of bytes 4..12 and the payload, `u32` little-endian |
//! | 16.. | payload: one request body exactly as it is POSTed (snappy block of a `WriteRequest`) |
//!
//! The checksum covers the length, so a damaged length is caught too. A reader that meets
//! damage (a bad magic, an impossible length, a checksum mismatch, a record cut short by a
//! crash) reports the damaged span once and resynchronises on the next magic marker; a false
//! marker inside a payload only matches if its CRC matches too (a 1 in 2³² chance).

/// The marker that starts every record. The last byte is the format version.
pub const MAGIC: [u8; 4] = *b"pRW1";

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;

/// The largest payload a record may hold (twice VictoriaMetrics' request limit); a header
/// announcing more is damage.
pub const MAX_PAYLOAD: usize = 2 * crate::VICTORIA_METRICS_MAX_REQUEST_BYTES;

/// CRC-32 of the length and sample-count fields and the payload.
fn checksum(header_fields: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(header_fields);
    crc.update(payload);
    crc.finalize()
}

/// Appends one record holding `payload` (a request body of `samples` samples) to `out`.
///
/// # Panics
/// When `payload` is longer than [`MAX_PAYLOAD`] (request bodies are far smaller).
pub fn encode_record(samples: u32, payload: &[u8], out: &mut Vec<u8>) {
    assert!(payload.len() <= MAX_PAYLOAD, "record payload too large");
    let mut fields = [0u8; 8];
    fields[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    fields[4..].copy_from_slice(&samples.to_le_bytes());
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&fields);
    out.extend_from_slice(&checksum(&fields, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses the record that starts at `bytes[0]`: `(samples, payload)`, or `None` when there is
/// no complete, intact record there.
pub fn parse_record(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let header = bytes.get(..HEADER_LEN)?;
    if header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let samples = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let crc = u32::from_le_bytes(header[12..16].try_into().ok()?);
    let payload = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    (checksum(&header[4..12], payload) == crc).then_some((samples, payload))
}

/// One item of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// An intact record at byte `offset`.
    Record {
        /// Where its header starts.
        offset: usize,
        /// The samples in its request body.
        samples: u32,
        /// The request body.
        payload: &'a [u8],
    },
    /// `len` bytes at `offset` that hold no intact record: a corrupted record, a record cut
    /// short at the end, or garbage. Each contiguous damaged span is reported once.
    Damaged {
        /// Where the span starts.
        offset: usize,
        /// Its length.
        len: usize,
    },
}

impl Item<'_> {
    /// The byte just after this item.
    pub fn end(&self) -> usize {
        match self {
            Item::Record {
                offset, payload, ..
            } => offset + HEADER_LEN + payload.len(),
            Item::Damaged { offset, len } => offset + len,
        }
    }
}

/// Reads the records of a segment's bytes in order, reporting damaged spans between them.
/// Never panics, whatever the bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader of the segment `bytes`, starting at the beginning.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// The first magic marker at or after `from`, or the end of the bytes.
    fn next_magic(&self, from: usize) -> usize {
        self.bytes
            .get(from..)
            .and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC))
            .map_or(self.bytes.len(), |i| from + i)
    }
}

impl<'a> Iterator for Reader<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        let rest = self.bytes.get(self.pos..).filter(|r| !r.is_empty())?;
        let offset = self.pos;
        let item = match parse_record(rest) {
            Some((samples, payload)) => Item::Record {
                offset,
                samples,
                payload,
            },
            None => Item::Damaged {
                offset,
                len: self.next_magic(offset + 1) - offset,
            },
        };
        self.pos = item.end();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            encode_record(i as u32 + 1, p, &mut out);
        }
        out
    }

    fn records(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        Reader::new(bytes)
            .filter_map(|item| match item {
                Item::Record {
                    samples, payload, ..
                } => Some((samples, payload.to_vec())),
                Item::Damaged { .. } => None,
            })
            .collect()
    }

    fn damaged(bytes: &[u8]) -> usize {
        Reader::new(bytes)
            .filter(|i| matches!(i, Item::Damaged { .. }))
            .count()
    }

    #[test]
    fn round_trip() {
        let bytes = segment(&[b"first", b"", b"third record"]);
        assert_eq!(
            records(&bytes),
            vec![
                (1, b"first".to_vec()),
                (2, vec![]),
                (3, b"third record".to_vec())
            ]
        );
        assert_eq!(damaged(&bytes), 0);
        assert_eq!(Reader::new(&[]).count(), 0);
    }

    #[test]
    fn a_record_cut_short_is_one_damaged_span() {
        let bytes = segment(&[b"first", b"second"]);
        for cut in 1..HEADER_LEN + b"second".len() {
            let cut_bytes = &bytes[..bytes.len() - cut];
            assert_eq!(
                records(cut_bytes),
                vec![(1, b"first".to_vec())],
                "cut {cut}"
            );
            assert_eq!(damaged(cut_bytes), 1, "cut {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_loses_only_its_record() {
        let bytes = segment(&[b"one", b"two two", b"three three three"]);
        let second = HEADER_LEN + 3;
        let third = second + HEADER_LEN + 7;
        for i in second..third {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                records(&bad),
                vec![(1, b"one".to_vec()), (3, b"three three three".to_vec())],
                "flipped byte {i}"
            );
            assert_eq!(damaged(&bad), 1, "flipped byte {i}");
        }
    }

    #[test]
    fn garbage_before_between_and_after_records_is_skipped() {
        let mut bytes = b"garbage".to_vec();
        encode_record(5, b"a", &mut bytes);
        bytes.extend_from_slice(b"pRW1 almost a header");
        encode_record(6, b"b", &mut bytes);
        bytes.extend_from_slice(b"tail");
        assert_eq!(
            records(&bytes),
            vec![(5, b"a".to_vec()), (6, b"b".to_vec())]
        );
        assert_eq!(damaged(&bytes), 3);
    }

    #[test]
    fn items_tile_the_input_exactly() {
        let bytes = segment(&[b"x", b"yy"]);
        let mut pos = 0;
        for item in Reader::new(&bytes[3..]) {
            let (Item::Record { offset, .. } | Item::Damaged { offset, .. }) = item;
            assert_eq!(offset, pos);
            pos = item.end();
        }
        assert_eq!(pos, bytes.len() - 3);
    }

    #[test]
    fn random_and_garbled_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let good = segment(&[b"alpha", &[0u8; 300], b"pRW1pRW1pRW1", b"omega"]);
        for round in 0..5000 {
            let bytes: Vec<u8> = match round % 3 {
                // Pure noise, sometimes with magic markers sprinkled in.
                0 => {
                    let mut b: Vec<u8> = (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect();
                    if rng.bool() && b.len() > 8 {
                        let at = rng.usize(..b.len() - 4);
                        b[at..at + 4].copy_from_slice(&MAGIC);
                    }
                    b
                }
                // A valid segment with random bytes changed.
                1 => {
                    let mut b = good.clone();
                    for _ in 0..rng.usize(1..6) {
                        let i = rng.usize(..b.len());
                        b[i] = rng.u8(..);
                    }
                    b
                }
                // A valid segment cut anywhere, or spliced with itself.
                _ => {
                    let cut = rng.usize(..=good.len());
                    let mut b = good[..cut].to_vec();
                    b.extend_from_slice(&good[rng.usize(..=good.len())..]);
                    b
                }
            };
            let mut end = 0;
            for item in Reader::new(&bytes) {
                assert!(item.end() > end || bytes.is_empty(), "progress");
                end = item.end();
                if let Item::Record {
                    offset, payload, ..
                } = item
                {
                    assert!(parse_record(&bytes[offset..]).is_some());
                    assert!(payload.len() <= MAX_PAYLOAD);
                }
            }
            assert_eq!(end, bytes.len(), "the items cover the input");
        }
    }
}
