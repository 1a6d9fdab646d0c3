//! Llama Guard's verdicts in OpenAI's moderation shape: the categories of `/v1/moderations`, and
//! the `moderation` results of chat completions and responses.
//!
//! Llama Guard 3 gives categories, not scores: a score is 1.0 for a category that fired and 0.0
//! otherwise. OpenAI's category names are answered by the Llama Guard categories below
//! (MLCommons hazard taxonomy, as in the Llama Guard 3 model card); OpenAI categories with no
//! counterpart are always false. The policy's own category ids are reported beside them.

use serde_json::{Map, Value, json};

use crate::guard::Decision;
use crate::guard::policy::Policy;

/// OpenAI's moderation categories, and the Llama Guard 3 categories that answer for them.
pub const OPENAI_CATEGORIES: &[(&str, &[&str])] = &[
    ("harassment", &[]),
    ("harassment/threatening", &[]),
    ("hate", &["S10"]),
    ("hate/threatening", &[]),
    ("illicit", &["S2"]),
    ("illicit/violent", &["S9"]),
    ("self-harm", &["S11"]),
    ("self-harm/intent", &[]),
    ("self-harm/instructions", &[]),
    ("sexual", &["S3", "S12"]),
    ("sexual/minors", &["S4"]),
    ("violence", &["S1"]),
    ("violence/graphic", &[]),
];

/// `categories` and `category_scores` for the categories that fired: OpenAI's names, then the
/// policy's own ids.
pub fn category_maps(
    fired: &[String],
    policy: &Policy,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut categories = Map::new();
    let mut scores = Map::new();
    let mut put = |name: &str, hit: bool| {
        categories.insert(name.to_owned(), json!(hit));
        scores.insert(name.to_owned(), json!(if hit { 1.0 } else { 0.0 }));
    };
    for (name, codes) in OPENAI_CATEGORIES {
        put(name, codes.iter().any(|c| fired.iter().any(|f| f == c)));
    }
    for category in &policy.categories {
        put(&category.id, fired.contains(&category.id));
    }
    (categories, scores)
}

/// Whether a decision counts as flagged in OpenAI's sense.
pub fn flagged(decision: Decision) -> bool {
    matches!(
        decision,
        Decision::Blocked | Decision::Flagged | Decision::WouldBlock
    )
}

/// One `moderation_result` object.
pub fn moderation_result(
    model: &str,
    policy: &Policy,
    decision: Decision,
    fired: &[String],
) -> Value {
    let (categories, scores) = category_maps(fired, policy);
    let applied: Map<String, Value> = categories
        .keys()
        .map(|name| (name.clone(), json!(["text"])))
        .collect();
    json!({
        "type": "moderation_result",
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "flagged": flagged(decision),
        "model": model,
    })
}

/// A side (input or output) that has no result, in OpenAI's error shape.
pub fn moderation_error(code: &str, message: &str) -> Value {
    json!({"type": "error", "code": code, "message": message})
}
