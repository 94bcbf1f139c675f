//! Issue 12, `leaktrace heap PID`: a census of a running CPython's objects read from its memory,
//! on every interpreter of the machine (pyenv 3.8-3.13 shared, Debian's static 3.11, Debian
//! sid's 3.14/3.15 static and shared in a chroot).
//!
//! The fixture (`heap_registry.py N M`) holds a module global `REGISTRY` of N small dicts, each
//! with one `Item` (a class with one slot), and adds M more on SIGUSR1: the census must name
//! `__main__:REGISTRY`, give its exact length before and after, and count exactly the `Item`s
//! added between its two censuses.
//!
//! The second fixture (`heap_instances.py N M`) holds a global `HOLDER` of N `Rec`s whose
//! attributes (a 1000-byte `bytes` each) live in their instance dicts, and leaks M `Leaky`
//! objects with no holder on SIGUSR1 (their refcounts raised through `Py_IncRef`): the
//! holder's retained bytes must include the instance dicts' payloads (and, for objects with
//! `__slots__`, their slots' payloads), and the leaked type
//! must be reported unheld with exactly M more objects.
//!
//! The third fixture (`heap_names.py`) holds what users search for: pending and finished
//! asyncio tasks in module-global containers, sqlite3 connections never closed, uniquely named
//! loggers, threads, an `lru_cache` on a method; the census must name each with its exact count.
//! The fourth (`heap_sqlalchemy.py`) keeps SQLAlchemy ORM sessions open in a global list, some of
//! them holding a DBAPI connection: the census counts both exactly.
//! The fifth (`heap_holders.py`) keeps sessions keyed by request id in an instance attribute
//! (`MANAGER.sessions`): the holder walk after the last census must name that dict by its path
//! and count its sessions exactly.

use std::{process::Command, time::Duration};

use leaktrace_tests::*;

const SIGUSR1: i32 = 10;
const SIGKILL: i32 = 9;
const T: Duration = Duration::from_secs(60);
const N: u64 = 2000;
const M: u64 = 500;

fn start_registry(py: &Python) -> Proc {
    let fixture = py.fixture("heap_registry.py");
    let p = Proc::spawn(
        py.command()
            .arg(&fixture)
            .arg(N.to_string())
            .arg(M.to_string()),
    );
    p.stdout.wait_for("ready", T);
    p
}

/// `leaktrace heap PID --duration SECS --format json -o NAME-LABEL.json`, once its first
/// census is taken (the caller then makes the target grow); the tracer and the report's path.
fn two_censuses(pid: &str, secs: &str, name: &str, label: &str) -> (Proc, std::path::PathBuf) {
    let out = out_path(&format!(
        "{name}-{}.json",
        label.replace([' ', '(', ')', ','], "_")
    ));
    let heap = leaktrace(&[
        "heap",
        pid,
        "--duration",
        secs,
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    heap.stderr.wait_for("leaktrace: census 1 taken", T);
    (heap, out)
}

fn by_key<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

#[test]
fn two_censuses_name_the_global_and_count_what_was_added() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let target = start_registry(&py);
        let pid = target.pid().to_string();
        let (mut heap, out) = two_censuses(&pid, "4", "heap", label);
        target.signal(SIGUSR1);
        target.stdout.wait_for(&format!("added {}", N + M), T);
        let code = heap.wait(T);
        assert_eq!(code, 0, "{label}: {}", heap.stderr.text());
        assert!(
            heap.stderr.text().contains("leaktrace: census 2 taken"),
            "{label}: {}",
            heap.stderr.text()
        );
        let r = read_json(&out);
        assert_eq!(r["schema"], "leaktrace-heap/v1", "{label}");
        assert_eq!(r["target"]["pids"][0], target.pid(), "{label}");
        assert_eq!(r["complete"], true, "{label}: {:?}", r["incomplete_reason"]);
        assert_eq!(r["censuses"], 2, "{label}");
        assert_eq!(r["tasks"], serde_json::json!([]), "{label}");
        let reg = by_key(&r["owners"], "path", "__main__:REGISTRY")
            .unwrap_or_else(|| panic!("{label}: no __main__:REGISTRY in {:#}", r["owners"]));
        assert_eq!(reg["type"], "dict", "{label}");
        assert_eq!(reg["len"], N + M, "{label}");
        // The growing global is ranked first by retained growth.
        assert_eq!(r["owners"][0]["path"], "__main__:REGISTRY", "{label}");
        assert!(
            reg["retained_growth"].as_i64().unwrap() > 0,
            "{label}: {reg}"
        );
        let item = by_key(&r["types"], "type", "__main__.Item")
            .unwrap_or_else(|| panic!("{label}: no __main__.Item type"));
        assert_eq!(item["count"], N + M, "{label}: {item}");
        assert_eq!(item["count_growth"], M, "{label}: {item}");
        let dict = by_key(&r["types"], "type", "dict").unwrap();
        assert!(
            dict["count_growth"].as_i64().unwrap() >= M as i64,
            "{label}: {dict}"
        );
        assert!(dict["count"].as_u64().unwrap() >= N + M, "{label}: {dict}");
        // Where the grown `Item`s are held: the registry's values, one dict each.
        let held = by_key(&r["holders"], "type", "__main__.Item")
            .unwrap_or_else(|| panic!("{label}: no Item holder in {:#}", r["holders"]));
        assert_eq!(held["path"], "__main__:REGISTRY[*]", "{label}: {held}");
        assert_eq!(held["container"], "dict", "{label}: {held}");
        assert_eq!(held["count"], N + M, "{label}: {held}");
        assert_eq!(held["containers"], N + M, "{label}: {held}");
        assert_eq!(held["len"], 2 * (N + M), "{label}: {held}");
    }
}

