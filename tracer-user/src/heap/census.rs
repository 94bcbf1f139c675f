// size: one walker: the GC lists, the owner graph, the held-object marking and the per-type
// readers (dict, list, set, tuple, str, int, instance attributes) share one Source, one block
// cache, one set of bounds and one skipped-read count (its tests are in census/tests.rs).
//! One census: every object on the GC's lists, and every object reachable from a module global
//! or a class attribute through containers, counted by type; and each global's and attribute's
//! retained bytes. Reads go through a [`Source`], so the same code runs on a live process and
//! on arbitrary bytes (the fuzz target): every read is bounded, every value read is checked
//! before it is used, and a read that fails or does not make sense is counted and skipped.
//!
//! Reads of 16 KiB or less go through a direct-mapped cache of 16 KiB blocks (16 MiB at
//! most): objects that sit next to each other in a pymalloc pool, a dict and its keys, a type
//! and its name cost one read of the target between them, not one each.
//!
//! Held or not: every object reached from a root (a module, a class, a module global, a class
//! attribute) is held; from the objects reached, every word of their own memory that is the
//! address of an object on the GC's lists makes that object held too (a conservative scan,
//! which finds what slots, closures, bound methods, frames and C wrappers point at). GC
//! objects of a type that no such path reaches are its "unheld" count.
//!
//! C objects' own memory is read for retained bytes too ([`fields_hold`]): the containers
//! their fields point at are their children. The static variables of the interpreter and
//! its extension modules hold objects as well: what they hold that no global reached is an
//! owner of its own, named by file and symbol ([`statics`]).

use std::{
    cell::{Cell, RefCell},
    collections::{hash_map::Entry, HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
    rc::Rc,
    time::Instant,
};

use super::layout::*;

mod holders;
mod named;
pub mod statics;
pub use holders::{grown_types, Holder, Holders};
pub use named::{LruCache, Named, Names, TaskGroup, TypeCount};
pub use statics::{Segment, StaticSymbol};

/// Where bytes come from: a process's memory, or a buffer.
pub trait Source {
    /// Fills `buf` from `addr`; false if any of it cannot be read.
    fn read_into(&self, addr: u64, buf: &mut [u8]) -> bool;
}

impl Source for crate::python::runtime::Memory {
    fn read_into(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_exact_into(addr, buf)
    }
}

/// Bytes standing for memory from `base` on (the fuzz target's input).
pub struct Bytes {
    pub base: u64,
    pub data: Vec<u8>,
}

impl Source for Bytes {
    fn read_into(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(off) = addr.checked_sub(self.base) else {
            return false;
        };
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match self.data.get(off..off.saturating_add(buf.len())) {
            Some(s) if s.len() == buf.len() => {
                buf.copy_from_slice(s);
                true
            }
            _ => false,
        }
    }
}

/// The limits of one census; each is a command-line option.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Objects read in all (GC lists and owner walks together).
    pub max_objects: u64,
    /// Bytes read at once (a list's item array, a dict's entries); larger is cut and said.
    pub max_read_bytes: usize,
    /// Containers followed from a global or attribute, at most this deep.
    pub max_depth: u32,
    /// Seconds one census may take.
    pub time_budget_s: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_objects: 10_000_000,
            max_read_bytes: 1 << 20,
            max_depth: 64,
            time_budget_s: 60.0,
        }
    }
}

/// Count and bytes of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStat {
    pub count: u64,
    pub bytes: u64,
}

/// A module global or class attribute and what it retains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// `module:name` or `module:Class.attr`.
    pub path: String,
    pub type_name: String,
    pub len: Option<u64>,
    pub retained_bytes: u64,
}

/// What one census found.
#[derive(Clone, Debug, Default)]
pub struct Census {
    pub types: HashMap<String, TypeStat>,
    /// Per type, its objects on the GC's lists that no path from a root reaches (types with
    /// none are left out).
    pub unheld: HashMap<String, u64>,
    pub owners: Vec<Owner>,
    pub objects: u64,
    pub skipped_reads: u64,
    /// Reads of the target's memory (system calls) the census made.
    pub reads: u64,
    /// Tasks, connections, loggers, threads, caches.
    pub names: Names,
    /// Why the census is not complete (the first limit hit), if it is not.
    pub incomplete: Option<String>,
    /// Bytes of pymalloc blocks behind the objects counted ([`super::arenas`]).
    pub small_object_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dict,
    List,
    Tuple,
    Set,
    Str,
    Int,
    Module,
    Other,
}

#[derive(Clone, Debug)]
struct TypeInfo {
    /// The type object's address (the key of the per-type counts).
    addr: u64,
    name: String,
    basicsize: u64,
    itemsize: u64,
    flags: u64,
    dict: u64,
    /// `tp_dictoffset` (3.8-3.10 instance dicts).
    dictoffset: i64,
    /// `ht_cached_keys` of a class whose instances keep managed dicts (3.11+), else 0.
    cached_keys: u64,
    kind: Kind,
    /// `tp_base`, and the named class ([`named`]) the type is or derives from.
    base: u64,
    named: Option<Named>,
    /// A C type whose own memory is read for the objects it holds ([`fields_hold`]).
    fields_hold: bool,
    /// Offsets of the object fields its members describe (`__slots__`), its bases' included:
    /// children of its instances ([`MAX_SLOTS`] at most, each inside `basicsize`).
    slots: Vec<u64>,
}

/// Slot offsets kept per type, its bases' included.
const MAX_SLOTS: usize = 128;

type Ty = Rc<TypeInfo>;

/// A hasher for object addresses (8-aligned, so the low bits say nothing): one multiply.
#[derive(Default, Clone, Copy)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }
    fn write_u64(&mut self, n: u64) {
        let x = (n ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }
}

type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;
type AddrSet = HashSet<u64, BuildHasherDefault<AddrHasher>>;

/// A counted object: its flags, and the last root (1, 2, ...) whose walk reached it, so that
/// each walk visits an object once without a set of its own.
#[derive(Clone, Copy)]
struct Mark {
    flags: u8,
    root: u32,
}

/// Flags of a counted object.
const ON_GC_LIST: u8 = 1;
const HELD: u8 = 2;

/// The block cache: blocks of [`BLOCK`] bytes, [`SLOTS`] of them, direct-mapped.
const BLOCK: u64 = 1 << 14;
const SLOTS: usize = 1024;
/// A slot's tag: the block number + 1, with this bit when the block could not be read whole.
const BAD_BLOCK: u64 = 1 << 63;

struct PerType {
    ti: Ty,
    stat: TypeStat,
    gc: u64,
    held: u64,
}

struct BlockCache {
    tags: Vec<u64>,
    data: Vec<u8>,
}

/// Where owners are found: a module's dict, a class.
pub enum Root {
    Module(u64),
    Class(u64),
}

/// One object's start, read with or without its GC header.
struct Obj {
    addr: u64,
    size_field: u64,
    w: [u64; 6],
}

impl Obj {
    fn word(&self, off: u64) -> u64 {
        self.w[(off / 8) as usize]
    }
}

/// A dict keys object: (entries offset, entry size, entries allocated, index bytes, used
/// entries, not shared with other dicts).
type KeysShape = (u64, u64, u64, u64, u64, bool);

