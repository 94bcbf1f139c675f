//! Builds the eBPF object (tracer-ebpf, nightly, bpfel) so that a plain `cargo build` produces a
//! complete `leaktrace` binary with the object embedded.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() -> anyhow::Result<()> {
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
