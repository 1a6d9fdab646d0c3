//! Admin views for the console (and anyone with the admin token): the audit log, filtered, and
//! the policies with who uses them. Read-only; the knowledge base has its own routes.

use axum::Json;
use axum::extract::Query;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use crate::error::ApiError;
use crate::server::handlers::collections::Admin;
use crate::server::state::AppState;

/// How much of the end of the audit log one query reads: the newest entries.
const AUDIT_WINDOW_BYTES: u64 = 16 * 1024 * 1024;
const AUDIT_FILTERS: [&str; 8] = [
    "key", "tenant", "model", "policy", "turn", "category", "decision", "limit",
];
const AUDIT_RANGE: [&str; 2] = ["since", "until"];

/// `GET /v1/admin/audit?key=&tenant=&model=&policy=&turn=&category=&decision=&since=&until=&limit=`:
/// matching entries, newest first. `since` / `until` are RFC 3339 times (UTC, as the log writes
/// them). Content is returned only while the config records it (`include_content`).
pub async fn audit(
    _: Admin,
    state: AppState,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(key) = query
        .keys()
        .find(|k| !AUDIT_FILTERS.contains(&k.as_str()) && !AUDIT_RANGE.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("`{key}` is not an audit filter"),
            Some(key.clone()),
        ));
    }
    let limit = match query.get("limit") {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("`limit` must be from 1 to 1000", Some("limit".to_owned()))
            })?,
    };
    let Some((path, include_content)) = state.config.audit.clone() else {
        return Ok(Json(
            json!({"object": "list", "enabled": false, "includes_content": false, "matched": 0, "data": []}),
        ));
    };
    let (text, truncated) = tokio::task::spawn_blocking(move || read_tail(&path))
        .await
        .map_err(|err| ApiError::Internal {
            detail: format!("reading the audit log: {err}"),
        })?
        .map_err(|err| ApiError::Internal {
            detail: format!("reading the audit log: {err}"),
        })?;
    let mut matched = 0;
    let mut data = Vec::new();
    for line in text.lines().rev() {
        let Ok(mut entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if !matches(&entry, &query) {
            continue;
        }
        matched += 1;
        if data.len() < limit {
            if !include_content && let Some(object) = entry.as_object_mut() {
                object.remove("content");
            }
            data.push(entry);
        }
    }
    Ok(Json(json!({
        "object": "list",
        "enabled": true,
        "includes_content": include_content,
        "matched": matched,
        "truncated": truncated,
        "data": data,
    })))
}

fn matches(entry: &Value, query: &HashMap<String, String>) -> bool {
    let field = |name: &str| entry.get(name).and_then(Value::as_str).unwrap_or_default();
    let time = field("time");
    query.iter().all(|(name, wanted)| match name.as_str() {
        "limit" => true,
        "decision" => field("verdict") == wanted,
        "category" => entry
            .get("categories")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c.as_str() == Some(wanted))),
        // RFC 3339 UTC times of one format sort as text.
        "since" => time >= wanted.as_str(),
        "until" => time <= wanted.as_str(),
        other => field(other) == wanted,
    })
}

/// The last `AUDIT_WINDOW_BYTES` of the file, from a line start; whether older lines were left.
fn read_tail(path: &std::path::Path) -> std::io::Result<(String, bool)> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(AUDIT_WINDOW_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0
        && let Some(end) = text.find('\n')
    {
        text.drain(..=end);
    }
    Ok((text, start > 0))
}

/// `GET /v1/admin/policies`: every policy, its settings and categories, the keys and models
/// that name it, and the last reload.
pub async fn policies(_: Admin, state: AppState) -> Json<Value> {
    let last_reload = state
        .metrics
        .last_reload()
        .map(|(time, outcome, error)| json!({"time": time, "outcome": outcome, "error": error}));
    let Some(guard) = &state.guard else {
        return Json(
            json!({"object": "list", "enabled": false, "data": [], "last_reload": last_reload}),
        );
    };
    let default = guard.default_policy().map(|p| p.name.clone());
    let mut names = guard.policy_names();
    names.sort();
    let mut data = Vec::new();
    for name in names {
        let Some(policy) = guard.policy_by_name(&name) else {
            continue;
        };
        let keys: Vec<&str> = state
            .config
            .keys
            .iter()
            .filter(|k| k.policy.as_deref() == Some(name.as_str()))
            .map(|k| k.name.as_str())
            .collect();
        let models: Vec<&str> = state
            .config
            .models
            .iter()
            .filter(|m| m.policy.as_deref() == Some(name.as_str()))
            .map(|m| m.id.as_str())
            .collect();
        let categories: Vec<Value> = policy
            .categories
            .iter()
            .map(|c| json!({"id": c.id, "name": c.name, "action": c.action}))
            .collect();
        data.push(json!({
            "name": policy.name,
            "default": default.as_deref() == Some(policy.name.as_str()),
            "version": policy.version,
            "description": policy.description,
            "check_input": policy.check_input,
            "check_output": policy.check_output,
            "check_retrieved": policy.check_retrieved,
            "on_block": policy.on_block,
            "fail_mode": policy.fail_mode,
            "enforcement": policy.enforcement,
            "images": policy.images,
            "stream_mode": policy.stream_mode,
            "window_chars": policy.window_chars,
            "categories": categories,
            "keys": keys,
            "models": models,
        }));
    }
    Json(json!({"object": "list", "enabled": true, "data": data, "last_reload": last_reload}))
}
