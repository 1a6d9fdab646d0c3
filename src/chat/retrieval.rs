//! The retrieval stage of a chat request: which collection to search and for what (the plan),
//! then what to do with what was found (judge it, inject it, report it).

use std::sync::Arc;

use crate::backends::pool::ModelRoute;
use crate::chat::note::{RetrievalNote, Source};
use crate::config::{OnUnavailable, Placement, RetrievalMode};
use crate::error::ApiError;
use crate::guard::policy::Policy;
use crate::guard::{Decision, Guard};
use crate::knowledge::store::{StoreError, valid_collection_name};
use crate::knowledge::{Found, KnowledgeError};
use crate::server::auth::Caller;
use crate::server::state::AppState;
use crate::types::{ChatMessage, ChatRequest, MessageContent, Role, WardenOptions};

/// What to search for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub collection: String,
    pub top_k: usize,
    /// The question: the text of the last user message.
    pub query: String,
    /// What is searched for: the question, after the previous question when it follows up on
    /// it (see [`search_text`]).
    pub search: String,
    /// `warden.retrieval`; `None` searches in the collection's configured mode.
    pub mode: Option<RetrievalMode>,
    /// The QA template: the model's own, else `[retrieval]`'s.
    pub template: String,
}

/// Words that point back at something said before ("what about its license?").
const REFERRING_WORDS: &[&str] = &[
    "it", "its", "it's", "this", "these", "those", "they", "them", "their", "theirs", "he", "she",
    "his", "her", "there", "same", "former", "latter", "else",
];
/// Openings of a question that continues the one before.
const CONTINUATIONS: &[&str] = &["and ", "also ", "what about ", "how about ", "then "];

/// Whether a question leans on the one before it to be understood: it opens like a
/// continuation, points back with a pronoun, or is too short to stand alone.
pub fn is_follow_up(question: &str) -> bool {
    let lower = question.trim().to_lowercase();
    if CONTINUATIONS.iter().any(|c| lower.starts_with(c)) {
        return true;
    }
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .collect();
    words.len() <= 2 || words.iter().any(|w| REFERRING_WORDS.contains(w))
}

/// What to search for, from the conversation: the last user message, with the user message
/// before it in front when the last one is a follow-up, so that the query stands on its own.
pub fn search_text(messages: &[ChatMessage]) -> String {
    let mut questions = messages
        .iter()
        .rev()
        .filter(|m| m.role == Role::User)
        .map(text_of)
        .filter(|t| !t.trim().is_empty());
    let Some(last) = questions.next() else {
        return String::new();
    };
    match questions.next() {
        Some(previous) if is_follow_up(&last) => format!("{previous}\n{last}"),
        _ => last,
    }
}

fn text_of(message: &ChatMessage) -> String {
    match &message.content {
        Some(MessageContent::Text(text)) => text.clone(),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join("\n"),
        None => String::new(),
    }
}

/// Decides whether and where to search: `warden.rag = false` turns it off, `warden.collection`
/// overrides the model's collection, `warden.top_k` the configured count.
pub fn plan(
    state: &AppState,
    caller: &Caller,
    route: &ModelRoute,
    options: &WardenOptions,
    request: &ChatRequest,
) -> Result<Option<Plan>, ApiError> {
    if let Some(top_k) = options.top_k
        && !(1..=100).contains(&top_k)
    {
        return Err(ApiError::invalid(
            "`top_k` must be between 1 and 100",
            Some("warden.top_k".to_owned()),
        ));
    }
    if options.rag == Some(false) {
        return Ok(None);
    }
    let Some(collection) = options
        .collection
        .clone()
        .or_else(|| route.collection.clone())
    else {
        return Ok(None);
    };
    if !caller.may_use_collection(&collection) {
        return Err(ApiError::Forbidden {
            message: format!("this key may not search the collection `{collection}`"),
        });
    }
    if !valid_collection_name(&collection) {
        return Err(ApiError::invalid(
            format!("`{collection}` is not a valid collection name"),
            Some("warden.collection".to_owned()),
        ));
    }
    let Some(knowledge) = &state.knowledge else {
        return Err(ApiError::invalid(
            "retrieval is not enabled on this Warden: its config has no [embeddings] and [milvus]",
            Some("warden.collection".to_owned()),
        ));
    };
    let query = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(text_of)
        .unwrap_or_default();
    if query.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(Plan {
        search: search_text(&request.messages),
        mode: options.retrieval,
        collection,
        top_k: options
            .top_k
            .or(route.top_k)
            .unwrap_or(knowledge.retrieval.top_k),
        query,
        template: route
            .template
            .clone()
            .unwrap_or_else(|| knowledge.retrieval.template.clone()),
    }))
}

