//! The `Response` object and its output items, built from what the chat pipeline answered.

use serde_json::{Value, json};

use crate::types::{ChatCompletion, Usage};

/// What every `Response` object of one request repeats: its id, and the request's settings.
pub struct Shell {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub instructions: Value,
    pub max_output_tokens: Value,
    pub temperature: Value,
    pub top_p: Value,
    pub user: Value,
    pub safety_identifier: Value,
    pub metadata: Value,
    pub tools: Value,
    pub tool_choice: Value,
    pub parallel_tool_calls: Value,
    pub text_format: Value,
    /// Whether this response is kept (`GET /v1/responses/{id}`, `previous_response_id`).
    pub store: bool,
    pub previous_response_id: Value,
}

/// One output item.
#[derive(Debug, Clone)]
pub enum Item {
    Message {
        id: String,
        /// The released text (an `output_text` part), when there is any.
        text: String,
        /// What replaced the rest of the answer when the guard stopped it (a `refusal` part).
        refusal: Option<String>,
        complete: bool,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        complete: bool,
    },
}

pub fn message_id() -> String {
    format!("msg_{}", uuid::Uuid::new_v4().simple())
}

pub fn function_call_id() -> String {
    format!("fc_{}", uuid::Uuid::new_v4().simple())
}

fn status(complete: bool) -> &'static str {
    if complete { "completed" } else { "incomplete" }
}

pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub fn refusal_part(refusal: &str) -> Value {
    json!({"type": "refusal", "refusal": refusal})
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Item::Message { id, .. } | Item::FunctionCall { id, .. } => id,
        }
    }

    /// The item as it stands; `in_progress` while it streams.
    pub fn json(&self, in_progress: bool) -> Value {
        match self {
            Item::Message {
                id,
                text,
                refusal,
                complete,
            } => {
                let mut content = Vec::new();
                if !text.is_empty() || refusal.is_none() {
                    content.push(text_part(text));
                }
                if let Some(refusal) = refusal {
                    content.push(refusal_part(refusal));
                }
                json!({
                    "type": "message",
                    "id": id,
                    "status": if in_progress { "in_progress" } else { status(*complete) },
                    "role": "assistant",
                    "content": if in_progress { Vec::new() } else { content },
                })
            }
            Item::FunctionCall {
                id,
                call_id,
                name,
                arguments,
                complete,
            } => json!({
                "type": "function_call",
                "id": id,
                "call_id": call_id,
                "name": name,
                "arguments": if in_progress { "" } else { arguments.as_str() },
                "status": if in_progress { "in_progress" } else { status(*complete) },
            }),
        }
    }
}

/// How an answer ended, in the Responses API's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    ContentFilter,
    MaxOutputTokens,
}

impl Ending {
    pub fn of_finish_reason(finish: Option<&str>) -> Ending {
        match finish {
            Some("content_filter") => Ending::ContentFilter,
            Some("length") => Ending::MaxOutputTokens,
            _ => Ending::Completed,
        }
    }

    pub fn status(self) -> &'static str {
        match self {
            Ending::Completed => "completed",
            Ending::ContentFilter | Ending::MaxOutputTokens => "incomplete",
        }
    }

    pub fn details(self) -> Value {
        match self {
            Ending::Completed => Value::Null,
            Ending::ContentFilter => json!({"reason": "content_filter"}),
            Ending::MaxOutputTokens => json!({"reason": "max_output_tokens"}),
        }
    }
}

