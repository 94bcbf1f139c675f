//! `--mode sampled` against a real process, and bounded maps (tiny limits: drops counted,
//! never a stall).

use std::{process::Command, time::Duration};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const T: Duration = Duration::from_secs(60);

/// Traces fixture `name` with `args` while it runs its scenario once; returns the report
/// and the fixture's "done" line.
fn trace(name: &str, args: &[&str], out: &str) -> (Value, String) {
    trace_with(name, args, out, &[])
}

/// [`trace`] with `env` set for leaktrace.
fn trace_with(name: &str, args: &[&str], out: &str, env: &[(&str, &str)]) -> (Value, String) {
    require_root();
    let fixture = Proc::spawn(&mut Command::new(fixture(name, &[])));
    fixture.stdout.wait_for("ready", T);
    let out = out_path(out);
    let pid = fixture.pid().to_string();
    let mut all = vec![
        "attach",
        &pid,
        "--interval",
        "1",
        "-o",
        out.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let mut tracer = Proc::spawn(
        Command::new(leaktrace_bin())
            .envs(env.iter().copied())
            .args(&all),
    );
    tracer.stderr.wait_for("leaktrace: attached", T);
    fixture.signal(SIGUSR1);
    let done = fixture.stdout.wait_for("done", T);
    // Past the default --min-age of 1 s, and one live table.
    std::thread::sleep(Duration::from_millis(1500));
    tracer.signal(SIGINT);
    let code = tracer.wait(T);
    assert_eq!(code, 0, "stderr:\n{}", tracer.stderr.text());
    (read_json(&out), done)
}

/// The estimate at a site with 31,8 MB leaked in 2048 blocks of 16 B to 100 kB, sampled once
/// per 4 KiB on average. The estimator's standard deviation there is
/// sqrt(sum s^2 (1-p)/p), p = 1-exp(-s/N): about 0.25% of the total (see the fixture's
/// sizes), so the 5% tolerance is about 20 standard deviations: this cannot fail by chance.
#[test]
fn sampled_mode_estimates_live_bytes_at_a_site() {
    let (report, done) = trace(
        "sampled",
        &["--mode", "sampled", "--sample-bytes", "4K"],
        "sampled.json",
    );
    let truth: u64 = done
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("fixture line: {done}"));
    assert_eq!(
        truth,
        256 * (16 + 100 + 1000 + 5000 + 20000 + 100000 + 48 + 3000)
    );
    assert_eq!(report["mode"], "sampled");
    assert_eq!(report["sample_bytes"], 4096);
    let leak = stacks_from(&report, "mixed_leak_here", &["malloc"]);
    assert_eq!(leak.len(), 1, "{:#}", report["stacks"]);
    let est = leak[0]["live_bytes"].as_u64().unwrap() as f64;
    let err = est / truth as f64 - 1.0;
    assert!(
        err.abs() < 0.05,
        "estimated {est} for {truth} ({:+.2}%)",
        err * 100.0
    );
    // Fewer calls were recorded than made, and both are counted.
    let counters = &report["counters"];
    let sampled = counters["sampled_calls"].as_u64().unwrap();
    let unsampled = counters["unsampled_calls"].as_u64().unwrap();
    assert!(sampled > 100 && unsampled > 1000, "{counters:#}");
    // With session links (this kernel), an unsampled call takes no return trap: the return
    // probe runs for the sampled calls and the few large unsampled ones watched for nested
    // mmaps, not for every call.
    let returns = counters["return_probe_runs"].as_u64().unwrap();
    assert!(
        returns >= sampled && returns < sampled + unsampled / 10,
        "return probe ran {returns} times for {sampled} sampled and {unsampled} unsampled calls"
    );
    // Everything churned was freed: nothing may live there.
    let churn = stacks_from(&report, "mixed_churn_here", &["malloc", "realloc"]);
    assert!(churn.is_empty(), "freed everything but shows {churn:#?}");
    assert!(
        report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("estimates")),
        "{:#}",
        report["notes"]
    );
    assert_eq!(report["complete"], true);
}

