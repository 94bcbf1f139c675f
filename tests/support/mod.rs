//! Shared pieces of leaktrace's integration tests: build fixtures, start real processes
//! (killed by PID on drop), run the real `leaktrace` binary, read its reports.
//!
//! These tests load eBPF programs and need root; they fail (never skip) without it.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

pub use serde_json::Value;

pub mod postgres;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

/// The `leaktrace` binary under test: `$LEAKTRACE_BIN`, else `target/debug/leaktrace`.
pub fn leaktrace_bin() -> PathBuf {
    let bin = std::env::var_os("LEAKTRACE_BIN")
        .map_or_else(|| target_dir().join("debug/leaktrace"), PathBuf::from);
    assert!(
        bin.exists(),
        "{} does not exist: run `cargo build` first (./dev test does)",
        bin.display()
    );
    bin
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "integration tests attach eBPF programs: run them as root (sudo ./dev test)"
    );
}

/// Compiles `tests/fixtures/NAME.c` once per test binary with the given extra flags.
pub fn fixture(name: &str, extra: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let key = format!("{name}{}", extra.join(""));
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    if let Some((_, p)) = built.iter().find(|(k, _)| *k == key) {
        return p.clone();
    }
    let dir = target_dir().join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(key.replace(['-', ' ', '/'], "_"));
    let src = root().join(format!("tests/fixtures/{name}.c"));
    let status = Command::new("cc")
        .args([
            "-O0",
            "-g",
            "-fno-omit-frame-pointer",
            "-pthread",
            "-w",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("cc runs");
    assert!(status.success(), "compiling {} failed", src.display());
    built.push((key, out.clone()));
    out
}

/// 1-based line of the line in `tests/fixtures/FILE` that contains `marker`.
pub fn line_of(file: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(root().join("tests/fixtures").join(file)).unwrap();
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {marker} must appear once in {file}");
    hits[0] as u64
}

/// Lines a child writes to a pipe, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(pipe: impl std::io::Read + Send + 'static) -> Self {
        let lines = Lines::default();
        let sink = lines.0.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    /// Waits until a line contains `needle`; panics with everything seen after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; got:\n{}",
                self.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A process this test started; killed (by its PID, SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        Proc {
            child,
            stdout: Lines::collect(stdout),
            stderr: Lines::collect(stderr),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on a child we started and have not reaped.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits for exit; returns the exit code (or 128+signal).
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Give the pipe readers a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                use std::os::unix::process::ExitStatusExt;
                return status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                self.pid(),
                self.stdout.text(),
                self.stderr.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `leaktrace ARGS...`, not waited for.
pub fn leaktrace(args: &[&str]) -> Proc {
    Proc::spawn(Command::new(leaktrace_bin()).args(args))
}

/// Starts `leaktrace attach PID ARGS...` and waits until its probes are attached.
pub fn attach(pid: u32, args: &[&str]) -> Proc {
    let pid = pid.to_string();
    let mut all = vec!["attach", pid.as_str()];
    all.extend_from_slice(args);
    let tracer = leaktrace(&all);
    tracer
        .stderr
        .wait_for("leaktrace: attached", Duration::from_secs(60));
    tracer
}

/// A fresh path for a test's report, under target/test-out.
pub fn out_path(name: &str) -> PathBuf {
    let dir = target_dir().join("test-out");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("report {} not written: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON: {e}\n{text}"))
}

/// Function names of a stack's frames, outermost first.
pub fn functions(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap().to_string())
        .collect()
}

/// Stacks whose frame just above the allocator is `caller` and whose leaf is one of `leaf`.
pub fn stacks_from<'a>(report: &'a Value, caller: &str, leaf: &[&str]) -> Vec<&'a Value> {
    report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            let f = functions(s);
            f.len() >= 2 && f[f.len() - 2] == caller && leaf.contains(&f[f.len() - 1].as_str())
        })
        .collect()
}