/// Issue 12's "the path from a root to the container holding them": sessions keyed by
/// request id in an instance attribute's dict (`heap_holders.py`), on every interpreter.
#[test]
fn the_containers_holding_the_grown_types_are_named_by_path() {
    require_root();
    const S0: u64 = 200;
    const S: u64 = 300;
    for py in every_python() {
        let label = &py.label;
        let fixture = py.fixture("heap_holders.py");
        let target = Proc::spawn(
            py.command()
                .arg(&fixture)
                .arg(S0.to_string())
                .arg(S.to_string()),
        );
        target.stdout.wait_for("ready", T);
        let pid = target.pid().to_string();
        let (mut heap, out) = two_censuses(&pid, "3", "heap-holders", label);
        target.signal(SIGUSR1);
        target.stdout.wait_for(&format!("sessions {}", S0 + S), T);
        assert_eq!(heap.wait(T), 0, "{label}: {}", heap.stderr.text());
        let r = read_json(&out);
        let holders = &r["holders"];
        let session = by_key(holders, "type", "__main__.Session")
            .unwrap_or_else(|| panic!("{label}: no Session holder in {holders:#}"));
        assert_eq!(
            session["path"], "__main__:MANAGER.sessions",
            "{label}: {session}"
        );
        assert_eq!(session["container"], "dict", "{label}: {session}");
        assert_eq!(session["count"], S0 + S, "{label}: {session}");
        assert_eq!(session["len"], S0 + S, "{label}: {session}");
        assert_eq!(session["containers"], 1, "{label}: {session}");
        // Each payload is an attribute of its session: the container is the instance.
        let payload = by_key(holders, "type", "bytearray")
            .unwrap_or_else(|| panic!("{label}: no bytearray holder in {holders:#}"));
        assert_eq!(
            payload["path"], "__main__:MANAGER.sessions[*]",
            "{label}: {payload}"
        );
        assert_eq!(
            payload["container"], "__main__.Session",
            "{label}: {payload}"
        );
        assert_eq!(payload["count"], S0 + S, "{label}: {payload}");
        assert!(payload["len"].is_null(), "{label}: {payload}");
        // Rows by their type's growth, then count.
        let types: Vec<&str> = holders
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["type"].as_str().unwrap())
            .collect();
        let mut runs = types.clone();
        runs.dedup();
        let mut once = runs.clone();
        once.sort();
        once.dedup();
        assert_eq!(
            runs.len(),
            once.len(),
            "{label}: one run per type: {types:?}"
        );
        // The text table says the same.
        let mut heap = leaktrace(&["heap", &pid, "--duration", "2"]);
        heap.stderr.wait_for("leaktrace: census 1 taken", T);
        target.signal(SIGUSR1);
        let n = S0 + 2 * S;
        target.stdout.wait_for(&format!("sessions {n}"), T);
        assert_eq!(heap.wait(T), 0, "{label}: {}", heap.stderr.text());
        let text = heap.stdout.text();
        assert!(
            text.contains("Where the types that grew most are held:")
                && text.contains(&format!(
                    "  __main__.Session {n} in __main__:MANAGER.sessions (dict, {n} items)"
                )),
            "{label}:\n{text}"
        );
    }
}

