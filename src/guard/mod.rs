//! The safety guard: Llama Guard 3 judging every turn the model will see, and the model's
//! output as it streams, against the organisation's policy.
//!
//! - [`policy`]: policy files and their validation.
//! - [`prompt`]: the exact Llama Guard 3 prompt.
//! - [`verdict`]: reading the guard's answer.
//! - [`output`]: moderation of a response as it grows, window by window.
//!
//! A guard call sends the rendered prompt as a raw completion (Ollama `/api/generate` with
//! `raw: true`, or an OpenAI-compatible `/v1/completions`), temperature 0, a few tokens. Answers
//! are cached by policy version + prompt hash, so a conversation's earlier turns are judged once.

pub mod openai;
pub mod output;
pub mod policy;
pub mod prompt;
pub mod scope;
pub mod verdict;

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::backends::pool::BackendHandle;
use crate::config::GuardConfig;
use crate::types::{ChatMessage, ChatRequest, ContentPart, MessageContent, Role};
use policy::{Action, Policy, PolicyError, PolicySet};
use prompt::{Side, Turn};
use verdict::Reading;

/// What the guard concluded about some content under a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Categories whose action is `block` (or that the policy does not know) and that fired.
    pub blocked: Vec<String>,
    /// Categories whose action is `flag` and that fired.
    pub flagged: Vec<String>,
    /// Set when at least one guard call failed (down, timed out, unreadable answer).
    pub failure: Option<String>,
}

/// What Warden does about a judgement, the policy's fail mode applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Safe,
    Flagged,
    Blocked,
    /// The guard failed and the policy fails closed.
    Unavailable,
    /// The guard failed and the policy fails open (or only monitors): let through, recorded.
    Unverified,
    /// Unsafe under a policy in `monitor` enforcement: let through, recorded as a block would be.
    WouldBlock,
}

impl Decision {
    pub fn label(self) -> &'static str {
        match self {
            Decision::Safe => "safe",
            Decision::Flagged => "flagged",
            Decision::Blocked => "blocked",
            Decision::Unavailable => "unavailable",
            Decision::Unverified => "unverified",
            Decision::WouldBlock => "would_block",
        }
    }

    pub fn lets_through(self) -> bool {
        matches!(
            self,
            Decision::Safe | Decision::Flagged | Decision::Unverified | Decision::WouldBlock
        )
    }
}

impl Judgement {
    pub fn decide(&self, policy: &Policy) -> Decision {
        let monitor = policy.enforcement == policy::Enforcement::Monitor;
        if !self.blocked.is_empty() {
            if monitor {
                Decision::WouldBlock
            } else {
                Decision::Blocked
            }
        } else if self.failure.is_some() {
            match policy.fail_mode {
                policy::FailMode::FailClosed if !monitor => Decision::Unavailable,
                _ => Decision::Unverified,
            }
        } else if !self.flagged.is_empty() {
            Decision::Flagged
        } else {
            Decision::Safe
        }
    }

