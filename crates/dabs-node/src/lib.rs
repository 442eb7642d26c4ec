//! One server's runtime environment: configuration, membership, statistics, database and the
//! load-balancing process that chooses servers and starts portions.

pub mod config;
pub mod db;
pub mod failover;
pub mod health;
pub mod hosting;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod ready;
pub mod settings;
pub mod shapes;
pub mod stats;
pub mod zones;

pub use node::{EventRecord, Node, NodeError, NodeHandle, PortionView, RUNTIME_QUEUE};
