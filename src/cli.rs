//! The `warden` command: `serve`, `check-config`, `--version`.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ProcessEnv};
use crate::state::AppState;

#[derive(Debug, Parser)]
#[command(
    name = "warden",
    version,
    about = "OpenAI-compatible gateway: guarded, grounded, streamed"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate the configuration and print it with overrides applied and secrets masked.
    CheckConfig(ConfigArg),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, short, env = config::CONFIG_PATH_VAR, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// Exit status for a configuration that cannot be used (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(arg) => check_config(&arg.config),
        Command::Serve(arg) => serve(&arg.config),
    }
}

fn report(message: &str) {
    let _ = writeln!(std::io::stderr(), "warden: {message}");
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path, &ProcessEnv) {
        Ok(config) => config,
        Err(err) => {
            report(&err.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match config.effective_toml() {
        Ok(text) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "# {}: valid", path.display());
            let _ = write!(out, "{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&format!("cannot print the configuration: {err}"));
            ExitCode::FAILURE
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path, &ProcessEnv) {
        Ok(config) => config,
        Err(err) => {
            report(&err.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(&format!("cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            report(&message);
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let listen = config.server.listen;
    let source = config.source.display().to_string();
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let address = listener.local_addr().map_err(|err| err.to_string())?;
    tracing::info!(config = %source, models = ?state.pool.model_ids(), "warden listening on http://{address}");
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    let signal_task = tokio::spawn(async move {
        wait_for_signal().await;
        signals.cancel();
    });
    let result = crate::serve(state, listener, shutdown).await;
    signal_task.abort();
    result.map_err(|err| format!("server error: {err}"))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
