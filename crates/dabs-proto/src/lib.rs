//! The MP endpoint as a sans-IO state machine.
//!
//! [`Endpoint`] takes datagrams ([`Endpoint::handle_datagram`]) and the current time
//! ([`Endpoint::handle_timeout`]); it returns datagrams to send ([`Endpoint::poll_transmit`]),
//! events ([`Endpoint::poll_event`]) and its next deadline ([`Endpoint::next_deadline`]).
//! It owns no socket, no clock and no task, so the tokio drivers and the deterministic
//! simulator run exactly the same code.
//!
//! Sessions may be encrypted ([`Endpoint::open_encrypted`]): a Noise handshake
//! ([`KEY_EXCHANGE`]) keys the session, then every datagram is sealed with ChaCha20-Poly1305
//! under an explicit nonce, its header authenticated, replays rejected (`docs/protocol.md`,
//! "Encryption").

mod addr;
mod config;
mod crypto;
mod endpoint;
mod stats;

pub use addr::Addr;
pub use config::Config;
pub use crypto::{
    ENCRYPTION_OVERHEAD, KEY_EXCHANGE, NOISE_NK_PARAMS, NOISE_PARAMS, REPLAY_WINDOW, SECURITY_SPEC,
    SECURITY_SPEC_NK, SecuritySpec, StaticKey, security_spec, static_public_key,
};
pub use endpoint::{
    CallError, CallId, CloseReason, Endpoint, Event, Incoming, IncomingId, OpenRequest, SessionId, Time,
    Transmit,
};
pub use stats::Stats;
