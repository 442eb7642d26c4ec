//! Server portions as programs of their own (seed 000's "named pipe", R-MP-6): the node runs
//! the program beside itself and hands it its clients' messages over a Unix datagram socket.
//!
//! - [`ProcessFactory`]: the node's side, a [`PortionFactory`](dabs_farm_proto::portion::PortionFactory)
//!   whose portions are programs.
//! - [`serve`] / [`main`]: the program's side, running any portion factory of this SDK as
//!   such a program.
//!
//! The contract (environment, sessions, control commands) is
//! [`dabs_farm_proto::process`]; programs in other languages follow docs/protocol.md.

mod host;
mod portion;

pub use host::{ProcessFactory, RestartPolicy};
pub use portion::{main, serve};

use std::path::PathBuf;
use std::time::Duration;

/// Why a portion program could not be started or served.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The application record's command names no program.
    #[error("the command is empty: name a program to run")]
    EmptyCommand,
    /// The program could not be started.
    #[error("cannot start {program}: {source}", program = program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It exited before it was ready.
    #[error("the program exited before binding its socket ({status})")]
    ExitedEarly {
        /// Its exit status.
        status: String,
    },
    /// It did not bind its socket or accept the control session in time.
    #[error("the program did not bind {path} and accept the control session within {within:?}", path = path.display())]
    NotReady {
        /// The allowance.
        within: Duration,
        /// The socket it should have bound.
        path: PathBuf,
    },
    /// It refused the control session.
    #[error("the program refused the control session: {0}")]
    Refused(String),
    /// A socket could not be made.
    #[error("local socket {path}: {source}", path = path.display())]
    Socket {
        /// Its path.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The program was not started by a node: a variable of the contract is missing or bad.
    #[error("environment variable {name}: {why} (a portion program is started by `dabs node`)")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The node fell silent: nothing on the control session for this long.
    #[error("no word from the node for {0:?}: it is gone, so this portion stops")]
    Orphaned(Duration),
}
