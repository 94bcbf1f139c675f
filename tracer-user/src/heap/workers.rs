//! The processes a census of one process does not see: the children running the same
//! interpreter (uvicorn's and gunicorn's workers, a multiprocessing pool), multiprocessing's
//! helpers left out (`leaktrace heap --per-process`, `attach --heap` on a worker tree).

/// Whether `pid` is one of multiprocessing's helpers (they hold no application objects).
pub fn is_multiprocessing_helper(pid: u32) -> bool {
    let cmd = cmdline(pid);
    ["resource_tracker", "semaphore_tracker", "forkserver"]
        .iter()
        .any(|h| cmd.contains(h))
}

/// `/proc/PID/cmdline`, its arguments joined by spaces (empty if it cannot be read).
pub fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|a| !a.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Child processes running the same executable (uvicorn's and gunicorn's workers, a
/// multiprocessing pool), multiprocessing's helpers left out: each has a heap of its own,
/// which a census of `pid` does not see.
pub fn workers(pid: u32) -> Vec<u32> {
    let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let Some(own) = exe(pid) else {
        return Vec::new();
    };
    let me = std::process::id();
    crate::target::process::descendants(pid, me, 256)
        .into_iter()
        .filter(|&c| exe(c).as_ref() == Some(&own))
        .filter(|&c| !is_multiprocessing_helper(c))
        .collect()
}

pub(super) fn worker_line(pid: u32, workers: &[u32]) -> Option<String> {
    let first = *workers.first()?;
    let shown: Vec<String> = workers.iter().take(8).map(u32::to_string).collect();
    let more = if workers.len() > 8 { ", ..." } else { "" };
    Some(format!(
        "leaktrace: heap: process {pid} has {} child process{} running the same interpreter ({}{more}), each with a heap of its own that this census does not read: `leaktrace heap {pid} --per-process` takes a census of each, `leaktrace heap {first}` of one",
        workers.len(),
        if workers.len() == 1 { "" } else { "es" },
        shown.join(", ")
    ))
}

#[cfg(test)]
mod worker_tests {
    #[test]
    fn the_worker_line_names_them_and_the_next_command() {
        assert_eq!(super::worker_line(10, &[]), None);
        let one = super::worker_line(10, &[11]).unwrap();
        assert!(one.contains("1 child process running") && one.contains("`leaktrace heap 11`"));
        assert!(one.contains("`leaktrace heap 10 --per-process` takes a census of each"));
        let many: Vec<u32> = (11..21).collect();
        let line = super::worker_line(10, &many).unwrap();
        assert!(
            line.contains("10 child processes")
                && line.contains("(11, 12, 13, 14, 15, 16, 17, 18, ...)")
        );
    }
}
