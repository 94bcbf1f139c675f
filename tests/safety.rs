//! Tracing must not change what the target does: same results, no failed request, no crash.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use leaktrace_tests::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn a_traced_program_computes_the_same_checksum() {
    require_root();
    let fixture = fixture("checksum", &[]);
    let plain = Command::new(&fixture).output().unwrap();
    assert!(plain.status.success());
    let expected = String::from_utf8_lossy(&plain.stdout).to_string();
    assert!(expected.starts_with("checksum "), "{expected}");
    let out = out_path("checksum.json");
    let mut traced = leaktrace(&[
        "run",
        "--min-age",
        "0",
        "-o",
        out.to_str().unwrap(),
        "--",
        fixture.to_str().unwrap(),
    ]);
    assert_eq!(traced.wait(T), 0, "{}", traced.stderr.text());
    assert_eq!(
        traced.stdout.text().lines().next().unwrap_or(""),
        expected.trim()
    );
    // And it was really traced: every allocator entry point saw calls.
    let report = read_json(&out);
    assert!(
        report["totals"]["allocs_seen"].as_u64().unwrap() >= 20000,
        "{}",
        report["totals"]
    );
}

#[test]
fn a_hundred_attach_detach_cycles_on_a_loaded_server() {
    require_root();
    let (mut server, port) = start_uvicorn();
    // Load on loopback for as long as the cycles run (bounded: at most 10 minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                match http_get(port, "/ok") {
                    Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let out = out_path("cycles.json");
    let pid = server.pid().to_string();
    for cycle in 0..100 {
        let mut tracer = leaktrace(&[
            "attach",
            &pid,
            "--duration",
            "0.2",
            "--interval",
            "100",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(tracer.wait(T), 0, "cycle {cycle}: {}", tracer.stderr.text());
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        server.is_running(),
        "the server survived 100 attach/detach cycles"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) > 100, "the load ran throughout");
    assert_eq!(http_get(port, "/ok").unwrap(), 200);
}
