//! Ollama's native chat API (`POST /api/chat`, NDJSON when streaming), translated both ways.
//!
//! Request: messages (text parts joined, `data:` image URLs → `images`, assistant tool calls with
//! their arguments as JSON objects, tool results with `tool_name`), `response_format` → `format`,
//! sampling fields → `options` (`max_tokens` → `num_predict`), `tools` as they are.
//! Response: `message.content` → deltas, `message.tool_calls` → indexed tool-call deltas,
//! `done_reason` → `finish_reason`, `prompt_eval_count`/`eval_count` → `usage`,
//! an `{"error": ...}` line → an error.
//! Format reference: Ollama's API documentation (`docs/api.md` in the ollama repository).

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Duration;

use super::ndjson::{self, LineError};
use super::{
    ChunkStream, UpstreamError, UpstreamRequest, error_chain, send, send_error, send_json,
};
use crate::config::{BackendConfig, Secret};
use crate::server::request_id;
use crate::types::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, ChunkChoice,
    Delta, FunctionCall, FunctionDelta, MessageContent, Role, ToolCall, ToolCallDelta, Usage,
    chunk_object,
};

pub struct OllamaBackend {
    name: String,
    chat_url: String,
    generate_url: String,
    tags_url: String,
    api_key: Option<Secret>,
    client: reqwest::Client,
}

