//! `--mode growth`: resident pages by stack from page faults, with no uprobe attached.

use std::{process::Command, time::Duration};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const T: Duration = Duration::from_secs(60);
const PAGE: u64 = 4096;

/// Starts `fixtures/growth.c`, traces it in growth mode while it works, returns the report.
fn trace_growth_fixture(out: &str) -> (Value, String) {
    require_root();
    let fixture = Proc::spawn(&mut Command::new(fixture("growth", &[])));
    fixture.stdout.wait_for("ready", T);
    let out = out_path(out);
    let mut tracer = attach(
        fixture.pid(),
        &[
            "--mode",
            "growth",
            "--min-age",
            "0",
            "--format",
            "json",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    (read_json(&out), tracer.stderr.text())
}

/// Pages kept by the one stack whose innermost function is `site`, and that frame's line.
fn pages_at(report: &Value, site: &str) -> Option<(u64, u64)> {
    let stacks = stacks_from(report, site, &["[page fault]"]);
    assert!(stacks.len() <= 1, "{site}: {stacks:#?}");
    let s = stacks.first()?;
    let bytes = s["live_bytes"].as_u64().unwrap();
    let pages = s["live_allocs"].as_u64().unwrap();
    assert_eq!(bytes, pages * PAGE, "{s:#}");
    let frames = s["frames"].as_array().unwrap();
    Some((
        pages,
        frames[frames.len() - 2]["line"].as_u64().unwrap_or(0),
    ))
}

#[test]
fn c_fixture_reports_exactly_the_pages_touched_and_kept_per_site() {
    let (report, stderr) = trace_growth_fixture("growth-fixture.json");
    assert_eq!(report["mode"], "growth");
    assert!(
        stderr.contains("tracepoints (no uprobes)"),
        "progress line: {stderr}"
    );
    let line = |m: &str| line_of("growth.c", &format!("SITE:{m}"));
    // Exact page counts: each page is one first-touch fault; unmap, madvise, the lowered
    // break and mremap release or move exactly the pages of their ranges.
    for (site, pages) in [
        ("touch_mmap", 64 - 16 - 8),
        ("touch_malloc", 256),
        ("touch_remap", 16 - 8),
        ("touch_brk", 64 - 32),
        ("touch_huge", 2),
    ] {
        assert_eq!(
            pages_at(&report, site),
            Some((pages, line(site))),
            "{site}: {:#}",
            report["stacks"]
        );
    }
    // Unmapped, freed (glibc unmaps big blocks) and file-backed pages are not growth.
    for site in ["touch_unmapped", "touch_freed", "read_file"] {
        assert_eq!(pages_at(&report, site), None, "{site}");
    }
    let counters = &report["counters"];
    assert!(counters["page_fault_file_backed"].as_u64().unwrap() >= 1);
    assert_eq!(counters["pages_moved"].as_u64(), Some(16));
    // 16 + 32 unmapped, 8 madvised, 256 (+1 header) freed, 8 after the move, 32 below brk.
    assert!(counters["pages_released"].as_u64().unwrap() >= 16 + 32 + 8 + 256 + 8 + 32);
    assert_eq!(report["totals"]["dropped"], 0);
    // touch_huge's two faults (in a MADV_HUGEPAGE mapping) may each map a 2 MiB huge page
    // unless THP is `never`: counted, and said in a note.
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let maybe_huge = counters["page_fault_maybe_huge"].as_u64().unwrap();
    if !thp.contains("[never]") {
        assert!(maybe_huge >= 2, "{counters:#}");
        assert!(report["notes"]
            .to_string()
            .contains("transparent huge pages"));
        assert_eq!(report["complete"], false);
    } else {
        assert_eq!(maybe_huge, 0, "{counters:#}");
    }
    let notes = report["notes"].as_array().unwrap();
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .contains("pages faulted in before attaching are not counted"),
        "{notes:?}"
    );
}

/// What a BPF perf-event link is attached to, asked of the kernel itself
/// (`BPF_OBJ_GET_INFO_BY_FD`): Debian 12's bpftool (7.1) prints no event details for links,
/// and `bpftool perf show` only sees perf-event file descriptors, which leaktrace closes
/// once the link holds the event. Returns (bpf_perf_event_type, tracepoint name).
fn perf_link_target(link_id: u64) -> (u32, String) {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let mut attr = [0u64; 16];
    attr[0] = link_id; // link_id (u32), next_id = 0, open_flags = 0
                       // SAFETY: attr is a zeroed bpf_attr-sized buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_GET_FD_BY_ID,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "link {link_id}: {}",
        std::io::Error::last_os_error()
    );
    let mut name = [0u8; 256];
    let mut info = [0u64; 32];
    // struct bpf_link_info: type, id, prog_id (u32 each), then the union at byte 16;
    // perf_event: type (u32) at 16, and for a tracepoint tp_name (u64) at 24, name_len at 32.
    info[3] = name.as_mut_ptr() as u64;
    info[4] = name.len() as u64;
    let mut attr = [0u64; 16];
    attr[0] = fd as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr points at `info`, which points at `name`; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "link {link_id}: {err}");
    let link_type = info[0] as u32;
    assert_eq!(
        link_type, 7,
        "link {link_id} is not a perf-event link (type {link_type})"
    );
    let event_type = info[2] as u32;
    let len = name.iter().position(|&b| b == 0).unwrap_or(0);
    (
        event_type,
        String::from_utf8_lossy(&name[..len]).into_owned(),
    )
}

