//! `POST /v1/embeddings` in OpenAI's shape, computed in-process.

use axum::Json;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::server::extract::JsonBody;
use crate::server::state::AppState;

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingInput,
    pub model: String,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    /// Token ids: OpenAI accepts them, but they belong to OpenAI's tokenizer, not this model's.
    Tokens(Vec<Value>),
}

/// Inputs per request, as OpenAI allows.
const MAX_INPUTS: usize = 2048;

pub async fn create(
    state: AppState,
    JsonBody(request): JsonBody<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let embedder = state
        .embedder
        .as_ref()
        .ok_or_else(|| ApiError::InvalidRequest {
            message: "embeddings are not enabled on this Warden: its config has no [embeddings]"
                .to_owned(),
            param: None,
            code: Some("embeddings_disabled"),
        })?;
    if request.model != embedder.model_id {
        return Err(ApiError::ModelNotFound {
            model: request.model,
        });
    }
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) => {
            return Err(ApiError::invalid(
                "`input` must be a string or an array of strings: token ids of another tokenizer cannot be embedded here",
                Some("input".to_owned()),
            ));
        }
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS || texts.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            format!("`input` must hold between 1 and {MAX_INPUTS} non-empty strings"),
            Some("input".to_owned()),
        ));
    }
    if let Some(dimensions) = request.dimensions
        && dimensions != embedder.dimension
    {
        return Err(ApiError::invalid(
            format!(
                "this model makes vectors of {} dimensions only",
                embedder.dimension
            ),
            Some("dimensions".to_owned()),
        ));
    }
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("`encoding_format` must be `float` or `base64`, not `{other}`"),
                Some("encoding_format".to_owned()),
            ));
        }
    };
    let tokens: usize = texts.iter().map(|t| embedder.count_tokens(t)).sum();
    let vectors = embedder
        .embed_raw(texts)
        .await
        .map_err(|err| ApiError::Unavailable {
            message: format!("the embedding model failed: {err}"),
            code: "embeddings_unavailable",
        })?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                // OpenAI's base64 format: the little-endian f32 bytes.
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": embedder.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
