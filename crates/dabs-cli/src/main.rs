//! `dabs`: the command-line entry point.

mod demo;
mod mp_tools;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dabs",
    version,
    about = "dabs — distributed application balancing system"
)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => demo::codec_demo(),
        Command::Mp {
            command: MpCommand::Decode,
        } => mp_tools::decode_stdin(),
        Command::Mp {
            command: MpCommand::Encode,
        } => mp_tools::encode_stdin(),
    }
}
