//! Logging setup: `tracing` to stderr, human-readable or JSON, level from DEBUG unless RUST_LOG says otherwise.
//!
//! Logs go to stderr because stdout carries the few lines other programs parse (the listening address, a
//! bot's token, an invite code).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Called once, before anything logs.
pub(crate) fn init(format: LogFormat, debug: bool) {
    let default = if debug { "debug" } else { "info" };
    // RUST_LOG, when set and valid, replaces the DEBUG-derived level entirely, so that an operator can
    // narrow it to one crate (`RUST_LOG=chat_engine=trace`).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
