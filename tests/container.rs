//! A Python target in its own mount and PID namespaces, its interpreter reachable only inside
//! its own root: leaktrace runs on the host with the host PID and installs nothing inside.
//! Its frames resolve to the paths inside, and its heap census (attach's, and `leaktrace heap`)
//! reads the interpreter found through `/proc/PID/root`.

use std::{process::Command, time::Duration};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const T: Duration = Duration::from_secs(60);

#[test]
fn python_in_a_container_is_traced_from_the_host() {
    require_root();
    for (label, py) in interpreters()
        .into_iter()
        .filter(|(l, _)| l.contains("3.8.") || l.contains("3.12."))
    {
        let pyroot = py.parent().unwrap().parent().unwrap().to_path_buf();
        let rootdir = out_path(&format!("container-root-{}", label.replace(' ', "_")));
        let _ = std::fs::remove_dir_all(&rootdir);
        std::fs::create_dir_all(&rootdir).unwrap();
        let unshare = Proc::spawn(
            Command::new("unshare")
                .args(["--mount", "--pid", "--fork", "sh"])
                .arg(root().join("tests/fixtures/container.sh"))
                .env("ROOTDIR", &rootdir)
                .env("PYROOT", &pyroot)
                .env("SCRIPT", root().join("tests/fixtures/py_leak.py")),
        );
        let ready = unshare.stdout.wait_for("ready", T);
        assert_eq!(
            ready.trim(),
            "ready 1",
            "{label}: the script is PID 1 in its namespace"
        );
        // The host PID of the script: unshare's only child.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.pid())).unwrap();
        let pid: u32 = children.trim().parse().expect("one child");
        assert!(
            !std::path::Path::new("/opt/py").exists(),
            "the interpreter path exists only inside"
        );
        let out = out_path(&format!("container-{}.json", label.replace(' ', "_")));
        let mut tracer = attach(pid, &["--min-age", "0.5", "-o", out.to_str().unwrap()]);
        tracer.stderr.wait_for("recording Python frames", T);
        // The first heap census (on a thread of its own) before the leak: the growth between
        // it and the last is then the whole leak.
        tracer.stderr.wait_for("leaktrace: heap census 1:", T);
        // SAFETY: kill(2) on a process this test started (through unshare).
        unsafe { libc::kill(pid as i32, SIGUSR1) };
        unshare.stdout.wait_for("done 1000", T);
        // Let every allocation pass --min-age.
        std::thread::sleep(Duration::from_millis(800));
        tracer.signal(SIGINT);
        assert_eq!(tracer.wait(T), 0, "{label}: {}", tracer.stderr.text());
        let report = read_json(&out);
        let top = &report["stacks"][0];
        let frames: Vec<&Value> = top["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "python")
            .collect();
        let leaf = frames.last().expect("python frames");
        assert_eq!(leaf["function"], "leaky", "{label}: {top:#}");
        assert_eq!(
            leaf["file"], "/work/app.py",
            "{label}: the path inside the container"
        );
        assert_eq!(
            leaf["line"].as_u64(),
            Some(line_of("py_leak.py", "SITE:leaky")),
            "{label}"
        );
        assert_eq!(top["live_allocs"], 1000, "{label}: {top:#}");
        // attach's heap censuses (on by default) read the interpreter inside the container:
        // the last one names the global holding the 1000 leaked 10 KiB strings.
        let heap = &report["heap"];
        let owner = heap["owners"]
            .as_array()
            .unwrap_or_else(|| panic!("{label}: no heap member: {}", tracer.stderr.text()))
            .iter()
            .find(|o| o["path"] == "__main__:LEAKED")
            .unwrap_or_else(|| panic!("{label}: no __main__:LEAKED owner in {:#}", heap["owners"]));
        assert_eq!(owner["type"], "list", "{label}");
        assert_eq!(owner["len"], 1000, "{label}");
        assert!(
            owner["retained_bytes"].as_u64().unwrap() >= 1000 * 10240,
            "{label}: {owner}"
        );
        assert!(
            owner["retained_growth"].as_i64().unwrap() >= 1000 * 10240,
            "{label}: the leak happened between the first and the last census: {owner}"
        );
        // And `leaktrace heap` on its own, from the host.
        let census = out_path(&format!("container-heap-{}.json", label.replace(' ', "_")));
        let mut heap = leaktrace(&[
            "heap",
            &pid.to_string(),
            "--format",
            "json",
            "-o",
            census.to_str().unwrap(),
        ]);
        assert_eq!(heap.wait(T), 0, "{label}: {}", heap.stderr.text());
        let r = read_json(&census);
        assert_eq!(r["complete"], true, "{label}: {:?}", r["incomplete_reason"]);
        let owner = r["owners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["path"] == "__main__:LEAKED")
            .unwrap_or_else(|| panic!("{label}: no __main__:LEAKED owner in {:#}", r["owners"]));
        assert_eq!(owner["len"], 1000, "{label}");
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, 9) };
    }
}
