//! Builds the eBPF object (tracer-ebpf, nightly, bpfel) so that a plain `cargo build` produces a
//! complete `leaktrace` binary with the object embedded.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// Set for the eBPF build: this build script is also its rustc wrapper (below), and this
/// variable holds the path prefixes to remap, `FROM=TO` separated by `\x1f`.
const REMAP_ENV: &str = "LEAKTRACE_EBPF_REMAP";
/// A rustc wrapper that was set before ours (sccache, ...): ours runs it in turn.
const NEXT_WRAPPER_ENV: &str = "LEAKTRACE_EBPF_NEXT_WRAPPER";

fn main() -> anyhow::Result<()> {
    if let Some(remaps) = std::env::var_os(REMAP_ENV) {
        if std::env::args_os().len() > 1 {
            return rustc_with_remaps(remaps);
        }
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    println!(
        "cargo:rustc-env=LEAKTRACE_GIT_COMMIT={}",
        git_commit(&manifest_dir)
    );
    println!(
        "cargo:rustc-env=LEAKTRACE_BUILD_TARGET={}",
        std::env::var("TARGET")?
    );
    let ebpf_dir = manifest_dir.join("../tracer-ebpf").canonicalize()?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../tracer-common/src").display()
    );
    // `cargo fuzz` builds this library with `--cfg fuzzing` (cargo shows it to build scripts as
    // CARGO_CFG_FUZZING) and sanitizer flags in RUSTFLAGS. Those would not reach the eBPF build
    // (aya-build runs its cargo with CARGO_ENCODED_RUSTFLAGS of its own, which takes precedence
    // over RUSTFLAGS), and that build works, but the fuzz targets only parse and never load a
    // program: an empty object spares them a second build of tracer-ebpf and its `core` (about
    // 3 minutes here). Normal builds never have this cfg.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out_dir.join("tracer-ebpf"), [])?;
        return Ok(());
    }
    remap_paths_of_the_ebpf_build(&manifest_dir)?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// The commit `leaktrace --version` prints: `LEAKTRACE_GIT_COMMIT` if set (a packager building
/// from a source tarball knows it), else HEAD of the git checkout this crate is in, else
/// `unknown` (no git, or a tarball unpacked inside some other repository).
fn git_commit(manifest_dir: &Path) -> String {
    println!("cargo:rerun-if-env-changed=LEAKTRACE_GIT_COMMIT");
    if let Ok(commit) = std::env::var("LEAKTRACE_GIT_COMMIT") {
        return commit;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let workspace = manifest_dir.parent().and_then(|p| p.canonicalize().ok());
    let toplevel =
        git(&["rev-parse", "--show-toplevel"]).and_then(|p| Path::new(&p).canonicalize().ok());
    if toplevel.is_none() || toplevel != workspace {
        return "unknown".into();
    }
    // Rebuild when HEAD moves: a commit, a checkout, a reset.
    for file in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--git-path", "logs/HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .filter(|r| r.starts_with("refs/"))
            .and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        let path = manifest_dir.join(file);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(&["rev-parse", "HEAD"])
        .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into())
}

/// The eBPF object carries DWARF and BTF line info with absolute source paths (the checkout,
/// cargo's registry, rustup's `core`), and it is embedded in the binary: two checkouts at
/// different paths would build different binaries. aya-build sets the eBPF build's
/// CARGO_ENCODED_RUSTFLAGS itself, so `--remap-path-prefix` reaches it through a rustc wrapper:
/// this build script, run again with rustc's command line (see [`rustc_with_remaps`]).
fn remap_paths_of_the_ebpf_build(manifest_dir: &Path) -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let from_env_or_home = |var: &str, dir: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(dir)))
    };
    let mut remaps = OsString::new();
    for (from, to) in [
        (manifest_dir.parent().map(Path::to_path_buf), "/leaktrace"),
        (from_env_or_home("CARGO_HOME", ".cargo"), "/cargo"),
        (from_env_or_home("RUSTUP_HOME", ".rustup"), "/rustup"),
    ] {
        let Some(from) = from.and_then(|f| f.canonicalize().ok()) else {
            continue;
        };
        if !remaps.is_empty() {
            remaps.push("\x1f");
        }
        remaps.push(from.as_os_str());
        remaps.push("=");
        remaps.push(to);
    }
    // cargo does not see a new rustc wrapper or new remaps as a reason to rebuild: when they
    // differ from those of the object in OUT_DIR (built before, or in a checkout that moved),
    // aya-build's target dir starts afresh (one rebuild of the eBPF crate and its `core`).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let stamp = out_dir.join("ebpf-remaps");
    let remaps_text = remaps.to_string_lossy().into_owned();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(remaps_text.as_str()) {
        let _ = std::fs::remove_dir_all(out_dir.join("aya-build"));
        std::fs::write(&stamp, &remaps_text)?;
    }
    // For the child cargo that aya-build starts (it inherits this environment).
    if let Some(next) = std::env::var_os("RUSTC_WRAPPER") {
        std::env::set_var(NEXT_WRAPPER_ENV, next);
    }
    std::env::set_var("RUSTC_WRAPPER", std::env::current_exe()?);
    std::env::set_var(REMAP_ENV, remaps);
    Ok(())
}

/// As the eBPF build's rustc wrapper: `ARGV = [self, rustc, args...]`. Compilations (those with
/// `--crate-name`) get the remaps; cargo's queries (`rustc -vV`, `--print`) pass unchanged.
fn rustc_with_remaps(remaps: OsString) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os().skip(1);
    let rustc = args.next().expect("rustc");
    let args: Vec<OsString> = args.collect();
    let mut cmd = match std::env::var_os(NEXT_WRAPPER_ENV) {
        Some(next) => {
            let mut c = Command::new(next);
            c.arg(rustc);
            c
        }
        None => Command::new(rustc),
    };
    cmd.args(&args);
    if args.iter().any(|a| a == "--crate-name") {
        for remap in remaps.to_string_lossy().split('\x1f') {
            cmd.arg(format!("--remap-path-prefix={remap}"));
        }
    }
    Err(anyhow::anyhow!("cannot run rustc: {}", cmd.exec()))
}
