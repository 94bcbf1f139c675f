//! What `leaktrace --version` says about the build and the running kernel: the version, the git
//! commit, the target it was built for, and the kernel features it found. Everything is read
//! without privileges (sysfs files any user can read), so `--version` works as any user.

use std::{fmt, path::Path};

use crate::probes::growth::Btf;

/// The git commit leaktrace was built from (`unknown` when built outside a git checkout, such
/// as from a source tarball; `LEAKTRACE_GIT_COMMIT` at build time overrides it).
pub const GIT_COMMIT: &str = env!("LEAKTRACE_GIT_COMMIT");
/// The Rust target triple of this binary (`x86_64-unknown-linux-musl` for the static build
/// shipped in the wheel and the .deb).
pub const BUILD_TARGET: &str = env!("LEAKTRACE_BUILD_TARGET");

/// A feature the kernel has, lacks, or that could not be told (no BTF to look in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Yes,
    No,
    Unknown,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Found::Yes => "yes",
            Found::No => "no",
            Found::Unknown => "unknown (no kernel BTF to look in)",
        })
    }
}

/// Kernel features that leaktrace uses (uprobes; BTF for `--mode growth`; the BPF ring buffer
/// for mmap events; uprobe_multi links and uprobe session programs where the kernel has them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    /// The `uprobe` perf event source (CONFIG_UPROBES, CONFIG_UPROBE_EVENTS).
    pub uprobes: Found,
    /// /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF).
    pub btf: Found,
    /// `BPF_MAP_TYPE_RINGBUF` (5.8+).
    pub ring_buffer: Found,
    /// `BPF_TRACE_UPROBE_MULTI` links (6.6+).
    pub uprobe_multi: Found,
    /// `BPF_TRACE_UPROBE_SESSION` programs and the `bpf_session_cookie` kfunc (6.13+).
    pub uprobe_session: Found,
}

impl KernelFeatures {
    /// Looks the features up under `sys` (normally `/sys`).
    pub fn detect(sys: &Path) -> Self {
        let uprobes = found(sys.join("bus/event_source/devices/uprobe/type").exists());
        let btf_data = std::fs::read(sys.join("kernel/btf/vmlinux")).ok();
        let mut features = Self::from_btf(btf_data.as_deref());
        features.uprobes = uprobes;
        features.release = kernel_release();
        features
    }

    /// The BTF-derived features from the kernel's raw BTF (None: the kernel publishes none).
    pub fn from_btf(data: Option<&[u8]>) -> Self {
        let btf = data.and_then(Btf::parse);
        let (btf_found, ring_buffer, uprobe_multi, uprobe_session) = match &btf {
            None => (
                found(data.is_some()),
                Found::Unknown,
                Found::Unknown,
                Found::Unknown,
            ),
            Some(btf) => (
                Found::Yes,
                found(
                    btf.enum_value("bpf_map_type", "BPF_MAP_TYPE_RINGBUF")
                        .is_some(),
                ),
                found(
                    btf.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_MULTI")
                        .is_some(),
                ),
                found(
                    btf.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_SESSION")
                        .is_some()
                        && btf.has_function("bpf_session_cookie"),
                ),
            ),
        };
        Self {
            release: String::new(),
            uprobes: Found::Unknown,
            btf: btf_found,
            ring_buffer,
            uprobe_multi,
            uprobe_session,
        }
    }
}

fn found(yes: bool) -> Found {
    if yes {
        Found::Yes
    } else {
        Found::No
    }
}

fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given; the fields are NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The one-line `-V` text: version and commit.
pub fn short_version() -> String {
    format!("{} (commit {GIT_COMMIT})", env!("CARGO_PKG_VERSION"))
}

/// The `--version` text (after clap's `leaktrace `): version, commit, build target, and the
/// kernel features found under `sys`.
pub fn long_version(sys: &Path) -> String {
    let k = KernelFeatures::detect(sys);
    format!(
        "{}\n\
         commit: {GIT_COMMIT}\n\
         target: {BUILD_TARGET}\n\
         kernel: {}\n\
         \x20 uprobes: {}\n\
         \x20 btf: {}\n\
         \x20 ring buffer: {}\n\
         \x20 uprobe_multi: {}{}\n\
         \x20 uprobe session: {}{}",
        env!("CARGO_PKG_VERSION"),
        k.release,
        k.uprobes,
        k.btf,
        k.ring_buffer,
        k.uprobe_multi,
        multi_use(k.uprobe_multi, crate::probes::uprobe_multi::wanted()),
        k.uprobe_session,
        session_use(
            k.uprobe_session,
            crate::probes::uprobe_multi::wanted(),
            crate::probes::uprobe_multi::session_wanted(),
        ),
    )
}