    /// The categories worth reporting for this decision.
    pub fn categories(&self) -> Vec<String> {
        let mut all = self.blocked.clone();
        for c in &self.flagged {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        all
    }

    pub(crate) fn merge(&mut self, other: Judgement) {
        for c in other.blocked {
            if !self.blocked.contains(&c) {
                self.blocked.push(c);
            }
        }
        for c in other.flagged {
            if !self.flagged.contains(&c) {
                self.flagged.push(c);
            }
        }
        if self.failure.is_none() {
            self.failure = other.failure;
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    #[error("guard call failed: {0}")]
    Call(String),
    #[error("guard call timed out after {0:?}")]
    Timeout(Duration),
    #[error("guard answer could not be read: {0:?}")]
    Unreadable(String),
}

pub struct Guard {
    backend: Arc<BackendHandle>,
    pub model: String,
    pub backend_name: String,
    timeout: Duration,
    max_tokens: u32,
    context_chars: usize,
    concurrency: usize,
    policies: ArcSwap<PolicySet>,
    policies_dir: PathBuf,
    pub default_policy: String,
    model_policies: HashMap<String, String>,
    /// Policies that API keys name: a reload must keep them.
    key_policies: Vec<String>,
    cache: moka::sync::Cache<[u8; 32], Reading>,
}

impl Guard {
    pub fn new(
        config: &GuardConfig,
        backend: Arc<BackendHandle>,
        model_policies: HashMap<String, String>,
        key_policies: Vec<(String, String)>,
    ) -> Result<Guard, PolicyError> {
        let set = PolicySet::load_dir(&config.policies_dir)?;
        for (key, name) in &key_policies {
            if set.get(name).is_none() {
                return Err(PolicyError {
                    file: config.policies_dir.clone(),
                    line: None,
                    key: Some(key.clone()),
                    message: format!("no policy named `{name}`"),
                });
            }
        }
        check_names(&set, config, &model_policies)?;
        Ok(Guard {
            backend_name: backend.name.clone(),
            backend,
            model: config.model.clone(),
            timeout: config.timeout,
            max_tokens: config.max_tokens,
            context_chars: config.context_chars,
            concurrency: config.concurrency,
            policies: ArcSwap::from_pointee(set),
            policies_dir: config.policies_dir.clone(),
            default_policy: config.default_policy.clone(),
            model_policies,
            key_policies: key_policies.into_iter().map(|(_, name)| name).collect(),
            cache: moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl)
                .build(),
        })
    }

    /// Re-reads the policies folder; on any error the policies in force stay.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let set = PolicySet::load_dir(&self.policies_dir)?;
        for name in self
            .model_policies
            .values()
            .chain(&self.key_policies)
            .chain(std::iter::once(&self.default_policy))
        {
            if set.get(name).is_none() {
                return Err(PolicyError {
                    file: self.policies_dir.clone(),
                    line: None,
                    key: None,
                    message: format!("policy `{name}` is used by the config but no longer exists"),
                });
            }
        }
        let count = set.policies.len();
        self.policies.store(Arc::new(set));
        Ok(count)
    }

    /// The policy for a request: the caller's key's own, else the model's, else the default.
    pub fn policy_for(&self, key_policy: Option<&str>, model: &str) -> Option<Arc<Policy>> {
        let name = key_policy
            .or_else(|| self.model_policies.get(model).map(String::as_str))
            .unwrap_or(&self.default_policy);
        self.policies.load().get(name)
    }

    pub fn policy_by_name(&self, name: &str) -> Option<Arc<Policy>> {
        self.policies.load().get(name)
    }

    pub fn default_policy(&self) -> Option<Arc<Policy>> {
        self.policies.load().get(&self.default_policy)
    }

    pub fn policy_names(&self) -> Vec<String> {
        self.policies.load().policies.keys().cloned().collect()
    }

    /// Judges every turn of a request: each with the conversation before it as context.
    pub async fn check_input(
        &self,
        policy: &Policy,
        request: &ChatRequest,
        request_id: &str,
    ) -> Judgement {
        let turns = request_turns(request);
        let mut units = Vec::new();
        for k in 0..turns.len() {
            units.extend(self.units_for(&turns[..k], &turns[k]));
        }
        self.judge_all(policy, units, request_id).await
    }

    /// Judges `text` as the model's answer (or the part of it from a window on), with the
    /// request's turns as context.
    pub async fn check_output(
        &self,
        policy: &Policy,
        context: &[Turn],
        text: &str,
        request_id: &str,
    ) -> Judgement {
        let turn = Turn {
            side: Side::Agent,
            text: text.to_owned(),
        };
        let units = self.units_for(context, &turn);
        self.judge_all(policy, units, request_id).await
    }

    /// Judges standalone texts (the moderation endpoint): each as a user message.
    pub async fn check_texts(
        &self,
        policy: &Policy,
        texts: &[String],
        request_id: &str,
    ) -> Vec<Judgement> {
        let mut out = Vec::with_capacity(texts.len());
        for text in texts {
            let turn = Turn {
                side: Side::User,
                text: text.clone(),
            };
            let units = self.units_for(&[], &turn);
            out.push(self.judge_all(policy, units, request_id).await);
        }
        out
    }

    fn units_for(&self, before: &[Turn], last: &Turn) -> Vec<Vec<Turn>> {
        conversations_for(before, last, self.context_chars)
    }

    async fn judge_all(
        &self,
        policy: &Policy,
        units: Vec<Vec<Turn>>,
        request_id: &str,
    ) -> Judgement {
        let calls = units
            .into_iter()
            .map(|turns| async move { self.judge(policy, &turns, request_id).await });
        let results: Vec<Judgement> = futures_util::stream::iter(calls)
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut all = Judgement::default();
        for judgement in results {
            all.merge(judgement);
        }
        all
    }

    /// One guard call (or cache hit) for one conversation whose last turn is judged.
    async fn judge(&self, policy: &Policy, turns: &[Turn], request_id: &str) -> Judgement {
        if turns.last().is_none_or(|t| t.text.trim().is_empty()) {
            return Judgement::default();
        }
        let rendered = prompt::render(policy, turns);
        let wire = prompt::wire_text(&rendered.text);
        let key: [u8; 32] = {
            let mut hasher = Sha256::new();
            hasher.update(policy.version.as_bytes());
            hasher.update([0]);
            hasher.update(self.model.as_bytes());
            hasher.update([0]);
            hasher.update(wire.as_bytes());
            hasher.finalize().into()
        };
        let reading = match self.cache.get(&key) {
            Some(reading) => reading,
            None => match self.call(wire, request_id).await {
                Ok(reading) => {
                    self.cache.insert(key, reading.clone());
                    reading
                }
                Err(err) => {
                    tracing::warn!(request_id, error = %err, guard = %self.backend_name, "guard call failed");
                    return Judgement {
                        failure: Some(err.to_string()),
                        ..Judgement::default()
                    };
                }
            },
        };
        judgement_of(policy, &rendered.codes, &reading)
    }

    async fn call(&self, prompt: &str, request_id: &str) -> Result<Reading, GuardError> {
        let call =
            self.backend
                .backend
                .complete_raw(&self.model, prompt, self.max_tokens, request_id);
        let answer = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| GuardError::Timeout(self.timeout))?
            .map_err(|err| GuardError::Call(err.to_string()))?;
        verdict::parse(&answer)
            .ok_or_else(|| GuardError::Unreadable(answer.chars().take(200).collect()))
    }