#[test]
fn one_census_as_text_and_svg() {
    require_root();
    let py = every_python().into_iter().next().expect("an interpreter");
    let target = start_registry(&py);
    let pid = target.pid().to_string();
    let text = leaktrace_ok(&["heap", &pid, "--top", "5"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("__main__:REGISTRY (dict)"))
        .unwrap_or_else(|| panic!("no REGISTRY row in:\n{text}"));
    assert!(
        line.split_whitespace().any(|w| w == N.to_string()),
        "{line}"
    );
    // The smallest read size: the registry's entries are read in many bounded pieces, with
    // the same result.
    let r = census_json(&pid, &["--max-read-bytes", "4096"], "heap-small-reads.json");
    assert_eq!(r["complete"], true, "{:?}", r["incomplete_reason"]);
    let reg = by_key(&r["owners"], "path", "__main__:REGISTRY").expect("REGISTRY");
    assert_eq!(reg["len"], N);
    let item = by_key(&r["types"], "type", "__main__.Item").expect("Item");
    assert_eq!(item["count"], N);
    // A depth limit of 1 stops at the registry's values: said, not hidden.
    let r = census_json(&pid, &["--max-depth", "1"], "heap-depth1.json");
    assert_eq!(r["complete"], false);
    assert!(
        r["incomplete_reason"]
            .as_str()
            .unwrap()
            .contains("--max-depth 1"),
        "{r}"
    );
    let svg = out_path("heap.svg");
    leaktrace_ok(&["heap", &pid, "--format", "svg", "-o", svg.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.contains("REGISTRY"), "the SVG names no REGISTRY");
}

fn start_instances(py: &Python) -> Proc {
    let fixture = py.fixture("heap_instances.py");
    let p = Proc::spawn(
        py.command()
            .arg(&fixture)
            .arg(N.to_string())
            .arg(M.to_string()),
    );
    p.stdout.wait_for("ready", T);
    p
}

/// Bytes of one `Rec`'s payload (`sys.getsizeof(bytes(1000))`: header and NUL, 33 bytes).
const PAYLOAD: u64 = 1000 + 33;

#[test]
fn instance_dicts_are_retained_and_leaked_objects_are_unheld() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let target = start_instances(&py);
        let pid = target.pid().to_string();
        let (mut heap, out) = two_censuses(&pid, "4", "heap-instances", label);
        target.signal(SIGUSR1);
        target.stdout.wait_for(&format!("leaked {M}"), T);
        let code = heap.wait(T);
        assert_eq!(code, 0, "{label}: {}", heap.stderr.text());
        let r = read_json(&out);
        assert_eq!(r["complete"], true, "{label}: {:?}", r["incomplete_reason"]);
        let holder = by_key(&r["owners"], "path", "__main__:HOLDER")
            .unwrap_or_else(|| panic!("{label}: no __main__:HOLDER in {:#}", r["owners"]));
        assert_eq!(holder["type"], "list", "{label}");
        assert_eq!(holder["len"], N, "{label}");
        // Through each Rec's attributes: its payload, its name, its dict or values, its
        // own bytes (a few hundred bytes at most beyond the payload).
        let retained = holder["retained_bytes"].as_u64().unwrap();
        assert!(
            retained >= N * (PAYLOAD + 48) && retained <= N * (PAYLOAD + 600),
            "{label}: HOLDER retains {retained}, not N x (payload + its parts): {holder}"
        );
        // Through each Tagged's slots (its own and its base's; one left unset): two payloads.
        let slotted = by_key(&r["owners"], "path", "__main__:SLOTTED")
            .unwrap_or_else(|| panic!("{label}: no __main__:SLOTTED in {:#}", r["owners"]));
        let retained = slotted["retained_bytes"].as_u64().unwrap();
        assert!(
            retained >= N * 2 * PAYLOAD && retained <= N * (2 * PAYLOAD + 200),
            "{label}: SLOTTED retains {retained}, not N x (2 payloads + the object): {slotted}"
        );
        let rec = by_key(&r["types"], "type", "__main__.Rec").expect("Rec");
        assert_eq!(rec["count"], N, "{label}: {rec}");
        let bytes = by_key(&r["types"], "type", "bytes").expect("bytes");
        assert!(bytes["count"].as_u64().unwrap() >= N, "{label}: {bytes}");
        // The leaked objects: on the GC's lists, reached by nothing.
        let leaky = by_key(&r["unheld"], "type", "__main__.Leaky")
            .unwrap_or_else(|| panic!("{label}: Leaky not unheld in {:#}", r["unheld"]));
        assert_eq!(leaky["count"], M, "{label}: {leaky}");
        assert_eq!(leaky["count_growth"], M, "{label}: {leaky}");
        assert_eq!(leaky["unheld"], M, "{label}: {leaky}");
        assert_eq!(leaky["unheld_growth"], M, "{label}: {leaky}");
        let unheld: Vec<&str> = r["unheld"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["type"].as_str().unwrap())
            .collect();
        assert!(
            !unheld.contains(&"__main__.Rec") && !unheld.contains(&"bytes"),
            "{label}: held objects reported unheld: {unheld:?}"
        );
    }
}

#[test]
fn the_text_table_says_no_holder_found() {
    require_root();
    let py = every_python().into_iter().next().expect("an interpreter");
    let target = start_instances(&py);
    let pid = target.pid().to_string();
    let mut heap = leaktrace(&["heap", &pid, "--duration", "3"]);
    heap.stderr.wait_for("leaktrace: census 1 taken", T);
    target.signal(SIGUSR1);
    target.stdout.wait_for(&format!("leaked {M}"), T);
    assert_eq!(heap.wait(T), 0, "{}", heap.stderr.text());
    let text = heap.stdout.text();
    let line = text
        .lines()
        .find(|l| l.contains("__main__.Leaky ("))
        .unwrap_or_else(|| panic!("no Leaky row in:\n{text}"));
    assert!(
        line.ends_with(&format!(
            "__main__.Leaky ({M} of {M} unheld): no holder found: a reference leaked by C code, or garbage waiting for the cyclic collector"
        )),
        "{line}"
    );
}

const TASKS: u64 = 37;
const DONE: u64 = 11;
const CONNS: u64 = 6;
const LOGGERS: u64 = 23;
const ENTRIES: u64 = 41;
const THREADS: u64 = 3;
const CLOSED: u64 = 4;