/// BPF link ids held open by process `pid`, from its fdinfo.
fn links_of(pid: u32) -> Vec<u64> {
    let mut links = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("link_id:") {
                links.push(id.trim().parse().unwrap());
            }
        }
    }
    links
}

/// BPF program ids held open by process `pid`, from its fdinfo.
fn progs_of(pid: u32) -> Vec<u64> {
    let mut progs = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        if text.contains("link_id") {
            continue;
        }
        for line in text.lines() {
            if let Some(id) = line.strip_prefix("prog_id:") {
                progs.push(id.trim().parse().unwrap());
            }
        }
    }
    progs
}

fn exists(kind: &str, id: u64) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
        .output()
        .expect("bpftool runs")
        .status
        .success()
}

#[test]
fn growth_mode_attaches_no_uprobe_and_leaves_nothing_after_sigkill() {
    require_root();
    let fixture = Proc::spawn(&mut Command::new(fixture("growth", &[])));
    fixture.stdout.wait_for("ready", T);
    let out = out_path("growth-killed.json");
    let mut tracer = attach(
        fixture.pid(),
        &["--mode", "growth", "-o", out.to_str().unwrap()],
    );
    let links = links_of(tracer.pid());
    // Two page-fault tracepoints and seven syscall tracepoints, nothing else: no uprobe.
    const BPF_PERF_EVENT_TRACEPOINT: u32 = 5;
    let mut targets: Vec<String> = links
        .iter()
        .map(|id| {
            let (kind, name) = perf_link_target(*id);
            assert_eq!(
                kind, BPF_PERF_EVENT_TRACEPOINT,
                "link {id} ({name}) is not a tracepoint"
            );
            name
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "page_fault_kernel",
            "page_fault_user",
            "sys_enter_brk",
            "sys_enter_madvise",
            "sys_enter_mmap",
            "sys_enter_mremap",
            "sys_enter_munmap",
            "sys_exit_brk",
            "sys_exit_mremap"
        ]
    );
    assert!(links.iter().all(|id| exists("link", *id)));
    let progs = progs_of(tracer.pid());
    assert!(!progs.is_empty());
    tracer.signal(9);
    tracer.wait(T);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while links.iter().any(|id| exists("link", *id))
        || progs.iter().any(|prog| exists("prog", *prog))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "links {links:?} / programs {progs:?} remain after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn python_list_leak_is_named_among_the_top_growing_stacks() {
    require_root();
    let (report, _) = trace_list_leak("growth-python-list.json", &["--mode", "growth"]);
    assert_eq!(report["mode"], "growth");
    // 2000 objects of 10 KiB: ~20 MB of pages first touched while copying into them.
    let leaked = 2000 * 10240;
    let live = report["totals"]["live_bytes"].as_u64().unwrap();
    assert!(live >= leaked * 9 / 10, "live {live} < 90% of {leaked}");
    let mut stacks: Vec<&Value> = report["stacks"].as_array().unwrap().iter().collect();
    stacks.sort_by(|a, b| {
        let g = |s: &Value| s["growth_bytes_per_s"].as_f64().unwrap_or(f64::MIN);
        g(b).total_cmp(&g(a))
    });
    let top: Vec<&Value> = stacks.into_iter().take(3).collect();
    let leaky: Vec<&&Value> = top
        .iter()
        .filter(|s| python_frames(s).last().map(|f| f.0.as_str()) == Some("leaky"))
        .collect();
    assert!(!leaky.is_empty(), "leaky not among {top:#?}");
    let s = leaky[0];
    assert_eq!(functions(s).last().unwrap(), "[page fault]");
    assert!(s["growth_bytes_per_s"].as_f64().unwrap() > 1e5, "{s:#}");
    // The pages are split by the native frame that touched them first (malloc writing a
    // chunk header, memcpy filling the object): all of them lead to `leaky`.
    let by_leaky: u64 = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| python_frames(s).last().map(|f| f.0.as_str()) == Some("leaky"))
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        by_leaky >= leaked * 9 / 10,
        "{by_leaky} of {leaked} under leaky"
    );
}
