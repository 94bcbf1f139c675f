//! uprobe_multi links through the raw `bpf` syscall (aya 0.14 can load neither the programs nor
//! the links).
//!
//! A uprobe_multi link (`BPF_LINK_CREATE` with attach type `BPF_TRACE_UPROBE_MULTI`, kernel
//! 6.6+) attaches one program at many offsets of one binary, each with its own attach cookie,
//! optionally filtered to one process: leaktrace then holds one link per program and binary
//! (6 for a C library) instead of one perf event per probe (22), and attaching or detaching a
//! worker is a handful of syscalls and RCU grace periods rather than dozens.
//!
//! The kernel only accepts such a link for a program that was loaded with the same expected
//! attach type, which aya 0.14's `UProbe::load` never sets (it does not know the
//! `uprobe.multi` section either). So [`load_programs`] loads the programs itself: it parses the
//! same eBPF object with aya-obj, resolves map references against the maps aya already created
//! (so both paths share every map), links the bpf-to-bpf calls, and issues `BPF_PROG_LOAD` with
//! `expected_attach_type = BPF_TRACE_UPROBE_MULTI`. No BTF is passed: leaktrace's programs use
//! no CO-RE relocation, kfunc or BTF-typed global function, so the verifier needs none.
//!
//! Constants and layouts are aya-obj's bindings of the kernel's `include/uapi/linux/bpf.h`
//! (`union bpf_attr`'s `link_create.uprobe_multi`: path, offsets, ref_ctr_offsets, cookies, cnt,
//! flags, pid; `BPF_F_UPROBE_MULTI_RETURN` in flags makes it a return probe).
//!
//! Support is probed once ([`supported`]); `LEAKTRACE_UPROBE_MULTI=0` forces the perf-event
//! path ([`wanted`]), for tests and benchmarks of both.
//!
//! **Session links** (attach type `BPF_TRACE_UPROBE_SESSION`, kernel 6.13+) run one program at
//! both the entry and the return of each call, and skip the return when the entry half
//! returned 1: a call the tracer does not track then costs one trap, not two. The program
//! tells its halves apart with the kfunc `bpf_session_is_return`, which [`load_programs`]
//! links through [`crate::probes::kfunc`]; the program must be loaded with the session attach
//! type. [`session_supported`] probes for all of it once; `LEAKTRACE_UPROBE_SESSION=0` turns
//! sessions off ([`session_wanted`]) and leaves separate entry and return links.

use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::OnceLock,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_attr, bpf_cmd, bpf_insn,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE, BPF_F_UPROBE_MULTI_RETURN,
};

/// The environment variable that turns uprobe_multi off (`0`).
pub const ENV: &str = "LEAKTRACE_UPROBE_MULTI";

/// Whether the user left uprobe_multi on (anything but `LEAKTRACE_UPROBE_MULTI=0`).
pub fn wanted() -> bool {
    std::env::var_os(ENV).is_none_or(|v| v != "0")
}

/// The environment variable that turns session links off (`0`).
pub const SESSION_ENV: &str = "LEAKTRACE_UPROBE_SESSION";

/// Whether the user left session links on (anything but `LEAKTRACE_UPROBE_SESSION=0`).
pub fn session_wanted() -> bool {
    std::env::var_os(SESSION_ENV).is_none_or(|v| v != "0")
}

/// `BPF_TRACE_UPROBE_SESSION` of the kernel's `enum bpf_attach_type` (uapi, 6.13+), which
/// aya-obj's bindings predate.
pub const BPF_TRACE_UPROBE_SESSION: u32 = 57;

/// What a link runs its program at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// Function entries.
    Entry,
    /// Function returns (uretprobes).
    Return,
    /// Both, one program, the return skipped when the entry returned 1.
    Session,
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a valid, fully initialized bpf_attr of the size passed; the kernel
    // reads (and for PROG_LOAD's log, writes) only through pointers we set in it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret as RawFd)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all-zero is its documented default.
    unsafe { std::mem::zeroed() }
}

