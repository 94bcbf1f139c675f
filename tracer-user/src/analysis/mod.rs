pub mod aggregate;
pub mod interval;
pub mod live;
pub mod regions;
pub mod trend;
