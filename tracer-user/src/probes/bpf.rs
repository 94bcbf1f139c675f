//! Loading leaktrace's eBPF object, attaching it to one process, and reading its maps.
//!
//! Dropping a [`Tracer`] detaches every probe (aya closes the perf links); the kernel does the
//! same if leaktrace is killed, because the links are file descriptors of this process.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf, EbpfLoader,
};
use tracer_common::{
    cookie, sampling, AllocInfo, AllocKey, AllocKind, Counter, MapEvent, NativeStack, PyConfig,
    PyStack, StackKey, StackTotals, COUNTER_SLOTS, MAP_ALLOCS, MAP_COUNTERS, MAP_EVENTS,
    MAP_PENDING, MAP_PY_STACKS, MAP_PY_TARGETS, MAP_PY_TSTATES, MAP_STACKS, MAP_STACK_TOTALS,
};

use crate::probes::{limits::MapLimits, mode::Sampling};

use crate::target::elf::{probe_offset, ElfFile};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// One probed function: its name, its entry program, the entry's attach cookie (for the
/// generic `alloc_enter`), and whether the return is needed.
pub struct Probe {
    pub function: &'static str,
    pub program: &'static str,
    pub cookie: u64,
    pub needs_return: bool,
}

const NONE: u64 = cookie::ARG_NONE;

const fn alloc(function: &'static str, kind: AllocKind, size: u64, factor: u64, ptr: u64) -> Probe {
    Probe {
        function,
        program: "alloc_enter",
        cookie: cookie::new(kind, size, factor, ptr),
        needs_return: true,
    }
}

const fn other(function: &'static str, program: &'static str, needs_return: bool) -> Probe {
    Probe {
        function,
        program,
        cookie: 0,
        needs_return,
    }
}

/// The C library's allocator functions. Functions that alias one another (glibc's `memalign`
/// is `aligned_alloc`) are attached once.
pub const PROBES: &[Probe] = &[
    alloc("malloc", AllocKind::Malloc, 0, NONE, NONE),
    alloc("calloc", AllocKind::Calloc, 0, 1, NONE),
    alloc("realloc", AllocKind::Realloc, 1, NONE, 0),
    alloc("reallocarray", AllocKind::ReallocArray, 1, 2, 0),
    alloc("posix_memalign", AllocKind::PosixMemalign, 2, NONE, 0),
    alloc("memalign", AllocKind::Memalign, 1, NONE, NONE),
    alloc("aligned_alloc", AllocKind::AlignedAlloc, 1, NONE, NONE),
    alloc("valloc", AllocKind::Valloc, 0, NONE, NONE),
    Probe {
        cookie: cookie::new(AllocKind::Pvalloc, 0, NONE, NONE) | cookie::PAGE_ROUND,
        ..alloc("pvalloc", AllocKind::Pvalloc, 0, NONE, NONE)
    },
    other("free", "free_enter", false),
    other("mmap", "mmap_enter", true),
    other("munmap", "munmap_enter", false),
    other("mremap", "mremap_enter", true),
];
const RETURN_PROGRAM: &str = "alloc_return";
/// Functions without which tracing makes no sense.
const REQUIRED: &[&str] = &["malloc", "free"];

/// `--pymalloc`: pymalloc's own functions (local symbols, in the symbol table), which every
/// PyObject_* and PyMem_* call reaches, internal calls included. Their first argument is the
/// allocator context.
pub const PYMALLOC_PROBES: &[Probe] = &[
    alloc("_PyObject_Malloc", AllocKind::PyMalloc, 1, NONE, NONE),
    alloc("_PyObject_Calloc", AllocKind::PyCalloc, 1, 2, NONE),
    alloc("_PyObject_Realloc", AllocKind::PyRealloc, 2, NONE, 1),
    other("_PyObject_Free", "pyfree_ctx_enter", false),
];

