//! One server's runtime environment: configuration, membership, statistics, database and the
//! load-balancing process that chooses servers and starts portions. What it shares with
//! applications (message shapes, seals, the portion interface, statistics records) is in
//! `dabs-farm-proto`.

pub mod calls;
pub mod config;
pub mod db;
pub mod health;
pub mod history;
pub mod jobs;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod policy;
pub mod ready;
pub mod registry;
pub mod service_address;
pub mod settings;
pub mod stats;
pub mod zones;

pub use node::{
    Accepted, EventRecord, ListingError, NearnessView, Node, NodeError, NodeHandle, PortionView,
    RUNTIME_QUEUE, RoundTripView, Submission, result_json,
};