#[derive(Debug, Serialize)]
pub struct OllamaChatRequest {
    pub model: String,
    pub messages: Vec<OllamaMessage>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub options: Map<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct OllamaMessage {
    pub role: &'static str,
    pub content: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OllamaToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OllamaToolCall {
    /// Sent by Ollama releases from late 2025 on; made up here when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub function: OllamaFunction,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct OllamaFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Default, Deserialize)]
struct OllamaChatResponse {
    #[serde(default)]
    message: Option<OllamaResponseMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct OllamaResponseMessage {
    #[serde(default)]
    content: String,
    /// A thinking model's reasoning: relayed as `reasoning_content`, and judged like content.
    #[serde(default)]
    thinking: String,
    #[serde(default)]
    tool_calls: Vec<OllamaToolCall>,
}

/// Sampling fields that Ollama takes in `options` under the same name.
const SAME_NAME_OPTIONS: &[&str] = &[
    "temperature",
    "top_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
];

impl OllamaBackend {
    pub fn new(config: &BackendConfig, client: reqwest::Client) -> Self {
        let base = config.base_url.as_str().trim_end_matches('/');
        OllamaBackend {
            name: config.name.clone(),
            chat_url: format!("{base}/api/chat"),
            generate_url: format!("{base}/api/generate"),
            tags_url: format!("{base}/api/tags"),
            api_key: config.api_key.clone(),
            client,
        }
    }

    async fn send(
        &self,
        request: &UpstreamRequest,
        stream: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let body = to_ollama(&self.name, &request.body, stream)?;
        let builder = self
            .client
            .post(&self.chat_url)
            .header(request_id::HEADER, &request.request_id)
            .json(&body);
        let response = send(&self.name, builder, self.api_key.as_ref()).await?;
        Ok(response)
    }

    pub async fn chat(&self, request: &UpstreamRequest) -> Result<ChatCompletion, UpstreamError> {
        let response = self.send(request, false).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|err| send_error(&self.name, &err))?;
        let parsed: OllamaChatResponse = serde_json::from_slice(&bytes)
            .map_err(|err| self.protocol(format!("chat response: {err}")))?;
        if let Some(message) = parsed.error {
            return Err(UpstreamError::Generation {
                backend: self.name.clone(),
                message,
            });
        }
        Ok(completion_from(parsed, &request.body.model))
    }

    pub async fn chat_stream(
        &self,
        request: &UpstreamRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        let response = self.send(request, true).await?;
        let backend = self.name.clone();
        let mut translator = StreamTranslator::new(&request.body.model);
        let lines = ndjson::lines(response.bytes_stream());
        let stream =
            futures_util::stream::unfold((Box::pin(lines), false), move |(mut lines, finished)| {
                let backend = backend.clone();
                let item_future = async move {
                    if finished {
                        return None;
                    }
                    let item = match lines.next().await {
                        None => Err(UpstreamError::Broken {
                            backend,
                            message: "stream ended before the `done` line".to_owned(),
                        }),
                        Some(Err(LineError::TooLong)) => Err(UpstreamError::Protocol {
                            backend,
                            message: "a stream line exceeds the size limit".to_owned(),
                        }),
                        Some(Err(LineError::Source(err))) => Err(UpstreamError::Broken {
                            backend,
                            message: error_chain(&err),
                        }),
                        Some(Ok(line)) => match serde_json::from_slice::<OllamaChatResponse>(&line)
                        {
                            Err(err) => Err(UpstreamError::Protocol {
                                backend,
                                message: format!("stream line: {err}"),
                            }),
                            Ok(OllamaChatResponse {
                                error: Some(message),
                                ..
                            }) => Err(UpstreamError::Generation { backend, message }),
                            Ok(parsed) => Ok(parsed),
                        },
                    };
                    Some((item, lines))
                };
                async move {
                    let (item, lines) = item_future.await?;
                    let done = matches!(&item, Ok(parsed) if parsed.done);
                    Some((item, (lines, done)))
                }
            })
            .scan(false, |ended, item| {
                // Stop after an error: nothing after it can be trusted.
                if *ended {
                    return futures_util::future::ready(None);
                }
                *ended = item.is_err();
                futures_util::future::ready(Some(item))
            })
            .map(move |item| item.map(|parsed| translator.chunk(parsed)));
        Ok(stream.boxed())
    }

    /// `POST /api/generate` with `raw: true`: the prompt goes to the model as it is.
    pub async fn complete_raw(
        &self,
        model: &str,
        prompt: &str,
        max_tokens: u32,
        request_id: &str,
    ) -> Result<String, UpstreamError> {
        let body = serde_json::json!({
            "model": model,
            "prompt": prompt,
            "raw": true,
            "stream": false,
            "options": {"temperature": 0, "num_predict": max_tokens},
        });
        let builder = self
            .client
            .post(&self.generate_url)
            .header(request_id::HEADER, request_id)
            .json(&body);
        let value = send_json(
            &self.name,
            builder,
            self.api_key.as_ref(),
            "generate response",
        )
        .await?;
        if let Some(message) = value.get("error").and_then(Value::as_str) {
            return Err(UpstreamError::Generation {
                backend: self.name.clone(),
                message: message.to_owned(),
            });
        }
        value
            .get("response")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| self.protocol("generate response has no `response`".to_owned()))
    }

    pub async fn probe(&self, timeout: Duration) -> Result<Vec<String>, UpstreamError> {
        let builder = self.client.get(&self.tags_url).timeout(timeout);
        let tags = send_json(&self.name, builder, self.api_key.as_ref(), "model list").await?;
        Ok(tags["models"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| {
                        m["name"]
                            .as_str()
                            .or(m["model"].as_str())
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn protocol(&self, message: String) -> UpstreamError {
        UpstreamError::Protocol {
            backend: self.name.clone(),
            message,
        }
    }
}

/// Translates an OpenAI chat request into Ollama's `/api/chat` body.
pub fn to_ollama(
    backend: &str,
    request: &ChatRequest,
    stream: bool,
) -> Result<OllamaChatRequest, UpstreamError> {
    let unsupported = |message: String, param: &str| UpstreamError::Unsupported {
        backend: backend.to_owned(),
        message,
        param: Some(param.to_owned()),
    };
    let mut tool_names: HashMap<&str, &str> = HashMap::new();
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.iter().enumerate() {
        messages.push(
            message_to_ollama(i, message, &mut tool_names).map_err(|(m, p)| unsupported(m, &p))?,
        );
    }

    let extra = &request.extra;
    let mut options = Map::new();
    for name in SAME_NAME_OPTIONS {
        if let Some(value) = extra.get(*name).filter(|v| !v.is_null()) {
            options.insert((*name).to_owned(), value.clone());
        }
    }
    if let Some(stop) = extra.get("stop").filter(|v| !v.is_null()) {
        let stop = match stop {
            Value::String(s) => Value::Array(vec![Value::String(s.clone())]),
            other => other.clone(),
        };
        options.insert("stop".to_owned(), stop);
    }
    if let Some(max) = extra
        .get("max_completion_tokens")
        .or_else(|| extra.get("max_tokens"))
        .filter(|v| !v.is_null())
    {
        options.insert("num_predict".to_owned(), max.clone());
    }
    if extra
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(unsupported(
            "this model's backend (Ollama) returns one choice per request: `n` must be 1"
                .to_owned(),
            "n",
        ));
    }
    let format = match extra.get("response_format") {
        None | Some(Value::Null) => None,
        Some(format) => response_format(format).map_err(|m| unsupported(m, "response_format"))?,
    };
    Ok(OllamaChatRequest {
        model: request.model.clone(),
        messages,
        stream,
        tools: extra.get("tools").filter(|v| !v.is_null()).cloned(),
        format,
        options,
    })
}

fn response_format(format: &Value) -> Result<Option<Value>, String> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Value::String("json".to_owned()))),
        Some("json_schema") => format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned()
            .map(Some)
            .ok_or_else(|| "`response_format.json_schema.schema` is required".to_owned()),
        _ => Err("`response_format.type` must be text, json_object or json_schema".to_owned()),
    }
}

type Rejection = (String, String);

fn message_to_ollama<'a>(
    i: usize,
    message: &'a ChatMessage,
    tool_names: &mut HashMap<&'a str, &'a str>,
) -> Result<OllamaMessage, Rejection> {
    let role = match message.role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool | Role::Function => "tool",
    };
    let mut content = String::new();
    let mut images = Vec::new();
    match &message.content {
        None => {}
        Some(MessageContent::Text(text)) => content.push_str(text),
        Some(MessageContent::Parts(parts)) => {
            for (j, part) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                let text = part.text_content().filter(|_| part.kind != "image_url");
                match (part.kind.as_str(), text, &part.image_url) {
                    ("text" | "input_text" | "output_text" | "refusal", Some(text), _) => {
                        if !content.is_empty() {
                            content.push('\n');
                        }
                        content.push_str(text);
                    }
                    ("image_url", _, Some(image)) => {
                        let data = image
                            .url
                            .strip_prefix("data:")
                            .and_then(|rest| rest.split_once(";base64,"))
                            .map(|(_, data)| data.to_owned())
                            .ok_or_else(|| {
                                (
                                    "Ollama backends take images only as base64 `data:` URLs"
                                        .to_owned(),
                                    format!("{param}.image_url.url"),
                                )
                            })?;
                        images.push(data);
                    }
                    (kind, _, _) => {
                        return Err((
                            format!(
                                "content parts of type `{kind}` are not supported by Ollama backends"
                            ),
                            param,
                        ));
                    }
                }
            }
        }
    }
    let mut tool_calls = Vec::new();
    for (j, call) in message.tool_calls.iter().flatten().enumerate() {
        if let Some(id) = &call.id {
            tool_names.insert(id.as_str(), call.function.name.as_str());
        }
        let arguments = if call.function.arguments.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(&call.function.arguments).map_err(|_| {
                (
                    "tool call arguments must be a JSON object".to_owned(),
                    format!("messages[{i}].tool_calls[{j}].function.arguments"),
                )
            })?
        };
        tool_calls.push(OllamaToolCall {
            id: None,
            function: OllamaFunction {
                name: call.function.name.clone(),
                arguments,
            },
        });
    }
    let tool_name = message
        .tool_call_id
        .as_deref()
        .and_then(|id| tool_names.get(id))
        .map(|name| (*name).to_owned())
        .or_else(|| {
            message
                .extra
                .get("name")
                .and_then(Value::as_str)
                .filter(|_| role == "tool")
                .map(str::to_owned)
        });
    Ok(OllamaMessage {
        role,
        content,
        images,
        tool_calls,
        tool_name,
    })
}

