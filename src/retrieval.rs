//! The retrieval stage of a chat request: which collection to search and for what (the plan),
//! then what to do with what was found (judge it, inject it, report it).

use std::sync::Arc;

use crate::auth::Caller;
use crate::backends::pool::ModelRoute;
use crate::config::{OnUnavailable, Placement};
use crate::error::ApiError;
use crate::guard::policy::Policy;
use crate::guard::{Decision, Guard};
use crate::knowledge::KnowledgeError;
use crate::note::{RetrievalNote, Source};
use crate::state::AppState;
use crate::store::{Hit, StoreError, valid_collection_name};
use crate::types::{ChatMessage, ChatRequest, MessageContent, Role, WardenOptions};

/// What to search for one request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub collection: String,
    pub top_k: usize,
    /// The question: the text of the last user message.
    pub query: String,
    /// The QA template: the model's own, else `[retrieval]`'s.
    pub template: String,
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
    found: Result<Vec<Hit>, KnowledgeError>,
    request: &mut ChatRequest,
    request_id: &str,
) -> Result<RetrievalNote, ApiError> {
    let Some(knowledge) = &state.knowledge else {
        return Ok(RetrievalNote::default());
    };
    let config = &knowledge.retrieval;
    let mut hits = match found {
        Ok(hits) => hits,
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
                    sources: Vec::new(),
                    excluded: 0,
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
                score: h.score,
            })
            .collect(),
        excluded,
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
