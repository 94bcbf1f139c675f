//! Issue 15: the packages `./dev dist` writes to dist/ (the wheel and the .deb), installed the
//! way users install them (pip into a fresh venv, dpkg into minimal Debian roots older and newer
//! than the build machine), then used to trace the C fixture with exact bytes per call site.
//! `./dev test` builds dist/ and the roots (target/roots/dist-SUITE) before running this file.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use leaktrace_tests::*;

const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const T: Duration = Duration::from_secs(60);
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the fixture is copied and built inside a root.
const ROOT_FIXTURE_DIR: &str = "opt/leaktrace-test";

/// The one file in dist/ whose name ends with `suffix`.
fn dist_file(suffix: &str) -> PathBuf {
    let dir = root().join("dist");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: run ./dev dist first", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "one *{suffix} in dist/: {found:?}");
    found.into_iter().next().unwrap()
}

fn wheel() -> PathBuf {
    let wheel = dist_file(".whl");
    assert_eq!(
        wheel.file_name().unwrap().to_string_lossy(),
        format!("leaktrace-{VERSION}-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.musllinux_1_1_x86_64.whl"),
        "the wheel's name carries its tags"
    );
    wheel
}

fn deb() -> PathBuf {
    let deb = dist_file(".deb");
    assert_eq!(
        deb.file_name().unwrap().to_string_lossy(),
        format!("leaktrace_{VERSION}-1_amd64.deb")
    );
    deb
}

/// Runs a command to completion, asserting success; returns its output.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap()
}

/// The file names in the wheel (a zip), read with Python's zipfile.
fn wheel_entries(wheel: &Path) -> Vec<String> {
    let script = "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))";
    let mut names: Vec<String> = stdout_of(Command::new(python()).args(["-c", script]).arg(wheel))
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

fn wheel_member(wheel: &Path, name: &str) -> Vec<u8> {
    let script = "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))";
    run_ok(
        Command::new(python())
            .args(["-c", script])
            .arg(wheel)
            .arg(name),
    )
    .stdout
}

/// The .deb unpacked once per test under target/test-out.
fn unpacked_deb(name: &str) -> PathBuf {
    let dir = out_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    run_ok(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&dir));
    dir
}

/// Every subcommand has a man page of its own (`man leaktrace-attach`).
const SUBCOMMANDS: [&str; 6] = ["attach", "run", "top", "report", "diff", "heap"];

#[test]
fn wheel_holds_exactly_the_binary_and_its_metadata() {
    let wheel = wheel();
    let data = format!("leaktrace-{VERSION}.data/scripts/leaktrace");
    let info = format!("leaktrace-{VERSION}.dist-info");
    let mut want = vec![
        data.clone(),
        format!("{info}/METADATA"),
        format!("{info}/RECORD"),
        format!("{info}/WHEEL"),
    ];
    want.sort();
    assert_eq!(wheel_entries(&wheel), want);
    let tags = String::from_utf8(wheel_member(&wheel, &format!("{info}/WHEEL"))).unwrap();
    for line in [
        "Root-Is-Purelib: false",
        "Tag: py3-none-manylinux_2_17_x86_64",
        "Tag: py3-none-manylinux2014_x86_64",
        "Tag: py3-none-musllinux_1_1_x86_64",
    ] {
        assert!(
            tags.lines().any(|l| l == line),
            "{line:?} in WHEEL:\n{tags}"
        );
    }
    let metadata = String::from_utf8(wheel_member(&wheel, &format!("{info}/METADATA"))).unwrap();
    assert!(metadata.contains("Name: leaktrace\n"), "{metadata}");
    assert!(
        metadata.contains(&format!("Version: {VERSION}\n")),
        "{metadata}"
    );
    // The binary in the wheel is the binary in the .deb.
    let deb_root = unpacked_deb("dist-deb-same-binary");
    assert!(
        wheel_member(&wheel, &data) == std::fs::read(deb_root.join("usr/bin/leaktrace")).unwrap(),
        "the wheel and the .deb carry different binaries"
    );
}

#[test]
fn auditwheel_agrees_with_the_tags() {
    let wheel = wheel();
    let auditwheel = root().join(".venv-dist/bin/auditwheel");
    assert!(
        auditwheel.exists(),
        "{} is missing: run ./dev setup",
        auditwheel.display()
    );
    let out = run_ok(Command::new(&auditwheel).arg("show").arg(&wheel));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A binary without dynamic dependencies is consistent with every manylinux policy, the
    // oldest included; auditwheel names the most compatible one.
    assert!(
        text.contains("is consistent with the following platform tag:")
            && text.contains("manylinux_2_5_x86_64"),
        "{text}"
    );
}

