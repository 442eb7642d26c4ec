//! The program's side: runs a portion factory of this SDK inside a program the node started,
//! serving the sessions the node opens on the local socket.

use super::ProcessError;
use dabs_farm_proto::portion::{DiscardLatency, PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_farm_proto::process::{
    self as contract, CLIENT_QUEUE, CONTROL_QUEUE, ENV_APP, ENV_SOCKET, ENV_TIMEOUTS, ENV_VA, ORPHAN_AFTER,
    Role, SHUTDOWN, STATUS, SessionOpen, ShutdownAsk, Status,
};
use dabs_farm_proto::records::PortionFigures;
use dabs_net::{DriverOptions, SessionId};
use dabs_wire::NakCode;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// The contract's environment, read once.
struct Env {
    socket: PathBuf,
    app: String,
    va: String,
    timeouts: std::collections::BTreeMap<String, Duration>,
}

impl Env {
    fn read() -> Result<Self, ProcessError> {
        let var = |name: &'static str| {
            std::env::var(name).map_err(|e| ProcessError::Env { name, why: e.to_string() })
        };
        let timeouts = match std::env::var(ENV_TIMEOUTS) {
            Ok(t) => {
                contract::parse_timeouts(&t).map_err(|why| ProcessError::Env { name: ENV_TIMEOUTS, why })?
            }
            Err(_) => Default::default(),
        };
        let mut timeouts = timeouts;
        timeouts.entry("default".into()).or_insert(Duration::from_secs(5));
        Ok(Env { socket: var(ENV_SOCKET)?.into(), app: var(ENV_APP)?, va: var(ENV_VA)?, timeouts })
    }
}

