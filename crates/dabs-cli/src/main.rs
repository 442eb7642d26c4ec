//! `dabs`: the command-line entry point.

mod demo;
mod mp_tools;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "dabs", version, about = "dabs — distributed application balancing system")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: a demonstration run.
    Demo,
    /// MP protocol tools.
    Mp {
        #[command(subcommand)]
        command: MpCommand,
    },
}

#[derive(Subcommand)]
enum MpCommand {
    /// Decode hex datagrams (one per line on stdin) to JSON objects (one per line).
    Decode,
    /// Encode JSON objects (one per line on stdin) to hex datagrams (one per line).
    Encode,
    /// Run a standalone endpoint: opens sessions for any application, answers ECHO.
    Serve {
        /// Address to bind, IP:PORT (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: std::net::SocketAddr,
        /// Originate messages without the CRC byte.
        #[arg(long)]
        no_crc: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DABS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => demo::codec_demo(),
        Command::Mp { command: MpCommand::Decode } => mp_tools::decode_stdin(),
        Command::Mp { command: MpCommand::Encode } => mp_tools::encode_stdin(),
        Command::Mp { command: MpCommand::Serve { bind, no_crc } } => serve::run(bind, no_crc),
    }
}
