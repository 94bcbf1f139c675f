//! pymalloc's arenas read from outside: the bytes its small blocks (512 B or less) hold now,
//! to compare with the bytes of the objects the census counted in such blocks. What no object
//! accounts for is "raw" small-block memory: a C extension's `PyObject_Malloc`/`PyMem_Malloc`
//! buffers, or objects the census does not reach (freelists, objects held only by frames or
//! instance attributes). Its growth between censuses is the signal, not its size.
//!
//! Where the state is (`Objects/obmalloc.c`, `Include/internal/pycore_obmalloc.h`):
//! * 3.8-3.11: static variables of `obmalloc.c`, `arenas` (`struct arena_object *`) and
//!   `maxarenas` (`uint`): local symbols, found only where the symbol table is kept (pyenv's
//!   builds have it; Debian's stripped static 3.11 does not, and then nothing is read).
//! * 3.12: `PyInterpreterState.obmalloc` (`struct _obmalloc_state`, embedded), its
//!   `mgmt.arenas` and `mgmt.maxarenas`.
//! * 3.13+: `PyInterpreterState.obmalloc` is a pointer to that struct (the main interpreter's
//!   is `obmalloc_state_main` in `obmalloc.c`).
//!
//! Offsets from the compiler on each version's headers (`tools/pyoffsets/obmalloc.c`). The
//! structs walked have not changed since 3.8: `struct arena_object` is 48 bytes (`address`,
//! `pool_address`, `nfreepools`, `ntotalpools`, three pointers) and `struct pool_header` 48
//! (`ref.count` first, `arenaindex` at 32, `szidx` at 36). Arenas are 256 KiB with 4 KiB pools
//! up to 3.9, 1 MiB with 16 KiB pools from 3.10 on (the radix tree's large arenas and pools);
//! blocks are `(szidx + 1) * 16` bytes.
//!
//! Every read is bounded (the arena table at most [`MAX_ARENAS`] entries, read at most
//! `--max-read-bytes` at a time; one 48-byte read per pool) and every value is checked before
//! it is used: an arena's pools must lie inside it, a pool header must name its own arena, a
//! size class below 32 and a block count that fits the pool. A read that fails or a header that
//! makes no sense is skipped and counted; the figure is then a lower bound and says so.

use super::census::Source;

/// Arena table entries read at most (16 Ki arenas: 16 GiB of 1 MiB arenas).
pub const MAX_ARENAS: u64 = 1 << 14;
/// `sizeof(struct arena_object)`.
const ARENA_OBJECT: u64 = 48;
/// `sizeof(struct pool_header)` (`POOL_OVERHEAD`).
const POOL_HEADER: u64 = 48;
/// `ALIGNMENT`: blocks are multiples of 16 bytes on every supported version.
pub const ALIGNMENT: u64 = 16;
/// `SMALL_REQUEST_THRESHOLD`: larger requests go to `malloc`.
pub const SMALL_REQUEST: u64 = 512;
/// `NB_SMALL_SIZE_CLASSES`.
const SIZE_CLASSES: u32 = (SMALL_REQUEST / ALIGNMENT) as u32;
/// `Py_TPFLAGS_HAVE_GC`: the object is allocated with a 16-byte GC header before it.
pub const HAVE_GC: u64 = 1 << 14;

/// Arena and pool sizes of one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub arena_size: u64,
    pub pool_size: u64,
}

impl Geometry {
    pub fn for_minor(minor: u32) -> Geometry {
        if minor >= 10 {
            Geometry {
                arena_size: 1 << 20,
                pool_size: 1 << 14,
            }
        } else {
            Geometry {
                arena_size: 1 << 18,
                pool_size: 1 << 12,
            }
        }
    }
}

/// Where one interpreter's arena table is: the address of the `arenas` pointer and of
/// `maxarenas` (a `uint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub arenas_ptr: u64,
    pub maxarenas: u64,
    pub geometry: Geometry,
}

