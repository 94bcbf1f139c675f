pub mod compare;
pub mod pprof;
pub mod report;
pub mod view;