    /// Counts of the verdict cache, for tests and metrics.
    pub fn cache_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

fn check_names(
    set: &PolicySet,
    config: &GuardConfig,
    model_policies: &HashMap<String, String>,
) -> Result<(), PolicyError> {
    let missing = |name: &str, key: String| PolicyError {
        file: config.policies_dir.clone(),
        line: None,
        key: Some(key),
        message: format!(
            "no policy named `{name}` (found: {})",
            set.policies.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    if set.get(&config.default_policy).is_none() {
        return Err(missing(
            &config.default_policy,
            "guard.default_policy".to_owned(),
        ));
    }
    for (model, name) in model_policies {
        if set.get(name).is_none() {
            return Err(missing(name, format!("models.{model}.policy")));
        }
    }
    Ok(())
}

/// The conversations that judge `last`: one with as much earlier context as `budget`
/// characters allow (oldest turns dropped first, never `last`), or, when `last` alone is over
/// the budget, one per overlapping piece of it.
pub fn conversations_for(before: &[Turn], last: &Turn, budget: usize) -> Vec<Vec<Turn>> {
    let length = last.text.chars().count();
    if length > budget {
        let overlap = (budget / 4).min(1000);
        return pieces(&last.text, budget, overlap)
            .into_iter()
            .map(|piece| {
                vec![Turn {
                    side: last.side,
                    text: piece.to_owned(),
                }]
            })
            .collect();
    }
    let mut used = length;
    let mut start = before.len();
    while start > 0 {
        let size = before[start - 1].text.chars().count();
        if used + size > budget {
            break;
        }
        used += size;
        start -= 1;
    }
    let mut conversation = before[start..].to_vec();
    conversation.push(last.clone());
    vec![conversation]
}

/// Maps a reading to the policy's categories and actions.
fn judgement_of(policy: &Policy, codes: &[String], reading: &Reading) -> Judgement {
    let mut judgement = Judgement::default();
    let Reading::Unsafe(indexes) = reading else {
        return judgement;
    };
    if indexes.is_empty() {
        // Unsafe without a category: the conservative reading is a block.
        judgement.blocked.push("unspecified".to_owned());
        return judgement;
    }
    for &index in indexes {
        let category = codes.get(index).and_then(|id| policy.category(id));
        match category {
            Some(c) if c.action == Action::Flag => judgement.flagged.push(c.id.clone()),
            Some(c) => judgement.blocked.push(c.id.clone()),
            None => judgement.blocked.push(format!("S{}", index + 1)),
        }
    }
    judgement
}

/// Every turn of a request the model will see, tool definitions included (their names and
/// descriptions are text in the model's prompt).
pub fn request_turns(request: &ChatRequest) -> Vec<Turn> {
    let mut turns = turns_of(&request.messages);
    let mut preamble = String::new();
    for field in scope::JUDGED_REQUEST_FIELDS {
        if let Some(value) = request.extra.get(*field).filter(|v| !v.is_null()) {
            if !preamble.is_empty() {
                preamble.push('\n');
            }
            // Tool definitions keep their old label, so verdicts cached for them still hold.
            let label = if *field == "tools" { "Tools" } else { field };
            preamble.push_str(&format!("{label}:\n{value}"));
        }
    }
    if !preamble.is_empty() {
        let text = preamble;
        match turns.first_mut() {
            Some(first) if first.side == Side::User => {
                first.text = format!("{text}\n\n{}", first.text)
            }
            _ => turns.insert(
                0,
                Turn {
                    side: Side::User,
                    text,
                },
            ),
        }
    }
    turns
}

/// The turns of a chat request as the guard sees them: system, developer, user and tool
/// messages on the user side, assistant messages (with their tool calls) on the agent side,
/// consecutive messages of one side joined.
pub fn turns_of(messages: &[ChatMessage]) -> Vec<Turn> {
    let mut turns: Vec<Turn> = Vec::new();
    for message in messages {
        let side = match message.role {
            Role::Assistant => Side::Agent,
            _ => Side::User,
        };
        let mut text = String::new();
        match &message.content {
            Some(MessageContent::Text(t)) => text.push_str(t),
            Some(MessageContent::Parts(parts)) => {
                for t in parts.iter().filter_map(ContentPart::text_content) {
                    push_line(&mut text, t);
                }
            }
            None => {}
        }
        // The other text a message carries (its author's name, a refusal, earlier reasoning),
        // labelled as the model would see it named.
        for field in scope::MESSAGE_TEXT_FIELDS {
            if let Some(value) = message.extra.get(*field).and_then(|v| v.as_str())
                && !value.trim().is_empty()
            {
                push_line(&mut text, &format!("({field}: {value})"));
            }
        }
        if let Some(call) = message.extra.get("function_call").filter(|v| !v.is_null()) {
            push_line(&mut text, &format!("function_call: {call}"));
        }
        for call in message.tool_calls.iter().flatten() {
            push_line(
                &mut text,
                &format!("{}({})", call.function.name, call.function.arguments),
            );
        }
        if text.trim().is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some(last) if last.side == side => {
                last.text.push_str("\n\n");
                last.text.push_str(&text);
            }
            _ => turns.push(Turn { side, text }),
        }
    }
    turns
}

/// Appends `line` to `text`, on a line of its own when `text` already has some.
fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(line);
}

/// Splits `text` into pieces of at most `size` characters, each starting `overlap`
/// characters before the previous one ended, so a phrase cut at a boundary is whole in one.
pub fn pieces(text: &str, size: usize, overlap: usize) -> Vec<&str> {
    let size = size.max(1);
    let step = size.saturating_sub(overlap).max(1);
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let chars = boundaries.len() - 1;
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + size).min(chars);
        out.push(&text[boundaries[start]..boundaries[end]]);
        if end == chars {
            break;
        }
        start += step;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: serde_json::Value) -> ChatMessage {
        serde_json::from_value(serde_json::json!({"role": role, "content": content})).unwrap()
    }

    #[test]
    fn every_role_and_part_is_in_scope() {
        let mut assistant = message("assistant", serde_json::Value::Null);
        assistant.tool_calls = Some(vec![crate::types::ToolCall {
            id: Some("c1".into()),
            kind: "function".into(),
            function: crate::types::FunctionCall {
                name: "lookup".into(),
                arguments: "{\"q\":\"x\"}".into(),
            },
        }]);
        let messages = vec![
            message("system", "be nice".into()),
            message(
                "user",
                serde_json::json!([{"type": "text", "text": "part one"}, {"type": "image_url", "image_url": {"url": "data:x"}}, {"type": "text", "text": "part two"}]),
            ),
            assistant,
            message("tool", "tool result".into()),
        ];
        let turns = turns_of(&messages);
        assert_eq!(turns.len(), 3);
        assert_eq!(turns[0].side, Side::User);
        assert_eq!(turns[0].text, "be nice\n\npart one\npart two");
        assert_eq!(turns[1].text, "lookup({\"q\":\"x\"})");
        assert_eq!(
            turns[2],
            Turn {
                side: Side::User,
                text: "tool result".into()
            }
        );
    }

    #[test]
    fn long_conversations_drop_the_oldest_turns_and_long_turns_go_in_pieces() {
        let turn = |side, text: &str| Turn {
            side,
            text: text.to_owned(),
        };
        let before = vec![
            turn(Side::User, &"a".repeat(50)),
            turn(Side::Agent, &"b".repeat(30)),
            turn(Side::User, &"c".repeat(30)),
        ];
        let last = turn(Side::Agent, &"d".repeat(30));
        let units = conversations_for(&before, &last, 100);
        assert_eq!(units.len(), 1);
        let texts: Vec<char> = units[0]
            .iter()
            .map(|t| t.text.chars().next().unwrap())
            .collect();
        assert_eq!(
            texts,
            vec!['b', 'c', 'd'],
            "the oldest turn is dropped, the judged one kept"
        );
        let long = turn(Side::User, &"x".repeat(250));
        let units = conversations_for(&before, &long, 100);
        assert_eq!(units.len(), 3, "three overlapping pieces of 100");
        assert!(
            units
                .iter()
                .all(|u| u.len() == 1 && u[0].text.len() <= 100 && u[0].side == Side::User)
        );
    }

    #[test]
    fn pieces_overlap_and_cover_everything() {
        let text = "abcdefghij";
        assert_eq!(pieces(text, 4, 1), vec!["abcd", "defg", "ghij"]);
        assert_eq!(pieces("héllo wörld", 5, 2), vec!["héllo", "lo wö", "wörld"]);
        assert_eq!(pieces("ab", 5, 2), vec!["ab"]);
    }
}
