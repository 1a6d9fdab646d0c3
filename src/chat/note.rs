//! What Warden tells the client about a request besides the answer: the `warden` object of
//! bodies and chunks, and the `x-warden-guard` / `x-warden-sources` headers.

use axum::http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::guard::Decision;
use crate::guard::openai::{moderation_error, moderation_result};
use crate::guard::policy::Policy;
use std::sync::Arc;

pub const GUARD_HEADER: &str = "x-warden-guard";
pub const SOURCES_HEADER: &str = "x-warden-sources";

/// What the guard decided about a request.
#[derive(Debug, Clone, Default)]
pub struct GuardNote {
    pub policy: String,
    pub input: Option<(Decision, Vec<String>)>,
    pub output: Option<(Decision, Vec<String>)>,
}

/// A chunk that was injected as context.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub doc_id: String,
    pub source: String,
    pub chunk: i64,
    /// The chunk's section in its document (heading path), when it has one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub section: String,
    pub score: f32,
}

#[derive(Debug, Clone, Default)]
pub struct RetrievalNote {
    pub collection: String,
    /// `ok`, or `unavailable` when the request was answered without context.
    pub status: &'static str,
    pub sources: Vec<Source>,
    /// Retrieved chunks left out because the guard judged them unsafe.
    pub excluded: usize,
    /// How it searched (`hybrid`, `dense`, `keyword`), and how it was asked to when that
    /// differs (a collection without full text is searched dense).
    pub mode: &'static str,
    pub requested_mode: &'static str,
    /// Chunks found but left out to keep the context within `retrieval.context_tokens`.
    pub over_budget: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Note {
    pub guard: Option<GuardNote>,
    pub retrieval: Option<RetrievalNote>,
}

impl GuardNote {
    fn part(name: &str, value: &Option<(Decision, Vec<String>)>) -> Option<String> {
        value.as_ref().map(|(decision, categories)| {
            if categories.is_empty() {
                format!("{name}={}", decision.label())
            } else {
                format!("{name}={}({})", decision.label(), categories.join(","))
            }
        })
    }

    fn json(&self) -> Value {
        let verdict = |value: &Option<(Decision, Vec<String>)>| {
            value
                .as_ref()
                .map(|(d, c)| json!({"verdict": d.label(), "categories": c}))
        };
        let mut guard = Map::new();
        guard.insert("policy".to_owned(), json!(self.policy));
        if let Some(v) = verdict(&self.input) {
            guard.insert("input".to_owned(), v);
        }
        if let Some(v) = verdict(&self.output) {
            guard.insert("output".to_owned(), v);
        }
        Value::Object(guard)
    }
}

impl Note {
    pub fn is_empty(&self) -> bool {
        self.guard.is_none() && self.retrieval.is_none()
    }

    pub fn set_output(&mut self, decision: Decision, categories: Vec<String>) {
        if let Some(guard) = self.guard.as_mut() {
            guard.output = Some((decision, categories));
        }
    }

    pub fn has_output(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.output.is_some())
    }

    /// `input=flagged(S6); output=safe`
    pub fn guard_header(&self) -> Option<HeaderValue> {
        let guard = self.guard.as_ref()?;
        let parts: Vec<String> = [
            GuardNote::part("input", &guard.input),
            GuardNote::part("output", &guard.output),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty())
            .then(|| HeaderValue::from_str(&parts.join("; ")).ok())
            .flatten()
    }

    pub fn sources_header(&self) -> Option<HeaderValue> {
        let retrieval = self.retrieval.as_ref()?;
        HeaderValue::from_str(&retrieval.sources.len().to_string()).ok()
    }

    /// Adds both headers to a response.
    pub fn headers(&self, headers: &mut axum::http::HeaderMap) {
        if let Some(value) = self.guard_header() {
            headers.insert(GUARD_HEADER, value);
        }
        if let Some(value) = self.sources_header() {
            headers.insert(SOURCES_HEADER, value);
        }
    }

    /// The whole `warden` object: guard verdicts, sources and retrieval status.
    pub fn json(&self) -> Value {
        let mut out = Map::new();
        if let Some(guard) = &self.guard {
            out.insert("guard".to_owned(), guard.json());
        }
        if let Some(retrieval) = &self.retrieval {
            out.insert("sources".to_owned(), json!(retrieval.sources));
            let mut summary = json!({
                "collection": retrieval.collection,
                "status": retrieval.status,
                "excluded": retrieval.excluded,
                "mode": retrieval.mode,
            });
            if retrieval.requested_mode != retrieval.mode {
                summary["requested_mode"] = json!(retrieval.requested_mode);
            }
            if retrieval.over_budget > 0 {
                summary["over_budget"] = json!(retrieval.over_budget);
            }
            out.insert("retrieval".to_owned(), summary);
        }
        Value::Object(out)
    }

    /// The object for the last chunk of a stream: the guard's verdicts only.
    pub fn json_last(&self) -> Value {
        let mut out = Map::new();
        if let Some(guard) = &self.guard {
            out.insert("guard".to_owned(), guard.json());
        }
        Value::Object(out)
    }
}

/// A request that asked for `moderation` results (OpenAI's field) gets its input and output
/// verdicts in that shape. Asking changes nothing about what is blocked: the organisation's
/// policy decides that.
#[derive(Debug, Clone)]
pub struct ModerationReport {
    /// The guard model, named in every result.
    pub model: String,
    /// `None` when this Warden has no guard.
    pub policy: Option<Arc<Policy>>,
}

impl ModerationReport {
    /// `{"input": ..., "output": ...}` from the verdicts in `note`; `generated` is false when
    /// the input was blocked and nothing was generated.
    pub fn json(&self, note: &Note, generated: bool) -> Value {
        let Some(policy) = &self.policy else {
            let disabled = moderation_error(
                "moderation_disabled",
                "this Warden has no [guard]: nothing is judged",
            );
            return json!({"input": disabled, "output": disabled});
        };
        let guard = note.guard.as_ref();
        let side = |checked: bool, name: &str, verdict: Option<&(Decision, Vec<String>)>| {
            if !checked {
                return moderation_error(
                    "not_checked",
                    &format!("the policy `{}` does not check {name}", policy.name),
                );
            }
            match verdict {
                Some((Decision::Unavailable | Decision::Unverified, _)) => {
                    moderation_error("guard_unavailable", "the safety guard gave no verdict")
                }
                Some((decision, categories)) => json!({
                    "type": "moderation_results",
                    "model": self.model,
                    "results": [moderation_result(&self.model, policy, *decision, categories)],
                }),
                None => moderation_error("not_checked", &format!("no verdict on the {name}")),
            }
        };
        let input = side(
            policy.check_input,
            "input",
            guard.and_then(|g| g.input.as_ref()),
        );
        let output = if generated {
            side(
                policy.check_output,
                "output",
                guard.and_then(|g| g.output.as_ref()),
            )
        } else {
            moderation_error(
                "not_generated",
                "the input was blocked: nothing was generated",
            )
        };
        json!({"input": input, "output": output})
    }
}
