//! `POST /v1/responses` (OpenAI's Responses API), translated to a chat request and run through
//! the same [`pipeline`](crate::chat::pipeline): the same guard on every input item, the same
//! retrieval, the same output moderation (buffered, stream_first or monitor), then written back
//! as a `Response` object or as its stream of events.
//!
//! The request is read by allowlist: a field, item type, content-part type or tool type this
//! module does not translate is a 400 that names it, never passed on unjudged. What a Llama
//! backend cannot do (OpenAI's built-in tools, background mode) says so.
//!
//! Wire format: <https://platform.openai.com/docs/api-reference/responses> (the `Response`
//! object, its `output` items, the streaming events) as the official SDKs read it.

mod output;
pub mod store;
mod stream;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

use crate::chat::pipeline::{self, Answer, Outcome};
use crate::chat::relay;
use crate::error::ApiError;
use crate::server::auth::Caller;
use crate::server::state::{AppState, unix_now};
use crate::types::ChatRequest;

pub use output::Shell;
use store::{Owner, ResponseStore, Stored};

/// The request fields that are translated; any other is refused (400 naming it).
const FIELDS: [&str; 20] = [
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
    "previous_response_id",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "truncation",
    "background",
    "moderation",
    "warden",
];

/// Fields of OpenAI's that need what a Llama backend behind Warden does not have.
const NOT_ON_LLAMA: [(&str, &str); 5] = [
    ("reasoning", "reasoning effort and summaries"),
    (
        "include",
        "extra output (reasoning, search or file results)",
    ),
    ("conversation", "OpenAI-hosted conversations"),
    ("prompt", "OpenAI-hosted prompt templates"),
    ("max_tool_calls", "built-in tool calls"),
];

/// The keys of each input item type.
const MESSAGE_FIELDS: [&str; 5] = ["type", "role", "content", "id", "status"];
const CALL_FIELDS: [&str; 6] = ["type", "call_id", "name", "arguments", "id", "status"];
const CALL_OUTPUT_FIELDS: [&str; 5] = ["type", "call_id", "output", "id", "status"];
const FUNCTION_TOOL_FIELDS: [&str; 5] = ["type", "name", "description", "parameters", "strict"];
const FORMAT_FIELDS: [&str; 6] = [
    "type",
    "name",
    "schema",
    "description",
    "strict",
    "json_schema",
];

/// OpenAI's built-in tools: they run on OpenAI's side, which no Llama backend has.
const BUILT_IN_TOOLS: [&str; 11] = [
    "web_search",
    "web_search_preview",
    "file_search",
    "computer_use_preview",
    "code_interpreter",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
];

pub async fn create(state: AppState, caller: Caller, body: Value) -> Result<Response, ApiError> {
    let request = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("the body must be a JSON object", None))?;
    let owner = Owner {
        key: caller.name.clone(),
        tenant: caller.tenant.clone(),
    };
    let store = state.responses.clone();
    let prior = match given(request, "previous_response_id") {
        None => Vec::new(),
        Some(Value::String(id)) => {
            store
                .get(id, &owner)
                .ok_or_else(|| previous_not_found(id))?
                .conversation
        }
        Some(_) => {
            return Err(invalid(
                "`previous_response_id` must be a string",
                "previous_response_id",
            ));
        }
    };
    let storing = match given(request, "store") {
        None => store.enabled(),
        Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) if store.enabled() => true,
        Some(Value::Bool(true)) => {
            return Err(invalid(
                "this Warden keeps no responses (`responses.store = false` in its config); set `store` to false or leave it out",
                "store",
            ));
        }
        Some(_) => return Err(invalid("`store` must be a boolean", "store")),
    };
    let Translated {
        chat,
        mut shell,
        stream,
        input,
    } = translate(request, &prior)?;
    shell.store = storing;
    let saver = storing.then(|| Saver {
        store,
        owner,
        conversation: [prior, input].concat(),
        id: shell.id.clone(),
    });
    let Outcome { headers, answer } = pipeline::run(state, caller, chat).await?;
    let whole = |completion: &crate::types::ChatCompletion, saver: Option<Saver>| {
        let response = shell.complete(completion);
        if let Some(saver) = saver {
            saver.save(&response);
        }
        Json(response).into_response()
    };
    let mut response = match answer {
        Answer::Response(response) => response,
        Answer::Complete(completion) => whole(&completion, saver),
        Answer::Refused(refusal) if stream => relay::sse_response(
            stream::refused(shell, refusal, saver),
            std::time::Duration::from_secs(15),
        ),
        Answer::Refused(refusal) => whole(&refusal.completion(), saver),
        Answer::Stream {
            frames,
            keep_alive,
            refusal,
        } => relay::sse_response(stream::events(shell, frames, refusal, saver), keep_alive),
    };
    response.headers_mut().extend(headers);
    Ok(response)
}

