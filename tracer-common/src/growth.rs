//! `--mode growth`: shared types of the page-fault tracepoints (tracer-ebpf/src/growth.rs) and
//! their user side (tracer-user/src/probes/growth.rs).
//!
//! A first-touch fault on an anonymous page of a traced process is recorded in [`crate::MAP_ALLOCS`]
//! as one 4 KiB "allocation" keyed by the page address, with [`crate::AllocKind::PageFault`];
//! unmapping, `madvise` frees, brk shrinking and `mremap` remove or move those pages.

use core::mem::size_of;

/// Traced processes: tgid -> flags (reserved, 0). Tracepoints fire for every process on the
/// host; this is the first lookup of every program.
pub const MAP_TARGETS: &str = "TARGETS";
/// 2 MiB chunks of address space that hold (or held) recorded pages: [`chunk_key`] ->
/// [`ChunkInfo`]. Unmapping walks the chunks of its range and only looks at the pages of
/// present ones.
pub const MAP_PAGE_CHUNKS: &str = "PAGE_CHUNKS";
/// Current program break per traced process: tgid -> break (from `brk`'s return value).
pub const MAP_BRK: &str = "BRK";
/// `mremap` arguments from syscall entry to exit: pid_tgid -> [`MremapArgs`].
pub const MAP_MREMAP_PENDING: &str = "MREMAP_PENDING";
/// One [`GrowthConfig`] at index 0, written by user space before attaching.
pub const MAP_GROWTH_CONFIG: &str = "GROWTH_CONFIG";
/// Per-CPU counters of the growth programs, indexed by [`GrowthCounter`].
pub const MAP_GROWTH_COUNTERS: &str = "GROWTH_COUNTERS";

/// Capacity of [`MAP_TARGETS`] (and [`MAP_BRK`]).
pub const MAX_TARGETS: u32 = 4096;
/// Capacity of [`MAP_PAGE_CHUNKS`]: 2 MiB chunks, so 512 GiB of touched address space.
pub const MAX_PAGE_CHUNKS: u32 = 262_144;
/// Capacity of [`MAP_MREMAP_PENDING`]: threads inside `mremap` at once.
pub const MAX_MREMAP_PENDING: u32 = 16_384;
/// log2 of the chunk size of [`MAP_PAGE_CHUNKS`].
pub const CHUNK_SHIFT: u32 = 21;
/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// Bytes of one recorded page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// Key of [`MAP_PAGE_CHUNKS`]: the tgid in the high half, the chunk number (address >> 21,
/// below 2^27 for 47-bit user addresses) in the low half.
#[inline(always)]
pub const fn chunk_key(tgid: u32, addr: u64) -> u64 {
    ((tgid as u64) << 32) | ((addr >> CHUNK_SHIFT) & 0xffff_ffff)
}

/// Value of [`MAP_GROWTH_CONFIG`]: kernel structure offsets found in the kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrowthConfig {
    /// Byte offset of `vm_file` in `struct vm_area_struct` (NULL for anonymous memory).
    pub vma_vm_file: u64,
    /// Byte offsets of `vm_start` and `vm_end`.
    pub vma_vm_start: u64,
    pub vma_vm_end: u64,
    /// Byte offset of `vm_flags`.
    pub vma_vm_flags: u64,
    /// Transparent huge pages: [`THP_NEVER`], [`THP_MADVISE`] or [`THP_ALWAYS`]. A fault in a
    /// mapping that covers the whole aligned 2 MiB block around it, and that THP applies to,
    /// may map 2 MiB at once.
    pub thp: u64,
}
const _: () = assert!(size_of::<GrowthConfig>() == 40);

/// `/sys/kernel/mm/transparent_hugepage/enabled` is `never`.
pub const THP_NEVER: u64 = 0;
/// ... `madvise`: only mappings with `MADV_HUGEPAGE`.
pub const THP_MADVISE: u64 = 1;
/// ... `always`: every mapping without `MADV_NOHUGEPAGE`.
pub const THP_ALWAYS: u64 = 2;

/// Value of [`MAP_PAGE_CHUNKS`]: the chunk may hold recorded pages, and the last anonymous
/// mapping seen in it, so that most faults need no mapping lookup (`bpf_find_vma` costs
/// ~15 us in a fault, where it must defer its unlock to an irq_work). Every syscall that can
/// change what is mapped in a range (munmap, mmap MAP_FIXED, brk, mremap) clears it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkInfo {
    /// `[anon_start, anon_end)`: an anonymous private mapping (empty when unknown).
    pub anon_start: u64,
    pub anon_end: u64,
    /// 1 when transparent huge pages apply to that mapping.
    pub huge_ok: u64,
}
const _: () = assert!(size_of::<ChunkInfo>() == 24);

/// Value of [`MAP_MREMAP_PENDING`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MremapArgs {
    pub addr: u64,
    pub old_len: u64,
    pub new_len: u64,
}
const _: () = assert!(size_of::<MremapArgs>() == 24);

/// Indexes into [`MAP_GROWTH_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrowthCounter {
    /// Not-present faults on file-backed or shared memory (code, mapped files): not counted.
    FaultFileBacked = 0,
    /// Faults whose mapping could not be looked up (`bpf_find_vma` failed, e.g. the address
    /// space was being changed by another thread): not counted, so numbers are lower bounds.
    FaultVmaUnknown = 1,
    /// Pages not recorded because [`MAP_PAGE_CHUNKS`] was full.
    ChunkMapFull = 2,
    /// Recorded pages moved to a new address by `mremap`.
    PagesMoved = 3,
    /// Recorded pages that `mremap` moved but that could not be re-recorded (map full).
    PageMoveLost = 4,
    /// Pages released by munmap, madvise, brk or mremap.
    PagesReleased = 5,
    /// `mremap` exits with no matching entry (pending map full, or attached mid-call).
    MremapUnmatched = 6,
    /// Recorded faults that may have mapped a 2 MiB transparent huge page (THP `always`, and
    /// the mapping covers the aligned 2 MiB block): each counts 4 KiB, so a lower bound.
    FaultMaybeHuge = 7,
}

/// Number of slots in [`MAP_GROWTH_COUNTERS`].
pub const GROWTH_COUNTER_SLOTS: u32 = 8;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain-old-data, `#[repr(C)]`, no implicit padding (checked by the size asserts).
    unsafe impl aya::Pod for GrowthConfig {}
    unsafe impl aya::Pod for MremapArgs {}
    unsafe impl aya::Pod for ChunkInfo {}
}
