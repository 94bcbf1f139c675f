pub mod frame;
pub mod symbolize;
