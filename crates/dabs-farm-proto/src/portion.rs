//! How a node hosts server portions: what a portion receives when it starts, and what it
//! tells the runtime. The application SDK builds its frameworks on this.

use crate::records::PortionFigures;
use dabs_net::{Addr, EndpointHandle, IncomingRequest, SessionId};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A runtime event for a portion, delivered beside (not inside) its message loop.
#[derive(Debug)]
pub enum RuntimeEvent {
    /// Report your state (free text) on the channel.
    StateRequest(oneshot::Sender<String>),
    /// A client was given a session on this portion.
    AddClient {
        /// The session.
        session: SessionId,
        /// The client's address.
        peer: Addr,
    },
    /// A client's session on this portion ended (closed, idle or lost).
    RemoveClient {
        /// The session.
        session: SessionId,
    },
    /// Stop: clean (tell clients, finish pending work) or emergency (tell clients, stop now).
    Shutdown {
        /// Emergency rather than clean.
        emergency: bool,
    },
}

/// What a portion reports to the load-balancing process.
#[derive(Clone, Debug, PartialEq)]
pub enum PortionReport {
    /// Its loop is running.
    Started,
    /// Its state changed.
    State(String),
    /// Something went wrong.
    Error(String),
    /// A lock or timer guarding `resource` timed out (starvation).
    Timeout {
        /// The resource type.
        resource: String,
    },
    /// One of its clients raised an alert (what it said, decoded for a person).
    ClientAlert(String),
    /// Its requests kept waiting for a worker past the `workers` time-out, so it added one
    /// (R-LB-7): it now runs this many. Until it reaches its ceiling, such waits are not
    /// reported as [`PortionReport::Timeout`]s and the farm spawns nothing for them.
    Grew {
        /// Workers now running.
        workers: u32,
    },
    /// It has exited.
    Exited,
}

/// Everything a starting portion gets.
pub struct PortionContext {
    /// Its application.
    pub app: String,
    /// Its virtual address.
    pub va: String,
    /// Its queue at the node's endpoint.
    pub queue: u16,
    /// Requests for it, in arrival order.
    pub requests: mpsc::UnboundedReceiver<IncomingRequest>,
    /// Runtime events.
    pub events: mpsc::UnboundedReceiver<RuntimeEvent>,
    /// Where to report; each report carries the portion's virtual address.
    pub reports: mpsc::UnboundedSender<(String, PortionReport)>,
    /// Its live figures, shared with the statistics process.
    pub figures: Arc<PortionFigures>,
    /// The node's endpoint, for calls the portion makes itself.
    pub endpoint: EndpointHandle,
    /// Where the portion records each request's latency for the node's metrics.
    pub latency: Arc<dyn LatencyObserver>,
    /// Time-outs per resource type from the node's configuration (always has `default`).
    pub timeouts: std::collections::BTreeMap<String, std::time::Duration>,
    /// The operator's ceiling on the workers a portion of this application may grow to
    /// (`[[app]] max_workers`, R-LB-7); `None`: the application's own and the CPUs.
    pub max_workers: Option<usize>,
}

/// Starts portions of one application.
pub trait PortionFactory: Send + Sync + 'static {
    /// The application's name.
    fn app(&self) -> &str;
    /// Starts one portion; it must run its loop on its own task.
    fn spawn(&self, ctx: PortionContext);
    /// The client modules the application publishes (R-CL): none unless it says so.
    fn modules(&self) -> Vec<crate::modules::ModuleSource> {
        Vec::new()
    }
}

/// Receives each request's one-way latency, for the host's metrics. The host decides what
/// records it (the node: a Prometheus histogram); a portion only reports.
pub trait LatencyObserver: Send + Sync + 'static {
    /// Records one request's latency, in seconds.
    fn observe(&self, seconds: f64);
}

/// A [`LatencyObserver`] that keeps nothing, for portions run outside a node (tests, tools).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardLatency;

impl LatencyObserver for DiscardLatency {
    fn observe(&self, _seconds: f64) {}
}