#[test]
fn tasks_connections_loggers_threads_and_caches_by_name() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let fixture = py.fixture("heap_names.py");
        let p =
            Proc::spawn(py.command().arg(&fixture).args(
                [TASKS, DONE, CONNS, LOGGERS, ENTRIES, THREADS, CLOSED].map(|n| n.to_string()),
            ));
        let ready = p.stdout.wait_for("ready", T);
        let f: Vec<u64> = ready
            .split_whitespace()
            .skip(2)
            .map(|w| w.parse().unwrap())
            .collect();
        let (before, registry, loggers, threads) = (f[0], f[1], f[2], f[3]);
        assert_eq!(registry, before + LOGGERS, "{label}: {ready}");
        let pid = p.pid().to_string();
        let file = format!(
            "heap-names-{}.json",
            label.replace([' ', '(', ')', ','], "_")
        );
        let r = census_json(&pid, &[], &file);
        assert_eq!(r["complete"], true, "{label}: {:?}", r["incomplete_reason"]);
        let tasks = r["tasks"].as_array().unwrap();
        let group = |coro: &str| {
            tasks
                .iter()
                .find(|t| t["coroutine"] == coro)
                .unwrap_or_else(|| panic!("{label}: no {coro} tasks in {:#}", r["tasks"]))
        };
        assert_eq!(
            group("poll_gateway"),
            &serde_json::json!({"coroutine": "poll_gateway", "state": "pending",
                "count": TASKS, "holder": "__main__:BACKGROUND", "count_growth": null}),
            "{label}"
        );
        assert_eq!(
            group("quick"),
            &serde_json::json!({"coroutine": "quick", "state": "done",
                "count": DONE, "holder": "__main__:FINISHED", "count_growth": null}),
            "{label}"
        );
        // asyncio.run's own task, held by nothing the census walks.
        assert_eq!(
            group("main"),
            &serde_json::json!({"coroutine": "main", "state": "pending",
                "count": 1, "holder": null, "count_growth": null}),
            "{label}"
        );
        assert_eq!(tasks.len(), 3, "{label}: {:#}", r["tasks"]);
        let n = &r["names"];
        assert_eq!(
            n["connections"],
            serde_json::json!([{"type": "sqlite3.Connection", "count": CONNS + CLOSED,
                "open": CONNS}]),
            "{label}"
        );
        assert_eq!(
            n["loggers"],
            serde_json::json!({"count": loggers, "registry":
                {"path": "logging:Logger.manager.loggerDict", "len": before + LOGGERS}}),
            "{label}"
        );
        let thread_count: u64 = n["threads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["count"].as_u64().unwrap())
            .sum();
        assert_eq!(thread_count, threads, "{label}: {:#}", n["threads"]);
        assert_eq!(threads, THREADS + 1, "{label}: the main thread and THREADS");
        assert_eq!(
            by_key(&n["threads"], "type", "threading.Thread").unwrap()["count"],
            THREADS,
            "{label}"
        );
        // The standard library's own caches (typing's, re's) are listed too.
        assert_eq!(
            by_key(&n["lru_caches"], "function", "__main__.Prices.lookup"),
            Some(&serde_json::json!({"function": "__main__.Prices.lookup",
                "entries": ENTRIES, "wrappers": 1})),
            "{label}: {:#}",
            n["lru_caches"]
        );
        // 3.11+: each connection keeps its statement cache as an lru_cache of itself.
        if py.minor >= 11 {
            let stmt = by_key(
                &n["lru_caches"],
                "function",
                "(a sqlite3.Connection object)",
            )
            .unwrap_or_else(|| panic!("{label}: no statement caches in {:#}", n["lru_caches"]));
            assert_eq!(stmt["wrappers"], CONNS, "{label}: {stmt}");
            assert_eq!(stmt["entries"], 0, "{label}: {stmt}");
        }
        let text = leaktrace_ok(&["heap", &pid]);
        let text = String::from_utf8_lossy(&text.stdout);
        for want in [
            format!("{TASKS}  pending  poll_gateway (__main__:BACKGROUND)"),
            format!(
                "connections: {} sqlite3.Connection ({CONNS} open)",
                CONNS + CLOSED
            ),
            format!("lru_cache: {ENTRIES} entries in __main__.Prices.lookup"),
            format!(
                "logging:Logger.manager.loggerDict ({} items)",
                before + LOGGERS
            ),
        ] {
            assert!(text.contains(&want), "{label}: no `{want}` in:\n{text}");
        }
    }
}

/// One census of `pid` with `extra` options, as JSON written to the test output `file`.
fn census_json(pid: &str, extra: &[&str], file: &str) -> Value {
    let out = out_path(file);
    let mut args = vec!["heap", pid];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--format", "json", "-o", out.to_str().unwrap()]);
    leaktrace_ok(&args);
    read_json(&out)
}

