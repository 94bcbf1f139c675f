//! Reading a whole BPF hash map in a few syscalls: `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+), which
//! aya 0.14 has no API for, through the raw `bpf` syscall.
//!
//! Reading a map with aya's iterator costs two syscalls per entry (`BPF_MAP_GET_NEXT_KEY`,
//! then `BPF_MAP_LOOKUP_ELEM`): two million for a million live allocations, and an iteration
//! whose current key is deleted meanwhile starts over from the first bucket. A batch lookup
//! copies out thousands of entries per call, bucket by bucket (each bucket read under its
//! lock), and resumes from an opaque position the kernel hands back.
//!
//! The attribute block is `union bpf_attr`'s `batch` member from the kernel's UAPI header
//! (`include/uapi/linux/bpf.h`): `in_batch`, `out_batch`, `keys`, `values` (user pointers as
//! u64), `count` (in: room in `keys`/`values`, out: entries copied), `map_fd`, `elem_flags`,
//! `flags`. The last call returns `ENOENT`, possibly with entries copied.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH` in the kernel's `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal `ENOTSUPP` (524), which leaks to user space from some map types.
const ENOTSUPP: i32 = 524;
/// Entries asked for per call when the caller gives no size.
pub const DEFAULT_CHUNK: usize = 8192;
/// Largest chunk tried when a bucket does not fit (`ENOSPC`).
const MAX_CHUNK: usize = 1 << 20;

/// `union bpf_attr`, member `batch` (56 bytes; the kernel zero-fills the rest of the union).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// Why a batched read did not happen.
#[derive(Debug)]
pub enum BatchError {
    /// The kernel does not offer batch lookups for this map (too old, or the map type has
    /// none): nothing was read; iterate instead.
    Unsupported(io::Error),
    /// Failed after some entries were handed out.
    Failed(io::Error),
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Unsupported(e) => write!(f, "batch lookup not supported: {e}"),
            BatchError::Failed(e) => write!(f, "batch lookup failed: {e}"),
        }
    }
}

impl std::error::Error for BatchError {}

/// Whether an error of the first call means "no batch lookups here" (as opposed to a
/// failure of this read).
fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | ENOTSUPP | libc::EPERM)
    )
}

