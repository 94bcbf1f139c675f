//! `--mode growth`: resident memory growth by stack, from page faults, without allocator
//! uprobes (the kernel side is tracer-ebpf/src/growth.rs).
//!
//! Each first-touch fault on an anonymous page of the target becomes one 4 KiB record in the
//! same maps exact mode uses (kind [`AllocKind::PageFault`]), so the series, trends, rankings
//! and every report format work unchanged. This module attaches the tracepoints (mounting
//! tracefs when it is not), finds the one kernel structure offset the programs need in the
//! kernel's BTF, keeps the set of traced processes, and reads the mode's counters (the session
//! adds them and the mode's notes to reports: `session/report.rs`).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::TracePoint,
};
use tracer_common::growth::{
    GrowthConfig, GrowthCounter, GROWTH_COUNTER_SLOTS, MAP_BRK, MAP_GROWTH_CONFIG,
    MAP_GROWTH_COUNTERS, MAP_TARGETS, THP_ALWAYS, THP_MADVISE, THP_NEVER,
};

use crate::{error::user, probes::bpf::Tracer};

/// (program, tracepoint category, tracepoint name). Field offsets used by the programs are
/// those of this kernel's `format` files (checked by the integration tests' attach).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("growth_fault", "exceptions", "page_fault_user"),
    ("growth_fault", "exceptions", "page_fault_kernel"),
    ("growth_munmap", "syscalls", "sys_enter_munmap"),
    ("growth_madvise", "syscalls", "sys_enter_madvise"),
    ("growth_mmap", "syscalls", "sys_enter_mmap"),
    ("growth_brk_enter", "syscalls", "sys_enter_brk"),
    ("growth_brk_exit", "syscalls", "sys_exit_brk"),
    ("growth_mremap_enter", "syscalls", "sys_enter_mremap"),
    ("growth_mremap_exit", "syscalls", "sys_exit_mremap"),
];

const TRACEFS: &str = "/sys/kernel/tracing";

/// Counter names in reports, after the exact-mode ones.
pub const COUNTER_NAMES: [(GrowthCounter, &str); 8] = [
    (GrowthCounter::FaultFileBacked, "page_fault_file_backed"),
    (GrowthCounter::FaultVmaUnknown, "page_fault_vma_unknown"),
    (GrowthCounter::ChunkMapFull, "page_chunk_map_full"),
    (GrowthCounter::PagesMoved, "pages_moved"),
    (GrowthCounter::PageMoveLost, "page_move_lost"),
    (GrowthCounter::PagesReleased, "pages_released"),
    (GrowthCounter::MremapUnmatched, "mremap_unmatched"),
    (GrowthCounter::FaultMaybeHuge, "page_fault_maybe_huge"),
];

/// Mounts tracefs on /sys/kernel/tracing when nothing is there (aya reads tracepoint ids
/// from it). Returns whether leaktrace mounted it.
fn ensure_tracefs() -> Result<bool> {
    let dir = Path::new(TRACEFS);
    if dir.join("events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(false);
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("nodev"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(user(format!(
            "--mode growth needs tracefs and mounting it on {TRACEFS} failed ({}): run `mount -t tracefs nodev {TRACEFS}` as root and retry",
            std::io::Error::last_os_error()
        )));
    }
    Ok(true)
}

/// Attaches the growth tracepoints and starts tracing `pid`. Returns the tracepoints, for the
/// progress line.
pub fn attach(tracer: &mut Tracer, pid: u32) -> Result<Vec<&'static str>> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| {
        user(format!(
            "--mode growth needs the kernel's BTF (/sys/kernel/btf/vmlinux: {e}): use a kernel built with CONFIG_DEBUG_INFO_BTF, or --mode exact"
        ))
    })?;
    let field = |name: &str| {
        member_offset(&btf, "vm_area_struct", name).map(u64::from).ok_or_else(|| {
            user(format!("this kernel's BTF has no `vm_area_struct.{name}`: --mode growth cannot tell anonymous memory from files here; use --mode exact"))
        })
    };
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    {
        let mut config: Array<&mut MapData, GrowthConfig> = Array::try_from(
            tracer
                .ebpf
                .map_mut(MAP_GROWTH_CONFIG)
                .ok_or_else(|| anyhow!("eBPF object has no map {MAP_GROWTH_CONFIG}"))?,
        )?;
        config.set(
            0,
            GrowthConfig {
                vma_vm_file: field("vm_file")?,
                vma_vm_start: field("vm_start")?,
                vma_vm_end: field("vm_end")?,
                vma_vm_flags: field("vm_flags")?,
                thp: if thp.contains("[always]") {
                    THP_ALWAYS
                } else if thp.contains("[madvise]") {
                    THP_MADVISE
                } else {
                    THP_NEVER
                },
            },
            0,
        )?;
    }
    if ensure_tracefs()? {
        eprintln!("leaktrace: mounted tracefs on {TRACEFS} (tracepoint ids are read there); it stays mounted");
    }
    let mut names = Vec::new();
    for (program, category, name) in TRACEPOINTS {
        let tp: &mut TracePoint = tracer
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("eBPF object has no program {program}"))?
            .try_into()?;
        tp.attach(category, name).map_err(|e| {
            let hint = if *category == "syscalls" {
                "syscall tracepoints need CONFIG_FTRACE_SYSCALLS"
            } else {
                "page-fault tracepoints need an x86 kernel with CONFIG_TRACEPOINTS"
            };
            user(format!(
                "cannot attach tracepoint {category}:{name} ({e}); {hint}: use --mode exact on this kernel"
            ))
        })?;
        names.push(*name);
    }
    add_target(tracer, pid)?;
    Ok(names)
}

