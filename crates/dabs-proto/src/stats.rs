//! Counters kept by the endpoint for the statistics process and metrics.

use std::collections::BTreeMap;

/// Everything the endpoint counts. Cumulative since creation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed in.
    pub datagrams_in: u64,
    /// Datagrams handed out.
    pub datagrams_out: u64,
    /// Messages sent again (each a round of all its buffers) after a time-out, a NAK or a
    /// duplicate request.
    pub retransmits: u64,
    /// Datagrams that did not decode.
    pub decode_errors: u64,
    /// NAKs sent, by error number.
    pub naks_sent: BTreeMap<u16, u64>,
    /// NAKs received, by error number.
    pub naks_received: BTreeMap<u16, u64>,
    /// Requests and replies that arrived again after delivery.
    pub duplicates: u64,
    /// Requests delivered to the application.
    pub requests_delivered: u64,
    /// Calls answered.
    pub calls_answered: u64,
    /// Calls failed (gave up, NAKed, session lost, timed out).
    pub calls_failed: u64,
    /// Replies not acknowledged after the maximum number of re-attempts (then kept only to
    /// answer a repeat of their request).
    pub replies_undelivered: u64,
    /// Sessions opened (either side).
    pub sessions_opened: u64,
    /// Sessions re-opened after NAKs.
    pub sessions_reopened: u64,
    /// Sessions closed for idleness.
    pub sessions_expired: u64,
    /// Sessions open when these figures were read (a gauge; drivers fill it in, from
    /// [`crate::Endpoint::session_count`]).
    pub sessions_open: u64,
    /// Extra REPLYs to an `OPEN_SESSION` already answered by another endpoint.
    pub extra_open_replies: u64,
    /// Messages whose stamp was ahead of our clock.
    pub clock_skew: u64,
    /// Sum of one-way latencies of delivered messages, in ms.
    pub latency_sum_ms: u64,
    /// Number of latencies summed.
    pub latency_count: u64,
    /// Sessions whose key exchange completed (either side).
    pub sessions_encrypted: u64,
    /// Datagrams dropped because they failed authentication: a bad tag, encrypted without
    /// session keys, in clear in an encrypted session, or a key exchange that did not verify.
    pub auth_failures: u64,
    /// Encrypted datagrams dropped because their nonce was seen already or is too old.
    pub replays_dropped: u64,
    /// Bytes the half-received multi-buffer messages hold now, requests and replies alike (a
    /// gauge, brought up to date after every datagram and timer).
    pub reassembly_bytes: u64,
    /// The most [`Stats::reassembly_bytes`] has been.
    pub reassembly_peak_bytes: u64,
    /// Multi-buffer messages refused (NAK 5 or 8) or replies let go because a reassembly
    /// budget (session, source or endpoint) would have been exceeded.
    pub reassembly_refused: u64,
    /// Server sessions closed early to make room: a source over its caps, or the peer table
    /// full (see [`crate::Config::reclaim_idle_after`]).
    pub sessions_reclaimed: u64,
    /// Opens refused (NAK 10) because a cap per source or the peer table left no room.
    pub opens_refused: u64,
    /// Peers (addresses with their port) tracked now (a gauge, as `reassembly_bytes`).
    pub peers_tracked: u64,
    /// Half-open server sessions now (a gauge).
    pub half_open_sessions: u64,
    /// The endpoint is near its limits ([`crate::Endpoint::is_full`]; a gauge): a farm node
    /// then announces that it takes no new clients.
    pub tables_full: bool,
}

impl Stats {
    pub(crate) fn nak_sent(&mut self, code: u16) {
        *self.naks_sent.entry(code).or_default() += 1;
    }

    pub(crate) fn nak_received(&mut self, code: u16) {
        *self.naks_received.entry(code).or_default() += 1;
    }
}