fn finish_reason(done_reason: Option<&str>, saw_tool_calls: bool) -> String {
    match done_reason {
        Some("length") => "length",
        _ if saw_tool_calls => "tool_calls",
        _ => "stop",
    }
    .to_owned()
}

fn usage(parsed: &OllamaChatResponse) -> Option<Usage> {
    let prompt = parsed.prompt_eval_count?;
    let completion = parsed.eval_count.unwrap_or(0);
    Some(Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    })
}

fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(text) => text.clone(),
        Value::Null => "{}".to_owned(),
        other => other.to_string(),
    }
}

fn completion_from(parsed: OllamaChatResponse, model: &str) -> ChatCompletion {
    let usage = usage(&parsed);
    let message = parsed.message.unwrap_or_default();
    let tool_calls: Vec<ToolCall> = message
        .tool_calls
        .iter()
        .map(|call| ToolCall {
            id: Some(call.id.clone().unwrap_or_else(super::tool_call_id)),
            kind: "function".to_owned(),
            function: FunctionCall {
                name: call.function.name.clone(),
                arguments: arguments_text(&call.function.arguments),
            },
        })
        .collect();
    let saw_tool_calls = !tool_calls.is_empty();
    ChatCompletion {
        id: String::new(),
        object: "chat.completion".to_owned(),
        created: 0,
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant".to_owned(),
                content: if saw_tool_calls && message.content.is_empty() {
                    None
                } else {
                    Some(message.content)
                },
                reasoning_content: (!message.thinking.is_empty()).then(|| message.thinking.clone()),
                tool_calls: saw_tool_calls.then_some(tool_calls),
                ..Default::default()
            },
            finish_reason: Some(finish_reason(parsed.done_reason.as_deref(), saw_tool_calls)),
            ..Default::default()
        }],
        usage,
        ..Default::default()
    }
}

/// Turns Ollama stream lines into OpenAI chunks, numbering tool calls across the stream.
struct StreamTranslator {
    model: String,
    sent_role: bool,
    tool_calls: u32,
}

impl StreamTranslator {
    fn new(model: &str) -> Self {
        StreamTranslator {
            model: model.to_owned(),
            sent_role: false,
            tool_calls: 0,
        }
    }

