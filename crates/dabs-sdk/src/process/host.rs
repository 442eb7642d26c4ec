//! The node's side: a [`PortionFactory`] whose portions are programs. Each portion gets a
//! bridge task that starts the program, mirrors every client session onto the local socket,
//! forwards requests and answers unchanged, polls the program's figures, restarts it when it
//! dies, and stops it (clean, then emergency, then killed) when the portion shuts down.

use super::ProcessError;
use crate::server::{Reporter, intake, notify_shutdown};
use dabs_farm_proto::portion::{PortionContext, PortionFactory, PortionReport, RuntimeEvent};
use dabs_farm_proto::process::{
    self as contract, ENV_APP, ENV_NODE, ENV_NODE_SOCKET, ENV_SOCKET, ENV_TIMEOUTS, ENV_VA,
    NAK_OUTCOME_UNKNOWN, Role, STATUS, STATUS_EVERY, SessionOpen, ShutdownAsk, Status,
};
use dabs_farm_proto::records::PortionFigures;
use dabs_net::{Addr, CallError, DriverOptions, EndpointHandle, Error as NetError, Session, SessionId};
use dabs_wire::NakCode;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;

/// How long a program may take to bind its socket and accept the control session.
const START_WITHIN: Duration = Duration::from_secs(10);
/// How long a clean stop may take before the emergency one.
const CLEAN_STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long an emergency stop may take before the program is killed.
const EMERGENCY_STOP_WITHIN: Duration = Duration::from_secs(2);
/// A `STATUS` unanswered this long counts as missed; this many missed in a row is a hung
/// program, killed and restarted.
const STATUS_WITHIN: Duration = Duration::from_secs(2);
const STATUS_MISSES: u32 = 3;

/// When a program that keeps dying is given up: more than `max` restarts within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within the window.
    pub max: u32,
    /// The window.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { max: 5, window: Duration::from_secs(60) }
    }
}

/// Starts portions of one application as a program (any language) speaking the process
/// contract of [`dabs_farm_proto::process`].
#[derive(Clone, Debug)]
pub struct ProcessFactory {
    spec: Arc<Spec>,
}

#[derive(Clone, Debug)]
struct Spec {
    app: String,
    program: PathBuf,
    args: Vec<String>,
    node: String,
    run_dir: PathBuf,
    restarts: RestartPolicy,
}

impl ProcessFactory {
    /// Portions of `app` run as `command` (program, then arguments) on node `node`. Sockets go
    /// in a directory of this process under the system's temporary directory.
    pub fn new(app: &str, command: &[String], node: &str) -> Result<Self, ProcessError> {
        let (program, args) = command.split_first().ok_or(ProcessError::EmptyCommand)?;
        let run_dir = std::env::temp_dir().join(format!("dabs-{}-{node}", std::process::id()));
        Ok(ProcessFactory {
            spec: Arc::new(Spec {
                app: app.into(),
                program: program.into(),
                args: args.to_vec(),
                node: node.into(),
                run_dir,
                restarts: RestartPolicy::default(),
            }),
        })
    }

    /// The same, with another restart policy.
    pub fn with_restarts(self, restarts: RestartPolicy) -> Self {
        let mut spec = Arc::unwrap_or_clone(self.spec);
        spec.restarts = restarts;
        ProcessFactory { spec: Arc::new(spec) }
    }
}

impl PortionFactory for ProcessFactory {
    fn app(&self) -> &str {
        &self.spec.app
    }

    fn spawn(&self, ctx: PortionContext) {
        tokio::spawn(bridge(self.spec.clone(), ctx));
    }
}

/// The program of one portion while it runs.
struct Running {
    child: Child,
    control: Session,
}

/// Mirror sessions by the client's session at the node; a cell so that concurrent first
/// requests of one client open one mirror.
type Mirrors = Arc<Mutex<HashMap<SessionId, Arc<OnceCell<Session>>>>>;

/// The program's status figures as its last [`Status`] gave them, and when.
type ProgramFigures = Arc<Mutex<Option<(Instant, Vec<(String, f64)>, Vec<String>)>>>;