/// Starts tracing process `pid` with the mode's tracepoints (which run for every process and
/// look their tgid up first); worker processes are added the same way. Its brk is seeded from
/// /proc (the kernel keeps it up to date from then on, at every `brk` call).
pub fn add_target(tracer: &mut Tracer, pid: u32) -> Result<()> {
    {
        let mut targets: HashMap<&mut MapData, u32, u32> = HashMap::try_from(
            tracer
                .ebpf
                .map_mut(MAP_TARGETS)
                .ok_or_else(|| anyhow!("eBPF object has no map {MAP_TARGETS}"))?,
        )?;
        targets
            .insert(pid, 0, 0)
            .with_context(|| format!("cannot add pid {pid} to the traced processes"))?;
    }
    if let Some(brk) = current_brk(pid) {
        let mut map: HashMap<&mut MapData, u32, u64> = HashMap::try_from(
            tracer
                .ebpf
                .map_mut(MAP_BRK)
                .ok_or_else(|| anyhow!("eBPF object has no map {MAP_BRK}"))?,
        )?;
        // BPF_NOEXIST: a brk call seen since the insert above knows better.
        let _ = map.insert(pid, brk, 1);
    }
    Ok(())
}

/// Stops tracing process `pid` (its recorded pages stay until the report).
pub fn remove_target(tracer: &mut Tracer, pid: u32) -> Result<()> {
    if let Some(m) = tracer.ebpf.map_mut(MAP_TARGETS) {
        let mut targets: HashMap<&mut MapData, u32, u32> = HashMap::try_from(m)?;
        let _ = targets.remove(&pid);
    }
    if let Some(m) = tracer.ebpf.map_mut(MAP_BRK) {
        let mut brk: HashMap<&mut MapData, u32, u64> = HashMap::try_from(m)?;
        let _ = brk.remove(&pid);
    }
    Ok(())
}

/// The program break of `pid`: the end of its `[heap]` mapping, or `start_brk` from
/// /proc/PID/stat when the heap has not grown yet.
fn current_brk(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    if let Some(end) = heap_end(&maps) {
        return Some(end);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces); start_brk is field 47.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(47 - 3)?.parse().ok()
}

fn heap_end(maps: &str) -> Option<u64> {
    let line = maps.lines().find(|l| l.trim_end().ends_with("[heap]"))?;
    let range = line.split_whitespace().next()?;
    u64::from_str_radix(range.split('-').nth(1)?, 16).ok()
}

/// The growth programs' counters, summed over CPUs.
pub fn counters(tracer: &Tracer) -> Result<[u64; GROWTH_COUNTER_SLOTS as usize]> {
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        tracer
            .ebpf
            .map(MAP_GROWTH_COUNTERS)
            .ok_or_else(|| anyhow!("eBPF object has no map {MAP_GROWTH_COUNTERS}"))?,
    )?;
    let mut out = [0u64; GROWTH_COUNTER_SLOTS as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = map.get(&(i as u32), 0)?.iter().sum();
    }
    Ok(out)
}

