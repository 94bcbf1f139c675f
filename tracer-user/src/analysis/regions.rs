//! Anonymous memory mappings made through mmap/mremap, tracked as address ranges so that
//! partial munmaps (which split or trim a mapping) are accounted exactly.

use std::collections::{BTreeMap, HashMap};

use tracer_common::StackKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    /// Identifies the mmap call this range came from: pieces left by a partial unmap share
    /// it, so a split mapping still counts as one allocation.
    pub origin: u64,
    pub stack: StackKey,
    pub ts_ns: u64,
}

impl Region {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// Live anonymous mappings per process.
#[derive(Debug, Default)]
pub struct Regions {
    by_tgid: HashMap<u32, BTreeMap<u64, Region>>,
    next_origin: u64,
}

impl Regions {
    /// A new mapping `[addr, addr+len)`. Whatever it overlaps was replaced (MAP_FIXED).
    pub fn map(&mut self, tgid: u32, addr: u64, len: u64, stack: StackKey, ts_ns: u64) {
        if len == 0 {
            return;
        }
        self.unmap(tgid, addr, len);
        let end = addr.saturating_add(len);
        self.next_origin += 1;
        self.by_tgid.entry(tgid).or_default().insert(
            addr,
            Region {
                start: addr,
                end,
                origin: self.next_origin,
                stack,
                ts_ns,
            },
        );
    }

    /// Removes `[addr, addr+len)`, trimming or splitting the mappings it overlaps.
    /// Returns the bytes that were tracked in that range.
    pub fn unmap(&mut self, tgid: u32, addr: u64, len: u64) -> u64 {
        let Some(regions) = self.by_tgid.get_mut(&tgid) else {
            return 0;
        };
        let end = addr.saturating_add(len);
        // Regions that start before `end` and end after `addr` overlap.
        let overlapping: Vec<u64> = regions
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > addr)
            .map(|(s, _)| *s)
            .collect();
        let mut removed = 0;
        for start in overlapping {
            let r = regions.remove(&start).expect("key was just listed");
            let cut_start = r.start.max(addr);
            let cut_end = r.end.min(end);
            removed += cut_end - cut_start;
            if r.start < cut_start {
                regions.insert(
                    r.start,
                    Region {
                        end: cut_start,
                        ..r
                    },
                );
            }
            if cut_end < r.end {
                regions.insert(
                    cut_end,
                    Region {
                        start: cut_end,
                        ..r
                    },
                );
            }
        }
        if regions.is_empty() {
            self.by_tgid.remove(&tgid);
        }
        removed
    }

    /// mremap: the tracked part of `[old, old+old_len)` now lives at `[new, new+new_len)`,
    /// attributed to the caller of mremap. An untracked old range (a file mapping, a chunk
    /// the allocator mapped itself) stays untracked.
    pub fn remap(
        &mut self,
        tgid: u32,
        (old, old_len): (u64, u64),
        (new, new_len): (u64, u64),
        stack: StackKey,
        ts_ns: u64,
    ) {
        if self.unmap(tgid, old, old_len) > 0 {
            self.map(tgid, new, new_len, stack, ts_ns);
        }
    }

    /// Forgets every mapping of a process (it exited, or exec'd).
    pub fn drop_process(&mut self, tgid: u32) {
        self.by_tgid.remove(&tgid);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Region> {
        self.by_tgid.values().flat_map(|m| m.values())
    }

    /// Every live range, with 1 as the allocation count of the first piece of each mapping
    /// and 0 for the other pieces.
    pub fn pieces(&self) -> impl Iterator<Item = (&Region, u64)> {
        let mut seen = std::collections::HashSet::new();
        self.iter()
            .map(move |r| (r, u64::from(seen.insert(r.origin))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    fn stack(id: i32) -> StackKey {
        StackKey {
            tgid: 1,
            stack_id: id,
            caller: 0,
            kind: 8,
            _pad: 0,
            py_stack: 0,
        }
    }

    fn live(r: &Regions) -> Vec<(u64, u64, i32)> {
        let mut v: Vec<_> = r
            .iter()
            .map(|r| (r.start, r.end, r.stack.stack_id))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn map_and_full_unmap() {
        let mut r = Regions::default();
        r.map(1, 10 * P, 4 * P, stack(1), 5);
        assert_eq!(live(&r), vec![(10 * P, 14 * P, 1)]);
        assert_eq!(r.unmap(1, 10 * P, 4 * P), 4 * P);
        assert!(live(&r).is_empty());
    }

    #[test]
    fn unmap_middle_splits() {
        let mut r = Regions::default();
        r.map(1, 0, 10 * P, stack(1), 5);
        assert_eq!(r.unmap(1, 4 * P, 2 * P), 2 * P);
        assert_eq!(live(&r), vec![(0, 4 * P, 1), (6 * P, 10 * P, 1)]);
        let total: u64 = r.iter().map(Region::len).sum();
        assert_eq!(total, 8 * P);
        let count: u64 = r.pieces().map(|(_, n)| n).sum();
        assert_eq!(count, 1, "a split mapping is still one allocation");
    }

    #[test]
    fn unmap_head_and_tail_trim() {
        let mut r = Regions::default();
        r.map(1, 0, 10 * P, stack(1), 5);
        r.unmap(1, 0, P);
        r.unmap(1, 9 * P, 5 * P);
        assert_eq!(live(&r), vec![(P, 9 * P, 1)]);
    }

    #[test]
    fn unmap_spanning_several_regions() {
        let mut r = Regions::default();
        r.map(1, 0, 2 * P, stack(1), 5);
        r.map(1, 3 * P, 2 * P, stack(2), 5);
        r.map(1, 6 * P, 2 * P, stack(3), 5);
        assert_eq!(r.unmap(1, P, 6 * P), 4 * P);
        assert_eq!(live(&r), vec![(0, P, 1), (7 * P, 8 * P, 3)]);
    }

    #[test]
    fn fixed_map_replaces_overlap_and_processes_are_separate() {
        let mut r = Regions::default();
        r.map(1, 0, 4 * P, stack(1), 5);
        r.map(2, 0, 4 * P, stack(9), 5);
        r.map(1, 2 * P, 4 * P, stack(2), 6);
        assert_eq!(
            live(&r),
            vec![(0, 2 * P, 1), (0, 4 * P, 9), (2 * P, 6 * P, 2)]
        );
        r.drop_process(2);
        assert_eq!(live(&r), vec![(0, 2 * P, 1), (2 * P, 6 * P, 2)]);
    }

    #[test]
    fn remap_moves_only_tracked_ranges() {
        let mut r = Regions::default();
        r.map(1, 0, 4 * P, stack(1), 5);
        r.remap(1, (0, 4 * P), (100 * P, 8 * P), stack(7), 9);
        assert_eq!(live(&r), vec![(100 * P, 108 * P, 7)]);
        r.remap(1, (50 * P, P), (200 * P, P), stack(8), 9);
        assert_eq!(
            live(&r),
            vec![(100 * P, 108 * P, 7)],
            "untracked range stays untracked"
        );
    }
}
