// size: one walker: the GC lists, the owner graph and the per-type readers (dict, list, set,
// tuple, str, int) share one Source, one set of bounds and one skipped-read count.
//! One census: every object on the GC's lists, and every object reachable from a module global
//! or a class attribute through containers, counted by type; and each global's and attribute's
//! retained bytes. Reads go through a [`Source`], so the same code runs on a live process and
//! on arbitrary bytes (the fuzz target): every read is bounded, every value read is checked
//! before it is used, and a read that fails or does not make sense is counted and skipped.

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    time::Instant,
};

use super::layout::*;

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
            max_depth: 16,
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
    pub owners: Vec<Owner>,
    pub objects: u64,
    pub skipped_reads: u64,
    /// Why the census is not complete (the first limit hit), if it is not.
    pub incomplete: Option<String>,
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
    name: String,
    basicsize: u64,
    itemsize: u64,
    flags: u64,
    dict: u64,
    kind: Kind,
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
    types: HashMap<u64, Option<TypeInfo>>,
    skipped: Cell<u64>,
    objects: u64,
    incomplete: Option<String>,
    /// Every object counted in the type table.
    counted: HashSet<u64>,
    stats: HashMap<String, TypeStat>,
}

impl<'a> Walker<'a> {
    pub fn new(src: &'a dyn Source, hl: &'a HeapLayout, lim: Limits) -> Self {
        Walker {
            src,
            hl,
            lim,
            start: Instant::now(),
            types: HashMap::new(),
            skipped: Cell::new(0),
            objects: 0,
            incomplete: None,
            counted: HashSet::new(),
            stats: HashMap::new(),
        }
    }

    fn stop(&mut self, why: impl Into<String>) {
        if self.incomplete.is_none() {
            self.incomplete = Some(why.into());
        }
    }

