//! Moderation of a response as it grows: text is collected chunk by chunk and judged a window
//! at a time, each check reaching back one window into text already judged, so that unsafe
//! text split across two windows is seen whole.

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use std::sync::Arc;

use super::prompt::Turn;
use super::{Decision, Guard, Judgement};
use crate::guard::policy::Policy;
use crate::types::{AssistantMessage, Delta};

pub struct OutputModerator {
    guard: Arc<Guard>,
    pub policy: Arc<Policy>,
    context: Arc<Vec<Turn>>,
    request_id: String,
    /// Everything the model said so far: content and tool calls.
    text: String,
    /// Byte offset up to which `text` was judged.
    judged_upto: usize,
    /// Characters not judged yet.
    unjudged_chars: usize,
    /// Every category that fired so far.
    pub judgement: Judgement,
    /// The field the last text came from.
    last_field: Option<&'static str>,
}

/// A check in progress, and the offset it covers up to.
pub type CheckFuture = BoxFuture<'static, (Judgement, usize)>;

impl OutputModerator {
    pub fn new(
        guard: Arc<Guard>,
        policy: Arc<Policy>,
        context: Vec<Turn>,
        request_id: String,
    ) -> Self {
        OutputModerator {
            guard,
            policy,
            context: Arc::new(context),
            request_id,
            text: String::new(),
            judged_upto: 0,
            unjudged_chars: 0,
            judgement: Judgement::default(),
            last_field: None,
        }
    }

    /// A moderator for another choice of the same request: same guard, policy and context,
    /// nothing observed yet. Each choice is judged as an answer of its own.
    pub fn for_another_choice(&self) -> Self {
        let mut fresh = OutputModerator::new(
            self.guard.clone(),
            self.policy.clone(),
            Vec::new(),
            self.request_id.clone(),
        );
        fresh.context = self.context.clone();
        fresh
    }

    /// Adds what one choice's delta says to the text under moderation: every field the relay
    /// writes that can carry model text (content, refusal, reasoning in both spellings,
    /// tool-call names and arguments).
    pub fn observe_delta(&mut self, delta: &Delta) {
        self.push_text_fields([
            ("reasoning_content", &delta.reasoning_content),
            ("reasoning", &delta.reasoning),
            ("content", &delta.content),
            ("refusal", &delta.refusal),
        ]);
        for call in delta.tool_calls.iter().flatten() {
            if let Some(function) = &call.function {
                if let Some(name) = &function.name {
                    self.push_field("tool_call", &format!("\n{name}("));
                }
                if let Some(arguments) = &function.arguments {
                    self.push_field("tool_call", arguments);
                }
            }
        }
    }

    /// Adds a whole message (a non-streamed answer), every text-bearing field of it.
    pub fn observe_message(&mut self, message: &AssistantMessage) {
        self.push_text_fields([
            ("reasoning_content", &message.reasoning_content),
            ("reasoning", &message.reasoning),
            ("content", &message.content),
            ("refusal", &message.refusal),
        ]);
        for call in message.tool_calls.iter().flatten() {
            self.push_field(
                "tool_call",
                &format!("\n{}({})", call.function.name, call.function.arguments),
            );
        }
    }

    /// The text fields a delta and a message share, in the order the model writes them.
    fn push_text_fields(&mut self, fields: [(&'static str, &Option<String>); 4]) {
        for (field, text) in fields {
            if let Some(text) = text {
                self.push_field(field, text);
            }
        }
    }

    /// Text of one field; a change of field starts a new line, so two fields never read as one word.
    fn push_field(&mut self, field: &'static str, text: &str) {
        if text.is_empty() {
            return;
        }
        if self.last_field.is_some_and(|last| last != field) && !self.text.ends_with('\n') {
            self.push("\n");
        }
        self.last_field = Some(field);
        self.push(text);
    }

    /// Adds text to moderate (the whole answer of a non-streamed response, say).
    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
        self.unjudged_chars += text.chars().count();
    }

    /// Everything the model said so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn window_ready(&self) -> bool {
        self.unjudged_chars >= self.policy.window_chars
    }

    pub fn has_unjudged(&self) -> bool {
        self.judged_upto < self.text.len() && !self.text[self.judged_upto..].trim().is_empty()
    }

    /// Starts a check of everything not judged yet, with one window of judged text before it.
    pub fn start_check(&mut self) -> CheckFuture {
        let upto = self.text.len();
        let mut from = self.judged_upto;
        let mut back = self.policy.window_chars;
        while from > 0 && back > 0 {
            from -= 1;
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            back -= 1;
        }
        let text = self.text[from..upto].to_owned();
        let guard = self.guard.clone();
        let policy = self.policy.clone();
        let context = self.context.clone();
        let request_id = self.request_id.clone();
        self.unjudged_chars = 0;
        Box::pin(async move {
            let judgement = guard
                .check_output(&policy, &context, &text, &request_id)
                .await;
            (judgement, upto)
        })
    }

