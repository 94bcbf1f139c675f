//! Tests of the layout tables: against the headers, the real interpreters' bytes and their own
//! frames (walk_frames.py).
use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const MINORS: &[u32] = &[8, 9, 10, 11, 12, 13, 14, 15];
/// Minors whose interpreters come from Debian's sid root (`./dev setup`), not pyenv.
const SID_MINORS: &[u32] = &[14, 15];

/// The workspace root (for the free-threaded tests in `freethreaded.rs` too).
pub(crate) fn repo_root() -> PathBuf {
    repo()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pyenv_root() -> PathBuf {
    if let Ok(root) = std::env::var("PYENV_ROOT") {
        return PathBuf::from(root);
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv")
}

fn allow_missing() -> bool {
    std::env::var("LEAKTRACE_NO_PYENV").as_deref() == Ok("1")
}

/// The Debian sid root `./dev setup` makes (`LEAKTRACE_SID_ROOT`, default `.roots/sid`),
/// holding python3.14 and python3.15; `None` when absent and LEAKTRACE_NO_PYENV=1 allows
/// skipping, a panic otherwise.
pub(crate) fn sid_root() -> Option<PathBuf> {
    let root = std::env::var_os("LEAKTRACE_SID_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".roots/sid"));
    if root.join("usr/bin/python3.15").exists() && root.join("usr/bin/python3.14").exists() {
        return Some(root);
    }
    if allow_missing() {
        eprintln!(
            "skipping CPython 3.14/3.15: no sid root at {}",
            root.display()
        );
        return None;
    }
    panic!(
        "no Debian sid root with python3.14/3.15 at {} (./dev setup makes it; set \
         LEAKTRACE_NO_PYENV=1 to skip)",
        root.display()
    );
}

/// The newest installed pyenv prefix for 3.`minor` (`versions/3.<minor>.*`), or `None`
/// when there is none and LEAKTRACE_NO_PYENV=1 allows skipping; panics otherwise.
fn prefix(minor: u32) -> Option<PathBuf> {
    let versions = pyenv_root().join("versions");
    let wanted = format!("3.{minor}.");
    let found = std::fs::read_dir(&versions)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&wanted) && n[wanted.len()..].parse::<u32>().is_ok())
                && p.join("bin").exists()
        })
        .max_by_key(|p| {
            p.file_name().unwrap().to_str().unwrap()[wanted.len()..]
                .parse::<u32>()
                .unwrap()
        });
    if found.is_some() {
        return found;
    }
    if allow_missing() {
        eprintln!(
            "skipping CPython 3.{minor}: nothing under {}",
            versions.display()
        );
        return None;
    }
    panic!(
        "CPython 3.{minor} not installed under {}/3.{minor}.* (needed to verify the offsets; \
         set LEAKTRACE_NO_PYENV=1 to skip)",
        versions.display()
    );
}

/// Whether the interpreter of 3.`minor` is on this machine (pyenv, or the sid root).
fn available(minor: u32) -> bool {
    if SID_MINORS.contains(&minor) {
        sid_root().is_some()
    } else {
        prefix(minor).is_some()
    }
}

#[test]
fn dispatch_and_error() {
    for &minor in MINORS {
        assert!(layout_for(3, minor).is_ok());
    }
    assert_eq!(layout_for(3, 12).unwrap(), v3_12::LAYOUT);
    assert_eq!(layout_for(3, 15).unwrap(), v3_15::LAYOUT);
    let err = layout_for(3, 16).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported Python version 3.16 (leaktrace supports 3.8-3.15)"
    );
    assert!(layout_for(3, 7).is_err());
    assert!(layout_for(2, 7).is_err());
}

