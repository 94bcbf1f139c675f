//! Worker processes: `attach` on a gunicorn master or a uvicorn `--workers` supervisor traces
//! every worker, follows workers started later, stops tracing (and detaches from) workers that
//! exit, sums stacks across workers, and keeps them apart with `--per-process`.

use std::{
    os::unix::process::CommandExt,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const T: Duration = Duration::from_secs(60);

/// These tests run one at a time: on this kernel (6.18), probes of one process that another
/// tracer attaches or detaches at the same moment on the same functions can miss a process
/// forked right then (see `Tracer::forget_process`); the tests measure leaktrace, not that.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server started in its own process group, so that its workers die with it.
struct Server {
    proc: Proc,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let port = free_port();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let proc = Proc::spawn(
            Command::new(venv_python())
                .current_dir(root().join("tests/fixtures"))
                .args(&args)
                .process_group(0),
        );
        wait_until_serving(&proc, port);
        Server { proc, port }
    }

    fn uvicorn_with_two_workers() -> Server {
        Server::start(&[
            "-m",
            "uvicorn",
            "fastapi_leak:app",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--workers",
            "2",
            "--log-level",
            "warning",
        ])
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a server this test started.
        unsafe { libc::kill(-(self.pid() as i32), SIGKILL) };
    }
}