/// `PyInterpreterState.obmalloc` and the offsets of `mgmt.arenas` and `mgmt.maxarenas` in
/// `struct _obmalloc_state` (3.12+): (offset of the field, embedded rather than a pointer).
fn interp_offsets(minor: u32) -> Option<(u64, bool)> {
    match minor {
        12 => Some((3960, true)),
        13 => Some((10800, false)),
        14 => Some((10904, false)),
        15 => Some((10880, false)),
        _ => None,
    }
}
/// `offsetof(struct _obmalloc_state, mgmt.arenas)`, `.maxarenas` (3.12-3.15).
const MGMT_ARENAS: u64 = 512;
const MGMT_MAXARENAS: u64 = 520;

/// Where the arena table of an interpreter of minor version `minor` is. `symbol` finds a data
/// symbol's runtime address (3.8-3.11); `interp` is the main interpreter's address (3.12+),
/// `read_u64` reads the `obmalloc` pointer (3.13+).
pub fn locate(
    minor: u32,
    symbol: impl Fn(&str) -> Option<u64>,
    interp: Option<u64>,
    read_u64: impl Fn(u64) -> Option<u64>,
) -> Option<Location> {
    let geometry = Geometry::for_minor(minor);
    let state = match minor {
        8..=11 => {
            return Some(Location {
                arenas_ptr: symbol("arenas")?,
                maxarenas: symbol("maxarenas")?,
                geometry,
            })
        }
        _ => {
            let (off, embedded) = interp_offsets(minor)?;
            let interp = interp.filter(|&a| a != 0)?;
            if embedded {
                interp + off
            } else {
                read_u64(interp + off).filter(|&a| a != 0 && a.is_multiple_of(8))?
            }
        }
    };
    Some(Location {
        arenas_ptr: state + MGMT_ARENAS,
        maxarenas: state + MGMT_MAXARENAS,
        geometry,
    })
}

/// What the arenas hold now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArenaUsage {
    /// Arenas mapped.
    pub arenas: u64,
    /// Bytes of one arena on this version.
    pub arena_size: u64,
    /// Pools with at least one block in use.
    pub pools_used: u64,
    /// Bytes of the blocks in use (block sizes, not the requests behind them).
    pub used_bytes: u64,
    /// Reads that failed or headers that made no sense (each a pool or an arena left out).
    pub skipped: u64,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Bytes in use in one pool, from its header, if the header makes sense for a pool of arena
/// `index` with `pool_size` bytes.
pub fn pool_used_bytes(header: &[u8], index: u32, pool_size: u64) -> Option<u64> {
    let count = u32_at(header, 0) as u64;
    let (arenaindex, szidx) = (u32_at(header, 32), u32_at(header, 36));
    if count == 0 {
        // A pool on its arena's free list: nothing in use, its other fields are stale.
        return Some(0);
    }
    if arenaindex != index || szidx >= SIZE_CLASSES {
        return None;
    }
    let block = (szidx as u64 + 1) * ALIGNMENT;
    (count <= (pool_size - POOL_HEADER) / block).then_some(count * block)
}

