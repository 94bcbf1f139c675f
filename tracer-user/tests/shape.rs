//! Keeps the shape of `tracer-user/src` (see tracer-user/README.md): one folder per stage of the
//! data flow, each importing only the stages before it; nothing in `output/` imports `probes/`;
//! no import cycle between stage folders; no file over 600 lines without a `// size: REASON`
//! comment in the comments at its top.
//!
//! Dependencies are read from the source: every `crate::` path outside comments and string
//! literals, `use crate::{a::.., b::{..}}` groups included. `super::` stays inside a folder
//! (except `super::super::`, which this crate does not use).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The crate's top-level modules in data-flow order: a module may import itself and the ones
/// before it. `error` is used by every stage; `cli` (the commands) sits above the session.
const ORDER: &[&str] = &[
    "error", "target", "python", "probes", "resolve", "analysis", "output", "heap", "session",
    "cli",
];
/// Longest file without a written reason.
const MAX_LINES: usize = 600;
/// The marker for that reason, in the comments at the top of the file.
const SIZE_MARKER: &str = "// size:";

/// The source with comments and the contents of string and char literals blanked out
/// (newlines kept, so line numbers still hold).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            // Nested block comments, as Rust has them.
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let len = (j + 1).min(rest.len());
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), or else a lifetime, left as it is.
            let len = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = std::str::from_utf8(&rest[1..rest.len().min(6)])
                    .ok()
                    .or_else(|| std::str::from_utf8(&rest[1..rest.len().min(2)]).ok())
                    .and_then(|s| s.chars().next());
                ch.and_then(|c| {
                    let n = 1 + c.len_utf8();
                    (rest.get(n) == Some(&b'\'')).then_some(n + 1)
                })
            };
            match len {
                Some(len) => {
                    blank(&mut out, &rest[..len]);
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Length of a raw string literal (`r"..."`, `r#"..."#`, `br"..."`) starting here.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let start = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&c| c == b'#').count();
    if s.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    let end = s[body..].windows(close.len()).position(|w| w == close)?;
    Some(body + end + close.len())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by every `crate::` path in `code` (comments already gone):
/// `crate::a::b` names `a`; `crate::{a::b, c}` names `a` and `c`; `crate::*` and
/// `crate::{self, ..}` name nothing.
fn crate_deps(code: &str) -> Vec<(usize, String)> {
    let mut deps = Vec::new();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::") {
        let at = from + pos;
        from = at + "crate::".len();
        // `crate` itself, not the end of a longer name (`my_crate::`).
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // The group up to its matching brace; its top-level items, split on commas.
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 {
                    item.push(c);
                } else if item.is_empty() || !item.ends_with("::") {
                    // Inside a nested group: the first name was already read.
                    item.push(' ');
                }
            }
            items.push(item);
            for item in items {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() && name != "self" {
                    deps.push((line, name));
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() && name != "self" {
                deps.push((line, name));
            }
        }
    }
    deps
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file belongs to: its folder, or its own name at the top
/// (`lib`/`main` are the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_string()
}

/// Whether the comments at the top of `text` (before the first line of code) hold a reason for
/// its size.
fn has_size_reason(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with("//"))
        .any(|l| {
            l.strip_prefix(SIZE_MARKER)
                .is_some_and(|reason| !reason.trim().is_empty())
        })
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

