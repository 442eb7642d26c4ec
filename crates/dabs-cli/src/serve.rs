//! `dabs mp serve`: a standalone MP endpoint that opens sessions for any application and
//! answers ECHO. For interoperability tests, probes and benchmarks.

use dabs_farm_proto::shapes::{OpenAsk, negotiate_security, open_reply_secured};
use dabs_net::{DriverOptions, EndpointHandle};
use dabs_wire::NakCode;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The queue the standalone portion listens on.
pub const SERVE_QUEUE: u16 = 1;

/// Starts the serving tasks on a running endpoint: accepts every `OPEN_SESSION` (encrypted
/// when it offers security), refuses application commands with NAK 6 (ECHO is answered by
/// the endpoint itself).
pub fn serve_on(endpoint: &EndpointHandle, farm: &str) {
    let addr = endpoint.local_addrs().udp;
    let mut opens = endpoint.open_requests();
    let farm = farm.to_owned();
    tokio::spawn(async move {
        let mut next_id = 1u64;
        while let Some(open) = opens.recv().await {
            let (app, offer) = match OpenAsk::parse(&open.payload) {
                Ok(OpenAsk { app: Some(app), security, .. }) => (app, security),
                Ok(_) => {
                    open.reject(NakCode::Malformed, "OPEN_SESSION payload has no text key \"app\"");
                    continue;
                }
                Err(why) => {
                    open.reject(NakCode::Malformed, why.to_string());
                    continue;
                }
            };
            // `run` keeps the endpoint's default configuration, which answers key exchanges.
            let security = match negotiate_security(offer.as_deref(), true) {
                Ok(s) => s,
                Err(why) => {
                    open.reject(NakCode::EncryptionRefused, why.to_string());
                    continue;
                }
            };
            let va = format!("mp://{farm}/{app}/dasp/{next_id}");
            next_id += 1;
            let reply = open_reply_secured(&va, addr, SERVE_QUEUE, security.as_ref());
            if let Err(e) = open.accept(SERVE_QUEUE, reply).await {
                tracing::warn!(error = %e, "open not accepted");
            }
        }
    });
    let mut requests = endpoint.register_queue(SERVE_QUEUE);
    tokio::spawn(async move {
        while let Some(req) = requests.recv().await {
            let command = req.request.command;
            req.reject(NakCode::UnknownCommand, format!("command {command} is not served here (only ECHO)"));
        }
    });
}

/// Runs `dabs mp serve --bind ADDR` until SIGTERM or Ctrl-C.
pub fn run(bind: SocketAddr, no_crc: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dabs mp serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = StopSignals::install();
        let mut options = DriverOptions::default();
        options.config.crc = !no_crc;
        let endpoint = match dabs_net::spawn(bind, options).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("dabs mp serve: cannot bind {bind}: {e}");
                return ExitCode::FAILURE;
            }
        };
        serve_on(&endpoint, "local");
        println!("{}", endpoint.local_addrs().udp);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        stop.wait().await;
        endpoint.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGTERM and SIGINT, caught from the moment of [`StopSignals::install`]: a process that
/// prints its ready line must install them first, or a supervisor's SIGTERM right after the
/// line would kill it with the default action instead of stopping it cleanly.
pub struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts catching SIGTERM and SIGINT (inside a tokio runtime).
    pub fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
    }

    /// Resolves on SIGTERM or SIGINT (received since `install`).
    pub async fn wait(self) {
        match (self.term, self.int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_stop() {
    StopSignals::install().wait().await
}
