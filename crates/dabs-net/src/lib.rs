//! Thin tokio drivers for the sans-IO MP endpoint.
//!
//! One task per endpoint owns the [`dabs_proto::Endpoint`] and its sockets (UDP, optionally a
//! Unix datagram socket, and an in-process queue); it is the endpoint's single receive task,
//! sorting datagrams into the core and the core's events out to the portions. Applications
//! talk to it through a cloneable [`EndpointHandle`].

mod driver;
mod handle;
mod inproc;
mod proximity;
mod socket;
mod stream;

pub use driver::{DriverOptions, spawn, spawn_with_socket};
pub use handle::{
    CallFuture, CallResult, EndpointHandle, Error, IncomingOpen, IncomingRequest, LocalAddrs, Session,
    StreamPermit, TapRecord, websocket_accept_key,
};
pub use proximity::{AddressObject, Channel, Resolver, StaticResolver, host_id};
pub use socket::{
    BatchUdp, DatagramSocket, RECV_SLOT, Received, RecvBatch, Run, bind_udp, join_group, set_group_interface,
};
pub use stream::ws::PATH as WEBSOCKET_PATH;

pub use dabs_proto::{
    Addr, CallError, Config, Incoming, KEY_EXCHANGE, OpenRequest, SECURITY_SPEC, SECURITY_SPEC_NK,
    SecuritySpec, SessionId, StaticKey, Stats, static_public_key,
};

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before it): the
/// one place the layers above read it, for sent-time stamps, latencies and `issued` fields.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