/// Everything wrong with the shape of the tree at `src`, one line each.
fn problems(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let rel = file
            .strip_prefix(src)
            .expect("under src")
            .display()
            .to_string();
        let lines = text.lines().count();
        if lines > MAX_LINES && !has_size_reason(&text) {
            out.push(format!(
                "{rel}: {lines} lines (over {MAX_LINES}): split it, or write why at its top in a `{SIZE_MARKER} REASON` comment"
            ));
        }
        let module = module_of(src, &file);
        if module == "lib" || module == "main" {
            continue;
        }
        let rank = ORDER.iter().position(|m| *m == module);
        if rank.is_none() {
            out.push(format!(
                "{rel}: top-level module `{module}` is not a stage: add it to ORDER in tracer-user/tests/shape.rs and to the map in tracer-user/README.md"
            ));
        }
        for (line, dep) in crate_deps(&code_only(&text)) {
            if dep == module {
                continue;
            }
            graph.entry(module.clone()).or_default().insert(dep.clone());
            if module == "output" && dep == "probes" {
                out.push(format!(
                    "{rel}:{line}: output/ uses crate::probes: renderers work on the report, not on the kernel's maps"
                ));
            }
            let dep_rank = ORDER.iter().position(|m| *m == dep);
            if let (Some(r), Some(d)) = (rank, dep_rank) {
                if d > r {
                    out.push(format!(
                        "{rel}:{line}: `{module}` uses crate::{dep}, a later stage: dependencies point down the data flow ({})",
                        ORDER.join(" < ")
                    ));
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        out.push(format!(
            "import cycle between stages: {}",
            cycle.join(" -> ")
        ));
    }
    out
}

#[test]
fn the_source_tree_keeps_its_shape() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = problems(&src);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_scan_sees_the_real_dependencies() {
    // Guards the test above against passing because it reads nothing.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (_, dep) in crate_deps(&code_only(&text)) {
            seen.entry(module_of(&src, &file)).or_default().insert(dep);
        }
    }
    for (from, to) in [
        ("session", "probes"),
        ("session", "output"),
        ("output", "analysis"),
        ("probes", "target"),
        ("resolve", "python"),
        ("cli", "session"),
    ] {
        assert!(
            seen.get(from).is_some_and(|s| s.contains(to)),
            "{from} -> {to} not found: {seen:?}"
        );
    }
    assert!(rust_files(&src).len() > 30);
}

#[test]
fn reads_use_groups_and_ignores_comments_and_strings() {
    let src = r##"
//! Doc: crate::probes::bpf is mentioned here only.
use crate::{
    analysis::{aggregate::{self, Series}, trend},
    error::user,
    self,
};
use crate::output::report::Report;
/* crate::session in a block /* nested */ comment */
fn f() -> &'static str {
    let _ = crate::resolve::frame::Frame::native("x", None);
    let _c = '"';
    let _s = "crate::cli in a string";
    r#"crate::python in a raw string"#
}
use tracer_common::crate_like::X;
"##;
    let deps: Vec<String> = crate_deps(&code_only(src))
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(deps, ["analysis", "error", "output", "resolve"]);
    let lines: Vec<usize> = crate_deps(&code_only(src))
        .into_iter()
        .map(|(l, _)| l)
        .collect();
    assert_eq!(lines, [3, 3, 8, 11]);
}

#[test]
fn finds_cycles_and_only_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
        }
        g
    };
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])),
        None,
        "a diamond is no cycle"
    );
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn flags_what_breaks_the_shape() {
    let dir = std::env::temp_dir().join(format!("leaktrace-shape-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["output", "probes", "analysis"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("output/x.rs"),
        "use crate::{probes::bpf::Tracer, analysis::aggregate::Series};\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("analysis/y.rs"),
        "fn f() { crate::output::x::g(); }\n",
    )
    .unwrap();
    let long = "fn f() {}\n".repeat(MAX_LINES + 1);
    std::fs::write(dir.join("probes/long.rs"), &long).unwrap();
    std::fs::write(
        dir.join("probes/long_ok.rs"),
        format!("//! Long.\n// size: one table per kernel version, kept together\n{long}"),
    )
    .unwrap();
    let found = problems(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let has = |s: &str| found.iter().any(|p| p.contains(s));
    assert!(
        has("output/x.rs:1: output/ uses crate::probes"),
        "{found:#?}"
    );
    assert!(
        has("`analysis` uses crate::output, a later stage"),
        "{found:#?}"
    );
    assert!(
        has("import cycle between stages: analysis -> output -> analysis"),
        "{found:#?}"
    );
    assert!(has("long.rs: 601 lines"), "{found:#?}");
    assert!(!has("long_ok.rs"), "{found:#?}");
}