fn fails_with(args: &[&str], needle: &str) {
    let out = Command::new(leaktrace_bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {err}"
    );
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_one_line() {
    require_root();
    fails_with(&["heap", "4194303"], "no process with PID 4194303");
    let sleeper = Proc::spawn(Command::new("sleep").arg("30"));
    let pid = sleeper.pid().to_string();
    // Until exec is done the child is a copy of this test binary.
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep")) {
        assert!(std::time::Instant::now() < deadline, "sleep did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    fails_with(&["heap", &pid], "runs no CPython interpreter");
    fails_with(
        &["heap", &pid, "--interval", "2"],
        "--interval needs --duration",
    );
}

/// Two censuses written apart, then `leaktrace diff` of the two JSON files: the registry
/// first among the owners with its exact length change, the `Item`s added counted exactly.
#[test]
fn diff_of_two_heap_reports() {
    require_root();
    let py = every_python().into_iter().next().expect("an interpreter");
    let target = start_registry(&py);
    let pid = target.pid().to_string();
    let before = out_path("heap-before.json");
    let after = out_path("heap-after.json");
    let take = |p: &std::path::Path| {
        leaktrace_ok(&["heap", &pid, "--format", "json", "-o", p.to_str().unwrap()]);
    };
    take(&before);
    target.signal(SIGUSR1);
    target.stdout.wait_for(&format!("added {}", N + M), T);
    take(&after);
    let d = out_path("heap-diff.json");
    let out = leaktrace_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "-o",
        d.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let d = read_json(&d);
    assert_eq!(d["schema"], "leaktrace-heap-diff/v1");
    assert_eq!(
        d["owners"][0]["path"], "__main__:REGISTRY",
        "{:#}",
        d["owners"]
    );
    assert_eq!(d["owners"][0]["before_len"], N);
    assert_eq!(d["owners"][0]["after_len"], N + M);
    assert_eq!(d["owners"][0]["len_change"], M);
    let item = by_key(&d["types"], "type", "__main__.Item").expect("Item");
    assert_eq!(item["count_change"], M, "{item}");
    let line = text
        .lines()
        .find(|l| l.contains("__main__:REGISTRY (dict)"))
        .unwrap_or_else(|| panic!("no REGISTRY row in:\n{text}"));
    assert!(line.contains(&format!("+{M}")), "{line}");
    // The default output is the differential flamegraph of owners.
    let svg = out_path("heap-diff.svg");
    leaktrace_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("REGISTRY"));
    // A heap report and an allocation report are not compared.
    let plain = root().join("tests/data/report.json");
    fails_with(
        &[
            "diff",
            before.to_str().unwrap(),
            plain.to_str().unwrap(),
            "-o",
            "/dev/null",
        ],
        "give two of a kind",
    );
}

/// Interpreters whose pymalloc arena table leaktrace reads: every one but Debian's stripped
/// static 3.11 (its `arenas` is a static variable with no symbol left).
fn reads_arenas(py: &Python) -> bool {
    !(py.minor == 11 && py.static_build)
}

/// pymalloc blocks that no object accounts for: `PyMem_Malloc(200)` K times between two
/// censuses (size class 208) must show as raw small-block growth of K * 208 bytes, within 5%
/// (the interpreter's own allocations while it handles the signal), and the objects counted
/// must not grow by more than a few KiB.
#[test]
fn raw_small_blocks_that_no_object_accounts_for() {
    require_root();
    const K: u64 = 20_000;
    for py in every_python() {
        let label = &py.label;
        let fixture = py.fixture("heap_raw_blocks.py");
        let target = Proc::spawn(py.command().arg(&fixture).arg(K.to_string()));
        target.stdout.wait_for("ready", T);
        let pid = target.pid().to_string();
        let (mut heap, out) = two_censuses(&pid, "3", "heap-raw", label);
        target.signal(SIGUSR1);
        target.stdout.wait_for(&format!("leaked {K}"), T);
        assert_eq!(heap.wait(T), 0, "{label}: {}", heap.stderr.text());
        let r = read_json(&out);
        if !reads_arenas(&py) {
            assert!(r.get("small_blocks").is_none(), "{label}: {r}");
            assert!(
                heap.stderr
                    .text()
                    .contains("pymalloc's arenas are not read"),
                "{label}: {}",
                heap.stderr.text()
            );
            continue;
        }
        let sb = &r["small_blocks"];
        let raw = sb["raw_growth"]
            .as_i64()
            .unwrap_or_else(|| panic!("{label}: {r}"));
        let expect = (K * 208) as i64;
        assert!(
            (raw - expect).abs() * 20 <= expect,
            "{label}: raw growth {raw}, expected {expect} within 5%: {sb}"
        );
        let objects = sb["object_growth"].as_i64().unwrap();
        assert!(
            objects.abs() < 16 << 10,
            "{label}: objects grew {objects}: {sb}"
        );
        assert_eq!(sb["skipped"], 0, "{label}: {sb}");
        assert!(sb["arenas"].as_u64().unwrap() >= 1, "{label}: {sb}");
    }
}

/// The control: a leak of objects (the registry's dicts and `Item`s) grows the arenas by
/// what the objects account for, so the raw difference stays bounded while the objects grow.
#[test]
fn small_objects_account_for_the_arena_growth() {
    require_root();
    for py in every_python().into_iter().filter(reads_arenas) {
        let label = &py.label;
        let target = start_registry(&py);
        let pid = target.pid().to_string();
        let (mut heap, out) = two_censuses(&pid, "3", "heap-ctl", label);
        // Eight rounds of M: enough growth to stand above freelists and noise.
        for round in 1..=8 {
            target.signal(SIGUSR1);
            target
                .stdout
                .wait_for(&format!("added {}", N + round * M), T);
        }
        assert_eq!(heap.wait(T), 0, "{label}: {}", heap.stderr.text());
        let r = read_json(&out);
        let sb = &r["small_blocks"];
        let (used, objects, raw) = (
            sb["used_growth"].as_i64().unwrap(),
            sb["object_growth"].as_i64().unwrap(),
            sb["raw_growth"].as_i64().unwrap(),
        );
        assert!(objects > (8 * M * 100) as i64, "{label}: {sb}");
        assert!(
            raw.abs() * 10 <= objects,
            "{label}: raw growth {raw} is more than 10% of the objects' {objects} (used {used}): {sb}"
        );
    }
}

/// A process whose children run the same interpreter (a pre-fork server's workers): the
/// census of the parent says, in one line, that each child has a heap of its own and names
/// the commands for all (`--per-process`) and for one.
#[test]
fn children_running_the_same_interpreter_are_named() {
    require_root();
    let py = every_python().into_iter().next().expect("an interpreter");
    let script = "import os, sys, time\n\
        kids = []\n\
        for _ in range(2):\n\
        \x20   pid = os.fork()\n\
        \x20   if pid == 0:\n\
        \x20       time.sleep(60)\n\
        \x20       os._exit(0)\n\
        \x20   kids.append(pid)\n\
        print('ready', *kids, flush=True)\n\
        time.sleep(60)\n";
    let target = Proc::spawn(py.command().arg("-c").arg(script));
    let line = target.stdout.wait_for("ready", T);
    let kids: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert_eq!(kids.len(), 2, "{line}");
    let mut heap = leaktrace(&["heap", &target.pid().to_string()]);
    assert_eq!(heap.wait(T), 0, "{}: {}", py.label, heap.stderr.text());
    let err = heap.stderr.text();
    assert!(
        err.contains(&format!(
            "has 2 child processes running the same interpreter ({}, {})",
            kids[0], kids[1]
        )) && err.contains(&format!(
            "`leaktrace heap {} --per-process` takes a census of each, `leaktrace heap {}` of one",
            target.pid(),
            kids[0]
        )),
        "{}: {err}",
        py.label
    );
    for k in kids {
        let _ = std::process::Command::new("kill").arg(k).status();
    }
}

/// `tests/fixtures/py_cholder.c` built for `py` with its own include folder (in the sid root
/// for the chroot interpreters): the folder to put on `PYTHONPATH`, as the process sees it,
/// and the extension's file name.
fn build_cholder(py: &Python) -> (String, String) {
    let out = py
        .command()
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include']); print(sysconfig.get_config_var('EXT_SUFFIX'))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: sysconfig", py.label);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let (include, suffix) = (lines.next().unwrap(), lines.next().unwrap());
    let dir = format!(
        "/opt/leaktrace/cholder-{}-{}",
        std::process::id(),
        file_label(&py.label)
    );
    let (host_dir, mut gcc) = match &py.chroot {
        Some(r) => {
            let mut c = Command::new("chroot");
            c.arg(r).arg("gcc");
            (r.join(dir.trim_start_matches('/')), c)
        }
        None => (
            out_path(&format!("cholder-{}", file_label(&py.label))),
            Command::new("gcc"),
        ),
    };
    let _ = std::fs::remove_dir_all(&host_dir);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(
        root().join("tests/fixtures/py_cholder.c"),
        host_dir.join("py_cholder.c"),
    )
    .unwrap();
    let seen = match py.chroot {
        Some(_) => dir,
        None => host_dir.display().to_string(),
    };
    let file = format!("py_cholder{suffix}");
    let status = gcc
        .args(["-O1", "-shared", "-fPIC", "-I", include, "-o"])
        .arg(format!("{seen}/{file}"))
        .arg(format!("{seen}/py_cholder.c"))
        .status()
        .unwrap();
    assert!(status.success(), "{}: building py_cholder.c", py.label);
    (seen, file)
}

const CN: u64 = 3000;
const CM: u64 = 700;
const CJ: u64 = 400;

/// Containers held only by C code (issue 12): a C extension's static list and the dict in a
/// static C object's field are owners named by the extension's file and symbol (and the
/// holder's type and field offset), with their exact lengths, and not unheld; an `lru_cache`
/// global retains its cache's entries, a global C object its field's dict.
#[test]
fn containers_held_by_c_structures_are_owners() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let (dir, file) = build_cholder(&py);
        let fixture = py.fixture("heap_cholder.py");
        let target = Proc::spawn(
            py.command()
                .arg(&fixture)
                .args([CN, CM, CJ].map(|n| n.to_string()))
                .env("PYTHONPATH", &dir),
        );
        target.stdout.wait_for("ready", T);
        let pid = target.pid().to_string();
        let r = census_json(
            &pid,
            &["--top", "1000"],
            &format!("heap-cholder-{}.json", file_label(label)),
        );
        assert_eq!(r["complete"], true, "{label}: {:?}", r["incomplete_reason"]);
        let owner = |path: &str| {
            by_key(&r["owners"], "path", path)
                .unwrap_or_else(|| panic!("{label}: no {path} in {:#}", r["owners"]))
                .clone()
        };
        let reg = owner(&format!("{file}:registry"));
        assert_eq!(reg["type"], "list", "{label}: {reg}");
        assert_eq!(reg["len"], CN, "{label}: {reg}");
        let items = owner(&format!("{file}:holder→py_cholder.Holder+0x18"));
        assert_eq!(items["type"], "dict", "{label}: {items}");
        assert_eq!(items["len"], CM, "{label}: {items}");
        // Each item: a 64-byte bytes (97 bytes) and its key.
        let retained = items["retained_bytes"].as_u64().unwrap();
        assert!(retained >= CM * (97 + 50), "{label}: {items}");
        let held = owner("__main__:HELD");
        assert_eq!(held["type"], "py_cholder.Holder", "{label}: {held}");
        assert!(
            held["retained_bytes"].as_u64().unwrap() >= CM * (97 + 50),
            "{label}: {held}"
        );
        // Each entry: a 200-character str result (249 bytes or more) and its int key.
        let cached = owner("__main__:cached");
        assert_eq!(cached["type"], "functools._lru_cache_wrapper", "{label}");
        assert!(
            cached["retained_bytes"].as_u64().unwrap() >= CJ * 249,
            "{label}: {cached}"
        );
        let unheld: Vec<&str> = r["unheld"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["type"].as_str().unwrap())
            .collect();
        assert!(
            !unheld.contains(&"py_cholder.Holder"),
            "{label}: the static Holder is held: {unheld:?}"
        );
        if let Some(r) = &py.chroot {
            let _ = std::fs::remove_dir_all(r.join(dir.trim_start_matches('/')));
        }
    }
}

