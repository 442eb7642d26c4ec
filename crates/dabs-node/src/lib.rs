//! One server's runtime environment: configuration, membership, statistics, database and the
//! load-balancing process that chooses servers and starts portions.

pub mod config;
pub mod db;
pub mod hosting;
pub mod membership;
pub mod node;
pub mod placement;
pub mod shapes;
pub mod stats;

pub use node::{Node, NodeError, RUNTIME_QUEUE};