/// Byte offset of member `member` of `struct name` in raw BTF `data` (the kernel's
/// /sys/kernel/btf/vmlinux), looking into anonymous struct and union members too.
pub fn member_offset(data: &[u8], name: &str, member: &str) -> Option<u32> {
    let btf = Btf::parse(data)?;
    let id = btf
        .types
        .iter()
        .position(|t| matches!(t.kind, KIND_STRUCT) && btf.name(t.name_off) == Some(name))?;
    btf.find_member(id, member, 0)
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

struct BtfType {
    name_off: u32,
    kind: u32,
    /// (name_off, type id, bit offset) of struct/union members; (name_off, value low, value
    /// high) of enum members.
    members: Vec<(u32, u32, u32)>,
}

/// Just enough of a BTF reader for [`member_offset`] and the kernel feature checks of
/// `--version` ([`crate::probes::features`]).
pub struct Btf<'a> {
    strings: &'a [u8],
    /// Index = type id - 1.
    types: Vec<BtfType>,
}

impl<'a> Btf<'a> {
    /// Reads raw BTF (the kernel's /sys/kernel/btf/vmlinux); None if it is not BTF.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
        if u16_at(0)? != 0xeb9f {
            return None;
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
        let (mut at, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        let mut types = Vec::new();
        while at < end {
            let name_off = u32_at(at)?;
            let info = u32_at(at + 4)?;
            let (vlen, kind, kind_flag) = (info & 0xffff, (info >> 24) & 0x1f, info >> 31);
            at += 12;
            let mut members = Vec::new();
            at += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen as usize {
                        let m = at + 12 * i;
                        let offset = u32_at(m + 8)?;
                        let bits = if kind_flag == 1 {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push((u32_at(m)?, u32_at(m + 4)?, bits));
                    }
                    12 * vlen as usize
                }
                KIND_ENUM | KIND_ENUM64 => {
                    // Members as (name_off, low 32 bits of the value, high 32 bits).
                    let size = if kind == KIND_ENUM { 8 } else { 12 };
                    for i in 0..vlen as usize {
                        let m = at + size * i;
                        let high = if kind == KIND_ENUM { 0 } else { u32_at(m + 8)? };
                        members.push((u32_at(m)?, u32_at(m + 4)?, high));
                    }
                    size * vlen as usize
                }
                KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_DATASEC => 12 * vlen as usize,
                _ => 0,
            };
            types.push(BtfType {
                name_off,
                kind,
                members,
            });
        }
        Some(Self { strings, types })
    }

    /// The value of `member` of `enum name` (a kernel that knows an attach type has it in
    /// `enum bpf_attach_type`).
    pub fn enum_value(&self, name: &str, member: &str) -> Option<u64> {
        self.types
            .iter()
            .filter(|t| {
                matches!(t.kind, KIND_ENUM | KIND_ENUM64) && self.name(t.name_off) == Some(name)
            })
            .flat_map(|t| &t.members)
            .find(|&&(name_off, _, _)| self.name(name_off) == Some(member))
            .map(|&(_, low, high)| u64::from(high) << 32 | u64::from(low))
    }

