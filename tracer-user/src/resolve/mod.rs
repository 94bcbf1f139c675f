pub mod frame;
pub mod python;
pub mod stacks;
pub mod symbolize;