/// `GET /v1/responses/{id}`: a stored response of the caller's.
pub fn retrieve(state: &AppState, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    state
        .responses
        .get(id, &owner_of(caller))
        .map(|stored| stored.response)
        .ok_or_else(|| not_found(id, None))
}

/// `DELETE /v1/responses/{id}`.
pub fn delete(state: &AppState, caller: &Caller, id: &str) -> Result<Value, ApiError> {
    if state.responses.delete(id, &owner_of(caller)) {
        Ok(json!({"id": id, "object": "response", "deleted": true}))
    } else {
        Err(not_found(id, None))
    }
}

fn owner_of(caller: &Caller) -> Owner {
    Owner {
        key: caller.name.clone(),
        tenant: caller.tenant.clone(),
    }
}

fn not_found(id: &str, param: Option<&str>) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "Response with id '{id}' not found: it was never stored, was deleted or expired, or is another key's (responses are kept per replica)"
        ),
        param: param.map(str::to_owned),
        code: "response_not_found",
    }
}

fn previous_not_found(id: &str) -> ApiError {
    not_found(id, Some("previous_response_id"))
}

/// Keeps a finished response, and the conversation it ends, for the next turn.
pub struct Saver {
    store: Arc<ResponseStore>,
    owner: Owner,
    /// The earlier turns and this request's input, as chat messages.
    conversation: Vec<Value>,
    id: String,
}

impl Saver {
    pub fn save(self, response: &Value) {
        let mut conversation = self.conversation;
        // The output items are valid input items: the next turn reads them as such.
        if let Some(items) = response["output"].as_array() {
            for (i, item) in items.iter().enumerate() {
                let _ = add_item(&mut conversation, item, i);
            }
        }
        self.store.put(
            self.id,
            Stored {
                owner: self.owner,
                response: response.clone(),
                conversation,
            },
        );
    }
}

/// A Responses request as the chat request that runs it, and what the answer repeats of it.
struct Translated {
    chat: ChatRequest,
    shell: Shell,
    stream: bool,
    /// This request's input as chat messages (its instructions left out).
    input: Vec<Value>,
}

fn invalid(message: impl Into<String>, param: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param.into()))
}

/// A field that is present and not null.
fn given<'a>(request: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    request.get(key).filter(|v| !v.is_null())
}

