//! The relay's frames as the Responses API's streaming events.
//!
//! The frames were already through the output guard (buffered, stream_first or monitor, as
//! the policy says), so this only renames: `response.created` and `response.in_progress`
//! first; an output item (`response.output_item.added`) when the first text or tool call of it
//! arrives; `response.output_text.delta` and `response.function_call_arguments.delta` as they
//! come; each item's `.done` events at the end; then `response.completed`, or
//! `response.incomplete` when the guard stopped the answer (a `refusal` part ends its message)
//! or it ran out of tokens. An error after the stream began is an `error` event and then
//! `response.failed`. Every event carries its `sequence_number`, from 0.

use axum::response::sse::Event;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::convert::Infallible;

use super::Saver;
use super::output::{
    Ending, Item, Shell, function_call_id, message_id, refusal_part, response_moderation, text_part,
};
use crate::chat::relay::{Frame, FrameStream};
use crate::types::{ChatChunk, Usage};

/// What replaces the rest of an answer the upstream's own filter stopped, when no policy says.
const FILTERED: &str = "The answer was stopped by a content filter.";

struct Writer {
    shell: Shell,
    sequence: u64,
    items: Vec<Item>,
    /// Which output item is the message, once there is one.
    message: Option<usize>,
    /// The output item of each tool call, by the chat stream's tool-call index.
    calls: HashMap<u32, usize>,
    usage: Option<Usage>,
    finish: Option<String>,
    warden: Option<Value>,
    /// The chat path's `moderation` results, when asked.
    moderation: Option<Value>,
    refusal: String,
    ended: bool,
    /// Keeps the response when it finished (not when it failed).
    saver: Option<Saver>,
}

/// The events of a streamed answer.
pub fn events(
    shell: Shell,
    frames: FrameStream,
    refusal: Option<String>,
    saver: Option<Saver>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let mut writer = Writer::new(shell, refusal.unwrap_or_else(|| FILTERED.to_owned()), saver);
    let opening = writer.opening();
    let rest = futures_util::stream::unfold((writer, frames), |(mut writer, mut frames)| async move {
        loop {
            if writer.ended {
                return None;
            }
            let events = match frames.next().await {
                Some(frame) => writer.on_frame(frame),
                // The relay always ends with `Done` or an error; a stream cut short fails.
                None => writer.fail(json!({"error": {"message": "the answer ended early", "code": "stream_ended"}})),
            };
            if !events.is_empty() {
                return Some((events, (writer, frames)));
            }
        }
    })
    .flat_map(futures_util::stream::iter);
    futures_util::stream::iter(opening).chain(rest).map(Ok)
}

/// The events of a request whose input was blocked: the policy's refusal as the only output.
pub fn refused(
    shell: Shell,
    refusal: crate::chat::pipeline::Refusal,
    saver: Option<Saver>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let mut writer = Writer::new(shell, refusal.text, saver);
    writer.warden = Some(refusal.warden);
    writer.moderation = refusal.moderation;
    writer.usage = Some(Usage::default());
    writer.finish = Some("content_filter".to_owned());
    let mut events = writer.opening();
    events.extend(writer.on_frame(Frame::Done));
    futures_util::stream::iter(events.into_iter().map(Ok))
}

impl Writer {
    fn new(shell: Shell, refusal: String, saver: Option<Saver>) -> Self {
        Writer {
            shell,
            sequence: 0,
            items: Vec::new(),
            message: None,
            calls: HashMap::new(),
            usage: None,
            finish: None,
            warden: None,
            moderation: None,
            refusal,
            ended: false,
            saver,
        }
    }

