//! The MP endpoint as a sans-IO state machine.
//!
//! [`Endpoint`] takes datagrams ([`Endpoint::handle_datagram`]) and the current time
//! ([`Endpoint::handle_timeout`]); it returns datagrams to send ([`Endpoint::poll_transmit`]),
//! events ([`Endpoint::poll_event`]) and its next deadline ([`Endpoint::next_deadline`]).
//! It owns no socket, no clock and no task, so the tokio drivers and the deterministic
//! simulator run exactly the same code.

mod addr;
mod config;
mod endpoint;
mod stats;

pub use addr::Addr;
pub use config::Config;
pub use endpoint::{
    CallError, CallId, Endpoint, Event, Incoming, IncomingId, OpenRequest, SessionId, Time, Transmit,
};
pub use stats::Stats;
