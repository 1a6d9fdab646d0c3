//! `POST /v1/responses` (OpenAI's Responses API), translated to a chat request and run through
//! the same [`pipeline`](crate::chat::pipeline): the same guard on every input item, the same
//! retrieval, the same output moderation. This step serves non-streamed text responses; what
//! it does not serve yet (streaming, tools, items other than messages, stored responses) is a
//! 400 that names the field, never passed through unjudged.
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/responses> (the `Response`
//! object, `output` message items with `output_text` and `refusal` parts, `usage` with
//! `input_tokens` / `output_tokens`).

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::server::auth::Caller;
use crate::server::state::{AppState, unix_now};
use crate::types::ChatRequest;

/// The request fields this step reads; any other is refused (400 naming it).
const FIELDS: [&str; 12] = [
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "metadata",
    "stream",
    "store",
    "warden",
];

/// The keys of a message item.
const MESSAGE_FIELDS: [&str; 5] = ["type", "role", "content", "id", "status"];

pub async fn create(state: AppState, caller: Caller, body: Value) -> Result<Response, ApiError> {
    let request = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("the body must be a JSON object", None))?;
    let (chat, echo) = to_chat(request)?;
    let model = chat.model.clone();
    let response = crate::chat::pipeline::chat(state, caller, chat).await?;
    if !response.status().is_success() {
        // Errors keep the OpenAI envelope the chat path gave them.
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|err| ApiError::Internal {
            detail: format!("reading the completion: {err}"),
        })?;
    let completion: Value = serde_json::from_slice(&bytes).map_err(|err| ApiError::Internal {
        detail: format!("the completion is not JSON: {err}"),
    })?;
    let mut out = from_completion(&completion, &model, echo).into_response();
    // The request id and the `x-warden-*` headers of the chat path, kept.
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(out)
}

/// What the response repeats of the request.
struct Echo {
    instructions: Value,
    max_output_tokens: Value,
    temperature: Value,
    top_p: Value,
    user: Value,
    metadata: Value,
}

fn to_chat(request: &Map<String, Value>) -> Result<(ChatRequest, Echo), ApiError> {
    for key in request.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(ApiError::invalid(
                format!(
                    "`{key}` is not supported on /v1/responses by this Warden (yet): send it to /v1/chat/completions, or leave it out"
                ),
                Some(key.clone()),
            ));
        }
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid(
            "streamed responses are not served yet; leave `stream` out or false",
            Some("stream".to_owned()),
        ));
    }
    if request.get("store").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid(
            "this Warden stores no responses yet; set `store` to false or leave it out",
            Some("store".to_owned()),
        ));
    }
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("`model` is required", Some("model".to_owned())))?;
    let mut messages = Vec::new();
    match request.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => {
            return Err(ApiError::invalid(
                "`instructions` must be a string",
                Some("instructions".to_owned()),
            ));
        }
    }
    match request.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                messages.push(message_of(item, i)?);
            }
        }
        _ => {
            return Err(ApiError::invalid(
                "`input` is required: a string or a list of message items",
                Some("input".to_owned()),
            ));
        }
    }
    let mut chat = Map::new();
    chat.insert("model".to_owned(), json!(model));
    chat.insert("messages".to_owned(), Value::Array(messages));
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("warden", "warden"),
    ] {
        if let Some(value) = request.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.to_owned(), value.clone());
        }
    }
    // `safety_identifier` is the newer name of `user`.
    if let Some(user) = request
        .get("safety_identifier")
        .or_else(|| request.get("user"))
        .filter(|v| !v.is_null())
    {
        chat.insert("user".to_owned(), user.clone());
    }
    let chat: ChatRequest = serde_json::from_value(Value::Object(chat))
        .map_err(|err| ApiError::invalid(format!("invalid request: {err}"), None))?;
    let field = |name: &str| request.get(name).cloned().unwrap_or(Value::Null);
    let echo = Echo {
        instructions: field("instructions"),
        max_output_tokens: field("max_output_tokens"),
        temperature: field("temperature"),
        top_p: field("top_p"),
        user: field("user"),
        metadata: request
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({})),
    };
    Ok((chat, echo))
}