/// The request as a chat request; `prior` is the conversation `previous_response_id` names,
/// which goes before this input (after this request's instructions, as OpenAI orders them).
fn translate(request: &Map<String, Value>, prior: &[Value]) -> Result<Translated, ApiError> {
    for key in request.keys() {
        if let Some((_, what)) = NOT_ON_LLAMA.iter().find(|(name, _)| name == key) {
            if request.get(key).is_some_and(Value::is_null) {
                continue;
            }
            return Err(invalid(
                format!("`{key}` needs {what}, which a Llama backend behind Warden does not have"),
                key.clone(),
            ));
        }
        if !FIELDS.contains(&key.as_str()) {
            return Err(invalid(
                format!(
                    "`{key}` is not supported on /v1/responses by this Warden: send it to /v1/chat/completions, or leave it out"
                ),
                key.clone(),
            ));
        }
    }
    if given(request, "background").and_then(Value::as_bool) == Some(true) {
        return Err(invalid(
            "background responses are not served: a Llama backend answers while the request is open",
            "background",
        ));
    }
    match given(request, "truncation").map(|v| v.as_str()) {
        None | Some(Some("disabled")) => {}
        Some(_) => {
            return Err(invalid(
                "`truncation` must be \"disabled\": Warden does not cut a conversation to fit",
                "truncation",
            ));
        }
    }
    let stream = match given(request, "stream") {
        None => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => return Err(invalid("`stream` must be a boolean", "stream")),
    };
    let model = given(request, "model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`model` is required", "model"))?;

    let mut messages = Vec::new();
    match given(request, "instructions") {
        None => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => return Err(invalid("`instructions` must be a string", "instructions")),
    }
    messages.extend_from_slice(prior);
    let mut input = Vec::new();
    match given(request, "input") {
        Some(Value::String(text)) => input.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                add_item(&mut input, item, i)?;
            }
        }
        _ => {
            return Err(invalid(
                "`input` is required: a string or a list of input items",
                "input",
            ));
        }
    }

    messages.extend_from_slice(&input);
    let mut chat = Map::new();
    chat.insert("model".to_owned(), json!(model));
    chat.insert("messages".to_owned(), Value::Array(messages));
    for (from, to) in [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("moderation", "moderation"),
        ("warden", "warden"),
    ] {
        if let Some(value) = given(request, from) {
            chat.insert(to.to_owned(), value.clone());
        }
    }
    // `safety_identifier` is the newer name of `user`.
    if let Some(user) = given(request, "safety_identifier").or_else(|| given(request, "user")) {
        chat.insert("user".to_owned(), user.clone());
    }
    if let Some(tools) = given(request, "tools") {
        let tools = chat_tools(tools)?;
        if !tools.is_empty() {
            chat.insert("tools".to_owned(), Value::Array(tools));
        }
    }
    if let Some(choice) = given(request, "tool_choice") {
        chat.insert("tool_choice".to_owned(), chat_tool_choice(choice)?);
    }
    if let Some(text) = given(request, "text")
        && let Some(format) = response_format(text)?
    {
        chat.insert("response_format".to_owned(), format);
    }
    if stream {
        chat.insert("stream".to_owned(), json!(true));
        // A Response always reports its usage; the relay sends it when asked.
        chat.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    let chat: ChatRequest = serde_json::from_value(Value::Object(chat))
        .map_err(|err| ApiError::invalid(format!("invalid request: {err}"), None))?;
    let echo = |name: &str| given(request, name).cloned().unwrap_or(Value::Null);
    let shell = Shell {
        id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
        created_at: unix_now(),
        model: model.to_owned(),
        instructions: echo("instructions"),
        max_output_tokens: echo("max_output_tokens"),
        temperature: echo("temperature"),
        top_p: echo("top_p"),
        user: echo("user"),
        safety_identifier: echo("safety_identifier"),
        metadata: given(request, "metadata")
            .cloned()
            .unwrap_or_else(|| json!({})),
        tools: given(request, "tools")
            .cloned()
            .unwrap_or_else(|| json!([])),
        tool_choice: given(request, "tool_choice")
            .cloned()
            .unwrap_or_else(|| json!("auto")),
        parallel_tool_calls: given(request, "parallel_tool_calls")
            .cloned()
            .unwrap_or(json!(true)),
        text_format: given(request, "text")
            .and_then(|t| t.get("format"))
            .cloned()
            .unwrap_or_else(|| json!({"type": "text"})),
        store: false,
        previous_response_id: echo("previous_response_id"),
    };
    Ok(Translated {
        chat,
        shell,
        stream,
        input,
    })
}

fn reject_unknown_keys(
    object: &Map<String, Value>,
    known: &[&str],
    at: &str,
    what: &str,
) -> Result<(), ApiError> {
    match object.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(invalid(
            format!("`{key}` is not a field of {what}"),
            format!("{at}.{key}"),
        )),
        None => Ok(()),
    }
}

/// One input item as chat messages: a message as a message, a `function_call` as an assistant
/// turn's tool call (calls in a row are one turn), a `function_call_output` as a tool turn.
fn add_item(messages: &mut Vec<Value>, item: &Value, i: usize) -> Result<(), ApiError> {
    let at = format!("input[{i}]");
    let object = item
        .as_object()
        .ok_or_else(|| invalid("an input item must be an object", at.clone()))?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            reject_unknown_keys(object, &MESSAGE_FIELDS, &at, "a message item")?;
            messages.push(message_of(object, &at)?);
        }
        "function_call" => {
            reject_unknown_keys(object, &CALL_FIELDS, &at, "a function_call item")?;
            let text = |key: &str| {
                object.get(key).and_then(Value::as_str).ok_or_else(|| {
                    invalid(format!("`{key}` must be a string"), format!("{at}.{key}"))
                })
            };
            let call = json!({
                "id": text("call_id")?,
                "type": "function",
                "function": {"name": text("name")?, "arguments": text("arguments")?},
            });
            // Calls that follow an assistant turn (its text, or other calls) belong to it.
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    match last["tool_calls"].as_array_mut() {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            reject_unknown_keys(
                object,
                &CALL_OUTPUT_FIELDS,
                &at,
                "a function_call_output item",
            )?;
            let call_id = object
                .get("call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`call_id` must be a string", format!("{at}.call_id")))?;
            let output = match object.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Array(parts)) => text_of_parts(parts, &format!("{at}.output"))?,
                _ => {
                    return Err(invalid(
                        "`output` must be a string or a list of input_text parts",
                        format!("{at}.output"),
                    ));
                }
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        other => {
            return Err(invalid(
                format!(
                    "input items of type `{other}` are not served: only message, function_call and function_call_output"
                ),
                format!("{at}.type"),
            ));
        }
    }
    Ok(())
}

