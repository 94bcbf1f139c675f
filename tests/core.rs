//! Issue "Core": attach to real processes and check the surviving allocations exactly.

use std::{process::Command, time::Duration};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const SIGTERM: i32 = 15;
const T: Duration = Duration::from_secs(60);

/// Starts the C fixture and waits for it to be ready.
fn start_fixture(extra: &[&str]) -> Proc {
    let fixture = Proc::spawn(&mut Command::new(fixture("allocs", extra)));
    fixture.stdout.wait_for("ready", T);
    fixture
}

/// The one stack allocated by `leaf` from `caller`, with its exact bytes and count.
fn site(report: &Value, caller: &str, leaf: &[&str]) -> (u64, u64, u64) {
    let stacks = stacks_from(report, caller, leaf);
    assert_eq!(
        stacks.len(),
        1,
        "expected one stack {leaf:?} <- {caller}, got {}:\n{:#}",
        stacks.len(),
        report["stacks"]
    );
    let s = stacks[0];
    let frames = s["frames"].as_array().unwrap();
    let line = frames[frames.len() - 2]["line"].as_u64().unwrap_or(0);
    (
        s["live_bytes"].as_u64().unwrap(),
        s["live_allocs"].as_u64().unwrap(),
        line,
    )
}

fn check_fixture_report(report: &Value) {
    assert_eq!(report["schema"], "leaktrace/v1");
    assert_eq!(report["mode"], "exact");
    let src = "allocs.c";
    assert_eq!(
        site(report, "leak_here", &["malloc"]),
        (1000 * 4096, 1000, line_of(src, "SITE:leak_here"))
    );
    assert_eq!(
        site(report, "calloc_leak_here", &["calloc"]),
        (3700, 1, line_of(src, "SITE:calloc_leak_here"))
    );
    // realloc(NULL,100) -> 1000 -> 50000 -> 70000: one block of the last size, at the last call.
    assert_eq!(
        site(report, "realloc_chain_here", &["realloc"]),
        (70000, 1, line_of(src, "SITE:realloc_chain_here"))
    );
    assert_eq!(
        site(report, "memalign_leak_here", &["posix_memalign"]),
        (12345, 1, line_of(src, "SITE:memalign_leak_here"))
    );
    // glibc's aligned_alloc and memalign are one function: either name is right.
    assert_eq!(
        site(report, "memalign_leak_here", &["aligned_alloc", "memalign"]),
        (8192, 1, line_of(src, "SITE:aligned_leak_here"))
    );
    // 10 pages mapped, 2 unmapped from the middle: 8 pages in one (split) mapping.
    assert_eq!(
        site(report, "mmap_leak_here", &["mmap"]),
        (8 * 4096, 1, line_of(src, "SITE:mmap_leak_here"))
    );
    for freed in ["churn_here", "cross_thread_here"] {
        let live = stacks_from(report, freed, &["malloc"]);
        assert!(
            live.is_empty(),
            "{freed} freed everything but shows {live:#?}"
        );
    }
    // Nothing else lives in realloc_chain_here: realloc(q, 0) freed q, and the earlier
    // blocks of the chain moved.
    let chain: Vec<_> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| functions(s).iter().any(|f| f == "realloc_chain_here"))
        .collect();
    assert_eq!(chain.len(), 1, "{chain:#?}");
    let counters = &report["counters"];
    assert_eq!(
        counters["size_overflow"], 1,
        "calloc(SIZE_MAX/2, 4) is counted"
    );
    assert_eq!(report["totals"]["dropped"], 0);
    assert_eq!(report["complete"], true);
    assert!(report["totals"]["allocs_seen"].as_u64().unwrap() >= 2000);
    assert!(report["totals"]["frees_seen"].as_u64().unwrap() >= 1010);
    // Stacks come sorted by live bytes.
    let bytes: Vec<u64> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{bytes:?}");
}

