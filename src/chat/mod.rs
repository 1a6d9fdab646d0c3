//! One chat request from the parsed body to the last SSE event: the pipeline's stages, the
//! retrieval stage, the relay with the output guard, and the note that tells the client what
//! happened.

pub mod note;
pub mod pipeline;
pub mod relay;
pub mod responses;
pub mod retrieval;
