//! OpenAI-compatible backends (vLLM, llama.cpp's server, OpenAI itself): the request is the
//! client's own body with the upstream model name; the stream is relayed event by event.

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use std::time::Duration;

use super::{
    ChunkStream, UpstreamError, UpstreamRequest, error_chain, send, send_error, send_json,
};
use crate::config::{BackendConfig, Secret};
use crate::server::request_id;
use crate::types::{ChatChunk, ChatCompletion};

pub struct OpenAiBackend {
    name: String,
    chat_url: String,
    completions_url: String,
    models_url: String,
    api_key: Option<Secret>,
    client: reqwest::Client,
}

impl OpenAiBackend {
    pub fn new(config: &BackendConfig, client: reqwest::Client) -> Self {
        // Like the OpenAI SDKs, the base URL includes the version prefix (`.../v1`).
        let base = config.base_url.as_str().trim_end_matches('/');
        OpenAiBackend {
            name: config.name.clone(),
            chat_url: format!("{base}/chat/completions"),
            completions_url: format!("{base}/completions"),
            models_url: format!("{base}/models"),
            api_key: config.api_key.clone(),
            client,
        }
    }

    /// Sends the body as the pool prepared it (`stream`, `stream_options` already set).
    async fn send(&self, request: &UpstreamRequest) -> Result<reqwest::Response, UpstreamError> {
        let builder = self
            .client
            .post(&self.chat_url)
            .header(request_id::HEADER, &request.request_id)
            .json(&request.body);
        let response = send(&self.name, builder, self.api_key.as_ref()).await?;
        Ok(response)
    }

    pub async fn chat(&self, request: &UpstreamRequest) -> Result<ChatCompletion, UpstreamError> {
        let response = self.send(request).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|err| send_error(&self.name, &err))?;
        serde_json::from_slice(&bytes).map_err(|err| UpstreamError::Protocol {
            backend: self.name.clone(),
            message: format!("chat completion: {err}"),
        })
    }

    pub async fn chat_stream(
        &self,
        request: &UpstreamRequest,
    ) -> Result<ChunkStream, UpstreamError> {
        let response = self.send(request).await?;
        let backend = self.name.clone();
        let events = response.bytes_stream().eventsource();
        let stream =
            futures_util::stream::unfold((events, false), move |(mut events, finished)| {
                let backend = backend.clone();
                async move {
                    if finished {
                        return None;
                    }
                    loop {
                        let item = match events.next().await {
                            None => Err(UpstreamError::Broken {
                                backend,
                                message: "stream ended without [DONE]".to_owned(),
                            }),
                            Some(Err(err)) => Err(UpstreamError::Broken {
                                backend,
                                message: error_chain(&err),
                            }),
                            Some(Ok(event)) => {
                                let data = event.data.trim();
                                if data.is_empty() {
                                    continue;
                                }
                                if data == "[DONE]" {
                                    return None;
                                }
                                parse_chunk(&backend, data)
                            }
                        };
                        let finished = item.is_err();
                        return Some((item, (events, finished)));
                    }
                }
            });
        Ok(stream.boxed())
    }

    /// `POST /v1/completions`: the legacy text endpoint, which applies no chat template.
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
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": false,
        });
        let builder = self
            .client
            .post(&self.completions_url)
            .header(request_id::HEADER, request_id)
            .json(&body);
        let value = send_json(&self.name, builder, self.api_key.as_ref(), "completion").await?;
        value["choices"][0]["text"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| UpstreamError::Protocol {
                backend: self.name.clone(),
                message: "completion has no `choices[0].text`".to_owned(),
            })
    }

    pub async fn probe(&self, timeout: Duration) -> Result<Vec<String>, UpstreamError> {
        let builder = self.client.get(&self.models_url).timeout(timeout);
        let list = send_json(&self.name, builder, self.api_key.as_ref(), "model list").await?;
        Ok(list["data"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// One `data:` payload: a chunk, or an error event some servers (vLLM) send mid-stream.
fn parse_chunk(backend: &str, data: &str) -> Result<ChatChunk, UpstreamError> {
    match serde_json::from_str::<ChatChunk>(data) {
        Ok(chunk) => Ok(chunk),
        Err(parse_error) => {
            let value: Option<serde_json::Value> = serde_json::from_str(data).ok();
            match value.as_ref().and_then(|v| v.get("error")) {
                Some(error) => Err(UpstreamError::Generation {
                    backend: backend.to_owned(),
                    message: error
                        .get("message")
                        .and_then(|m| m.as_str())
                        .or_else(|| error.as_str())
                        .unwrap_or("unknown error")
                        .to_owned(),
                }),
                None => Err(UpstreamError::Protocol {
                    backend: backend.to_owned(),
                    message: format!("stream chunk: {parse_error}"),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_events_become_generation_errors() {
        let err = parse_chunk(
            "b",
            r#"{"error":{"message":"out of memory","type":"server_error"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, UpstreamError::Generation { ref message, .. } if message == "out of memory")
        );
        let garbage = parse_chunk("b", "{not json").unwrap_err();
        assert!(matches!(garbage, UpstreamError::Protocol { .. }));
    }
}