/// ELF facts of the shipped binary: a static position-independent executable (no program
/// interpreter, no shared library needed), for x86-64.
#[test]
fn the_binary_needs_no_shared_library() {
    use object::{
        elf,
        read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _},
    };
    let bytes = wheel_member(
        &wheel(),
        &format!("leaktrace-{VERSION}.data/scripts/leaktrace"),
    );
    let header = elf::FileHeader64::<object::Endianness>::parse(&*bytes).expect("an ELF file");
    let endian = header.endian().unwrap();
    assert_eq!(header.e_machine(endian), elf::EM_X86_64);
    assert_eq!(header.e_type(endian), elf::ET_DYN, "static-pie is ET_DYN");
    let segments = header.program_headers(endian, &*bytes).unwrap();
    assert!(
        !segments.iter().any(|p| p.p_type(endian) == elf::PT_INTERP),
        "a program interpreter (dynamic loader) is requested"
    );
    let mut needed = Vec::new();
    let mut saw_dynamic = false;
    for p in segments {
        if let Some(dynamic) = p.dynamic(endian, &*bytes).unwrap() {
            saw_dynamic = true;
            needed.extend(
                dynamic
                    .iter()
                    .filter(|d| d.d_tag(endian) == u64::from(elf::DT_NEEDED))
                    .map(|d| d.d_val(endian)),
            );
        }
    }
    assert!(
        saw_dynamic,
        "static-pie keeps a dynamic section for its own relocations"
    );
    assert!(needed.is_empty(), "DT_NEEDED entries: {needed:?}");
}

#[test]
fn deb_holds_exactly_the_expected_files() {
    let deb = deb();
    let listing = stdout_of(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut files: Vec<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .unwrap()
                .trim_start_matches('.')
                .to_string()
        })
        .collect();
    files.sort();
    let mut want: Vec<String> = vec![
        "/usr/bin/leaktrace".into(),
        "/usr/share/bash-completion/completions/leaktrace".into(),
        "/usr/share/doc/leaktrace/copyright".into(),
        "/usr/share/fish/vendor_completions.d/leaktrace.fish".into(),
        "/usr/share/man/man1/leaktrace.1.gz".into(),
        "/usr/share/zsh/vendor-completions/_leaktrace".into(),
    ];
    want.extend(SUBCOMMANDS.map(|c| format!("/usr/share/man/man1/leaktrace-{c}.1.gz")));
    want.sort();
    assert_eq!(files, want, "{listing}");
    let field = |name: &str| {
        stdout_of(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "leaktrace");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Depends"), "", "a static binary depends on nothing");
    // The man pages and completions come from the binary's own clap definitions.
    let dir = unpacked_deb("dist-deb-contents");
    let man = stdout_of(
        Command::new("gzip")
            .arg("-dc")
            .arg(dir.join("usr/share/man/man1/leaktrace-attach.1.gz")),
    );
    assert!(man.contains(".TH leaktrace-attach 1"), "{man}");
    for option in ["max\\-allocs", "sample\\-bytes", "no\\-children"] {
        assert!(
            man.contains(option),
            "{option} in leaktrace-attach.1:\n{man}"
        );
    }
    let bash = std::fs::read_to_string(dir.join("usr/share/bash-completion/completions/leaktrace"))
        .unwrap();
    assert!(
        bash.contains("--max-allocs") && bash.contains("attach"),
        "{bash}"
    );
    let zsh =
        std::fs::read_to_string(dir.join("usr/share/zsh/vendor-completions/_leaktrace")).unwrap();
    assert!(zsh.starts_with("#compdef leaktrace"), "{zsh}");
    let fish =
        std::fs::read_to_string(dir.join("usr/share/fish/vendor_completions.d/leaktrace.fish"))
            .unwrap();
    assert!(fish.contains("complete -c leaktrace"), "{fish}");
}

/// `leaktrace --version`: the version, the commit this checkout is at, the static target, and
/// the features of this kernel (6.18 on this machine kind has all of them).
fn check_version(output: &str) {
    let head = stdout_of(
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(["rev-parse", "HEAD"]),
    );
    let want = [
        format!("leaktrace {VERSION}"),
        format!("commit: {}", head.trim()),
        "target: x86_64-unknown-linux-musl".to_string(),
        "  uprobes: yes".to_string(),
        "  btf: yes".to_string(),
        "  ring buffer: yes".to_string(),
        "  uprobe_multi: yes (used: one link per program and binary; LEAKTRACE_UPROBE_MULTI=0 turns it off)"
            .to_string(),
        "  uprobe session: yes (used: the malloc family's return trap only for tracked calls; LEAKTRACE_UPROBE_SESSION=0 turns it off)".to_string(),
    ];
    let lines: Vec<&str> = output.lines().collect();
    for w in &want {
        assert!(lines.contains(&w.as_str()), "{w:?} in --version:\n{output}");
    }
    assert!(lines.iter().any(|l| l.starts_with("kernel: ")), "{output}");
}

