//! Kernel functions (kfuncs) for programs that aya 0.14 cannot link against them.
//!
//! A kfunc call is a `call` instruction with `src_reg = BPF_PSEUDO_KFUNC_CALL` (2) and the
//! function's BTF type id in the running kernel as `imm`; neither the Rust eBPF toolchain nor
//! aya-obj produce one. The eBPF side calls a marker helper number instead (see
//! [`tracer_common::KFUNC_MARKER_SESSION_IS_RETURN`]) and [`patch_calls`] rewrites those calls,
//! with the id that [`vmlinux_func_id`] finds in `/sys/kernel/btf/vmlinux`, before the program
//! is loaded. The verifier then checks the call against the kfunc's own prototype and its
//! rules for the program type, as for any compiler-made kfunc call.
//!
//! The BTF walk reads only type headers and names (the format is the kernel's
//! `Documentation/bpf/btf.rst`): a few milliseconds for the 100k-odd types of a kernel, where a
//! full parse takes far longer.

use std::{path::Path, sync::OnceLock};

use anyhow::{bail, Context, Result};
use aya_obj::generated::bpf_insn;

/// Where the running kernel describes its own types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_FUNC: u32 = 12;
/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// The BTF id of `bpf_session_is_return` in the running kernel, looked up once per process
/// (the support probe and the program load both need it).
pub fn session_is_return_id() -> Result<u32> {
    static ID: OnceLock<std::result::Result<u32, String>> = OnceLock::new();
    cached_func_id(&ID, "bpf_session_is_return")
}

/// The BTF id of `bpf_session_cookie` in the running kernel, looked up once per process.
pub fn session_cookie_id() -> Result<u32> {
    static ID: OnceLock<std::result::Result<u32, String>> = OnceLock::new();
    cached_func_id(&ID, "bpf_session_cookie")
}

/// [`vmlinux_func_id`] of `name`, looked up once into `cell` (the error too).
fn cached_func_id(cell: &OnceLock<std::result::Result<u32, String>>, name: &str) -> Result<u32> {
    cell.get_or_init(|| vmlinux_func_id(name).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The BTF type id of the function (`BTF_KIND_FUNC`) called `name` in the running kernel.
pub fn vmlinux_func_id(name: &str) -> Result<u32> {
    let path = Path::new(VMLINUX_BTF);
    let blob = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} (a kernel built without CONFIG_DEBUG_INFO_BTF)",
            path.display()
        )
    })?;
    func_id(&blob, name)
}

/// The id of the `BTF_KIND_FUNC` type called `name` in a raw BTF blob (little-endian, as the
/// kernel's own).
pub fn func_id(blob: &[u8], name: &str) -> Result<u32> {
    let u16_at = |o: usize| blob.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        blob.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(0) != Some(BTF_MAGIC) {
        bail!("not a BTF blob (bad magic)");
    }
    let field = |o: usize| {
        u32_at(o)
            .map(|v| v as usize)
            .context("truncated BTF header")
    };
    let hdr_len = field(4)?;
    let (type_off, type_len) = (field(8)?, field(12)?);
    let (str_off, str_len) = (field(16)?, field(20)?);
    // A section's [start, end) in the blob, both past the header.
    let section = |off: usize, len: usize, what: &str| {
        let start = hdr_len.checked_add(off);
        let end = start
            .and_then(|s| s.checked_add(len))
            .filter(|&e| e <= blob.len());
        start
            .zip(end)
            .with_context(|| format!("BTF {what} section out of range"))
    };
    let (types, types_end) = section(type_off, type_len, "type")?;
    let (strs, strs_end) = section(str_off, str_len, "string")?;
    let strings = &blob[strs..strs_end];
    let name_is = |off: usize| {
        strings
            .get(off..)
            .and_then(|s| s.get(..name.len() + 1))
            .is_some_and(|s| &s[..name.len()] == name.as_bytes() && s[name.len()] == 0)
    };
    let mut at = types;
    let mut id = 1u32;
    while at < types_end {
        let (Some(name_off), Some(info)) = (u32_at(at), u32_at(at + 4)) else {
            bail!("truncated BTF type {id}");
        };
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        if kind == BTF_KIND_FUNC && name_is(name_off as usize) {
            return Ok(id);
        }
        let extra = match kind {
            1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
            3 => 12,                   // ARRAY
            4 | 5 => vlen * 12,        // STRUCT, UNION
            6 | 13 => vlen * 8,        // ENUM, FUNC_PROTO
            15 | 19 => vlen * 12,      // DATASEC, ENUM64
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
            other => bail!("BTF type {id} has unknown kind {other}"),
        };
        at += 12 + extra;
        id += 1;
    }
    bail!("the kernel's BTF has no function `{name}`")
}

