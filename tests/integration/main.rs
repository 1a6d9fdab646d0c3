//! Integration tests: Warden on 127.0.0.1 (ports from the OS) in front of fake upstreams that
//! replay recorded wire-format fixtures.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod common;
mod fake_upstream;

mod chat_ollama;
mod chat_openai;
mod cli;
mod config;
mod console;
mod disconnect;
mod errors;
mod failover;
mod guard;
mod health;
mod keys;
mod llama;
mod metrics;
mod outage;
mod reload;
mod responses;
mod retrieval;
mod sdk;
mod shared_limits;
mod shutdown;
mod store;
