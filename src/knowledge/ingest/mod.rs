pub mod chunk;
pub mod text;
