//! Where the process's log goes and in what form: the filter from `RUST_LOG` (or the older
//! `DABS_LOG`), text or JSON lines, colour only on a terminal, and for the demos a file of its
//! own, shared with the node processes they start, so their output stays readable.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use tracing_subscriber::EnvFilter;

/// How each log line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// The level logged when neither variable is set.
const DEFAULT_FILTER: &str = "warn";

/// What this process logs with, for the node processes it starts.
static SETUP: OnceLock<(LogFormat, Option<PathBuf>)> = OnceLock::new();

/// The filter: `RUST_LOG`, else `DABS_LOG` (its name before issue 19), else warnings. A
/// directive that does not parse is reported once and the default used, rather than failing
/// the command over its logging.
fn filter() -> EnvFilter {
    for var in ["RUST_LOG", "DABS_LOG"] {
        let Ok(text) = std::env::var(var) else { continue };
        if text.trim().is_empty() {
            continue;
        }
        return EnvFilter::try_new(quiet_dns_requests(&text)).unwrap_or_else(|e| {
            eprintln!("dabs: {var}={text:?} is not a log filter ({e}); logging at {DEFAULT_FILTER}");
            EnvFilter::new(DEFAULT_FILTER)
        });
    }
    EnvFilter::new(DEFAULT_FILTER)
}

/// `filter` with hickory-server held at warnings unless it names hickory itself: the DNS
/// front's library logs every query at info, so `RUST_LOG=info` would write a line per DNS
/// query and bury the node's own lines.
fn quiet_dns_requests(filter: &str) -> String {
    if filter.contains("hickory") { filter.to_owned() } else { format!("{filter},hickory_server=warn") }
}

/// Colour codes only where a person reads them: a terminal, and `NO_COLOR` not set.
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's subscriber: to `file` (appending; created if need be) when given,
/// else to standard error.
pub fn init(format: LogFormat, file: Option<&Path>) -> Result<(), String> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter());
    let result = match file {
        Some(path) => {
            let f = append(path)?;
            let builder = builder.with_ansi(false).with_writer(Mutex::new(f));
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
        None => {
            let builder =
                builder.with_ansi(colour(std::io::stderr().is_terminal())).with_writer(std::io::stderr);
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))?;
    let _ = SETUP.set((format, file.map(Path::to_owned)));
    Ok(())
}

fn append(path: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))
}

/// The log file a demo writes to (its own and its nodes' messages): named by the process, so
/// two demos never share one.
pub fn demo_log_path() -> PathBuf {
    std::env::temp_dir().join(format!("dabs-demo-{}.log", std::process::id()))
}

/// Where this process's log lines (and its nodes') can be read, for a message pointing there.
pub fn where_logged() -> String {
    match SETUP.get() {
        Some((_, Some(path))) => format!("in {}", path.display()),
        _ => "above".to_owned(),
    }
}

/// Arguments that give a node process started here the same log format.
pub fn child_args() -> Vec<&'static str> {
    match SETUP.get() {
        Some((LogFormat::Json, _)) => vec!["--log-format", "json"],
        _ => Vec::new(),
    }
}

/// Standard error for a node process started here: this process's log file when it has one
/// (a demo), else this process's standard error.
pub fn child_stderr() -> Stdio {
    match SETUP.get() {
        Some((_, Some(path))) => append(path).map_or_else(|_| Stdio::inherit(), Stdio::from),
        _ => Stdio::inherit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_library_is_held_at_warnings_unless_named() {
        assert_eq!(quiet_dns_requests("info"), "info,hickory_server=warn");
        assert_eq!(quiet_dns_requests("dabs_node=debug"), "dabs_node=debug,hickory_server=warn");
        assert_eq!(quiet_dns_requests("info,hickory_server=debug"), "info,hickory_server=debug");
        assert!(EnvFilter::try_new(quiet_dns_requests("info")).is_ok());
    }
}
