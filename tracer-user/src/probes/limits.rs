//! Map sizes (`--max-allocs`, `--max-stacks`, ...) and the memory they can cost at worst.
//!
//! The model, per map: a hash map entry costs the kernel's element header (48 bytes) plus key
//! and value rounded to 8, rounded up to the kmalloc size class it is allocated from, plus 16
//! bytes per bucket (the entry count rounded up to a power of two); a stack-trace map is
//! preallocated at 24 + 8 * 127 bytes per entry. User space holds, per outstanding allocation
//! read at the end, its key and value (64 bytes) plus the weighed copy (56 bytes); per stack,
//! its totals (64 bytes) and a growth series of at most [`SERIES_POINTS`]
//! points of 16 bytes.

use tracer_common::{
    DEFAULT_MAX_ALLOCS, DEFAULT_MAX_PY_STACKS, DEFAULT_MAX_STACKS, DEFAULT_MAX_STACK_TOTALS,
    EVENTS_BYTES, MAX_NATIVE_FRAMES, MAX_PENDING, MAX_PY_THREADS,
};

/// Points kept per stack in a growth series (`analysis::aggregate::Series`): beyond it, every
/// other older point is dropped (the first is kept), so a long trace keeps a bounded, evenly
/// thinned history.
pub const SERIES_POINTS: usize = 64;

/// Map sizes from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLimits {
    /// Outstanding allocations (ALLOCS).
    pub allocs: u32,
    /// Distinct allocation stacks with live totals (STACK_TOTALS).
    pub stacks: u32,
    /// Distinct native stacks (STACKS).
    pub native_stacks: u32,
    /// Distinct Python stacks (PY_STACKS).
    pub python_stacks: u32,
    /// Threads inside an allocator at once (PENDING).
    pub threads: u32,
    /// mmap-family event ring, bytes (a power of two, at least a page).
    pub events_bytes: u32,
}

impl Default for MapLimits {
    fn default() -> Self {
        Self {
            allocs: DEFAULT_MAX_ALLOCS,
            stacks: DEFAULT_MAX_STACK_TOTALS,
            native_stacks: DEFAULT_MAX_STACKS,
            python_stacks: DEFAULT_MAX_PY_STACKS,
            threads: MAX_PENDING,
            events_bytes: EVENTS_BYTES,
        }
    }
}

const HTAB_ELEM_HEADER: u64 = 48;
const BUCKET: u64 = 16;

fn kmalloc_class(n: u64) -> u64 {
    const CLASSES: [u64; 12] = [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096];
    CLASSES
        .iter()
        .copied()
        .find(|c| *c >= n)
        .unwrap_or_else(|| n.next_power_of_two())
}

fn round8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

/// Worst-case kernel bytes of a hash map with `entries` entries.
fn hash_map(entries: u32, key: usize, value: usize) -> u64 {
    let elem = kmalloc_class(HTAB_ELEM_HEADER + round8(key as u64) + round8(value as u64));
    u64::from(entries) * elem + u64::from(entries).next_power_of_two() * BUCKET
}

impl MapLimits {
    /// Worst-case memory, kernel and user space, when every map is full (bytes).
    pub fn worst_case_bytes(&self) -> u64 {
        use std::mem::size_of;
        use tracer_common::{AllocInfo, AllocKey, Pending, PyStack, StackKey, StackTotals};
        let kernel = hash_map(self.allocs, size_of::<AllocKey>(), size_of::<AllocInfo>())
            + hash_map(self.stacks, size_of::<StackKey>(), size_of::<StackTotals>())
            + u64::from(self.native_stacks) * (24 + 8 * MAX_NATIVE_FRAMES as u64)
            + u64::from(self.native_stacks).next_power_of_two() * 8
            + hash_map(self.python_stacks, 8, size_of::<PyStack>())
            + hash_map(self.threads, 8, size_of::<Pending>())
            + u64::from(self.events_bytes)
            + hash_map(MAX_PY_THREADS, 4, 8);
        let user = u64::from(self.allocs) * (64 + 56)
            + u64::from(self.stacks) * (64 + 16 * SERIES_POINTS as u64)
            // Resolved Python stacks: frames with names and file paths, ~40 bytes each.
            + u64::from(self.python_stacks) * 40 * 32;
        kernel + user
    }

    /// Checks what the kernel would refuse, as a one-line hint.
    pub fn check(&self) -> Result<(), String> {
        if !self.events_bytes.is_power_of_two() || self.events_bytes < 4096 {
            return Err(format!(
                "--events-bytes {} must be a power of two of at least 4096",
                self.events_bytes
            ));
        }
        Ok(())
    }
}

/// For `--help`: the defaults' worst case.
pub fn help_text() -> String {
    format!(
        "Memory: with every map full, the default sizes cost at most {} MB (kernel maps and \
         leaktrace's own memory); lower the --max-* options to bound it further. A full map is \
         counted and reported (the report's numbers are then lower bounds); tracing never stalls.",
        MapLimits::default().worst_case_bytes().div_ceil(1_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_stay_under_300_mb() {
        let bytes = MapLimits::default().worst_case_bytes();
        assert!(bytes < 300_000_000, "{bytes}");
        assert!(help_text().contains(&format!("{} MB", bytes.div_ceil(1_000_000))));
        // The biggest item: ALLOCS at 128 bytes an entry in the kernel.
        assert_eq!(hash_map(1000, 16, 48), 1000 * 128 + 1024 * 16);
        // A Python stack is over 3 KiB: its element comes from the 4 KiB class.
        assert_eq!(kmalloc_class(48 + 8 + 3080), 4096);
    }

    #[test]
    fn event_ring_sizes_are_checked() {
        let mut l = MapLimits::default();
        assert!(l.check().is_ok());
        l.events_bytes = 5000;
        assert!(l.check().is_err());
    }
}