/// The Python interpreter tests use: pyenv's 3.11 when present, else `python3`.
pub fn python() -> PathBuf {
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let p = pyenv_root.join("versions/3.11.7/bin/python3");
    if p.exists() {
        p
    } else {
        PathBuf::from("python3")
    }
}

/// Every CPython the product supports that this machine kind has: pyenv's 3.8-3.13 (shared
/// libpython) and Debian's static 3.11. A missing one is a test failure: the machine kind
/// guarantees them.
pub fn interpreters() -> Vec<(String, PathBuf)> {
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut out = Vec::new();
    for v in ["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"] {
        let p = pyenv_root.join("versions").join(v).join("bin/python3");
        assert!(
            p.exists(),
            "{} is missing: this machine kind ships pyenv {v}",
            p.display()
        );
        out.push((format!("pyenv {v}"), p));
    }
    let debian = PathBuf::from("/usr/bin/python3.11");
    assert!(
        debian.exists(),
        "Debian's static /usr/bin/python3.11 is missing"
    );
    out.push(("debian 3.11 (static)".to_string(), debian));
    out
}

/// The Debian sid root `./dev setup` makes (`LEAKTRACE_SID_ROOT`, default `.roots/sid`):
/// Debian's python3.14 and python3.15 (static, stripped), a launcher per version linked against
/// its `libpython3.X.so` (`/opt/leaktrace/python3.X-shared`), and `/opt/venv-3.X`.
pub fn sid_root() -> PathBuf {
    let r = std::env::var_os("LEAKTRACE_SID_ROOT")
        .map_or_else(|| root().join(".roots/sid"), PathBuf::from);
    assert!(
        r.join("opt/leaktrace/python3.15-shared").exists(),
        "{} has no CPython 3.14/3.15: run ./dev setup",
        r.display()
    );
    r
}

/// One CPython the tests run: on the host, or inside the sid root through chroot (the
/// container case: leaktrace reads its files through /proc/PID/root).
#[derive(Clone, Debug)]
pub struct Python {
    pub label: String,
    pub minor: u32,
    /// The interpreter in the executable (no libpython).
    pub static_build: bool,
    /// The interpreter's path as the process sees it.
    pub exe: PathBuf,
    /// The root it runs in, for the sid interpreters.
    pub chroot: Option<PathBuf>,
}

impl Python {
    /// A command running this interpreter (chroot execs it: the PID is the interpreter's).
    pub fn command(&self) -> Command {
        match &self.chroot {
            Some(r) => {
                let mut c = Command::new("chroot");
                c.arg(r).arg(&self.exe);
                c
            }
            None => Command::new(&self.exe),
        }
    }

    /// `tests/fixtures/NAME` as this interpreter sees it (copied into the root for chroot).
    pub fn fixture(&self, name: &str) -> String {
        match &self.chroot {
            Some(r) => {
                copy_fixtures_into(r);
                format!("/opt/leaktrace/fixtures/{name}")
            }
            None => root()
                .join("tests/fixtures")
                .join(name)
                .display()
                .to_string(),
        }
    }

    /// A command running this interpreter with the demo's packages (FastAPI, uvicorn)
    /// importable: `.venv` on the host; in the sid root `/opt/venv-3.X`, whose site-packages
    /// the shared launcher is pointed at.
    pub fn venv_command(&self) -> Command {
        let Some(r) = &self.chroot else {
            return Command::new(venv_python());
        };
        if self.static_build {
            let mut c = Command::new("chroot");
            c.arg(r)
                .arg(format!("/opt/venv-3.{}/bin/python", self.minor));
            return c;
        }
        let mut c = self.command();
        c.env(
            "PYTHONPATH",
            format!("/opt/venv-3.{0}/lib/python3.{0}/site-packages", self.minor),
        );
        c
    }
}