/// `BPF_PROG_LOAD` of a kprobe-type program with expected attach type `attach_type`
/// (`BPF_TRACE_UPROBE_MULTI` or [`BPF_TRACE_UPROBE_SESSION`]). On a verifier refusal the
/// error carries the log's tail.
fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CString,
    attach_type: u32,
) -> Result<OwnedFd> {
    let stats = std::env::var_os("LEAKTRACE_VERIFIER_STATS").is_some_and(|v| v == "1");
    let load = |log: &mut Vec<u8>| {
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integer fields of the PROG_LOAD member of the union.
        let a = unsafe { &mut attr.__bindgen_anon_3 };
        a.prog_type = BPF_PROG_TYPE_KPROBE as u32;
        a.expected_attach_type = attach_type;
        a.insn_cnt = insns.len() as u32;
        a.insns = insns.as_ptr() as u64;
        a.license = license.as_ptr() as u64;
        for (dst, src) in a.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        if !log.is_empty() {
            a.log_level = if stats { 4 } else { 1 };
            a.log_size = log.len() as u32;
            a.log_buf = log.as_mut_ptr() as u64;
        }
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    if stats {
        // BPF_LOG_STATS only: the verifier's time and state counts of a program that loads.
        let mut log = vec![0u8; 1 << 16];
        let started = std::time::Instant::now();
        let fd = load(&mut log);
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        eprintln!(
            "leaktrace: verifier: {name}: {} ms wall; {}",
            started.elapsed().as_millis(),
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        if let Ok(fd) = fd {
            // SAFETY: the kernel returned a new file descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    match load(&mut Vec::new()) {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(first) => {
            // Again with a log, for the error message only.
            let mut log = vec![0u8; 16 << 20];
            if let Ok(fd) = load(&mut log) {
                // SAFETY: as above.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(anyhow!(first).context(format!(
                "the kernel refused `{name}` as a uprobe_multi program; verifier log ends: {}",
                tail.join(" | ")
            )))
        }
    }
}

/// The file descriptor of one of aya's maps (`Map` is an enum of `MapData`).
fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd()
}

/// Loads the programs `names` of `object` as uprobe_multi programs, their map references
/// resolved to the maps of `ebpf` (which loaded the same object), and those of `sessions` as
/// session programs, their `bpf_session_is_return` and `bpf_session_cookie` calls linked.
/// Call before any map is taken out of `ebpf`.
pub fn load_programs(
    object: &[u8],
    ebpf: &Ebpf,
    names: &[&'static str],
    sessions: &[&'static str],
) -> Result<HashMap<&'static str, OwnedFd>> {
    let mut obj = aya_obj::Object::parse(object).context("cannot parse leaktrace's eBPF object")?;
    let maps = obj.maps.clone();
    let mut refs = Vec::new();
    for (name, map) in &maps {
        let loaded = ebpf
            .map(name)
            .ok_or_else(|| anyhow!("eBPF map {name} was not created"))?;
        refs.push((name.as_str(), map_fd(loaded).as_raw_fd(), map));
    }
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(refs.into_iter(), &text_sections)
        .context("cannot resolve the eBPF programs' maps")?;
    obj.relocate_calls(&text_sections)
        .context("cannot link the eBPF programs' calls")?;
    let (session_id, cookie_id) = if sessions.is_empty() {
        (0, 0)
    } else {
        (
            crate::probes::kfunc::session_is_return_id()?,
            crate::probes::kfunc::session_cookie_id()?,
        )
    };
    // Each program's instructions and attach type, then every load at once: the verifier takes
    // most of attach's time (about 0.4 s for each program that walks Python frames, measured
    // with strace on kernel 6.18) and, for a privileged loader, runs programs in parallel.
    let mut jobs: Vec<(&'static str, Vec<bpf_insn>, &CString, u32)> = Vec::new();
    for &name in names.iter().chain(sessions) {
        let program = obj
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?;
        let function = &obj.functions[&program.function_key()];
        let mut insns = function.instructions.clone();
        let attach_type = if sessions.contains(&name) {
            let marker = tracer_common::KFUNC_MARKER_SESSION_IS_RETURN;
            if crate::probes::kfunc::patch_calls(&mut insns, marker, session_id) == 0 {
                bail!("eBPF program {name} never calls bpf_session_is_return");
            }
            let marker = tracer_common::KFUNC_MARKER_SESSION_COOKIE;
            crate::probes::kfunc::patch_calls(&mut insns, marker, cookie_id);
            BPF_TRACE_UPROBE_SESSION
        } else {
            BPF_TRACE_UPROBE_MULTI as u32
        };
        jobs.push((name, insns, &program.license, attach_type));
    }
    let loaded: Vec<(&'static str, Result<OwnedFd>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(name, insns, license, attach_type)| {
                let name = *name;
                (
                    name,
                    scope.spawn(move || prog_load(name, insns, license, *attach_type)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("loading eBPF program {name} panicked")));
                (name, r)
            })
            .collect()
    });
    let mut out = HashMap::new();
    for (name, fd) in loaded {
        out.insert(name, fd?);
    }
    Ok(out)
}

