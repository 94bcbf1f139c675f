//! Builds the eBPF object (tracer-ebpf, nightly, bpfel) so that a plain `cargo build` produces a
//! complete `leaktrace` binary with the object embedded.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
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
