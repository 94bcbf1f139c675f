//! Which CPython a binary is.
//!
//! [`detect`] looks at a `python3.X` executable or a `libpython3.X.so*` and tries, most
//! reliable first:
//!
//! 1. the `Py_Version` symbol (3.11+; exported, holds `PY_VERSION_HEX`), read from the file's
//!    data;
//! 2. a `DT_NEEDED` entry `libpython3.X.so…` (an executable linked against the shared library);
//! 3. the read-only strings every build embeds, `lib/python3.X` / `python3.X` (the stdlib
//!    directory name); the bare `PY_VERSION` string (`"3.8.18"`) is not usable, the linker
//!    often merges it into the tail of the install-prefix string;
//! 4. the file name (`libpython3.X.so.1.0`, `python3.X`).

use std::path::Path;

use anyhow::Context as _;
use object::{Object, ObjectSection, ObjectSymbol};

/// `(major, minor)` of the CPython in `path`, or `None` if it does not look like one.
///
/// Errors only if the file cannot be read.
pub fn detect(path: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let data = crate::target::elf::read_file(path)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(detect_bytes(
        &data,
        path.file_name().and_then(|n| n.to_str()),
    ))
}

/// [`detect`] on a file's contents (`file_name`, if known, is the last resort).
pub fn detect_bytes(data: &[u8], file_name: Option<&str>) -> Option<(u32, u32)> {
    if let Ok(file) = object::File::parse(data) {
        if let Some(v) = from_py_version_symbol(&file) {
            return Some(v);
        }
        if let Some(v) = from_needed(data) {
            return Some(v);
        }
        if let Some(v) = from_rodata_strings(&file) {
            return Some(v);
        }
    }
    file_name.and_then(from_file_name)
}

/// Parses a `PY_VERSION_HEX` value (`0xMMmmppLS`).
pub fn from_version_hex(hex: u64) -> Option<(u32, u32)> {
    let major = ((hex >> 24) & 0xff) as u32;
    let minor = ((hex >> 16) & 0xff) as u32;
    (major == 3 && hex >> 32 == 0).then_some((major, minor))
}

fn from_py_version_symbol(file: &object::File<'_>) -> Option<(u32, u32)> {
    let symbol = file
        .dynamic_symbols()
        .chain(file.symbols())
        .find(|s| s.name() == Ok("Py_Version") && s.size() >= 4)?;
    let section = file.section_by_index(symbol.section_index()?).ok()?;
    let data = section.data().ok()?;
    let start = usize::try_from(symbol.address().checked_sub(section.address())?).ok()?;
    let raw = data.get(start..start.checked_add(4)?)?;
    // An `unsigned long`; the version is in the low 32 bits (little-endian first four bytes).
    from_version_hex(u64::from(u32::from_le_bytes(raw.try_into().ok()?)))
}

/// `DT_NEEDED` libpython of a dynamically linked executable.
fn from_needed(data: &[u8]) -> Option<(u32, u32)> {
    use object::read::elf::{Dyn as _, FileHeader as _};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.sections(endian, data).ok()?;
    let (dynamic, index) = sections.dynamic(endian, data).ok()??;
    let strings = sections.strings(endian, data, index).ok()?;
    for entry in dynamic {
        if entry.tag32(endian) == Some(object::elf::DT_NEEDED) {
            let name = entry.string(endian, strings).ok()?;
            if let Some(v) = std::str::from_utf8(name).ok().and_then(from_lib_name) {
                return Some(v);
            }
        }
    }
    None
}

/// Counts `python3.X` stdlib-directory strings in read-only data and returns the most common.
fn from_rodata_strings(file: &object::File<'_>) -> Option<(u32, u32)> {
    let section = file.section_by_name(".rodata")?;
    let data = section.data().ok()?;
    let mut counts: Vec<((u32, u32), usize)> = Vec::new();
    for s in data.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(s) else {
            continue;
        };
        let tail = s.rsplit('/').next().unwrap_or(s);
        if s != tail && !s.ends_with(&format!("lib/{tail}")) {
            continue;
        }
        if let Some(v) = exact_python_name(tail) {
            match counts.iter_mut().find(|(k, _)| *k == v) {
                Some((_, n)) => *n += 1,
                None => counts.push((v, 1)),
            }
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v)
}

/// `python3.X` exactly.
fn exact_python_name(s: &str) -> Option<(u32, u32)> {
    let rest = s.strip_prefix("python3.")?;
    if rest.is_empty() || rest.len() > 3 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((3, rest.parse().ok()?))
}