/// Takes in the figures of a [`Status`] and publishes, in the node's record of the portion,
/// a status object for each figure the program publishes, reading the latest one: the node's
/// server monitor then reads a program's objects like any portion's. A program that stops
/// answering makes them fail after three polls.
fn mirror_figures(
    figures: &Arc<PortionFigures>,
    cache: &ProgramFigures,
    values: Vec<(String, f64)>,
    faults: Vec<String>,
) {
    let names: Vec<String> = values
        .iter()
        .map(|(n, _)| n.clone())
        .chain(faults.iter().filter_map(|f| f.split_once(':').map(|(n, _)| n.to_owned())))
        .collect();
    *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), values, faults));
    let published = figures.status.names();
    for name in names.into_iter().filter(|n| !published.contains(n)) {
        let (cache, key) = (cache.clone(), name.clone());
        let object = move || {
            let guard = cache.lock().unwrap_or_else(|e| e.into_inner());
            let Some((at, values, faults)) = guard.as_ref() else { return Err("no status yet".to_owned()) };
            if at.elapsed() > STATUS_EVERY * 3 {
                return Err(format!("the program has not answered for {} ms", at.elapsed().as_millis()));
            }
            if let Some(f) = faults.iter().find(|f| f.split_once(':').is_some_and(|(n, _)| n == key)) {
                return Err(f.split_once(':').map_or(f.as_str(), |(_, why)| why.trim()).to_owned());
            }
            values
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| "no longer published".to_owned())
        };
        // A name the program sent that is not a figure name is left out, not fatal.
        let _ = figures.status.publish(&name, Arc::new(object));
    }
}

/// What every request forwarded to the program needs.
#[derive(Clone)]
struct Forward {
    local: EndpointHandle,
    socket: Addr,
    app: String,
    mirrors: Mirrors,
    figures: Arc<PortionFigures>,
    origin: Instant,
}

async fn bridge(spec: Arc<Spec>, ctx: PortionContext) {
    let PortionContext {
        app,
        va,
        queue,
        mut requests,
        mut events,
        reports,
        figures,
        endpoint,
        latency,
        timeouts,
        // A program's workers are its own; the ceiling is not passed to it.
        max_workers: _,
    } = ctx;
    let reporter = Reporter { va: va.clone(), reports };
    let sockets = Sockets::new(&spec.run_dir, queue);
    let local = match sockets.endpoint().await {
        Ok(l) => l,
        Err(e) => return give_up(&reporter, &mut requests, e.to_string()),
    };
    let env = Env { spec: &spec, va: &va, sockets: &sockets, timeouts: contract::format_timeouts(&timeouts) };
    let mut running = match start(&env, &local).await {
        Ok(r) => r,
        Err(e) => {
            local.shutdown().await;
            return give_up(&reporter, &mut requests, e.to_string());
        }
    };
    reporter.send(PortionReport::Started);
    let forward = Forward {
        local: local.clone(),
        socket: sockets.portion_addr(),
        app: app.clone(),
        mirrors: Arc::default(),
        figures: figures.clone(),
        origin: Instant::now(),
    };
    let mut clients: Vec<SessionId> = Vec::new();
    let mut restarts: Vec<Instant> = Vec::new();
    let mut state = String::from("running");
    let (status_tx, mut status_rx) = mpsc::unbounded_channel();
    let program_figures: ProgramFigures = Arc::default();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    let mut missed = 0u32;
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Some(RuntimeEvent::AddClient { session, .. }) => clients.push(session),
                Some(RuntimeEvent::RemoveClient { session }) => {
                    clients.retain(|s| *s != session);
                    let mirror = forward.mirrors.lock().unwrap_or_else(|e| e.into_inner()).remove(&session);
                    if let Some(s) = mirror.and_then(|m| m.get().cloned()) {
                        s.close();
                    }
                }
                Some(RuntimeEvent::StateRequest(tx)) => {
                    let _ = tx.send(state.clone());
                }
                Some(RuntimeEvent::Shutdown { emergency }) => {
                    notify_shutdown(&endpoint, &clients, emergency);
                    stop(&mut running, emergency).await;
                    break;
                }
                None => {
                    stop(&mut running, true).await;
                    break;
                }
            },
            status = status_rx.recv() => {
                match status {
                    Some(Some(Status { state: s, timeouts, errors, figures: f, figure_faults, .. })) => {
                        missed = 0;
                        mirror_figures(&figures, &program_figures, f, figure_faults);
                        if s != state {
                            reporter.send(PortionReport::State(s.clone()));
                            state = s;
                        }
                        for resource in timeouts {
                            reporter.send(PortionReport::Timeout { resource });
                        }
                        for e in errors {
                            reporter.send(PortionReport::Error(e));
                        }
                    }
                    _ => missed += 1,
                }
                if missed >= STATUS_MISSES {
                    reporter.send(PortionReport::Error(format!(
                        "the program answered no STATUS for {missed} s: killed as hung"
                    )));
                    let _ = running.child.start_kill();
                    missed = 0;
                }
            }
            exit = running.child.wait() => {
                let how = exit.map_or_else(|e| format!("cannot be waited for: {e}"), |s| s.to_string());
                forward.drop_mirrors();
                let now = Instant::now();
                restarts.retain(|t| now.duration_since(*t) < spec.restarts.window);
                if restarts.len() as u32 >= spec.restarts.max {
                    reporter.send(PortionReport::Error(format!(
                        "the program exited ({how}) after {} restarts within {:?}: given up",
                        restarts.len(), spec.restarts.window
                    )));
                    break;
                }
                restarts.push(now);
                reporter.send(PortionReport::Error(format!(
                    "the program exited ({how}); restart {} of {} within {:?}",
                    restarts.len(), spec.restarts.max, spec.restarts.window
                )));
                match start(&env, &local).await {
                    Ok(r) => running = r,
                    Err(e) => {
                        reporter.send(PortionReport::Error(format!("cannot restart the program: {e}")));
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let (control, tx) = (running.control.clone(), status_tx.clone());
                tokio::spawn(async move {
                    let answer = tokio::time::timeout(STATUS_WITHIN, control.call(STATUS, Vec::new())).await;
                    let status = match answer {
                        Ok(Ok(bytes)) => contract::decode::<Status>(&bytes).ok(),
                        _ => None,
                    };
                    let _ = tx.send(status);
                });
            }
            request = requests.recv() => {
                let Some(request) = request else { break };
                figures.queue_depth.store(requests.len() as u64, Ordering::Relaxed);
                if let Some(request) = intake(&figures, &*latency, &reporter, request) {
                    tokio::spawn(forward.clone().one(request));
                }
            }
        }
    }
    forward.drop_mirrors();
    // Requests that never reached the program did not run: their clients may go elsewhere.
    requests.close();
    while let Ok(request) = requests.try_recv() {
        request.reject(NakCode::NotAccepting, "the portion has stopped");
    }
    local.shutdown().await;
    sockets.remove();
    reporter.send(PortionReport::Exited);
}