/// The fixture's exact call sites, as tests/core.rs checks them, with the source at `src`
/// (the file path the fixture was compiled from).
fn check_sites(report: &Value, src: &str) {
    assert_eq!(report["schema"], "leaktrace/v1");
    for (caller, leaf, bytes, count, marker) in [
        ("leak_here", "malloc", 1000 * 4096, 1000, "SITE:leak_here"),
        (
            "calloc_leak_here",
            "calloc",
            3700,
            1,
            "SITE:calloc_leak_here",
        ),
        (
            "realloc_chain_here",
            "realloc",
            70000,
            1,
            "SITE:realloc_chain_here",
        ),
        ("mmap_leak_here", "mmap", 8 * 4096, 1, "SITE:mmap_leak_here"),
    ] {
        let stacks = stacks_from(report, caller, &[leaf]);
        assert_eq!(
            stacks.len(),
            1,
            "one {leaf} <- {caller}:\n{:#}",
            report["stacks"]
        );
        let s = stacks[0];
        let frames = s["frames"].as_array().unwrap();
        let site = &frames[frames.len() - 2];
        assert_eq!(
            (
                s["live_bytes"].as_u64().unwrap(),
                s["live_allocs"].as_u64().unwrap(),
                site["file"].as_str().unwrap_or(""),
                site["line"].as_u64().unwrap_or(0),
            ),
            (bytes, count, src, line_of("allocs.c", marker)),
            "{caller}"
        );
    }
    assert!(stacks_from(report, "churn_here", &["malloc"]).is_empty());
    assert_eq!(report["totals"]["dropped"], 0);
}

/// Traces the started fixture with `tracer` (a command that ends in `attach PID` options are
/// appended to), waits for its report at `report` (a host path), and checks it.
fn trace(fixture: &Proc, mut tracer: Command, out_arg: &str, report: &Path, src: &str) {
    let _ = std::fs::remove_file(report);
    let mut tracer = Proc::spawn(tracer.args(["--interval", "1", "-o", out_arg]));
    tracer.stderr.wait_for("leaktrace: attached", T);
    fixture.signal(SIGUSR1);
    fixture.stdout.wait_for("done", T);
    // Past the default --min-age of 1 s.
    std::thread::sleep(Duration::from_millis(1500));
    tracer.signal(SIGINT);
    assert_eq!(tracer.wait(T), 0, "stderr:\n{}", tracer.stderr.text());
    check_sites(&read_json(report), src);
}

#[test]
fn wheel_installed_by_pip_in_a_fresh_venv_traces_the_fixture() {
    require_root();
    let venv = out_path("dist-venv");
    let _ = std::fs::remove_dir_all(&venv);
    run_ok(Command::new(python()).args(["-m", "venv"]).arg(&venv));
    run_ok(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--no-index", "--disable-pip-version-check", "-q"])
            .arg(wheel()),
    );
    let bin = venv.join("bin/leaktrace");
    check_version(&stdout_of(Command::new(&bin).arg("--version")));
    let short = stdout_of(Command::new(&bin).arg("-V"));
    assert!(
        short.starts_with(&format!("leaktrace {VERSION} (commit ")),
        "{short}"
    );

    let fixture = Proc::spawn(&mut Command::new(fixture("allocs", &[])));
    fixture.stdout.wait_for("ready", T);
    let report = out_path("dist-venv.json");
    let mut tracer = Command::new(&bin);
    tracer.arg("attach").arg(fixture.pid().to_string());
    let src = root().join("tests/fixtures/allocs.c");
    trace(
        &fixture,
        tracer,
        report.to_str().unwrap(),
        &report,
        src.to_str().unwrap(),
    );
}

/// A Debian root made by `./dev test` (debootstrap minbase with gcc and python3-venv).
fn debian_root(suite: &str) -> PathBuf {
    let dir = root().join("target/roots").join(format!("dist-{suite}"));
    assert!(
        dir.join(".leaktrace-complete").exists(),
        "{} is missing: ./dev test makes it (debootstrap {suite})",
        dir.display()
    );
    dir
}

/// `COMMAND...` run chrooted in `root` with /proc, /sys and /dev of the host mounted in a
/// private mount namespace (gone with the process: nothing stays mounted on the host).
fn in_root(root: &Path, command: &[&str]) -> Command {
    let script = r#"R=$1; shift
mount -t proc proc "$R/proc" && mount --rbind /sys "$R/sys" && mount --rbind /dev "$R/dev" &&
exec chroot "$R" "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(root)
    .args(command);
    cmd
}