/// `libpython3.X.so…` or `libpython3.X.a` (also `libpython3.Xd`, `libpython3.Xt`).
fn from_lib_name(name: &str) -> Option<(u32, u32)> {
    let rest = name.strip_prefix("libpython3.")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    let after = &rest[digits.len()..];
    let after = after.trim_start_matches(['d', 't', 'm', 'u']);
    (after.starts_with(".so") || after.starts_with(".a")).then_some(())?;
    Some((3, digits.parse().ok()?))
}

/// Version from a file name: `libpython3.X.so*` or `python3.X` (optionally with an ABI suffix
/// such as `python3.13t`).
pub fn from_file_name(name: &str) -> Option<(u32, u32)> {
    if let Some(v) = from_lib_name(name) {
        return Some(v);
    }
    let rest = name.strip_prefix("python3.")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let suffix = &rest[digits.len()..];
    if digits.is_empty() || !suffix.chars().all(|c| matches!(c, 'd' | 't' | 'm' | 'u')) {
        return None;
    }
    Some((3, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const MINORS: &[u32] = &[8, 9, 10, 11, 12, 13];

    /// Some installed pyenv prefix `versions/3.<minor>.<patch>`.
    fn prefix(minor: u32) -> Option<PathBuf> {
        let wanted = format!("3.{minor}.");
        std::fs::read_dir(pyenv_root().join("versions"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.strip_prefix(&wanted)
                        .is_some_and(|rest| rest.parse::<u32>().is_ok())
                })
            })
            .max()
    }

    fn pyenv_root() -> PathBuf {
        if let Ok(root) = std::env::var("PYENV_ROOT") {
            return PathBuf::from(root);
        }
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".pyenv")
    }

    fn skip_missing() -> bool {
        std::env::var("LEAKTRACE_NO_PYENV").as_deref() == Ok("1")
    }

    #[test]
    fn file_names() {
        assert_eq!(from_file_name("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(from_file_name("libpython3.8.so"), Some((3, 8)));
        assert_eq!(from_file_name("libpython3.13t.so.1.0"), Some((3, 13)));
        assert_eq!(from_file_name("python3.10"), Some((3, 10)));
        assert_eq!(from_file_name("libpython3.so"), None);
        assert_eq!(from_file_name("python3"), None);
        assert_eq!(from_file_name("python3.11-config"), None);
        assert_eq!(from_version_hex(0x030d00f0), Some((3, 13)));
        assert_eq!(from_version_hex(0x020700f0), None);
    }

    /// Content wins over the name: each file is also copied to a misleading name.
    #[test]
    fn pyenv_binaries() {
        let scratch = std::env::temp_dir().join(format!("leaktrace-pyver-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let mut missing = Vec::new();
        for &minor in MINORS {
            let short = format!("3.{minor}");
            let Some(prefix) = prefix(minor) else {
                missing.push(format!("{}/versions/{short}.*", pyenv_root().display()));
                continue;
            };
            let lib = prefix.join(format!("lib/libpython{short}.so.1.0"));
            let exe = prefix.join(format!("bin/python{short}"));
            if !lib.exists() || !exe.exists() {
                missing.push(prefix.display().to_string());
                continue;
            }
            for file in [&lib, &exe] {
                assert_eq!(
                    detect(file).unwrap(),
                    Some((3, minor)),
                    "{}",
                    file.display()
                );
                let renamed = scratch.join("python3.99");
                std::fs::copy(file, &renamed).unwrap();
                assert_eq!(
                    detect(&renamed).unwrap(),
                    Some((3, minor)),
                    "{} renamed",
                    file.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        if !missing.is_empty() && !skip_missing() {
            panic!(
                "pyenv interpreters missing: {missing:?} (install them, or set \
                 LEAKTRACE_NO_PYENV=1 to skip)"
            );
        }
    }

    #[test]
    fn debian_static_python() {
        let path = Path::new("/usr/bin/python3.11");
        if !path.exists() {
            assert!(
                skip_missing(),
                "{} missing (set LEAKTRACE_NO_PYENV=1 to skip)",
                path.display()
            );
            return;
        }
        assert_eq!(detect(path).unwrap(), Some((3, 11)));
    }

    #[test]
    fn not_python() {
        assert_eq!(detect(Path::new("/bin/sh")).unwrap(), None);
        assert!(detect(Path::new("/nonexistent/python3.11")).is_err());
    }
}
