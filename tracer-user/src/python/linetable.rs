//! Line-number decoding for CPython code objects.
//!
//! Given a code object's `co_firstlineno`, its raw line table (the contents of the `bytes`
//! object at [`Layout::code_linetable`](super::Layout::code_linetable)) and the byte offset of an
//! instruction in the bytecode, these functions give the source line CPython itself would report
//! (`PyCode_Addr2Line`). Three formats exist:
//!
//! * 3.8–3.9 `co_lnotab`: pairs `(address increment: u8, line increment: i8)`; an offset's line
//!   is the first line plus the line increments of every pair whose cumulative address is at or
//!   before the offset.
//! * 3.10 `co_linetable` (PEP 626): pairs `(range length in bytes: u8, line delta: i8)`, each
//!   pair one range; a delta of -128 means "no line" for that range and leaves the running line
//!   unchanged. Empty ranges only carry deltas.
//! * 3.11+ location table (PEP 657): variable-length entries, each starting with a byte with
//!   bit 7 set, `1 cccc lll`: `lll + 1` code units (2 bytes each) share one location; the code
//!   `cccc` says how the line changes: 15 no location, 14 long form and 13 "no columns" (signed
//!   varint delta follows), 10–12 one-line forms (delta = code − 10), 0–9 short forms (same
//!   line). Varints are 6-bit little-endian chunks with 0x40 as the continuation bit; signed
//!   ones keep the sign in bit 0.
//!
//! All decoders are bounded by the table length and never panic; malformed input gives `None`.
//! A negative offset (a frame that has not started: `f_lasti == -1`, or 3.11/3.12's
//! `prev_instr` one unit before the code) yields `co_firstlineno`, as in CPython.

/// The three line-table encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `co_lnotab`, CPython 3.8 and 3.9.
    Lnotab,
    /// PEP 626 `co_linetable`, CPython 3.10.
    Linetable310,
    /// PEP 657 location table, CPython 3.11 and later.
    Locations,
}

impl Format {
    /// The encoding used by CPython `major.minor`, or `None` for versions before 3.8.
    pub fn for_version(major: u32, minor: u32) -> Option<Format> {
        match (major, minor) {
            (3, 8) | (3, 9) => Some(Format::Lnotab),
            (3, 10) => Some(Format::Linetable310),
            (3, m) if m >= 11 => Some(Format::Locations),
            _ => None,
        }
    }
}

/// Line of the instruction at `byte_offset` (bytes from the start of the bytecode) for CPython
/// `major.minor`. `None` if the version is unknown, the table is malformed or does not cover
/// the offset, or CPython records no line there.
pub fn line_number(
    major: u32,
    minor: u32,
    firstlineno: i32,
    table: &[u8],
    byte_offset: i64,
) -> Option<u32> {
    decode(
        Format::for_version(major, minor)?,
        firstlineno,
        table,
        byte_offset,
    )
}

/// Like [`line_number`] with the format given directly.
pub fn decode(format: Format, firstlineno: i32, table: &[u8], byte_offset: i64) -> Option<u32> {
    if byte_offset < 0 {
        return to_line(i64::from(firstlineno));
    }
    match format {
        Format::Lnotab => lnotab_line(firstlineno, table, byte_offset),
        Format::Linetable310 => linetable310_line(firstlineno, table, byte_offset),
        Format::Locations => locations_line(firstlineno, table, byte_offset),
    }
}

fn to_line(line: i64) -> Option<u32> {
    u32::try_from(line).ok()
}