/// Runs the fixture under a tracer stopped by `stop`; returns the report and the tracer.
fn trace_fixture(extra: &[&str], out: &str, stop: i32) -> (Value, Proc, Proc) {
    require_root();
    let fixture = start_fixture(extra);
    let out = out_path(out);
    let mut tracer = attach(
        fixture.pid(),
        &["--interval", "1", "-o", out.to_str().unwrap()],
    );
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    // Let every allocation pass the default --min-age of 1 s.
    std::thread::sleep(Duration::from_millis(1500));
    tracer.signal(stop);
    let code = tracer.wait(T);
    assert_eq!(code, 0, "stderr:\n{}", tracer.stderr.text());
    (read_json(&out), tracer, fixture)
}

#[test]
fn c_fixture_live_bytes_per_call_site_are_exact() {
    let (report, tracer, mut fixture) = trace_fixture(&[], "fixture.json", SIGINT);
    check_fixture_report(&report);
    assert!(tracer.stderr.text().contains("SIGINT") || tracer.stdout.text().contains("SIGINT"));
    // The periodic table showed the leak while tracing.
    assert!(
        tracer.stdout.text().contains("leak_here"),
        "{}",
        tracer.stdout.text()
    );
    assert!(
        fixture.is_running(),
        "the target survives tracing and detaching"
    );
    assert_eq!(report["target"]["pids"][0], fixture.pid());
}

#[test]
fn sigterm_detaches_and_writes_the_report() {
    let (report, tracer, mut fixture) = trace_fixture(&[], "fixture-term.json", SIGTERM);
    check_fixture_report(&report);
    assert!(
        tracer.stdout.text().contains("SIGTERM received"),
        "{}",
        tracer.stdout.text()
    );
    assert!(fixture.is_running());
}

#[test]
fn heap_read_in_batches_or_entry_by_entry_gives_the_same_report() {
    require_root();
    // LEAKTRACE_NO_BATCH=1 reads the maps as on a kernel without BPF_MAP_LOOKUP_BATCH.
    for (no_batch, how) in [(false, "batched"), (true, "entry by entry")] {
        let fixture = start_fixture(&[]);
        let out = out_path(&format!("fixture-read-{}.json", u8::from(no_batch)));
        let pid = fixture.pid().to_string();
        let mut cmd = Command::new(leaktrace_bin());
        cmd.args(["attach", &pid, "--interval", "1", "-v", "-o"])
            .arg(&out);
        if no_batch {
            cmd.env("LEAKTRACE_NO_BATCH", "1");
        }
        let mut tracer = Proc::spawn(&mut cmd);
        tracer.stderr.wait_for("leaktrace: attached", T);
        fixture.signal(SIGUSR1);
        fixture.stdout.wait_for("done", T);
        std::thread::sleep(Duration::from_millis(1500));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{how}: {}", tracer.stderr.text());
        check_fixture_report(&read_json(&out));
        // -v: one line with each phase's time, saying how the heap was read, and that the
        // probes were detached in the background.
        let stderr = tracer.stderr.text();
        let line = stderr
            .lines()
            .find(|l| l.starts_with("leaktrace: report written "))
            .unwrap_or_else(|| panic!("{how}: no timing line in {stderr}"));
        assert!(line.contains(&format!("syscalls, {how})")), "{line}");
        for phase in ["heap ", "maps ", "stacks ", "write ", "detach "] {
            assert!(line.contains(phase), "{phase}: {line}");
        }
        assert!(line.contains("detaching the uprobes took"), "{line}");
    }
}

#[test]
fn statically_linked_target_is_traced_through_its_own_malloc() {
    let (report, _tracer, _fixture) = trace_fixture(&["-static"], "fixture-static.json", SIGINT);
    check_fixture_report(&report);
}