/// A label as a file name.
fn file_label(label: &str) -> String {
    label.replace([' ', '(', ')', ',', '/'], "_")
}

const SESSIONS: u64 = 23;
const QUERIED: u64 = 9;

#[test]
fn sqlalchemy_sessions_and_their_connections_are_counted() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let fixture = py.fixture("heap_sqlalchemy.py");
        let p = Proc::spawn(
            py.packages_command()
                .arg(&fixture)
                .args([SESSIONS, QUERIED].map(|n| n.to_string())),
        );
        let ready = p.stdout.wait_for("ready", T);
        let pid = p.pid().to_string();
        let file = format!(
            "heap-sqlalchemy-{}.json",
            label.replace([' ', '(', ')', ','], "_")
        );
        let r = census_json(&pid, &[], &file);
        assert_eq!(r["complete"], true, "{label}: {:?}", r["incomplete_reason"]);
        let conns = &r["names"]["connections"];
        assert_eq!(
            by_key(conns, "type", "sqlalchemy.orm.session.Session"),
            Some(
                &serde_json::json!({"type": "sqlalchemy.orm.session.Session",
                "count": SESSIONS})
            ),
            "{label} ({ready}): {conns:#}"
        );
        // NullPool: one sqlite3 connection per querying session, open. SQLAlchemy's
        // `_ConnectionFairy` holds it in a `__slots__` slot, which the owners' walks follow: on
        // 3.8 and 3.9, where a sqlite3.Connection is not on the GC's lists, that walk is the
        // only way to it.
        assert_eq!(
            by_key(conns, "type", "sqlite3.Connection"),
            Some(
                &serde_json::json!({"type": "sqlite3.Connection", "count": QUERIED,
                "open": QUERIED})
            ),
            "{label} ({ready}): {conns:#}"
        );
        let owner = by_key(&r["owners"], "path", "__main__:SESSIONS")
            .unwrap_or_else(|| panic!("{label}: no __main__:SESSIONS in {:#}", r["owners"]));
        assert_eq!(owner["len"], SESSIONS, "{label}");
    }
}