/// Which frame-walking fields each version has, as documented.
#[test]
fn presence_matches_docs() {
    for &minor in MINORS {
        let l = layout_for(3, minor).unwrap();
        assert_eq!(Layout::has(l.runtime_tstate_current), minor <= 11);
        assert_eq!(Layout::has(l.interp_ceval_gil), minor >= 12);
        assert_eq!(Layout::has(l.tstate_native_thread_id), minor >= 11);
        assert_eq!(Layout::has(l.tstate_frame), minor <= 10);
        assert_eq!(Layout::has(l.frame_back), minor <= 10);
        assert_eq!(Layout::has(l.tstate_cframe), minor == 11 || minor == 12);
        assert_eq!(
            Layout::has(l.cframe_current_frame),
            minor == 11 || minor == 12
        );
        assert_eq!(Layout::has(l.tstate_current_frame), minor >= 13);
        assert_eq!(Layout::has(l.iframe_code), minor >= 11);
        assert_eq!(Layout::has(l.owner_shim_min), minor >= 12);
        assert_eq!(Layout::has(l.code_qualname), minor >= 11);
        assert_eq!(Layout::has(l.code_code), minor <= 10);
        assert_eq!(Layout::has(l.code_code_adaptive), minor >= 11);
        let tag = match minor {
            ..=10 => Layout::ABSENT,
            11..=13 => 0,
            _ => 3,
        };
        assert_eq!(l.iframe_code_tag_mask, tag, "3.{minor}");
        let scale = match minor {
            8 | 9 => 1,
            10 => 2,
            _ => Layout::ABSENT,
        };
        assert_eq!(l.frame_lasti_scale, scale);
    }
}

/// Recompiles tools/pyoffsets/offsets.c against each version's headers and compares every
/// number with the tables.
#[test]
fn tables_match_headers() {
    let script = repo().join("tools/pyoffsets/check.sh");
    for &minor in MINORS {
        if !available(minor) {
            continue;
        }
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg("--print").arg(format!("3.{minor}"));
        if let Some(root) = SID_MINORS.contains(&minor).then(sid_root).flatten() {
            cmd.env("LEAKTRACE_SID_ROOT", root);
        }
        let out = cmd.output().expect("running tools/pyoffsets/check.sh");
        assert!(
            out.status.success(),
            "offsets.c for 3.{minor} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let layout = layout_for(3, minor).unwrap();
        let mut expected: Vec<(String, u64)> = layout
            .fields()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        if let Some(a) = crate::python::allocators::offsets_for(minor) {
            expected.extend([
                ("alloc.raw".to_string(), a.raw),
                ("alloc.obj".to_string(), a.obj),
                ("alloc.obj_arena".to_string(), a.obj_arena),
            ]);
        }
        if let Some(table) = debug_offsets::table_for(minor) {
            expected.extend(
                table
                    .entries
                    .iter()
                    .map(|(n, v)| (format!("debug.{n}"), *v)),
            );
        }
        let mut seen = 0;
        for line in text.lines() {
            let (name, value) = line.split_once(' ').unwrap();
            if name == "version" {
                assert_eq!(value, format!("3.{minor}"));
                continue;
            }
            let value = if value == "absent" {
                Layout::ABSENT
            } else {
                value.parse().unwrap()
            };
            let Some((_, rust)) = expected.iter().find(|(n, _)| n == name) else {
                panic!("3.{minor}: offsets.c prints {name}, which the Rust table lacks");
            };
            assert_eq!(*rust, value, "3.{minor} {name}: Rust table vs headers");
            seen += 1;
        }
        assert_eq!(
            seen,
            expected.len(),
            "3.{minor}: not every field was checked"
        );
    }
}

/// First `len` bytes of the `_PyRuntime` symbol's initial value in an ELF file.
pub(crate) fn runtime_bytes(path: &Path, len: usize) -> Vec<u8> {
    use object::{Object, ObjectSection, ObjectSymbol};
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok("_PyRuntime"))
        .expect("_PyRuntime symbol");
    // CPython 3.10+ puts it in its own `.PyRuntime` section (initialized, like `.data`).
    let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
    assert_eq!(section.kind(), object::SectionKind::Data);
    let start = (sym.address() - section.address()) as usize;
    section.data().unwrap()[start..start + len].to_vec()
}