#[test]
fn folded_and_svg_outputs() {
    require_root();
    let fixture = start_fixture(&[]);
    let folded = out_path("fixture.folded");
    let svg = out_path("fixture.svg");
    let mut t1 = attach(
        fixture.pid(),
        &["-o", folded.to_str().unwrap(), "--min-age", "0"],
    );
    let mut t2 = attach(
        fixture.pid(),
        &["-o", svg.to_str().unwrap(), "--min-age", "0"],
    );
    // Two tracers on one process work side by side; the second says so.
    let warning = t2.stderr.wait_for("another leaktrace", T);
    assert!(
        warning.contains(&format!("(pid {})", t1.pid())),
        "{warning}"
    );
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    std::thread::sleep(Duration::from_millis(300));
    t1.signal(SIGINT);
    t2.signal(SIGINT);
    assert_eq!(t1.wait(T), 0, "{}", t1.stderr.text());
    assert_eq!(t2.wait(T), 0, "{}", t2.stderr.text());
    let text = std::fs::read_to_string(&folded).unwrap();
    let leak_line = line_of("allocs.c", "SITE:leak_here");
    let want = format!(
        ";leak_here ({}:{leak_line});malloc 4096000",
        root().join("tests/fixtures/allocs.c").display()
    );
    assert!(
        text.lines()
            .any(|l| l.ends_with(&want) && l.contains(";main (")),
        "no line ending with {want:?} in:\n{text}"
    );
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("leak_here"),
        "{}",
        &svg[..svg.len().min(500)]
    );
    assert!(svg.contains("bytes"));
}

#[test]
fn python_module_level_list_leak_grows_and_is_reported() {
    require_root();
    let (report, stdout) = trace_list_leak("python-list.json", &[]);
    let leaked = 2000 * 10240;
    let live = report["totals"]["live_bytes"].as_u64().unwrap();
    assert!(live >= leaked, "live {live} < leaked {leaked}");
    // The list's 2000 objects come from one allocation path, which grew while traced.
    let top = &report["stacks"][0];
    assert!(top["live_allocs"].as_u64().unwrap() >= 2000, "{top:#}");
    assert!(top["live_bytes"].as_u64().unwrap() >= leaked, "{top:#}");
    assert_eq!(functions(top).last().unwrap(), "malloc");
    let leaf = python_frames(top).last().cloned();
    assert_eq!(leaf.map(|f| f.0), Some("leaky".to_string()), "{top:#}");
    let growth = top["growth_bytes_per_s"].as_f64().expect("growth measured");
    assert!(growth > 1e6, "the leak grows ~8 MB/s, measured {growth}");
    // The live tables printed while tracing grew too.
    let tables: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with('['))
        .map(str::to_string)
        .collect();
    assert!(tables.len() >= 3, "{tables:?}");
}

#[test]
fn target_exiting_mid_trace_still_writes_the_report() {
    require_root();
    let mut fixture = start_fixture(&[]);
    let out = out_path("exited.json");
    let mut tracer = attach(
        fixture.pid(),
        &["--min-age", "0", "-o", out.to_str().unwrap()],
    );
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    std::thread::sleep(Duration::from_millis(300));
    fixture.signal(SIGTERM);
    fixture.wait(T);
    assert_eq!(
        tracer.wait(T),
        3,
        "exit code 3 says the target exited; {}",
        tracer.stderr.text()
    );
    let report = read_json(&out);
    assert_eq!(site(&report, "leak_here", &["malloc"]).0, 4096000);
    let notes = report["notes"].to_string();
    assert!(notes.contains("exited"), "{notes}");
    assert!(tracer.stderr.text().contains("exited"));
}