/// One input item as a chat message. Messages only, with text parts only, in this step.
fn message_of(item: &Value, i: usize) -> Result<Value, ApiError> {
    let at = format!("input[{i}]");
    let object = item
        .as_object()
        .ok_or_else(|| ApiError::invalid("an input item must be an object", Some(at.clone())))?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    if kind != "message" {
        return Err(ApiError::invalid(
            format!("input items of type `{kind}` are not served yet: only messages"),
            Some(format!("{at}.type")),
        ));
    }
    if let Some(key) = object
        .keys()
        .find(|k| !MESSAGE_FIELDS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("`{key}` is not a field of a message item"),
            Some(format!("{at}.{key}")),
        ));
    }
    let role = match object.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        _ => {
            return Err(ApiError::invalid(
                "`role` must be user, assistant, system or developer",
                Some(format!("{at}.role")),
            ));
        }
    };
    let text = match object.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                let piece = part.get("text").and_then(Value::as_str);
                match (kind, piece) {
                    ("input_text" | "output_text", Some(piece)) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(piece);
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!(
                                "content parts of type `{kind}` are not served yet: only input_text and output_text with their `text`"
                            ),
                            Some(format!("{at}.content[{j}]")),
                        ));
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::invalid(
                "`content` must be a string or a list of text parts",
                Some(format!("{at}.content")),
            ));
        }
    };
    Ok(json!({"role": role, "content": text}))
}

/// The chat completion the pipeline answered, as a `Response` object.
fn from_completion(completion: &Value, model: &str, echo: Echo) -> Json<Value> {
    let choice = &completion["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap_or_default();
    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
    let (status, incomplete, part) = match finish {
        "content_filter" => (
            "incomplete",
            json!({"reason": "content_filter"}),
            json!({"type": "refusal", "refusal": text}),
        ),
        "length" => (
            "incomplete",
            json!({"reason": "max_output_tokens"}),
            json!({"type": "output_text", "text": text, "annotations": []}),
        ),
        _ => (
            "completed",
            Value::Null,
            json!({"type": "output_text", "text": text, "annotations": []}),
        ),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let usage = &completion["usage"];
    let input_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
    let output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    let mut response = json!({
        "id": format!("resp_{id}"),
        "object": "response",
        "created_at": completion["created"].as_u64().unwrap_or_else(unix_now),
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "max_output_tokens": echo.max_output_tokens,
        "model": model,
        "metadata": echo.metadata,
        "output": [{
            "type": "message",
            "id": format!("msg_{id}"),
            "status": if status == "completed" { "completed" } else { "incomplete" },
            "role": "assistant",
            "content": [part],
        }],
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "store": false,
        "temperature": echo.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": echo.top_p,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": echo.user,
    });
    if let Some(note) = completion.get("warden") {
        response["warden"] = note.clone();
    }
    Json(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(err: ApiError) -> Option<String> {
        match err {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn items_become_chat_messages_and_instructions_the_system_turn() {
        let request = json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
        ], "max_output_tokens": 5, "safety_identifier": "u1"});
        let (chat, _) = to_chat(request.as_object().unwrap()).unwrap();
        let sent = serde_json::to_value(&chat).unwrap();
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "a\nb"},
                {"role": "assistant", "content": "c"},
            ])
        );
        assert_eq!(sent["max_tokens"], 5);
        assert_eq!(sent["user"], "u1");
    }

    #[test]
    fn what_is_not_served_is_refused_by_name() {
        let cases = [
            (json!({"model": "m", "input": "hi", "tools": []}), "tools"),
            (
                json!({"model": "m", "input": "hi", "stream": true}),
                "stream",
            ),
            (json!({"model": "m", "input": "hi", "store": true}), "store"),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": "x", "name": "eve"}]}),
                "input[0].name",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0]",
            ),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (json!({"model": "m"}), "input"),
        ];
        for (request, expected) in cases {
            let err = to_chat(request.as_object().unwrap()).err().unwrap();
            assert_eq!(param(err).as_deref(), Some(expected), "{request}");
        }
    }

    #[test]
    fn a_filtered_completion_is_an_incomplete_response_with_a_refusal() {
        let completion = json!({"created": 7, "choices": [{"message": {"content": "No."}, "finish_reason": "content_filter"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}, "warden": {"guard": {}}});
        let echo = Echo {
            instructions: Value::Null,
            max_output_tokens: Value::Null,
            temperature: Value::Null,
            top_p: Value::Null,
            user: Value::Null,
            metadata: json!({}),
        };
        let Json(response) = from_completion(&completion, "m", echo);
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "content_filter");
        assert_eq!(
            response["output"][0]["content"][0],
            json!({"type": "refusal", "refusal": "No."})
        );
        assert_eq!(response["usage"]["total_tokens"], 4);
        assert_eq!(response["created_at"], 7);
        assert!(response.get("warden").is_some());
    }
}
