//! The heap census's readers fed hostile memory: byte 0 picks the CPython version (3.8 +
//! `% 8`), the rest stands for the target's memory from 0x10000 on, with a GC list head at its
//! start. Wild pointers, cycles, huge lengths and torn lists must end in a bounded, incomplete
//! census, never a panic or a hang. The input's bytes from 48 on also stand for `_PyRuntime`
//! (its interpreters, threads and frames are roots), and instances' managed dicts, inline
//! values and split tables are read from wherever their pointers lead; the named objects
//! read on the way (asyncio tasks, lru_cache wrappers, instance attributes) are among the
//! objects counted. The input's bytes from 0x400 on also stand for a C extension's static
//! variables (a symbol `registry` at its start): what their words point at is read as a
//! holder's containers and its C fields. The holder walk (`census/holders.rs`) then reads the same
//! memory.
#![no_main]
use leaktrace::heap::{
    census::{Bytes, Limits, Segment, StaticSymbol, Walker},
    layout::heap_layout,
};
use leaktrace::python::layout::layout_for;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&v, mem)) = data.split_first() else {
        return;
    };
    let minor = 8 + u32::from(v % 8);
    let l = layout_for(3, minor).expect("3.8-3.15 have tables");
    let hl = heap_layout(minor, &l).expect("3.8-3.15 have heap tables");
    let base = 0x10000;
    let src = Bytes {
        base,
        data: mem.to_vec(),
    };
    let lim = Limits {
        max_objects: 100_000,
        max_read_bytes: 1 << 16,
        max_depth: 16,
        time_budget_s: 2.0,
    };
    let end = base + mem.len() as u64;
    let statics = (mem.len() > 0x400)
        .then(|| Segment {
            start: base + 0x400,
            end,
            file: "fuzz.so".into(),
            bias: base,
            symbols: vec![StaticSymbol {
                start: base + 0x400,
                end: base + 0x408,
                name: "registry".into(),
            }],
        })
        .into_iter()
        .collect();
    let c = Walker::new(&src, &hl, lim)
        .with_threads(base + 48)
        .with_statics(statics)
        .census(&[base, base + 24]);
    assert!(c.objects <= 100_000);
    let total: u64 = c.types.values().map(|t| t.count).sum();
    assert_eq!(total, c.objects);
    // Unheld objects are objects of their type.
    for (name, &n) in &c.unheld {
        assert!(n <= c.types[name].count, "{name}: {n} unheld");
    }
    // Tasks and the other named objects are among the objects counted.
    let tasks: u64 = c.names.tasks.iter().map(|t| t.count).sum();
    assert!(tasks <= c.objects);
    assert!(c.names.loggers <= c.objects);
    for t in &c.names.tasks {
        assert!(t.state == "pending" || t.state == "done");
    }
    assert!(c.names.lru_caches.iter().map(|l| l.wrappers).sum::<u64>() <= c.objects);
    // The holder walk over the same memory, for the census's largest types, in its owners'
    // order: bounded, at most 3 containers per type, each counting what it holds.
    let mut types: Vec<(&String, u64)> = c.types.iter().map(|(n, t)| (n, t.bytes)).collect();
    types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let types: Vec<String> = types.into_iter().take(5).map(|(n, _)| n.clone()).collect();
    let order: Vec<String> = c.owners.iter().map(|o| o.path.clone()).collect();
    let lim = Limits {
        max_objects: 100_000,
        max_read_bytes: 1 << 16,
        max_depth: 16,
        time_budget_s: 2.0,
    };
    let h = Walker::new(&src, &hl, lim).holder_walk(&[base, base + 24], &types, &order);
    for t in &types {
        assert!(h.rows.iter().filter(|r| &r.type_name == t).count() <= 3);
    }
    let held: u64 = h.rows.iter().map(|r| r.count).sum();
    assert!(held <= h.objects, "{held} held of {} visited", h.objects);
    assert!(h.rows.iter().all(|r| r.count >= 1 && r.containers >= 1));
});
