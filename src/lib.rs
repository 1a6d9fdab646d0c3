//! Warden: an OpenAI-compatible gateway that guards, grounds and streams every chat request.
//!
//! # Layout
//!
//! The folders follow the request path; the state depends on the parts, never the reverse.
//!
//! - [`server`]: the HTTP side — [`server::routes`] (the list of paths), [`server::handlers`]
//!   (thin handlers behind them), [`server::state`] (what a config generation builds),
//!   [`server::request_id`], [`server::auth`] (keys and tenants), [`server::limits`] (rate limits,
//!   counted in the replica or shared by all in Redis), [`server::metrics`], [`server::audit`],
//!   [`server::extract`] (bodies and their limit), and [`server::layers`], which hands each layer
//!   its part of the state so that none of them depends on the state that holds them.
//! - [`chat`]: a chat request — [`chat::pipeline`] (the stages, in order, in one place),
//!   [`chat::retrieval`] (plan, judge, inject, report), [`chat::relay`] (upstream chunks → OpenAI
//!   SSE events, with the output guard between), [`chat::note`] (the `warden` object and headers
//!   that tell the client what happened).
//! - [`guard`]: safety policies and Llama Guard 3, for input and output.
//! - [`knowledge`]: ingestion and search, shared by the CLI and the admin routes, over
//!   [`knowledge::embed`] (embeddings in-process), [`knowledge::store`] (Milvus) and
//!   [`knowledge::ingest`] (documents to text, text to chunks).
//! - [`backends`]: Ollama and OpenAI-compatible backends (one file each) and the [`backends::pool`]
//!   that balances and fails over between them.
//! - [`config`]: the TOML file, `WARDEN_...` overrides, strict validation, secrets by reference.
//! - [`types`]: the OpenAI wire types; [`error`]: the one error type and its OpenAI envelope.
//! - [`cli`]: the `warden` command; [`telemetry`]: logs.
//!
//! # Layers
//!
//! [`build_app`] wraps the routes in, from the outside in: the request-id middleware (id,
//! span, access log), the body limit (413 past `server.max_body_bytes`), authentication (the
//! caller and its key; 401), metrics (every request counted and timed), rate limits (429/503),
//! and the state.

pub mod backends;
pub mod chat;
pub mod cli;
pub mod config;
pub mod error;
pub mod guard;
pub mod knowledge;
pub mod server;
pub mod telemetry;
pub mod types;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::extract::BodyLimit;
pub use crate::server::state::{AppState, SharedState};
use crate::server::{layers, request_id, routes, state};

/// The whole HTTP application, ready to serve or to drive in tests with `oneshot`. The body
/// limit is the one in force now: it changes at the next start, not on a reload.
pub fn build_app(state: impl Into<SharedState>) -> Router {
    let shared: SharedState = state.into();
    let body_limit = shared.current().config.server.max_body_bytes;
    routes::routes()
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            layers::limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            layers::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            layers::count_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            state::pin_generation,
        ))
        .layer(axum::middleware::from_fn(request_id::middleware))
        .with_state(shared)
}

/// Serves until `shutdown` is cancelled, then stops accepting and lets requests in flight
/// (streams included) finish for up to `server.shutdown_grace` (as the config in force then says).
pub async fn serve(
    state: impl Into<SharedState>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let shared: SharedState = state.into();
    let app = build_app(shared.clone());
    let listener = listener.tap_io(|stream| {
        // Small SSE frames must not wait for Nagle's algorithm.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let drain_deadline = async {
        shutdown.cancelled().await;
        let grace = shared.current().config.server.shutdown_grace;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining requests in flight"
        );
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => {
            tracing::info!("all connections closed");
            result
        }
        () = drain_deadline => {
            tracing::warn!("drain deadline passed; closing the remaining connections");
            Ok(())
        }
    }
}