/// Reports a portion that could not start, and refuses what was already sent to it.
fn give_up(
    reporter: &Reporter,
    requests: &mut mpsc::UnboundedReceiver<dabs_net::IncomingRequest>,
    why: String,
) {
    tracing::error!(va = %reporter.va, error = %why, "portion program did not start");
    reporter.send(PortionReport::Error(why));
    requests.close();
    while let Ok(request) = requests.try_recv() {
        request.reject(NakCode::NotAccepting, "the portion could not start");
    }
    reporter.send(PortionReport::Exited);
}

impl Forward {
    /// Carries one client request to the program on the client's mirror session and its
    /// answer back, unchanged.
    async fn one(self, request: dabs_net::IncomingRequest) {
        let session = request.request.id.session;
        let mirror = match self.mirror(session, &request.request.peer).await {
            Ok(m) => m,
            Err(e) => {
                // The program never saw it: not run, the client may try elsewhere.
                return request
                    .reject(NakCode::Overloaded, format!("the portion program is unreachable: {e}"));
            }
        };
        let started = Instant::now();
        let answer = mirror.call(request.request.command, request.request.payload.clone()).await;
        let ended = Instant::now();
        self.figures.record_service(ended - self.origin, ended - started);
        match answer {
            Ok(reply) => request.reply(reply),
            Err(NetError::Call(CallError::Nak { code, text })) => request.reject(code, text),
            Err(e) => request.reject(
                NakCode::Other(NAK_OUTCOME_UNKNOWN),
                format!("the portion program failed before answering ({e}); the request may have run"),
            ),
        }
        self.figures.handled.fetch_add(1, Ordering::Relaxed);
    }

    async fn mirror(&self, session: SessionId, peer: &Addr) -> Result<Session, NetError> {
        let cell = self.mirrors.lock().unwrap_or_else(|e| e.into_inner()).entry(session).or_default().clone();
        let open = SessionOpen { app: self.app.clone(), role: Role::Client, client: Some(peer.to_string()) };
        cell.get_or_try_init(|| self.local.open(self.socket.clone(), 0, contract::encode(&open)))
            .await
            .cloned()
    }

