//! The farm's authoritative DNS front (seed 003, R-POL-3; `shared/spec/interop.md`, "The DNS
//! front"). Each node serves its farm's zone over UDP and TCP with hickory-server: an
//! application's name answers the server its policy prefers now, `_APP._mp._udp` the preferred
//! server's MP port, and each live node its own name. The node hands over a new [`ZoneData`]
//! through a watch channel whenever members or preferences change; a query reads the current
//! one (an `Arc` clone), so answers follow the farm without a reload.

mod answer;

pub use answer::{Answer, RoundTripsUs, answer, answer_near, common_prefix, node_addr, rtt_class};
/// hickory's DNS message types, for clients of the front (benchmarks, tests).
pub use hickory_server::proto;

use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Metadata, ResponseCode};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// One node as the zone sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// Its IPv4 address, if any.
    pub v4: Option<Ipv4Addr>,
    /// Its IPv6 address, if any.
    pub v6: Option<Ipv6Addr>,
    /// Its MP port.
    pub mp_port: u16,
}

/// What the zone answers now; the node replaces it whenever membership or a preference changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZoneData {
    /// The zone, e.g. `demo.dabs.` (any case, with or without the trailing dot).
    pub origin: String,
    /// Time to live of every record, seconds (0 is served as 1).
    pub ttl: u32,
    /// The SOA serial.
    pub serial: u32,
    /// The serving node's name: the zone's NS is `ns_host.ZONE`.
    pub ns_host: String,
    /// Live nodes by name.
    pub nodes: BTreeMap<String, NodeAddr>,
    /// Each application's servers by name, best first by its policy (possibly none).
    pub apps: BTreeMap<String, Vec<String>>,
    /// Applications whose policy is `closest`: the answer is the ranked server with the shortest
    /// measured round trip to the client's network (EDNS Client Subnet, else the resolver's),
    /// or, before any is measured, the one sharing the longest address prefix with it.
    pub closest: BTreeSet<String>,
}

#[cfg(any(test, feature = "fixtures"))]
impl ZoneData {
    /// A zone for tests: `test.dabs.`, three nodes (node-3 IPv6 only), `calc` ranked node-1
    /// then node-2, `six` on node-3, `idle` with no server.
    pub fn example() -> ZoneData {
        ZoneData {
            origin: "Test.DABS".into(),
            ttl: 5,
            serial: 1,
            ns_host: "node-1".into(),
            nodes: [
                ("node-1".to_string(), node_addr("10.9.0.1".parse().expect("literal"), 4001)),
                ("node-2".to_string(), node_addr("10.1.2.7".parse().expect("literal"), 4002)),
                (
                    "node-3".to_string(),
                    NodeAddr { v4: None, v6: Some("fd00::3".parse().expect("literal")), mp_port: 4003 },
                ),
            ]
            .into(),
            apps: [
                ("calc".to_string(), vec!["node-1".to_string(), "node-2".to_string()]),
                ("six".to_string(), vec!["node-3".to_string()]),
                ("idle".to_string(), vec![]),
            ]
            .into(),
            closest: Default::default(),
        }
    }
}

/// Where the `closest` policy's round trips come from: the node's measurements.
pub trait RoundTrips: Send + Sync + 'static {
    /// Each node's measured round trip (µs) to the network of `client`, whose EDNS client
    /// subnet gave `prefix` bits (`None`: the resolver's own address). Asking may start a
    /// measurement; until one ends the map is empty and the answer falls back to prefixes.
    fn round_trips(&self, client: IpAddr, prefix: Option<u8>) -> RoundTripsUs;
}

/// Why the DNS front could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket could not be bound.
    #[error("cannot bind DNS over {proto} at {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `UDP` or `TCP`.
        proto: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// The UDP receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
const UDP_RECV_BUFFER: usize = 4 << 20;

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The running DNS front.
pub struct DnsFront {
    server: Server<Handler>,
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
}