/// `--pymalloc` on a free-threaded interpreter (3.13t+), where mimalloc replaces pymalloc: the
/// functions behind `PyObject_*` and `PyMem_*` (local symbols too), same signatures as
/// pymalloc's (the allocator context first).
pub const MIMALLOC_PROBES: &[Probe] = &[
    alloc("_PyObject_MiMalloc", AllocKind::PyMalloc, 1, NONE, NONE),
    alloc("_PyObject_MiCalloc", AllocKind::PyCalloc, 1, 2, NONE),
    alloc("_PyObject_MiRealloc", AllocKind::PyRealloc, 2, NONE, 1),
    other("_PyObject_MiFree", "pyfree_ctx_enter", false),
    alloc("_PyMem_MiMalloc", AllocKind::PyMalloc, 1, NONE, NONE),
    alloc("_PyMem_MiCalloc", AllocKind::PyCalloc, 1, 2, NONE),
    alloc("_PyMem_MiRealloc", AllocKind::PyRealloc, 2, NONE, 1),
    other("_PyMem_MiFree", "pyfree_ctx_enter", false),
];

/// `--pymalloc` on an interpreter without a symbol table: the exported entry points only
/// (CPython's own internal calls bypass them).
pub const PYMALLOC_EXPORTED_PROBES: &[Probe] = &[
    alloc("PyObject_Malloc", AllocKind::PyMalloc, 0, NONE, NONE),
    alloc("PyObject_Calloc", AllocKind::PyCalloc, 0, 1, NONE),
    alloc("PyObject_Realloc", AllocKind::PyRealloc, 1, NONE, 0),
    other("PyObject_Free", "free_enter", false),
    alloc("PyMem_Malloc", AllocKind::PyMalloc, 0, NONE, NONE),
    alloc("PyMem_Calloc", AllocKind::PyCalloc, 0, 1, NONE),
    alloc("PyMem_Realloc", AllocKind::PyRealloc, 1, NONE, 0),
    other("PyMem_Free", "free_enter", false),
];

/// Map sizes and mode, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub maps: MapLimits,
    /// `--mode sampled`; None: exact.
    pub sampling: Option<Sampling>,
    /// Put every probe at its function's first byte (benchmarks).
    pub probe_at_entry: bool,
    /// Attach no return probe (benchmarks: what the return trap costs).
    pub no_return_probe: bool,
    /// Which programs to load: uprobes (exact) or tracepoints (growth).
    pub mode: crate::probes::mode::Mode,
}

/// One attached probe, for the progress line and the docs.
#[derive(Clone, Debug)]
pub struct Attached {
    pub function: &'static str,
    /// Bytes past the function's start where the probe sits (see [`probe_offset`]).
    pub offset: u64,
}

pub struct Tracer {
    pub(crate) ebpf: Ebpf,
    sampling: Option<Sampling>,
    probe_at_entry: bool,
    no_return_probe: bool,
    events: RingBuf<aya::maps::MapData>,
    /// Every probe attached (program name, link), detached together in [`Tracer::detach_all`].
    links: Vec<(&'static str, UProbeLinkId)>,
}

/// Every counter, summed over CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters(pub [u64; COUNTER_SLOTS as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Allocations that were made but could not be tracked: the report's numbers are lower
    /// bounds when this is not zero. A missed return is not one (the call never handed memory
    /// to the program), nor is a stack that could not be stored (the allocation is counted,
    /// with a shorter stack).
    pub fn dropped(&self) -> u64 {
        self.get(Counter::AllocMapFull)
            + self.get(Counter::PendingFull)
            + self.get(Counter::EventsLost)
    }

    pub const NAMES: [(Counter, &'static str); COUNTER_SLOTS as usize] = [
        (Counter::AllocsSeen, "allocs_seen"),
        (Counter::FreesSeen, "frees_seen"),
        (Counter::AllocMapFull, "alloc_map_full"),
        (Counter::StackError, "stack_unwind_failed"),
        (Counter::StackCollision, "stack_map_collision_or_full"),
        (Counter::FreeUnknown, "free_of_untracked_pointer"),
        (Counter::MissedReturn, "missed_return"),
        (Counter::PendingFull, "pending_map_full"),
        (Counter::StackTotalsFull, "stack_totals_map_full"),
        (Counter::EventsLost, "mmap_events_lost"),
        (Counter::SizeOverflow, "size_overflow"),
        (Counter::Nested, "nested_allocator_calls"),
        (Counter::PyNoThreadState, "python_thread_unknown"),
        (Counter::PyTruncated, "python_stack_truncated"),
        (Counter::PyStacksFull, "python_stack_map_full"),
        (Counter::PyReadError, "python_frame_unreadable"),
        (Counter::Sampled, "sampled_calls"),
        (Counter::Unsampled, "unsampled_calls"),
    ];
}

/// The kernel refuses (EINVAL) a uprobe where another tool holds one on the same instruction
/// with a different reference counter offset (bcc's `memleak` does, on malloc): say so.
fn conflict_hint(e: anyhow::Error, function: &str) -> anyhow::Error {
    let einval = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
    }) || format!("{e:#}").contains("os error 22");
    if !einval {
        return e;
    }
    e.context(format!(
        "the kernel refused a probe on `{function}`: another tracer may hold a probe there that cannot coexist with leaktrace's (bcc's memleak does; `dmesg` then says \"ref_ctr_offset mismatch\"): stop it and try again"
    ))
}