/// Reads the arena table at `loc` through `src` (reads of at most `max_read` bytes).
pub fn usage(src: &dyn Source, loc: &Location, max_read: usize) -> Option<ArenaUsage> {
    let word = |addr: u64, len: usize| -> Option<Vec<u8>> {
        let mut b = vec![0; len];
        src.read_into(addr, &mut b).then_some(b)
    };
    let table = u64_at(&word(loc.arenas_ptr, 8)?, 0);
    let max = u32_at(&word(loc.maxarenas, 4)?, 0) as u64;
    let mut out = ArenaUsage {
        arena_size: loc.geometry.arena_size,
        ..ArenaUsage::default()
    };
    if table == 0 || max == 0 {
        // No arena allocated yet.
        return Some(out);
    }
    if max > MAX_ARENAS || !table.is_multiple_of(8) {
        return None;
    }
    let g = loc.geometry;
    let per_read = (max_read as u64 / ARENA_OBJECT).max(1);
    let mut index = 0u64;
    while index < max {
        let n = per_read.min(max - index);
        let Some(chunk) = word(table + index * ARENA_OBJECT, (n * ARENA_OBJECT) as usize) else {
            out.skipped += 1;
            index += n;
            continue;
        };
        for (i, a) in chunk.chunks_exact(ARENA_OBJECT as usize).enumerate() {
            let idx = index + i as u64;
            let (address, pool_address) = (u64_at(a, 0), u64_at(a, 8));
            if address == 0 {
                continue;
            }
            let first = address.next_multiple_of(g.pool_size);
            if pool_address < first || pool_address > address + g.arena_size {
                out.skipped += 1;
                continue;
            }
            out.arenas += 1;
            let mut pool = first;
            while pool < pool_address {
                match word(pool, POOL_HEADER as usize)
                    .and_then(|h| pool_used_bytes(&h, idx as u32, g.pool_size))
                {
                    Some(0) => {}
                    Some(b) => {
                        out.pools_used += 1;
                        out.used_bytes += b;
                    }
                    None => out.skipped += 1,
                }
                pool += g.pool_size;
            }
        }
        index += n;
    }
    Some(out)
}

/// pymalloc's block for a request of `n` bytes: `n` rounded up to [`ALIGNMENT`], or 0 when
/// the request goes to `malloc` (over 512 bytes) or is empty.
pub fn block_bytes(n: u64) -> u64 {
    if n == 0 || n > SMALL_REQUEST {
        0
    } else {
        n.next_multiple_of(ALIGNMENT)
    }
}

/// The small-block bytes behind one object the census counted as `bytes` (its own size with
/// the GC header when it was on a GC list, plus for a dict, list or set the parts allocated
/// apart): the object's own block (with its GC header when its type has one) and, for those
/// containers, the part allocated apart, each only if pymalloc serves it.
pub fn object_block_bytes(
    bytes: u64,
    on_gc_list: bool,
    basicsize: u64,
    flags: u64,
    container: bool,
) -> u64 {
    let gc = if flags & HAVE_GC != 0 { 16 } else { 0 };
    let own_counted = if on_gc_list {
        bytes.saturating_sub(16)
    } else {
        bytes
    };
    if container {
        block_bytes(basicsize + gc) + block_bytes(own_counted.saturating_sub(basicsize))
    } else {
        block_bytes(own_counted + gc)
    }
}

/// Small-block memory in a heap report (`small_blocks`): pymalloc's arenas against the bytes
/// of the census's objects in small blocks, at the last census, with the growth since the first.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SmallBlocks {
    /// Arenas mapped, and their bytes.
    pub arenas: u64,
    pub arena_bytes: u64,
    /// Bytes of the blocks in use.
    pub used_bytes: u64,
    /// Bytes of the blocks behind the objects the census counted.
    pub object_bytes: u64,
    /// `used_bytes - object_bytes`: blocks no counted object accounts for.
    pub raw_bytes: i64,
    /// Last minus first census (null with one census).
    pub used_growth: Option<i64>,
    pub object_growth: Option<i64>,
    pub raw_growth: Option<i64>,
    pub raw_growth_bytes_per_s: Option<f64>,
    /// Pools or arenas whose headers could not be read or made no sense (left out: the
    /// figures are then lower bounds).
    pub skipped: u64,
}

/// Raw growth that earns the next step in the text (smaller is freelists and noise).
pub const RAW_GROWTH_WORTH_SAYING: i64 = 256 << 10;

fn signed(a: u64) -> i64 {
    i64::try_from(a).unwrap_or(i64::MAX)
}

