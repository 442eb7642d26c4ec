//! Measuring nearness for the `closest` policy: the rounds in which every member probes a
//! client network (`MEASURE`), the probe itself, and the DNS front's view of the results.
//!
//! The probe is a TCP handshake to port 53 of the target, timed: a resolver answers it with
//! SYN-ACK, any other host that is up with RST, both one round trip away, and neither needs
//! privileges (ICMP echo would need `CAP_NET_RAW`). A target that drops it gives no figure.

use super::Inner;
use crate::policy::{Asker, Nearness};
use dabs_farm_proto::shapes::{Measure, Measured, cbor, from_cbor};
use dabs_wire::SystemCommand;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Probes per measurement; the shortest counts (the first may include ARP or a cold route).
const PROBES: u32 = 3;
/// How long one probe waits for SYN-ACK or RST.
const PROBE_LIMIT: Duration = Duration::from_secs(1);
/// How long a round waits for another member's answer.
const ASK_LIMIT: Duration = Duration::from_secs(5);
/// How often the rounds due are looked for without a question waking the loop.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Probes this node runs at once for other members; more are refused until one ends.
pub(super) const MAX_PROBING: usize = 32;
/// The port probed: resolvers listen on it, so they complete the handshake.
const PROBE_PORT: u16 = 53;

/// One client network and each node's round trip to it, for the operator.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NearnessView {
    /// The network, `ADDR/LEN`.
    pub network: String,
    /// The address probed for it.
    pub target: IpAddr,
    /// Each node's figure.
    pub round_trips: Vec<RoundTripView>,
}

/// One node's round trip to a network.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoundTripView {
    /// The node.
    pub node: String,
    /// The shortest probe's round trip, ms.
    pub rtt_ms: Option<f64>,
    /// Why there is none.
    pub error: Option<String>,
}

/// The table of round trips and the bell that starts a round for a new network.
#[derive(Clone, Default)]
pub(super) struct NearnessShared {
    table: Arc<Mutex<Nearness>>,
    wake: Arc<Notify>,
}

impl NearnessShared {
    fn table(&self) -> std::sync::MutexGuard<'_, Nearness> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who asks from `client` (subnet `prefix` bits, if from an EDNS client subnet), with the
    /// round trips measured so far; a new network wakes the measuring loop.
    pub(super) fn asker(&self, client: IpAddr, prefix: Option<u8>) -> Asker {
        let (network, rtt_us, new) = self.table().ask(client, prefix, Instant::now());
        // Only a network not seen before rings: the loop's own check covers the rest, so a
        // network that cannot be measured does not wake it on every query.
        if new {
            self.wake.notify_one();
        }
        Asker { ip: client, network, rtt_us }
    }

    /// Every network known and each node's figure, for the operator.
    pub(super) fn view(&self) -> Vec<NearnessView> {
        self.table()
            .view()
            .into_iter()
            .map(|(network, target, rtt)| NearnessView {
                network: network.to_string(),
                target,
                round_trips: rtt
                    .into_iter()
                    .map(|(node, r)| match r {
                        Ok(us) => RoundTripView { node, rtt_ms: Some(f64::from(us) / 1000.0), error: None },
                        Err(e) => RoundTripView { node, rtt_ms: None, error: Some(e) },
                    })
                    .collect(),
            })
            .collect()
    }
}

impl dabs_dns::RoundTrips for NearnessShared {
    fn round_trips(&self, client: IpAddr, prefix: Option<u8>) -> dabs_dns::RoundTripsUs {
        self.asker(client, prefix).rtt_us
    }
}