    fn event(&mut self, kind: &str, mut payload: Value) -> Event {
        payload["type"] = json!(kind);
        payload["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        let data = serde_json::to_string(&payload).unwrap_or_else(|_| "{}".to_owned());
        Event::default().event(kind).data(data)
    }

    fn opening(&mut self) -> Vec<Event> {
        let response = self.shell.response(
            "in_progress",
            Vec::new(),
            None,
            Value::Null,
            Value::Null,
            None,
        );
        vec![
            self.event("response.created", json!({"response": response})),
            self.event("response.in_progress", json!({"response": response})),
        ]
    }

    fn on_frame(&mut self, frame: Frame) -> Vec<Event> {
        match frame {
            Frame::Chunk(chunk) => self.on_chunk(*chunk),
            Frame::Error(body) => {
                let body = serde_json::to_value(&body).unwrap_or(Value::Null);
                self.fail(body)
            }
            Frame::Done => self.finish(),
        }
    }

    /// The `warden` objects of the first and last chunks, as one.
    fn keep_warden(&mut self, warden: Value) {
        match (&mut self.warden, warden) {
            (Some(Value::Object(kept)), Value::Object(more)) => {
                for (key, value) in more {
                    match (kept.get_mut(&key), value) {
                        (Some(Value::Object(inner)), Value::Object(value)) => inner.extend(value),
                        (_, value) => {
                            kept.insert(key, value);
                        }
                    }
                }
            }
            (kept, warden) => *kept = Some(warden),
        }
    }

    fn on_chunk(&mut self, chunk: ChatChunk) -> Vec<Event> {
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        if let Some(warden) = chunk.warden {
            self.keep_warden(warden);
        }
        if let Some(moderation) = chunk.moderation {
            self.moderation = Some(moderation);
        }
        let mut events = Vec::new();
        // A Responses request has one answer (no `n`): choice 0.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let delta = choice.delta;
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                let index = self.open_message(&mut events);
                if let Some(Item::Message { text: kept, id, .. }) = self.items.get_mut(index) {
                    kept.push_str(&text);
                    let item_id = id.clone();
                    events.push(self.event(
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                    ));
                }
            }
            // A backend's own refusal (OpenAI models send one) ends the message as a refusal.
            if let Some(refusal) = delta.refusal.filter(|t| !t.is_empty()) {
                self.open_message(&mut events);
                if self.finish.is_none() {
                    self.refusal.clear();
                }
                self.refusal.push_str(&refusal);
                self.finish = Some("content_filter".to_owned());
            }
            for call in delta.tool_calls.into_iter().flatten() {
                let function = call.function.unwrap_or(crate::types::FunctionDelta {
                    name: None,
                    arguments: None,
                });
                let index = match self.calls.get(&call.index) {
                    Some(index) => *index,
                    None => {
                        let item = Item::FunctionCall {
                            id: function_call_id(),
                            call_id: call.id.unwrap_or_else(crate::backends::tool_call_id),
                            name: function.name.clone().unwrap_or_default(),
                            arguments: String::new(),
                            complete: true,
                        };
                        let index = self.add_item(item, &mut events);
                        self.calls.insert(call.index, index);
                        index
                    }
                };
                if let Some(piece) = function.arguments.filter(|a| !a.is_empty())
                    && let Some(Item::FunctionCall { arguments, id, .. }) =
                        self.items.get_mut(index)
                {
                    arguments.push_str(&piece);
                    let item_id = id.clone();
                    events.push(self.event(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": piece}),
                    ));
                }
            }
            if let Some(finish) = choice.finish_reason {
                // A refusal the backend sent outranks its later `stop`.
                if self.finish.as_deref() != Some("content_filter") {
                    self.finish = Some(finish);
                }
            }
        }
        events
    }

    fn add_item(&mut self, item: Item, events: &mut Vec<Event>) -> usize {
        let index = self.items.len();
        let json = item.json(true);
        self.items.push(item);
        events.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": json}),
        ));
        index
    }

    /// The message item, added (with its text part) the first time it is needed.
    fn open_message(&mut self, events: &mut Vec<Event>) -> usize {
        if let Some(index) = self.message {
            return index;
        }
        let item = Item::Message {
            id: message_id(),
            text: String::new(),
            refusal: None,
            complete: true,
        };
        let item_id = item.id().to_owned();
        let index = self.add_item(item, events);
        self.message = Some(index);
        events.push(self.event(
            "response.content_part.added",
            json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": text_part("")}),
        ));
        index
    }

    /// Closes every item (a stopped answer's message gets its refusal part) and ends the
    /// response.
    fn finish(&mut self) -> Vec<Event> {
        self.ended = true;
        let ending = Ending::of_finish_reason(self.finish.as_deref());
        let mut events = Vec::new();
        if ending == Ending::ContentFilter {
            self.open_message(&mut events);
        }
        for index in 0..self.items.len() {
            self.close(index, ending, &mut events);
        }
        let output = self.items.iter().map(|item| item.json(false)).collect();
        let usage = self.usage.unwrap_or_default();
        let mut response = self.shell.response(
            ending.status(),
            output,
            Some(&usage),
            ending.details(),
            Value::Null,
            self.warden.as_ref(),
        );
        if let Some(moderation) = &self.moderation {
            response["moderation"] = response_moderation(moderation);
        }
        // Kept before the client can see the end: a next turn sent at once finds it.
        if let Some(saver) = self.saver.take() {
            saver.save(&response);
        }
        let kind = match ending {
            Ending::Completed => "response.completed",
            _ => "response.incomplete",
        };
        events.push(self.event(kind, json!({"response": response})));
        events
    }

    fn close(&mut self, index: usize, ending: Ending, events: &mut Vec<Event>) {
        let stopped = ending == Ending::ContentFilter;
        let refusal = self.refusal.clone();
        let Some(item) = self.items.get_mut(index) else {
            return;
        };
        let item_id = item.id().to_owned();
        match item {
            Item::Message {
                text,
                refusal: kept,
                complete,
                ..
            } => {
                *complete = ending == Ending::Completed;
                let text = text.clone();
                if stopped {
                    *kept = Some(refusal.clone());
                }
                let keeps_text = !text.is_empty() || !stopped;
                let mut closing = Vec::new();
                if keeps_text {
                    closing.push((
                        "response.output_text.done",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                    ));
                    closing.push((
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": text_part(&text)}),
                    ));
                }
                if stopped {
                    // The text part was announced at index 0; an empty one is replaced.
                    let content_index = usize::from(keeps_text);
                    closing.push((
                        "response.content_part.added",
                        json!({"item_id": item_id, "output_index": index, "content_index": content_index, "part": refusal_part("")}),
                    ));
                    closing.push((
                        "response.refusal.delta",
                        json!({"item_id": item_id, "output_index": index, "content_index": content_index, "delta": refusal}),
                    ));
                    closing.push((
                        "response.refusal.done",
                        json!({"item_id": item_id, "output_index": index, "content_index": content_index, "refusal": refusal}),
                    ));
                    closing.push((
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": index, "content_index": content_index, "part": refusal_part(&refusal)}),
                    ));
                }
                for (kind, payload) in closing {
                    events.push(self.event(kind, payload));
                }
            }
            Item::FunctionCall {
                name,
                arguments,
                complete,
                ..
            } => {
                // A call the guard cut off is not a call to run.
                *complete = !stopped;
                let payload = json!({"item_id": item_id, "output_index": index, "name": name, "arguments": arguments});
                events.push(self.event("response.function_call_arguments.done", payload));
            }
        }
        let json = self.items[index].json(false);
        events.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": json}),
        ));
    }

    /// An error after the stream began: an `error` event, then `response.failed`. What was
    /// not released stays unreleased.
    fn fail(&mut self, body: Value) -> Vec<Event> {
        self.ended = true;
        let error = body.get("error").cloned().unwrap_or(Value::Null);
        let text = |key: &str| error.get(key).cloned().unwrap_or(Value::Null);
        let mut failure = Map::new();
        failure.insert(
            "code".to_owned(),
            error
                .get("code")
                .filter(|c| !c.is_null())
                .cloned()
                .unwrap_or_else(|| json!("server_error")),
        );
        failure.insert("message".to_owned(), text("message"));
        let output = self.items.iter().map(|item| item.json(false)).collect();
        let response = self.shell.response(
            "failed",
            output,
            self.usage.as_ref(),
            Value::Null,
            Value::Object(failure.clone()),
            self.warden.as_ref(),
        );
        vec![
            self.event(
                "error",
                json!({"code": failure["code"], "message": failure["message"], "param": text("param")}),
            ),
            self.event("response.failed", json!({"response": response})),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::output::test_shell as shell;
    use super::*;
    use crate::types::{ChunkChoice, Delta, FunctionDelta, ToolCallDelta};

    fn chunk(delta: Delta, finish: Option<&str>) -> Frame {
        Frame::Chunk(Box::new(ChatChunk {
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish.map(str::to_owned),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    fn text(piece: &str) -> Frame {
        chunk(
            Delta {
                content: Some(piece.to_owned()),
                ..Default::default()
            },
            None,
        )
    }

    /// The events as (type, payload), checked for consecutive sequence numbers.
    async fn written(frames: Vec<Frame>, refusal: Option<&str>) -> Vec<(String, Value)> {
        let stream = events(
            shell(),
            futures_util::stream::iter(frames).boxed(),
            refusal.map(str::to_owned),
            None,
        );
        let events: Vec<_> = stream.collect().await;
        let mut out = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            let Ok(event) = event;
            // The SSE text of one event: `event: <type>\ndata: <json>\n\n`.
            let body = axum::response::IntoResponse::into_response(axum::response::sse::Sse::new(
                futures_util::stream::iter([Ok::<_, Infallible>(event)]),
            ))
            .into_body();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let payload: Value = serde_json::from_str(data).unwrap();
            let kind = text
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap()
                .to_owned();
            assert_eq!(payload["type"], kind.as_str());
            assert_eq!(payload["sequence_number"], i as u64, "{kind}");
            out.push((kind, payload));
        }
        out
    }

    fn kinds(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[tokio::test]
    async fn text_streams_as_deltas_then_completes_with_usage() {
        let usage = Frame::Chunk(Box::new(ChatChunk {
            usage: Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
                total_tokens: 7,
            }),
            ..Default::default()
        }));
        let events = written(
            vec![
                text("Hel"),
                text("lo"),
                chunk(Delta::default(), Some("stop")),
                usage,
                Frame::Done,
            ],
            None,
        )
        .await;
        assert_eq!(
            kinds(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[6].1["text"], "Hello");
        let done = &events[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["usage"]["input_tokens"], 5);
        assert_eq!(done["usage"]["output_tokens"], 2);
    }

    #[tokio::test]
    async fn a_stopped_answer_ends_incomplete_with_the_refusal_after_the_released_text() {
        let events = written(
            vec![
                text("Step one"),
                chunk(Delta::default(), Some("content_filter")),
                Frame::Done,
            ],
            Some("I can't help with that."),
        )
        .await;
        let last = &events.last().unwrap();
        assert_eq!(last.0, "response.incomplete");
        let response = &last.1["response"];
        assert_eq!(response["incomplete_details"]["reason"], "content_filter");
        assert_eq!(
            response["output"][0]["content"],
            json!([
                text_part("Step one"),
                refusal_part("I can't help with that.")
            ])
        );
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert!(kinds(&events).contains(&"response.refusal.done"));
    }

    #[tokio::test]
    async fn tool_calls_stream_as_function_call_items() {
        let call = |id: Option<&str>, name: Option<&str>, arguments: &str| {
            chunk(
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index: 0,
                        id: id.map(str::to_owned),
                        kind: None,
                        function: Some(FunctionDelta {
                            name: name.map(str::to_owned),
                            arguments: Some(arguments.to_owned()),
                        }),
                    }]),
                    ..Default::default()
                },
                None,
            )
        };
        let events = written(
            vec![
                call(Some("call_1"), Some("weather"), "{\"city\":"),
                call(None, None, "\"Oslo\"}"),
                chunk(Delta::default(), Some("tool_calls")),
                Frame::Done,
            ],
            None,
        )
        .await;
        assert_eq!(
            kinds(&events)[2..],
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let item = &events.last().unwrap().1["response"]["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["call_id"], "call_1");
        assert_eq!(item["arguments"], "{\"city\":\"Oslo\"}");
    }

    #[tokio::test]
    async fn an_error_after_the_start_fails_the_response() {
        let error = crate::error::ApiError::Unavailable {
            message: "the safety guard is unavailable".to_owned(),
            code: "guard_unavailable",
        }
        .body("req-1");
        let events = written(vec![text("a"), Frame::Error(error), Frame::Done], None).await;
        let n = events.len();
        assert_eq!(events[n - 2].0, "error");
        assert_eq!(events[n - 2].1["code"], "guard_unavailable");
        assert_eq!(events[n - 1].0, "response.failed");
        assert_eq!(
            events[n - 1].1["response"]["error"]["code"],
            "guard_unavailable"
        );
    }
}
