//! Standard output for commands that are often piped (`dabs trace … | head`): a reader that
//! goes away ends the command quietly, with exit status 0, instead of a panic.

use std::io::{ErrorKind, Write};
use std::process::ExitCode;

/// Writes `text` and a newline to standard output and flushes it, so a closed pipe is seen at
/// the line that meets it.
pub fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// True when `e` says the reader of standard output has gone away.
pub fn closed(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::BrokenPipe
}

/// The exit status for a command whose output ended with `written`: success when everything
/// was written or the reader went away (nothing more was wanted), else the error, reported.
pub fn finish(command: &str, written: std::io::Result<()>) -> ExitCode {
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{command}: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the `println!` of any command end the process quietly (status 0) when standard
/// output is a closed pipe. Rust ignores SIGPIPE, so such a write fails and `println!` panics;
/// the commands that stream (trace, status, mp decode/encode, completions, man) check their
/// writes with [`line`] and [`finish`], and this catches the rest (demo progress lines).
pub fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // std's own wording for a failed `print!` (library/std/src/io/stdio.rs).
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