    /// Closes every mirror: calls in flight on them fail at once instead of timing out.
    fn drop_mirrors(&self) {
        let all: Vec<_> = self.mirrors.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        for (_, cell) in all {
            if let Some(s) = cell.get() {
                s.close();
            }
        }
    }
}

/// The two Unix socket paths of one portion.
struct Sockets {
    dir: PathBuf,
    node: PathBuf,
    portion: PathBuf,
}

impl Sockets {
    fn new(dir: &Path, queue: u16) -> Self {
        Sockets {
            dir: dir.into(),
            node: dir.join(format!("{queue}.n")),
            portion: dir.join(format!("{queue}.p")),
        }
    }

    fn portion_addr(&self) -> Addr {
        Addr::Local(self.portion.to_string_lossy().into())
    }

    /// The node's end: an endpoint on the node's socket (and an unused loopback UDP port,
    /// which every endpoint has).
    async fn endpoint(&self) -> Result<EndpointHandle, ProcessError> {
        let io = |e: std::io::Error| ProcessError::Socket { path: self.node.clone(), source: e };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| ProcessError::Socket { path: self.dir.clone(), source: e })?;
        let options = DriverOptions { unix_path: Some(self.node.clone()), ..Default::default() };
        dabs_net::spawn((std::net::Ipv4Addr::LOCALHOST, 0).into(), options).await.map_err(io)
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.node);
        let _ = std::fs::remove_file(&self.portion);
    }
}

/// What a program is started with.
struct Env<'a> {
    spec: &'a Spec,
    va: &'a str,
    sockets: &'a Sockets,
    timeouts: String,
}

/// Starts the program and opens its control session.
async fn start(env: &Env<'_>, local: &EndpointHandle) -> Result<Running, ProcessError> {
    let spec = env.spec;
    let _ = std::fs::remove_file(&env.sockets.portion);
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .env(ENV_SOCKET, &env.sockets.portion)
        .env(ENV_NODE_SOCKET, &env.sockets.node)
        .env(ENV_APP, &spec.app)
        .env(ENV_VA, env.va)
        .env(ENV_NODE, &spec.node)
        .env(ENV_TIMEOUTS, &env.timeouts)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcessError::Spawn { program: spec.program.clone(), source })?;
    pass_output(&mut child, env.va);
    let deadline = Instant::now() + START_WITHIN;
    // The socket appearing is the program's "ready"; it is polled, there is no other signal.
    while !env.sockets.portion.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ProcessError::ExitedEarly { status: status.to_string() });
        }
        if Instant::now() >= deadline {
            return Err(ProcessError::NotReady { within: START_WITHIN, path: env.sockets.portion.clone() });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = SessionOpen { app: spec.app.clone(), role: Role::Control, client: None };
    let control =
        tokio::time::timeout_at(deadline, local.open(env.sockets.portion_addr(), 0, contract::encode(&open)))
            .await
            .map_err(|_| ProcessError::NotReady { within: START_WITHIN, path: env.sockets.portion.clone() })?
            .map_err(|e| ProcessError::Refused(e.to_string()))?;
    Ok(Running { child, control })
}

/// The program's stdout and stderr, line by line, into the node's log under its address.
fn pass_output(child: &mut Child, va: &str) {
    if let Some(out) = child.stdout.take() {
        let va = va.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(%va, "portion: {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let va = va.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(%va, "portion: {line}");
            }
        });
    }
}

/// Stops the program: a clean `SHUTDOWN` unless `emergency`, then an emergency one, then
/// SIGKILL, each after the one before had its time.
async fn stop(running: &mut Running, emergency: bool) {
    let mut steps = Vec::with_capacity(2);
    if !emergency {
        steps.push((false, CLEAN_STOP_WITHIN));
    }
    steps.push((true, EMERGENCY_STOP_WITHIN));
    for (emergency, within) in steps {
        let ask = contract::encode(&ShutdownAsk { emergency });
        let _ = tokio::time::timeout(within, running.control.call(contract::SHUTDOWN, ask)).await;
        if tokio::time::timeout(within, running.child.wait()).await.is_ok() {
            return;
        }
    }
    tracing::warn!("portion program ignored its shutdown: killed");
    let _ = running.child.kill().await;
}