/// Exact mode on the same fixture: every byte, for comparison (and the same site).
#[test]
fn exact_mode_on_the_sampled_fixture_is_exact() {
    let (report, _) = trace("sampled", &[], "sampled-exact.json");
    assert_eq!(report["mode"], "exact");
    assert!(report.get("sample_bytes").is_none());
    let leak = stacks_from(&report, "mixed_leak_here", &["malloc"]);
    assert_eq!(leak.len(), 1);
    assert_eq!(
        leak[0]["live_bytes"].as_u64().unwrap(),
        256 * (16 + 100 + 1000 + 5000 + 20000 + 100000 + 48 + 3000)
    );
    assert_eq!(leak[0]["live_allocs"].as_u64().unwrap(), 256 * 8);
    assert_eq!(report["counters"]["sampled_calls"], 0);
}

/// Maps far too small: the tracer goes on, counts what it could not keep, and the report says
/// its numbers are lower bounds.
#[test]
fn tiny_maps_count_drops_and_say_lower_bounds() {
    let (report, _) = trace("sampled", &["--max-allocs", "100"], "tiny-allocs.json");
    let counters = &report["counters"];
    // 2048 blocks leaked, 100 kept; the churned ones found the map full too.
    assert!(
        counters["alloc_map_full"].as_u64().unwrap() >= 1948,
        "{counters:#}"
    );
    assert!(report["totals"]["dropped"].as_u64().unwrap() >= 1948);
    assert_eq!(report["complete"], false);
    assert_eq!(report["totals"]["live_allocs"], 100);
    assert!(
        notes(&report).iter().any(|n| n.contains("lower bounds")),
        "{:#?}",
        notes(&report)
    );

    // One stack's totals and one native stack: the churn site's stacks find both maps full.
    let (report, _) = trace(
        "sampled",
        &["--max-stacks", "1", "--max-native-stacks", "1"],
        "tiny-stacks.json",
    );
    let counters = &report["counters"];
    assert!(
        counters["stack_totals_map_full"].as_u64().unwrap() > 0,
        "{counters:#}"
    );
    assert!(
        counters["stack_map_collision_or_full"].as_u64().unwrap() > 0,
        "{counters:#}"
    );
    assert!(
        notes(&report).iter().any(|n| n.contains("--max-stacks")),
        "{:#?}",
        notes(&report)
    );
    // The report itself reads every outstanding block: the leak is whole.
    let leak = stacks_from(&report, "mixed_leak_here", &["malloc"]);
    assert_eq!(leak[0]["live_bytes"], 33_065_984);
}

