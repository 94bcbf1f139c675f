//! Reading the target's ELF files: where a function is (file offset for the uprobe) and its
//! first instruction bytes (to choose a probe offset the kernel can emulate).

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

/// Largest ELF file we are willing to read (guards against reading a huge file by mistake).
const MAX_ELF_BYTES: u64 = 2 << 30;
/// Bytes of a function kept for probe placement.
const HEAD_BYTES: usize = 16;
/// Data symbols whose initial bytes (from the file) are kept, and how many: `_PyRuntime` starts
/// with CPython 3.13+'s `_Py_DebugOffsets`, the layout description read before the target runs.
const KEEP_INITIAL_BYTES: &[(&str, usize)] = &[("_PyRuntime", 4096)];

/// Reads a whole file of the target (an executable or a library), refusing one larger than
/// [`MAX_ELF_BYTES`]. The size is checked on the bytes read, not only on the file's metadata,
/// so a file that grows while it is read cannot make this read more.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_ELF_BYTES,
        "refusing to read `{}`: {len} bytes is larger than any sane ELF file",
        path.display()
    );
    let mut data = Vec::new();
    file.take(MAX_ELF_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    anyhow::ensure!(
        data.len() as u64 <= MAX_ELF_BYTES,
        "refusing to read `{}`: it is larger than any sane ELF file ({MAX_ELF_BYTES} bytes)",
        path.display()
    );
    Ok(data)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub vaddr: u64,
    pub file_offset: u64,
    /// The first bytes of the function's code (fewer if the function is shorter).
    pub head: Vec<u8>,
}

