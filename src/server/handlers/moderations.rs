//! `POST /v1/moderations` in OpenAI's shape, answered by Llama Guard with the default policy (or
//! the policy that `model` names), so that `client.moderations.create(...)` works against Warden.

use axum::Json;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::guard::openai;
use crate::server::extract::JsonBody;
use crate::server::request_id;
use crate::server::state::AppState;

#[derive(Debug, Deserialize)]
pub struct ModerationRequest {
    pub input: ModerationInput,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ModerationInput {
    One(String),
    Many(Vec<String>),
    Parts(Vec<InputPart>),
}

#[derive(Debug, Deserialize)]
pub struct InputPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

const MAX_INPUTS: usize = 32;

pub async fn create(
    state: AppState,
    JsonBody(request): JsonBody<ModerationRequest>,
) -> Result<Json<Value>, ApiError> {
    let guard = state
        .guard
        .as_ref()
        .ok_or_else(|| ApiError::InvalidRequest {
            message: "moderation is not enabled on this Warden: its config has no [guard]"
                .to_owned(),
            param: None,
            code: Some("moderation_disabled"),
        })?;
    // `model` may name a policy; anything else (e.g. "omni-moderation-latest") means the default.
    let policy = request
        .model
        .as_deref()
        .and_then(|name| guard.policy_by_name(name))
        .or_else(|| guard.default_policy())
        .ok_or_else(|| ApiError::Internal {
            detail: "the default policy is missing".to_owned(),
        })?;
    let texts: Vec<String> = match request.input {
        ModerationInput::One(text) => vec![text],
        ModerationInput::Many(texts) => texts,
        ModerationInput::Parts(parts) => parts
            .into_iter()
            .filter(|p| p.kind == "text")
            .filter_map(|p| p.text)
            .collect(),
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            format!("`input` must hold between 1 and {MAX_INPUTS} texts"),
            Some("input".to_owned()),
        ));
    }
    let request_id = request_id::current();
    let judgements = guard.check_texts(&policy, &texts, &request_id).await;
    let mut results = Vec::with_capacity(judgements.len());
    for judgement in judgements {
        let decision = judgement.decide(&policy);
        if judgement.failure.is_some() && judgement.blocked.is_empty() {
            return Err(ApiError::Unavailable {
                message: "the safety guard is unavailable; no verdict could be given".to_owned(),
                code: "guard_unavailable",
            });
        }
        let fired = judgement.categories();
        let (categories, scores) = openai::category_maps(&fired, &policy);
        results.push(json!({
            "flagged": openai::flagged(decision),
            "categories": categories,
            "category_scores": scores,
            "warden": {"verdict": decision.label(), "categories": fired, "policy": policy.name},
        }));
    }
    Ok(Json(json!({
        "id": format!("modr-{}", uuid::Uuid::new_v4().simple()),
        "model": guard.model,
        "results": results,
    })))
}
