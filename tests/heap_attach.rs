//! Issue 12, `attach --heap`: a census of a Python target at the start and the end of a trace
//! (and every `--heap-interval`), in the allocation report's `heap` member and the summary.
//! Attaches eBPF (growth mode, the documented always-on path, and exact mode): run it under
//! `flock /tmp/leaktrace-itest.lock` on a shared machine.
//!
//! The fixture (`heap_registry.py N M`) holds a module global `REGISTRY` of N small dicts and
//! adds M more on SIGUSR1, after the first census: the report's `heap` member must name
//! `__main__:REGISTRY` with its exact length and count exactly the M `Item`s added.

use std::time::Duration;

use leaktrace_tests::*;

const SIGUSR1: i32 = 10;
const T: Duration = Duration::from_secs(90);
const N: u64 = 2000;
const M: u64 = 500;

fn by_key<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

fn check_heap_member(r: &Value, label: &str, censuses: u64) {
    let h = &r["heap"];
    assert_eq!(h["schema"], "leaktrace-heap/v1", "{label}: {r:#}");
    assert_eq!(h["complete"], true, "{label}: {:?}", h["incomplete_reason"]);
    assert!(
        h["censuses"].as_u64().unwrap() >= censuses,
        "{label}: {}",
        h["censuses"]
    );
    assert_eq!(h["tasks"], serde_json::json!([]), "{label}");
    assert_eq!(
        h["owners"][0]["path"], "__main__:REGISTRY",
        "{label}: {:#}",
        h["owners"]
    );
    assert_eq!(h["owners"][0]["len"], N + M, "{label}");
    assert!(
        h["owners"][0]["retained_growth"].as_i64().unwrap() > 0,
        "{label}: {}",
        h["owners"][0]
    );
    let item = by_key(&h["types"], "type", "__main__.Item")
        .unwrap_or_else(|| panic!("{label}: no __main__.Item type"));
    assert_eq!(item["count"], N + M, "{label}: {item}");
    assert_eq!(item["count_growth"], M, "{label}: {item}");
    // Read after the final census: where the grown Items are held.
    let held = by_key(&h["holders"], "type", "__main__.Item")
        .unwrap_or_else(|| panic!("{label}: no Item holder in {:#}", h["holders"]));
    assert_eq!(held["path"], "__main__:REGISTRY[*]", "{label}: {held}");
    assert_eq!(held["container"], "dict", "{label}: {held}");
    assert_eq!(held["count"], N + M, "{label}: {held}");
}

/// `--mode growth --heap` on every CPython: the heap member and the summary lines.
#[test]
fn growth_mode_with_heap_names_the_global() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let fixture = py.fixture("heap_registry.py");
        let target = Proc::spawn(
            py.command()
                .arg(&fixture)
                .arg(N.to_string())
                .arg(M.to_string()),
        );
        target.stdout.wait_for("ready", T);
        let out = out_path(&format!(
            "attach-heap-{}.json",
            label.replace([' ', '(', ')', ','], "_")
        ));
        let mut tracer = attach(
            target.pid(),
            &[
                "--mode",
                "growth",
                "--heap",
                "--duration",
                "5",
                "-o",
                out.to_str().unwrap(),
            ],
        );
        tracer.stderr.wait_for("leaktrace: heap census 1:", T);
        target.signal(SIGUSR1);
        target.stdout.wait_for(&format!("added {}", N + M), T);
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        let r = read_json(&out);
        assert_eq!(r["schema"], "leaktrace/v1", "{label}");
        assert_eq!(r["mode"], "growth", "{label}");
        check_heap_member(&r, label, 2);
        let summary = tracer.stdout.text();
        let owners = summary
            .lines()
            .find(|l| l.contains("owners that grew most:"))
            .unwrap_or_else(|| panic!("{label}: no heap lines in:\n{summary}"));
        assert!(
            owners.contains(&format!("__main__:REGISTRY (dict, len {}", N + M)),
            "{label}: {owners}"
        );
        assert!(
            summary.contains("leaktrace: heap: 2 censuses"),
            "{label}: {summary}"
        );
        assert!(
            summary.contains(&format!(
                "where they are held: __main__.Item {} in __main__:REGISTRY[*] (dict",
                N + M
            )) || summary.contains(&format!(
                "; __main__.Item {} in __main__:REGISTRY[*] (dict",
                N + M
            )),
            "{label}: {summary}"
        );
    }
}

/// Exact mode with `--heap-interval`: censuses in between, the same end result; and
/// `--no-heap` leaves the member out.
#[test]
fn heap_interval_and_no_heap() {
    require_root();
    let py = every_python().into_iter().next().expect("an interpreter");
    let fixture = py.fixture("heap_registry.py");
    let target = Proc::spawn(
        py.command()
            .arg(&fixture)
            .arg(N.to_string())
            .arg(M.to_string()),
    );
    target.stdout.wait_for("ready", T);
    let out = out_path("attach-heap-interval.json");
    let mut tracer = attach(
        target.pid(),
        &[
            "--heap-interval",
            "1",
            "--duration",
            "5",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    tracer.stderr.wait_for("leaktrace: heap census 2:", T);
    target.signal(SIGUSR1);
    target.stdout.wait_for(&format!("added {}", N + M), T);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    let r = read_json(&out);
    check_heap_member(&r, &py.label, 3);
    let out = out_path("attach-no-heap.json");
    let mut tracer = attach(
        target.pid(),
        &["--no-heap", "--duration", "2", "-o", out.to_str().unwrap()],
    );
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    let r = read_json(&out);
    assert!(r.get("heap").is_none(), "{r:#}");
    assert!(!tracer.stderr.text().contains("heap census"));
}