/// The symbols of one ELF file that leaktrace needs.
pub struct ElfFile {
    functions: HashMap<String, Function>,
    /// Data symbols (`_PyRuntime`, `PyCode_Type`, ...): name -> virtual address.
    objects: HashMap<String, u64>,
    /// PT_LOAD segments: (vaddr, memsz, file offset, filesz).
    segments: Vec<(u64, u64, u64, u64)>,
    /// Executable PT_LOAD segments: (vaddr, filesz, file offset).
    code_segments: Vec<(u64, u64, u64)>,
    /// Initial bytes of the data symbols of [`KEEP_INITIAL_BYTES`] present in the file.
    initial: HashMap<String, Vec<u8>>,
    /// Start addresses of the functions `.eh_frame_hdr` lists (every function with unwind
    /// information, local ones of a stripped file included), sorted; empty without that section.
    function_starts: Vec<u64>,
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<Self> {
        let data = read_file(path)?;
        Self::parse(&data).with_context(|| format!("`{}` is not a usable ELF file", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let file = object::File::parse(data)?;
        let segments: Vec<(u64, u64, u64, u64)> = file
            .segments()
            .filter(|s| s.size() > 0)
            .map(|s| {
                let (off, filesz) = s.file_range();
                (s.address(), s.size(), off, filesz)
            })
            .collect();
        let code_segments = match &file {
            object::File::Elf64(elf) => {
                use object::read::elf::ProgramHeader;
                let endian = elf.endian();
                elf.elf_program_headers()
                    .iter()
                    .filter(|p| {
                        p.p_type(endian) == object::elf::PT_LOAD
                            && p.p_flags(endian) & object::elf::PF_X != 0
                    })
                    .map(|p| (p.p_vaddr(endian), p.p_filesz(endian), p.p_offset(endian)))
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut functions = HashMap::new();
        let mut objects = HashMap::new();
        // Dynamic symbols first (they are what a stripped library still has), then the full
        // symbol table where it exists (local functions of static interpreters).
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if sym.address() == 0 || sym.is_undefined() {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if sym.kind() == SymbolKind::Data {
                objects.entry(name.to_string()).or_insert(sym.address());
                continue;
            }

            if sym.kind() != SymbolKind::Text {
                continue;
            }
            if name.is_empty() || functions.contains_key(name) {
                continue;
            }
            let vaddr = sym.address();
            // Segment fields are the file's word: any sum of them may overflow.
            let Some(&(seg_addr, _, seg_off, filesz)) = segments
                .iter()
                .find(|(a, size, _, _)| vaddr >= *a && vaddr - a < *size)
            else {
                continue;
            };
            let rel = vaddr - seg_addr;
            if rel >= filesz {
                continue;
            }
            let Some(file_offset) = seg_off.checked_add(rel) else {
                continue;
            };
            let avail = filesz - rel;
            let want = sym.size().clamp(1, HEAD_BYTES as u64).min(avail) as usize;
            let head = usize::try_from(file_offset)
                .ok()
                .and_then(|at| data.get(at..at.checked_add(want)?))
                .map(<[u8]>::to_vec)
                .unwrap_or_default();
            functions.insert(
                name.to_string(),
                Function {
                    name: name.to_string(),
                    vaddr,
                    file_offset,
                    head,
                },
            );
        }
        let mut initial = HashMap::new();
        for &(name, len) in KEEP_INITIAL_BYTES {
            if let Some(bytes) = objects
                .get(name)
                .and_then(|&vaddr| file_bytes_at(data, &segments, vaddr, len))
            {
                initial.insert(name.to_string(), bytes);
            }
        }
        let function_starts = file
            .section_by_name(".eh_frame_hdr")
            .and_then(|s| Some(eh_frame_hdr_starts(s.data().ok()?, s.address())))
            .unwrap_or_default();
        Ok(Self {
            functions,
            objects,
            segments,
            code_segments,
            initial,
            function_starts,
        })
    }

    /// The function starting exactly at `vaddr`, per `.eh_frame_hdr`: its range, up to the next
    /// listed start (a function's end, or the padding after it; a split-off `.cold` part has
    /// an entry of its own). `None` when `vaddr` starts no listed function.
    pub fn function_range_at(&self, vaddr: u64) -> Option<(u64, u64)> {
        let i = self.function_starts.binary_search(&vaddr).ok()?;
        let end = self
            .function_starts
            .get(i + 1)
            .copied()
            .unwrap_or(vaddr.saturating_add(1));
        Some((vaddr, end))
    }

    /// Whether `vaddr` lies in the file part of an executable PT_LOAD segment.
    pub fn is_code(&self, vaddr: u64) -> bool {
        self.code_segments
            .iter()
            .any(|&(a, filesz, _)| vaddr >= a && vaddr - a < filesz)
    }

    /// How many instructions of the file's code (`data`: the whole file) take the address of
    /// the function at `target` as a value to compare or load: an absolute 32-bit immediate or
    /// displacement (a non-PIE executable), or a RIP-relative `lea` (position-independent
    /// code). Direct calls are not counted. A compiler that promoted the indirect call
    /// through an allocator table into `if (ptr == f) { f's body inlined }` leaves one such
    /// comparison per call site: hundreds, against a handful where the pointer is only
    /// stored. A byte-pattern scan, not a disassembly: a random match is possible, and
    /// rare (one in 2^32 per position).
    pub fn address_uses(&self, data: &[u8], target: u64) -> usize {
        let mut uses = 0;
        let absolute = u32::try_from(target).ok().map(u32::to_le_bytes);
        for &(vaddr, filesz, offset) in &self.code_segments {
            let Some(code) = usize::try_from(offset).ok().and_then(|at| {
                let end = at.checked_add(usize::try_from(filesz).ok()?)?;
                data.get(at..end.min(data.len()))
            }) else {
                continue;
            };
            for i in 0..code.len().saturating_sub(3) {
                let word: [u8; 4] = code[i..i + 4].try_into().expect("4 bytes");
                if absolute == Some(word) {
                    uses += 1;
                    continue;
                }
                // lea disp32(%rip), r64: REX.W (48/4c) 8d, ModRM mod=00 rm=101.
                if i >= 3
                    && matches!(code[i - 3], 0x48 | 0x4c)
                    && code[i - 2] == 0x8d
                    && code[i - 1] & 0xc7 == 0x05
                {
                    let next = vaddr.wrapping_add(i as u64 + 4);
                    let rel = i64::from(i32::from_le_bytes(word));
                    if next.wrapping_add_signed(rel) == target {
                        uses += 1;
                    }
                }
            }
        }
        uses
    }

    /// A function known by its address only (a local function of a stripped file, found in
    /// the target's memory), as [`ElfFile::function`] returns it from then on. Its head is
    /// not read, so its probe sits at its first byte. False when `vaddr` is not in the file.
    pub fn add_function(&mut self, name: &str, vaddr: u64) -> bool {
        let Some(&(seg_addr, _, seg_off, filesz)) = self
            .segments
            .iter()
            .find(|(a, size, _, _)| vaddr >= *a && vaddr - a < *size)
        else {
            return false;
        };
        let rel = vaddr - seg_addr;
        let Some(file_offset) = seg_off.checked_add(rel).filter(|_| rel < filesz) else {
            return false;
        };
        self.functions.insert(
            name.to_string(),
            Function {
                name: name.to_string(),
                vaddr,
                file_offset,
                head: Vec::new(),
            },
        );
        true
    }

    /// The initial bytes, as the file holds them, at the start of a data symbol kept by
    /// [`KEEP_INITIAL_BYTES`] (`_PyRuntime`): fewer when the file ends sooner, `None` when the
    /// symbol is absent or has no bytes in the file (`.bss`).
    pub fn initial_bytes(&self, name: &str) -> Option<&[u8]> {
        self.initial.get(name).map(Vec::as_slice)
    }

    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.get(name)
    }

    /// Every function found, in no particular order.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.values()
    }

    /// Virtual address of a data symbol.
    pub fn object(&self, name: &str) -> Option<u64> {
        self.objects.get(name).copied()
    }

    /// The load bias of this file in a process, from one of its mappings (`start` is where the
    /// file's bytes at `offset` were mapped): runtime address = bias + virtual address.
    pub fn load_bias(&self, start: u64, offset: u64) -> Option<u64> {
        let &(vaddr, _, seg_off, _) = self
            .segments
            .iter()
            .find(|(_, _, off, filesz)| offset >= *off && offset - off < *filesz.max(&1))?;
        start.checked_sub(vaddr.checked_add(offset - seg_off)?)
    }
}

/// Largest `.eh_frame_hdr` table read (entries); CPython has about 10 000 functions.
const MAX_EH_FRAME_ENTRIES: usize = 1 << 20;

/// Function start addresses from an `.eh_frame_hdr` section (`data`, loaded at `addr`), sorted:
/// the binary search table the unwinder uses, pairs of (initial location, FDE address). Only
/// the encodings linkers write on x86_64 are read (`DW_EH_PE_datarel | DW_EH_PE_sdata4` table,
/// 4-byte count); anything else, a truncated table or one out of order gives no starts.
pub fn eh_frame_hdr_starts(data: &[u8], addr: u64) -> Vec<u64> {
    const DATAREL_SDATA4: u8 = 0x3b;
    const UDATA4: u8 = 0x03;
    let [1, ptr_enc, count_enc, table_enc, rest @ ..] = data else {
        return Vec::new();
    };
    // eh_frame_ptr (skipped): 4 or 8 bytes by its encoding's format.
    let ptr_len = match ptr_enc & 0x0f {
        0x03 | 0x0b => 4,
        0x04 | 0x0c => 8,
        _ => return Vec::new(),
    };
    if *count_enc != UDATA4 || *table_enc != DATAREL_SDATA4 || rest.len() < ptr_len + 4 {
        return Vec::new();
    }
    let count =
        u32::from_le_bytes(rest[ptr_len..ptr_len + 4].try_into().expect("4 bytes")) as usize;
    let table = &rest[ptr_len + 4..];
    if count > MAX_EH_FRAME_ENTRIES || table.len() / 8 < count {
        return Vec::new();
    }
    let mut starts = Vec::with_capacity(count);
    for entry in table.chunks_exact(8).take(count) {
        let rel = i32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
        let Some(start) = addr.checked_add_signed(i64::from(rel)) else {
            return Vec::new();
        };
        if starts.last().is_some_and(|&last| last >= start) {
            return Vec::new();
        }
        starts.push(start);
    }
    starts
}

/// Up to `len` bytes the file holds at virtual address `vaddr` (within one PT_LOAD segment's
/// file part); `None` when there are none.
fn file_bytes_at(
    data: &[u8],
    segments: &[(u64, u64, u64, u64)],
    vaddr: u64,
    len: usize,
) -> Option<Vec<u8>> {
    let &(seg_addr, _, seg_off, filesz) = segments
        .iter()
        .find(|(a, size, _, _)| vaddr >= *a && vaddr - a < *size)?;
    let rel = vaddr - seg_addr;
    if rel >= filesz {
        return None;
    }
    let at = usize::try_from(seg_off.checked_add(rel)?).ok()?;
    let avail = usize::try_from(filesz - rel).ok()?.min(len);
    let end = at.checked_add(avail)?.min(data.len());
    Some(data.get(at..end)?.to_vec())
}

/// Chooses where in a function to put its uprobe.
///
/// x86 uprobes emulate a few instructions (push, jmp/jcc, call, nop) in the kernel and
/// single-step every other one out of line, which costs a second trap (measured here: ~4.5 us
/// on glibc's `free`, whose first instruction is `test %rdi,%rdi`, against ~1 us at `free+3`,
/// a `je`). If the function starts with one instruction that only sets flags (so arguments and
/// the stack pointer are still as the caller left them) followed by an emulated one, the probe
/// goes on the second. Otherwise it stays at offset 0.
pub fn probe_offset(head: &[u8]) -> u64 {
    if is_emulated(head) {
        return 0;
    }
    match flag_only_len(head) {
        Some(len) if is_emulated(&head[len..]) => len as u64,
        _ => 0,
    }
}

/// Length of a leading instruction that changes nothing but flags, for the forms compilers
/// put at function entry.
fn flag_only_len(code: &[u8]) -> Option<usize> {
    match code {
        // test r64, r64 (REX.W 85 /r, register form)
        [0x48 | 0x4c | 0x49 | 0x4d, 0x85, modrm, ..] if modrm >> 6 == 3 => Some(3),
        // test r32, r32
        [0x85, modrm, ..] if modrm >> 6 == 3 => Some(2),
        // cmpb $imm8, disp32(%rip)
        [0x80, 0x3d, _, _, _, _, _, ..] => Some(7),
        // cmpl/cmpq $imm8, disp32(%rip)
        [0x83, 0x3d, _, _, _, _, _, ..] => Some(7),
        [0x48, 0x83, 0x3d, _, _, _, _, _, ..] => Some(8),
        // endbr64: no architectural effect besides CET tracking
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4),
        _ => None,
    }
}

/// Whether the kernel emulates this instruction instead of single-stepping it.
fn is_emulated(code: &[u8]) -> bool {
    matches!(
        code,
        // push r64, push r8-r15
        [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]
        // jcc rel8, jcc rel32, jmp rel8/rel32, call rel32
        | [0x70..=0x7f, _, ..]
        | [0x0f, 0x80..=0x8f, _, _, _, _, ..]
        | [0xeb, _, ..]
        | [0xe9, _, _, _, _, ..]
        | [0xe8, _, _, _, _, ..]
        // nop
        | [0x90, ..]
    )
}

/// Whether a function's first bytes set up a frame pointer: `push %rbp` first (after an
/// `endbr64` where the build has CET), and `mov %rsp,%rbp` (either encoding) among the next
/// bytes (GCC may schedule an argument move or two between them).
pub fn sets_frame_pointer(head: &[u8]) -> bool {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    let code = head.strip_prefix(&ENDBR64[..]).unwrap_or(head);
    let Some((&0x55, rest)) = code.split_first() else {
        return false;
    };
    rest.windows(3)
        .any(|w| w == [0x48, 0x89, 0xe5] || w == [0x48, 0x8b, 0xec])
}

/// Functions looked at, at most, to tell whether a file keeps frame pointers.
const FRAME_POINTER_SAMPLE: usize = 4096;

impl ElfFile {
    /// Of the first functions by address (at most [`FRAME_POINTER_SAMPLE`], those with at
    /// least 4 bytes of code), how many set up a frame pointer: (with, looked at). Measured
    /// on the exported functions: Debian's python3.15 and libpython3.15 (built with
    /// `-fno-omit-frame-pointer`, PEP 831) 49% and 57% (the others start with a fast path or
    /// are tail-calling wrappers, which set their frame up later or never need one); builds
    /// without frame pointers 0-1.7% (Debian's 3.11 and 3.14, pyenv's 3.11, Debian 12's libc).
    pub fn frame_pointer_functions(&self) -> (usize, usize) {
        let mut heads: Vec<(u64, &[u8])> = self
            .functions
            .values()
            .filter(|f| f.head.len() >= 4)
            .map(|f| (f.vaddr, f.head.as_slice()))
            .collect();
        heads.sort_unstable_by_key(|(vaddr, _)| *vaddr);
        heads.dedup_by_key(|(vaddr, _)| *vaddr);
        let sample = &heads[..heads.len().min(FRAME_POINTER_SAMPLE)];
        let with = sample.iter().filter(|(_, h)| sets_frame_pointer(h)).count();
        (with, sample.len())
    }

    /// Whether native stacks can be unwound through this file's code with frame pointers:
    /// at least a fifth of its functions (of 20 or more looked at) set one up, between the
    /// two kinds of build measured above.
    pub fn keeps_frame_pointers(&self) -> bool {
        let (with, of) = self.frame_pointer_functions();
        of >= 20 && with * 5 >= of
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod hostile;