/// Times [`PROBES`] TCP handshakes with `target` from `source` (the node's own address, so the
/// path measured is the one its answers take); the shortest, µs.
pub(super) async fn probe(target: IpAddr, source: Option<IpAddr>) -> Result<u32, String> {
    let to = SocketAddr::new(target, PROBE_PORT);
    let mut best: Option<Duration> = None;
    let mut last_error = String::new();
    for _ in 0..PROBES {
        let socket = match target {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(|e| format!("no socket: {e}"))?;
        if let Some(ip) = source.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == target.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| format!("cannot send from {ip}: {e}"))?;
        }
        let started = Instant::now();
        match tokio::time::timeout(PROBE_LIMIT, socket.connect(to)).await {
            // Answered (a resolver) or refused (a host with nothing on the port): either way,
            // one round trip.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(Err(e)) => {
                last_error = format!("{to}: {e}");
                continue;
            }
            Err(_) => {
                last_error = format!("{to}: no answer within {} ms", PROBE_LIMIT.as_millis());
                continue;
            }
        }
        let took = started.elapsed();
        best = Some(best.map_or(took, |b| b.min(took)));
    }
    best.map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)).ok_or(last_error)
}

impl Inner {
    /// Runs the measurement rounds: when a question from a new network rings, and every
    /// [`CHECK_EVERY`] for networks due again or missing a new member's figure.
    pub(super) async fn nearness_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.nearness.wake.notified() => {}
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let members: Vec<String> = {
                let st = self.state();
                st.members
                    .membership
                    .fresh(Instant::now(), self.fresh_window())
                    .map(|s| s.node.clone())
                    .collect()
            };
            let rounds = self.nearness.table().due(&members, Instant::now());
            for round in rounds {
                let this = self.clone();
                tokio::spawn(async move {
                    let mut asks = tokio::task::JoinSet::new();
                    for node in round.nodes {
                        let this = this.clone();
                        asks.spawn(async move {
                            let result = this.measure_from(&node, round.target).await;
                            (node, result)
                        });
                    }
                    while let Some(done) = asks.join_next().await {
                        if let Ok((node, result)) = done {
                            if let Err(e) = &result {
                                tracing::debug!(%node, network = %round.network, error = %e, "round trip not measured");
                            }
                            this.nearness.table().record(round.network, &node, result);
                        }
                    }
                    this.nearness.table().finish(round.network, Instant::now());
                });
            }
        }
    }

    /// `node`'s round trip to `target`: probed here when it is this node, else asked of it.
    async fn measure_from(&self, node: &str, target: IpAddr) -> Result<u32, String> {
        if node == self.me {
            return probe(target, Some(self.mp.ip())).await;
        }
        let ask = self.call_node(node, SystemCommand::Measure.number(), cbor(&Measure { target }));
        let bytes =
            tokio::time::timeout(ASK_LIMIT, ask).await.map_err(|_| format!("{node} did not answer"))??;
        let m: Measured = from_cbor(&bytes, "MEASURE answer").map_err(|e| e.to_string())?;
        m.rtt_us.ok_or_else(|| format!("{node}: {}", m.why.unwrap_or_else(|| "no figure".into())))
    }

    /// Who opens from `client`, for `closest`: the round trips measured to its network.
    pub(super) fn asker(&self, client: IpAddr) -> Asker {
        self.nearness.asker(client, None)
    }

    /// Answers another member's `MEASURE` (already authenticated): probes off the runtime
    /// loop, at most [`MAX_PROBING`] at once.
    pub(super) fn serve_measure(
        self: &Arc<Self>,
        req: dabs_net::IncomingRequest,
        opened: Option<dabs_farm_proto::control::Opened>,
        payload: &[u8],
    ) {
        let (Some(opened), Ok(ask)) = (opened, from_cbor::<Measure>(payload, "MEASURE")) else {
            return req.reject(dabs_wire::NakCode::Malformed, "MEASURE wants a sealed {\"target\": address}");
        };
        let Ok(slot) = self.probing.clone().try_acquire_owned() else {
            let busy = Measured { rtt_us: None, why: Some("too many probes under way".into()) };
            return self.answer(req, &opened, &cbor(&busy));
        };
        let this = self.clone();
        tokio::spawn(async move {
            let result = probe(ask.target, Some(this.mp.ip())).await;
            drop(slot);
            let (rtt_us, why) = match result {
                Ok(us) => (Some(us), None),
                Err(e) => (None, Some(e)),
            };
            this.answer(req, &opened, &cbor(&Measured { rtt_us, why }));
        });
    }
}