impl DnsFront {
    /// Binds UDP and TCP on the same address and port (port 0: a free port, the same for both)
    /// and serves `zone` until stopped; `near` gives `closest` its round trips.
    pub async fn start(
        bind: SocketAddr,
        zone: watch::Receiver<Arc<ZoneData>>,
        near: Option<Arc<dyn RoundTrips>>,
    ) -> Result<DnsFront, DnsError> {
        let (udp, tcp) = bind_pair(bind).await?;
        let addr = udp.local_addr().map_err(|source| DnsError::Bind { addr: bind, proto: "UDP", source })?;
        let queries = Arc::new(AtomicU64::new(0));
        let mut server = Server::new(Handler { zone, queries: queries.clone(), near });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 64);
        tracing::info!(%addr, "DNS front listening (UDP and TCP)");
        Ok(DnsFront { server, addr, queries })
    }

    /// Where it answers (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries answered so far (any response code).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Stops serving and releases both sockets.
    pub async fn stop(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "DNS front stopped with an error");
        }
    }
}

/// UDP and TCP on one port. With port 0 the UDP port is picked first; if TCP's same port is
/// taken, try again with another (a few times).
async fn bind_pair(bind: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), DnsError> {
    let udp_err = |source| DnsError::Bind { addr: bind, proto: "UDP", source };
    let mut last = None;
    for _ in 0..if bind.port() == 0 { 8 } else { 1 } {
        let udp = tokio::net::UdpSocket::bind(bind).await.map_err(udp_err)?;
        // Room for bursts: at the default buffer a saturating dnsperf overflowed it and lost
        // queries while the answers were being built (docs/benchmarks.md "DNS front").
        let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(UDP_RECV_BUFFER);
        let at = udp.local_addr().map_err(udp_err)?;
        match tokio::net::TcpListener::bind(at).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => last = Some(DnsError::Bind { addr: at, proto: "TCP", source }),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Answers queries from the current zone.
struct Handler {
    zone: watch::Receiver<Arc<ZoneData>>,
    queries: Arc<AtomicU64>,
    near: Option<Arc<dyn RoundTrips>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let zone = self.zone.borrow().clone();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        // An OPT in the query gets one in the answer (RFC 6891), with the client subnet echoed.
        let mut edns = request.edns.as_ref().map(|q| {
            let mut e = Edns::new();
            e.set_max_payload(q.max_payload().max(512));
            e
        });
        let query = match request.queries.queries() {
            [one] => one,
            _ => {
                metadata.response_code = ResponseCode::FormErr;
                return send(&mut response, request, edns.as_ref(), metadata, &Answer::default()).await;
            }
        };
        let subnet = answer::client_subnet(request.edns.as_ref());
        let client = subnet.map_or(request.src().ip(), |s| s.addr());
        let prefix = subnet.map(|s| s.source_prefix());
        let mut near = || self.near.as_ref().map(|n| n.round_trips(client, prefix)).unwrap_or_default();
        let a = answer_near(&zone, &query.name().to_string(), query.query_type(), client, &mut near);
        metadata.authoritative = a.authoritative;
        metadata.response_code = a.code;
        if let (Some(e), Some(mut s)) = (edns.as_mut(), subnet) {
            s.set_scope_prefix(if a.used_subnet { s.source_prefix() } else { 0 });
            e.options_mut().insert(hickory_server::proto::rr::rdata::opt::EdnsOption::Subnet(s));
        }
        send(&mut response, request, edns.as_ref(), metadata, &a).await
    }
}

async fn send<R: ResponseHandler>(
    response: &mut R,
    request: &Request,
    edns: Option<&Edns>,
    metadata: Metadata,
    a: &Answer,
) -> ResponseInfo {
    let builder = MessageResponseBuilder::new(&request.queries, edns);
    let message = builder.build(metadata, a.answers.iter(), a.authorities.iter(), [], a.additionals.iter());
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "DNS answer not sent");
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header { metadata: m, counts: Default::default() })
        }
    }
}
