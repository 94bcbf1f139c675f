pub mod aggregate;
pub mod regions;
pub mod trend;
