//! Malformed ELF files, from the fuzz target `elf_symbols` (fuzz/README.md).
use super::*;

/// fuzz/seeds/elf_symbols/tiny_alloc.so: two PT_LOAD segments, functions in the first.
fn seed() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/elf_symbols/tiny_alloc.so");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Offset of program header `i`'s field at `field` (ELF64 little-endian).
fn phdr_field(data: &[u8], i: usize, field: usize) -> usize {
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes(data[0x36..0x38].try_into().unwrap()) as usize;
    phoff + i * phentsize + field
}

fn set_u64(data: &mut [u8], at: usize, v: u64) {
    data[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

const P_OFFSET: usize = 8;
const P_VADDR: usize = 16;
const P_FILESZ: usize = 32;
const P_MEMSZ: usize = 40;

#[test]
fn seed_is_parsed() {
    let elf = ElfFile::parse(&seed()).unwrap();
    assert!(elf.function("malloc").is_some_and(|f| !f.head.is_empty()));
    assert!(elf.object("_PyRuntime").is_some());
    assert_eq!(elf.load_bias(0x7f00_0000_0000, 0), Some(0x7f00_0000_0000));
}

#[test]
fn segment_ending_past_the_address_space() {
    let mut data = seed();
    let at = phdr_field(&data, 0, P_VADDR);
    set_u64(&mut data, at, 1);
    let at = phdr_field(&data, 0, P_MEMSZ);
    set_u64(&mut data, at, u64::MAX);
    let elf = ElfFile::parse(&data).unwrap();
    assert_eq!(
        elf.load_bias(0x7f00_0000_0000, 0),
        Some(0x7f00_0000_0000 - 1)
    );
    let malloc = elf.function("malloc").expect("still inside the segment");
    assert_eq!(malloc.file_offset, malloc.vaddr - 1);
}

#[test]
fn segment_file_range_past_u64() {
    let mut data = seed();
    let at = phdr_field(&data, 0, P_OFFSET);
    set_u64(&mut data, at, u64::MAX - 0x10);
    let elf = ElfFile::parse(&data).unwrap();
    assert!(elf.function("malloc").is_none_or(|f| f.head.is_empty()));
    let _ = elf.load_bias(0x7f00_0000_0000, u64::MAX - 1);
    let _ = elf.load_bias(0x7f00_0000_0000, 0);
    let at = phdr_field(&data, 0, P_FILESZ);
    set_u64(&mut data, at, u64::MAX);
    let elf = ElfFile::parse(&data).unwrap();
    assert_eq!(elf.load_bias(0, u64::MAX - 1), None);
    assert_eq!(elf.load_bias(u64::MAX, u64::MAX - 1), Some(u64::MAX - 0xf));
}
