//! `/proc/PID/maps` text (the target's mappings, paths chosen by whoever mapped the files).
#![no_main]
use leaktrace::target::procmaps::{is_libc_name, parse, ProcMaps};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // ProcMaps::read parses the file's bytes the same way.
    let text = String::from_utf8_lossy(data);
    let maps = ProcMaps::new(parse(&text));
    let _ = maps.find_file(is_libc_name);
    for m in maps.iter() {
        let _ = m.is_file();
        // What symbolization does with an address inside a mapping.
        for addr in [m.start, m.end.wrapping_sub(1), m.start / 2 + m.end / 2] {
            if let Some(found) = maps.find(addr) {
                assert!(found.start <= addr && addr < found.end);
                let _ = found.file_offset(addr);
            }
        }
    }
});