/// What leaktrace does with session programs, after the kernel's answer.
fn session_use(found: Found, multi_wanted: bool, wanted: bool) -> &'static str {
    match (found, multi_wanted, wanted) {
        (_, false, _) => " (off with uprobe_multi)",
        (_, true, false) => " (off: LEAKTRACE_UPROBE_SESSION=0, separate return probes)",
        (Found::No, true, true) => " (separate return probes instead)",
        (Found::Yes | Found::Unknown, true, true) => {
            " (used: the malloc family's return trap only for tracked calls; LEAKTRACE_UPROBE_SESSION=0 turns it off)"
        }
    }
}

/// What leaktrace does with uprobe_multi links, after the kernel's answer.
fn multi_use(found: Found, wanted: bool) -> &'static str {
    match (found, wanted) {
        (_, false) => " (off: LEAKTRACE_UPROBE_MULTI=0, perf-event uprobes)",
        (Found::No, true) => " (perf-event uprobes instead)",
        // BTF says yes (or cannot tell): the tracer still checks that the kernel links one.
        (Found::Yes | Found::Unknown, true) => {
            " (used: one link per program and binary; LEAKTRACE_UPROBE_MULTI=0 turns it off)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_btf_the_btf_features_are_unknown() {
        let k = KernelFeatures::from_btf(None);
        assert_eq!(k.btf, Found::No);
        assert_eq!(k.ring_buffer, Found::Unknown);
        assert_eq!(k.uprobe_multi, Found::Unknown);
        let k = KernelFeatures::from_btf(Some(b"not btf"));
        assert_eq!(k.btf, Found::Yes, "the file is there");
        assert_eq!(k.uprobe_session, Found::Unknown, "but unreadable");
    }

    #[test]
    fn this_kernel_has_the_features_the_machine_notes_list() {
        // Kernel 6.18 on this machine kind: uprobes, BTF, ring buffer, uprobe_multi (attach type
        // 48) and session programs (57) with their kfuncs.
        let k = KernelFeatures::detect(Path::new("/sys"));
        assert_eq!(k.uprobes, Found::Yes);
        assert_eq!(k.btf, Found::Yes);
        assert_eq!(k.ring_buffer, Found::Yes);
        assert_eq!(k.uprobe_multi, Found::Yes);
        assert_eq!(k.uprobe_session, Found::Yes);
        let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
        let btf = Btf::parse(&btf).unwrap();
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_MULTI"),
            Some(48)
        );
        assert_eq!(
            btf.enum_value("bpf_attach_type", "BPF_TRACE_UPROBE_SESSION"),
            Some(57)
        );
        assert_eq!(btf.enum_value("bpf_attach_type", "NO_SUCH_TYPE"), None);
        assert!(!btf.has_function("no_such_kfunc"));
        assert!(!k.release.is_empty());
    }

    #[test]
    fn long_version_names_every_feature() {
        let text = long_version(Path::new("/nonexistent"));
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        for line in [
            "uprobes: no",
            "btf: no",
            "ring buffer: unknown",
            "uprobe_multi: unknown",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains(&format!("commit: {GIT_COMMIT}")));
    }

    #[test]
    fn version_says_whether_uprobe_multi_is_used() {
        assert!(multi_use(Found::Yes, true).starts_with(" (used"));
        assert!(multi_use(Found::Yes, false).contains("off: LEAKTRACE_UPROBE_MULTI=0"));
        assert!(multi_use(Found::No, true).contains("perf-event uprobes instead"));
        assert!(session_use(Found::Yes, true, true).starts_with(" (used"));
        assert!(session_use(Found::Yes, false, true).contains("off with uprobe_multi"));
        assert!(session_use(Found::Yes, true, false).contains("LEAKTRACE_UPROBE_SESSION=0"));
        assert!(session_use(Found::No, true, true).contains("instead"));
    }
}