/// A dict's entries as read: (key, value) pairs.
struct DictRead {
    bytes: u64,
    entries: Vec<(u64, u64)>,
}

const MAX_NAME: usize = 256;
/// Bytes of a dict's keys read at once when it is small (header, indices, entries).
const SMALL_KEYS: u64 = 512;
/// Sizes larger than this are not believed (a torn or wild read).
const MAX_OBJECT_BYTES: u64 = 1 << 40;

pub struct Walker<'a> {
    src: &'a dyn Source,
    hl: &'a HeapLayout,
    lim: Limits,
    start: Instant,
    types: AddrMap<Option<Ty>>,
    skipped: Cell<u64>,
    reads: Cell<u64>,
    cache: RefCell<BlockCache>,
    objects: u64,
    incomplete: Option<String>,
    /// A hard limit was hit (objects, time): nothing more is read. A soft one (a torn GC
    /// list, `--max-depth` on one path) makes the census incomplete but lets it go on.
    halted: bool,
    /// Every object counted in the type table, with [`ON_GC_LIST`] and [`HELD`] flags and
    /// the last root whose walk reached it.
    counted: AddrMap<Mark>,
    /// Roots walked so far (the stamp of [`Mark::root`]).
    roots_walked: u32,
    /// Per type object: count and bytes, its objects on GC lists and those held.
    stats: AddrMap<PerType>,
    /// GC objects found by the conservative scan, to be marked held.
    frontier: Vec<u64>,
    /// `_PyRuntime`, whose threads' frames are roots too (see [`Walker::with_threads`]).
    runtime: Option<u64>,
    /// See [`Census::small_object_bytes`].
    small: u64,
    /// Tasks and lru_cache wrappers found as they are counted ([`named`]).
    found: named::Found,
    /// Types being read while their named base is looked up (bounds that recursion).
    base_depth: u32,
    /// Modules, their dicts, classes and their dicts: roots of their own, never children of a
    /// C object's fields (a function's `__globals__` is its module's dict).
    no_follow: AddrSet,
    /// Writable segments of the interpreter and its extension modules ([`statics`]).
    statics: Vec<Segment>,
    /// The 1 MiB regions (address >> 20) holding objects on the GC's lists: a word that may
    /// be an untracked container is read only when it points into one (pymalloc's arenas and
    /// the malloc heap hold both), not for every pointer to code or constants.
    regions: AddrSet,
}

/// Walks of one GC list, the first included, before a list torn under the walk is left.
const GC_LIST_ATTEMPTS: u32 = 4;

/// Threads, interpreters and frames per thread followed at most.
const MAX_THREADS: usize = 4096;
const MAX_INTERPRETERS: usize = 64;
const MAX_FRAMES: usize = 1024;
/// Bytes of an interpreter frame scanned when the next one up does not bound it.
const FRAME_SCAN: u64 = 1024;

impl<'a> Walker<'a> {
    pub fn new(src: &'a dyn Source, hl: &'a HeapLayout, lim: Limits) -> Self {
        Walker {
            src,
            hl,
            lim,
            start: Instant::now(),
            types: AddrMap::default(),
            skipped: Cell::new(0),
            reads: Cell::new(0),
            cache: RefCell::new(BlockCache {
                tags: vec![0; SLOTS],
                data: Vec::new(),
            }),
            objects: 0,
            incomplete: None,
            halted: false,
            counted: AddrMap::default(),
            roots_walked: 0,
            stats: AddrMap::default(),
            frontier: Vec::new(),
            runtime: None,
            small: 0,
            found: named::Found::default(),
            base_depth: 0,
            no_follow: AddrSet::default(),
            statics: Vec::new(),
            regions: AddrSet::default(),
        }
    }

    /// Makes the words of `segments` (the static variables of the interpreter and its
    /// extension modules) holders: see [`statics`].
    pub fn with_statics(mut self, segments: Vec<Segment>) -> Self {
        self.statics = segments;
        self
    }

    /// Makes every thread's frames (found from `_PyRuntime` at `runtime`) roots: what a
    /// running function's locals and stack point at is held.
    pub fn with_threads(mut self, runtime: u64) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Every thread state of every interpreter, bounded.
    fn thread_states(&self, runtime: u64) -> Vec<u64> {
        let l = &self.hl.py;
        let mut out = Vec::new();
        let mut interp = self
            .words::<1>(runtime.wrapping_add(l.runtime_interpreters_head))
            .map_or(0, |[w]| w);
        for _ in 0..MAX_INTERPRETERS {
            if interp == 0 {
                break;
            }
            let mut t = self
                .words::<1>(interp.wrapping_add(l.interp_threads_head))
                .map_or(0, |[w]| w);
            while t != 0 && out.len() < MAX_THREADS && !out.contains(&t) {
                out.push(t);
                t = self
                    .words::<1>(t.wrapping_add(l.tstate_next))
                    .map_or(0, |[w]| w);
            }
            interp = self
                .words::<1>(interp.wrapping_add(l.interp_next))
                .map_or(0, |[w]| w);
        }
        out
    }

    /// Queues what each thread's frames point at: 3.8-3.10 frame objects are GC objects
    /// (their locals are scanned as any object's memory); 3.11+ interpreter frames live in
    /// each thread's data stack, each scanned up to the frame it called (or
    /// [`FRAME_SCAN`] bytes for the innermost one).
    fn hold_frames(&mut self, runtime: u64) {
        let l = self.hl.py;
        let has = crate::python::Layout::has;
        for t in self.thread_states(runtime) {
            if has(l.tstate_frame) {
                if let Some([f]) = self.words::<1>(t.wrapping_add(l.tstate_frame)) {
                    self.frontier.push(f);
                }
                continue;
            }
            let top = if has(l.tstate_current_frame) {
                self.words::<1>(t.wrapping_add(l.tstate_current_frame))
            } else if has(l.tstate_cframe) && has(l.cframe_current_frame) {
                self.words::<1>(t.wrapping_add(l.tstate_cframe))
                    .and_then(|[c]| self.words::<1>(c.wrapping_add(l.cframe_current_frame)))
            } else {
                None
            };
            let (mut f, mut above) = (top.map_or(0, |[f]| f), 0u64);
            for _ in 0..MAX_FRAMES {
                if f == 0 || !f.is_multiple_of(8) {
                    break;
                }
                let len = if above > f && above - f <= 1 << 16 {
                    above - f
                } else {
                    FRAME_SCAN
                };
                self.scan_words(f, len.min(1 << 16));
                above = f;
                f = self
                    .words::<1>(f.wrapping_add(l.iframe_previous))
                    .map_or(0, |[w]| w);
            }
        }
    }

    /// One read of the target, counted.
    fn raw(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.reads.set(self.reads.get() + 1);
        self.src.read_into(addr, buf)
    }