    /// Whether a function (`BTF_KIND_FUNC`) called `name` is described: kfuncs such as
    /// `bpf_session_cookie` are listed this way.
    pub fn has_function(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.kind == KIND_FUNC && self.name(t.name_off) == Some(name))
    }

    fn name(&self, off: u32) -> Option<&str> {
        let s = self.strings.get(off as usize..)?;
        let end = s.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&s[..end]).ok()
    }

    fn find_member(&self, index: usize, member: &str, depth: u32) -> Option<u32> {
        let t = self.types.get(index)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for &(name_off, _, bits) in &t.members {
            if name_off != 0 && self.name(name_off) == Some(member) {
                return Some(bits / 8);
            }
        }
        for &(name_off, type_id, bits) in &t.members {
            if name_off == 0 && type_id > 0 {
                if let Some(off) = self.find_member(type_id as usize - 1, member, depth + 1) {
                    return Some(bits / 8 + off);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offset of `name` in a BTF string section that starts with NUL.
    fn name_at(strings: &[u8], name: &str) -> u32 {
        let n = name.len();
        let pos = strings
            .windows(n + 2)
            .position(|w| w[0] == 0 && &w[1..=n] == name.as_bytes() && w[n + 1] == 0)
            .unwrap();
        (pos + 1) as u32
    }

    /// A BTF blob (header, then types, then strings) from type words built by `types`.
    fn blob(strings: &[u8], types: impl FnOnce(&mut dyn FnMut(&[u32]))) -> Vec<u8> {
        let mut words: Vec<u8> = Vec::new();
        types(&mut |ws: &[u32]| {
            for w in ws {
                words.extend_from_slice(&w.to_le_bytes());
            }
        });
        let mut out = Vec::new();
        for w in [0xeb9f_u16 as u32 | 1 << 16, 24, 0, words.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for w in [words.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&words);
        out.extend_from_slice(strings);
        out
    }

    /// A BTF blob with `struct s { int a; union { long b; struct { int c; long d; }; }; }`.
    fn synthetic() -> Vec<u8> {
        let strings = b"\0int\0long\0s\0a\0b\0c\0d\0";
        let off = |n: &str| name_at(strings, n);
        blob(strings, |push| {
            // 1: int, 2: long
            push(&[off("int"), KIND_INT << 24, 4, 32]);
            push(&[off("long"), KIND_INT << 24, 8, 64]);
            // 3: anonymous struct { int c; long d; }
            push(&[0, KIND_STRUCT << 24 | 2, 16]);
            push(&[off("c"), 1, 0, off("d"), 2, 64]);
            // 4: anonymous union { long b; struct 3; }
            push(&[0, KIND_UNION << 24 | 2, 16]);
            push(&[off("b"), 2, 0, 0, 3, 0]);
            // 5: struct s { int a; union 4; }
            push(&[off("s"), KIND_STRUCT << 24 | 2, 24]);
            push(&[off("a"), 1, 0, 0, 4, 64]);
        })
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = synthetic();
        assert_eq!(member_offset(&btf, "s", "a"), Some(0));
        assert_eq!(member_offset(&btf, "s", "b"), Some(8));
        assert_eq!(member_offset(&btf, "s", "c"), Some(8));
        assert_eq!(member_offset(&btf, "s", "d"), Some(16));
        assert_eq!(member_offset(&btf, "s", "e"), None);
        assert_eq!(member_offset(&btf, "t", "a"), None);
        assert_eq!(member_offset(b"not btf", "s", "a"), None);
    }

    #[test]
    fn reads_enum_values_and_functions() {
        let strings = b"\0e\0A\0B\0e64\0C\0f\0";
        let at = |n: &str| name_at(strings, n);
        let btf = blob(strings, |push| {
            // 1: enum e { A = 7, B = 48 }; 2: enum64 e64 { C = 1 << 40 }; 3: func f
            push(&[at("e"), KIND_ENUM << 24 | 2, 4, at("A"), 7, at("B"), 48]);
            push(&[at("e64"), KIND_ENUM64 << 24 | 1, 8, at("C"), 0, 1 << 8]);
            push(&[at("f"), KIND_FUNC << 24, 0]);
        });
        let btf = Btf::parse(&btf).unwrap();
        assert_eq!(btf.enum_value("e", "A"), Some(7));
        assert_eq!(btf.enum_value("e", "B"), Some(48));
        assert_eq!(btf.enum_value("e64", "C"), Some(1 << 40));
        assert_eq!(btf.enum_value("e", "C"), None, "C is e64's");
        assert!(btf.has_function("f"));
        assert!(!btf.has_function("e"));
    }

    #[test]
    fn finds_vm_file_in_this_kernel() {
        // Every kernel leaktrace supports has BTF (CONFIG_DEBUG_INFO_BTF); growth mode needs it.
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let off = member_offset(&btf, "vm_area_struct", "vm_file").expect("vm_file");
        // vm_start, vm_end, vm_mm, vm_page_prot and vm_flags come first, all 8 bytes.
        assert!(off >= 40 && off % 8 == 0, "{off}");
        assert_eq!(member_offset(&btf, "vm_area_struct", "vm_start"), Some(0));
        assert_eq!(member_offset(&btf, "vm_area_struct", "vm_end"), Some(8));
        // In an anonymous union with `__vm_flags`.
        assert!(member_offset(&btf, "vm_area_struct", "vm_flags").is_some());
    }

    #[test]
    fn heap_end_comes_from_the_heap_line() {
        let maps = "55d0c0000000-55d0c0001000 r--p 00000000 08:01 12 /usr/bin/x\n\
                    55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0                          [heap]\n";
        assert_eq!(heap_end(maps), Some(0x55d0_c102_1000));
        assert_eq!(heap_end("7f00-7f01 rw-p 0 00:00 0 \n"), None);
        assert!(current_brk(std::process::id()).is_some());
    }
}