/// Calls `f` on every entry of the hash map `fd` whose keys are `K` and values `V` (plain
/// `#[repr(C)]` types, any bit pattern valid: `aya::Pod`), `chunk` entries per syscall.
/// Returns the entries read and the syscalls made. An entry added or removed while the map is
/// read may or may not be seen; none is seen twice.
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    chunk: usize,
    mut f: impl FnMut(&K, &V),
) -> Result<(u64, u64), BatchError> {
    let (ks, vs) = (size_of::<K>(), size_of::<V>());
    let mut chunk = chunk.clamp(1, MAX_CHUNK);
    let mut keys = vec![0u8; chunk * ks];
    let mut values = vec![0u8; chunk * vs];
    // The position is a bucket index (u32) for hash maps; a key for others. Room for either.
    let mut pos_in = vec![0u8; ks.max(8)];
    let mut pos_out = vec![0u8; ks.max(8)];
    let (mut entries, mut calls) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { pos_in.as_mut_ptr() as u64 },
            out_batch: pos_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; every pointer in it
        // points at a live buffer large enough for `count` keys, values, and one position.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        calls += 1;
        let err = (rc < 0).then(io::Error::last_os_error);
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < MAX_CHUNK => {
                // One bucket holds more entries than `chunk`: retry from the same position
                // with more room (nothing was copied).
                chunk = (chunk * 4).min(MAX_CHUNK);
                keys.resize(chunk * ks, 0);
                values.resize(chunk * vs, 0);
                continue;
            }
            Some(e) => {
                let e = io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO));
                return Err(if first && is_unsupported(&e) {
                    BatchError::Unsupported(e)
                } else {
                    BatchError::Failed(e)
                });
            }
        };
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            // SAFETY: the kernel wrote `n` keys and values back to back; K and V are Pod, so
            // any bytes are valid, and read_unaligned needs no alignment.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * ks).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * vs).cast::<V>()),
                )
            };
            f(&k, &v);
        }
        entries += n as u64;
        if done {
            return Ok((entries, calls));
        }
        first = false;
        std::mem::swap(&mut pos_in, &mut pos_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_fields_sit_where_the_kernel_reads_them() {
        // Offsets of `union bpf_attr`'s batch member in the UAPI header.
        let a = BatchAttr::default();
        let base = &a as *const BatchAttr as usize;
        assert_eq!(&a.in_batch as *const u64 as usize - base, 0);
        assert_eq!(&a.out_batch as *const u64 as usize - base, 8);
        assert_eq!(&a.keys as *const u64 as usize - base, 16);
        assert_eq!(&a.values as *const u64 as usize - base, 24);
        assert_eq!(&a.count as *const u32 as usize - base, 32);
        assert_eq!(&a.map_fd as *const u32 as usize - base, 36);
        assert_eq!(&a.elem_flags as *const u64 as usize - base, 40);
        assert_eq!(&a.flags as *const u64 as usize - base, 48);
    }

    /// A real kernel hash map of `n` entries (u64 -> [u64; 6]), made and filled through the
    /// `bpf` syscall (needs root, as every leaktrace run does).
    fn kernel_map(n: u64) -> std::os::fd::OwnedFd {
        use std::os::fd::FromRawFd as _;
        // `union bpf_attr` for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries,
        // map_flags (BPF_F_NO_PREALLOC, as leaktrace's maps).
        let create: [u32; 5] = [1, 8, 48, n.max(1) as u32, 1];
        // SAFETY: a valid attr prefix of the size given.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, create.as_ptr(), 20u32) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new descriptor, owned here.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        for k in 0..n {
            let value = [k, !k, k * 3, 0, 0, k + 1];
            // BPF_MAP_UPDATE_ELEM: map_fd, (pad), key, value, flags.
            let attr: [u64; 4] = [
                fd.as_raw_fd() as u64,
                &k as *const u64 as u64,
                value.as_ptr() as u64,
                0,
            ];
            // SAFETY: as above; the pointers outlive the call.
            let rc = unsafe { libc::syscall(libc::SYS_bpf, 2, attr.as_ptr(), 32u32) };
            assert_eq!(rc, 0, "BPF_MAP_UPDATE_ELEM: {}", io::Error::last_os_error());
        }
        fd
    }

    #[test]
    fn reads_every_entry_of_a_kernel_map_once_in_few_calls() {
        use std::os::fd::AsFd as _;
        let n = 20_000;
        let fd = kernel_map(n);
        for chunk in [DEFAULT_CHUNK, 1000, 3] {
            let mut seen = vec![0u32; n as usize];
            let (entries, calls) = for_each(fd.as_fd(), chunk, |k: &u64, v: &[u64; 6]| {
                assert_eq!(*v, [*k, !*k, *k * 3, 0, 0, *k + 1]);
                seen[*k as usize] += 1;
            })
            .unwrap();
            assert_eq!(entries, n);
            assert!(
                seen.iter().all(|&c| c == 1),
                "chunk {chunk}: an entry missed or repeated"
            );
            // About one call per `chunk` entries, and a final one (ENOENT); a chunk smaller
            // than a bucket grows (ENOSPC) instead of failing.
            assert!(
                calls <= n / chunk as u64 + 2 || chunk < 8,
                "chunk {chunk}: {calls} calls"
            );
        }
        // An empty map: one call, nothing handed out.
        let empty = kernel_map(0);
        let mut any = false;
        let _ = for_each(empty.as_fd(), 16, |_: &u64, _: &[u64; 6]| any = true);
        assert!(!any);
    }

    #[test]
    fn only_first_call_errors_of_the_unsupported_kind_fall_back() {
        for errno in [
            libc::EINVAL,
            libc::ENOSYS,
            libc::EOPNOTSUPP,
            ENOTSUPP,
            libc::EPERM,
        ] {
            assert!(is_unsupported(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::EFAULT, libc::EBADF, libc::ENOMEM] {
            assert!(!is_unsupported(&io::Error::from_raw_os_error(errno)));
        }
    }
}
