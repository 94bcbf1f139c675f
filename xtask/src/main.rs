//! `cargo run -p xtask -- gen DIR`: writes leaktrace's man pages (`DIR/man/leaktrace.1` and one
//! page per subcommand, `leaktrace-attach.1` ...) and shell completions (`DIR/completions/`:
//! bash, zsh, fish) from the same clap definitions the binary parses, so they cannot drift.
//! `./dev dist` runs it and packs the result into the .deb.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "gen" => generate(Path::new(dir)),
        _ => bail!("usage: cargo run -p xtask -- gen DIR"),
    }
}

fn generate(dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("cannot empty {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let cmd = leaktrace::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("cannot write man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        let path: PathBuf = clap_complete::generate_to(shell, &mut cmd, "leaktrace", &completions)
            .with_context(|| {
                format!(
                    "cannot write {shell} completions to {}",
                    completions.display()
                )
            })?;
        eprintln!("xtask: wrote {}", path.display());
    }
    let mut pages: Vec<_> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    eprintln!(
        "xtask: wrote {} man pages in {}: {}",
        pages.len(),
        man.display(),
        pages.join(" ")
    );
    Ok(())
}