/// Dicts each worker of `heap_workers.py` builds, and adds on SIGUSR1.
const WORKER_DICTS: [u64; 2] = [300, 700];
const WORKER_ADDS: [u64; 2] = [50, 120];

/// `heap_workers.py`: a parent and its two forked workers (pids, parent first).
fn start_workers(py: &Python) -> (Proc, Vec<u32>) {
    let join = |v: [u64; 2]| format!("{},{}", v[0], v[1]);
    let p = Proc::spawn(
        py.command()
            .arg(py.fixture("heap_workers.py"))
            .arg(join(WORKER_DICTS))
            .arg(join(WORKER_ADDS)),
    );
    let line = p.stdout.wait_for("parent ", T);
    let pids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{line}");
    for (k, n) in WORKER_DICTS.iter().enumerate() {
        p.stdout
            .wait_for(&format!("worker {k} {} ready {n}", pids[k + 1]), T);
    }
    (p, pids)
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a worker of a fixture this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

/// The report of `pid` in `r["processes"]`.
fn process(r: &Value, pid: u32) -> &Value {
    r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["target"]["pids"][0] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in {:#}", r["processes"]))
}

/// Issue 12, `heap --per-process` on a pre-fork parent: one report per process, each with its
/// own exact length of the global and, over --duration, exactly what each worker added; the
/// top level sums them with owners kept apart (`pid N `); the text has a section per process.
#[test]
fn per_process_censuses_each_worker() {
    require_root();
    let py = every_python().into_iter().next().expect("an interpreter");
    let (target, pids) = start_workers(&py);
    let parent = pids[0].to_string();
    // One census of each.
    let r = census_json(&parent, &["--per-process"], "heap-per-process-1.json");
    assert_eq!(r["schema"], "leaktrace-heap/v1");
    assert_eq!(r["target"]["pids"], serde_json::json!(pids));
    assert_eq!(r["processes"].as_array().unwrap().len(), 3, "{r:#}");
    assert_eq!(r["complete"], true, "{:?}", r["incomplete_reason"]);
    let parent_reg = by_key(&process(&r, pids[0])["owners"], "path", "__main__:REG");
    assert!(
        parent_reg.is_none_or(|o| o["len"] == 0),
        "the parent's REG is empty: {parent_reg:?}"
    );
    for (k, n) in WORKER_DICTS.iter().enumerate() {
        let w = process(&r, pids[k + 1]);
        assert_eq!(w["censuses"], 1);
        assert!(
            w["cmdline"].as_str().unwrap().contains("heap_workers.py"),
            "{}",
            w["cmdline"]
        );
        let reg = by_key(&w["owners"], "path", "__main__:REG").expect("REG");
        assert_eq!(reg["len"], *n, "worker {k}");
        let item = by_key(&w["types"], "type", "__main__.Item").expect("Item");
        assert_eq!(item["count"], *n, "worker {k}");
        // The top level keeps the owners apart.
        let top = by_key(
            &r["owners"],
            "path",
            &format!("pid {} __main__:REG", pids[k + 1]),
        )
        .unwrap_or_else(|| panic!("no pid-prefixed REG in {:#}", r["owners"]));
        assert_eq!(top["len"], *n);
    }
    let item = by_key(&r["types"], "type", "__main__.Item").expect("Item");
    assert_eq!(item["count"], WORKER_DICTS.iter().sum::<u64>());
    // The SVG: a root frame per process.
    let svg = out_path("heap-per-process.svg");
    leaktrace_ok(&[
        "heap",
        &parent,
        "--per-process",
        "--format",
        "svg",
        "-o",
        svg.to_str().unwrap(),
    ]);
    let svg = std::fs::read_to_string(&svg).unwrap();
    for p in &pids[1..] {
        assert!(
            svg.contains(&format!("<title>pid {p} (")),
            "no root frame pid {p}"
        );
    }
    assert!(svg.contains("<title>REG ("), "the SVG names no REG");

    // Growth over --duration: each worker's own.
    let out = out_path("heap-per-process-2.json");
    let mut heap = leaktrace(&[
        "heap",
        &parent,
        "--per-process",
        "--duration",
        "4",
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    for p in &pids {
        heap.stderr
            .wait_for(&format!("leaktrace: census 1 taken (pid {p})"), T);
    }
    for (k, n) in WORKER_DICTS.iter().enumerate() {
        kill(pids[k + 1], SIGUSR1);
        target
            .stdout
            .wait_for(&format!("worker {k} added {}", n + WORKER_ADDS[k]), T);
    }
    assert_eq!(heap.wait(T), 0, "{}", heap.stderr.text());
    let r = read_json(&out);
    assert_eq!(r["censuses"], 2);
    for (k, n) in WORKER_DICTS.iter().enumerate() {
        let w = process(&r, pids[k + 1]);
        assert_eq!(w["censuses"], 2);
        let reg = by_key(&w["owners"], "path", "__main__:REG").expect("REG");
        assert_eq!(reg["len"], n + WORKER_ADDS[k], "worker {k}");
        assert!(reg["retained_growth"].as_i64().unwrap() > 0, "{reg}");
        let item = by_key(&w["types"], "type", "__main__.Item").expect("Item");
        assert_eq!(item["count_growth"], WORKER_ADDS[k], "worker {k}: {item}");
    }
    let item = by_key(&r["types"], "type", "__main__.Item").expect("Item");
    assert_eq!(item["count_growth"], WORKER_ADDS.iter().sum::<u64>());

    // Text, with a worker killed between censuses: what was taken of it is kept, a line says so.
    let mut heap = leaktrace(&[
        "heap",
        &parent,
        "--per-process",
        "--duration",
        "3",
        "--interval",
        "1",
        "--top",
        "5",
    ]);
    heap.stderr
        .wait_for(&format!("leaktrace: census 1 taken (pid {})", pids[2]), T);
    kill(pids[2], SIGKILL);
    assert_eq!(heap.wait(T), 0, "{}", heap.stderr.text());
    let err = heap.stderr.text();
    assert!(
        err.contains(&format!(
            "leaktrace: heap: process {} exited after 1 census: what was taken before is kept",
            pids[2]
        )),
        "{err}"
    );
    let text = heap.stdout.text();
    let sections: Vec<usize> = pids
        .iter()
        .map(|p| {
            text.find(&format!("=== pid {p}: "))
                .unwrap_or_else(|| panic!("no section for {p}:\n{text}"))
        })
        .collect();
    assert!(sections.windows(2).all(|w| w[0] < w[1]), "{text}");
    let w1 = &text[sections[1]..sections[2]];
    let w2 = &text[sections[2]..];
    let n1 = (WORKER_DICTS[0] + WORKER_ADDS[0]).to_string();
    let n2 = (WORKER_DICTS[1] + WORKER_ADDS[1]).to_string();
    for (section, n) in [(w1, &n1), (w2, &n2)] {
        let row = section
            .lines()
            .find(|l| l.contains("__main__:REG (dict)"))
            .unwrap_or_else(|| panic!("no REG row in:\n{section}"));
        assert!(row.split_whitespace().any(|w| w == n), "{row}");
    }
    assert!(text.contains(&format!("note: process {} exited after 1 census", pids[2])));
}

const PG_KEPT: u64 = 7;
const PG_CLOSED: u64 = 3;

/// Real asyncpg connections to a real PostgreSQL server (a throw-away cluster on 127.0.0.1):
/// the census counts the ones kept, by their class, and not the closed ones that were dropped.
#[test]
fn asyncpg_connections_are_counted() {
    require_root();
    let pg = leaktrace_tests::postgres::Postgres::start("asyncpg");
    for py in every_python() {
        let label = &py.label;
        let fixture = py.fixture("heap_asyncpg.py");
        let p = Proc::spawn(
            py.packages_command()
                .arg(&fixture)
                .arg(pg.dsn())
                .args([PG_KEPT, PG_CLOSED].map(|n| n.to_string())),
        );
        let ready = p.stdout.wait_for("ready", T);
        let pid = p.pid().to_string();
        let file = format!(
            "heap-asyncpg-{}.json",
            label.replace([' ', '(', ')', ','], "_")
        );
        let r = census_json(&pid, &[], &file);
        let conns = &r["names"]["connections"];
        assert_eq!(
            by_key(conns, "type", "asyncpg.connection.Connection"),
            Some(&serde_json::json!({"type": "asyncpg.connection.Connection",
                "count": PG_KEPT})),
            "{label} ({ready}): {conns:#}"
        );
        let owner = by_key(&r["owners"], "path", "__main__:KEPT")
            .unwrap_or_else(|| panic!("{label}: no __main__:KEPT in {:#}", r["owners"]));
        assert_eq!(owner["len"], PG_KEPT, "{label}");
    }
}
