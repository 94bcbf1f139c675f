//! The census over synthetic memory: GC lists torn or cyclic, a module holding an instance
//! through 3.12 managed values, held and unheld objects, and the block cache.

use super::*;

fn layout() -> HeapLayout {
    heap_layout(12, &crate::python::layout::v3_12::LAYOUT).unwrap()
}

/// Synthetic 3.12 memory from 0x10000: types, strings, dicts, lists, a module and instances
/// (also the holder walk's tests').
pub(super) struct Mem {
    pub(super) data: Vec<u8>,
}

pub(super) const BASE: u64 = 0x10000;

impl Mem {
    pub(super) fn new() -> Self {
        Mem {
            data: vec![0; 0x10000],
        }
    }
    pub(super) fn put(&mut self, addr: u64, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            let at = (addr - BASE) as usize + i * 8;
            self.data[at..at + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
    pub(super) fn cstr(&mut self, addr: u64, s: &str) {
        let at = (addr - BASE) as usize;
        self.data[at..at + s.len()].copy_from_slice(s.as_bytes());
    }
    pub(super) fn ty(
        &mut self,
        addr: u64,
        name_at: u64,
        name: &str,
        basic: u64,
        flags: u64,
        dict: u64,
    ) {
        self.cstr(name_at, name);
        self.put(addr + TP_NAME, &[name_at, basic, 0]);
        self.put(addr + TP_FLAGS, &[flags]);
        self.put(addr + TP_DICT, &[dict]);
    }
    /// A compact ASCII str (3.12: length at 16, state at 32, data at 40).
    pub(super) fn str(&mut self, addr: u64, s: &str) {
        self.put(addr, &[1, STR_T, s.len() as u64, 0, 100]);
        self.cstr(addr + 40, s);
    }
    /// A combined unicode-keyed dict of up to 5 entries: the object at `addr`, its keys
    /// at `addr + 0x40`.
    pub(super) fn dict(&mut self, addr: u64, entries: &[(u64, u64)]) {
        let keys = addr + 0x40;
        self.put(addr, &[1, DICT_T, entries.len() as u64, 0, keys, 0]);
        // dk_refcnt 1, log2_size 3, log2_index_bytes 3, kind 1 (unicode); usable, nentries.
        let shape = 3 | (3 << 8) | (1 << 16);
        self.put(
            keys,
            &[1, shape, 5 - entries.len() as u64, entries.len() as u64],
        );
        for (i, &(k, v)) in entries.iter().enumerate() {
            self.put(keys + 32 + 8 + i as u64 * 16, &[k, v]);
        }
    }
    /// A list at `addr` of type `list_t`, its item array at `addr + 0x80`.
    pub(super) fn list(&mut self, addr: u64, list_t: u64, items: &[u64]) {
        let n = items.len() as u64;
        self.put(addr, &[1, list_t, n, addr + 0x80, n]);
        self.put(addr + 0x80, items);
    }
    /// A GC list at BASE through the objects at `objs` (each with its header 16 below).
    pub(super) fn gc_list(&mut self, objs: &[u64]) {
        let nodes: Vec<u64> = std::iter::once(BASE)
            .chain(objs.iter().map(|o| o - GC_HEAD))
            .collect();
        for (i, &n) in nodes.iter().enumerate() {
            let next = nodes[(i + 1) % nodes.len()];
            let prev = nodes[(i + nodes.len() - 1) % nodes.len()];
            self.put(n, &[next, prev]);
        }
    }
}

pub(super) const STR_T: u64 = 0x10100;
pub(super) const DICT_T: u64 = 0x10300;
pub(super) const MODULE_T: u64 = 0x10500;
const CLASS_C: u64 = 0x11000;
const MODULE: u64 = 0x14010;
const A: u64 = 0x14120;
const B: u64 = 0x14220;

/// Module `m` with global `a` = an instance A of class `m.C` whose attribute `x` (in
/// 3.12 split values before A) is a str; B is another C that nothing names.
fn module_with_instances(a_holds_b: bool) -> Census {
    let mut m = Mem::new();
    m.ty(STR_T, 0x10f00, "str", 40, 0, 0);
    m.ty(DICT_T, 0x10f10, "dict", 48, 0, 0);
    m.ty(MODULE_T, 0x10f20, "module", 40, 0, 0);
    let flags = HEAPTYPE | HAVE_GC | MANAGED_DICT;
    m.ty(CLASS_C, 0x10f30, "C", 32, flags, 0x13400);
    m.put(CLASS_C + 880, &[0x14500]);
    m.str(0x12000, "__name__");
    m.str(0x12100, "m");
    m.str(0x12200, "a");
    m.str(0x12300, "__module__");
    m.str(0x12400, "x");
    m.str(0x12500, "payload of twenty-six bytes");
    m.dict(0x13000, &[(0x12000, 0x12100), (0x12200, A)]);
    m.dict(0x13400, &[(0x12300, 0x12100)]);
    m.put(MODULE, &[1, MODULE_T, 0x13000]);
    // A: values tagged with bit 0 at A - 24, one slot; C's shared keys name it `x`.
    // 3.12 stores `values - 1`: bit 0 set on an aligned pointer.
    m.put(A - 24, &[0x14400 - 1]);
    m.put(A, &[1, CLASS_C, if a_holds_b { B } else { 0 }]);
    m.put(0x14400, &[0x12500]);
    m.put(0x14500, &[2, 3 | (3 << 8) | (1 << 16), 4, 1]);
    m.put(0x14500 + 40, &[0x12400, 0]);
    m.put(B, &[1, CLASS_C, 0]);
    m.gc_list(&[MODULE, A, B]);
    let src = Bytes {
        base: BASE,
        data: m.data,
    };
    Walker::new(&src, &layout(), Limits::default()).census(&[BASE])
}

#[test]
fn managed_values_are_retained_and_unreached_instances_are_unheld() {
    let c = module_with_instances(false);
    assert!(c.incomplete.is_none(), "{:?}", c.incomplete);
    assert_eq!(c.types["m.C"].count, 2);
    let a = c.owners.iter().find(|o| o.path == "m:a").expect("m:a");
    assert_eq!(a.type_name, "m.C");
    // A (32 + 16 pre-header + 16 GC header), "x" (41 + 1) and the payload (40 + 27 + 1).
    assert_eq!(a.retained_bytes, 64 + 42 + 68);
    assert_eq!(c.unheld.get("m.C"), Some(&1), "B is unheld: {:?}", c.unheld);
    assert_eq!(c.unheld.get("module"), None, "a module is a root");
}

#[test]
fn an_object_named_in_a_held_objects_memory_is_held() {
    let c = module_with_instances(true);
    assert_eq!(c.types["m.C"].count, 2);
    assert_eq!(
        c.unheld.get("m.C"),
        None,
        "A's memory points at B: {:?}",
        c.unheld
    );
}

#[test]
fn the_block_cache_reads_across_blocks_and_around_unreadable_ones() {
    // 40 KiB of memory starting 1 KiB into block 4: blocks 4 and 6 cannot be read whole,
    // block 5 can.
    let base = BLOCK * 4 + 1024;
    let data: Vec<u8> = (0..40 * 1024).map(|i| (i % 251) as u8).collect();
    let src = Bytes {
        base,
        data: data.clone(),
    };
    let hl = layout();
    let w = Walker::new(&src, &hl, Limits::default());
    for (off, len) in [
        (0usize, 64usize),
        (BLOCK as usize - 1024 - 8, 16),
        (100, 20000),
    ] {
        let mut buf = vec![0; len];
        assert!(w.fetch(base + off as u64, &mut buf), "{off} {len}");
        assert_eq!(buf, data[off..off + len], "{off} {len}");
    }
    let mut buf = [0u8; 16];
    assert!(!w.fetch(base + data.len() as u64 - 8, &mut buf));
    assert!(!w.fetch(base - 8, &mut buf));
    // The middle block, once read, serves its neighbours' objects with no more reads.
    let before = w.reads.get();
    let mut small = [0u8; 8];
    for i in 0..100 {
        assert!(w.fetch(BLOCK * 5 + i * 8, &mut small));
    }
    assert!(w.reads.get() - before <= 1);
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
    // Walked again from its head, with fresh reads, before it is left: each walk counted.
    assert_eq!(c.skipped_reads, u64::from(super::GC_LIST_ATTEMPTS));
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

/// A list and a C object holding a dict in its field at 0x18, each named only by a static
/// variable (`registry`, `holder`) of a segment: both are owner rows, by symbol and by holder,
/// and nothing is unheld.
#[test]
fn containers_held_by_static_variables_are_owners() {
    const LIST_T: u64 = 0x10700;
    const HOLDER_T: u64 = 0x10900;
    const L: u64 = 0x15010;
    const H: u64 = 0x15110;
    const D: u64 = 0x15210;
    const S: u64 = 0x16000;
    let mut m = Mem::new();
    m.ty(STR_T, 0x10f00, "str", 40, 0, 0);
    m.ty(DICT_T, 0x10f10, "dict", 48, HAVE_GC, 0);
    m.ty(LIST_T, 0x10f20, "list", 40, HAVE_GC, 0);
    m.ty(HOLDER_T, 0x10f30, "ext.Holder", 32, HAVE_GC, 0);
    m.str(0x12000, "k");
    m.str(0x12100, "v");
    m.put(L, &[1, LIST_T, 0, 0, 0]);
    m.put(H, &[1, HOLDER_T, 7, D]);
    m.dict(D, &[(0x12000, 0x12100)]);
    m.put(S, &[L, H]);
    m.gc_list(&[L, H, D]);
    let src = Bytes {
        base: BASE,
        data: m.data,
    };
    let sym = |start: u64, name: &str| StaticSymbol {
        start,
        end: start + 8,
        name: name.into(),
    };
    let seg = Segment {
        start: S,
        end: S + 0x20,
        file: "t.so".into(),
        bias: S - 0x1000,
        symbols: vec![sym(S, "registry"), sym(S + 8, "holder")],
    };
    let c = Walker::new(&src, &layout(), Limits::default())
        .with_statics(vec![seg])
        .census(&[BASE]);
    assert!(c.incomplete.is_none(), "{:?}", c.incomplete);
    let row = |p: &str| {
        c.owners
            .iter()
            .find(|o| o.path == p)
            .unwrap_or_else(|| panic!("no {p} in {:?}", c.owners))
    };
    let reg = row("t.so:registry");
    assert_eq!((reg.type_name.as_str(), reg.len), ("list", Some(0)));
    assert_eq!(reg.retained_bytes, 40 + 16);
    let items = row("t.so:holder→ext.Holder+0x18");
    assert_eq!((items.type_name.as_str(), items.len), ("dict", Some(1)));
    assert_eq!(c.owners.len(), 2, "{:?}", c.owners);
    assert!(c.unheld.is_empty(), "{:?}", c.unheld);
}

/// A module global that is a C object (`ext.Holder`) retains the dict in its field, but not
/// its module's dict, which its other field points at too.
#[test]
fn a_c_objects_fields_are_retained_but_not_its_modules_dict() {
    const HOLDER_T: u64 = 0x10900;
    const H: u64 = 0x15110;
    const D: u64 = 0x15210;
    let mut m = Mem::new();
    m.ty(STR_T, 0x10f00, "str", 40, 0, 0);
    m.ty(DICT_T, 0x10f10, "dict", 48, HAVE_GC, 0);
    m.ty(MODULE_T, 0x10f20, "module", 40, HAVE_GC, 0);
    m.ty(HOLDER_T, 0x10f30, "ext.Holder", 32, HAVE_GC, 0);
    m.str(0x12000, "__name__");
    m.str(0x12100, "m");
    m.str(0x12200, "w");
    m.dict(0x13000, &[(0x12000, 0x12100), (0x12200, H)]);
    m.put(MODULE, &[1, MODULE_T, 0x13000]);
    m.put(H, &[1, HOLDER_T, 0x13000, D]);
    m.dict(D, &[(0x12100, 0x12200)]);
    m.gc_list(&[MODULE, 0x13000, H, D]);
    let src = Bytes {
        base: BASE,
        data: m.data,
    };
    let c = Walker::new(&src, &layout(), Limits::default()).census(&[BASE]);
    let w = c.owners.iter().find(|o| o.path == "m:w").expect("m:w");
    assert_eq!(w.type_name, "ext.Holder");
    // The holder (32 + 16 GC header) and D (48 + 16, its keys table of 8 slots: 32 + 8
    // index bytes + 5 x 16 entries); its key and value are the module's strs, counted too.
    let d_bytes = 48 + 16 + 32 + 8 + 5 * 16;
    assert_eq!(w.retained_bytes, 48 + d_bytes + 42 + 42, "{:?}", c.owners);
    assert!(c.unheld.is_empty(), "{:?}", c.unheld);
}

/// Module `m` with global `s` = an instance S of class `m.S` (`__slots__`: one object field
/// at 16, then `bad`), whose base is `m.S` itself when `cyclic` (torn memory) and which keeps
/// a str in its slot.
fn module_with_slots(bad: (i32, i64), cyclic: bool) -> Census {
    const CLASS_S: u64 = 0x11000;
    const S: u64 = 0x14120;
    const MEMBERS: u64 = 0x14600;
    let mut m = Mem::new();
    m.ty(STR_T, 0x10f00, "str", 40, 0, 0);
    m.ty(DICT_T, 0x10f10, "dict", 48, 0, 0);
    m.ty(MODULE_T, 0x10f20, "module", 40, 0, 0);
    m.ty(CLASS_S, 0x10f30, "S", 32, HEAPTYPE | HAVE_GC, 0x13400);
    m.put(CLASS_S + TP_MEMBERS, &[MEMBERS]);
    if cyclic {
        m.put(CLASS_S + TP_BASE, &[CLASS_S]);
    }
    m.str(0x12000, "__name__");
    m.str(0x12100, "m");
    m.str(0x12200, "s");
    m.str(0x12300, "__module__");
    m.str(0x12500, "payload of twenty-six bytes");
    m.dict(0x13000, &[(0x12000, 0x12100), (0x12200, S)]);
    m.dict(0x13400, &[(0x12300, 0x12100)]);
    m.put(MODULE, &[1, MODULE_T, 0x13000]);
    // Members: `payload` (T_OBJECT_EX at 16), `bad`; names point at any non-NULL byte.
    m.put(MEMBERS, &[0x10f30, 16, 16, 0, 0]);
    m.put(MEMBERS + 40, &[0x10f30, bad.0 as u64, bad.1 as u64, 0, 0]);
    m.put(S, &[1, CLASS_S, 0x12500, 0x12000]);
    m.gc_list(&[MODULE, S]);
    let src = Bytes {
        base: BASE,
        data: m.data,
    };
    Walker::new(&src, &layout(), Limits::default()).census(&[BASE])
}

#[test]
fn slots_are_followed_and_senseless_members_are_not() {
    let str_bytes = |c: &Census| c.types["str"].bytes / c.types["str"].count;
    // The second member is an int field (T_INT, 1): not an object, not followed.
    let c = module_with_slots((1, 24), false);
    let s = c.owners.iter().find(|o| o.path == "m:s").expect("m:s");
    let one = str_bytes(&c);
    assert_eq!(s.retained_bytes, 32 + GC_HEAD + one, "{s:?}");
    // An object field at 24 (`__name__`, a str): followed too.
    let c = module_with_slots((16, 24), false);
    let s = c.owners.iter().find(|o| o.path == "m:s").expect("m:s");
    assert!(s.retained_bytes > 32 + GC_HEAD + one, "{s:?}");
    // Outside the object (basicsize 32), or misaligned: the member array ends there.
    for bad in [(16, 32), (16, 4096), (16, 20), (16, -8)] {
        let c = module_with_slots(bad, false);
        let s = c.owners.iter().find(|o| o.path == "m:s").expect("m:s");
        assert_eq!(s.retained_bytes, 32 + GC_HEAD + one, "{bad:?}: {s:?}");
    }
    // A class that is its own base (torn memory): the walk of bases ends.
    let c = module_with_slots((1, 0), true);
    assert!(c.owners.iter().any(|o| o.path == "m:s"));
}
