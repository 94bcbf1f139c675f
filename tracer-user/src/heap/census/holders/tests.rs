//! The holder walk over synthetic 3.12 memory (the layout of `census/tests.rs`): a module
//! global dict of lists of instances, and an instance attribute holding a list of them.

use super::super::*;

use super::super::tests::{Mem, BASE, DICT_T, MODULE_T, STR_T};

const LIST_T: u64 = 0x10700;
const ORDER: u64 = 0x11000;
const CLASS_A: u64 = 0x11400;
const MODULE: u64 = 0x14010;
const A: u64 = 0x14120;

/// Module `m`: `REG = {"k1": [o0, o1], "k2": [o2]}` and `a`, an `m.A` whose managed
/// attribute `items` is `[o3, o4, o0]` (o0 also in REG); each `o` an `m.Order`.
fn holders(order: &[&str]) -> Holders {
    let mut m = Mem::new();
    m.ty(STR_T, 0x10f00, "str", 40, 0, 0);
    m.ty(DICT_T, 0x10f10, "dict", 48, 0, 0);
    m.ty(MODULE_T, 0x10f20, "module", 40, 0, 0);
    m.ty(LIST_T, 0x10f40, "list", 40, 0, 0);
    m.ty(ORDER, 0x10f50, "Order", 16, HEAPTYPE | HAVE_GC, 0x13800);
    let managed = HEAPTYPE | HAVE_GC | MANAGED_DICT;
    m.ty(CLASS_A, 0x10f60, "A", 32, managed, 0x13800);
    m.put(CLASS_A + 880, &[0x14500]);
    let s = |i: u64| 0x12000 + i * 0x100;
    for (i, text) in [
        "__name__",
        "m",
        "REG",
        "__module__",
        "k1",
        "k2",
        "a",
        "items",
    ]
    .iter()
    .enumerate()
    {
        m.str(s(i as u64), text);
    }
    let o = |i: u64| 0x16000 + i * 0x100;
    for i in 0..5 {
        m.put(o(i), &[1, ORDER, 0]);
    }
    m.dict(0x13000, &[(s(0), s(1)), (s(2), 0x13400), (s(6), A)]);
    m.dict(0x13400, &[(s(4), 0x15000), (s(5), 0x15200)]);
    m.dict(0x13800, &[(s(3), s(1))]);
    m.list(0x15000, LIST_T, &[o(0), o(1)]);
    m.list(0x15200, LIST_T, &[o(2)]);
    m.list(0x15400, LIST_T, &[o(3), o(4), o(0)]);
    m.put(MODULE, &[1, MODULE_T, 0x13000]);
    // A's values (3.12 stores `values - 1` at A - 24), named by A's class's shared keys.
    m.put(A - 24, &[0x14400 - 1]);
    m.put(A, &[1, CLASS_A, 0]);
    m.put(0x14400, &[0x15400]);
    m.put(0x14500, &[2, 3 | (3 << 8) | (1 << 16), 4, 1]);
    m.put(0x14500 + 40, &[s(7), 0]);
    // The GC list at BASE: the module and A.
    let nodes = [BASE, MODULE - GC_HEAD, A - GC_HEAD];
    for (i, &n) in nodes.iter().enumerate() {
        m.put(n, &[nodes[(i + 1) % 3], nodes[(i + 2) % 3]]);
    }
    let src = Bytes {
        base: BASE,
        data: m.data,
    };
    let hl = heap_layout(12, &crate::python::layout::v3_12::LAYOUT).unwrap();
    let order: Vec<String> = order.iter().map(|s| s.to_string()).collect();
    Walker::new(&src, &hl, Limits::default()).holder_walk(&[BASE], &["m.Order".into()], &order)
}

fn row(path: &str, container: &str, len: u64, count: u64, containers: u64) -> Holder {
    Holder {
        type_name: "m.Order".into(),
        path: path.into(),
        container: container.into(),
        len: Some(len),
        count,
        containers,
    }
}

#[test]
fn a_dict_of_lists_and_an_instance_attribute_are_found_with_their_paths() {
    // Roots in the order found: REG claims o0 first.
    let h = holders(&[]);
    assert!(h.incomplete.is_none(), "{:?}", h.incomplete);
    assert_eq!(h.skipped_reads, 0);
    assert_eq!(
        h.rows,
        vec![
            row("m:REG[*]", "list", 3, 3, 2),
            row("m:a.items", "list", 3, 2, 1),
        ]
    );
}

#[test]
fn the_first_root_in_owners_order_claims_a_shared_object() {
    let h = holders(&["m:a", "m:REG"]);
    assert_eq!(
        h.rows,
        vec![
            row("m:a.items", "list", 3, 3, 1),
            row("m:REG[*]", "list", 3, 2, 2),
        ]
    );
}

#[test]
fn the_types_that_grew_most_are_looked_for() {
    let census = |items: &[(&str, u64)]| Census {
        types: items
            .iter()
            .map(|&(n, b)| (n.to_string(), TypeStat { count: 1, bytes: b }))
            .collect(),
        ..Census::default()
    };
    let first = census(&[("a", 100), ("b", 100), ("c", 100)]);
    let last = census(&[
        ("a", 100),
        ("b", 50),
        ("c", 400),
        ("d", 10),
        ("e", 20),
        ("f", 30),
        ("g", 40),
        ("h", 5),
    ]);
    assert_eq!(
        grown_types(&first, &last),
        vec!["c", "g", "f", "e", "d"],
        "by growth, at most 5, none that did not grow"
    );
}