/// Runs `factory` as a portion program until the node shuts it down (or falls silent), on a
/// runtime of its own; the exit code says how it ended. For a program's `main`.
pub fn main(factory: Arc<dyn PortionFactory>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(factory)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `factory`'s portion on the socket the node named, until `SHUTDOWN` (then `Ok`) or
/// until the node falls silent for [`ORPHAN_AFTER`].
pub async fn serve(factory: Arc<dyn PortionFactory>) -> Result<(), ProcessError> {
    let env = Env::read()?;
    if factory.app() != env.app {
        return Err(ProcessError::Env {
            name: ENV_APP,
            why: format!("this program serves {:?}, the node asked for {:?}", factory.app(), env.app),
        });
    }
    let options = DriverOptions { unix_path: Some(env.socket.clone()), ..Default::default() };
    let endpoint = dabs_net::spawn((std::net::Ipv4Addr::LOCALHOST, 0).into(), options)
        .await
        .map_err(|source| ProcessError::Socket { path: env.socket.clone(), source })?;
    let mut opens = endpoint.open_requests();
    let mut closed = endpoint.closed_sessions();
    let requests = endpoint.register_queue(CLIENT_QUEUE);
    let mut control = endpoint.register_queue(CONTROL_QUEUE);
    let (events, events_rx) = mpsc::unbounded_channel();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let figures = Arc::new(PortionFigures::default());
    factory.spawn(PortionContext {
        app: env.app.clone(),
        va: env.va.clone(),
        queue: CLIENT_QUEUE,
        requests,
        events: events_rx,
        reports: reports_tx,
        figures: figures.clone(),
        endpoint: endpoint.clone(),
        latency: Arc::new(DiscardLatency),
        timeouts: env.timeouts.clone(),
        max_workers: None,
    });
    let mut clients: HashSet<SessionId> = HashSet::new();
    let mut control_session = None;
    let mut status = Status { state: "starting".into(), ..Default::default() };
    let orphan = tokio::time::sleep(ORPHAN_AFTER);
    tokio::pin!(orphan);
    let outcome = loop {
        tokio::select! {
            open = opens.recv() => {
                let Some(open) = open else { break Ok(()) };
                let ask: SessionOpen = match contract::decode(&open.payload) {
                    Ok(a) => a,
                    Err(why) => {
                        open.reject(NakCode::Malformed, why);
                        continue;
                    }
                };
                if ask.app != env.app {
                    open.reject(NakCode::UnknownApplication, format!("this program serves {:?}", env.app));
                    continue;
                }
                let queue = if ask.role == Role::Control { CONTROL_QUEUE } else { CLIENT_QUEUE };
                let Ok(session) = open.accept(queue, Vec::new()).await else { continue };
                match ask.role {
                    Role::Control => control_session = Some(session),
                    Role::Client => {
                        clients.insert(session);
                        figures.sessions.fetch_add(1, Ordering::Relaxed);
                        let _ = events.send(RuntimeEvent::AddClient { session, peer: open.request.peer.clone() });
                    }
                }
            }
            session = closed.recv() => {
                let Some(session) = session else { break Ok(()) };
                if clients.remove(&session) {
                    figures.sessions.fetch_sub(1, Ordering::Relaxed);
                    let _ = events.send(RuntimeEvent::RemoveClient { session });
                } else if control_session == Some(session) {
                    // The node closed the control session: it is done with this program.
                    stop_portion(&events, &mut reports, true).await;
                    break Ok(());
                }
            }
            report = reports.recv() => match report {
                Some((_, r)) => fold(&mut status, r),
                None => break Ok(()),
            },
            request = control.recv() => {
                let Some(request) = request else { break Ok(()) };
                orphan.as_mut().reset(tokio::time::Instant::now() + ORPHAN_AFTER);
                match request.request.command {
                    STATUS => {
                        status.clients = clients.len() as u64;
                        status.handled = figures.handled.load(Ordering::Relaxed);
                        status.read_figures(&figures.status);
                        request.reply(contract::encode(&status));
                        status.timeouts.clear();
                        status.errors.clear();
                    }
                    SHUTDOWN => {
                        let emergency = contract::decode::<ShutdownAsk>(&request.request.payload)
                            .map(|a| a.emergency)
                            .unwrap_or(true);
                        stop_portion(&events, &mut reports, emergency).await;
                        request.reply(Vec::new());
                        break Ok(());
                    }
                    other => request.reject(NakCode::UnknownCommand, format!("no control command {other}")),
                }
            }
            _ = &mut orphan => {
                stop_portion(&events, &mut reports, true).await;
                break Err(ProcessError::Orphaned(ORPHAN_AFTER));
            }
        }
    };
    // Lets the last answer leave before the socket goes.
    endpoint.shutdown().await;
    let _ = std::fs::remove_file(&env.socket);
    outcome
}

/// Asks the portion's loop to stop and waits (bounded) until it says it has.
async fn stop_portion(
    events: &mpsc::UnboundedSender<RuntimeEvent>,
    reports: &mut mpsc::UnboundedReceiver<(String, PortionReport)>,
    emergency: bool,
) {
    let _ = events.send(RuntimeEvent::Shutdown { emergency });
    let within = if emergency { Duration::from_secs(2) } else { Duration::from_secs(30) };
    let _ = tokio::time::timeout(within, async {
        while let Some((_, r)) = reports.recv().await {
            if r == PortionReport::Exited {
                return;
            }
        }
    })
    .await;
}

/// Folds one report of the portion's loop into the next [`Status`].
fn fold(status: &mut Status, report: PortionReport) {
    match report {
        PortionReport::Started => status.state = "running".into(),
        PortionReport::State(s) => status.state = s,
        PortionReport::Timeout { resource } => status.timeouts.push(resource),
        PortionReport::Error(e) => status.errors.push(e),
        // The node answers ALERT itself, before a request reaches the program.
        PortionReport::ClientAlert(what) => status.errors.push(format!("client alert: {what}")),
        PortionReport::Grew { workers } => status.state = format!("running, grew to {workers} workers"),
        PortionReport::Exited => status.state = "stopped".into(),
    }
}
