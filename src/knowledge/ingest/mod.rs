pub mod chunk;
#[cfg(feature = "ingest-libs")]
mod libs;
pub mod text;