/// Judges what was found (when the policy checks retrieved text), injects the rest into the
/// request, and says what was used.
pub async fn inject(
    state: &AppState,
    guarded: Option<&(Arc<Guard>, Arc<Policy>)>,
    plan: &Plan,
    found: Result<Found, KnowledgeError>,
    request: &mut ChatRequest,
    request_id: &str,
) -> Result<RetrievalNote, ApiError> {
    let Some(knowledge) = &state.knowledge else {
        return Ok(RetrievalNote::default());
    };
    let config = &knowledge.retrieval;
    let requested = plan
        .mode
        .unwrap_or_else(|| config.mode_of(&plan.collection))
        .as_str();
    let (mut hits, mode) = match found {
        Ok(found) => (found.hits, found.mode.as_str()),
        Err(KnowledgeError::Store(StoreError::NoCollection(name))) => {
            return Err(ApiError::NotFound {
                message: format!("The collection `{name}` does not exist."),
                param: Some("warden.collection".to_owned()),
                code: "collection_not_found",
            });
        }
        Err(
            err @ KnowledgeError::Store(
                StoreError::DimensionMismatch { .. } | StoreError::Foreign { .. },
            ),
        ) => {
            return Err(ApiError::InvalidRequest {
                message: err.to_string(),
                param: Some("warden.collection".to_owned()),
                code: Some("collection_mismatch"),
            });
        }
        Err(err) => {
            tracing::warn!(request_id, error = %err, collection = %plan.collection, "retrieval failed");
            return match config.on_unavailable {
                OnUnavailable::Fail => Err(ApiError::Unavailable {
                    message: "the knowledge base is unavailable; try again later".to_owned(),
                    code: "retrieval_unavailable",
                }),
                OnUnavailable::AnswerWithout => Ok(RetrievalNote {
                    collection: plan.collection.clone(),
                    status: "unavailable",
                    mode: requested,
                    requested_mode: requested,
                    ..RetrievalNote::default()
                }),
            };
        }
    };
    let mut excluded = 0;
    if let Some((guard, policy)) = guarded
        && policy.check_retrieved
        && !hits.is_empty()
    {
        let texts: Vec<String> = hits.iter().map(|h| h.text.clone()).collect();
        let judgements = guard.check_texts(policy, &texts, request_id).await;
        let mut kept = Vec::with_capacity(hits.len());
        for (hit, judgement) in hits.into_iter().zip(judgements) {
            let decision = judgement.decide(policy);
            if matches!(decision, Decision::Blocked | Decision::Unavailable) {
                excluded += 1;
                tracing::warn!(request_id, doc_id = %hit.doc_id, chunk = hit.chunk_index, verdict = decision.label(), categories = ?judgement.categories(), "retrieved chunk left out by the guard");
            } else {
                kept.push(hit);
            }
        }
        hits = kept;
    }
    // The context budget: the best chunks that fit, in order (a chunk too big is passed over
    // for smaller ones after it).
    let mut over_budget = 0;
    if config.context_tokens > 0 {
        let mut used = 0;
        hits.retain(|hit| {
            let tokens = knowledge.embedder.count_tokens_untruncated(&hit.text);
            if used + tokens > config.context_tokens {
                over_budget += 1;
                false
            } else {
                used += tokens;
                true
            }
        });
    }
    if !hits.is_empty() {
        let context = hits
            .iter()
            .map(|h| h.text.as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        let filled = plan
            .template
            .replace("{context_str}", &context)
            .replace("{query_str}", &plan.query);
        place(request, filled, config.placement);
    }
    Ok(RetrievalNote {
        collection: plan.collection.clone(),
        status: "ok",
        sources: hits
            .iter()
            .map(|h| Source {
                doc_id: h.doc_id.clone(),
                source: h.source.clone(),
                chunk: h.chunk_index,
                section: h.heading.clone(),
                score: h.score,
            })
            .collect(),
        excluded,
        mode,
        requested_mode: requested,
        over_budget,
    })
}

/// Puts the filled template in the conversation: as a system message after the caller's own
/// system messages, or in place of the last user message.
fn place(request: &mut ChatRequest, filled: String, placement: Placement) {
    let message = |role: Role| ChatMessage {
        role,
        content: Some(MessageContent::Text(filled.clone())),
        tool_calls: None,
        tool_call_id: None,
        extra: Default::default(),
    };
    match placement {
        Placement::System => {
            let at = request
                .messages
                .iter()
                .take_while(|m| matches!(m.role, Role::System | Role::Developer))
                .count();
            request.messages.insert(at, message(Role::System));
        }
        Placement::User => {
            if let Some(last) = request
                .messages
                .iter_mut()
                .rev()
                .find(|m| m.role == Role::User)
            {
                last.content = Some(MessageContent::Text(filled));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        message(Role::User, text)
    }

    fn message(role: Role, text: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: Some(MessageContent::Text(text.to_owned())),
            tool_calls: None,
            tool_call_id: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn follow_ups_are_recognised() {
        for question in [
            "what about its license?",
            "And how do I uninstall it?",
            "Does this work on Windows?",
            "Which options do they take?",
            "why?",
        ] {
            assert!(is_follow_up(question), "{question}");
        }
        for question in [
            "How do I list the contents of a tar archive?",
            "Which command compresses files with the Lempel-Ziv coding?",
            "What is the default port of the Kestrel K7 admin page?",
        ] {
            assert!(!is_follow_up(question), "{question}");
        }
    }

    #[test]
    fn a_follow_up_is_searched_with_the_question_before_it() {
        let conversation = vec![
            message(Role::System, "You help with tools."),
            user("What is ripgrep?"),
            message(Role::Assistant, "A fast recursive search tool."),
            user("what about its license?"),
        ];
        assert_eq!(
            search_text(&conversation),
            "What is ripgrep?\nwhat about its license?"
        );
        let standalone = vec![
            user("What is ripgrep?"),
            message(Role::Assistant, "A fast recursive search tool."),
            user("How do I compress a folder with tar?"),
        ];
        assert_eq!(
            search_text(&standalone),
            "How do I compress a folder with tar?"
        );
        assert_eq!(search_text(&[user("what about it?")]), "what about it?");
        assert_eq!(search_text(&[]), "");
    }
}