    /// Whether a limit was hit (and says which, once).
    fn over_budget(&mut self) -> bool {
        if self.incomplete.is_some() {
            return true;
        }
        if self.objects >= self.lim.max_objects {
            self.stop(format!(
                "--max-objects {} reached: counts are lower bounds",
                self.lim.max_objects
            ));
            return true;
        }
        if self.objects.is_multiple_of(4096)
            && self.start.elapsed().as_secs_f64() > self.lim.time_budget_s
        {
            self.stop(format!(
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
        if self.src.read_into(addr, &mut buf) {
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
        let b = self.read(addr, N * 8)?;
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
    fn type_info(&mut self, ty: u64) -> Option<TypeInfo> {
        if let Some(t) = self.types.get(&ty) {
            return t.clone();
        }
        let t = self.read_type(ty);
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
        let mut ti = TypeInfo {
            name: tp_name.clone(),
            basicsize,
            itemsize,
            flags,
            dict,
            kind,
        };
        if heap {
            // A class: `module.Name`, the module from its `__module__`.
            self.types.insert(ty, Some(ti.clone()));
            let module = self
                .dict_get_str(dict, "__module__")
                .and_then(|m| self.str_value(m));
            if let Some(m) = module.filter(|m| m != "builtins") {
                ti.name = format!("{m}.{tp_name}");
            }
        }
        Some(ti)
    }

    fn type_of(&mut self, addr: u64) -> Option<TypeInfo> {
        let ty = self.words::<2>(addr)?[1];
        self.type_info(ty)
    }

    /// The object at `addr`: its first [`OBJ_READ`] bytes.
    fn object(&mut self, addr: u64) -> Option<(Obj, TypeInfo)> {
        if addr == 0 || !addr.is_multiple_of(8) {
            self.skip();
            return None;
        }
        let w = self.words::<6>(addr)?;
        self.finish_object(addr, w)
    }

    fn finish_object(&mut self, addr: u64, w: [u64; 6]) -> Option<(Obj, TypeInfo)> {
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
    /// dict's keys, a set's table); `None` if its fields make no sense.
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
            Kind::Dict => ti.basicsize + self.dict_keys_bytes(o.word(DICT_KEYS))?,
            _ if ti.itemsize > 0 => {
                if n.unsigned_abs() > 1 << 36 {
                    return None;
                }
                ti.basicsize + ti.itemsize * n.unsigned_abs()
            }
            _ => ti.basicsize,
        };
        (size <= MAX_OBJECT_BYTES).then_some(size)
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

    /// (entries offset, entry size, entries allocated, index bytes, used entries) of a keys
    /// object, if it is not shared with other dicts (a split table or the static empty keys).
    fn keys_shape(&mut self, keys: u64) -> Option<KeysShape> {
        let w = self.words::<5>(keys)?;
        self.shape_of(w)
    }

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

    fn dict_keys_bytes(&mut self, keys: u64) -> Option<u64> {
        let (entries_off, entry, usable, _, _, own) = self.keys_shape(keys)?;
        Some(if own { entries_off + usable * entry } else { 0 })
    }

    /// The (key, value) pairs of a combined dict (a split one, whose values live apart, gives
    /// none), at most what one bounded read holds.
    fn dict_entries(&mut self, dict: u64) -> Option<DictRead> {
        let d = self.words::<6>(dict)?;
        self.dict_entries_of(d[(DICT_KEYS / 8) as usize], d[(DICT_VALUES / 8) as usize])
    }

    /// [`Self::dict_entries`] from the dict's `ma_keys` and `ma_values`.
    fn dict_entries_of(&mut self, keys: u64, values: u64) -> Option<DictRead> {
        // A small table: header and entries in one read (falling back to two reads if that
        // reaches past readable memory).
        let mut head = [0u64; 5];
        let mut block = None;
        if keys.is_multiple_of(8) && keys != 0 && (keys % 4096) + SMALL_KEYS <= 4096 {
            let mut b = vec![0u8; SMALL_KEYS as usize];
            if self.src.read_into(keys, &mut b) {
                for (i, c) in b[..40].chunks_exact(8).enumerate() {
                    head[i] = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                }
                block = Some(b);
            }
        }
        if block.is_none() {
            head = self.words::<5>(keys)?;
        }
        let (entries_off, entry, usable, _, nentries, own) = self.shape_of(head)?;
        let bytes = if own { entries_off + usable * entry } else { 0 };
        if values != 0 {
            return Some(DictRead {
                bytes,
                entries: Vec::new(),
            });
        }
        let end = entries_off + nentries * entry;
        let raw = match block {
            Some(b) if end <= SMALL_KEYS => b[entries_off as usize..end as usize].to_vec(),
            _ => self.read_chunked(keys + entries_off, nentries, entry)?,
        };
        let entries = raw
            .chunks_exact(entry as usize)
            .filter_map(|e| {
                let w = |i: usize| u64::from_le_bytes(e[i * 8..i * 8 + 8].try_into().unwrap());
                let (k, v) = if entry == 24 {
                    (w(1), w(2))
                } else {
                    (w(0), w(1))
                };
                (k != 0 && v != 0).then_some((k, v))
            })
            .collect();
        Some(DictRead { bytes, entries })
    }

    /// The value of the `str` key `name` in the dict at `dict`.
    fn dict_get_str(&mut self, dict: u64, name: &str) -> Option<u64> {
        let entries = self.dict_entries(dict)?.entries;
        entries
            .into_iter()
            .find(|&(k, _)| self.str_value(k).as_deref() == Some(name))
            .map(|(_, v)| v)
    }

    fn count(&mut self, addr: u64, ti: &TypeInfo, bytes: u64) {
        if self.counted.insert(addr) {
            self.objects += 1;
            let s = self.stats.entry(ti.name.clone()).or_default();
            s.count += 1;
            s.bytes += bytes;
        }
    }

    /// Walks one GC list from its head, counting its objects; returns the modules (with their
    /// dict) and the classes on it.
    pub fn walk_gc_list(&mut self, head: u64) -> Vec<Root> {
        let mut out = Vec::new();
        let Some([first, _]) = self.words::<2>(head) else {
            self.stop("a GC list head cannot be read");
            return out;
        };
        let (mut prev, mut cur) = (head, first & !7);
        while cur != head {
            if self.over_budget() {
                break;
            }
            // The GC header, then the object's first bytes.
            let Some(w) = self.words::<8>(cur) else {
                self.stop(
                    "a GC list ended in unreadable memory (the list changed during the walk)",
                );
                break;
            };
            // `_gc_prev` keeps 2 flag bits; it must point back where we came from.
            if w[1] & !3 != prev {
                self.skip();
                self.stop("a GC list changed during the walk");
                break;
            }
            let addr = cur + GC_HEAD;
            let obj = [w[2], w[3], w[4], w[5], w[6], w[7]];
            if let Some((o, ti)) = self.finish_object(addr, obj) {
                if let Some(bytes) = self.size_of(&o, &ti) {
                    self.count(addr, &ti, bytes + GC_HEAD);
                    if ti.kind == Kind::Module {
                        out.push(Root::Module(o.word(MODULE_DICT)));
                    } else if ti.flags & TYPE_SUBCLASS != 0 {
                        out.push(Root::Class(addr));
                    }
                } else {
                    self.skip();
                }
            }
            prev = cur;
            cur = w[0] & !7;
            if cur == 0 {
                self.stop("a GC list ended in a NULL pointer (the list changed during the walk)");
                break;
            }
        }
        out
    }

    /// Retained bytes and length of what `root` holds through containers, depth-bounded;
    /// counts every object it reaches in the type table.
    fn retained(&mut self, root: u64) -> (u64, Option<u64>, String) {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut stack = vec![(root, 0u32)];
        let (mut total, mut len, mut tname) = (0u64, None, String::new());
        while let Some((addr, depth)) = stack.pop() {
            if !seen.insert(addr) || self.over_budget() {
                continue;
            }
            let Some((o, ti)) = self.object(addr) else {
                continue;
            };
            let gc = self.counted.contains(&addr);
            let (bytes, children): (Option<u64>, Vec<u64>) = match ti.kind {
                Kind::Dict => match self.dict_entries_of(o.word(DICT_KEYS), o.word(DICT_VALUES)) {
                    Some(d) => (
                        Some(ti.basicsize + d.bytes),
                        d.entries.iter().flat_map(|&(k, v)| [k, v]).collect(),
                    ),
                    None => (None, Vec::new()),
                },
                Kind::List | Kind::Tuple | Kind::Set => {
                    let bytes = self.size_of(&o, &ti);
                    (bytes, self.items(&o, &ti))
                }
                _ => (self.size_of(&o, &ti), Vec::new()),
            };
            let Some(bytes) = bytes else {
                self.skip();
                continue;
            };
            let bytes = bytes + if gc { GC_HEAD } else { 0 };
            if depth == 0 {
                tname = ti.name.clone();
                len = match ti.kind {
                    Kind::Dict => Some(o.word(DICT_USED)),
                    Kind::List | Kind::Tuple => Some(o.size_field),
                    Kind::Set => Some(o.word(SET_USED)),
                    _ => None,
                };
            }
            if !gc {
                self.count(addr, &ti, bytes);
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

    /// The whole census from the GC list heads at `heads`.
    pub fn census(mut self, heads: &[u64]) -> Census {
        let mut tracked = Vec::new();
        for &h in heads {
            tracked.extend(self.walk_gc_list(h));
        }
        // Roots: modules' globals and classes' attributes.
        let mut roots: Vec<(String, u64)> = Vec::new();
        for root in tracked {
            match root {
                Root::Module(dict) => {
                    let Some(name) = self
                        .dict_get_str(dict, "__name__")
                        .and_then(|n| self.str_value(n))
                    else {
                        continue;
                    };
                    for (k, v) in self
                        .dict_entries(dict)
                        .map(|d| d.entries)
                        .unwrap_or_default()
                    {
                        if let Some(key) = self.str_value(k).filter(|k| !is_dunder(k)) {
                            roots.push((format!("{name}:{key}"), v));
                        }
                    }
                }
                Root::Class(addr) => {
                    // A class object: its own type record gives its dict and name.
                    let Some(cls) = self.type_info(addr) else {
                        continue;
                    };
                    if cls.flags & HEAPTYPE == 0 {
                        continue;
                    }
                    let (module, short) = match cls.name.rsplit_once('.') {
                        Some((m, s)) => (m.to_string(), s.to_string()),
                        None => ("builtins".to_string(), cls.name.clone()),
                    };
                    for (k, v) in self
                        .dict_entries(cls.dict)
                        .map(|d| d.entries)
                        .unwrap_or_default()
                    {
                        if let Some(key) = self.str_value(k).filter(|k| !is_dunder(k)) {
                            roots.push((format!("{module}:{short}.{key}"), v));
                        }
                    }
                }
            }
        }
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
        owners.sort_by(|a, b| {
            b.retained_bytes
                .cmp(&a.retained_bytes)
                .then(a.path.cmp(&b.path))
        });
        Census {
            types: self.stats,
            owners,
            objects: self.objects,
            skipped_reads: self.skipped.get(),
            incomplete: self.incomplete,
        }
    }
}

fn is_dunder(k: &str) -> bool {
    k.len() > 4 && k.starts_with("__") && k.ends_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HeapLayout {
        heap_layout(12, &crate::python::layout::v3_12::LAYOUT).unwrap()
    }

    #[test]
    fn empty_list_head_is_an_empty_census() {
        let base = 0x1000u64;
        let mut data = vec![0u8; 64];
        data[0..8].copy_from_slice(&base.to_le_bytes());
        data[8..16].copy_from_slice(&base.to_le_bytes());
        let src = Bytes { base, data };
        let hl = layout();
        let c = Walker::new(&src, &hl, Limits::default()).census(&[base]);
        assert_eq!(c.objects, 0);
        assert!(c.incomplete.is_none());
        assert!(c.types.is_empty());
    }

    #[test]
    fn a_list_that_does_not_link_back_is_incomplete_and_counted() {
        let base = 0x1000u64;
        let mut data = vec![0u8; 256];
        // head -> 0x1040, whose prev points elsewhere.
        data[0..8].copy_from_slice(&0x1040u64.to_le_bytes());
        data[0x40..0x48].copy_from_slice(&base.to_le_bytes());
        data[0x48..0x50].copy_from_slice(&0x1080u64.to_le_bytes());
        let src = Bytes { base, data };
        let hl = layout();
        let c = Walker::new(&src, &hl, Limits::default()).census(&[base]);
        assert_eq!(c.objects, 0);
        assert_eq!(c.skipped_reads, 1);
        assert_eq!(
            c.incomplete.as_deref(),
            Some("a GC list changed during the walk")
        );
    }

    #[test]
    fn a_cycle_that_never_returns_stops_at_the_object_limit() {
        // head -> A -> A -> ... (A's next is itself, prev is head then A): the prev check
        // stops it on the second step.
        let base = 0x1000u64;
        let mut data = vec![0u8; 256];
        data[0..8].copy_from_slice(&0x1040u64.to_le_bytes());
        data[0x40..0x48].copy_from_slice(&0x1040u64.to_le_bytes());
        data[0x48..0x50].copy_from_slice(&base.to_le_bytes());
        let src = Bytes { base, data };
        let hl = layout();
        let lim = Limits {
            max_objects: 3,
            ..Limits::default()
        };
        let c = Walker::new(&src, &hl, lim).census(&[base]);
        assert!(c.incomplete.is_some());
        assert!(c.skipped_reads >= 1);
    }
}
