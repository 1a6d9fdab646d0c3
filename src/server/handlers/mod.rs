//! Thin HTTP handlers: extract, call the pipeline or the component, answer.

pub mod chat;
pub mod collections;
pub mod embeddings;
pub mod fallback;
pub mod health;
pub mod models;
pub mod moderations;
pub mod responses;
