//! Moderation of a response as it grows: text is collected chunk by chunk and judged a window
//! at a time, each check reaching back one window into text already judged, so that unsafe
//! text split across two windows is seen whole.

use futures_util::future::BoxFuture;
use std::sync::Arc;

use super::prompt::Turn;
use super::{Decision, Guard, Judgement};
use crate::guard::policy::Policy;
use crate::types::ChatChunk;

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
        }
    }

    /// Adds what a chunk says to the text under moderation.
    pub fn observe(&mut self, chunk: &ChatChunk) {
        for choice in &chunk.choices {
            if let Some(content) = &choice.delta.content {
                self.push(content);
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                if let Some(function) = &call.function {
                    if let Some(name) = &function.name {
                        self.push(&format!("\n{name}("));
                    }
                    if let Some(arguments) = &function.arguments {
                        self.push(arguments);
                    }
                }
            }
        }
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
