//! What leaktrace measures, and with which probes (`--mode`).

/// `--mode`: exact (allocator uprobes) or growth (page faults, no uprobes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every allocator call, with uprobes on malloc & co: exact live bytes per call site.
    #[default]
    Exact,
    /// No allocator uprobes: resident pages first touched while traced (page-fault and
    /// memory-syscall tracepoints), by the stack that touched them.
    Growth,
}

impl Mode {
    /// The name written in reports (`mode` in the JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Growth => "growth",
        }
    }
}