/// Rewrites every helper call to `marker` in `insns` into a call of the kfunc with BTF id
/// `btf_id` in the kernel's own BTF. Returns how many calls were rewritten.
pub fn patch_calls(insns: &mut [bpf_insn], marker: u32, btf_id: u32) -> usize {
    let mut n = 0;
    for insn in insns.iter_mut() {
        if insn.code == CALL && insn.src_reg() == 0 && insn.imm as u32 == marker {
            insn.set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            insn.imm = btf_id as i32;
            // off 0: the kfunc is in vmlinux, not in a module's BTF.
            insn.off = 0;
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: header, then `types` (raw), then `strings`.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    fn ty(name_off: u32, kind: u32, vlen: u32, size_or_type: u32, extra: usize) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&name_off.to_le_bytes());
        t.extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
        t.extend_from_slice(&size_or_type.to_le_bytes());
        t.extend(std::iter::repeat_n(0u8, extra));
        t
    }

    #[test]
    fn finds_a_function_past_types_of_every_size() {
        let strings = b"\0int\0s\0bpf_session_is_return\0bpf_session\0";
        let mut types = Vec::new();
        types.extend(ty(1, 1, 0, 4, 4)); // 1: INT
        types.extend(ty(5, 4, 3, 24, 36)); // 2: STRUCT with 3 members
        types.extend(ty(0, 13, 2, 1, 16)); // 3: FUNC_PROTO, 2 params
        types.extend(ty(29, 12, 0, 3, 0)); // 4: FUNC bpf_session (a prefix of the name)
        types.extend(ty(0, 19, 1, 8, 12)); // 5: ENUM64
        types.extend(ty(7, 12, 0, 3, 0)); // 6: FUNC bpf_session_is_return
        let b = blob(&types, strings);
        assert_eq!(func_id(&b, "bpf_session_is_return").unwrap(), 6);
        assert_eq!(func_id(&b, "bpf_session").unwrap(), 4);
        // A struct of that name is not a function.
        assert!(func_id(&b, "s").is_err());
        let e = func_id(&b, "bpf_session_cookie").unwrap_err().to_string();
        assert_eq!(e, "the kernel's BTF has no function `bpf_session_cookie`");
    }

    #[test]
    fn refuses_hostile_blobs() {
        assert!(func_id(b"", "f").is_err());
        assert!(func_id(&[0x9f, 0xeb, 1, 0], "f").is_err());
        let mut b = blob(&ty(1, 12, 0, 0, 0), b"\0f\0");
        // A type section longer than the blob.
        b[12] = 0xff;
        assert!(func_id(&b, "f").is_err());
        // An unknown kind.
        let b = blob(&ty(1, 31, 0, 0, 0), b"\0f\0");
        assert!(func_id(&b, "f")
            .unwrap_err()
            .to_string()
            .contains("unknown kind"));
        // A truncated type, and a name offset past the strings.
        let b = blob(&[0u8; 6], b"\0");
        assert!(func_id(&b, "f").is_err());
        let b = blob(&ty(1000, 12, 0, 0, 0), b"\0f\0");
        assert!(func_id(&b, "f").is_err());
    }

    #[test]
    fn this_kernel_has_the_session_kfuncs() {
        // Kernel 6.18 on this machine kind; the ids agree with aya-obj's full parse.
        let btf = aya_obj::btf::Btf::from_sys_fs().unwrap();
        for (name, cached) in [
            ("bpf_session_is_return", session_is_return_id().unwrap()),
            ("bpf_session_cookie", session_cookie_id().unwrap()),
        ] {
            let id = vmlinux_func_id(name).unwrap();
            assert_eq!(cached, id, "{name}");
            let expected = btf
                .id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
                .unwrap();
            assert_eq!(id, expected, "{name}");
        }
    }

    #[test]
    fn rewrites_only_marker_calls() {
        let mk = |code: u8, src: u8, imm: i32| {
            let mut i = bpf_insn {
                code,
                _bitfield_align_1: [],
                _bitfield_1: Default::default(),
                off: 0,
                imm,
            };
            i.set_src_reg(src);
            i
        };
        let marker = tracer_common::KFUNC_MARKER_SESSION_IS_RETURN;
        let mut insns = [
            mk(CALL, 0, 174),           // a helper call
            mk(CALL, 0, marker as i32), // the marker
            mk(CALL, 1, marker as i32), // a bpf-to-bpf call that happens to have that offset
            mk(0xb7, 0, marker as i32), // r0 = marker
        ];
        assert_eq!(patch_calls(&mut insns, marker, 65514), 1);
        assert_eq!((insns[1].src_reg(), insns[1].imm), (2, 65514));
        assert_eq!((insns[0].src_reg(), insns[0].imm), (0, 174));
        assert_eq!(insns[2].imm, marker as i32);
        assert_eq!(insns[3].imm, marker as i32);
    }
}
