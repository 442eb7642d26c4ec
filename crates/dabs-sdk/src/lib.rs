//! The application SDK.
//!
//! - [`server`]: the server-portion framework (message loop, runtime events beside it, state
//!   reports, clean and emergency shutdown).
//! - [`client`]: the client-portion framework (open through the farm group, `STARTED`, calls
//!   that follow the portion when it moves, stop and status).
//! - [`delivery`]: a client portion delivered in parts: verified modules, return channels
//!   tried in order, mutable modules placed by the device.
//! - [`process`]: server portions as programs beside the node (the local socket partition).
//! - [`partition!`]: one definition of a partition's operations, from which the network
//!   partition and the dispatch to a local implementation are both derived, so a caller
//!   cannot tell which one it holds.

pub mod client;
pub mod delivery;
pub mod partition;
pub mod process;
pub mod server;
pub mod sync;
pub mod timers;

pub use client::{ClientStatus, FarmClient, FarmClientOptions, Transport};
/// What an application needs from the layers below, so the SDK is its one dependency.
pub use dabs_farm_proto::portion::PortionFactory;
pub use dabs_net;
pub use dabs_wire::NakCode;
pub use partition::{
    Caller, PartitionError, Placed, decode_args, decode_reply, encode_args, encode_err, encode_ok,
};
pub use server::{Handled, PortionFactoryFn, ServerPortion};
pub use sync::{Empty, Permit, QueueFull, StarvationReporter, Starved, TimedQueue, TimedSemaphore};
pub use timers::{
    Adjust, Attempt, Callback, Expired, Ratio, ReadOutcome, ReadTimer, ReadTimerConfig, TimedOut,
    TimeoutPattern, TimerBase, WriteTimer,
};