    /// Fills `buf` from `addr`: small reads through the block cache, a block that cannot be
    /// read whole (it reaches unmapped memory) read piece by piece, large reads directly.
    fn fetch(&self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.len() as u64 > BLOCK {
            return self.raw(addr, buf);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let Some(a) = addr.checked_add(done as u64) else {
                return false;
            };
            let (blk, off) = (a / BLOCK, (a % BLOCK) as usize);
            let n = (buf.len() - done).min(BLOCK as usize - off);
            let slot = ((blk ^ (blk >> 10)) as usize) % SLOTS;
            let tag = blk + 1;
            let mut c = self.cache.borrow_mut();
            if c.data.is_empty() {
                c.data = vec![0; SLOTS * BLOCK as usize];
            }
            if c.tags[slot] & !BAD_BLOCK != tag {
                let at = slot * BLOCK as usize;
                let ok = {
                    let BlockCache { data, .. } = &mut *c;
                    self.raw(blk * BLOCK, &mut data[at..at + BLOCK as usize])
                };
                c.tags[slot] = if ok { tag } else { tag | BAD_BLOCK };
            }
            if c.tags[slot] == tag {
                let at = slot * BLOCK as usize + off;
                buf[done..done + n].copy_from_slice(&c.data[at..at + n]);
            } else {
                drop(c);
                if !self.raw(a, &mut buf[done..done + n]) {
                    return false;
                }
            }
            done += n;
        }
        true
    }

    /// Notes why the census is incomplete (the first reason is kept); the census goes on.
    fn stop(&mut self, why: impl Into<String>) {
        if self.incomplete.is_none() {
            self.incomplete = Some(why.into());
        }
    }

    /// A hard limit: notes why, and nothing more is read.
    fn halt(&mut self, why: impl Into<String>) {
        self.halted = true;
        let why = why.into();
        // The hard limit is what the user can act on: it comes first.
        self.incomplete = Some(match self.incomplete.take() {
            None => why,
            Some(first) => format!("{why}; {first}"),
        });
    }

