// size: the Tracer and its maps: loading, attaching on both paths (perf-event uprobes here,
// uprobe_multi links in uprobe_multi.rs), batched reads (batch.rs) and the background detach.
//! Loading leaktrace's eBPF object, attaching it to one process, and reading its maps.
//!
//! Two ways to attach, chosen once per run ([`ProbePath`]): uprobe_multi links (one per program
//! and binary, see [`crate::probes::uprobe_multi`]) where the kernel has them, else one aya
//! perf-event uprobe per probe.
//!
//! Dropping a [`Tracer`] detaches every probe (closes the links); the kernel does the same if
//! leaktrace is killed, because the links are file descriptors of this process.

use std::{
    collections::HashMap as StdHashMap,
    num::NonZeroU32,
    os::fd::{AsFd, OwnedFd},
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
    PyStack, StackKey, StackTotals, TextRange, COUNTER_SLOTS, MAP_ALLOCS, MAP_COUNTERS, MAP_EVENTS,
    MAP_NATIVE_CUT, MAP_PENDING, MAP_PY_STACKS, MAP_PY_TARGETS, MAP_PY_TSTATES, MAP_STACKS,
    MAP_STACK_TOTALS,
};

use crate::probes::{limits::MapLimits, mode::Sampling, uprobe_multi};

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
        program: ENTRY_PROGRAM,
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
/// The malloc family's entry program (every [`alloc`] probe).
const ENTRY_PROGRAM: &str = "alloc_enter";
const RETURN_PROGRAM: &str = "alloc_return";
/// [`ProbePath::Session`]: the program that replaces [`ENTRY_PROGRAM`] and its return probe.
const SESSION_PROGRAM: &str = "alloc_session";
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
    /// Attach empty programs instead of leaktrace's, on uprobe_multi links (benchmarks: the
    /// floor of the traps).
    pub empty_probes: bool,
    /// Which programs to load: uprobes (exact) or tracepoints (growth).
    pub mode: crate::probes::mode::Mode,
    /// How uprobes are attached ([`ProbePath::choose`]).
    pub path: ProbePath,
}

/// The probes of one uprobe_multi link being gathered: its program and kind, and each
/// probe's file offset, cookie and function (for errors).
struct MultiLink {
    program: &'static str,
    kind: uprobe_multi::LinkKind,
    offsets: Vec<u64>,
    cookies: Vec<u64>,
    functions: Vec<&'static str>,
}

/// One attached probe, for the progress line and the docs.
#[derive(Clone, Debug)]
pub struct Attached {
    pub function: &'static str,
    /// Bytes past the function's start where the probe sits (see [`probe_offset`]).
    pub offset: u64,
}

/// How probes are attached in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbePath {
    /// [`ProbePath::Multi`], with the malloc family's entry and return probes in one session
    /// link (kernel 6.13+): a call the tracer does not track (sampled mode's unsampled calls,
    /// nested calls) costs one trap instead of two.
    Session,
    /// One uprobe_multi link per program and binary.
    Multi,
    /// One perf-event uprobe per probe (aya), on kernels without uprobe_multi or with
    /// `LEAKTRACE_UPROBE_MULTI=0`.
    PerfEvent,
}

impl ProbePath {
    /// uprobe_multi unless the user turned it off or the kernel lacks it; the note says why
    /// not, for the one line the session prints.
    pub fn choose() -> (Self, Option<&'static str>) {
        if !uprobe_multi::wanted() {
            return (ProbePath::PerfEvent, None);
        }
        if uprobe_multi::supported() {
            if !uprobe_multi::session_wanted() {
                return (ProbePath::Multi, None);
            }
            if uprobe_multi::session_supported() {
                (ProbePath::Session, None)
            } else {
                (
                    ProbePath::Multi,
                    Some("leaktrace: note: this kernel cannot run session uprobes (6.13+): every allocator call pays a return trap, tracked or not"),
                )
            }
        } else {
            (
                ProbePath::PerfEvent,
                Some("leaktrace: note: this kernel cannot create uprobe_multi links (6.6+): attaching one perf-event uprobe per probe (slower attach, more file descriptors)"),
            )
        }
    }

    /// Whether probes are uprobe_multi links (sessions or not).
    pub fn is_multi(self) -> bool {
        matches!(self, ProbePath::Session | ProbePath::Multi)
    }
}