fn message_of(object: &Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    let role = match object.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        _ => {
            return Err(invalid(
                "`role` must be user, assistant, system or developer",
                format!("{at}.role"),
            ));
        }
    };
    let text = match object.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => text_of_parts(parts, &format!("{at}.content"))?,
        _ => {
            return Err(invalid(
                "`content` must be a string or a list of text parts",
                format!("{at}.content"),
            ));
        }
    };
    Ok(json!({"role": role, "content": text}))
}

/// Text parts (`input_text`, `output_text`) joined by newlines; any other part is refused.
fn text_of_parts(parts: &[Value], at: &str) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        // An earlier answer's refusal, passed back, is text the model reads like any other.
        let (field, keys): (&str, &[&str]) = match kind {
            "refusal" => ("refusal", &["type", "refusal"]),
            _ => ("text", &["type", "text", "annotations", "logprobs"]),
        };
        let piece = part.get(field).and_then(Value::as_str);
        let known_keys = part
            .as_object()
            .is_some_and(|p| p.keys().all(|k| keys.contains(&k.as_str())));
        match (kind, piece) {
            ("input_text" | "output_text" | "refusal", Some(piece)) if known_keys => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(piece);
            }
            _ => {
                return Err(invalid(
                    format!(
                        "content parts of type `{kind}` are not served: only input_text, output_text (with their `text`) and refusal"
                    ),
                    format!("{at}[{j}]"),
                ));
            }
        }
    }
    Ok(text)
}

/// Responses function tools (`{"type": "function", "name", ...}`) as chat tools
/// (`{"type": "function", "function": {...}}`); a built-in tool is refused.
fn chat_tools(tools: &Value) -> Result<Vec<Value>, ApiError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("`tools` must be a list", "tools"))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let object = tool
            .as_object()
            .ok_or_else(|| invalid("a tool must be an object", at.clone()))?;
        match object.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(kind) if BUILT_IN_TOOLS.contains(&kind) || kind.starts_with("web_search") => {
                return Err(invalid(
                    format!(
                        "`{kind}` is one of OpenAI's built-in tools, which run on OpenAI's side; a Llama backend behind Warden has none. Declare a function tool and run it yourself"
                    ),
                    format!("{at}.type"),
                ));
            }
            _ => {
                return Err(invalid(
                    "only tools of type `function` are served",
                    format!("{at}.type"),
                ));
            }
        }
        reject_unknown_keys(object, &FUNCTION_TOOL_FIELDS, &at, "a function tool")?;
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("a function tool needs its `name`", format!("{at}.name")))?;
        let mut function = Map::new();
        function.insert("name".to_owned(), json!(name));
        for key in ["description", "parameters", "strict"] {
            if let Some(value) = object.get(key).filter(|v| !v.is_null()) {
                function.insert(key.to_owned(), value.clone());
            }
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

fn chat_tool_choice(choice: &Value) -> Result<Value, ApiError> {
    match choice {
        Value::String(mode) if ["auto", "none", "required"].contains(&mode.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(object)
            if object.get("type").and_then(Value::as_str) == Some("function")
                && object.keys().all(|k| k == "type" || k == "name") =>
        {
            let name = object
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a forced function needs its `name`", "tool_choice.name"))?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(invalid(
            "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": ...}",
            "tool_choice",
        )),
    }
}

