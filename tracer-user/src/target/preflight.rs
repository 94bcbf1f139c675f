//! Checks made before touching the kernel, each ending in one actionable line.

use std::path::Path;

use anyhow::Result;

use crate::error::user;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capabilities from the text of `/proc/self/status`.
pub fn effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Whether these capabilities can load tracing programs and open uprobes.
pub fn caps_suffice(caps: u64) -> bool {
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_caps(&status) {
        Some(caps) if caps_suffice(caps) => Ok(()),
        _ => Err(user(
            "leaktrace needs root or CAP_BPF+CAP_PERFMON (and CAP_SYS_PTRACE for other users' processes): try sudo",
        )),
    }
}

/// Kernel features, looked up under `sys` (normally `/sys`). Returns warnings that do not stop
/// tracing.
pub fn check_kernel(sys: &Path) -> Result<Vec<String>> {
    if !sys.join("bus/event_source/devices/uprobe/type").exists() {
        return Err(user(
            "this kernel has no uprobe support (CONFIG_UPROBES/CONFIG_UPROBE_EVENTS): run leaktrace on a kernel built with uprobes",
        ));
    }
    let mut warnings = Vec::new();
    if !sys.join("kernel/btf/vmlinux").exists() {
        // leaktrace's programs use no CO-RE relocations, so a kernel without BTF still works.
        warnings.push(
            "this kernel publishes no BTF (/sys/kernel/btf/vmlinux); leaktrace does not need it, but verifier messages will be less precise"
                .to_string(),
        );
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_capabilities() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = effective_caps(status).unwrap();
        assert!(caps_suffice(caps));
        assert!(!caps_suffice(0));
        assert!(caps_suffice((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(
            !caps_suffice(1 << CAP_BPF),
            "CAP_BPF alone cannot open uprobes"
        );
        assert_eq!(effective_caps("Name: x\n"), None);
    }

    #[test]
    fn kernel_without_uprobes_is_an_error_and_without_btf_a_warning() {
        let dir = std::env::temp_dir().join(format!("leaktrace-sys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let err = check_kernel(&dir).unwrap_err();
        assert!(err.to_string().contains("no uprobe support"), "{err}");
        std::fs::create_dir_all(dir.join("bus/event_source/devices/uprobe")).unwrap();
        std::fs::write(dir.join("bus/event_source/devices/uprobe/type"), "9\n").unwrap();
        let warnings = check_kernel(&dir).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("no BTF"));
        std::fs::create_dir_all(dir.join("kernel/btf")).unwrap();
        std::fs::write(dir.join("kernel/btf/vmlinux"), "").unwrap();
        assert!(check_kernel(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_machine_has_what_leaktrace_needs() {
        check_kernel(Path::new("/sys")).expect("uprobes are available on this machine kind");
    }
}

/// Raises the soft limit of open files to the hard limit: every probe is a file descriptor
/// (22 per traced process), and the probes of workers that exit stay open until leaktrace
/// detaches (see `Tracer::forget_process`), so a long session over restarting workers needs many.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a struct rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