/// Drops (detaches) links from several threads at once and waits for all of them.
fn close_concurrently(mut links: Vec<UProbeLink>) {
    const THREADS: usize = 32;
    if links.is_empty() {
        return;
    }
    let per_thread = links.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let chunk: Vec<UProbeLink> = links.drain(..per_thread.min(links.len())).collect();
            scope.spawn(move || drop(chunk));
        }
    });
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach_all();
    }
}

impl Tracer {
    pub fn load(limits: Limits) -> Result<Self> {
        let m = limits.maps;
        let sample_bytes = limits.sampling.map_or(0u64, |s| s.n);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_ALLOCS, m.allocs)
            .map_max_entries(MAP_STACK_TOTALS, m.stacks)
            .map_max_entries(MAP_STACKS, m.native_stacks)
            .map_max_entries(MAP_PY_STACKS, m.python_stacks)
            .map_max_entries(MAP_PENDING, m.threads)
            // A ring buffer's max_entries is its size in bytes.
            .map_max_entries(MAP_EVENTS, m.events_bytes)
            .override_global(sampling::GLOBAL_SAMPLE_BYTES, &sample_bytes, true)
            .load(OBJECT)
            .context("failed to load leaktrace's eBPF programs into the kernel")?;
        if let Some(s) = limits.sampling {
            let mut table: Array<&mut MapData, u64> =
                Array::try_from(ebpf.map_mut(sampling::MAP_SAMPLING).ok_or_else(|| {
                    anyhow!("eBPF object has no map {}", sampling::MAP_SAMPLING)
                })?)?;
            for (i, v) in s.table().into_iter().enumerate() {
                table.set(i as u32, v, 0)?;
            }
        }
        // Only the programs the mode attaches are loaded (and verified).
        for (name, program) in ebpf.programs_mut() {
            let loaded = match (program, limits.mode) {
                (
                    aya::programs::Program::UProbe(p),
                    crate::probes::mode::Mode::Exact | crate::probes::mode::Mode::Sampled,
                ) => p.load(),
                (aya::programs::Program::TracePoint(p), crate::probes::mode::Mode::Growth) => {
                    p.load()
                }
                _ => continue,
            };
            loaded.with_context(|| format!("the kernel rejected eBPF program `{name}`"))?;
        }
        let events = RingBuf::try_from(
            ebpf.take_map(MAP_EVENTS)
                .ok_or_else(|| anyhow!("eBPF object has no map {MAP_EVENTS}"))?,
        )?;
        Ok(Self {
            ebpf,
            sampling: limits.sampling,
            events,
            probe_at_entry: limits.probe_at_entry,
            links: Default::default(),
            no_return_probe: limits.no_return_probe,
        })
    }

    /// Attaches every allocator probe in `module` (as seen from this process, e.g. through
    /// `/proc/PID/root`) to process `pid` only.
    pub fn attach(&mut self, pid: u32, module: &Path) -> Result<Vec<Attached>> {
        let elf = ElfFile::open(module)?;
        self.attach_table(pid, module, &elf, PROBES, REQUIRED)
    }

    /// `--pymalloc`: probes CPython's object allocator in `module` (libpython or the
    /// interpreter executable). Returns the probes and whether only the exported entry points
    /// could be used.
    pub fn attach_pymalloc(
        &mut self,
        pid: u32,
        module: &Path,
        free_threaded: bool,
        known: &[crate::python::allocators::KnownFunction],
    ) -> Result<(Vec<Attached>, bool)> {
        let mut elf = ElfFile::open(module)?;
        // A stripped interpreter: pymalloc's functions as its allocator table points at them.
        for f in known {
            if elf.function(f.name).is_none() {
                elf.add_function(f.name, f.vaddr);
            }
        }
        if free_threaded && elf.function("_PyObject_MiMalloc").is_some() {
            let probes = self.attach_table(
                pid,
                module,
                &elf,
                MIMALLOC_PROBES,
                &["_PyObject_MiMalloc", "_PyObject_MiFree"],
            )?;
            return Ok((probes, false));
        }
        if !free_threaded && elf.function("_PyObject_Malloc").is_some() {
            let probes = self.attach_table(
                pid,
                module,
                &elf,
                PYMALLOC_PROBES,
                &["_PyObject_Malloc", "_PyObject_Free"],
            )?;
            return Ok((probes, false));
        }
        let probes = self.attach_table(
            pid,
            module,
            &elf,
            PYMALLOC_EXPORTED_PROBES,
            &["PyObject_Malloc", "PyObject_Free"],
        )?;
        Ok((probes, true))
    }

    fn attach_table(
        &mut self,
        pid: u32,
        module: &Path,
        elf: &ElfFile,
        table: &[Probe],
        required: &[&str],
    ) -> Result<Vec<Attached>> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be traced"))?,
        );
        let mut seen_offsets = Vec::new();
        let mut attached = Vec::new();
        for probe in table {
            let (function, needs_return) = (probe.function, probe.needs_return);
            let Some(f) = elf.function(function) else {
                if required.contains(&function) {
                    anyhow::bail!(
                        "`{}` has no `{function}` symbol: it is not the allocator this process uses",
                        module.display()
                    );
                }
                continue;
            };
            if seen_offsets.contains(&f.file_offset) {
                continue;
            }
            seen_offsets.push(f.file_offset);
            // A uretprobe replaces the return address at [sp] when the function is entered, so
            // an entry probe placed past the first instruction would read the trampoline
            // instead of the caller: only entry-only probes (free, munmap) are moved.
            let offset = if needs_return || self.probe_at_entry {
                0
            } else {
                probe_offset(&f.head)
            };
            let target = PathBuf::from(module);
            self.attach_one(
                probe.program,
                f.file_offset + offset,
                probe.cookie,
                &target,
                scope,
            )
            .map_err(|e| conflict_hint(e, function))
            .with_context(|| {
                format!(
                    "failed to attach uprobe `{function}` in `{}`",
                    module.display()
                )
            })?;
            if needs_return && !self.no_return_probe {
                // The return probe must sit on the function's first byte.
                self.attach_one(RETURN_PROGRAM, f.file_offset, 0, &target, scope)
                    .with_context(|| {
                        format!(
                            "failed to attach uretprobe `{function}` in `{}`",
                            module.display()
                        )
                    })?;
            }
            attached.push(Attached { function, offset });
        }
        Ok(attached)
    }

    fn attach_one(
        &mut self,
        program: &'static str,
        file_offset: u64,
        cookie: u64,
        target: &Path,
        scope: UProbeScope,
    ) -> Result<()> {
        let probe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("eBPF object has no program {program}"))?
            .try_into()?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(file_offset),
            cookie: (cookie != 0).then_some(cookie),
        };
        let link = probe.attach(point, target, scope)?;
        self.links.push((program, link));
        Ok(())
    }

    /// Forgets a process that exited: drops what the maps hold for it (its memory went with
    /// it), so a long session over restarting workers stays bounded. `tids` are its threads
    /// published to the Python walker.
    ///
    /// Its probes stay attached until leaktrace detaches everything: they cannot fire (their
    /// process is gone), and closing them while other processes are traced is not safe on this
    /// kernel: measured on 6.18, closing an exited worker's links while a new worker was being
    /// attached left the new worker's probes silent (a gunicorn worker replaced after
    /// --max-requests showed no allocation at all), and each close also waits for an RCU
    /// grace period (~0.1 s, 22 links per process), which stalled the session for seconds.
    pub fn forget_process(&mut self, pid: u32, tids: &[u32]) -> Result<()> {
        {
            let mut allocs: HashMap<&mut MapData, AllocKey, AllocInfo> =
                HashMap::try_from(self.map_mut(MAP_ALLOCS)?)?;
            let keys: Vec<AllocKey> = allocs
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.tgid == pid)
                .collect();
            for k in keys {
                let _ = allocs.remove(&k);
            }
        }
        {
            let mut totals: HashMap<&mut MapData, StackKey, StackTotals> =
                HashMap::try_from(self.map_mut(MAP_STACK_TOTALS)?)?;
            let keys: Vec<StackKey> = totals
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.tgid == pid)
                .collect();
            for k in keys {
                let _ = totals.remove(&k);
            }
        }
        {
            let mut targets: HashMap<&mut MapData, u32, PyConfig> =
                HashMap::try_from(self.map_mut(MAP_PY_TARGETS)?)?;
            let _ = targets.remove(&pid);
        }
        self.update_tstates(&[], tids)
    }

    /// Detaches every probe, concurrently (each detach waits for a kernel grace period, and
    /// concurrent waits share one): returns once none is attached.
    pub fn detach_all(&mut self) {
        let mut links = Vec::new();
        for (program, link) in std::mem::take(&mut self.links) {
            let probe: Option<&mut UProbe> = self
                .ebpf
                .program_mut(program)
                .and_then(|p| p.try_into().ok());
            if let Some(link) = probe.and_then(|p| p.take_link(link).ok()) {
                links.push(link);
            }
        }
        close_concurrently(links);
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
    }

    pub fn counters(&self) -> Result<Counters> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(MAP_COUNTERS)?)?;
        let mut out = Counters::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Live totals per stack, as the kernel keeps them.
    pub fn stack_totals(&self) -> Result<Vec<(StackKey, StackTotals)>> {
        let map: HashMap<&MapData, StackKey, StackTotals> =
            HashMap::try_from(self.map(MAP_STACK_TOTALS)?)?;
        // Entries can vanish between listing and reading: skip those errors.
        let mut totals: Vec<(StackKey, StackTotals)> = map.iter().filter_map(Result::ok).collect();
        if let Some(s) = &self.sampling {
            // Sampled mode: the kernel keeps estimated counts in fixed point.
            for (_, t) in &mut totals {
                t.live_allocs = s.count_from_kernel(t.live_allocs);
                t.total_allocs = s.count_from_kernel(t.total_allocs as i64).max(0) as u64;
            }
        }
        Ok(totals)
    }

    /// `--mode sampled`: the sampling parameters (None in exact mode).
    pub fn sampling(&self) -> Option<&Sampling> {
        self.sampling.as_ref()
    }

    /// Every outstanding allocation.
    pub fn allocs(&self) -> Result<Vec<(AllocKey, AllocInfo)>> {
        let map: HashMap<&MapData, AllocKey, AllocInfo> = HashMap::try_from(self.map(MAP_ALLOCS)?)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Instruction pointers of a native stack, innermost first.
    pub fn stack(&self, key: u64) -> Option<Vec<u64>> {
        if key == 0 {
            return None;
        }
        let map: HashMap<&MapData, u64, NativeStack> =
            HashMap::try_from(self.map(MAP_STACKS).ok()?).ok()?;
        let stack = map.get(&key, 0).ok()?;
        let len = (stack.len as usize).min(stack.ips.len());
        Some(stack.ips[..len].to_vec())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
    }

    /// Turns on Python stack walking for process `tgid`.
    pub fn set_python(&mut self, tgid: u32, config: &PyConfig) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, PyConfig> =
            HashMap::try_from(self.map_mut(MAP_PY_TARGETS)?)?;
        map.insert(tgid, config, 0)?;
        Ok(())
    }

    /// Publishes thread states: `add` (tid, tstate) pairs, and forgets `remove` tids.
    pub fn update_tstates(&mut self, add: &[(u32, u64)], remove: &[u32]) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, u64> =
            HashMap::try_from(self.map_mut(MAP_PY_TSTATES)?)?;
        for tid in remove {
            let _ = map.remove(tid);
        }
        for (tid, tstate) in add {
            map.insert(tid, tstate, 0)?;
        }
        Ok(())
    }

    /// A recorded Python stack.
    pub fn py_stack(&self, key: u64) -> Option<PyStack> {
        let map: HashMap<&MapData, u64, PyStack> =
            HashMap::try_from(self.map(MAP_PY_STACKS).ok()?).ok()?;
        map.get(&key, 0).ok()
    }

    /// Drains the mmap-family events.
    pub fn drain_events(&mut self, mut f: impl FnMut(MapEvent)) {
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<MapEvent>() {
                // SAFETY: the kernel side writes exactly one MapEvent per record; read unaligned.
                let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<MapEvent>()) };
                f(event);
            }
        }
    }
}