/// Runs leaktrace expecting a one-line error; returns it.
fn expect_error(cmd: &mut Command) -> String {
    let out = cmd.output().expect("leaktrace runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
    assert!(lines[0].starts_with("leaktrace: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn error_no_such_pid() {
    require_root();
    let err = expect_error(Command::new(leaktrace_bin()).args(["attach", "999999999"]));
    assert!(err.contains("no process with PID 999999999"), "{err}");
}

#[test]
fn error_not_root() {
    require_root();
    let fixture = start_fixture(&[]);
    let err = expect_error(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(leaktrace_bin())
            .args([
                "attach",
                &fixture.pid().to_string(),
                "-o",
                "/tmp/leaktrace-not-root.svg",
            ]),
    );
    assert!(err.contains("needs root or CAP_BPF+CAP_PERFMON"), "{err}");
}

#[test]
fn error_output_not_writable() {
    require_root();
    let fixture = start_fixture(&[]);
    let pid = fixture.pid().to_string();
    let err = expect_error(Command::new(leaktrace_bin()).args([
        "attach",
        &pid,
        "-o",
        "/nonexistent-dir/r.svg",
    ]));
    assert!(
        err.contains("cannot write the report to `/nonexistent-dir/r.svg`"),
        "{err}"
    );
    let dir = out_path("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let err = expect_error(Command::new(leaktrace_bin()).args([
        "attach",
        &pid,
        "-o",
        dir.to_str().unwrap(),
    ]));
    assert!(err.contains("cannot write the report"), "{err}");
}

#[test]
fn error_no_libc_in_target() {
    require_root();
    // Static and stripped: no shared libc, no malloc symbol to probe.
    let fixture = start_fixture(&["-static", "-s"]);
    let err =
        expect_error(Command::new(leaktrace_bin()).args(["attach", &fixture.pid().to_string()]));
    assert!(err.contains("libc not found in process"), "{err}");
    // A kernel thread has no user memory at all.
    let err = expect_error(Command::new(leaktrace_bin()).args(["attach", "2"]));
    assert!(err.contains("kernel thread"), "{err}");
}

#[test]
fn error_bad_command_line_is_usage() {
    let out = Command::new(leaktrace_bin())
        .args(["attach", "notapid"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// BPF link ids and program ids held open by process `pid`, from its fdinfo.
fn bpf_objects_of(pid: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut links, mut progs) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        for line in text.lines() {
            let mut kv = line.split(':').map(str::trim);
            match (kv.next(), kv.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("link_id"), Some(id)) => links.push(id),
                (Some("prog_id"), Some(id)) if text.contains("link_id") => progs.push(id),
                _ => {}
            }
        }
    }
    (links, progs)
}

/// The name of the BPF program with this id (bpftool's `name` field).
fn prog_name(id: u64) -> String {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool is installed by ./dev setup");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "name" {
            return words.next().unwrap_or_default().to_string();
        }
    }
    panic!("no name in bpftool's answer for program {id}: {text}")
}

/// Whether bpftool still sees a link or program with this id.
fn bpf_object_exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("bpftool is installed by ./dev setup")
        .status
        .success()
}

