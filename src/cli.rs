//! The `warden` command: `serve`, `check-config`, `--version`.

use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ProcessEnv};
use crate::knowledge::{DEFAULT_TENANT, Knowledge};
use crate::server::state::{AppState, SharedState};

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
    /// Safety policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Classify a text with the configured guard and a policy, and print the verdict.
    Guard(GuardArgs),
    /// Add documents (files, folders, web pages) to a knowledge-base collection.
    Ingest(IngestArgs),
    /// Knowledge-base collections.
    Collections {
        #[command(subcommand)]
        command: CollectionsCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// API keys: hash a key for the config, or make a new one.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Documents of a collection.
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The collection to add to (created when missing).
    #[arg(long)]
    pub collection: String,
    /// Files, folders (read recursively: .txt, .md, .html) and http(s) URLs.
    #[arg(required = true)]
    pub sources: Vec<String>,
    /// The tenant the documents belong to (the `tenant` of the API keys that may find them).
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Subcommand)]
pub enum CollectionsCommand {
    /// List the collections and their vector dimensions.
    List,
    /// Create a collection for the configured embedding model.
    Create { name: String },
    /// Drop a collection and everything in it.
    Drop { name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Read a key from standard input and print its SHA-256, for `key_sha256` in `[[keys]]`.
    Hash,
    /// Print a new random key and its SHA-256.
    New,
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Remove a document (all its chunks) from a collection.
    Delete {
        #[arg(long)]
        collection: String,
        doc_id: String,
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files; each error names the file, the line and the key.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// The text to classify.
    pub text: String,
    /// The policy to apply (a file name in the policies folder, without `.toml`); default: the
    /// configured default policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Judge the text as a model's answer (`Agent`) instead of a user's message.
    #[arg(long)]
    pub as_output: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(long, short, global = true, env = config::CONFIG_PATH_VAR, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// Exit status for a configuration that cannot be used (sysexits' EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(arg) => check_config(&arg.config),
        Command::Serve(arg) => serve(&arg.config),
        Command::Policy(PolicyCommand::Check { paths }) => policy_check(&paths),
        Command::Guard(args) => guard(&args),
        Command::Ingest(args) => with_knowledge(&args.config.config, |k| {
            ingest(
                k,
                args.collection.clone(),
                args.tenant.clone(),
                args.sources.clone(),
            )
        }),
        Command::Collections { command, config } => {
            with_knowledge(&config.config, |k| collections(k, command))
        }
        Command::Keys(command) => keys(command),
        Command::Docs { command, config } => with_knowledge(&config.config, |k| docs(k, command)),
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn keys(command: KeysCommand) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match command {
        KeysCommand::Hash => {
            let mut key = String::new();
            if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
                report(
                    "give the key on standard input, e.g. `printf %s \"$KEY\" | warden keys hash`",
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let _ = writeln!(out, "{}", sha256_hex(key.trim()));
        }
        KeysCommand::New => {
            // Two v4 UUIDs: 244 random bits from the operating system's generator.
            let key = format!(
                "sk-warden-{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            let _ = writeln!(out, "key:        {key}\nkey_sha256: {}", sha256_hex(&key));
        }
    }
    ExitCode::SUCCESS
}

/// Runs a knowledge-base command: loads the embedding model, connects to Milvus (failing early
/// and clearly when either is missing), then runs `work`.
fn with_knowledge<F, Fut>(path: &std::path::Path, work: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<Knowledge>) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::telemetry::init(&crate::config::LogConfig {
        format: config.log.format,
        level: "warn".to_owned(),
    });
    let (Some(embeddings), Some(milvus)) = (&config.embeddings, &config.milvus) else {
        report(&format!(
            "{}: the knowledge base needs [embeddings] and [milvus] sections",
            path.display()
        ));
        return ExitCode::from(EXIT_CONFIG);
    };
    let runtime = match build_runtime(true) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let embedder = match crate::knowledge::embed::Embedder::load(embeddings) {
            Ok(embedder) => std::sync::Arc::new(embedder),
            Err(err) => {
                report(&format!("embeddings: {err}"));
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let store = match crate::knowledge::store::Store::connect(milvus).await {
            Ok(store) => std::sync::Arc::new(store),
            Err(err) => {
                report(&format!("milvus at {}: {err}", milvus.uri));
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        };
        let knowledge =
            std::sync::Arc::new(Knowledge::new(embedder, store, config.retrieval.clone()));
        work(knowledge).await
    })
}

async fn ingest(
    knowledge: std::sync::Arc<Knowledge>,
    collection: String,
    tenant: String,
    sources: Vec<String>,
) -> ExitCode {
    if let Err(err) = knowledge.collection(&collection, true).await {
        report(&err.to_string());
        return ExitCode::FAILURE;
    }
    let terminal = std::io::stderr().is_terminal();
    let report_data = knowledge
        .ingest_sources(&collection, &tenant, &sources, |done, total, name| {
            if terminal {
                let width = 30;
                let filled = (done * width).checked_div(total).unwrap_or(width);
                let _ = write!(
                    std::io::stderr(),
                    "\r[{}{}] {done}/{total} {}\x1b[K",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    name.chars()
                        .rev()
                        .take(60)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<String>()
                );
                if done == total {
                    let _ = writeln!(std::io::stderr());
                }
            }
        })
        .await;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ingested {} documents, {} chunks into `{collection}` in {:.1} s",
        report_data.documents, report_data.chunks, report_data.seconds
    );
    for failed in &report_data.failed {
        let _ = writeln!(out, "skipped {}: {}", failed.source, failed.error);
    }
    if report_data.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn collections(
    knowledge: std::sync::Arc<Knowledge>,
    command: CollectionsCommand,
) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let result = match command {
        CollectionsCommand::List => match knowledge.store.list().await {
            Ok(names) => {
                for name in names {
                    match knowledge.store.describe(&name).await {
                        Ok(info) => {
                            let _ = writeln!(out, "{name}\t{} dimensions", info.dimension);
                        }
                        Err(err) => {
                            let _ = writeln!(out, "{name}\t({err})");
                        }
                    }
                }
                Ok(())
            }
            Err(err) => Err(err.to_string()),
        },
        CollectionsCommand::Create { name } => knowledge
            .store
            .create(&name, knowledge.embedder.dimension)
            .await
            .map(|info| {
                let _ = writeln!(
                    out,
                    "created `{}` ({} dimensions)",
                    info.name, info.dimension
                );
            })
            .map_err(|e| e.to_string()),
        CollectionsCommand::Drop { name } => knowledge
            .store
            .drop_collection(&name)
            .await
            .map(|()| {
                let _ = writeln!(out, "dropped `{name}`");
            })
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

async fn docs(knowledge: std::sync::Arc<Knowledge>, command: DocsCommand) -> ExitCode {
    let DocsCommand::Delete {
        collection,
        doc_id,
        tenant,
    } = command;
    let result = async {
        knowledge
            .store
            .check(&collection, knowledge.embedder.dimension)
            .await?;
        knowledge
            .store
            .delete_document(&collection, &tenant, &doc_id)
            .await
    }
    .await;
    match result {
        Ok(0) => {
            report(&format!(
                "no document {doc_id} in `{collection}` for the tenant `{tenant}`: nothing deleted"
            ));
            ExitCode::FAILURE
        }
        Ok(chunks) => {
            let _ = writeln!(
                std::io::stdout().lock(),
                "deleted document {doc_id} ({chunks} chunks) from `{collection}`"
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            report(&err.to_string());
            ExitCode::FAILURE
        }
    }
}

/// Exit status when the guard could not be reached (sysexits' EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

fn policy_check(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for path in paths {
        match crate::guard::policy::Policy::load(path) {
            Ok(policy) => {
                let checked: Vec<&str> =
                    policy.prompt_categories().map(|c| c.id.as_str()).collect();
                let _ = writeln!(
                    out,
                    "ok: {} (policy `{}`, version {}, checks {} categories: {})",
                    path.display(),
                    policy.name,
                    policy.version,
                    checked.len(),
                    checked.join(", ")
                );
            }
            Err(err) => {
                failed = true;
                report(&err.to_string());
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

fn guard(args: &GuardArgs) -> ExitCode {
    let config = match load_config(&args.config.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match build_runtime(false) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let state = match AppState::new(config) {
            Ok(state) => state,
            Err(err) => {
                report(&err);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let Some(guard) = state.guard else {
            report("the config has no [guard] section");
            return ExitCode::from(EXIT_CONFIG);
        };
        let policy = match &args.policy {
            Some(name) => guard.policy_by_name(name),
            None => guard.default_policy(),
        };
        let Some(policy) = policy else {
            report(&format!(
                "no policy `{}` (found: {})",
                args.policy.as_deref().unwrap_or_default(),
                guard.policy_names().join(", ")
            ));
            return ExitCode::from(EXIT_CONFIG);
        };
        let request_id = crate::server::request_id::generate();
        let judgement = if args.as_output {
            guard
                .check_output(&policy, &[], &args.text, &request_id)
                .await
        } else {
            guard
                .check_texts(&policy, std::slice::from_ref(&args.text), &request_id)
                .await
                .pop()
                .unwrap_or_default()
        };
        let decision = judgement.decide(&policy);
        let verdict = serde_json::json!({
            "verdict": decision.label(),
            "categories": judgement.categories(),
            "policy": policy.name,
            "failure": judgement.failure,
        });
        let _ = writeln!(std::io::stdout().lock(), "{verdict}");
        if judgement.failure.is_some() && judgement.blocked.is_empty() {
            ExitCode::from(EXIT_UNAVAILABLE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The configuration, or the exit status after saying why it cannot be used.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path, &ProcessEnv).map_err(|err| {
        report(&err.to_string());
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The async runtime (one thread for one-shot commands), or the exit status after saying why not.
fn build_runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|err| {
        report(&format!("cannot start the async runtime: {err}"));
        ExitCode::FAILURE
    })
}

fn report(message: &str) {
    let _ = writeln!(std::io::stderr(), "warden: {message}");
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
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
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::telemetry::init(&config.log);
    let runtime = match build_runtime(true) {
        Ok(runtime) => runtime,
        Err(code) => return code,
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
    if state.config.keys.is_empty() {
        tracing::warn!(
            "no [[keys]] configured: every caller is anonymous (tenant \"default\"), all models and collections are open to anyone who can reach {listen}"
        );
    }
    prepare_collections(&state).await;
    let shared = SharedState::new(state);
    let reload_task = tokio::spawn(reload_on_hangup(shared.clone()));
    let result = crate::serve(shared, listener, shutdown).await;
    signal_task.abort();
    reload_task.abort();
    result.map_err(|err| format!("server error: {err}"))
}

/// Creates the collections that models search by default when they do not exist yet (a model's
/// `collection` asks for one), and checks the others against the embedding model. Milvus being
/// down is not fatal: `/readyz` says so, and requests follow `retrieval.on_unavailable`.
async fn prepare_collections(state: &AppState) {
    let Some(knowledge) = &state.knowledge else {
        return;
    };
    // Whether Milvus has full-text search is said once, at start-up (the probe logs it).
    if let Err(err) = knowledge.store.full_text().await {
        tracing::warn!(error = %err, "cannot tell yet whether Milvus has full-text search");
    }
    let mut names: Vec<&str> = state
        .config
        .models
        .iter()
        .filter_map(|m| m.collection.as_deref())
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        match knowledge.collection(name, true).await {
            Ok(info) => {
                tracing::info!(collection = %info.name, dimension = info.dimension, full_text = info.full_text, mode = knowledge.retrieval.mode_of(name).as_str(), "collection ready")
            }
            Err(err) => tracing::warn!(collection = name, error = %err, "collection not ready"),
        }
    }
}

/// SIGHUP re-reads the config file and the policies folder and swaps in the next generation of
/// the state (see [`AppState::next`]): backends, models, guard, embedding model, Milvus,
/// retrieval, keys and limits all change without a restart; requests and streams in flight
/// finish with the generation they started with. A file that does not validate keeps what is
/// in force, and is logged. `server.listen`, `server.max_body_bytes` and `[log]` are read at
/// start-up only: a change there is logged as needing a restart.
async fn reload_on_hangup(shared: SharedState) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: config and policies will not be reloaded");
            return;
        };
        while hangups.recv().await.is_some() {
            reload(&shared).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = shared;
    }
}

/// One reload: see [`reload_on_hangup`]. Reloads run one at a time (the signal loop awaits each).
pub async fn reload(shared: &SharedState) {
    let current = shared.current();
    let config = match Config::load(&current.config.source, &ProcessEnv) {
        Ok(config) => config,
        Err(err) => {
            current.metrics.reload("failed", Some(err.to_string()));
            tracing::error!(error = %err, "config reload failed; keeping the config in force");
            // The policies are files of their own: a bad config does not hold them back.
            if let Some(guard) = &current.guard {
                log_policies(guard, guard.reload().err().map(|err| err.to_string()));
            }
            return;
        }
    };
    // Building may load an embedding model: off the async workers.
    let previous = current.clone();
    let built = tokio::task::spawn_blocking(move || previous.next(config))
        .await
        .map_err(|err| err.to_string())
        .and_then(|built| built);
    let (next, reloaded) = match built {
        Ok(built) => built,
        Err(err) => {
            current.metrics.reload("failed", Some(err.clone()));
            tracing::error!(error = %err, "config reload failed; keeping the config and policies in force");
            return;
        }
    };
    shared.replace(next);
    current.metrics.reload(
        "ok",
        reloaded
            .policy_error
            .as_ref()
            .map(|err| format!("the policies were not reloaded: {err}")),
    );
    let next = shared.current();
    tracing::info!(keys = next.config.keys.len(), models = ?next.pool.model_ids(), rebuilt = ?reloaded.rebuilt, "config reloaded");
    if let Some(guard) = &next.guard {
        log_policies(guard, reloaded.policy_error);
    }
    if !reloaded.needs_restart.is_empty() {
        tracing::warn!(settings = ?reloaded.needs_restart, "these changes take effect at the next restart");
    }
    // Models may name collections that do not exist yet, and a new Milvus has none of them:
    // made or checked as at start-up (a few describe calls when nothing changed).
    prepare_collections(&next).await;
}

/// What became of re-reading the policies folder.
fn log_policies(guard: &crate::guard::Guard, error: Option<String>) {
    match error {
        Some(err) => {
            tracing::error!(error = %err, "policy reload failed; keeping the policies in force")
        }
        None => {
            tracing::info!(policies = guard.policy_names().len(), names = ?guard.policy_names(), "policies reloaded")
        }
    }
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
