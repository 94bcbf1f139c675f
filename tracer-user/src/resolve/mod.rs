pub mod frame;
pub mod python;
pub mod symbolize;