/// 3.8/3.9 `co_lnotab`. Offsets past the end of the code still get the last line, as in
/// CPython (the table does not record the code length).
pub fn lnotab_line(firstlineno: i32, table: &[u8], byte_offset: i64) -> Option<u32> {
    if byte_offset < 0 {
        return to_line(i64::from(firstlineno));
    }
    let mut addr: i64 = 0;
    let mut line = i64::from(firstlineno);
    for pair in table.chunks_exact(2) {
        addr += i64::from(pair[0]);
        if addr > byte_offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    to_line(line)
}

/// 3.10 PEP 626 `co_linetable`.
pub fn linetable310_line(firstlineno: i32, table: &[u8], byte_offset: i64) -> Option<u32> {
    if byte_offset < 0 {
        return to_line(i64::from(firstlineno));
    }
    let mut addr: i64 = 0;
    let mut line = i64::from(firstlineno);
    for pair in table.chunks_exact(2) {
        let delta = pair[1] as i8;
        let current = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        let end = addr + i64::from(pair[0]);
        if byte_offset < end {
            return current.and_then(to_line);
        }
        addr = end;
    }
    None
}

/// Reads an unsigned location-table varint at `*pos`, advancing it.
fn read_varint(table: &[u8], pos: &mut usize) -> Option<u64> {
    let mut byte = *table.get(*pos)?;
    *pos += 1;
    let mut value = u64::from(byte & 63);
    let mut shift = 0u32;
    while byte & 64 != 0 {
        byte = *table.get(*pos)?;
        *pos += 1;
        shift += 6;
        if shift > 36 {
            return None;
        }
        value |= u64::from(byte & 63) << shift;
    }
    Some(value)
}

fn read_signed_varint(table: &[u8], pos: &mut usize) -> Option<i64> {
    let raw = read_varint(table, pos)?;
    let magnitude = (raw >> 1) as i64;
    Some(if raw & 1 != 0 { -magnitude } else { magnitude })
}

/// 3.11+ PEP 657 location table.
pub fn locations_line(firstlineno: i32, table: &[u8], byte_offset: i64) -> Option<u32> {
    if byte_offset < 0 {
        return to_line(i64::from(firstlineno));
    }
    let mut addr: i64 = 0;
    let mut line = i64::from(firstlineno);
    let mut pos = 0usize;
    while pos < table.len() {
        let head = table[pos];
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let units = i64::from(head & 7) + 1;
        let mut body = pos + 1;
        let delta = match code {
            15 => 0,
            13 | 14 => read_signed_varint(table, &mut body)?,
            10..=12 => i64::from(code) - 10,
            _ => 0,
        };
        line = line.checked_add(delta)?;
        let end = addr + units * 2;
        if byte_offset < end {
            return if code == 15 { None } else { to_line(line) };
        }
        addr = end;
        // Skip the rest of this entry (column data): every byte up to the next start byte.
        pos += 1;
        while pos < table.len() && table[pos] & 0x80 == 0 {
            pos += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/python")
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Decodes every code unit of every code object in `lines-3.<minor>.json` and compares
    /// with what that interpreter reported.
    fn check_golden(minor: u32) {
        let path = golden_dir().join(format!("lines-3.{minor}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let python = doc["python"].as_str().unwrap();
        assert!(python.starts_with(&format!("3.{minor}.")), "{python}");
        let codes = doc["code_objects"].as_array().unwrap();
        assert!(codes.len() > 10);
        let mut checked = 0;
        for code in codes {
            let name = code["qualname"].as_str().unwrap();
            let first = code["firstlineno"].as_i64().unwrap() as i32;
            let table = unhex(code["table"].as_str().unwrap());
            let lines = code["lines"].as_array().unwrap();
            assert_eq!(
                lines.len() as u64 * 2,
                code["code_len"].as_u64().unwrap(),
                "{name}: golden file does not cover every code unit"
            );
            for pair in lines {
                let offset = pair[0].as_i64().unwrap();
                let want = pair[1].as_u64().map(|l| l as u32);
                let got = line_number(3, minor, first, &table, offset);
                assert_eq!(got, want, "3.{minor} {name} offset {offset}");
                checked += 1;
            }
            assert_eq!(
                line_number(3, minor, first, &table, -2),
                Some(first as u32),
                "3.{minor} {name}: negative offset"
            );
        }
        assert!(checked > 1000);
    }

    #[test]
    fn golden_3_8() {
        check_golden(8);
    }
    #[test]
    fn golden_3_9() {
        check_golden(9);
    }
    #[test]
    fn golden_3_10() {
        check_golden(10);
    }
    #[test]
    fn golden_3_11() {
        check_golden(11);
    }
    #[test]
    fn golden_3_12() {
        check_golden(12);
    }
    #[test]
    fn golden_3_13() {
        check_golden(13);
    }
    #[test]
    fn golden_3_14() {
        check_golden(14);
    }
    #[test]
    fn golden_3_15() {
        check_golden(15);
    }

    /// The golden sample really exercises the awkward encodings.
    #[test]
    fn golden_covers_hard_cases() {
        let text = std::fs::read_to_string(golden_dir().join("lines-3.8.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (mut negative, mut big_gap, mut split_addr) = (false, false, false);
        for code in doc["code_objects"].as_array().unwrap() {
            let table = unhex(code["table"].as_str().unwrap());
            for pair in table.chunks_exact(2) {
                negative |= (pair[1] as i8) < 0;
                big_gap |= pair[1] == 127; // a line jump split over several pairs
                split_addr |= pair[0] == 255 && pair[1] == 0; // an address jump split
            }
        }
        assert!(negative && big_gap && split_addr);
        let text = std::fs::read_to_string(golden_dir().join("lines-3.11.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut codes = [false; 16];
        for code in doc["code_objects"].as_array().unwrap() {
            let table = unhex(code["table"].as_str().unwrap());
            for b in table.iter().filter(|b| **b & 0x80 != 0) {
                codes[usize::from((b >> 3) & 15)] = true;
            }
        }
        for c in [0, 10, 11, 13, 14, 15] {
            assert!(codes[c], "location code {c} not exercised");
        }
    }

    #[test]
    fn hand_built_tables() {
        // lnotab: +6 bytes/+1 line, +4 bytes/-2 lines.
        let t = [6, 1, 4, 0xfe];
        assert_eq!(lnotab_line(10, &t, 0), Some(10));
        assert_eq!(lnotab_line(10, &t, 6), Some(11));
        assert_eq!(lnotab_line(10, &t, 10), Some(9));
        // 3.10: 4 bytes line+1, 2 bytes no line, 2 bytes line+2 (from 11).
        let t = [4, 1, 2, 0x80, 2, 2];
        assert_eq!(linetable310_line(10, &t, 2), Some(11));
        assert_eq!(linetable310_line(10, &t, 4), None);
        assert_eq!(linetable310_line(10, &t, 6), Some(13));
        assert_eq!(linetable310_line(10, &t, 8), None);
        // 3.11: one-line form +1 (2 units, 2 column bytes), no location (1 unit), long form
        // line delta -3 (signed varint 7), end delta 0, columns 1 and 2.
        let t = [
            0x80 | (11 << 3) | 1,
            0,
            4,
            0x80 | (15 << 3),
            0x80 | (14 << 3),
            7,
            0,
            1,
            2,
        ];
        assert_eq!(locations_line(10, &t, 0), Some(11));
        assert_eq!(locations_line(10, &t, 2), Some(11));
        assert_eq!(locations_line(10, &t, 4), None);
        assert_eq!(locations_line(10, &t, 6), Some(8));
        assert_eq!(locations_line(10, &t, 8), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in 0..64 {
            for _ in 0..200 {
                let table: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let first = (next() as i32) >> (next() % 32);
                let offset = (next() % 300) as i64 - 10;
                for format in [Format::Lnotab, Format::Linetable310, Format::Locations] {
                    let _ = decode(format, first, &table, offset);
                }
            }
        }
        // Unterminated varint, continuation bytes only, huge offsets.
        let t = [
            0x80 | (14 << 3),
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
            0x7f,
        ];
        assert_eq!(locations_line(1, &t, 0), None);
        assert_eq!(locations_line(1, &[0x01, 0x02], 0), None);
        assert_eq!(decode(Format::Locations, 1, &[], i64::MAX), None);
        assert_eq!(decode(Format::Lnotab, i32::MIN, &[0, 0x80], 5), None);
        assert_eq!(line_number(3, 7, 1, &[], 0), None);
    }
}
