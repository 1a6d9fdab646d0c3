//! Logging: `tracing` to stderr, as text or JSON lines. `RUST_LOG` overrides the configured level.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed write is otherwise reported with `eprintln!`, which panics when stderr is
        // gone (a log shipper that died): the task logging would die with it (the accept loop,
        // the one waiting for SIGTERM), and Warden would stop serving but not stop.
        .log_internal_errors(false);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