/// `_Py_DebugOffsets` dumped from each real interpreter (`tests/data/python/debug_offsets`:
/// pyenv's libpython3.13, Debian's python3.14 3.14.10 and python3.15 3.15.2).
pub(crate) fn golden_debug_offsets(minor: u32) -> Vec<u8> {
    let path = repo().join(format!("tests/data/python/debug_offsets/3.{minor}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn debug_offsets_golden_parse_to_the_tables() {
    for minor in [13, 14, 15] {
        let bytes = golden_debug_offsets(minor);
        let table = debug_offsets::table_for(minor).unwrap();
        assert_eq!(
            bytes.len(),
            table.size(),
            "3.{minor}: golden is the whole struct"
        );
        let parsed = debug_offsets::parse(&bytes).unwrap();
        assert_eq!(parsed.minor, minor);
        assert!(!parsed.free_threaded);
        assert_eq!(parsed.version_hex >> 16, 0x0300 | u64::from(minor));
        assert_eq!(parsed.layout, layout_for(3, minor).unwrap(), "3.{minor}");
    }
}

#[test]
fn debug_offsets_refuses_what_it_does_not_know() {
    use debug_offsets::{parse, DebugOffsetsError as E};
    for minor in [13, 14, 15] {
        let bytes = golden_debug_offsets(minor);
        let size = bytes.len();
        // Truncated: one byte short, or only the header.
        assert_eq!(
            parse(&bytes[..size - 1]),
            Err(E::Truncated {
                need: size,
                got: size - 1
            })
        );
        assert!(matches!(parse(&bytes[..12]), Err(E::Truncated { .. })));
        // Foreign: no cookie.
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(parse(&bad), Err(E::NoCookie));
        // Not CPython 3.
        let mut two = bytes.clone();
        two[8..16].copy_from_slice(&0x020700f0u64.to_le_bytes());
        assert!(matches!(parse(&two), Err(E::NotPython3 { .. })));
        // A minor version without a table: named, never parsed with another's table.
        let mut next = bytes.clone();
        next[8..16].copy_from_slice(&0x031000a1u64.to_le_bytes());
        let err = parse(&next).unwrap_err();
        assert_eq!(
            err,
            E::UnknownMinor {
                minor: 16,
                version_hex: 0x031000a1
            }
        );
        assert_eq!(
            err.to_string(),
            "unsupported Python version 3.16 (leaktrace supports 3.8-3.15)"
        );
        // The free-threaded flag is read and reported (the caller refuses such a target).
        let mut ft = bytes.clone();
        ft[16] = 1;
        assert!(parse(&ft).unwrap().free_threaded);
        ft[16] = 2;
        assert_eq!(
            parse(&ft),
            Err(E::Implausible {
                entry: "free_threaded"
            })
        );
        // An offset far outside its structure.
        let table = debug_offsets::table_for(minor).unwrap();
        let at = table
            .entries
            .iter()
            .find(|(n, _)| *n == "interpreter_frame.executable")
            .unwrap()
            .1 as usize;
        let mut wild = bytes.clone();
        wild[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            parse(&wild),
            Err(E::Implausible {
                entry: "interpreter_frame.executable"
            })
        );
    }
    // Another version's struct under a patched version: 3.15's bytes read with 3.14's
    // table (and so on) never give that version's layout.
    for (bytes_of, claimed) in [(14, 13), (15, 14), (13, 14), (14, 15), (15, 13)] {
        let mut bytes = golden_debug_offsets(bytes_of);
        bytes.resize(bytes.len().max(1024), 0);
        let hex = 0x030000f0u64 | (u64::from(claimed) << 16);
        bytes[8..16].copy_from_slice(&hex.to_le_bytes());
        if let Ok(parsed) = parse(&bytes) {
            assert_ne!(
                parsed.layout,
                layout_for(3, claimed).unwrap(),
                "3.{bytes_of} bytes as 3.{claimed}"
            );
            assert_ne!(
                parsed.layout,
                layout_for(3, bytes_of).unwrap(),
                "3.{bytes_of} bytes as 3.{claimed}"
            );
        }
    }
}

/// The golden files are what the real binaries hold (when the interpreters are here).
#[test]
fn debug_offsets_golden_match_the_binaries() {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    if let Some(p) = prefix(13) {
        files.push((13, p.join("lib/libpython3.13.so.1.0")));
    }
    if let Some(root) = sid_root() {
        for minor in [14, 15] {
            files.push((minor, root.join(format!("usr/bin/python3.{minor}"))));
            files.push((
                minor,
                root.join(format!(
                    "usr/lib/x86_64-linux-gnu/libpython3.{minor}.so.1.0"
                )),
            ));
        }
    }
    for (minor, file) in files {
        let golden = golden_debug_offsets(minor);
        assert_eq!(
            runtime_bytes(&file, golden.len()),
            golden,
            "{}",
            file.display()
        );
    }
}

/// Older versions have no cookie.
#[test]
fn no_debug_offsets_before_3_13() {
    let Some(prefix) = prefix(12) else {
        return;
    };
    let bytes = runtime_bytes(&prefix.join("lib/libpython3.12.so.1.0"), 584);
    assert_eq!(
        debug_offsets::parse(&bytes),
        Err(DebugOffsetsError::NoCookie)
    );
}

/// Runs `tests/data/python/walk_frames.py` with 3.`minor` (pyenv's, or inside the sid root
/// through chroot, the script given on stdin) and the layout as JSON.
fn run_walk_frames(minor: u32, layout_json: String) -> Option<std::process::Output> {
    let script = repo().join("tests/data/python/walk_frames.py");
    if SID_MINORS.contains(&minor) {
        let root = sid_root()?;
        let source = std::fs::File::open(&script).unwrap();
        return Some(
            Command::new("chroot")
                .arg(&root)
                .arg(format!("/usr/bin/python3.{minor}"))
                .arg("-")
                .arg(layout_json)
                .stdin(source)
                .output()
                .unwrap(),
        );
    }
    let prefix = prefix(minor)?;
    Some(
        Command::new(prefix.join(format!("bin/python3.{minor}")))
            .arg(script)
            .arg(layout_json)
            .output()
            .unwrap(),
    )
}

/// End to end: each interpreter walks its own threads and frames by these offsets
/// (tests/data/python/walk_frames.py, via ctypes), and the names and lines decoded here
/// must match what CPython reports.
#[test]
fn live_walk_matches_interpreter() {
    for &minor in MINORS {
        let layout = layout_for(3, minor).unwrap();
        let json: serde_json::Map<String, serde_json::Value> = layout
            .fields()
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.into()))
            .collect();
        let Some(out) = run_walk_frames(minor, serde_json::Value::Object(json).to_string()) else {
            continue;
        };
        assert!(
            out.status.success(),
            "3.{minor}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["version"], serde_json::json!([3, minor]));
        assert_eq!(doc["problems"], serde_json::json!([]), "3.{minor}");
        let frames = doc["frames"].as_array().unwrap();
        let expected = doc["expected"].as_array().unwrap();
        // The walk started inside a helper called by walk(); align on walk().
        let start = frames.iter().position(|f| f["name"] == "walk").unwrap();
        let frames = &frames[start..];
        assert_eq!(frames.len(), expected.len(), "3.{minor}: frame count");
        for (i, (got, want)) in frames.iter().zip(expected).enumerate() {
            for key in ["name", "filename", "firstlineno"] {
                assert_eq!(got[key], want[key], "3.{minor} frame {i} {key}");
            }
            if minor >= 11 {
                assert_eq!(got["qualname"], want["qualname"], "3.{minor} frame {i}");
            }
            if i == 0 {
                continue; // walk() kept running after its frame was read
            }
            let table: Vec<u8> = {
                let hex = got["table"].as_str().unwrap();
                (0..hex.len())
                    .step_by(2)
                    .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
                    .collect()
            };
            let line = crate::python::linetable::line_number(
                3,
                minor,
                got["firstlineno"].as_i64().unwrap() as i32,
                &table,
                got["offset"].as_i64().unwrap(),
            );
            assert_eq!(
                line.map(u64::from),
                want["line"].as_u64(),
                "3.{minor} frame {i} ({}) line",
                want["name"]
            );
        }
    }
}