    fn chunk(&mut self, parsed: OllamaChatResponse) -> ChatChunk {
        let message = parsed.message.as_ref();
        let mut delta = Delta::default();
        if !self.sent_role {
            delta.role = Some("assistant".to_owned());
            self.sent_role = true;
        }
        if let Some(text) = message.map(|m| &m.content).filter(|c| !c.is_empty()) {
            delta.content = Some(text.clone());
        } else if delta.role.is_some() && message.is_none_or(|m| m.tool_calls.is_empty()) {
            delta.content = Some(String::new());
        }
        delta.reasoning_content = message
            .map(|m| &m.thinking)
            .filter(|t| !t.is_empty())
            .cloned();
        let calls: Vec<ToolCallDelta> = message
            .map(|m| m.tool_calls.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|call| {
                let index = self.tool_calls;
                self.tool_calls += 1;
                ToolCallDelta {
                    index,
                    id: Some(call.id.clone().unwrap_or_else(super::tool_call_id)),
                    kind: Some("function".to_owned()),
                    function: Some(FunctionDelta {
                        name: Some(call.function.name.clone()),
                        arguments: Some(arguments_text(&call.function.arguments)),
                    }),
                }
            })
            .collect();
        if !calls.is_empty() {
            delta.tool_calls = Some(calls);
        }
        let finish = parsed
            .done
            .then(|| finish_reason(parsed.done_reason.as_deref(), self.tool_calls > 0));
        ChatChunk {
            id: String::new(),
            object: chunk_object(),
            created: 0,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                ..Default::default()
            }],
            usage: if parsed.done { usage(&parsed) } else { None },
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn sampling_fields_move_into_options() {
        let req = request(json!({
            "model": "llama3.2:1b",
            "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "temperature": 0.1, "top_p": 0.9, "seed": 42, "stop": "END", "max_tokens": 64,
            "response_format": {"type": "json_object"}
        }));
        let out = serde_json::to_value(to_ollama("b", &req, true).unwrap()).unwrap();
        assert_eq!(
            out["options"],
            json!({"temperature": 0.1, "top_p": 0.9, "seed": 42, "stop": ["END"], "num_predict": 64})
        );
        assert_eq!(out["format"], "json");
        assert_eq!(out["messages"][0]["role"], "system");
        assert_eq!(out["stream"], true);
    }

    #[test]
    fn json_schema_becomes_the_format_object() {
        let schema = json!({"type": "object", "properties": {"age": {"type": "integer"}}});
        let req = request(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
        }));
        let out = serde_json::to_value(to_ollama("b", &req, false).unwrap()).unwrap();
        assert_eq!(out["format"], schema);
    }

    #[test]
    fn images_tool_calls_and_tool_results_translate() {
        let req = request(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "22C"}
            ]
        }));
        let out = serde_json::to_value(to_ollama("b", &req, false).unwrap()).unwrap();
        assert_eq!(out["messages"][0]["images"], json!(["iVBORw0KGgo="]));
        assert_eq!(out["messages"][0]["content"], "what is this?");
        assert_eq!(
            out["messages"][1]["tool_calls"][0]["function"]["arguments"],
            json!({"city": "Paris"})
        );
        assert_eq!(out["messages"][2]["tool_name"], "get_weather");
        assert_eq!(out["messages"][2]["role"], "tool");
    }

    #[test]
    fn remote_images_and_n_above_one_are_clear_errors() {
        let req = request(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
        }));
        let err = to_ollama("b", &req, false).unwrap_err();
        assert!(
            matches!(err, UpstreamError::Unsupported { ref param, .. } if param.as_deref() == Some("messages[0].content[0].image_url.url"))
        );
        let req =
            request(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}));
        assert!(to_ollama("b", &req, false).is_err());
    }

    #[test]
    fn stream_lines_become_indexed_chunks() {
        let mut t = StreamTranslator::new("m");
        let line = |v: Value| serde_json::from_value::<OllamaChatResponse>(v).unwrap();
        let first = t.chunk(line(
            json!({"message": {"role": "assistant", "content": ""}, "done": false}),
        ));
        assert_eq!(first.choices[0].delta.role.as_deref(), Some("assistant"));
        let calls = t.chunk(line(
            json!({"message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"function": {"name": "b", "arguments": {}}}
        ]}, "done": false}),
        ));
        let deltas = calls.choices[0].delta.tool_calls.clone().unwrap();
        assert_eq!(
            deltas.iter().map(|d| d.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(
            deltas[0].function.as_ref().unwrap().arguments.as_deref(),
            Some("{\"x\":1}")
        );
        let last = t.chunk(line(
            json!({"message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 12}),
        ));
        assert_eq!(last.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            last.usage,
            Some(Usage {
                prompt_tokens: 26,
                completion_tokens: 12,
                total_tokens: 38
            })
        );
    }
}
