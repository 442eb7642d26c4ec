//! Endpoint tuning.

use std::time::Duration;

/// Timers, limits and defaults of one endpoint.
#[derive(Clone, Debug)]
pub struct Config {
    /// First ACK time-out of a message.
    pub ack_timeout: Duration,
    /// Largest ACK time-out after growth.
    pub ack_timeout_max: Duration,
    /// Each re-attempt multiplies the time-out by this factor.
    pub backoff: f64,
    /// Each time-out is spread uniformly by ± this fraction so peers do not retry in step.
    pub jitter: f64,
    /// Re-attempts before a message is given up and its call fails.
    pub max_retries: u32,
    /// How long an ACKed request may wait for its REPLY.
    pub reply_timeout: Duration,
    /// Probes (one per `ack_timeout_max`) an ACKed request may go without a word from its
    /// peer before its call fails as `PeerSilent` (outcome unknown): a peer that crashed after
    /// its ACK is given up in about this many × `ack_timeout_max`, not `reply_timeout`. Long
    /// enough to outlast the peer's own REPLY re-attempts under heavy loss.
    pub silent_probes: u32,
    /// A request is ACKed this long after delivery unless its REPLY goes out first.
    pub ack_delay: Duration,
    /// NAK 4 (malformed) rounds of one message after which the session is re-opened (CRC
    /// NAKs are only retried: a new session cannot cure corruption).
    pub naks_before_reopen: u32,
    /// Largest message accepted, in bytes (larger: NAK 5).
    pub max_message: usize,
    /// Partial multi-buffer messages one peer may have in progress (more: NAK 5).
    pub max_partial_per_peer: usize,
    /// Peers (addresses with their port) tracked at once.
    pub max_peers: usize,
    /// Bytes the half-received multi-buffer messages of one session may hold together; a
    /// buffer that would take them over refuses its message (NAK 5). Memory grows as buffers
    /// arrive, so this counts bytes received, not sizes announced.
    pub reassembly_per_session: usize,
    /// The same, for all sessions of one source address (an IPv4 address, or an IPv6 /64,
    /// whatever the port) together (NAK 5).
    pub reassembly_per_source: usize,
    /// The same, for the whole endpoint (NAK 8: overloaded, try another server).
    pub reassembly_total: usize,
    /// Server sessions one source address may hold at once. A new one past the cap takes the
    /// place of the source's oldest idle one (idle for `reclaim_idle_after`), or is refused
    /// (NAK 10).
    pub max_sessions_per_source: usize,
    /// Half-open server sessions (accepted, but neither the REPLY acknowledged nor a request
    /// received) one source address may hold; a new one past the cap replaces its oldest.
    pub max_half_open_per_source: usize,
    /// Peers (ports) of one source address tracked at once; past it, the source's peers
    /// without a session are forgotten, and if that is not enough its open is refused (NAK 10).
    pub max_peers_per_source: usize,
    /// Under pressure (the peer table full) server sessions idle this long, and half-open
    /// ones, are closed early, oldest first, to make room for new clients.
    pub reclaim_idle_after: Duration,
    /// A server session with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Whether messages this endpoint originates carry a CRC byte.
    pub crc: bool,
    /// Whether this endpoint answers a client's `KEY_EXCHANGE` (encrypted sessions). Sessions
    /// are encrypted only when a client asks ([`crate::Endpoint::open_encrypted`]); with
    /// `false` the request is refused with NAK 9 and the client's open fails.
    pub accept_encryption: bool,
    /// The server's static private key, for clients that pinned its public key
    /// ([`crate::SECURITY_SPEC_NK`]): a farm node derives it from the farm secret. Without
    /// one, such a key exchange is refused with NAK 13.
    pub static_key: Option<crate::StaticKey>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_millis(200),
            ack_timeout_max: Duration::from_secs(2),
            backoff: 1.6,
            jitter: 0.2,
            max_retries: 8,
            silent_probes: 8,
            reply_timeout: Duration::from_secs(30),
            ack_delay: Duration::from_millis(5),
            naks_before_reopen: 3,
            max_message: 1 << 20,
            max_partial_per_peer: 8,
            max_peers: 65_536,
            reassembly_per_session: 2 << 20,
            reassembly_per_source: 4 << 20,
            reassembly_total: 64 << 20,
            max_sessions_per_source: 1024,
            max_half_open_per_source: 64,
            max_peers_per_source: 1024,
            reclaim_idle_after: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            crc: true,
            accept_encryption: true,
            static_key: None,
        }
    }
}
