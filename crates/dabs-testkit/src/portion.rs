//! One portion hosted on a real endpoint, as the node would host it, and a client session to
//! it: the SDK's tests of a portion alone, without a node around it.

use dabs_farm_proto::portion::{PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_farm_proto::records::PortionFigures;
use dabs_net::{Addr, DriverOptions, Session};
use dabs_sdk::{PortionFactoryFn, ServerPortion};
use std::sync::Arc;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// A hosted portion and a client session to it.
pub struct Hosted {
    /// The client's session to the portion.
    pub session: Session,
    /// The portion's live figures.
    pub figures: Arc<PortionFigures>,
    /// Runtime events to the portion (e.g. shutdown).
    pub events: UnboundedSender<RuntimeEvent>,
    /// The portion's reports.
    pub reports: UnboundedReceiver<(String, PortionReport)>,
}

/// Hosts a portion of `app` made by `make`, with `workers` workers, on queue 16 of a fresh
/// endpoint, and opens a session to it from another.
pub async fn host<P: ServerPortion>(
    app: &str,
    make: impl Fn() -> P + Send + Sync + 'static,
    workers: usize,
) -> Hosted {
    host_factory(app, PortionFactoryFn::new(app, make).with_workers(workers), Default::default(), None).await
}

/// Hosts a portion that `factory` starts, with the node's time-outs per resource `timeouts`
/// and its ceiling on workers `max_workers`, on queue 16 of a fresh endpoint, and opens a
/// session to it from another.
pub async fn host_factory(
    app: &str,
    factory: impl PortionFactory,
    timeouts: std::collections::BTreeMap<String, std::time::Duration>,
    max_workers: Option<usize>,
) -> Hosted {
    let server = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let (reports_tx, reports) = tokio::sync::mpsc::unbounded_channel();
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let figures = Arc::new(PortionFigures::default());
    let ctx = PortionContext {
        app: app.into(),
        va: format!("mp://t/{app}/dasp/1"),
        queue: 16,
        requests: server.register_queue(16),
        events,
        reports: reports_tx,
        figures: figures.clone(),
        endpoint: server.clone(),
        latency: std::sync::Arc::new(dabs_farm_proto::portion::DiscardLatency),
        timeouts,
        max_workers,
    };
    factory.spawn(ctx);
    let mut opens = server.open_requests();
    tokio::spawn(async move {
        while let Some(o) = opens.recv().await {
            let _ = o.accept(16, vec![]).await;
        }
    });
    let client = dabs_net::spawn("127.0.0.1:0".parse().unwrap(), DriverOptions::default()).await.unwrap();
    let session = client.open(Addr::Udp(server.local_addrs().udp), 1, vec![]).await.unwrap();
    Hosted { session, figures, events: events_tx, reports }
}