/// `text.format` as the chat `response_format`: `text` is the default (nothing to send),
/// `json_object` and `json_schema` carry over.
fn response_format(text: &Value) -> Result<Option<Value>, ApiError> {
    let object = text
        .as_object()
        .ok_or_else(|| invalid("`text` must be an object", "text"))?;
    if let Some(key) = object
        .iter()
        .find(|(k, v)| k.as_str() != "format" && !(k.as_str() == "verbosity" && v.is_null()))
        .map(|(k, _)| k)
    {
        return Err(invalid(
            format!("`text.{key}` is not served: only `text.format`"),
            format!("text.{key}"),
        ));
    }
    let Some(format) = object.get("format").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let format = format
        .as_object()
        .ok_or_else(|| invalid("`text.format` must be an object", "text.format"))?;
    reject_unknown_keys(format, &FORMAT_FIELDS, "text.format", "`text.format`")?;
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = format
                .get("schema")
                .filter(|v| v.is_object())
                .ok_or_else(|| {
                    invalid(
                        "a json_schema format needs its `schema`",
                        "text.format.schema",
                    )
                })?;
            let mut json_schema = Map::new();
            json_schema.insert(
                "name".to_owned(),
                format
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| json!("response")),
            );
            json_schema.insert("schema".to_owned(), schema.clone());
            for key in ["description", "strict"] {
                if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                    json_schema.insert(key.to_owned(), value.clone());
                }
            }
            Ok(Some(
                json!({"type": "json_schema", "json_schema": json_schema}),
            ))
        }
        _ => Err(invalid(
            "`text.format.type` must be text, json_object or json_schema",
            "text.format.type",
        )),
    }
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

    fn chat_of(request: Value) -> Value {
        let translated = translate(request.as_object().unwrap(), &[]).unwrap();
        serde_json::to_value(&translated.chat).unwrap()
    }

    #[test]
    fn items_become_chat_messages_and_instructions_the_system_turn() {
        let sent = chat_of(json!({"model": "m", "instructions": "Be brief.", "input": [
            {"role": "developer", "content": "Answer in French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "c", "annotations": []}]},
        ], "max_output_tokens": 5, "safety_identifier": "u1"}));
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
        assert!(sent.get("stream").is_none());
    }

    #[test]
    fn function_calls_and_their_outputs_become_tool_turns() {
        let sent = chat_of(json!({"model": "m", "input": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}", "id": "fc_1", "status": "completed"},
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "21C"}]},
        ], "tools": [{"type": "function", "name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}],
           "tool_choice": {"type": "function", "name": "weather"}, "parallel_tool_calls": false}));
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
            ])
        );
        assert_eq!(
            sent["tools"],
            json!([{"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": true}}])
        );
        assert_eq!(
            sent["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(sent["parallel_tool_calls"], false);
    }

    #[test]
    fn a_json_schema_format_becomes_the_response_format_and_a_stream_asks_for_usage() {
        let schema = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
        let sent = chat_of(json!({"model": "m", "input": "x?", "stream": true,
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": true}}}));
        assert_eq!(
            sent["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
        );
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        let plain =
            chat_of(json!({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}));
        assert!(plain.get("response_format").is_none());
    }

    #[test]
    fn a_previous_conversation_goes_after_the_instructions_and_before_the_input() {
        let prior = [
            json!({"role": "user", "content": "My name is Ada."}),
            json!({"role": "assistant", "content": "Hello Ada."}),
        ];
        let request = json!({"model": "m", "instructions": "Be brief.", "input": "Who am I?"});
        let translated = translate(request.as_object().unwrap(), &prior).unwrap();
        let sent = serde_json::to_value(&translated.chat).unwrap();
        assert_eq!(
            sent["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {"role": "user", "content": "Who am I?"},
            ])
        );
        assert_eq!(
            translated.input,
            [json!({"role": "user", "content": "Who am I?"})],
            "only this turn's input is added to what is stored"
        );
    }

    #[test]
    fn what_is_not_served_is_refused_by_name() {
        let cases = [
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "file_search", "vector_store_ids": []}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "secret": 1}]}),
                "tools[0].secret",
            ),
            (
                json!({"model": "m", "input": "hi", "tool_choice": {"type": "file_search"}}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": "hi", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": "hi", "reasoning": {"effort": "low"}}),
                "reasoning",
            ),
            (
                json!({"model": "m", "input": "hi", "truncation": "auto"}),
                "truncation",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"format": {"type": "grammar"}}}),
                "text.format.type",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text.format.schema",
            ),
            (
                json!({"model": "m", "input": "hi", "text": {"verbosity": "low"}}),
                "text.verbosity",
            ),
            (
                json!({"model": "m", "input": "hi", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]}),
                "input[0].arguments",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image", "image_url": "x"}]}]}),
                "input[0].output[0]",
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
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a", "hidden": "b"}]}]}),
                "input[0].content[0]",
            ),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (json!({"model": "m"}), "input"),
        ];
        for (request, expected) in cases {
            let err = translate(request.as_object().unwrap(), &[])
                .err()
                .unwrap_or_else(|| panic!("accepted: {request}"));
            assert_eq!(param(err).as_deref(), Some(expected), "{request}");
        }
    }
}