/// Creates a uprobe_multi link of `program` at `offsets` (file offsets) of the binary at
/// `path`, each with the cookie of the same index (`cookies` empty: all 0), of `kind`,
/// firing only in process `pid` (0: every process). Closing the returned descriptor
/// detaches every probe of the link; so does the exit of this process, however it ends.
pub fn attach(
    program: BorrowedFd<'_>,
    path: &Path,
    offsets: &[u64],
    cookies: &[u64],
    kind: LinkKind,
    pid: u32,
) -> std::io::Result<OwnedFd> {
    if offsets.is_empty() || (!cookies.is_empty() && cookies.len() != offsets.len()) {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut attr = zeroed_attr();
    // SAFETY: writing plain integer fields of the LINK_CREATE member of the union.
    unsafe {
        let l = &mut attr.link_create;
        l.__bindgen_anon_1.prog_fd = program.as_raw_fd() as u32;
        l.attach_type = match kind {
            LinkKind::Session => BPF_TRACE_UPROBE_SESSION,
            LinkKind::Entry | LinkKind::Return => BPF_TRACE_UPROBE_MULTI as u32,
        };
        let u = &mut l.__bindgen_anon_3.uprobe_multi;
        u.path = path.as_ptr() as u64;
        u.offsets = offsets.as_ptr() as u64;
        u.cookies = if cookies.is_empty() {
            0
        } else {
            cookies.as_ptr() as u64
        };
        u.cnt = offsets.len() as u32;
        u.flags = if kind == LinkKind::Return {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        };
        u.pid = pid;
    }
    let fd = sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A two-instruction program, `r0 = r0_value; exit`, of `attach_type`: the feature check's,
/// and the empty programs of `--bench-empty-probes`.
fn returning(name: &str, r0_value: i32, attach_type: u32) -> Result<OwnedFd> {
    let insns = [
        insn(0xb7, 0, 0, 0, r0_value), // BPF_ALU64 | BPF_MOV | BPF_K
        insn(0x95, 0, 0, 0, 0),        // BPF_JMP | BPF_EXIT
    ];
    let license = CString::new("GPL").expect("no NUL");
    prog_load(name, &insns, &license, attach_type)
}

/// A uprobe_multi program that does nothing (`r0 = 0; exit`): `--bench-empty-probes` attaches
/// it wherever a probe goes, to measure what the traps alone cost.
pub fn empty_program() -> Result<OwnedFd> {
    returning("lt_empty", 0, BPF_TRACE_UPROBE_MULTI as u32)
}

/// The session counterpart of [`empty_program`]: `r0 = 1; exit`, an entry that asks for no
/// return (what an untracked call's session costs, traps only).
pub fn empty_session_program() -> Result<OwnedFd> {
    returning("lt_empty_sess", 1, BPF_TRACE_UPROBE_SESSION)
}

/// Whether this kernel creates uprobe_multi links for this process (cached): loads a two-instruction
/// program with the uprobe_multi attach type and asks for a link on `/`, which a kernel that
/// knows these links refuses with EBADF (not a regular file) after checking everything else.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| probe().is_ok())
}

fn probe() -> Result<()> {
    let prog = returning("lt_probe_multi", 0, BPF_TRACE_UPROBE_MULTI as u32)?;
    link_on_root(prog.as_fd(), LinkKind::Entry)
}

/// A link on `/`, which a kernel that knows the link kind refuses with EBADF (not a regular
/// file) after checking the program and everything else.
fn link_on_root(prog: BorrowedFd<'_>, kind: LinkKind) -> Result<()> {
    match attach(prog, Path::new("/"), &[0], &[], kind, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(()),
        Err(e) => bail!("{kind:?} uprobe_multi link on `/`: {e}"),
        Ok(_) => bail!("the kernel linked a uprobe on a directory"),
    }
}

/// Whether this kernel runs session uprobe programs that call `bpf_session_is_return` and
/// `bpf_session_cookie` (cached; needs [`supported`]).
pub fn session_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| session_probe().is_ok())
}