    /// Whether a limit was hit (and says which, once).
    fn over_budget(&mut self) -> bool {
        if self.halted {
            return true;
        }
        if self.objects >= self.lim.max_objects {
            self.halt(format!(
                "--max-objects {} reached: counts are lower bounds",
                self.lim.max_objects
            ));
            return true;
        }
        if self.objects.is_multiple_of(4096)
            && self.start.elapsed().as_secs_f64() > self.lim.time_budget_s
        {
            self.halt(format!(
                "--time-budget {} s reached: counts are lower bounds",
                self.lim.time_budget_s
            ));
            return true;
        }
        false
    }

    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if len > self.lim.max_read_bytes || addr == 0 {
            return None;
        }
        let mut buf = vec![0; len];
        if self.fetch(addr, &mut buf) {
            Some(buf)
        } else {
            self.skipped.set(self.skipped.get() + 1);
            None
        }
    }

    fn skip(&self) {
        self.skipped.set(self.skipped.get() + 1);
    }

    fn words<const N: usize>(&self, addr: u64) -> Option<[u64; N]> {
        if addr == 0 {
            return None;
        }
        let mut b = [0u8; 128];
        let b = &mut b[..N * 8];
        if !self.fetch(addr, b) {
            self.skip();
            return None;
        }
        let mut w = [0u64; N];
        for (i, c) in b.chunks_exact(8).enumerate() {
            w[i] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Some(w)
    }

    /// A NUL-terminated C string (a type's name), at most [`MAX_NAME`] bytes, readable text.
    fn c_string(&self, addr: u64) -> Option<String> {
        // Read up to the end of the page first, then more only if needed.
        let to_page_end = (4096 - (addr % 4096)) as usize;
        let first = to_page_end.min(MAX_NAME);
        let mut b = self.read(addr, first)?;
        if !b.contains(&0) && first < MAX_NAME {
            b.extend(self.read(addr + first as u64, MAX_NAME - first)?);
        }
        let end = b.iter().position(|&c| c == 0)?;
        let s = std::str::from_utf8(&b[..end]).ok()?;
        (!s.is_empty() && s.chars().all(|c| !c.is_control())).then(|| s.to_string())
    }

    /// A `str` object's text (at most [`MAX_NAME`] characters, ASCII/Latin-1 compact only:
    /// enough for names).
    pub fn str_value(&mut self, addr: u64) -> Option<String> {
        let ti = self.type_of(addr)?;
        if ti.kind != Kind::Str {
            return None;
        }
        let l = &self.hl.py;
        let len = self.words::<1>(addr + l.unicode_length)?[0];
        let state = self.read(addr + l.unicode_state, 4)?;
        let state = l.str_state(u32::from_le_bytes(state.try_into().ok()?) as u64);
        if !state.compact || state.kind != 1 || len > MAX_NAME as u64 {
            return None;
        }
        let b = self.read(addr + state.data, len as usize)?;
        Some(b.iter().map(|&c| c as char).collect())
    }

    /// The type at `ty`, read once.
    fn type_info(&mut self, ty: u64) -> Option<Ty> {
        if let Some(t) = self.types.get(&ty) {
            return t.clone();
        }
        let t = self.read_type(ty).map(|mut t| {
            t.named = self.named_of(&t.name, t.base);
            Rc::new(t)
        });
        if t.is_none() {
            self.skip();
        }
        // Bounded: at most one entry per distinct type address read.
        if self.types.len() < 1_000_000 {
            self.types.insert(ty, t.clone());
        }
        t
    }

    fn read_type(&mut self, ty: u64) -> Option<TypeInfo> {
        if ty == 0 || !ty.is_multiple_of(8) {
            return None;
        }
        let b = self.read(ty, TYPE_READ)?;
        let w = |off: u64| {
            u64::from_le_bytes(
                b[off as usize..off as usize + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        };
        let (basicsize, itemsize, flags, dict) =
            (w(TP_BASICSIZE), w(TP_ITEMSIZE), w(TP_FLAGS), w(TP_DICT));
        let dictoffset = w(TP_DICTOFFSET) as i64;
        if basicsize == 0 || basicsize > 1 << 20 || itemsize > 1 << 16 {
            return None;
        }
        let tp_name = self.c_string(w(TP_NAME))?;
        let heap = flags & HEAPTYPE != 0;
        let kind = if heap {
            Kind::Other
        } else {
            match tp_name.as_str() {
                "dict" => Kind::Dict,
                "list" => Kind::List,
                "tuple" => Kind::Tuple,
                "set" | "frozenset" => Kind::Set,
                "str" => Kind::Str,
                "int" | "bool" => Kind::Int,
                "module" => Kind::Module,
                _ => Kind::Other,
            }
        };
        let cached_keys = if heap && self.managed(flags) {
            self.words::<1>(ty + self.hl.ht_cached_keys)
                .map_or(0, |w| w[0])
        } else {
            0
        };
        let mut ti = TypeInfo {
            addr: ty,
            name: tp_name.clone(),
            basicsize,
            itemsize,
            flags,
            dict,
            dictoffset: if dictoffset.unsigned_abs() > 1 << 20 {
                0
            } else {
                dictoffset
            },
            cached_keys,
            kind,
            base: w(TP_BASE),
            named: None,
            fields_hold: fields_hold(&tp_name, kind, flags, basicsize, itemsize),
            slots: Vec::new(),
        };
        if heap {
            ti.slots = self.slot_offsets(w(TP_MEMBERS), basicsize, w(TP_BASE));
        }
        // A class: `module.Name`, the module from its `__module__`; a C type made from a spec
        // (`PyType_FromSpec`) keeps the spec's dotted name (`_asyncio.Task`) as it is.
        if heap && !tp_name.contains('.') {
            self.types.insert(ty, Some(Rc::new(ti.clone())));
            let module = self
                .dict_get_str(dict, "__module__")
                .and_then(|m| self.str_value(m));
            if let Some(m) = module.filter(|m| m != "builtins") {
                ti.name = format!("{m}.{tp_name}");
            }
        }
        Some(ti)
    }

    /// The object-field offsets of the member array at `members` (a heap type's `__slots__`,
    /// or a spec-made C type's object fields) and of its heap-type bases', each inside
    /// `basicsize` and word-aligned; an entry that makes no sense ends the array.
    fn slot_offsets(&mut self, members: u64, basicsize: u64, base: u64) -> Vec<u64> {
        let mut out = Vec::new();
        if members != 0 && members.is_multiple_of(8) {
            let Some(b) = self
                .read(members, (MAX_SLOTS as u64 * MEMBER_SIZE) as usize)
                .or_else(|| self.read(members, (8 * MEMBER_SIZE) as usize))
            else {
                return out;
            };
            for m in b.chunks_exact(MEMBER_SIZE as usize) {
                let name = u64::from_le_bytes(m[0..8].try_into().unwrap());
                if name == 0 {
                    break;
                }
                let ty = i32::from_le_bytes(m[8..12].try_into().unwrap());
                let off = i64::from_le_bytes(m[16..24].try_into().unwrap());
                if !MEMBER_OBJECT.contains(&ty) {
                    continue;
                }
                if off < 16 || off as u64 + 8 > basicsize || off % 8 != 0 {
                    break;
                }
                out.push(off as u64);
            }
        }
        // A base class's slots sit in its part of the object (read through the type cache,
        // at most MAX_BASES deep, which also ends a cycle of bases in torn memory).
        if base != 0 && (self.base_depth as usize) < named::MAX_BASES {
            self.base_depth += 1;
            if let Some(b) = self.type_info(base) {
                if b.flags & HEAPTYPE != 0 {
                    out.extend(b.slots.iter().filter(|&&o| o + 8 <= basicsize));
                }
            }
            self.base_depth -= 1;
        }
        out.sort_unstable();
        out.dedup();
        out.truncate(MAX_SLOTS);
        out
    }

    /// The objects an instance's slots point at (its class's `__slots__`, its bases').
    fn slot_values(&mut self, o: &Obj, ti: &TypeInfo) -> Vec<u64> {
        let Some(&last) = ti.slots.last() else {
            return Vec::new();
        };
        if ti.flags & TYPE_SUBCLASS != 0 {
            return Vec::new();
        }
        let Some(b) = self.read(o.addr, (last + 8) as usize) else {
            return Vec::new();
        };
        ti.slots
            .iter()
            .map(|&off| u64::from_le_bytes(b[off as usize..off as usize + 8].try_into().unwrap()))
            .filter(|&v| v != 0 && v.is_multiple_of(8))
            .collect()
    }

    /// Whether instances of a type with `flags` keep a managed dict (3.11+).
    fn managed(&self, flags: u64) -> bool {
        self.hl.managed_dict != ManagedDict::None && flags & MANAGED_DICT != 0
    }

    /// Words kept before the GC header (3.11: the dict and values pointers; 3.12+: also the
    /// weakref list), in bytes.
    fn preheader(&self, ti: &TypeInfo) -> u64 {
        let mask = match self.hl.managed_dict {
            ManagedDict::None => 0,
            ManagedDict::ValuesThenDict => MANAGED_DICT,
            _ => MANAGED_DICT | MANAGED_WEAKREF,
        };
        if ti.flags & mask != 0 {
            16
        } else {
            0
        }
    }

    fn type_of(&mut self, addr: u64) -> Option<Ty> {
        let ty = self.words::<2>(addr)?[1];
        self.type_info(ty)
    }

    /// The object at `addr`: its first [`OBJ_READ`] bytes.
    fn object(&mut self, addr: u64) -> Option<(Obj, Ty)> {
        if addr == 0 || !addr.is_multiple_of(8) {
            self.skip();
            return None;
        }
        let w = self.words::<6>(addr)?;
        self.finish_object(addr, w)
    }

    fn finish_object(&mut self, addr: u64, w: [u64; 6]) -> Option<(Obj, Ty)> {
        let ti = self.type_info(w[1])?;
        Some((
            Obj {
                addr,
                size_field: w[2],
                w,
            },
            ti,
        ))
    }

    /// Bytes of the object, and of the parts allocated apart from it (a list's item array, a
    /// dict's keys, a set's table) or kept around it (the pre-header, inline values); `None`
    /// if its fields make no sense.
    fn size_of(&mut self, o: &Obj, ti: &TypeInfo) -> Option<u64> {
        let n = o.size_field as i64;
        let size = match ti.kind {
            Kind::Int if self.hl.int_lv_tag => ti.basicsize + ti.itemsize * (o.size_field >> 3),
            Kind::Str => self.str_bytes(o, ti),
            Kind::List => {
                let alloc = o.word(LIST_ALLOCATED);
                if n < 0 || alloc < n as u64 || alloc > 1 << 36 {
                    return None;
                }
                ti.basicsize + alloc * 8
            }
            Kind::Set => {
                let mask = o.word(SET_MASK);
                if mask > 1 << 36 {
                    return None;
                }
                let apart = if o.word(SET_TABLE) != o.addr + SET_SMALL {
                    (mask + 1) * 16
                } else {
                    0
                };
                ti.basicsize + apart
            }
            Kind::Dict => {
                let keys = o.word(DICT_KEYS);
                let values = o.word(DICT_VALUES);
                ti.basicsize + self.dict_read(keys, values, o.addr, false)?.bytes
            }
            _ if ti.itemsize > 0 => {
                if n.unsigned_abs() > 1 << 36 {
                    return None;
                }
                ti.basicsize + ti.itemsize * n.unsigned_abs() + self.preheader(ti)
            }
            _ => ti.basicsize + self.preheader(ti) + self.inline_values_bytes(o, ti),
        };
        (size <= MAX_OBJECT_BYTES).then_some(size)
    }

    /// Bytes of a 3.13+ instance's inline values (from their `capacity` byte).
    fn inline_values_bytes(&self, o: &Obj, ti: &TypeInfo) -> u64 {
        if self.hl.managed_dict != ManagedDict::DictOrInline || ti.flags & INLINE_VALUES == 0 {
            return 0;
        }
        match self.words::<1>(o.addr + ti.basicsize) {
            Some([w]) => values_bytes(self.hl.minor, w & 0xff),
            None => 0,
        }
    }

    /// A string's bytes, from its first words (length and state are in the first 48 bytes on
    /// every version; anything else is not believed and gives the basic size).
    fn str_bytes(&self, o: &Obj, ti: &TypeInfo) -> u64 {
        let l = &self.hl.py;
        if !l.unicode_length.is_multiple_of(8)
            || l.unicode_length + 8 > OBJ_READ as u64
            || l.unicode_state + 4 > OBJ_READ as u64
        {
            return ti.basicsize;
        }
        let len = o.word(l.unicode_length).min(1 << 36);
        let w = o.word(l.unicode_state & !7);
        let state = l.str_state((w >> ((l.unicode_state % 8) * 8)) & 0xffff_ffff);
        if !state.compact {
            ti.basicsize
        } else if state.ascii {
            state.data + len + 1
        } else {
            state.data + (len + 1) * state.kind.clamp(1, 4)
        }
    }

    /// The shape of a keys object from its first five words.
    fn shape_of(&self, w: [u64; 5]) -> Option<KeysShape> {
        let refcnt = w[0];
        let (size, index_bytes, entry, nentries, head) = if self.hl.compact_keys {
            let b = w[1].to_le_bytes();
            let (log2_size, log2_index, kind) = (b[0] as u64, b[1] as u64, b[2]);
            if log2_size > 40 || log2_index > 43 || kind > 2 {
                return None;
            }
            let entry = if kind == 0 { 24 } else { 16 };
            (1u64 << log2_size, 1u64 << log2_index, entry, w[3], 32)
        } else {
            let size = w[1];
            if size == 0 || size > 1 << 40 || !size.is_power_of_two() {
                return None;
            }
            let ix = if size <= 0xff {
                1
            } else if size <= 0xffff {
                2
            } else if size <= 0xffff_ffff {
                4
            } else {
                8
            };
            (size, size * ix, 24, w[4], 40)
        };
        let usable = (size << 1) / 3;
        if nentries > usable {
            return None;
        }
        Some((
            head + index_bytes,
            entry,
            usable,
            index_bytes,
            nentries,
            refcnt == 1,
        ))
    }

    /// A dict from its `ma_keys` and `ma_values` (`values` 0 for a combined table): its bytes
    /// apart from the dict object (its own keys; a split table's values array unless it is a
    /// 3.13+ instance's inline values) and, with `entries`, its (key, value) pairs, at most
    /// what the bounded reads hold. The keys are read once, header and entries together when
    /// the table is small.
    fn dict_read(&mut self, keys: u64, values: u64, dict: u64, entries: bool) -> Option<DictRead> {
        if keys == 0 || !keys.is_multiple_of(8) {
            self.skip();
            return None;
        }
        let mut small = (keys % BLOCK) + SMALL_KEYS <= BLOCK;
        let mut block = [0u8; SMALL_KEYS as usize];
        let head_len = if small { SMALL_KEYS as usize } else { 40 };
        let mut ok = self.fetch(keys, &mut block[..head_len]);
        if !ok && small {
            // The table may end just before unreadable memory.
            small = false;
            ok = self.fetch(keys, &mut block[..40]);
        }
        if !ok {
            self.skip();
            return None;
        }
        let mut head = [0u64; 5];
        for (i, c) in block[..40].chunks_exact(8).enumerate() {
            head[i] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        let (entries_off, entry, usable, _, nentries, own) = self.shape_of(head)?;
        let mut bytes = if own && values == 0 {
            entries_off + usable * entry
        } else {
            0
        };
        let (mut slots, mut capacity) = (0, u64::MAX);
        if values != 0 {
            // A split table: as many value slots as the shared keys can hold (3.11+:
            // `dk_usable` still free plus `dk_nentries` used; 3.8-3.10: the usable size).
            slots = if self.hl.compact_keys {
                (head[2].min(1 << 20) + nentries).min(usable)
            } else {
                usable
            };
            // 3.13+: `capacity` (byte 0) and `embedded` (byte 2) of the values' header.
            let mut inline = false;
            if self.hl.values_off == 8 {
                let [h] = self.words::<1>(values)?;
                capacity = h & 0xff;
                inline = (h >> 16) & 0xff != 0;
            }
            if !inline && values != dict {
                bytes += values_bytes(self.hl.minor, slots);
            }
        }
        if !entries {
            return Some(DictRead {
                bytes,
                entries: Vec::new(),
            });
        }
        let end = entries_off + nentries * entry;
        let raw = if small && end <= SMALL_KEYS {
            block[entries_off as usize..end as usize].to_vec()
        } else {
            self.read_chunked(keys + entries_off, nentries, entry)?
        };
        let pair = |e: &[u8]| {
            let w = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().unwrap());
            if entry == 24 {
                (w(1), w(2))
            } else {
                (w(0), w(1))
            }
        };
        let entries = if values == 0 {
            raw.chunks_exact(entry as usize)
                .map(pair)
                .filter(|&(k, v)| k != 0 && v != 0)
                .collect()
        } else {
            // The keys from the shared table, the values from the split array.
            let n = nentries.min(slots).min(capacity);
            let vals = self.read_chunked(values + self.hl.values_off, n, 8)?;
            raw.chunks_exact(entry as usize)
                .zip(vals.chunks_exact(8))
                .map(|(e, v)| (pair(e).0, u64::from_le_bytes(v.try_into().unwrap())))
                .filter(|&(k, v)| k != 0 && v != 0)
                .collect()
        };
        Some(DictRead { bytes, entries })
    }

    /// The (key, value) pairs of the dict at `dict`.
    fn dict_entries(&mut self, dict: u64) -> Option<DictRead> {
        let d = self.words::<6>(dict)?;
        self.dict_read(
            d[(DICT_KEYS / 8) as usize],
            d[(DICT_VALUES / 8) as usize],
            dict,
            true,
        )
    }

    /// The value of the `str` key `name` in the dict at `dict`.
    fn dict_get_str(&mut self, dict: u64, name: &str) -> Option<u64> {
        let entries = self.dict_entries(dict)?.entries;
        entries
            .into_iter()
            .find(|&(k, _)| self.str_value(k).as_deref() == Some(name))
            .map(|(_, v)| v)
    }

    /// An instance's attributes: its `__dict__` (a child to follow), or its split or inline
    /// values keyed by its class's shared keys (keys and values, children too).
    fn instance_attrs(&mut self, o: &Obj, ti: &TypeInfo) -> Vec<u64> {
        if ti.flags & TYPE_SUBCLASS != 0 || ti.kind == Kind::Module {
            // A class's attributes and a module's globals are roots of their own.
            return Vec::new();
        }
        let values_of = |w: &mut Self, values: u64| -> Vec<u64> {
            if ti.cached_keys == 0 || values == 0 {
                return Vec::new();
            }
            match w.dict_read(ti.cached_keys, values, 0, true) {
                Some(d) => d.entries.iter().flat_map(|&(k, v)| [k, v]).collect(),
                None => Vec::new(),
            }
        };
        match self.hl.managed_dict {
            _ if !self.managed(ti.flags) => {
                if ti.dictoffset == 0 {
                    return Vec::new();
                }
                let at = if ti.dictoffset > 0 {
                    o.addr + ti.dictoffset as u64
                } else {
                    // From the end of a variable-size object, rounded to words.
                    let n = (o.size_field as i64).unsigned_abs().min(1 << 36);
                    let end = (ti.basicsize + n * ti.itemsize).div_ceil(8) * 8;
                    (o.addr + end).wrapping_sub(ti.dictoffset.unsigned_abs())
                };
                self.words::<1>(at)
                    .map(|[d]| d)
                    .filter(|&d| d != 0)
                    .into_iter()
                    .collect()
            }
            ManagedDict::ValuesThenDict => match self.words::<2>(o.addr.wrapping_sub(32)) {
                Some([_, dict]) if dict != 0 => vec![dict],
                Some([values, _]) => values_of(self, values),
                None => Vec::new(),
            },
            ManagedDict::Tagged => match self.words::<1>(o.addr.wrapping_sub(24)) {
                // 3.12 stores `values - 1` (`_PyDictOrValues_SetValues`).
                Some([v]) if v & 1 == 1 => values_of(self, v.wrapping_add(1)),
                Some([dict]) if dict != 0 => vec![dict],
                _ => Vec::new(),
            },
            _ => match self.words::<1>(o.addr.wrapping_sub(24)) {
                Some([dict]) if dict != 0 => vec![dict],
                _ if ti.flags & INLINE_VALUES != 0 => {
                    let at = o.addr + ti.basicsize;
                    // `valid` (byte 3): the values are the object's, not a dict's.
                    match self.words::<1>(at) {
                        Some([h]) if (h >> 24) & 0xff != 0 => values_of(self, at),
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            },
        }
    }

    /// Queues every GC object whose address is a word of the object's own memory (at most
    /// 4 KiB of it), to be marked held.
    fn scan(&mut self, o: &Obj, bytes: u64) {
        self.scan_words(o.addr + 8, bytes.clamp(16, 4096) - 8);
    }

    /// The objects on the GC's lists whose addresses are words of a C object's own memory
    /// (after its refcount and type, at most `bytes` and 4 KiB of it), with their offsets;
    /// modules, classes and their dicts left out (they are roots of their own), and a
    /// function's `__globals__` and `__builtins__` (the namespace it was defined in, a dict
    /// of its own when it was made by `exec`, is not the function's: offsets 16 and 24 on
    /// 3.10+, 24 on 3.8 and 3.9, where 16 is its code, which is no container).
    fn c_fields(&mut self, addr: u64, ti: &TypeInfo, bytes: u64) -> Vec<(u64, u64)> {
        let namespace: &[u64] = if ti.name == "function" {
            &[16, 24]
        } else {
            &[]
        };
        let len = (bytes.clamp(16, 4096) - 16) as usize & !7;
        if len == 0 {
            return Vec::new();
        }
        let Some(b) = self.read(addr + 16, len) else {
            return Vec::new();
        };
        b.chunks_exact(8)
            .enumerate()
            .map(|(i, c)| (16 + 8 * i as u64, u64::from_le_bytes(c.try_into().unwrap())))
            .filter(|&(off, w)| {
                w != addr
                    && !namespace.contains(&off)
                    && !self.no_follow.contains(&w)
                    && self.is_held_kind(w)
            })
            .collect()
    }

    /// Whether `w` is a child a C object's field gives: a dict, list, set or tuple (on the
    /// GC's lists or one the collector does not track: a dict of strings, a tuple of ints), or
    /// another C object on the GC's lists whose fields are followed in turn (a cell, a
    /// coroutine, a bound method). An instance of a Python class is not: a task's loop, a
    /// bound method's `__self__`, a cell's captured object are shared with the rest of the
    /// program (following a task's `task_loop` made every set of tasks retain the whole event
    /// loop), and an instance in a container is followed as the container's item anyway.
    /// Told by its type being one the census has already read (no new type is read for a
    /// word that may be anything; a word that is not an object costs one cached read and no
    /// skipped-read count).
    fn is_held_kind(&self, w: u64) -> bool {
        if !w.is_multiple_of(8) || w < 4096 {
            return false;
        }
        let gc = self
            .counted
            .get(&w)
            .is_some_and(|m| m.flags & ON_GC_LIST != 0);
        if !gc && !self.regions.contains(&(w >> 20)) {
            return false;
        }
        let mut b = [0u8; 16];
        if !self.fetch(w, &mut b) {
            return false;
        }
        let refcnt = u64::from_le_bytes(b[..8].try_into().unwrap());
        let ty = u64::from_le_bytes(b[8..].try_into().unwrap());
        let Some(Some(t)) = self.types.get(&ty) else {
            return false;
        };
        refcnt != 0
            && (matches!(t.kind, Kind::Dict | Kind::List | Kind::Set | Kind::Tuple)
                || (gc && t.fields_hold))
    }

    /// The kind of the dict, list, set or tuple at `w`, read quietly (see
    /// [`Walker::is_held_kind`]).
    fn untracked_container(&self, w: u64) -> Option<Kind> {
        if !self.regions.contains(&(w >> 20)) {
            return None;
        }
        let mut b = [0u8; 16];
        if !self.fetch(w, &mut b) {
            return None;
        }
        let refcnt = u64::from_le_bytes(b[..8].try_into().unwrap());
        let ty = u64::from_le_bytes(b[8..].try_into().unwrap());
        let kind = self.types.get(&ty)?.as_ref()?.kind;
        (refcnt != 0 && matches!(kind, Kind::Dict | Kind::List | Kind::Set | Kind::Tuple))
            .then_some(kind)
    }

    /// Queues every GC object whose address is a word of `len` bytes from `addr`.
    fn scan_words(&mut self, addr: u64, len: u64) {
        let len = len as usize & !7;
        let Some(b) = self.read(addr, len) else {
            return;
        };
        for c in b.chunks_exact(8) {
            let w = u64::from_le_bytes(c.try_into().unwrap());
            if w.is_multiple_of(8)
                && self
                    .counted
                    .get(&w)
                    .is_some_and(|m| m.flags & (ON_GC_LIST | HELD) == ON_GC_LIST)
            {
                self.frontier.push(w);
            }
        }
    }

    /// Counts an object in the type table, once; true if it was not counted before.
    fn count(&mut self, addr: u64, ti: &Ty, bytes: u64, gc: bool) -> bool {
        let flags = if gc { ON_GC_LIST } else { HELD };
        let Entry::Vacant(e) = self.counted.entry(addr) else {
            return false;
        };
        {
            e.insert(Mark {
                flags,
                root: self.roots_walked,
            });
            self.small += super::arenas::object_block_bytes(
                bytes,
                gc,
                ti.basicsize,
                ti.flags,
                matches!(ti.kind, Kind::Dict | Kind::List | Kind::Set),
            );
            self.objects += 1;
            let s = self.stats.entry(ti.addr).or_insert_with(|| PerType {
                ti: ti.clone(),
                stat: TypeStat::default(),
                gc: 0,
                held: 0,
            });
            s.stat.count += 1;
            s.stat.bytes += bytes;
            s.gc += u64::from(gc);
            if let Some(n) = ti.named {
                self.found.note(n, addr);
            }
        }
        true
    }

    /// Marks a counted object held; true if it is on a GC list.
    fn hold(&mut self, addr: u64, ti: &TypeInfo) -> bool {
        let Some(m) = self.counted.get_mut(&addr) else {
            return false;
        };
        let gc = m.flags & ON_GC_LIST != 0;
        if gc && m.flags & HELD == 0 {
            m.flags |= HELD;
            if let Some(s) = self.stats.get_mut(&ti.addr) {
                s.held += 1;
            }
        }
        gc
    }

    /// Walks one GC list from its head, counting its objects; returns the modules (with their
    /// dict) and the classes on it.
    pub fn walk_gc_list(&mut self, head: u64) -> Vec<Root> {
        let mut out = Vec::new();
        // A running program moves objects between lists as the walk reads them: a list torn
        // under the walk is walked again from its head (what was counted stays counted, once),
        // with fresh reads, a few times, before the census says it is incomplete and goes on
        // with the next list.
        for attempt in 1..=GC_LIST_ATTEMPTS {
            match self.walk_gc_list_once(head, &mut out) {
                Ok(()) => break,
                Err(why) if attempt == GC_LIST_ATTEMPTS || self.halted => {
                    self.stop(why);
                    break;
                }
                Err(_) => self.cache.borrow_mut().tags.fill(0),
            }
        }
        out
    }

    fn walk_gc_list_once(&mut self, head: u64, out: &mut Vec<Root>) -> Result<(), &'static str> {
        let Some([first, _]) = self.words::<2>(head) else {
            return Err("a GC list head cannot be read");
        };
        let (mut prev, mut cur) = (head, first & !7);
        while cur != head {
            if self.over_budget() {
                break;
            }
            // The GC header, then the object's first bytes.
            let Some(w) = self.words::<8>(cur) else {
                return Err(
                    "a GC list ended in unreadable memory (the list changed during the walk)",
                );
            };
            // `_gc_prev` keeps 2 flag bits; it must point back where we came from.
            if w[1] & !3 != prev {
                self.skip();
                return Err("a GC list changed during the walk");
            }
            let addr = cur + GC_HEAD;
            let obj = [w[2], w[3], w[4], w[5], w[6], w[7]];
            if let Some((o, ti)) = self.finish_object(addr, obj) {
                if let Some(bytes) = self.size_of(&o, &ti) {
                    // Roots once each, however often the list is walked again.
                    if self.count(addr, &ti, bytes + GC_HEAD, true) {
                        if ti.kind == Kind::Module {
                            out.push(Root::Module(o.word(MODULE_DICT)));
                            self.no_follow.extend([addr, o.word(MODULE_DICT)]);
                            self.frontier.push(addr);
                        } else if ti.flags & TYPE_SUBCLASS != 0 {
                            out.push(Root::Class(addr));
                            self.no_follow.insert(addr);
                            self.frontier.push(addr);
                        }
                    }
                } else {
                    self.skip();
                }
            }
            prev = cur;
            cur = w[0] & !7;
            if cur == 0 {
                return Err("a GC list ended in a NULL pointer (the list changed during the walk)");
            }
        }
        Ok(())
    }

    /// The object's bytes and the objects it holds for retained bytes (a container's items,
    /// an instance's attributes); other objects' own memory is scanned for GC objects to
    /// mark held.
    fn parts(&mut self, o: &Obj, ti: &TypeInfo) -> Option<(u64, Vec<u64>)> {
        Some(match ti.kind {
            Kind::Dict => {
                let d = self.dict_read(o.word(DICT_KEYS), o.word(DICT_VALUES), o.addr, true)?;
                (
                    ti.basicsize + d.bytes,
                    d.entries.iter().flat_map(|&(k, v)| [k, v]).collect(),
                )
            }
            Kind::List | Kind::Tuple | Kind::Set => (self.size_of(o, ti)?, self.items(o, ti)),
            Kind::Str | Kind::Int => (self.size_of(o, ti)?, Vec::new()),
            Kind::Module => {
                let bytes = self.size_of(o, ti)?;
                self.frontier.push(o.word(MODULE_DICT));
                (bytes, Vec::new())
            }
            Kind::Other => {
                let bytes = self.size_of(o, ti)?;
                let mut attrs = self.instance_attrs(o, ti);
                attrs.extend(self.slot_values(o, ti));
                if ti.fields_hold {
                    let fields = self.c_fields(o.addr, ti, bytes);
                    attrs.extend(fields.into_iter().map(|(_, w)| w));
                } else if ti.flags & HAVE_GC != 0 {
                    self.scan(o, bytes);
                }
                (bytes, attrs)
            }
        })
    }

    /// Retained bytes and length of what `root` holds through containers and instance
    /// attributes, depth-bounded; counts every object it reaches in the type table and marks
    /// it held.
    fn retained(&mut self, root: u64) -> (u64, Option<u64>, String) {
        self.retained_all(&[root])
    }

    /// [`Walker::retained`] of what `roots` hold together (each object once); the length and
    /// type are the first root's.
    fn retained_all(&mut self, roots: &[u64]) -> (u64, Option<u64>, String) {
        self.roots_walked += 1;
        let id = self.roots_walked;
        // Objects that cannot be read are not counted, so not stamped: at most once each.
        let mut unread = AddrSet::default();
        let mut stack: Vec<(u64, u32)> = roots.iter().rev().map(|&r| (r, 0u32)).collect();
        let (mut total, mut len, mut tname) = (0u64, None, String::new());
        while let Some((addr, depth)) = stack.pop() {
            if self.over_budget() {
                continue;
            }
            match self.counted.get_mut(&addr) {
                Some(m) if m.root == id => continue,
                Some(m) => m.root = id,
                None if unread.contains(&addr) => continue,
                None => {}
            }
            let Some((o, ti)) = self.object(addr) else {
                unread.insert(addr);
                continue;
            };
            let Some((bytes, children)) = self.parts(&o, &ti) else {
                self.skip();
                unread.insert(addr);
                continue;
            };
            let gc = self.hold(addr, &ti);
            let bytes = bytes + if gc { GC_HEAD } else { 0 };
            if depth == 0 && tname.is_empty() {
                tname = ti.name.clone();
                len = match ti.kind {
                    Kind::Dict => Some(o.word(DICT_USED)),
                    Kind::List | Kind::Tuple => Some(o.size_field),
                    Kind::Set => Some(o.word(SET_USED)),
                    _ => None,
                };
            }
            if !gc {
                self.count(addr, &ti, bytes, false);
            }
            total += bytes;
            if depth >= self.lim.max_depth && !children.is_empty() {
                self.stop(format!(
                    "--max-depth {} reached: retained bytes are lower bounds",
                    self.lim.max_depth
                ));
                continue;
            }
            stack.extend(children.into_iter().map(|c| (c, depth + 1)));
        }
        (total, len, tname)
    }

    /// Marks held every GC object the frontier reaches (through containers, attributes and
    /// scanned memory), without counting bytes.
    fn hold_frontier(&mut self) {
        while let Some(addr) = self.frontier.pop() {
            if self.over_budget() {
                break;
            }
            if self.counted.get(&addr).is_none_or(|m| m.flags & HELD != 0) {
                continue;
            }
            let Some((o, ti)) = self.object(addr) else {
                continue;
            };
            self.hold(addr, &ti);
            let Some((_, children)) = self.parts(&o, &ti) else {
                continue;
            };
            for c in children {
                if self
                    .counted
                    .get(&c)
                    .is_some_and(|m| m.flags & (ON_GC_LIST | HELD) == ON_GC_LIST)
                {
                    self.frontier.push(c);
                }
            }
        }
    }

    /// `n` records of `size` bytes from `addr`, read at most `--max-read-bytes` at a time; more
    /// than `--max-objects` records are not read (the census says so).
    fn read_chunked(&mut self, addr: u64, n: u64, size: u64) -> Option<Vec<u8>> {
        let n = if n > self.lim.max_objects {
            self.stop(format!(
                "a container of {n} items is larger than --max-objects {}",
                self.lim.max_objects
            ));
            self.lim.max_objects
        } else {
            n
        };
        let total = n.checked_mul(size)?;
        let chunk = (self.lim.max_read_bytes as u64 / size).max(1) * size;
        let mut out = Vec::with_capacity(total.min(1 << 24) as usize);
        let mut off = 0;
        while off < total {
            let len = chunk.min(total - off);
            out.extend(self.read(addr.checked_add(off)?, len as usize)?);
            off += len;
        }
        Some(out)
    }

    /// The items of a list, tuple or set.
    fn items(&mut self, o: &Obj, ti: &TypeInfo) -> Vec<u64> {
        let (at, n, stride) = match ti.kind {
            Kind::List => (o.word(LIST_ITEM), o.size_field, 8),
            Kind::Tuple => (o.addr + self.hl.tuple_item, o.size_field, 8),
            _ => (o.word(SET_TABLE), o.word(SET_MASK).saturating_add(1), 16),
        };
        if n == 0 {
            return Vec::new();
        }
        let Some(raw) = self.read_chunked(at, n, stride as u64) else {
            return Vec::new();
        };
        raw.chunks_exact(stride)
            .map(|c| u64::from_le_bytes(c[..8].try_into().unwrap()))
            .filter(|&p| p != 0)
            .collect()
    }

    /// A root's path prefix (`module:` for a module, `module:Class.` for a heap class) and the
    /// dict whose entries are its owners, or None where it cannot be read (or a class is not
    /// a heap type).
    fn root_prefix(&mut self, root: &Root) -> Option<(String, u64)> {
        match *root {
            Root::Module(dict) => {
                let name = self
                    .dict_get_str(dict, "__name__")
                    .and_then(|n| self.str_value(n))?;
                Some((format!("{name}:"), dict))
            }
            Root::Class(addr) => {
                // A class object: its own type record gives its dict and name.
                let cls = self.type_info(addr)?;
                if cls.flags & HEAPTYPE == 0 {
                    return None;
                }
                let (module, short) = match cls.name.rsplit_once('.') {
                    Some((m, s)) => (m.to_string(), s.to_string()),
                    None => ("builtins".to_string(), cls.name.clone()),
                };
                Some((format!("{module}:{short}."), cls.dict))
            }
        }
    }

    /// The whole census from the GC list heads at `heads`.
    pub fn census(mut self, heads: &[u64]) -> Census {
        let mut tracked = Vec::new();
        for &h in heads {
            tracked.extend(self.walk_gc_list(h));
        }
        self.regions = self.counted.keys().map(|a| a >> 20).collect();
        // Room for about as many objects again reached from the roots (strings, ints).
        self.counted.reserve(self.counted.len().min(1 << 24));
        // Roots: modules' globals and classes' attributes.
        let mut roots: Vec<(String, u64)> = Vec::new();
        for root in tracked {
            let Some((prefix, dict)) = self.root_prefix(&root) else {
                continue;
            };
            if matches!(root, Root::Class(_)) {
                self.no_follow.insert(dict);
            }
            self.frontier.push(dict);
            for (k, v) in self
                .dict_entries(dict)
                .map(|d| d.entries)
                .unwrap_or_default()
            {
                match self.str_value(k) {
                    Some(key) if !is_dunder(&key) => roots.push((format!("{prefix}{key}"), v)),
                    // Not an owner row, but what it points at is held.
                    _ => self.frontier.push(v),
                }
            }
        }
        let names = self.read_names(&roots);
        let mut owners = Vec::new();
        for (path, v) in roots {
            if self.over_budget() {
                break;
            }
            let (retained_bytes, len, type_name) = self.retained(v);
            if !type_name.is_empty() {
                owners.push(Owner {
                    path,
                    type_name,
                    len,
                    retained_bytes,
                });
            }
        }
        // Containers that no global reaches, held by the static variables of C code.
        owners.extend(self.static_owners());
        if let Some(rt) = self.runtime {
            self.hold_frames(rt);
        }
        self.hold_frontier();
        owners.sort_by(|a, b| {
            b.retained_bytes
                .cmp(&a.retained_bytes)
                .then(a.path.cmp(&b.path))
        });
        let names = self.finish_names(names);
        // Per name (two classes may share one), counts and the GC objects nothing holds.
        let mut types: HashMap<String, TypeStat> = HashMap::new();
        let mut unheld: HashMap<String, u64> = HashMap::new();
        for p in self.stats.into_values() {
            let t = types.entry(p.ti.name.clone()).or_default();
            t.count += p.stat.count;
            t.bytes += p.stat.bytes;
            if p.gc > p.held {
                *unheld.entry(p.ti.name.clone()).or_default() += p.gc - p.held;
            }
        }
        Census {
            types,
            unheld,
            owners,
            objects: self.objects,
            names,
            skipped_reads: self.skipped.get(),
            reads: self.reads.get(),
            incomplete: self.incomplete,
            small_object_bytes: self.small,
        }
    }
}

/// Whether the containers and C objects a C object's own memory points at are its children
/// for retained bytes (its fields: an `lru_cache` wrapper's cache, a `functools.partial`'s
/// arguments, a cell's value, a function's defaults and closure, an extension type's
/// `PyObject *` members; see [`Walker::is_held_kind`]), rather than only marked held.
///
/// A C type is a static type or one made from a spec (`PyType_FromSpec` keeps the dotted name:
/// `functools._lru_cache_wrapper` on 3.10+); Python classes are not (their instances'
/// attributes are read as attributes). What a field may point at that must not be counted as
/// the object's is kept out where the fields are read ([`Walker::c_fields`]): modules, module
/// dicts (a function's `__globals__`, a frame's `f_globals`), classes and class dicts, which
/// are roots of their own. Left out here:
/// - weak references (`weakref.ref`, proxies): they do not keep their referent alive;
/// - classes themselves (`TYPE_SUBCLASS`): a class's attributes are owners of their own;
/// - leaves with nothing to point at: objects with items (`bytes`) and two-word objects
///   (`float`).
///
/// Functions, frames, generators and cells are followed on purpose: a global function
/// retains its closure's cache, a saved traceback the frames' locals; the depth limit and
/// each walk's visit-once stamp bound them, and what two owners reach counts for both, as for
/// any container.
fn fields_hold(name: &str, kind: Kind, flags: u64, basicsize: u64, itemsize: u64) -> bool {
    let c_type = flags & HEAPTYPE == 0 || name.contains('.');
    let weak = matches!(
        name,
        "weakref"
            | "weakproxy"
            | "weakcallableproxy"
            | "weakref.ReferenceType"
            | "weakref.ProxyType"
            | "weakref.CallableProxyType"
            | "weakmethod"
    );
    c_type
        && kind == Kind::Other
        && flags & TYPE_SUBCLASS == 0
        && !weak
        && (flags & HAVE_GC != 0 || (itemsize == 0 && basicsize > 24))
}

fn is_dunder(k: &str) -> bool {
    k.len() > 4 && k.starts_with("__") && k.ends_with("__")
}

#[cfg(test)]
mod tests;
