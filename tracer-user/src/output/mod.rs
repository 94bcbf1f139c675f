pub mod compare;
pub mod format;
pub mod pprof;
pub mod report;
pub mod summary;
pub mod view;
