//! Which CPython a binary is: `Py_Version`, `DT_NEEDED`, read-only strings, file name.
#![no_main]
use leaktrace::python::version::{detect_bytes, from_file_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((major, _)) = detect_bytes(data, None) {
        assert_eq!(major, 3);
    }
    // File names come from the target's mappings too.
    if data.len() <= 64 {
        if let Ok(name) = std::str::from_utf8(data) {
            let _ = from_file_name(name);
        }
    }
});