fn session_probe() -> Result<()> {
    let id = crate::probes::kfunc::session_is_return_id()?;
    let cookie_id = crate::probes::kfunc::session_cookie_id()?;
    let marker = tracer_common::KFUNC_MARKER_SESSION_IS_RETURN;
    let cookie = tracer_common::KFUNC_MARKER_SESSION_COOKIE;
    // call bpf_session_cookie; r1 = *(u64 *)r0; call bpf_session_is_return; r0 &= 1; exit
    let mut insns = [
        insn(0x85, 0, 0, 0, cookie as i32), // BPF_JMP | BPF_CALL
        insn(0x79, 1, 0, 0, 0),             // BPF_LDX | BPF_MEM | BPF_DW
        insn(0x85, 0, 0, 0, marker as i32), // BPF_JMP | BPF_CALL
        insn(0x57, 0, 0, 0, 1),             // BPF_ALU64 | BPF_AND | BPF_K
        insn(0x95, 0, 0, 0, 0),             // BPF_JMP | BPF_EXIT
    ];
    crate::probes::kfunc::patch_calls(&mut insns, marker, id);
    crate::probes::kfunc::patch_calls(&mut insns, cookie, cookie_id);
    let license = CString::new("GPL").expect("no NUL");
    let prog = prog_load("lt_probe_sess", &insns, &license, BPF_TRACE_UPROBE_SESSION)?;
    link_on_root(prog.as_fd(), LinkKind::Session)
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    let mut i = bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: Default::default(),
        off,
        imm,
    };
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::generated::bpf_link_type::BPF_LINK_TYPE_UPROBE_MULTI;

    fn empty_program() -> OwnedFd {
        super::empty_program().unwrap()
    }

    #[test]
    fn this_kernel_links_uprobe_multi() {
        // Kernel 6.18 as root on this machine kind.
        probe().unwrap();
        assert!(supported());
    }

    #[test]
    fn a_link_holds_every_offset_with_its_flags_and_pid() {
        let prog = empty_program();
        // The test executable itself: two of its functions.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let elf = crate::target::elf::ElfFile::open(&exe).unwrap();
        let a = elf.function("main").expect("a main symbol").file_offset;
        let b = elf.function("malloc").map_or(a + 16, |f| f.file_offset);
        let pid = std::process::id();
        let entry = attach(prog.as_fd(), &exe, &[a, b], &[7, 8], LinkKind::Entry, pid).unwrap();
        assert_eq!(
            link_info(entry.as_fd()),
            (BPF_LINK_TYPE_UPROBE_MULTI as u32, 2, 0, pid)
        );
        let ret = attach(prog.as_fd(), &exe, &[a], &[], LinkKind::Return, 0).unwrap();
        assert_eq!(
            link_info(ret.as_fd()),
            (
                BPF_LINK_TYPE_UPROBE_MULTI as u32,
                1,
                BPF_F_UPROBE_MULTI_RETURN,
                0
            )
        );
        // Mismatched cookies are refused before the kernel is asked.
        let e = attach(prog.as_fd(), &exe, &[a, b], &[1], LinkKind::Entry, pid).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // A binary that is not there: the kernel's own error.
        let missing = Path::new("/nonexistent/leaktrace");
        let e = attach(prog.as_fd(), missing, &[0], &[], LinkKind::Entry, pid).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn this_kernel_links_session_programs() {
        // Kernel 6.18 as root on this machine kind (sessions from 6.13).
        session_probe().unwrap();
        assert!(session_supported());
    }

    #[test]
    fn a_session_program_is_refused_as_an_entry_link_and_the_unlinked_marker_by_the_verifier() {
        let marker = tracer_common::KFUNC_MARKER_SESSION_IS_RETURN;
        let license = CString::new("GPL").unwrap();
        let unpatched = [
            insn(0x85, 0, 0, 0, marker as i32),
            insn(0x57, 0, 0, 0, 1),
            insn(0x95, 0, 0, 0, 0),
        ];
        // The marker is no helper: a program still holding it never loads.
        let e = prog_load("lt_test", &unpatched, &license, BPF_TRACE_UPROBE_SESSION).unwrap_err();
        assert!(format!("{e:#}").contains("verifier log"), "{e:#}");
        // The kfunc is refused outside session programs.
        let mut patched = unpatched;
        let id = crate::probes::kfunc::vmlinux_func_id("bpf_session_is_return").unwrap();
        crate::probes::kfunc::patch_calls(&mut patched, marker, id);
        assert!(prog_load("lt_test", &patched, &license, BPF_TRACE_UPROBE_MULTI as u32).is_err());
        let prog = prog_load("lt_test", &patched, &license, BPF_TRACE_UPROBE_SESSION).unwrap();
        // A session program makes session links only.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let elf = crate::target::elf::ElfFile::open(&exe).unwrap();
        let a = elf.function("main").expect("a main symbol").file_offset;
        let pid = std::process::id();
        assert!(attach(prog.as_fd(), &exe, &[a], &[], LinkKind::Entry, pid).is_err());
        let link = attach(prog.as_fd(), &exe, &[a], &[9], LinkKind::Session, pid).unwrap();
        let (ty, count, flags, lpid) = link_info(link.as_fd());
        assert_eq!(
            (ty, count, flags, lpid),
            (BPF_LINK_TYPE_UPROBE_MULTI as u32, 1, 0, pid)
        );
    }

    /// (link type, probe count, flags, pid) of a link, from `BPF_OBJ_GET_INFO_BY_FD`.
    fn link_info(fd: BorrowedFd<'_>) -> (u32, u32, u32, u32) {
        // SAFETY: plain C struct of integers.
        let mut info: aya_obj::generated::bpf_link_info = unsafe { std::mem::zeroed() };
        let mut attr = zeroed_attr();
        // SAFETY: writing plain integer fields of the INFO member of the union.
        unsafe {
            attr.info.bpf_fd = fd.as_raw_fd() as u32;
            attr.info.info_len = size_of_val(&info) as u32;
            attr.info.info = &mut info as *mut _ as u64;
        }
        sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).unwrap();
        // SAFETY: the kernel filled the uprobe_multi member for this link type (checked by the
        // caller through the type).
        let u = unsafe { info.__bindgen_anon_1.uprobe_multi };
        (info.type_, u.count, u.flags, u.pid)
    }
}