    /// Records a finished check; the decision says whether the text may go out.
    pub fn finish_check(&mut self, judgement: Judgement, upto: usize) -> Decision {
        self.judgement.merge(judgement);
        self.judged_upto = self.judged_upto.max(upto);
        let decision = self.judgement.decide(&self.policy);
        if !decision.lets_through() {
            tracing::warn!(
                request_id = %self.request_id,
                policy = %self.policy.name,
                verdict = decision.label(),
                categories = ?self.judgement.categories(),
                "output stopped by the guard"
            );
        } else if decision == Decision::Flagged {
            tracing::info!(request_id = %self.request_id, policy = %self.policy.name, categories = ?self.judgement.categories(), "output flagged");
        }
        decision
    }

    /// Checks whatever is left, to the end.
    pub async fn check_rest(&mut self) -> Decision {
        if !self.has_unjudged() {
            return self.judgement.decide(&self.policy);
        }
        let (judgement, upto) = self.start_check().await;
        self.finish_check(judgement, upto)
    }
}

/// The verdict over several choices' moderators: every category that fired in any of them,
/// decided once under the policy (one blocked choice makes the request's output `blocked`).
pub fn combined_verdict<'a>(
    moderators: impl IntoIterator<Item = &'a OutputModerator>,
) -> Option<(Decision, Vec<String>)> {
    let mut moderators = moderators.into_iter().peekable();
    let policy = moderators.peek()?.policy.clone();
    let mut all = Judgement::default();
    for moderator in moderators {
        all.merge(moderator.judgement.clone());
    }
    Some((all.decide(&policy), all.categories()))
}

/// The logprobs that may go out with the text they describe, or none. While output is
/// moderated, the tokens must spell exactly the text released beside them (`content` and
/// `refusal`), `bytes` are made from those tokens, and `top_logprobs` keep only the token chosen:
/// the alternatives are text the guard never judged. Logprobs that do not match are dropped.
pub fn released_logprobs(
    logprobs: &Value,
    content: Option<&str>,
    refusal: Option<&str>,
) -> Option<Value> {
    let mut out = Map::new();
    for (field, text) in [("content", content), ("refusal", refusal)] {
        let entries = match logprobs.get(field) {
            None | Some(Value::Null) => {
                out.insert(field.to_owned(), Value::Null);
                continue;
            }
            Some(Value::Array(entries)) => entries,
            Some(_) => return None,
        };
        let mut spelled = String::new();
        let mut kept = Vec::with_capacity(entries.len());
        for entry in entries {
            let token = entry.get("token")?.as_str()?;
            spelled.push_str(token);
            let mut clean = token_entry(token, entry.get("logprob")?);
            let chosen: Vec<Value> = entry
                .get("top_logprobs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|alt| alt.get("token").and_then(Value::as_str) == Some(token))
                .filter_map(|alt| Some(Value::Object(token_entry(token, alt.get("logprob")?))))
                .collect();
            clean.insert("top_logprobs".to_owned(), Value::Array(chosen));
            kept.push(Value::Object(clean));
        }
        if spelled != text.unwrap_or_default() {
            return None;
        }
        out.insert(field.to_owned(), Value::Array(kept));
    }
    Some(Value::Object(out))
}

fn token_entry(token: &str, logprob: &Value) -> Map<String, Value> {
    let mut entry = Map::new();
    entry.insert("token".to_owned(), Value::String(token.to_owned()));
    entry.insert(
        "logprob".to_owned(),
        if logprob.is_number() {
            logprob.clone()
        } else {
            Value::Null
        },
    );
    entry.insert(
        "bytes".to_owned(),
        Value::Array(token.bytes().map(Value::from).collect()),
    );
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn logprobs_go_out_only_when_they_spell_the_released_text() {
        let logprobs = json!({"content": [
            {"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108], "top_logprobs": [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]}, {"token": "Kill", "logprob": -2.0, "bytes": [75]}]},
            {"token": "lo", "logprob": -0.2, "bytes": [1, 2, 3], "extra": "x"}
        ], "refusal": null, "vendor": "y"});
        let released = released_logprobs(&logprobs, Some("Hello"), None).unwrap();
        assert_eq!(
            released,
            json!({"content": [
                {"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108], "top_logprobs": [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]}]},
                {"token": "lo", "logprob": -0.2, "bytes": [108, 111], "top_logprobs": []}
            ], "refusal": null})
        );
        assert_eq!(
            released_logprobs(&logprobs, Some("I cannot help"), None),
            None,
            "tokens of another text"
        );
        assert_eq!(
            released_logprobs(&json!({"content": "Hello"}), Some("Hello"), None),
            None
        );
    }
}