#[test]
fn no_probe_survives_exit_even_after_sigkill() {
    require_root();
    let mut fixture = start_fixture(&[]);
    for (sig, name) in [(SIGINT, "SIGINT"), (9, "SIGKILL")] {
        let out = out_path(&format!("killed-{name}.json"));
        let mut tracer = attach(fixture.pid(), &["-o", out.to_str().unwrap()]);
        let (links, progs) = bpf_objects_of(tracer.pid());
        if std::env::var("LEAKTRACE_UPROBE_MULTI").is_ok_and(|v| v == "0") {
            assert!(
                links.len() >= 20,
                "{name}: expected a perf-event link per probe, got {links:?}"
            );
        } else {
            // One uprobe_multi link per program in the C library: alloc_session (or, without
            // sessions, alloc_enter), alloc_return (mmap and mremap's returns; with
            // LEAKTRACE_UPROBE_SESSION=0 the malloc family's too), free, mmap, munmap, mremap.
            assert_eq!(
                links.len(),
                6,
                "{name}: expected a uprobe_multi link per program, got {links:?}"
            );
            let names: Vec<String> = progs.iter().map(|&id| prog_name(id)).collect();
            let sessions = !std::env::var("LEAKTRACE_UPROBE_SESSION").is_ok_and(|v| v == "0");
            let (used, unused) = if sessions {
                ("alloc_session", "alloc_enter")
            } else {
                ("alloc_enter", "alloc_session")
            };
            assert!(
                names.iter().any(|n| n == used),
                "{name}: {used} in {names:?}"
            );
            assert!(
                !names.iter().any(|n| n == unused),
                "{name}: no {unused} in {names:?}"
            );
            assert!(names.iter().any(|n| n == "alloc_return"), "{names:?}");
        }
        assert!(links.iter().all(|id| bpf_object_exists("link", *id)));
        tracer.signal(sig);
        tracer.wait(T);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while links.iter().any(|id| bpf_object_exists("link", *id))
            || progs.iter().any(|id| bpf_object_exists("prog", *id))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: links {links:?} / programs {progs:?} remain"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The target runs on undisturbed after both tracers are gone.
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    assert!(fixture.is_running());
}

#[test]
fn sigusr1_writes_a_snapshot_and_tracing_goes_on() {
    require_root();
    let fixture = start_fixture(&[]);
    let out = out_path("snap.json");
    let mut tracer = attach(
        fixture.pid(),
        &["--min-age", "0", "-o", out.to_str().unwrap()],
    );
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    std::thread::sleep(Duration::from_millis(300));
    tracer.signal(SIGUSR1);
    let line = tracer.stderr.wait_for("snapshot written to", T);
    let path = line.split('`').nth(1).expect("snapshot path in backquotes");
    let name = std::path::Path::new(path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        name.starts_with("snap-") && name.ends_with("Z.json"),
        "{name}"
    );
    let snapshot = read_json(std::path::Path::new(path));
    assert_eq!(site(&snapshot, "leak_here", &["malloc"]).0, 4096000);
    assert!(tracer.is_running(), "a snapshot does not stop tracing");
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    assert_eq!(site(&read_json(&out), "leak_here", &["malloc"]).0, 4096000);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn report_rerenders_a_saved_json_report() {
    // Pure user space: no tracing needed, a golden report is the input.
    let input = out_path("rerender-input.json");
    std::fs::copy(root().join("tests/data/report.json"), &input).unwrap();
    let folded = out_path("rerender.folded");
    leaktrace_ok(&[
        "report",
        input.to_str().unwrap(),
        "-o",
        folded.to_str().unwrap(),
    ]);
    let expected = std::fs::read_to_string(root().join("tests/data/report.folded")).unwrap();
    assert_eq!(std::fs::read_to_string(&folded).unwrap(), expected);
    let out = Command::new(leaktrace_bin())
        .args(["report", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let svg = std::fs::read_to_string(input.with_extension("svg")).unwrap();
    assert!(svg.contains("leak_here (fixture.c:12)"));
    let err = expect_error(
        Command::new(leaktrace_bin()).args(["report", root().join("Cargo.toml").to_str().unwrap()]),
    );
    assert!(err.contains("is not a leaktrace JSON report"), "{err}");
}

#[test]
fn diff_and_pprof_from_the_command_line() {
    // Pure user space on saved reports: the golden report, and a later one where the leak
    // tripled.
    let before = out_path("diff-before.json");
    std::fs::copy(root().join("tests/data/report.json"), &before).unwrap();
    let mut later: Value = read_json(&before);
    later["stacks"][0]["live_bytes"] = Value::from(3 * 4_096_000u64);
    later["totals"]["live_bytes"] = Value::from(3 * 4_096_000u64 + 3700);
    let after = out_path("diff-after.json");
    std::fs::write(&after, serde_json::to_string(&later).unwrap()).unwrap();
    let svg = out_path("diff.svg");
    let out = leaktrace_ok(&[
        "diff",
        before.to_str().unwrap(),
        after.to_str().unwrap(),
        "-o",
        svg.to_str().unwrap(),
    ]);
    let summary = String::from_utf8_lossy(&out.stdout);
    let first = summary.lines().nth(2).unwrap_or_default();
    assert!(
        first.contains("+7.8 MiB") && first.contains("leak_here"),
        "{summary}"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().contains("leak_here"));
    // pprof, read back by protoc (an independent decoder).
    let pb = out_path("report.pb.gz");
    leaktrace_ok(&[
        "report",
        before.to_str().unwrap(),
        "-o",
        pb.to_str().unwrap(),
    ]);
    let decoded = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc {} | protoc --proto_path={} --decode=perftools.profiles.Profile profile.proto",
            pb.display(),
            root().join("tests/data").display()
        ))
        .output()
        .unwrap();
    assert!(
        decoded.status.success(),
        "{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let text = String::from_utf8_lossy(&decoded.stdout);
    assert!(
        text.contains("\"inuse_space\"") && text.contains("\"leak_here\""),
        "{text}"
    );
    assert!(text.contains("value: 4096000"), "{text}");
}
