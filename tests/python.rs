//! Issue "Python stacks": every allocation attributed to the Python function and line that
//! made it, on every interpreter of the machine, attached or started by `leaktrace run`.

use std::{path::Path, process::Command, time::Duration};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const T: Duration = Duration::from_secs(60);

/// The stack with the most live bytes.
fn top(report: &Value) -> &Value {
    &report["stacks"][0]
}

/// Checks the py_leak.py report: `leaky` at its line is the top stack's Python leaf, called
/// from `main` at its line, and `churn` has nothing live.
fn check_leak_report(report: &Value, label: &str, caller: Option<(&str, &str)>) {
    let src = "py_leak.py";
    let stack = top(report);
    let py = python_frames(stack);
    assert_eq!(
        py.last(),
        Some(&("leaky".to_string(), line_of(src, "SITE:leaky"))),
        "{label}: top stack {:#}",
        stack
    );
    if let Some((function, marker)) = caller {
        assert!(
            py.contains(&(function.to_string(), line_of(src, marker))),
            "{label}: {function} at {marker} not in {py:?}"
        );
    }
    assert!(
        stack["live_allocs"].as_u64().unwrap() >= 1000,
        "{label}: {stack:#}"
    );
    assert!(
        stack["live_bytes"].as_u64().unwrap() >= 1000 * 10240,
        "{label}: {stack:#}"
    );
    let native_leaf = functions(stack).last().unwrap().clone();
    assert_eq!(
        native_leaf, "malloc",
        "{label}: native frames stay at the leaf"
    );
    let churning: Vec<_> = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| python_frames(s).iter().any(|(f, _)| f == "churn"))
        .collect();
    assert!(
        churning.is_empty(),
        "{label}: churn freed everything: {churning:#?}"
    );
    assert_eq!(report["totals"]["dropped"], 0, "{label}");
}

#[test]
fn attach_attributes_leaks_to_function_and_line_on_every_interpreter() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let target = Proc::spawn(py.command().arg(py.fixture("py_leak.py")));
        target.stdout.wait_for("ready", T);
        let out = out_path(&format!("py-attach-{}.json", file_label(label)));
        let mut tracer = attach(
            target.pid(),
            &["--interval", "1", "-o", out.to_str().unwrap()],
        );
        tracer.stderr.wait_for("recording Python frames", T);
        target.signal(SIGUSR1);
        target.stdout.wait_for("done 1000", T);
        std::thread::sleep(Duration::from_millis(1300));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        let report = read_json(&out);
        let version = report["target"]["python"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert!(
            label.contains(&version) && !version.is_empty(),
            "{label}: python = {version}"
        );
        check_leak_report(&report, label, Some(("main", "SITE:main_calls_leaky")));
        // Native stacks end at the interpreter where it has no frame pointers: every build
        // here but Debian's 3.15 (PEP 831).
        let cut = tracer
            .stderr
            .text()
            .contains("(native stacks end at the interpreter: it has no frame pointers)");
        assert_eq!(cut, py.minor != 15, "{label}: {}", tracer.stderr.text());
    }
}

/// A label as a file name.
fn file_label(label: &str) -> String {
    label.replace([' ', '(', ')', ',', '/'], "_")
}

#[test]
fn run_traces_from_the_first_allocation_on_every_interpreter() {
    require_root();
    for (label, py) in interpreters() {
        let script = root().join("tests/fixtures/py_leak.py");
        let out = out_path(&format!(
            "py-run-{}.json",
            label.replace([' ', '(', ')'], "_")
        ));
        let mut tracer = leaktrace(&[
            "run",
            "--duration",
            "4",
            "-o",
            out.to_str().unwrap(),
            "--",
            py.to_str().unwrap(),
            script.to_str().unwrap(),
            "--now",
        ]);
        let ready = tracer.stdout.wait_for("ready", T);
        let pid: i32 = ready.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        // The command goes on running after tracing stops; end it (we started it).
        // SAFETY: kill(2) on the command this test started.
        unsafe { libc::kill(pid, 9) };
        let report = read_json(&out);
        check_leak_report(&report, &label, Some(("main", "SITE:main_calls_leaky")));
        // From the first allocation: all 1000 objects, each with its Python stack.
        assert_eq!(top(&report)["live_allocs"], 1000, "{label}");
    }
}

