//! The target's ELF files: symbol tables, segments and function heads (probe placement).
#![no_main]
use leaktrace::target::elf::{probe_offset, ElfFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(elf) = ElfFile::parse(data) else {
        return;
    };
    for f in elf.functions() {
        let at = probe_offset(&f.head);
        assert!(
            at < f.head.len().max(1) as u64,
            "probe past the head of {}",
            f.name
        );
        // How pyruntime finds the load bias: a mapping of the file, at some address.
        for start in [0, 0x7f00_0000_0000, u64::MAX] {
            let _ = elf.load_bias(start, f.file_offset);
            let _ = elf.load_bias(start, 0);
        }
    }
    for name in ["_PyRuntime", "Py_Version", "PyCode_Type"] {
        let _ = elf.object(name);
    }
});