/// Installs the .deb with the root's dpkg and the wheel with the root's pip (whose age decides
/// whether the wheel's tags are accepted), builds the fixture with the root's gcc against its
/// own glibc, then traces it twice: with the installed /usr/bin/leaktrace inside the root, and
/// with the same binary run from the host.
fn packages_in_debian_root(suite: &str) {
    require_root();
    let root_dir = debian_root(suite);
    let deb = deb();
    let wheel = wheel();
    let tmp = root_dir.join("tmp");
    std::fs::copy(&deb, tmp.join(deb.file_name().unwrap())).unwrap();
    std::fs::copy(&wheel, tmp.join(wheel.file_name().unwrap())).unwrap();
    let deb_in = format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());
    let wheel_in = format!("/tmp/{}", wheel.file_name().unwrap().to_string_lossy());
    run_ok(
        Command::new("chroot")
            .arg(&root_dir)
            .args(["dpkg", "-i", &deb_in]),
    );
    let status = stdout_of(Command::new("chroot").arg(&root_dir).args([
        "dpkg-query",
        "-W",
        "-f",
        "${Status} ${Version}",
        "leaktrace",
    ]));
    assert_eq!(status, format!("install ok installed {VERSION}-1"));
    assert!(root_dir.join("usr/share/man/man1/leaktrace.1.gz").exists());
    run_ok(
        Command::new("chroot")
            .arg(&root_dir)
            .args(["rm", "-rf", "/opt/leaktrace-venv"]),
    );
    run_ok(Command::new("chroot").arg(&root_dir).args([
        "python3",
        "-m",
        "venv",
        "/opt/leaktrace-venv",
    ]));
    run_ok(Command::new("chroot").arg(&root_dir).args([
        "/opt/leaktrace-venv/bin/pip",
        "install",
        "--no-index",
        "--disable-pip-version-check",
        "-q",
        &wheel_in,
    ]));
    assert!(
        std::fs::read(root_dir.join("opt/leaktrace-venv/bin/leaktrace")).unwrap()
            == std::fs::read(root_dir.join("usr/bin/leaktrace")).unwrap(),
        "pip and dpkg installed the same binary"
    );
    check_version(&stdout_of(&mut in_root(
        &root_dir,
        &["/opt/leaktrace-venv/bin/leaktrace", "--version"],
    )));
    check_version(&stdout_of(&mut in_root(
        &root_dir,
        &["/usr/bin/leaktrace", "--version"],
    )));

    let dir = root_dir.join(ROOT_FIXTURE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root().join("tests/fixtures/allocs.c"), dir.join("allocs.c")).unwrap();
    let src = format!("/{ROOT_FIXTURE_DIR}/allocs.c");
    let exe = format!("/{ROOT_FIXTURE_DIR}/allocs");
    // Compiled from its own directory, as build systems do. (Compiled as `gcc /abs/allocs.c`
    // from `/`, sid's gcc 16 writes DW_AT_comp_dir `/` but the source's directory as line-table
    // directory 0, and leaktrace then names the file `/allocs.c`: a symbolizer issue of its own,
    // reported, not what this test is about.)
    let build = format!(
        "cd /{ROOT_FIXTURE_DIR} && gcc -O0 -g -fno-omit-frame-pointer -pthread -w -o allocs allocs.c"
    );
    run_ok(
        Command::new("chroot")
            .arg(&root_dir)
            .args(["sh", "-c", &build]),
    );
    let start_fixture = || {
        let fixture = Proc::spawn(Command::new("chroot").arg(&root_dir).arg(&exe));
        fixture.stdout.wait_for("ready", T);
        fixture
    };

    // Inside the root: the root's dpkg-installed binary.
    let fixture = start_fixture();
    let pid = fixture.pid().to_string();
    let out_in = format!("/tmp/dist-{suite}-inside.json");
    let tracer = in_root(&root_dir, &["/usr/bin/leaktrace", "attach", &pid]);
    trace(
        &fixture,
        tracer,
        &out_in,
        &root_dir.join(&out_in[1..]),
        &src,
    );
    drop(fixture);

    // From the host: the same binary, the target in the root (files read through
    // /proc/PID/root).
    let fixture = start_fixture();
    let report = out_path(&format!("dist-{suite}-host.json"));
    let mut tracer = Command::new(root_dir.join("usr/bin/leaktrace"));
    tracer.arg("attach").arg(fixture.pid().to_string());
    trace(&fixture, tracer, report.to_str().unwrap(), &report, &src);
}

#[test]
fn packages_run_in_debian_bullseye() {
    packages_in_debian_root("bullseye");
}

#[test]
fn packages_run_in_debian_sid() {
    packages_in_debian_root("sid");
}