impl SmallBlocks {
    /// From the arenas and objects of one census.
    pub fn of(usage: &ArenaUsage, object_bytes: u64, g: u64) -> SmallBlocks {
        SmallBlocks {
            arenas: usage.arenas,
            arena_bytes: usage.arenas.saturating_mul(g),
            used_bytes: usage.used_bytes,
            object_bytes,
            raw_bytes: signed(usage.used_bytes).saturating_sub(signed(object_bytes)),
            used_growth: None,
            object_growth: None,
            raw_growth: None,
            raw_growth_bytes_per_s: None,
            skipped: usage.skipped,
        }
    }

    /// The last census's figures with their growth since `first` over `seconds`.
    pub fn with_growth(mut self, first: &SmallBlocks, seconds: f64) -> SmallBlocks {
        let d = |a: i64, b: i64| b.saturating_sub(a);
        self.used_growth = Some(d(signed(first.used_bytes), signed(self.used_bytes)));
        self.object_growth = Some(d(signed(first.object_bytes), signed(self.object_bytes)));
        let raw = d(first.raw_bytes, self.raw_bytes);
        self.raw_growth = Some(raw);
        self.raw_growth_bytes_per_s = (seconds > 0.0).then(|| raw as f64 / seconds);
        self.skipped += first.skipped;
        self
    }

    /// Between two censuses (`None` when either had no arena figures).
    pub fn between(first: &super::Taken, last: Option<&super::Taken>) -> Option<SmallBlocks> {
        let arena = |t: &super::Taken| -> Option<SmallBlocks> {
            let u = t.arenas.as_ref()?;
            Some(SmallBlocks::of(
                u,
                t.census.small_object_bytes,
                u.arena_size,
            ))
        };
        let a = arena(first)?;
        match last {
            None => Some(a),
            Some(l) => {
                let b = arena(l)?;
                Some(b.with_growth(&a, l.at.duration_since(first.at).as_secs_f64()))
            }
        }
    }

