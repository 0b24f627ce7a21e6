//! The buffer's segment reader on arbitrary bytes: never panics, its items tile the input
//! exactly, every record it reports parses again, and a record written around the input
//! reads back intact between the damaged spans.

#![no_main]

use libfuzzer_sys::fuzz_target;
use remote_write::buffer::segment::{Item, MAX_PAYLOAD, Reader, encode_record, parse_record};

fuzz_target!(|data: &[u8]| {
    let mut end = 0;
    for item in Reader::new(data) {
        let start = match item {
            Item::Record {
                offset, payload, ..
            } => {
                assert!(payload.len() <= MAX_PAYLOAD);
                assert!(parse_record(&data[offset..]).is_some());
                offset
            }
            Item::Damaged { offset, len } => {
                assert!(len > 0);
                offset
            }
        };
        assert_eq!(start, end, "items are contiguous");
        end = item.end();
    }
    assert_eq!(end, data.len(), "items cover the input");

    // The input as a payload round-trips, and survives garbage on both sides.
    let mut framed = data.iter().rev().take(7).copied().collect::<Vec<u8>>();
    let before = framed.len();
    encode_record(data.len() as u32, data, &mut framed);
    framed.extend_from_slice(&data[..data.len().min(5)]);
    let found = Reader::new(&framed).any(|item| {
        matches!(item, Item::Record { offset, samples, payload }
            if offset == before && samples as usize == data.len() && payload == data)
    });
    assert!(found, "the framed record is found");
});