/// The chat path's `moderation` results (a `moderation_results` list a side) as the Responses
/// API has them (one `moderation_result` a side); errors are the same in both.
pub fn response_moderation(chat: &Value) -> Value {
    let side = |value: &Value| {
        if value["type"] == "moderation_results" {
            value["results"][0].clone()
        } else {
            value.clone()
        }
    };
    json!({"input": side(&chat["input"]), "output": side(&chat["output"])})
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

impl Shell {
    /// The `Response` object; `usage` is null while it is in progress.
    pub fn response(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Option<&Usage>,
        incomplete_details: Value,
        error: Value,
        warden: Option<&Value>,
    ) -> Value {
        let mut response = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": error,
            "incomplete_details": incomplete_details,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "metadata": self.metadata,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
            "temperature": self.temperature,
            "text": {"format": self.text_format},
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": usage.map(usage_json),
            "user": self.user,
            "safety_identifier": self.safety_identifier,
        });
        if let Some(warden) = warden {
            response["warden"] = warden.clone();
        }
        response
    }

    /// A whole chat completion (judged) as a `Response`.
    pub fn complete(&self, completion: &ChatCompletion) -> Value {
        let Some(choice) = completion.choices.first() else {
            return self.response(
                "completed",
                Vec::new(),
                completion.usage.as_ref(),
                Value::Null,
                Value::Null,
                completion.warden.as_ref(),
            );
        };
        let ending = Ending::of_finish_reason(choice.finish_reason.as_deref());
        let message = &choice.message;
        let text = message.content.clone().unwrap_or_default();
        let calls = message.tool_calls.as_deref().unwrap_or_default();
        let mut items = Vec::new();
        // A blocked answer was replaced whole by the policy's refusal.
        if ending == Ending::ContentFilter {
            items.push(Item::Message {
                id: message_id(),
                text: String::new(),
                refusal: Some(text),
                complete: false,
            });
        } else if !text.is_empty() || message.refusal.is_some() || calls.is_empty() {
            items.push(Item::Message {
                id: message_id(),
                text,
                refusal: message.refusal.clone(),
                complete: ending == Ending::Completed,
            });
        }
        if ending != Ending::ContentFilter {
            for call in calls {
                items.push(Item::FunctionCall {
                    id: function_call_id(),
                    call_id: call
                        .id
                        .clone()
                        .unwrap_or_else(crate::backends::tool_call_id),
                    name: call.function.name.clone(),
                    arguments: call.function.arguments.clone(),
                    complete: true,
                });
            }
        }
        let usage = completion.usage.unwrap_or_default();
        let mut response = self.response(
            ending.status(),
            items.iter().map(|item| item.json(false)).collect(),
            Some(&usage),
            ending.details(),
            Value::Null,
            completion.warden.as_ref(),
        );
        if let Some(moderation) = &completion.moderation {
            response["moderation"] = response_moderation(moderation);
        }
        response
    }
}

/// A `Shell` with every setting left at its default, for the module's tests.
#[cfg(test)]
pub fn test_shell() -> Shell {
    Shell {
        id: "resp_1".into(),
        created_at: 7,
        model: "m".into(),
        instructions: Value::Null,
        max_output_tokens: Value::Null,
        temperature: Value::Null,
        top_p: Value::Null,
        user: Value::Null,
        safety_identifier: Value::Null,
        metadata: json!({}),
        tools: json!([]),
        tool_choice: json!("auto"),
        parallel_tool_calls: json!(true),
        text_format: json!({"type": "text"}),
        store: false,
        previous_response_id: Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::test_shell as shell;
    use super::*;

    fn completion(value: Value) -> ChatCompletion {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_filtered_completion_is_an_incomplete_response_with_a_refusal() {
        let mut completion = completion(json!({"id": "c", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "No."}, "finish_reason": "content_filter"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}));
        completion.warden = Some(json!({"guard": {}}));
        let response = shell().complete(&completion);
        assert_eq!(response["status"], "incomplete");
        assert_eq!(response["incomplete_details"]["reason"], "content_filter");
        assert_eq!(response["output"][0]["status"], "incomplete");
        assert_eq!(
            response["output"][0]["content"],
            json!([{"type": "refusal", "refusal": "No."}])
        );
        assert_eq!(response["usage"]["total_tokens"], 4);
        assert_eq!(response["created_at"], 7);
        assert!(response.get("warden").is_some());
    }

    #[test]
    fn tool_calls_become_function_call_items() {
        let completion = completion(json!({"id": "c", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                "finish_reason": "tool_calls"}]}));
        let response = shell().complete(&completion);
        assert_eq!(response["status"], "completed");
        let output = response["output"].as_array().unwrap();
        assert_eq!(output.len(), 1, "no empty message beside the call");
        assert_eq!(output[0]["type"], "function_call");
        assert_eq!(output[0]["call_id"], "call_9");
        assert_eq!(output[0]["name"], "weather");
        assert_eq!(output[0]["arguments"], "{\"city\":\"Oslo\"}");
        assert!(output[0]["id"].as_str().unwrap().starts_with("fc_"));
    }
}
