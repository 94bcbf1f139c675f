//! Python frames: a recorded (code object, instruction) pair read back, through the
//! interpreter's layout, into function, file and line. Every read of the target is bounded.

use std::collections::HashMap;

use tracer_common::PyFrame;

use crate::{
    python::{layout::Layout, linetable, runtime::Interpreter},
    resolve::frame::{Frame, FrameKind},
};

/// Longest string read from the target (names, file names).
const MAX_STR_CHARS: u64 = 4096;
/// Longest line table read from the target.
const MAX_LINETABLE_BYTES: u64 = 1 << 20;

/// What a code object says about itself.
#[derive(Clone, Debug)]
struct CodeInfo {
    name: String,
    file: String,
    firstlineno: u32,
    linetable: Vec<u8>,
}

/// What one process's code objects resolved to so far.
#[derive(Default)]
pub struct PyFrames {
    /// Code objects read, by (address, co_name pointer).
    code_cache: HashMap<(u64, u64), Option<CodeInfo>>,
    /// Frames resolved, by (code, instruction, co_name): stacks share most of their frames.
    frame_cache: HashMap<PyFrame, Option<Frame>>,
}

impl PyFrames {
    /// A Python frame for a recorded (code, instruction) pair.
    pub fn frame(&mut self, interp: &Interpreter, f: PyFrame) -> Option<Frame> {
        if let Some(frame) = self.frame_cache.get(&f) {
            return frame.clone();
        }
        let frame = self.resolve_frame(interp, f);
        self.frame_cache.insert(f, frame.clone());
        frame
    }

    fn resolve_frame(&mut self, interp: &Interpreter, f: PyFrame) -> Option<Frame> {
        if f.code == 0 {
            // A C-stack shim frame (3.12+).
            return None;
        }
        let key = (f.code, f.name);
        let info = match self.code_cache.remove(&key) {
            Some(info) => info,
            None => {
                // Still the same code object? A freed one's address may hold another by now.
                let same = interp.mem.u64(f.code + interp.layout.code_name) == Some(f.name);
                let info = if same {
                    read_code(interp, f.code)
                } else {
                    None
                };
                if !same {
                    return Some(Frame {
                        function: "<freed code object>".to_string(),
                        file: None,
                        line: None,
                        module: None,
                        kind: FrameKind::Python,
                    });
                }
                info
            }
        };
        let Some(info) = info else {
            self.code_cache.insert(key, None);
            return Some(Frame {
                function: format!("<unreadable code object {:#x}>", f.code),
                file: None,
                line: None,
                module: None,
                kind: FrameKind::Python,
            });
        };
        let line = byte_offset(interp, f).and_then(|off| {
            linetable::line_number(
                interp.major,
                interp.minor,
                info.firstlineno as i32,
                &info.linetable,
                off as i64,
            )
        });
        let frame = Frame {
            function: info.name.clone(),
            file: Some(info.file.clone()),
            line: line.or(Some(info.firstlineno)),
            module: None,
            kind: FrameKind::Python,
        };
        self.code_cache.insert(key, Some(info));
        Some(frame)
    }
}

/// Byte offset into the code's bytecode of the instruction a frame is at.
fn byte_offset(interp: &Interpreter, f: PyFrame) -> Option<u64> {
    let l = &interp.layout;
    if interp.minor <= 10 {
        let lasti = f.instr as u32 as i32;
        return Some(if lasti < 0 {
            0
        } else {
            lasti as u64 * l.frame_lasti_scale.max(1)
        });
    }
    let start = f.code.checked_add(l.code_code_adaptive)?;
    let off = f.instr.checked_sub(start)?;
    // 3.13's instr_ptr is the instruction being executed or, in a caller, the one after
    // its call returns; step back one code unit so the call's own line is reported.
    if interp.minor >= 13 {
        return Some(off.saturating_sub(2));
    }
    Some(off)
}

fn read_code(interp: &Interpreter, code: u64) -> Option<CodeInfo> {
    let l = &interp.layout;
    if let Some(ty) = interp.code_type {
        if interp.mem.u64(code + l.object_type)? != ty {
            return None;
        }
    }
    let name_field = if Layout::has(l.code_qualname) {
        l.code_qualname
    } else {
        l.code_name
    };
    let name = read_str(interp, interp.mem.u64(code + name_field)?)?;
    let file = read_str(interp, interp.mem.u64(code + l.code_filename)?)?;
    let firstlineno = interp.mem.u32(code + l.code_firstlineno)?;
    let table = interp.mem.u64(code + l.code_linetable)?;
    let linetable = read_bytes(interp, table).unwrap_or_default();
    Some(CodeInfo {
        name,
        file,
        firstlineno,
        linetable,
    })
}

fn read_bytes(interp: &Interpreter, obj: u64) -> Option<Vec<u8>> {
    let l = &interp.layout;
    let size = interp.mem.u64(obj + l.bytes_size)?;
    if size > MAX_LINETABLE_BYTES {
        return None;
    }
    interp.mem.read(obj + l.bytes_sval, size as usize)
}

fn read_str(interp: &Interpreter, obj: u64) -> Option<String> {
    let l = &interp.layout;
    let len = interp.mem.u64(obj + l.unicode_length)?.min(MAX_STR_CHARS);
    let state = l.str_state(interp.mem.u32(obj + l.unicode_state)? as u64);
    let kind = state.kind;
    if !state.compact || !matches!(kind, 1 | 2 | 4) {
        return None;
    }
    let raw = interp.mem.read(obj + state.data, (len * kind) as usize)?;
    Some(match kind {
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => String::from_utf16_lossy(
            &raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        ),
        _ => raw
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}')
            })
            .collect(),
    })
}
