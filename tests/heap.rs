//! Issue 12, `leaktrace heap PID`: a census of a running CPython's objects read from its memory,
//! on every interpreter of the machine (pyenv 3.8-3.13 shared, Debian's static 3.11, Debian
//! sid's 3.14/3.15 static and shared in a chroot).
//!
//! The fixture (`heap_registry.py N M`) holds a module global `REGISTRY` of N small dicts, each
//! with one `Item` (a class with one slot), and adds M more on SIGUSR1: the census must name
//! `__main__:REGISTRY`, give its exact length before and after, and count exactly the `Item`s
//! added between its two censuses.

use std::{process::Command, time::Duration};

use leaktrace_tests::*;

const SIGUSR1: i32 = 10;
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

fn by_key<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

#[test]
fn two_censuses_name_the_global_and_count_what_was_added() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let target = start_registry(&py);
        let out = out_path(&format!(
            "heap-{}.json",
            label.replace([' ', '(', ')', ','], "_")
        ));
        let pid = target.pid().to_string();
        let mut heap = leaktrace(&[
            "heap",
            &pid,
            "--duration",
            "4",
            "--format",
            "json",
            "-o",
            out.to_str().unwrap(),
        ]);
        heap.stderr.wait_for("leaktrace: census 1 taken", T);
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