impl Python {
    /// A command running this interpreter with the scenario suite's packages importable
    /// (tests/scenarios/requirements.txt: FastAPI, psycopg, SQLAlchemy): pyenv's through
    /// `.venvs/3.X`, Debian's static 3.11 with `.venvs/3.11`'s site-packages on its path (one
    /// ABI), the sid root's through `/opt/venv-3.X`. The PID is the interpreter's.
    pub fn packages_command(&self) -> Command {
        if self.chroot.is_some() {
            return self.venv_command();
        }
        let venv = root().join(format!(".venvs/3.{}", self.minor));
        assert!(
            venv.join("bin/python").exists(),
            "{} is missing: run ./dev setup",
            venv.display()
        );
        if self.label.starts_with("pyenv") {
            return Command::new(venv.join("bin/python"));
        }
        let mut c = self.command();
        c.env(
            "PYTHONPATH",
            venv.join(format!("lib/python3.{}/site-packages", self.minor)),
        );
        c
    }
}

/// Copies `tests/fixtures/*.py` to `/opt/leaktrace/fixtures` in `r`, once per test binary
/// (through a scratch folder renamed into place, so concurrent test binaries never see half a
/// copy).
fn copy_fixtures_into(r: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dest = r.join("opt/leaktrace/fixtures");
        let scratch = r.join(format!("opt/leaktrace/fixtures.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        for e in std::fs::read_dir(root().join("tests/fixtures")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "py") {
                std::fs::copy(&p, scratch.join(p.file_name().unwrap())).unwrap();
            }
        }
        let old = r.join(format!("opt/leaktrace/fixtures.old.{}", std::process::id()));
        let _ = std::fs::rename(&dest, &old);
        std::fs::rename(&scratch, &dest).unwrap();
        let _ = std::fs::remove_dir_all(&old);
    });
}

/// Every CPython the tests cover: [`interpreters`] (pyenv 3.8-3.13, Debian's static 3.11 on
/// the host), then Debian's 3.14 and 3.15 in the sid root, each static and shared.
pub fn every_python() -> Vec<Python> {
    let mut out: Vec<Python> = interpreters()
        .into_iter()
        .map(|(label, exe)| {
            let minor = label
                .split(['.', ' '])
                .nth(2)
                .and_then(|m| m.parse().ok())
                .expect("3.X in the label");
            Python {
                static_build: label.contains("static"),
                label,
                minor,
                exe,
                chroot: None,
            }
        })
        .collect();
    let r = sid_root();
    for minor in [14, 15] {
        out.push(Python {
            label: format!("debian 3.{minor} (static, chroot)"),
            minor,
            static_build: true,
            exe: PathBuf::from(format!("/usr/bin/python3.{minor}")),
            chroot: Some(r.clone()),
        });
        out.push(Python {
            label: format!("debian 3.{minor} (libpython3.{minor}.so, chroot)"),
            minor,
            static_build: false,
            exe: PathBuf::from(format!("/opt/leaktrace/python3.{minor}-shared")),
            chroot: Some(r.clone()),
        });
    }
    out
}

/// The venv `./dev setup` creates with the demo's packages (FastAPI, uvicorn).
pub fn venv_python() -> PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run ./dev setup", p.display());
    p
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET on 127.0.0.1; returns the status code.
pub fn http_get(port: u16, path: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {resp:?}")))
}