#[test]
fn run_reports_errors_and_exit_status() {
    require_root();
    let out = Command::new(leaktrace_bin())
        .args(["run", "--", "no-such-program-leaktrace"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("command not found: `no-such-program-leaktrace`"),
        "{err}"
    );
    // A command that exits on its own: its status becomes leaktrace's, the report is written.
    let report = out_path("run-exit.json");
    let mut t = leaktrace(&[
        "run",
        "-o",
        report.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(t.wait(T), 7, "{}", t.stderr.text());
    assert_eq!(read_json(&report)["schema"], "leaktrace/v1");
}

/// Traces a fixture started with SIGUSR1, until it prints `done`.
fn trace_fixture(py: &Python, script: &str, out: &str) -> Value {
    let target = Proc::spawn(py.command().arg(py.fixture(script)));
    target.stdout.wait_for("ready", T);
    let out = out_path(&format!("{}-{out}", file_label(&py.label)));
    let mut tracer = attach(
        target.pid(),
        &["-o", out.to_str().unwrap(), "--min-age", "0.5"],
    );
    tracer.stderr.wait_for("recording Python frames", T);
    target.signal(SIGUSR1);
    target.stdout.wait_for("done", T);
    std::thread::sleep(Duration::from_millis(800));
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    read_json(&out)
}

#[test]
fn threads_get_their_own_stacks() {
    require_root();
    for py in every_python() {
        let report = trace_fixture(&py, "py_threads.py", "py-threads.json");
        assert_threads_apart(&report, &py.label);
    }
}

#[test]
fn asyncio_leak_is_attributed_to_its_coroutine() {
    require_root();
    for py in every_python() {
        let label = &py.label;
        let report = trace_fixture(&py, "py_asyncio.py", "py-asyncio.json");
        let stack = top(&report);
        let py_frames = python_frames(stack);
        assert_eq!(
            py_frames.last(),
            Some(&(
                "leaky_coroutine".to_string(),
                line_of("py_asyncio.py", "SITE:coroutine")
            )),
            "{label}: {stack:#}"
        );
        assert!(
            py_frames.contains(&(
                "worker".to_string(),
                line_of("py_asyncio.py", "SITE:worker_awaits")
            )),
            "{label}: the awaiting task's coroutine is in the stack: {py_frames:?}"
        );
        assert!(
            stack["live_allocs"].as_u64().unwrap() >= 1000,
            "{label}: {stack:#}"
        );
    }
}

#[test]
fn uvicorn_fastapi_endpoint_is_the_top_python_frame() {
    require_root();
    // The host's .venv (pyenv 3.11), then Debian's 3.14 and 3.15, static and shared.
    let mut servers = vec![("host .venv".to_string(), start_uvicorn())];
    for py in every_python().into_iter().filter(|p| p.chroot.is_some()) {
        let server = start_uvicorn_with(&py);
        servers.push((py.label, server));
    }
    for (label, (server, port)) in servers {
        check_uvicorn(&label, &server, port);
    }
}

/// Traces a uvicorn server under a bounded load of `GET /leak`: the endpoint is the innermost
/// Python frame of the largest live stack, and most payloads are attributed there.
fn check_uvicorn(label: &str, server: &Proc, port: u16) {
    let out = out_path(&format!("uvicorn-{}.json", file_label(label)));
    let mut tracer = attach(
        server.pid(),
        &["-o", out.to_str().unwrap(), "--min-age", "0.5"],
    );
    tracer.stderr.wait_for("recording Python frames", T);
    // Bounded load: 1500 requests or 60 s, whichever comes first, on loopback only.
    let started = std::time::Instant::now();
    let mut ok = 0;
    while ok < 1500 && started.elapsed() < T {
        assert_eq!(http_get(port, "/leak").unwrap(), 200, "{label}");
        ok += 1;
    }
    std::thread::sleep(Duration::from_millis(800));
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
    let report = read_json(&out);
    let stack = top(&report);
    let frames = python_frames(stack);
    assert_eq!(
        frames.last(),
        Some(&(
            "leak_endpoint".to_string(),
            line_of("fastapi_leak.py", "SITE:endpoint")
        )),
        "{label}: the endpoint is the innermost Python frame of the largest live stack: {stack:#}"
    );
    // Most requests' payloads are attributed there (the first requests on a new worker
    // thread may come before the thread is published).
    let attributed = allocs_by_leaf(&report)
        .get("leak_endpoint")
        .map_or(0, |e| e.0);
    assert!(
        attributed >= 1200,
        "{label}: {attributed} of {ok} payloads attributed to leak_endpoint"
    );
}

/// Traces py_small_leak.py; returns (report, tracer stderr).
fn trace_small_leak(py: &Python, extra: &[&str], out: &str) -> (Value, String) {
    trace_small_leak_env(py, extra, out, None)
}

/// [`trace_small_leak`] with the target's PYTHONMALLOC set.
fn trace_small_leak_env(
    py: &Python,
    extra: &[&str],
    out: &str,
    pythonmalloc: Option<&str>,
) -> (Value, String) {
    let mut cmd = py.command();
    if let Some(m) = pythonmalloc {
        cmd.env("PYTHONMALLOC", m);
    }
    let target = Proc::spawn(cmd.arg(py.fixture("py_small_leak.py")));
    target.stdout.wait_for("ready", T);
    let out = out_path(&format!("{}-{out}", file_label(&py.label)));
    let mut args = vec!["-o", out.to_str().unwrap(), "--min-age", "0.5"];
    args.extend_from_slice(extra);
    let mut tracer = attach(target.pid(), &args);
    tracer.stderr.wait_for("recording Python frames", T);
    target.signal(SIGUSR1);
    target.stdout.wait_for("done 5000", T);
    std::thread::sleep(Duration::from_millis(800));
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    (read_json(&out), tracer.stderr.text())
}

/// The frame `resolve::stacks` puts over every stack that mapped a pymalloc arena.
const ARENAS_FRAME: &str =
    "[pymalloc arenas: objects of 512 B or less, attributed one by one with --pymalloc]";

#[test]
fn arenas_are_one_stack_on_debians_stripped_3_14_and_3_15() {
    require_root();
    // Stripped (only .dynsym): the arena function `_PyObject_ArenaMmap` has no symbol, and is
    // found through `_PyRuntime.allocators.obj_arena` in the target's memory.
    for py in every_python().into_iter().filter(|p| p.chroot.is_some()) {
        let label = &py.label;
        let (report, _) = trace_small_leak(&py, &[], "small-arenas.json");
        let stacks = report["stacks"].as_array().unwrap();
        let arenas: Vec<&Value> = stacks
            .iter()
            .filter(|s| functions(s).first().map(String::as_str) == Some(ARENAS_FRAME))
            .collect();
        assert_eq!(arenas.len(), 1, "{label}: one arena stack: {stacks:#?}");
        assert_eq!(
            functions(arenas[0]),
            [ARENAS_FRAME, "_PyObject_ArenaMmap", "mmap"],
            "{label}"
        );
        // 5000 objects of 100 bytes need at least one new 1 MiB arena.
        assert!(
            arenas[0]["live_bytes"].as_u64().unwrap() >= 1 << 20,
            "{label}: {:#}",
            arenas[0]
        );
        // No Python stack keeps an arena it happened to map.
        for s in stacks {
            let f = functions(s);
            assert!(
                f.first().map(String::as_str) == Some(ARENAS_FRAME)
                    || !(f.last().map(String::as_str) == Some("mmap")
                        && s["live_bytes"].as_u64().unwrap() >= 1 << 20),
                "{label}: an arena blamed on Python code: {s:#}"
            );
        }
    }
}

#[test]
fn pymalloc_attributes_small_objects_one_by_one() {
    require_root();
    let line = line_of("py_small_leak.py", "SITE:small");
    // pyenv's (with a symbol table: pymalloc's own functions are probed) and Debian's shared
    // 3.14/3.15 (stripped: pymalloc's functions are found through `_PyRuntime.allocators`).
    for py in every_python()
        .into_iter()
        .filter(|p| p.label.starts_with("pyenv") || (p.chroot.is_some() && !p.static_build))
    {
        let label = &py.label;
        // Without --pymalloc, 100-byte objects live in pymalloc arenas: no stack holds them
        // one by one (an arena is one mmap blamed on whoever grew it).
        let (plain, _) = trace_small_leak(&py, &[], "small-plain.json");
        for s in plain["stacks"].as_array().unwrap() {
            if python_frames(s).last().map(|f| f.0.as_str()) == Some("leaky_small") {
                assert!(s["live_allocs"].as_u64().unwrap() < 100, "{label}: {s:#}");
            }
        }
        let (report, stderr) = trace_small_leak(&py, &["--pymalloc"], "small-pymalloc.json");
        assert!(
            stderr.contains("--pymalloc: probing _PyObject_Malloc _PyObject_Calloc _PyObject_Realloc _PyObject_Free in"),
            "{label}: {stderr}"
        );
        assert!(!stderr.contains("warning"), "{label}: {stderr}");
        let top = &report["stacks"][0];
        assert_eq!(
            python_frames(top).last(),
            Some(&("leaky_small".to_string(), line)),
            "{label}: {top:#}"
        );
        assert_eq!(
            top["live_allocs"], 5000,
            "{label}: every object, exactly: {top:#}"
        );
        assert_eq!(functions(top).last().unwrap(), "PyObject_Malloc", "{label}");
    }
}

#[test]
fn pymalloc_on_a_stripped_interpreter_says_what_it_misses() {
    require_root();
    let debian311 = every_python()
        .into_iter()
        .find(|p| p.label == "debian 3.11 (static)")
        .unwrap();
    let (_, stderr) = trace_small_leak(&debian311, &["--pymalloc"], "small-static.json");
    assert!(
        stderr.contains("has no symbol table: only calls through the exported"),
        "{stderr}"
    );
    // Debian's static 3.14/3.15 (stripped, PGO + LTO): `_PyObject_Malloc` is found through
    // `_PyRuntime.allocators` and probed, but its body is inlined into about 300 call sites
    // behind a comparison with its address, so the probe sees few objects: said in one line
    // that says what to do, PYTHONMALLOC=malloc, which then shows every object exactly.
    let line = line_of("py_small_leak.py", "SITE:small");
    for py in every_python()
        .into_iter()
        .filter(|p| p.chroot.is_some() && p.static_build)
    {
        let label = &py.label;
        let (report, stderr) = trace_small_leak(&py, &["--pymalloc"], "small-static.json");
        // The file as leaktrace sees it (the root's real path, then the path inside).
        let host_path = py
            .chroot
            .as_ref()
            .unwrap()
            .canonicalize()
            .unwrap()
            .join(py.exe.strip_prefix("/").unwrap());
        let warning = stderr
            .lines()
            .find(|l| l.contains("inlined into"))
            .unwrap_or_else(|| panic!("{label}: no inlining warning: {stderr}"));
        let (head, tail) = warning.split_once(" call sites ").unwrap();
        let (head, sites) = head.rsplit_once(' ').unwrap();
        assert_eq!(
            head,
            format!(
                "leaktrace: warning: `{}` has pymalloc's _PyObject_Malloc inlined into",
                host_path.display()
            ),
            "{label}"
        );
        assert!(sites.parse::<u32>().unwrap() >= 200, "{label}: {warning}");
        assert_eq!(
            tail,
            "(a PGO/LTO build): --pymalloc sees only the calls that reach the function; to see every object, start the target with PYTHONMALLOC=malloc (its objects then come from malloc, traced without --pymalloc)",
            "{label}"
        );
        assert_eq!(stderr.matches("warning").count(), 1, "{label}: {stderr}");
        // The arenas still come out as one stack of their own.
        let stacks = report["stacks"].as_array().unwrap();
        assert!(
            stacks
                .iter()
                .any(|s| functions(s).first().map(String::as_str) == Some(ARENAS_FRAME)),
            "{label}: {stacks:#?}"
        );
        // What the line advises: every object, through malloc, at its line.
        let (report, _) = trace_small_leak_env(&py, &[], "small-malloc.json", Some("malloc"));
        let top = &report["stacks"][0];
        assert_eq!(
            python_frames(top).last(),
            Some(&("leaky_small".to_string(), line)),
            "{label}: {top:#}"
        );
        assert!(
            top["live_allocs"].as_u64().unwrap() >= 5000,
            "{label}: every object: {top:#}"
        );
        assert_eq!(functions(top).last().unwrap(), "malloc", "{label}");
    }
}

/// Text of a tmux pane.
fn pane(session: &str) -> String {
    let out = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn wait_pane(session: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + T;
    loop {
        let text = pane(session);
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pane never showed {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ends a tmux session this test started, even when the test fails.
struct TmuxSession(String);

impl Drop for TmuxSession {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn top_shows_the_leak_live_in_a_terminal() {
    require_root();
    let py = &interpreters()[4].1; // pyenv 3.12
    let target = Proc::spawn(Command::new(py).arg(root().join("tests/fixtures/py_leak.py")));
    target.stdout.wait_for("ready", T);
    let out = out_path("top.json");
    let rc = out_path("top.rc");
    let err = out_path("top.err");
    let name = format!("leaktrace-top-{}", std::process::id());
    let _session = TmuxSession(name.clone());
    let cmd = format!(
        "{} top {} --interval 0.5 --min-age 0 -o {} 2>{}; echo $? > {}; sleep 60",
        leaktrace_bin().display(),
        target.pid(),
        out.display(),
        err.display(),
        rc.display()
    );
    let status = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            "200",
            "-y",
            "30",
            &cmd,
        ])
        .status()
        .expect("tmux is installed by ./dev setup");
    assert!(status.success());
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string(&err)
        .unwrap_or_default()
        .contains("recording Python frames")
    {
        assert!(std::time::Instant::now() < deadline, "{}", pane(&name));
        std::thread::sleep(Duration::from_millis(100));
    }
    target.signal(SIGUSR1);
    let leak_line = line_of("py_leak.py", "SITE:leaky");
    let screen = wait_pane(&name, &format!("leaky (py_leak.py:{leak_line})"));
    assert!(
        screen.contains(&format!("leaktrace top: pid {}", target.pid())),
        "{screen}"
    );
    assert!(screen.contains("stacks by growth"), "{screen}");
    assert!(screen.contains("total live bytes"), "{screen}");
    Command::new("tmux")
        .args(["send-keys", "-t", &name, "s"])
        .status()
        .unwrap();
    wait_pane(&name, "stacks by live bytes");
    Command::new("tmux")
        .args(["send-keys", "-t", &name, "f"])
        .status()
        .unwrap();
    wait_pane(&name, "(frozen)");
    Command::new("tmux")
        .args(["send-keys", "-t", &name, "q"])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    while std::fs::read_to_string(&rc).unwrap_or_default().trim() != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "top did not exit 0 on q: {}",
            pane(&name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = read_json(&out);
    assert_eq!(
        python_frames(&report["stacks"][0])
            .last()
            .map(|f| f.0.clone()),
        Some("leaky".into())
    );
}

#[test]
fn top_without_a_terminal_prints_plain_tables() {
    require_root();
    let py = &interpreters()[4].1;
    let target = Proc::spawn(Command::new(py).arg(root().join("tests/fixtures/py_leak.py")));
    target.stdout.wait_for("ready", T);
    let out = out_path("top-plain.json");
    let pid = target.pid().to_string();
    let mut top = leaktrace(&[
        "top",
        &pid,
        "--interval",
        "0.5",
        "-o",
        out.to_str().unwrap(),
    ]);
    top.stderr.wait_for("recording Python frames", T);
    target.signal(SIGUSR1);
    let line = top.stdout.wait_for("leaky (py_leak.py:", T);
    assert!(line.contains("[malloc]"), "{line}");
    top.signal(SIGINT);
    assert_eq!(top.wait(T), 0, "{}", top.stderr.text());
}

/// The stack with the most live bytes whose innermost Python frame is `function`.
fn biggest_from<'a>(report: &'a Value, function: &str) -> &'a Value {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| python_frames(s).last().map(|f| f.0.as_str()) == Some(function))
        .max_by_key(|s| s["live_bytes"].as_u64().unwrap())
        .unwrap_or_else(|| panic!("no stack from {function}: {:#}", report["stacks"]))
}

#[test]
fn growth_ranks_a_steady_leak_above_a_bigger_cache() {
    require_root();
    let py = &interpreters()[4].1; // pyenv 3.12
    let target =
        Proc::spawn(Command::new(py).arg(root().join("tests/fixtures/py_leak_and_cache.py")));
    target.stdout.wait_for("ready", T);
    let out = out_path("growth.json");
    let mut tracer = attach(
        target.pid(),
        &[
            "--interval",
            "1",
            "--duration",
            "30",
            "--min-age",
            "0.5",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    tracer.stderr.wait_for("recording Python frames", T);
    target.signal(SIGUSR1);
    assert_eq!(
        tracer.wait(Duration::from_secs(90)),
        0,
        "{}",
        tracer.stderr.text()
    );
    let report = read_json(&out);
    let leak = biggest_from(&report, "steady_leak");
    let cache = biggest_from(&report, "fill_cache");
    assert_eq!(leak["trend"], "growing", "{leak:#}");
    assert_eq!(cache["trend"], "plateaued", "{cache:#}");
    assert!(
        cache["live_bytes"].as_u64() > leak["live_bytes"].as_u64(),
        "the cache holds more than the leak: {} vs {}",
        cache["live_bytes"],
        leak["live_bytes"]
    );
    let g = |s: &Value| s["growth_bytes_per_s"].as_f64().unwrap();
    assert!(g(leak) > 50_000.0, "the leak grows ~100 KB/s: {}", g(leak));
    assert!(
        g(cache).abs() < g(leak) / 10.0,
        "the cache is flat: {}",
        g(cache)
    );
    // Ranked by growth (the default), the leak comes first in the summary.
    let summary: Vec<String> = tracer
        .stdout
        .text()
        .lines()
        .skip_while(|l| !l.starts_with("leaktrace: stopped"))
        .skip(1)
        .map(str::to_string)
        .collect();
    assert!(
        summary
            .first()
            .is_some_and(|l| l.contains("steady_leak") && l.contains("growing")),
        "{summary:#?}"
    );
    // --flame growth keeps only what growing stacks added: the leak, not the cache.
    let folded = out_path("growth.folded");
    let status = Command::new(leaktrace_bin())
        .args([
            "report",
            out.to_str().unwrap(),
            "--flame",
            "growth",
            "-o",
            folded.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&folded).unwrap();
    assert!(text.lines().any(|l| l.contains("steady_leak")), "{text}");
    assert!(!text.contains("fill_cache"), "{text}");
}

/// A minor version leaktrace has no table for: Debian's real python3.15 whose
/// `_Py_DebugOffsets` says 3.16 (the struct's version patched in a copy, inside the sid root).
/// One warning line names it and says what happens instead; the report has native stacks only.
#[test]
fn an_unknown_minor_version_gets_one_line_and_native_stacks() {
    require_root();
    let r = sid_root();
    let mut data = std::fs::read(r.join("usr/bin/python3.15")).unwrap();
    // `_PyRuntime` starts with the cookie and PY_VERSION_HEX (3.15.2 final).
    let mut header = b"xdebugpy".to_vec();
    header.extend_from_slice(&0x030f02f0u64.to_le_bytes());
    let at: Vec<usize> = data
        .windows(header.len())
        .enumerate()
        .filter(|(_, w)| *w == header.as_slice())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "one _Py_DebugOffsets in python3.15");
    data[at[0] + 8..at[0] + 16].copy_from_slice(&0x031000a1u64.to_le_bytes());
    let name = format!("python3.16-{}", std::process::id());
    let host = r.join("opt/leaktrace").join(&name);
    std::fs::write(&host, &data).unwrap();
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let py = Python {
        label: "patched 3.16".into(),
        minor: 16,
        static_build: true,
        exe: Path::new("/opt/leaktrace").join(&name),
        chroot: Some(r.clone()),
    };
    let target = Proc::spawn(py.command().arg(py.fixture("py_leak.py")));
    target.stdout.wait_for("ready", T);
    let out = out_path("py-3.16.json");
    let mut tracer = attach(target.pid(), &["-o", out.to_str().unwrap()]);
    let line = tracer.stderr.wait_for("tracing native stacks only", T);
    target.signal(SIGUSR1);
    target.stdout.wait_for("done 1000", T);
    std::thread::sleep(Duration::from_millis(1300));
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    let _ = std::fs::remove_file(&host);
    assert_eq!(
        line.trim(),
        "leaktrace: warning: unsupported Python version 3.16 (leaktrace supports 3.8-3.15): tracing native stacks only"
    );
    let stderr = tracer.stderr.text();
    assert_eq!(
        stderr.lines().filter(|l| l.contains("Python")).count(),
        1,
        "exactly one line about Python: {stderr}"
    );
    assert!(!stderr.contains("recording Python frames"), "{stderr}");
    let report = read_json(&out);
    let top = top(&report);
    assert!(python_frames(top).is_empty(), "{top:#}");
    assert_eq!(functions(top).last().unwrap(), "malloc");
    // The 1000 leaked blocks (seen: 999 here and one under another native stack).
    assert!(top["live_allocs"].as_u64().unwrap() >= 990, "{top:#}");
}

/// `leaktrace run` inside a container (the sid root with its own mount namespace: `/proc`,
/// `/sys`, `/dev`, leaktrace's binary and the report folder mounted in, nothing left behind
/// when the namespace ends): Debian's 3.14 and 3.15, static and shared, from the first
/// allocation. (From the host, `run` of `chroot DIR python` would probe the host's C library,
/// which the chrooted program does not use.)
#[test]
fn run_inside_a_root_traces_3_14_and_3_15_from_the_first_allocation() {
    require_root();
    let bin = leaktrace_bin().canonicalize().unwrap();
    for py in every_python().into_iter().filter(|p| p.chroot.is_some()) {
        let label = &py.label;
        let r = py.chroot.clone().unwrap();
        let script = py.fixture("py_leak.py");
        let out = out_path(&format!("py-run-{}.json", file_label(label)));
        let out_dir = out.parent().unwrap().canonicalize().unwrap();
        for d in ["opt/leaktrace/bin", "opt/leaktrace/out"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let inside_out = format!(
            "/opt/leaktrace/out/{}",
            out.file_name().unwrap().to_str().unwrap()
        );
        let script_sh = format!(
            "set -e; R={r}; mount -t proc proc $R/proc; mount --rbind /sys $R/sys; \
             mount --rbind /dev $R/dev; mount --bind {bin_dir} $R/opt/leaktrace/bin; \
             mount --bind {out_dir} $R/opt/leaktrace/out; \
             exec chroot $R /opt/leaktrace/bin/{bin_name} run --duration 4 -o {inside_out} \
             -- {exe} {script} --now",
            r = r.display(),
            bin_dir = bin.parent().unwrap().display(),
            bin_name = bin.file_name().unwrap().to_str().unwrap(),
            out_dir = out_dir.display(),
            exe = py.exe.display(),
        );
        let mut tracer = Proc::spawn(
            Command::new("unshare")
                .args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(&script_sh),
        );
        let ready = tracer.stdout.wait_for("ready", T);
        let pid: i32 = ready.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        // The command goes on running after tracing stops; end it (we started it).
        // SAFETY: kill(2) on the command this test started (same PID namespace).
        unsafe { libc::kill(pid, 9) };
        let report = read_json(&out);
        check_leak_report(&report, label, Some(("main", "SITE:main_calls_leaky")));
        assert_eq!(top(&report)["live_allocs"], 1000, "{label}");
        assert_eq!(
            report["target"]["python"],
            format!("3.{}", py.minor),
            "{label}"
        );
    }
}

/// Python 3.15 builds have frame pointers (PEP 831), and so do extensions built with its
/// flags: a C extension's frames come out whole under the Python frame that called it, on
/// Debian's static and shared 3.15 alike (fixtures/py_ext_leak.c, built in the sid root).
#[test]
fn c_extension_frames_come_out_whole_on_3_15() {
    require_root();
    for py in every_python()
        .into_iter()
        .filter(|p| p.minor == 15 && p.chroot.is_some())
    {
        let label = &py.label;
        let r = py.chroot.clone().unwrap();
        let script = py.fixture("py_ext_leak_main.py");
        let dir = format!("/opt/leaktrace/ext-{}", std::process::id());
        std::fs::create_dir_all(r.join(dir.trim_start_matches('/'))).unwrap();
        std::fs::copy(
            root().join("tests/fixtures/py_ext_leak.c"),
            r.join(dir.trim_start_matches('/')).join("py_ext_leak.c"),
        )
        .unwrap();
        let status = Command::new("chroot")
            .arg(&r)
            .args(["sh", "-c"])
            .arg(format!(
                "cd {dir} && gcc $(python3.15-config --cflags) -shared -fPIC -o \
                 py_ext_leak$(python3.15-config --extension-suffix) py_ext_leak.c"
            ))
            .status()
            .unwrap();
        assert!(status.success(), "building the extension in the sid root");
        let target = Proc::spawn(py.command().arg(&script).env("PYTHONPATH", &dir));
        target.stdout.wait_for("ready", T);
        let out = out_path(&format!("py-ext-{}.json", file_label(label)));
        let mut tracer = attach(
            target.pid(),
            &["-o", out.to_str().unwrap(), "--min-age", "0.5"],
        );
        tracer.stderr.wait_for("recording Python frames", T);
        target.signal(SIGUSR1);
        target.stdout.wait_for("done", T);
        std::thread::sleep(Duration::from_millis(800));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        let _ = std::fs::remove_dir_all(r.join(dir.trim_start_matches('/')));
        let report = read_json(&out);
        let stack = top(&report);
        assert_eq!(
            python_frames(stack).last(),
            Some(&(
                "leaky_ext".to_string(),
                line_of("py_ext_leak_main.py", "SITE:ext_call")
            )),
            "{label}: {stack:#}"
        );
        assert_eq!(stack["live_allocs"], 1000, "{label}: {stack:#}");
        // Under the Python frame: the extension's method, its three calls, the allocator.
        let native: Vec<(String, u64)> = stack["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "native")
            .map(|f| {
                (
                    f["function"].as_str().unwrap().to_string(),
                    f["line"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let names: Vec<&str> = native.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            names,
            ["leak", "leak_a", "leak_b", "leak_c", "malloc"],
            "{label}: {native:?}"
        );
        for (function, marker) in [
            ("leak_a", "SITE:leak_a"),
            ("leak_b", "SITE:leak_b"),
            ("leak_c", "SITE:leak_c"),
        ] {
            let line = native.iter().find(|f| f.0 == function).unwrap().1;
            assert_eq!(
                line,
                line_of("py_ext_leak.c", marker),
                "{label}: {function}"
            );
        }
    }
}

/// Python frames of a stack, outermost first, as (function, file name, line).
fn python_frames_with_files(stack: &Value) -> Vec<(String, String, u64)> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "python")
        .map(|f| {
            let file = f["file"].as_str().unwrap_or("");
            (
                f["function"].as_str().unwrap().to_string(),
                Path::new(file)
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `NAME N jitted M` from py_jit_leak.py: (N, M).
fn jitted_counts(line: &str) -> (u64, u64) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert!(w.len() == 4 && w[2] == "jitted", "{line}");
    (w[1].parse().unwrap(), w[3].parse().unwrap())
}

/// The JIT (CPython 3.14+; compiled into Debian's builds, `--enable-experimental-jit=yes-off`
/// in their `CONFIG_ARGS`: off unless `PYTHON_JIT=1`), on Debian's 3.14 and 3.15, static and
/// shared, with `fixtures/py_jit_leak.py`: loops hot enough
/// for tier 2 (a trace at a loop's ~4096th backward jump), compiled to machine code. The
/// fixture says the JIT is on (`sys._jit.is_enabled()`) and how many of each site's objects
/// were made while its frame ran JIT code (`sys._jit.is_active()`); the test fails if either
/// is not so. What holds, and why (CPython's optimizer): the frames are the interpreter's own
/// `_PyInterpreterFrame`s, which JIT code pushes on the thread's chain (`_PUSH_FRAME` sets
/// `tstate->current_frame`), so every frame's function, qualified name and file are exact, and
/// so are its callers; `instr_ptr` is set by a `_SET_IP` kept before every micro-op that
/// escapes (calls out: `_BINARY_OP`, calls) and before `_PUSH_FRAME`, so an allocation made by
/// an escaping call (the bytes `*` of `leaky_loop` and `Registry.add`) is at its exact line,
/// while one made inside a micro-op that does not escape (`_BINARY_OP_ADD_UNICODE`'s
/// `PyUnicode_Concat` in `leaky_concat`) is at the line of the last `_SET_IP` before it: one
/// of its own function's lines, not necessarily the allocating one (seen: the loop's `for`
/// line, for exactly the objects made in JIT code).
///
/// Not covered: the tail-call interpreter (`--with-tail-call-interp`). Debian's 3.14 and 3.15
/// are GCC builds without it (`sysconfig`'s `Py_TAIL_CALL_INTERP` is 0), and no interpreter on
/// this machine has it.
#[test]
fn jit_compiled_code_keeps_its_frames_callers_and_lines() {
    require_root();
    let src = "py_jit_leak.py";
    let line = |marker: &str| line_of(src, marker);
    for py in every_python().into_iter().filter(|p| p.chroot.is_some()) {
        let label = &py.label;
        let mut cmd = py.command();
        cmd.env("PYTHON_JIT", "1");
        let target = Proc::spawn(cmd.arg(py.fixture(src)));
        let ready = target.stdout.wait_for("ready", T);
        // `jit AVAILABLE ENABLED`: a build without the JIT fails here, never passes unseen.
        assert!(
            !ready.contains(" jit False "),
            "{label}: this interpreter has no JIT compiled in (sys._jit.is_available() is False: built without --enable-experimental-jit): {ready}"
        );
        assert!(
            ready.trim_end().ends_with(" jit True True"),
            "{label}: PYTHON_JIT=1 did not turn the JIT on: {ready}"
        );
        let out = out_path(&format!("py-jit-{}.json", file_label(label)));
        let mut tracer = attach(
            target.pid(),
            &["-o", out.to_str().unwrap(), "--min-age", "0.5"],
        );
        tracer.stderr.wait_for("recording Python frames", T);
        target.signal(SIGUSR1);
        target.stdout.wait_for("done", T);
        std::thread::sleep(Duration::from_millis(800));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        let report = read_json(&out);
        let stacks = report["stacks"].as_array().unwrap();
        assert_eq!(report["totals"]["dropped"], 0, "{label}");
        // Every stack whose innermost Python frame is `function`: (stack, its frames).
        let from = |function: &str| -> Vec<(&Value, Vec<(String, String, u64)>)> {
            stacks
                .iter()
                .map(|s| (s, python_frames_with_files(s)))
                .filter(|(_, f)| f.last().is_some_and(|f| f.0 == function))
                .collect()
        };
        let allocs = |s: &Value| s["live_allocs"].as_u64().unwrap();
        // Escaping call sites: the leaf at its exact line, its callers at theirs, for every
        // object, those made in JIT code included.
        for (function, site, callers, printed) in [
            (
                "leaky_loop",
                "SITE:jit_loop",
                vec![("main", "SITE:main_calls_loop")],
                "leaky_loop ",
            ),
            (
                "Registry.add",
                "SITE:jit_call",
                vec![
                    ("main", "SITE:main_calls_hot_caller"),
                    ("hot_caller", "SITE:hot_caller_calls"),
                ],
                "Registry.add ",
            ),
        ] {
            let (made, jitted) = jitted_counts(&target.stdout.wait_for(printed, T));
            assert!(
                jitted >= made / 4,
                "{label}: {function}: only {jitted} of {made} objects made in JIT code"
            );
            let mut want: Vec<(String, String, u64)> = callers
                .iter()
                .map(|(f, m)| (f.to_string(), src.to_string(), line(m)))
                .collect();
            want.push((function.to_string(), src.to_string(), line(site)));
            let exact: u64 = from(function)
                .iter()
                .filter(|(_, f)| f.ends_with(&want))
                .map(|(s, _)| allocs(s))
                .sum();
            assert!(
                exact >= made,
                "{label}: {function}: {exact} of {made} objects at {want:?}: {:#?}",
                from(function)
                    .iter()
                    .map(|(s, f)| (allocs(s), f))
                    .collect::<Vec<_>>()
            );
        }
        // A micro-op that does not escape: function, file and caller exact; the line one of
        // the function's own.
        let (made, jitted) = jitted_counts(&target.stdout.wait_for("leaky_concat ", T));
        assert!(
            jitted >= made / 4,
            "{label}: leaky_concat: only {jitted} of {made} objects made in JIT code"
        );
        let def = line("def leaky_concat");
        let caller = (
            "main".to_string(),
            src.to_string(),
            line("SITE:main_calls_concat"),
        );
        let concat = from("leaky_concat");
        let mut total = 0;
        let mut at_site = 0;
        for (s, f) in &concat {
            let leaf = f.last().unwrap();
            assert_eq!(leaf.1, src, "{label}: {f:?}");
            assert!(
                (def..=line("END:leaky_concat")).contains(&leaf.2),
                "{label}: leaky_concat at line {} (outside the function): {f:?}",
                leaf.2
            );
            assert_eq!(f[f.len() - 2], caller, "{label}: {f:?}");
            total += allocs(s);
            if leaf.2 == line("SITE:jit_concat") {
                at_site += allocs(s);
            }
        }
        assert!(
            total >= made,
            "{label}: {total} of {made} leaky_concat objects"
        );
        eprintln!(
            "{label}: leaky_concat: {at_site} of {total} objects at the allocating line, {jitted} of {made} made in JIT code"
        );
    }
}

/// `--no-python` records no Python frames, but its native stacks still end at an interpreter
/// built without frame pointers (pyenv's, Debian's 3.11), as exact mode's do: interpreter
/// frames only at the root of each stack, never a walk past them into junk.
#[test]
fn no_python_native_stacks_end_at_the_interpreter() {
    require_root();
    let py = every_python()
        .into_iter()
        .find(|p| p.minor == 11 && !p.static_build && p.chroot.is_none())
        .expect("a shared 3.11 (pyenv)");
    let target = Proc::spawn(py.command().arg(py.fixture("py_threads.py")));
    target.stdout.wait_for("ready", T);
    let out = out_path(&format!("{}-no-python.json", file_label(&py.label)));
    let mut tracer = attach(
        target.pid(),
        &[
            "-o",
            out.to_str().unwrap(),
            "--min-age",
            "0.5",
            "--no-python",
        ],
    );
    tracer.stderr.wait_for(
        "--no-python: native stacks only, ending at the interpreter (it has no frame pointers)",
        T,
    );
    target.signal(SIGUSR1);
    target.stdout.wait_for("done", T);
    std::thread::sleep(Duration::from_millis(800));
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    let report = read_json(&out);
    let stacks = report["stacks"].as_array().unwrap();
    let mut reached = 0;
    for s in stacks {
        let frames = s["frames"].as_array().unwrap();
        assert!(frames.iter().all(|f| f["kind"] == "native"), "{s:#}");
        let in_interp: Vec<bool> = frames
            .iter()
            .map(|f| {
                f["module"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("libpython3.11")
            })
            .collect();
        // The interpreter's frames (one address, its inlined callers) are a prefix.
        let prefix = in_interp.iter().take_while(|&&b| b).count();
        assert!(in_interp[prefix..].iter().all(|&b| !b), "{s:#}");
        reached += usize::from(prefix > 0);
    }
    assert!(reached > 0, "no stack reached the interpreter: {stacks:#?}");
}
