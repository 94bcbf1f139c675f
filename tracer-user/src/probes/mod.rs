pub mod bpf;
pub mod growth;
pub mod limits;
pub mod mode;
pub mod targets;