/// The entry and return programs that the uprobe_multi path loads itself.
const MULTI_PROGRAMS: &[&str] = &[
    ENTRY_PROGRAM,
    "alloc_return",
    "free_enter",
    "pyfree_ctx_enter",
    "mmap_enter",
    "munmap_enter",
    "mremap_enter",
];

pub struct Tracer {
    pub(crate) ebpf: Ebpf,
    path: ProbePath,
    /// [`ProbePath::Multi`]: the programs loaded with the uprobe_multi attach type.
    multi_programs: StdHashMap<&'static str, OwnedFd>,
    /// [`ProbePath::Multi`]: every link, closed together in [`Tracer::detach_all`].
    multi_links: Vec<OwnedFd>,
    sampling: Option<Sampling>,
    probe_at_entry: bool,
    no_return_probe: bool,
    events: RingBuf<aya::maps::MapData>,
    /// Every probe attached (program name, link), detached together in [`Tracer::detach_all`].
    links: Vec<(&'static str, UProbeLinkId)>,
    /// [`Tracer::detach_in_background`]: the thread closing the links, which returns how
    /// long that took. Joined before the tracer is gone.
    detaching: Option<std::thread::JoinHandle<std::time::Duration>>,
}

/// Set to 1, maps are read entry by entry, as on kernels without batch lookups (benchmarks:
/// `bench/report_time.sh` compares both).
pub const NO_BATCH_ENV: &str = "LEAKTRACE_NO_BATCH";

/// How a map was read: entries, syscalls, and whether in batches.
#[derive(Clone, Copy, Debug, Default)]
pub struct MapRead {
    pub entries: u64,
    pub syscalls: u64,
    pub batched: bool,
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
        (Counter::ReturnRuns, "return_probe_runs"),
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
fn close_concurrently<L: Send>(mut links: Vec<L>) {
    const THREADS: usize = 32;
    if links.is_empty() {
        return;
    }
    let per_thread = links.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        while !links.is_empty() {
            let chunk: Vec<L> = links.drain(..per_thread.min(links.len())).collect();
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
        let growth = limits.mode == crate::probes::mode::Mode::Growth;
        let path = match limits.path {
            _ if growth => ProbePath::PerfEvent,
            // Benchmarks of the missing return trap: plain entry links.
            ProbePath::Session if limits.no_return_probe => ProbePath::Multi,
            ProbePath::PerfEvent if limits.empty_probes => {
                anyhow::bail!("--bench-empty-probes needs uprobe_multi links (kernel 6.6+)")
            }
            path => path,
        };
        // The uprobe_multi programs, before any map is taken out of `ebpf`. With sessions,
        // `alloc_session` replaces `alloc_enter` (one verification less).
        let multi_programs = match path {
            // Benchmarks of the traps alone: an empty program wherever one of ours would go.
            ProbePath::Session | ProbePath::Multi if limits.empty_probes => {
                let mut programs = MULTI_PROGRAMS
                    .iter()
                    .map(|&name| Ok((name, uprobe_multi::empty_program()?)))
                    .collect::<Result<StdHashMap<_, _>>>()?;
                if path == ProbePath::Session {
                    programs.insert(SESSION_PROGRAM, uprobe_multi::empty_session_program()?);
                }
                programs
            }
            ProbePath::Session => {
                let plain: Vec<&'static str> = MULTI_PROGRAMS
                    .iter()
                    .copied()
                    .filter(|&p| p != ENTRY_PROGRAM)
                    .collect();
                uprobe_multi::load_programs(OBJECT, &ebpf, &plain, &[SESSION_PROGRAM])?
            }
            ProbePath::Multi => uprobe_multi::load_programs(OBJECT, &ebpf, MULTI_PROGRAMS, &[])?,
            ProbePath::PerfEvent => Default::default(),
        };
        // Only the programs the mode attaches are loaded (and verified).
        for (name, program) in ebpf.programs_mut() {
            let loaded = match (program, limits.mode) {
                (
                    aya::programs::Program::UProbe(p),
                    crate::probes::mode::Mode::Exact | crate::probes::mode::Mode::Sampled,
                ) if path == ProbePath::PerfEvent && name != SESSION_PROGRAM => p.load(),
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
            path,
            multi_programs,
            multi_links: Vec::new(),
            sampling: limits.sampling,
            events,
            probe_at_entry: limits.probe_at_entry,
            links: Default::default(),
            detaching: None,
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
    /// interpreter executable), parsed as `elf`. Returns the probes and whether only the
    /// exported entry points could be used.
    pub fn attach_pymalloc(
        &mut self,
        pid: u32,
        module: &Path,
        elf: &mut ElfFile,
        free_threaded: bool,
        known: &[crate::python::allocators::KnownFunction],
    ) -> Result<(Vec<Attached>, bool)> {
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
                elf,
                MIMALLOC_PROBES,
                &["_PyObject_MiMalloc", "_PyObject_MiFree"],
            )?;
            return Ok((probes, false));
        }
        if !free_threaded && elf.function("_PyObject_Malloc").is_some() {
            let probes = self.attach_table(
                pid,
                module,
                elf,
                PYMALLOC_PROBES,
                &["_PyObject_Malloc", "_PyObject_Free"],
            )?;
            return Ok((probes, false));
        }
        let probes = self.attach_table(
            pid,
            module,
            elf,
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
        // uprobe_multi: one link per program and link kind.
        let mut multi: Vec<MultiLink> = Vec::new();
        let mut add = |program: &'static str,
                       kind: uprobe_multi::LinkKind,
                       offset: u64,
                       cookie: u64,
                       f: &'static str| {
            let i = match multi
                .iter()
                .position(|m| m.program == program && m.kind == kind)
            {
                Some(i) => i,
                None => {
                    multi.push(MultiLink {
                        program,
                        kind,
                        offsets: Vec::new(),
                        cookies: Vec::new(),
                        functions: Vec::new(),
                    });
                    multi.len() - 1
                }
            };
            multi[i].offsets.push(offset);
            multi[i].cookies.push(cookie);
            multi[i].functions.push(f);
        };
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
            if self.path == ProbePath::Session && probe.program == ENTRY_PROGRAM {
                // Entry and return in one program: at the first byte, as a return probe must be.
                add(
                    SESSION_PROGRAM,
                    uprobe_multi::LinkKind::Session,
                    f.file_offset,
                    probe.cookie,
                    function,
                );
                attached.push(Attached { function, offset });
                continue;
            }
            if self.path.is_multi() {
                add(
                    probe.program,
                    uprobe_multi::LinkKind::Entry,
                    f.file_offset + offset,
                    probe.cookie,
                    function,
                );
                if needs_return && !self.no_return_probe {
                    add(
                        RETURN_PROGRAM,
                        uprobe_multi::LinkKind::Return,
                        f.file_offset,
                        0,
                        function,
                    );
                }
                attached.push(Attached { function, offset });
                continue;
            }
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
        for MultiLink {
            program,
            kind: ret,
            offsets,
            cookies,
            functions,
        } in multi
        {
            let fd = self
                .multi_programs
                .get(program)
                .ok_or_else(|| anyhow!("eBPF program {program} was not loaded"))?;
            let link = uprobe_multi::attach(fd.as_fd(), module, &offsets, &cookies, ret, pid)
                .map_err(|e| conflict_hint(e.into(), &functions.join("`, `")))
                .with_context(|| {
                    format!(
                        "failed to attach {} `{}` in `{}` (uprobe_multi; LEAKTRACE_UPROBE_MULTI=0 uses perf-event uprobes)",
                        match ret {
                            uprobe_multi::LinkKind::Entry => "uprobes",
                            uprobe_multi::LinkKind::Return => "uretprobes",
                            uprobe_multi::LinkKind::Session => "session uprobes",
                        },
                        functions.join("`, `"),
                        module.display()
                    )
                })?;
            self.multi_links.push(link);
        }
        Ok(attached)
    }

    /// How this tracer attaches its uprobes.
    pub fn probe_path(&self) -> ProbePath {
        self.path
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
        {
            let mut cuts: HashMap<&mut MapData, u32, TextRange> =
                HashMap::try_from(self.map_mut(MAP_NATIVE_CUT)?)?;
            let _ = cuts.remove(&pid);
        }
        self.update_tstates(&[], tids)
    }

    /// Detaches every probe, concurrently (each detach waits for a kernel grace period, and
    /// concurrent waits share one): returns once none is attached.
    pub fn detach_all(&mut self) {
        let links = self.take_links();
        close_concurrently(links);
        close_concurrently(std::mem::take(&mut self.multi_links));
        self.wait_detached();
    }

    /// Takes every uprobe link out of its program (still attached until dropped).
    fn take_links(&mut self) -> Vec<UProbeLink> {
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
        links
    }

    /// Starts detaching every uprobe on another thread, while the maps stay readable (the
    /// report is built meanwhile): the target stops paying for the probes sooner, and the
    /// grace periods the kernel waits for per link overlap with the report's work.
    /// [`Tracer::wait_detached`] (or dropping the tracer) waits for it to finish.
    pub fn detach_in_background(&mut self) {
        let links = self.take_links();
        let multi = std::mem::take(&mut self.multi_links);
        if links.is_empty() && multi.is_empty() {
            return;
        }
        let t0 = std::time::Instant::now();
        let thread = std::thread::Builder::new()
            .name("leaktrace-detach".into())
            .spawn(move || {
                close_concurrently(links);
                close_concurrently(multi);
                t0.elapsed()
            });
        // No thread to be had: `spawn` dropped the closure, and the links with it, which
        // detached them before it returned.
        if let Ok(handle) = thread {
            self.detaching = Some(handle);
        }
    }

    /// Waits until a background detach is over; returns how long detaching took (None if
    /// none was under way).
    pub fn wait_detached(&mut self) -> Option<std::time::Duration> {
        let handle = self.detaching.take()?;
        // A panic on that thread still dropped (closed) the links it held.
        handle.join().ok()
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
        let mut totals: Vec<(StackKey, StackTotals)> = Vec::new();
        self.for_each_entry(MAP_STACK_TOTALS, |k: &StackKey, v: &StackTotals| {
            totals.push((*k, *v))
        })?;
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
        let mut out = Vec::new();
        self.for_each_alloc(|k, v| out.push((*k, *v)))?;
        Ok(out)
    }

    /// Calls `f` on every outstanding allocation, read in batches (nothing is kept: a
    /// million live allocations are 64 MB as key-value pairs).
    pub fn for_each_alloc(&self, f: impl FnMut(&AllocKey, &AllocInfo)) -> Result<MapRead> {
        self.for_each_entry(MAP_ALLOCS, f)
    }

    /// Calls `f` on every entry of the hash map `name`: with `BPF_MAP_LOOKUP_BATCH` where the
    /// kernel has it (a few syscalls), else entry by entry (two syscalls each).
    fn for_each_entry<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        mut f: impl FnMut(&K, &V),
    ) -> Result<MapRead> {
        let map = self.map(name)?;
        let aya::maps::Map::HashMap(data) = map else {
            anyhow::bail!("eBPF map {name} is not a hash map");
        };
        if std::env::var_os(NO_BATCH_ENV).is_none_or(|v| v != "1") {
            use std::os::fd::AsFd as _;
            match crate::probes::batch::for_each(
                data.fd().as_fd(),
                crate::probes::batch::DEFAULT_CHUNK,
                &mut f,
            ) {
                Ok((entries, syscalls)) => {
                    return Ok(MapRead {
                        entries,
                        syscalls,
                        batched: true,
                    })
                }
                Err(crate::probes::batch::BatchError::Unsupported(_)) => {}
                Err(e) => return Err(e).with_context(|| format!("cannot read eBPF map {name}")),
            }
        }
        let map: HashMap<&MapData, K, V> = HashMap::try_from(map)?;
        let mut entries = 0;
        // Entries can vanish between listing and reading: skip those errors.
        for (k, v) in map.iter().filter_map(Result::ok) {
            f(&k, &v);
            entries += 1;
        }
        Ok(MapRead {
            entries,
            syscalls: 2 * entries + 1,
            batched: false,
        })
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

    /// Ends process `tgid`'s native stacks at the first frame inside `text` (its
    /// interpreter's code, which has no frame pointers): see [`MAP_NATIVE_CUT`].
    pub fn set_native_cut(&mut self, tgid: u32, text: TextRange) -> Result<()> {
        let mut map: HashMap<&mut MapData, u32, TextRange> =
            HashMap::try_from(self.map_mut(MAP_NATIVE_CUT)?)?;
        map.insert(tgid, text, 0)?;
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
