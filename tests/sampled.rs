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
    require_root();
    let fixture = Proc::spawn(&mut Command::new(fixture(name, &[])));
    fixture.stdout.wait_for("ready", T);
    let out = out_path(out);
    let mut all = vec!["--interval", "1", "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let mut tracer = attach(fixture.pid(), &all);
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
    let notes = |r: &Value| -> Vec<String> {
        r["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    };
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