#[test]
fn sampled_mode_options_are_checked() {
    for (args, needle) in [
        (
            vec!["--sample-bytes", "4K"],
            "only applies to --mode sampled",
        ),
        (
            vec!["--mode", "sampled", "--sample-bytes", "0"],
            "at least 1",
        ),
        (
            vec!["--mode", "sampled", "--sample-bytes", "12Q"],
            "unknown unit",
        ),
        (vec!["--mode", "sampled", "--pymalloc"], "--pymalloc"),
        (vec!["--events-bytes", "5000"], "power of two"),
    ] {
        let mut all = vec!["attach", "1"];
        all.extend_from_slice(&args);
        let out = Command::new(leaktrace_bin()).args(&all).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

fn notes(r: &Value) -> Vec<String> {
    r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// The only loss is a missed return (realloc aborts on a bad pointer, the SIGABRT handler
/// siglongjmps out: the call never returns): its own note, which says nothing is missing;
/// not a drop, no "raise --max-allocs", the report complete. A call made after it from deeper
/// in the stack is the thread's own, not nested in the abandoned one.
#[test]
fn a_missed_return_has_its_own_note_and_is_not_a_drop() {
    let (report, done) = trace("missed_return", &[], "missed-return.json");
    let calls: u64 = done
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("fixture line: {done}"));
    let counters = &report["counters"];
    assert_eq!(counters["missed_return"], calls, "{counters:#}");
    for other in [
        "alloc_map_full",
        "pending_map_full",
        "mmap_events_lost",
        "stack_map_collision_or_full",
        "stack_unwind_failed",
        "stack_totals_map_full",
    ] {
        assert_eq!(counters[other], 0, "{other}: {counters:#}");
    }
    assert_eq!(report["totals"]["dropped"], 0);
    assert_eq!(report["complete"], true);
    let notes = notes(&report);
    assert!(
        notes.iter().any(
            |n| n.starts_with(&format!("{calls} allocator calls never returned"))
                && n.contains("nothing is missing")
        ),
        "{notes:#?}"
    );
    assert!(
        !notes
            .iter()
            .any(|n| n.contains("--max-allocs") || n.contains("lower bound")),
        "{notes:#?}"
    );
    // What the thread allocated after each abandoned call is there, exactly.
    let after = stacks_from(&report, "main", &["malloc"]);
    let bytes: u64 = after
        .iter()
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(bytes, 4096 * calls, "{after:#?}");
    // Deeper in the stack than the abandoned realloc, 300 ms after it: the thread's own calls,
    // not calls made inside the abandoned one (which would be dropped as nested).
    let deep = stacks_from(&report, "deep_malloc", &["malloc"]);
    let bytes: u64 = deep.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, 2048 * calls, "{deep:#?}");
}

/// 1024 distinct native stacks: with --max-native-stacks 64 most find the map full (its own
/// note, with its remedy; every allocation still counted); with the default size none is
/// lost. (The kernel's stack-trace map used before refused a stack whose hash slot another
/// stack held: 1024 stacks in 8192 slots lost about 60 of them to collisions.)
#[test]
fn a_full_native_stack_map_has_its_note_and_stacks_do_not_collide() {
    let (report, done) = trace(
        "many_stacks",
        &["--max-native-stacks", "64"],
        "many-stacks-64.json",
    );
    assert_eq!(done, "done 1024");
    let counters = &report["counters"];
    let full = counters["stack_map_collision_or_full"].as_u64().unwrap();
    assert!(full >= 1024 - 64, "{counters:#}");
    let said = notes(&report);
    assert!(
        said.iter().any(|n| n.starts_with(&format!(
            "{full} allocations found the native stack map full"
        )) && n.contains("raise --max-native-stacks")),
        "{said:#?}"
    );
    assert!(
        !said.iter().any(|n| n.contains("--max-allocs")),
        "{said:#?}"
    );
    assert_eq!(report["complete"], true);
    let leaf_bytes = |r: &Value| -> u64 {
        stacks_from(r, "leaf", &["malloc"])
            .iter()
            .map(|s| s["live_bytes"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(leaf_bytes(&report), 1024 * 64);

    let (report, _) = trace("many_stacks", &[], "many-stacks.json");
    assert_eq!(report["counters"]["stack_map_collision_or_full"], 0);
    assert_eq!(report["counters"]["stack_unwind_failed"], 0);
    let leaves = stacks_from(&report, "leaf", &["malloc"]);
    assert_eq!(leaves.len(), 1024, "every path its own stack");
    assert!(leaves.iter().all(|s| s["live_bytes"] == 64));
    assert!(!notes_have_stack_loss(&report), "{:#?}", notes(&report));
}

fn notes_have_stack_loss(r: &Value) -> bool {
    notes(r).iter().any(|n| n.contains("native stack"))
}

/// Exact mode records a session's small malloc in its return run alone (from the session
/// cookie) and a large one from its pending entry: one call site reached with 64 B, 100 kB and
/// 1 MiB (which glibc maps inside malloc) must come out as one stack holding every block once,
/// with no mapping of its own, whether or not session uprobes are used.
#[test]
fn both_return_paths_give_one_stack_and_nested_maps_stay_nested() {
    for (session, out) in [("1", "one-site-sess.json"), ("0", "one-site-nosess.json")] {
        let env = [("LEAKTRACE_UPROBE_SESSION", session)];
        let (report, done) = trace_with("one_site_sizes", &[], out, &env);
        let n: u64 = done
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("fixture line: {done}"));
        let site = stacks_from(&report, "one_site", &["malloc"]);
        assert_eq!(site.len(), 1, "session {session}: {site:#?}");
        assert_eq!(site[0]["live_allocs"], 3 * n, "session {session}");
        assert_eq!(
            site[0]["live_bytes"],
            n * (64 + 100_000 + (1 << 20)),
            "session {session}"
        );
        let counters = &report["counters"];
        assert!(
            counters["nested_allocator_calls"].as_u64().unwrap() >= n,
            "session {session}: {counters:#}"
        );
        let mapped: Vec<_> = report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| functions(s).iter().any(|f| f.contains("mmap")))
            .collect();
        assert!(mapped.is_empty(), "session {session}: {mapped:#?}");
    }
}