    /// The text lines: what the arenas hold, what no object accounts for, and with growth
    /// worth saying, what it may be and the next step.
    pub fn text(&self, pid: u32) -> String {
        use crate::output::report::human_bytes;
        let sb = |v: i64| {
            format!(
                "{}{}",
                if v < 0 { "-" } else { "+" },
                human_bytes(v.unsigned_abs())
            )
        };
        let mut s = format!(
            "Small blocks (pymalloc, 512 B or less): {} in use in {} arenas ({} mapped); objects counted account for {}; raw {}",
            human_bytes(self.used_bytes),
            self.arenas,
            human_bytes(self.arena_bytes),
            human_bytes(self.object_bytes),
            sb(self.raw_bytes)
        );
        if let (Some(g), Some(rate)) = (self.raw_growth, self.raw_growth_bytes_per_s) {
            s.push_str(&format!(
                " ({} over the window, {}/s)",
                sb(g),
                sb(rate.round() as i64)
            ));
        }
        if self.skipped > 0 {
            s.push_str(&format!(
                "; {} pool headers skipped (lower bounds)",
                self.skipped
            ));
        }
        s.push('\n');
        if let (Some(g), Some(rate)) = (self.raw_growth, self.raw_growth_bytes_per_s) {
            if g >= RAW_GROWTH_WORTH_SAYING {
                s.push_str(&format!(
                    "  raw small-block memory {}/s that no object accounts for: a C extension's PyObject_Malloc/PyMem_Malloc buffers, or objects the census does not reach; `leaktrace attach {pid} --pymalloc --duration 30` names the allocating code\n",
                    sb(rate.round() as i64)
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::census::Bytes;

    fn header(count: u32, arenaindex: u32, szidx: u32) -> Vec<u8> {
        let mut h = vec![0u8; 48];
        h[0..4].copy_from_slice(&count.to_le_bytes());
        h[32..36].copy_from_slice(&arenaindex.to_le_bytes());
        h[36..40].copy_from_slice(&szidx.to_le_bytes());
        h
    }

    #[test]
    fn pool_arithmetic() {
        // 10 blocks of 64 bytes (size class 3) in arena 2.
        assert_eq!(pool_used_bytes(&header(10, 2, 3), 2, 16384), Some(640));
        // A free pool: nothing, whatever its stale fields say.
        assert_eq!(pool_used_bytes(&header(0, 99, 99), 2, 16384), Some(0));
        // Another arena's header, a size class past 512 B, more blocks than fit.
        assert_eq!(pool_used_bytes(&header(10, 3, 3), 2, 16384), None);
        assert_eq!(pool_used_bytes(&header(1, 2, 32), 2, 16384), None);
        // (16384 - 48) / 512 = 31 blocks of 512 bytes fit, 32 do not.
        assert_eq!(
            pool_used_bytes(&header(31, 2, 31), 2, 16384),
            Some(31 * 512)
        );
        assert_eq!(pool_used_bytes(&header(32, 2, 31), 2, 16384), None);
    }

    #[test]
    fn block_sizes() {
        assert_eq!(block_bytes(0), 0);
        assert_eq!(block_bytes(1), 16);
        assert_eq!(block_bytes(200), 208);
        assert_eq!(block_bytes(512), 512);
        assert_eq!(block_bytes(513), 0);
        // A tracked dict (48 + 16 header) with a 600-byte keys table: only the object is
        // pymalloc's. The census counted 48 + 600 + 16.
        assert_eq!(object_block_bytes(664, true, 48, HAVE_GC, true), 64);
        // A dict of atomic values (untracked, still allocated with its header), small keys.
        assert_eq!(
            object_block_bytes(48 + 200, false, 48, HAVE_GC, true),
            64 + 208
        );
        // A str of 57 bytes (no GC header) and a tracked tuple of 3 (24 + 24 + 16).
        assert_eq!(object_block_bytes(57, false, 40, 0, false), 64);
        assert_eq!(object_block_bytes(64, true, 24, HAVE_GC, false), 64);
    }

    /// A fake process: an arena table of 3 entries (one unused) at 0x10000, two 1 MiB arenas.
    #[test]
    fn arena_table_walk() {
        let g = Geometry::for_minor(12);
        let base = 0x10000u64;
        // Memory from base: state (16 bytes: arenas pointer, maxarenas), the table at +0x100,
        // arenas at +0x100000 (aligned to the pool size) and +0x200000 + 8 (not aligned: its
        // first pool starts at the next 16 KiB boundary).
        let size = 0x310000usize;
        let mut m = vec![0u8; size];
        let put = |m: &mut Vec<u8>, at: u64, b: &[u8]| {
            let o = (at - base) as usize;
            m[o..o + b.len()].copy_from_slice(b);
        };
        let table = base + 0x100;
        put(&mut m, base, &table.to_le_bytes());
        put(&mut m, base + 8, &3u32.to_le_bytes());
        let a0 = base + 0x100000 - 0x10000; // 0x100000: pool-aligned
        let a2 = base + 0x200000 + 8;
        // Arena 0: 3 pools carved (pool_address after the third), arena 1 unused, arena 2: one.
        put(&mut m, table, &a0.to_le_bytes());
        put(&mut m, table + 8, &(a0 + 3 * g.pool_size).to_le_bytes());
        let a2_first = a2.next_multiple_of(g.pool_size);
        put(&mut m, table + 96, &a2.to_le_bytes());
        put(&mut m, table + 104, &(a2_first + g.pool_size).to_le_bytes());
        put(&mut m, a0, &header(10, 0, 3)); // 640
        put(&mut m, a0 + g.pool_size, &header(0, 0, 0)); // free
        put(&mut m, a0 + 2 * g.pool_size, &header(4, 7, 1)); // wrong arena: skipped
        put(&mut m, a2_first, &header(2, 2, 12)); // 2 * 208
        let src = Bytes { base, data: m };
        let loc = Location {
            arenas_ptr: base,
            maxarenas: base + 8,
            geometry: g,
        };
        for max_read in [48, 4096] {
            let u = usage(&src, &loc, max_read).unwrap();
            assert_eq!(
                u,
                ArenaUsage {
                    arenas: 2,
                    arena_size: 1 << 20,
                    pools_used: 2,
                    used_bytes: 640 + 416,
                    skipped: 1
                },
                "max_read {max_read}"
            );
        }
        // A table larger than the bound, or unreadable state: not believed.
        let mut huge = src.data.clone();
        huge[8..12].copy_from_slice(&(MAX_ARENAS as u32 + 1).to_le_bytes());
        let src2 = Bytes { base, data: huge };
        assert_eq!(usage(&src2, &loc, 4096), None);
        let far = Location {
            arenas_ptr: 8,
            ..loc
        };
        assert_eq!(usage(&src, &far, 4096), None);
    }

    #[test]
    fn raw_growth_between_two_censuses() {
        let usage = |used| ArenaUsage {
            arenas: 3,
            arena_size: 1 << 20,
            pools_used: 10,
            used_bytes: used,
            skipped: 0,
        };
        let first = SmallBlocks::of(&usage(1_000_000), 400_000, 1 << 20);
        assert_eq!(first.raw_bytes, 600_000);
        assert_eq!(first.arena_bytes, 3 << 20);
        // 2 MB more in use, 100 kB of it objects: 1.9 MB raw over 4 s.
        let last = SmallBlocks::of(&usage(3_000_000), 500_000, 1 << 20).with_growth(&first, 4.0);
        assert_eq!(last.used_growth, Some(2_000_000));
        assert_eq!(last.object_growth, Some(100_000));
        assert_eq!(last.raw_growth, Some(1_900_000));
        assert_eq!(last.raw_growth_bytes_per_s, Some(475_000.0));
        let text = last.text(42);
        assert!(
            text.contains("raw +2.4 MiB (+1.8 MiB over the window, +463.9 KiB/s)"),
            "{text}"
        );
        assert!(
            text.contains("raw small-block memory +463.9 KiB/s that no object accounts for"),
            "{text}"
        );
        assert!(text.contains("leaktrace attach 42 --pymalloc"), "{text}");
        // Objects that account for the growth: no next step.
        let quiet = SmallBlocks::of(&usage(3_000_000), 2_350_000, 1 << 20).with_growth(&first, 4.0);
        assert_eq!(quiet.raw_growth, Some(50_000));
        assert!(!quiet.text(42).contains("no object accounts for"));
        // More objects than blocks counted (a torn census): negative, said as such.
        let neg = SmallBlocks::of(&usage(100), 300, 1 << 20);
        assert_eq!(neg.raw_bytes, -200);
        assert!(neg.text(1).contains("raw -200 B"));
    }

    #[test]
    fn locations_by_version() {
        let sym = |n: &str| match n {
            "arenas" => Some(0x5000),
            "maxarenas" => Some(0x4ff8),
            _ => None,
        };
        let l = locate(9, sym, None, |_| None).unwrap();
        assert_eq!((l.arenas_ptr, l.maxarenas), (0x5000, 0x4ff8));
        assert_eq!(l.geometry.arena_size, 256 << 10);
        assert_eq!(locate(11, |_| None, None, |_| None), None);
        let l = locate(12, |_| None, Some(0x10_0000), |_| None).unwrap();
        assert_eq!(l.arenas_ptr, 0x10_0000 + 3960 + 512);
        let l = locate(
            13,
            |_| None,
            Some(0x10_0000),
            |a| (a == 0x10_0000 + 10800).then_some(0x20_0000),
        )
        .unwrap();
        assert_eq!(
            (l.arenas_ptr, l.maxarenas),
            (0x20_0000 + 512, 0x20_0000 + 520)
        );
        assert_eq!(locate(13, |_| None, Some(0x10_0000), |_| Some(0)), None);
        assert_eq!(locate(16, |_| None, Some(1 << 20), |_| Some(8)), None);
    }
}
