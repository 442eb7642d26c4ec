//! The server-portion framework: one loop per portion serving all its clients, with runtime
//! events handled beside it.

use dabs_net::SessionId;
use dabs_node::hosting::{PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_wire::{NakCode, SystemCommand};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Answer with this payload.
    Reply(Vec<u8>),
    /// Refuse with a NAK.
    Reject(NakCode, String),
}

/// A server portion: what an application writes.
pub trait ServerPortion: Send + 'static {
    /// Handles one request. Requests are taken one at a time, in arrival order.
    fn handle(&mut self, command: u16, payload: Vec<u8>) -> impl Future<Output = Handled> + Send;

    /// A runtime event (a client added, a shutdown coming). Called between requests; keep it
    /// short, it must not hold up the loop.
    fn on_event(&mut self, _event: &RuntimeEvent) {}

    /// A short description of the portion's state, for state requests and the operator.
    fn state(&self) -> String {
        "running".into()
    }
}

/// Runs `portion` on the context the runtime gave it, until shutdown.
pub async fn run<P: ServerPortion>(mut portion: P, mut ctx: PortionContext) {
    let report = |r| {
        let _ = ctx.reports.send((ctx.va.clone(), r));
    };
    report(PortionReport::Started);
    let mut clients: Vec<SessionId> = Vec::new();
    let mut events_open = true;
    loop {
        tokio::select! {
            biased;
            event = ctx.events.recv(), if events_open => {
                let Some(event) = event else {
                    events_open = false;
                    continue;
                };
                portion.on_event(&event);
                match event {
                    RuntimeEvent::StateRequest(tx) => {
                        let _ = tx.send(portion.state());
                    }
                    RuntimeEvent::AddClient { session, .. } => clients.push(session),
                    RuntimeEvent::Shutdown { emergency } => {
                        // Tell the clients first, so they move before they time out.
                        let notice = if emergency { b"\xa1\x64kind\x69emergency".to_vec() } else { b"\xa1\x64kind\x65clean".to_vec() };
                        for s in &clients {
                            drop(ctx.endpoint.call_async(*s, SystemCommand::Shutdown.number(), notice.clone()));
                        }
                        if !emergency {
                            while let Ok(req) = ctx.requests.try_recv() {
                                serve_one(&mut portion, &ctx, req).await;
                            }
                        }
                        report(PortionReport::Exited);
                        return;
                    }
                }
            }
            req = ctx.requests.recv() => {
                let Some(req) = req else {
                    report(PortionReport::Exited);
                    return;
                };
                serve_one(&mut portion, &ctx, req).await;
            }
        }
    }
}

async fn serve_one<P: ServerPortion>(portion: &mut P, ctx: &PortionContext, req: dabs_net::IncomingRequest) {
    let f = &ctx.figures;
    f.queue_depth.store(ctx.requests.len() as u64, Ordering::Relaxed);
    // Latency from the sender's stamp to now, when the portion takes the request: it includes
    // the time spent waiting in this portion's queue, which is what starvation looks like.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let latency = dabs_wire::latency(req.request.id.sent, now_ms);
    if !latency.clock_skew {
        ctx.latency_histogram.observe(f64::from(latency.millis) / 1000.0);
        f.latency_sum_ms.fetch_add(u64::from(latency.millis), Ordering::Relaxed);
        f.latency_count.fetch_add(1, Ordering::Relaxed);
    }
    let command = req.request.command;
    if command == SystemCommand::Started.number() {
        req.reply(Vec::new());
        return;
    }
    let payload = req.request.payload.clone();
    match portion.handle(command, payload).await {
        Handled::Reply(r) => req.reply(r),
        Handled::Reject(code, text) => req.reject(code, text),
    }
    f.handled.fetch_add(1, Ordering::Relaxed);
}

/// A [`PortionFactory`] from an application name and a constructor.
pub struct PortionFactoryFn<P, F> {
    app: String,
    make: F,
    _portion: PhantomData<fn() -> P>,
}

impl<P, F> PortionFactoryFn<P, F>
where
    P: ServerPortion,
    F: Fn() -> P + Send + Sync + 'static,
{
    /// Portions of `app` made by `make`.
    pub fn new(app: &str, make: F) -> Self {
        Self { app: app.into(), make, _portion: PhantomData }
    }
}

impl<P, F> PortionFactory for PortionFactoryFn<P, F>
where
    P: ServerPortion,
    F: Fn() -> P + Send + Sync + 'static,
{
    fn app(&self) -> &str {
        &self.app
    }

    fn spawn(&self, ctx: PortionContext) {
        tokio::spawn(run((self.make)(), ctx));
    }
}
