//! CPython line tables read from the target's memory: lnotab (3.8/3.9), the 3.10 linetable,
//! the 3.11+ location table.
//!
//! Input: format selector (1 byte), `co_firstlineno` (i32 LE), instruction byte offset (i64 LE),
//! then the raw table.
#![no_main]
use leaktrace::python::linetable::{decode, Format};
use libfuzzer_sys::fuzz_target;

/// Offsets decoded from 0 in every run, besides the one in the input.
const SWEEP: i64 = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((first, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let Some((offset, table)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let format = match selector % 3 {
        0 => Format::Lnotab,
        1 => Format::Linetable310,
        _ => Format::Locations,
    };
    let first = i32::from_le_bytes(*first);
    let _ = decode(format, first, table, i64::from_le_bytes(*offset));
    for off in -2..SWEEP {
        let _ = decode(format, first, table, off);
    }
});