/// `/proc/PID/task/*/children`, recursively.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
        {
            let text = std::fs::read_to_string(task.unwrap().path().join("children"));
            for c in text.unwrap_or_default().split_whitespace() {
                let c: u32 = c.parse().unwrap();
                out.push(c);
                queue.push(c);
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether leaktrace attaches with uprobe_multi links in this run (the kernel here has them;
/// `LEAKTRACE_UPROBE_MULTI=0`, inherited by leaktrace, turns them off).
fn uprobe_multi() -> bool {
    !std::env::var("LEAKTRACE_UPROBE_MULTI").is_ok_and(|v| v == "0")
}

/// BPF link file descriptors (one per perf-event probe, or per uprobe_multi link) held by `pid`.
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|l| l.to_string_lossy().contains("bpf_link"))
        .count()
}

/// Sends `n` requests to `path` from `clients` threads at once; bounded by `T`.
fn load(port: u16, path: &str, n: usize, clients: usize) {
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let path = path.to_string();
            thread::spawn(move || {
                for _ in (c..n).step_by(clients) {
                    assert!(started.elapsed() < T, "load took too long");
                    // A worker that reached --max-requests may reset connections it accepted
                    // while shutting down (gunicorn's behaviour, traced or not): retry those.
                    let mut tries = 0;
                    let status = loop {
                        match http_get(port, &path) {
                            Ok(status) => break status,
                            Err(e) if tries < 5 => {
                                tries += 1;
                                eprintln!("retrying {path}: {e}");
                                thread::sleep(Duration::from_millis(50));
                            }
                            Err(e) => panic!("{path}: {e}"),
                        }
                    };
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Waits until `needle` appears on `n` lines of the tracer's stderr.
fn wait_lines(tracer: &Proc, needle: &str, n: usize) {
    let deadline = Instant::now() + T;
    while count(&tracer.stderr.text(), needle) < n {
        assert!(
            Instant::now() < deadline,
            "waited for {n} lines with {needle:?}; got:\n{}",
            tracer.stderr.text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn leak_stacks(report: &Value) -> Vec<&Value> {
    let line = line_of("fastapi_leak.py", "SITE:endpoint");
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            python_frames(s).last() == Some(&("leak_endpoint".to_string(), line))
                && functions(s).last().map(String::as_str) == Some("malloc")
        })
        .collect()
}

fn live_allocs(stacks: &[&Value]) -> u64 {
    stacks
        .iter()
        .map(|s| s["live_allocs"].as_u64().unwrap())
        .sum()
}

/// GET /leak; returns (worker pid, payloads that worker keeps), retrying resets.
fn leak_once(port: u16) -> (u32, u64) {
    use std::io::{Read, Write};
    for _ in 0..5 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = write!(
            s,
            "GET /leak HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
        let mut resp = String::new();
        // A worker that reached --max-requests may reset connections it accepted while
        // shutting down (gunicorn's behaviour, traced or not): retry those.
        if s.read_to_string(&mut resp).is_err() || !resp.starts_with("HTTP/1.1 200") {
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        let body: Value = serde_json::from_str(&resp[resp.find("\r\n\r\n").unwrap() + 4..])
            .unwrap_or_else(|e| panic!("{e}: {resp}"));
        return (
            body["pid"].as_u64().unwrap() as u32,
            body["kept"].as_u64().unwrap(),
        );
    }
    panic!("GET /leak failed 5 times");
}

/// Per-process stacks at leak_endpoint: live payloads by worker pid.
fn leaks_by_pid(report: &Value) -> std::collections::BTreeMap<u32, u64> {
    let mut out = std::collections::BTreeMap::new();
    for s in leak_stacks(report) {
        let root = &s["frames"][0];
        assert_eq!(root["kind"], "process", "{s}");
        let pid: u32 = root["function"].as_str().unwrap()["pid ".len()..]
            .parse()
            .unwrap();
        *out.entry(pid).or_default() += s["live_allocs"].as_u64().unwrap();
    }
    out
}

#[test]
fn gunicorn_workers_restarted_after_max_requests_are_followed() {
    require_root();
    let _serial = one_at_a_time();
    let server = Server::start(&[
        "-m",
        "gunicorn",
        "fastapi_leak:app",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "-w",
        "2",
        "-b",
        "127.0.0.1:{port}",
        "--max-requests",
        "40",
        "--log-level",
        "warning",
    ]);
    let master = server.pid();
    let first_workers = descendants(master);
    assert_eq!(first_workers.len(), 2, "gunicorn has two workers");
    let out = out_path("gunicorn.json");
    let tracer = attach(
        master,
        &[
            "-o",
            out.to_str().unwrap(),
            "--min-age",
            "0.5",
            "--interval",
            "2",
            "--per-process",
            // Every worker generation brings thousands of distinct Python stacks of its own
            // (imports after the fork): over the test's ~6 generations the default 8192 filled
            // before the last replacement leaked, leaving its leak native-only (the report said
            // so: "found the Python stack map full ... raise --max-python-stacks").
            "--max-python-stacks",
            "65536",
        ],
    );
    wait_lines(&tracer, "recording Python frames", 3);
    // Master + 2 workers, each with the same probes: with uprobe_multi, one link per program
    // and binary (the C library: alloc_enter, alloc_return, free, mmap, munmap, mremap); with
    // perf-event uprobes (LEAKTRACE_UPROBE_MULTI=0), one per probe (at least malloc, calloc,
    // realloc, free and the mmap family, entries and returns).
    let per_process = bpf_links(tracer.pid()) / 3;
    assert_eq!(bpf_links(tracer.pid()), per_process * 3);
    if uprobe_multi() {
        assert_eq!(per_process, 6, "uprobe_multi links per process");
    } else {
        assert!(per_process >= 12, "{per_process} probes per process");
    }

    // Every worker is replaced after 40 requests. Load (one client at a time, so every
    // request's worker and its count of kept payloads are known) until two workers were
    // replaced and a worker started after attach has kept 15-34 payloads; at most 1000.
    let mut kept: std::collections::BTreeMap<u32, u64> = Default::default();
    let mut sent = 0;
    loop {
        let stderr = tracer.stderr.text();
        let new_worker_busy = kept
            .iter()
            .any(|(pid, n)| !first_workers.contains(pid) && (15..35).contains(n));
        if count(&stderr, "exited after") >= 2 && new_worker_busy {
            break;
        }
        assert!(sent < 1000, "after {sent} requests:\n{stderr}");
        let (pid, n) = leak_once(server.port);
        kept.insert(pid, n);
        sent += 1;
        // A new worker's first requests come before leaktrace publishes its threads (~100 ms):
        // pace the load so that most do not.
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(1500));
    let stderr = tracer.stderr.text();
    // Each replacement worker is followed.
    assert!(
        count(&stderr, "following worker pid") >= 2 + count(&stderr, "exited after"),
        "restarted workers are followed:\n{stderr}"
    );
    // A worker that reached its limit may still be shutting down: wait until the set of
    // workers is stable and every one of them is followed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let live_workers = loop {
        let live = descendants(master);
        thread::sleep(Duration::from_millis(500));
        let followed = tracer.stderr.text();
        if descendants(master) == live
            && live
                .iter()
                .all(|p| followed.contains(&format!("following worker pid {p} ")))
        {
            break live;
        }
        assert!(Instant::now() < deadline, "workers {live:?}:\n{followed}");
    };
    let mut tracer = tracer;
    tracer.signal(SIGINT);
    // Every replacement worker imported the app while traced: thousands of stacks to resolve,
    // and ~22 probes per worker to close (each close waits for the kernel, one at a time).
    assert_eq!(
        tracer.wait(Duration::from_secs(180)),
        0,
        "{}",
        tracer.stderr.text()
    );
    let report = read_json(&out);
    let pids = report["target"]["pids"].as_array().unwrap();
    assert!(pids.len() >= 5, "master, 2 workers, replacements: {pids:?}");
    let notes = report["notes"].to_string();
    assert!(notes.contains("exited after"), "{notes}");
    // The live workers' payloads, worker by worker; nothing of the exited workers, whose
    // memory went with them. A thread's first ~100 ms have no Python stack (counted).
    let unknown = report["counters"]["python_thread_unknown"]
        .as_u64()
        .unwrap();
    let found = leaks_by_pid(&report);
    for pid in found.keys() {
        assert!(live_workers.contains(pid), "stacks of exited worker {pid}");
    }
    for pid in &live_workers {
        let want = kept.get(pid).copied().unwrap_or(0);
        let got = found.get(pid).copied().unwrap_or(0);
        assert!(
            got <= want && got + unknown >= want,
            "worker {pid}: {got} payloads found, {want} kept ({unknown} on unknown threads)"
        );
    }
    let replaced_busy = live_workers
        .iter()
        .any(|p| !first_workers.contains(p) && found.get(p).copied().unwrap_or(0) > 0);
    assert!(
        replaced_busy,
        "a worker started while traced has its leak attributed: {found:?}, kept {kept:?}\n{}",
        tracer.stderr.text()
    );
}

#[test]
fn uvicorn_workers_are_summed_and_kept_apart_per_process() {
    require_root();
    let _serial = one_at_a_time();
    let server = Server::uvicorn_with_two_workers();
    let children = descendants(server.pid());
    for (name, extra) in [("summed", &[][..]), ("per-process", &["--per-process"][..])] {
        let out = out_path(&format!("uvicorn-workers-{name}.json"));
        let mut args = vec!["-o", out.to_str().unwrap(), "--min-age", "0.5"];
        args.extend_from_slice(extra);
        let mut tracer = attach(server.pid(), &args);
        // The supervisor and each of its children (workers, multiprocessing's helpers).
        wait_lines(&tracer, "recording Python frames", 1 + children.len());
        // Warm up under the same concurrency: every worker grows the thread pool that serves
        // sync endpoints, and leaktrace publishes those threads (a thread's first ~100 ms have
        // no Python stack), so every payload below has its Python stack.
        load(server.port, "/ok", 300, 4);
        thread::sleep(Duration::from_millis(300));
        load(server.port, "/leak", 200, 4);
        thread::sleep(Duration::from_millis(800));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
        let report = read_json(&out);
        let pids: Vec<u64> = report["target"]["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(pids.len(), 1 + children.len(), "{pids:?}");
        let stacks = leak_stacks(&report);
        // The payloads of every worker, at their line. A thread's allocations in its first
        // ~100 ms, before leaktrace publishes it, have native stacks only (counted): the
        // thread pool may still grow a little under this load.
        let attributed = live_allocs(&stacks);
        // Allocations whose return was missed are counted as dropped.
        let unknown = report["counters"]["python_thread_unknown"]
            .as_u64()
            .unwrap()
            + report["totals"]["dropped"].as_u64().unwrap();
        assert!(attributed <= 200, "{report:#}");
        assert!(
            attributed == 200 || (attributed >= 180 && unknown > 0),
            "{attributed} of 200 payloads attributed: {report:#}"
        );
        let roots: Vec<&Value> = stacks.iter().map(|s| &s["frames"][0]).collect();
        if extra.is_empty() {
            assert!(
                roots.iter().all(|f| f["kind"] != "process"),
                "summed stacks have no process frame"
            );
            // Summed across the workers (the per-process run shows that both served some).
            let largest = stacks
                .iter()
                .map(|s| s["live_allocs"].as_u64().unwrap())
                .max()
                .unwrap();
            assert!(
                largest * 10 >= attributed * 9,
                "{largest} of {attributed} in one stack"
            );
        } else {
            let mut seen: Vec<u64> = roots
                .iter()
                .map(|f| {
                    assert_eq!(f["kind"], "process", "{f}");
                    let pid: u64 = f["function"].as_str().unwrap()["pid ".len()..]
                        .parse()
                        .unwrap();
                    assert!(children.contains(&(pid as u32)), "{pid} is a worker");
                    pid
                })
                .collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), stacks.len(), "one stack per worker");
            assert!(
                seen.len() >= 2,
                "4 concurrent clients reach both workers: {seen:?}"
            );
        }
    }
}

#[test]
fn no_children_traces_the_given_process_only() {
    require_root();
    let _serial = one_at_a_time();
    let server = Server::uvicorn_with_two_workers();
    let out = out_path("uvicorn-no-children.json");
    let mut tracer = attach(
        server.pid(),
        &[
            "-o",
            out.to_str().unwrap(),
            "--no-children",
            "--duration",
            "2",
        ],
    );
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    let report = read_json(&out);
    assert_eq!(report["target"]["pids"], serde_json::json!([server.pid()]));
    assert!(!tracer.stderr.text().contains("following worker"));
}

/// Issue 12, `attach --heap` on uvicorn `--workers 2`: a census of the supervisor and of each
/// worker (at the start and the end), each worker's `fastapi_leak:REQUEST_LOG` with exactly the
/// payloads that worker kept; the top level sums them, with `--per-process` keeping the owners
/// apart (`pid N fastapi_leak:REQUEST_LOG`); the summary names the pids censused.
#[test]
fn heap_censuses_each_uvicorn_worker() {
    require_root();
    let _serial = one_at_a_time();
    let server = Server::uvicorn_with_two_workers();
    let workers: Vec<u32> = descendants(server.pid())
        .into_iter()
        .filter(|&p| {
            let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
            !cmd.contains("resource_tracker")
        })
        .collect();
    assert_eq!(workers.len(), 2, "uvicorn has two workers: {workers:?}");
    let children = descendants(server.pid()).len();
    // Payloads kept by each worker, as it says (the lists outlive the runs).
    let mut kept: std::collections::BTreeMap<u32, u64> = workers.iter().map(|&w| (w, 0)).collect();
    for (run, (name, extra)) in [("per-process", &["--per-process"][..]), ("summed", &[][..])]
        .into_iter()
        .enumerate()
    {
        let sent = 40 * (run as u64 + 1);
        let out = out_path(&format!("uvicorn-heap-{name}.json"));
        let mut args = vec!["--heap", "-o", out.to_str().unwrap(), "--min-age", "0.5"];
        args.extend_from_slice(extra);
        let mut tracer = attach(server.pid(), &args);
        wait_lines(&tracer, "recording Python frames", 1 + children);
        // The first census of each worker.
        for w in &workers {
            wait_lines(&tracer, &format!("s (pid {w})"), 1);
        }
        for _ in 0..40 {
            let (pid, n) = leak_once(server.port);
            kept.insert(pid, n);
        }
        thread::sleep(Duration::from_millis(300));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
        let report = read_json(&out);
        let h = &report["heap"];
        assert_eq!(h["schema"], "leaktrace-heap/v1", "{name}");
        let procs = h["processes"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {h:#}"));
        let mut censused: Vec<u32> = procs
            .iter()
            .map(|p| p["target"]["pids"][0].as_u64().unwrap() as u32)
            .collect();
        censused.sort_unstable();
        let mut want = vec![server.pid()];
        want.extend(&workers);
        want.sort_unstable();
        assert_eq!(censused, want, "{name}: the supervisor and each worker");
        let mut total = 0;
        for &w in &workers {
            let p = procs.iter().find(|p| p["target"]["pids"][0] == w).unwrap();
            assert!(
                p["censuses"].as_u64().unwrap() >= 2,
                "{name}: {w}: {}",
                p["censuses"]
            );
            let log = p["owners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["path"] == "fastapi_leak:REQUEST_LOG")
                .unwrap_or_else(|| panic!("{name}: no REQUEST_LOG in {w}: {:#}", p["owners"]));
            assert_eq!(log["len"], kept[&w], "{name}: worker {w}");
            total += kept[&w];
            if !extra.is_empty() {
                let top = h["owners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["path"] == format!("pid {w} fastapi_leak:REQUEST_LOG"))
                    .unwrap_or_else(|| panic!("{name}: {:#}", h["owners"]));
                assert_eq!(top["len"], kept[&w], "{name}: worker {w}");
            }
        }
        assert_eq!(total, sent, "{name}: {kept:?}");
        if extra.is_empty() {
            let top = h["owners"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["path"] == "fastapi_leak:REQUEST_LOG")
                .unwrap_or_else(|| panic!("{name}: {:#}", h["owners"]));
            // The workers' lists, summed (the supervisor keeps no payload).
            assert_eq!(top["len"], sent, "{name}");
        }
        let summary = tracer.stdout.text();
        let pids: Vec<String> = want.iter().map(u32::to_string).collect();
        assert!(
            summary.contains(&format!("of 3 processes (pids {})", pids.join(", "))),
            "{name}: {summary}"
        );
    }
}