/// Python frames of a stack (kind == "python"), outermost first, as (function, line).
pub fn python_frames(stack: &Value) -> Vec<(String, u64)> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "python")
        .map(|f| {
            (
                f["function"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Live allocations per Python leaf function, with the leaf's lines.
pub fn allocs_by_leaf(report: &Value) -> std::collections::BTreeMap<String, (u64, Vec<u64>)> {
    let mut out: std::collections::BTreeMap<String, (u64, Vec<u64>)> = Default::default();
    for s in report["stacks"].as_array().unwrap() {
        if let Some((f, line)) = python_frames(s).last().cloned() {
            let e = out.entry(f).or_default();
            e.0 += s["live_allocs"].as_u64().unwrap();
            if !e.1.contains(&line) {
                e.1.push(line);
            }
        }
    }
    out
}

/// `fixtures/py_threads.py`'s two threads: each leaf at its own line with at least 450 live
/// allocations, and no stack mixing the two threads' frames. `label` names the interpreter.
pub fn assert_threads_apart(report: &Value, label: &str) {
    let leaves = allocs_by_leaf(report);
    for (function, marker) in [
        ("leak_in_thread_a", "SITE:thread_a"),
        ("leak_in_thread_b", "SITE:thread_b"),
    ] {
        let (allocs, lines) = leaves.get(function).cloned().unwrap_or_default();
        assert!(
            allocs >= 450,
            "{label}: {function} has {allocs} live allocations: {leaves:?}"
        );
        assert_eq!(
            lines,
            vec![line_of("py_threads.py", marker)],
            "{label}: {function}: {leaves:?}"
        );
    }
    for s in report["stacks"].as_array().unwrap() {
        let names: Vec<String> = python_frames(s).into_iter().map(|f| f.0).collect();
        assert!(
            !(names.contains(&"leak_in_thread_a".into())
                && names.contains(&"leak_in_thread_b".into())),
            "{label}: {names:?}"
        );
    }
}

/// Runs `leaktrace ARGS...` to completion, asserting that it succeeded; returns its output.
pub fn leaktrace_ok(args: &[&str]) -> std::process::Output {
    let out = Command::new(leaktrace_bin())
        .args(args)
        .output()
        .expect("leaktrace runs");
    assert!(
        out.status.success(),
        "leaktrace {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `tests/fixtures/fastapi_leak.py` under uvicorn on 127.0.0.1 (the venv made by
/// `./dev setup`) and waits until it answers; returns the server and its port.
pub fn start_uvicorn() -> (Proc, u16) {
    let port = free_port();
    let server = Proc::spawn(
        Command::new(venv_python())
            .current_dir(root().join("tests/fixtures"))
            .args([
                "-m",
                "uvicorn",
                "fastapi_leak:app",
                "--host",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .args(["--log-level", "warning"]),
    );
    wait_until_serving(&server, port);
    (server, port)
}

/// Starts `fixtures/fastapi_leak.py` under uvicorn with `py`'s packages (its venv), on a free
/// loopback port; returns once it serves.
pub fn start_uvicorn_with(py: &Python) -> (Proc, u16) {
    let port = free_port();
    let app = py.fixture("fastapi_leak.py");
    let app_dir = Path::new(&app).parent().unwrap().to_path_buf();
    let server = Proc::spawn(
        py.venv_command()
            .args(["-m", "uvicorn", "fastapi_leak:app", "--app-dir"])
            .arg(app_dir)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--log-level", "warning"]),
    );
    wait_until_serving(&server, port);
    (server, port)
}

/// Waits (60 s at most) until the server `server` answers `GET /ok` on `port` with 200.
pub fn wait_until_serving(server: &Proc, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/ok").ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the server did not start: {}",
            server.stderr.text()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Traces `fixtures/list_leak.py` (2000 objects of 10 KiB kept in a module-level list once it
/// gets SIGUSR1) with `leaktrace attach ... EXTRA`; returns the JSON report written to `out`
/// and what leaktrace printed on stdout (its live tables).
pub fn trace_list_leak(out: &str, extra: &[&str]) -> (Value, String) {
    const T: Duration = Duration::from_secs(60);
    let script = root().join("tests/fixtures/list_leak.py");
    let py = Proc::spawn(Command::new(python()).arg(&script));
    py.stdout.wait_for("ready", T);
    let out = out_path(out);
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--interval", "0.5", "--min-age", "0.2", "-o"]);
    args.push(out.to_str().unwrap());
    let mut tracer = attach(py.pid(), &args);
    tracer.stderr.wait_for("recording Python frames", T);
    // SAFETY: kill(2) on a child this test started.
    assert_eq!(unsafe { libc::kill(py.pid() as i32, libc::SIGUSR1) }, 0);
    py.stdout.wait_for("done 2000", T);
    thread::sleep(Duration::from_millis(500));
    tracer.signal(libc::SIGINT);
    assert_eq!(tracer.wait(T), 0, "{}", tracer.stderr.text());
    (read_json(&out), tracer.stdout.text())
}
