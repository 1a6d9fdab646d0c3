//! Warden's own view of the OpenAI Chat Completions wire format.
//!
//! The fields Warden reads are typed; everything else a client or upstream sends is kept in
//! `extra` maps and written back unchanged, so a field Warden does not know (tools, seed,
//! logprobs, a vendor extension) passes through untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub type Extra = Map<String, Value>;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Warden's own options; never forwarded.
    #[serde(default, skip_serializing)]
    pub warden: Option<WardenOptions>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn wants_usage_chunk(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// How many choices (`n`) the client asked for; 1 when it did not say.
    pub fn choices(&self) -> usize {
        self.extra
            .get("n")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1)
            .max(1)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct StreamOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Options a client sets in the `warden` object of the body (the SDKs' `extra_body`).
/// Stages that act on a request add their options here; unknown ones are an error so a typo
/// is never silently ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WardenOptions {
    /// Search this knowledge-base collection (instead of the model's own).
    #[serde(default)]
    pub collection: Option<String>,
    /// How many chunks to inject (1–100).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// `false` turns retrieval off for this request.
    #[serde(default)]
    pub rag: Option<bool>,
    /// How to search: `hybrid`, `dense` or `keyword` (else the collection's mode).
    #[serde(default)]
    pub retrieval: Option<crate::config::RetrievalMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<MessageContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One element of a content array: `{"type": "text", "text": ...}`,
/// `{"type": "image_url", "image_url": {"url": ...}}`, or any other part kept as it is.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ContentPart {
    /// The text the part carries, whatever its type calls the field (`text` for `text`,
    /// `input_text` and `output_text` parts, `refusal` for `refusal` parts).
    pub fn text_content(&self) -> Option<&str> {
        match self.kind.as_str() {
            "refusal" => self.extra.get("refusal").and_then(Value::as_str),
            _ => self.text.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ToolCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

// What comes back from a backend is read by allowlist: the fields below are the only ones
// Warden writes to a client. Anything else an upstream sends lands in `unknown`, which is never
// serialized, so a field nobody judged (a new vendor field with model text in it) is held back,
// not passed on. `warden` is Warden's own and never read from an upstream.

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// llama.cpp's server's run statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub warden: Option<Value>,
    /// OpenAI's `moderation` results, when the request asked; Warden's own, never an upstream's.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Value>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Extra,
}

/// llama.cpp's `timings`: numbers about the run, passed on; anything else in it is dropped, so it
/// can carry no text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings(Map<String, Value>);

impl<'de> Deserialize<'de> for Timings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let all = Map::<String, Value>::deserialize(deserializer)?;
        Ok(Timings(
            all.into_iter().filter(|(_, v)| v.is_number()).collect(),
        ))
    }
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: Option<String>,
    /// Written as `null` when absent, as OpenAI does.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Extra,
}

/// The model's text, in every field an upstream may put it: the output guard judges each.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AssistantMessage {
    #[serde(default = "assistant_role")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Reasoning as vLLM and DeepSeek spell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Reasoning as newer vLLM releases and OpenRouter spell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Extra,
}

impl AssistantMessage {
    /// An assistant message that says `text` and nothing else.
    pub fn text(text: &str) -> AssistantMessage {
        AssistantMessage {
            role: assistant_role(),
            content: Some(text.to_owned()),
            ..AssistantMessage::default()
        }
    }
}

fn assistant_role() -> String {
    "assistant".to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Some servers (vLLM) send `null` or nothing here on the usage chunk.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub choices: Vec<ChunkChoice>,
    /// Left out of the chunks Warden writes: usage is sent once, in its own chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// llama.cpp's server's run statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub warden: Option<Value>,
    /// OpenAI's `moderation` results, when the request asked; Warden's own, never an upstream's.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Value>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Extra,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

pub fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    /// Always written, `null` until the last chunk, as OpenAI does.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Written as `null` when absent, as OpenAI does.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(flatten, skip_serializing)]
    pub unknown: Extra,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_request_fields_survive_a_round_trip() {
        let body = json!({
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache": 1}], "name": "bob"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
            "seed": 7,
            "logprobs": true,
            "temperature": 0.2,
            "warden": {}
        });
        let request: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        let mut expected = body;
        expected.as_object_mut().unwrap().remove("warden");
        assert_eq!(serde_json::to_value(&request).unwrap(), expected);
    }

    #[test]
    fn chunks_keep_only_known_fields_and_write_null_finish_reason() {
        let text = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","warden":{"guard":"forged"},"choices":[{"index":0,"delta":{"content":"x","reasoning_content":"r","thoughts":"unjudged"},"logprobs":null,"finish_reason":null,"stop_reason":"y"}]}"#;
        let chunk: ChatChunk = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&chunk).unwrap();
        assert_eq!(back["system_fingerprint"], "fp");
        assert_eq!(back["choices"][0]["delta"]["reasoning_content"], "r");
        assert!(back["choices"][0]["finish_reason"].is_null());
        assert!(back.get("warden").is_none(), "never read from an upstream");
        assert!(back["choices"][0]["delta"].get("thoughts").is_none());
        assert!(back["choices"][0].get("stop_reason").is_none());
        assert_eq!(chunk.choices[0].delta.unknown["thoughts"], "unjudged");
    }
}
