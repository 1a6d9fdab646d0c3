//! `/healthz` says the process is alive; `/readyz` checks every dependency.

use axum::Json;
use axum::http::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

use crate::server::state::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready` when every model has at least one backend up, and the guard too when required.
    pub status: &'static str,
    pub backends: BTreeMap<String, BackendStatus>,
    pub models: BTreeMap<String, ModelStatus>,
    pub guard: GuardStatus,
    pub knowledge: KnowledgeStatus,
    pub limits: LimitsStatus,
}

#[derive(Debug, Serialize)]
pub struct LimitsStatus {
    /// `local` (each replica counts its own) or `redis` (shared by every replica).
    pub store: &'static str,
    /// With `redis`: `up` or `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `redis`: what requests meet while it is down, `local` or `fail`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_unavailable: Option<crate::config::StoreFallback>,
    /// Whether Warden is not ready while the store is down (`on_store_unavailable = "fail"`).
    pub required: bool,
}

#[derive(Debug, Serialize)]
pub struct KnowledgeStatus {
    /// `up`, `down` or `disabled` (no `[milvus]`).
    pub milvus: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The embedding model, when one is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<String>,
    /// Whether Warden is not ready while Milvus is down (`retrieval.on_unavailable = "fail"`).
    pub required: bool,
    /// Whether the server has full-text search (BM25), so new collections are searched hybrid:
    /// `true`, `false` (dense only), or absent while Milvus has not been reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_text: Option<bool>,
    /// The search mode of collections that do not name their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct GuardStatus {
    /// `up`, `down` (its backend does not answer) or `disabled` (no `[guard]`).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whether the guard backend lists the guard model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_listed: Option<bool>,
    /// Whether Warden is not ready while the guard is down (the default policy fails closed).
    pub required: bool,
    pub policies: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub status: &'static str,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub status: &'static str,
    pub backends_up: Vec<String>,
    /// Upstream model names that a reachable backend does not list (e.g. not pulled yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_listed_upstream: Vec<String>,
}

pub async fn readyz(state: AppState) -> (StatusCode, Json<Readiness>) {
    let timeout = state.config.server.readiness_timeout;
    let probes = state.pool.backends().iter().map(|handle| async move {
        let started = Instant::now();
        let result = handle.backend.probe(timeout).await;
        (handle.name.clone(), started.elapsed(), result)
    });
    let milvus_probe = async {
        match &state.knowledge {
            None => None,
            Some(knowledge) => Some(
                tokio::time::timeout(timeout, async {
                    knowledge.store.ping().await?;
                    let known = knowledge.store.full_text_known();
                    if known.is_none() {
                        // Found out once, in the background: the probe makes and indexes a
                        // collection, longer than a readiness check should wait.
                        let knowledge = knowledge.clone();
                        tokio::spawn(async move { knowledge.store.full_text().await });
                    }
                    Ok::<_, crate::knowledge::store::StoreError>(known)
                })
                .await,
            ),
        }
    };
    let limits_probe = async {
        match state.access.limits.shared() {
            None => LimitsStatus {
                store: "local",
                status: None,
                error: None,
                on_unavailable: None,
                required: false,
            },
            Some(store) => {
                let health = store.probe().await;
                LimitsStatus {
                    store: "redis",
                    status: Some(if health.up { "up" } else { "down" }),
                    error: health.error,
                    on_unavailable: Some(store.on_unavailable()),
                    required: store.on_unavailable() == crate::config::StoreFallback::Fail,
                }
            }
        }
    };
    let (results, milvus, limits) = tokio::join!(
        futures_util::future::join_all(probes),
        milvus_probe,
        limits_probe
    );
    let full_text = match &milvus {
        Some(Ok(Ok(full_text))) => *full_text,
        _ => None,
    };
    let knowledge = KnowledgeStatus {
        full_text,
        mode: state.knowledge.as_ref().map(|k| {
            // Not known yet counts as full text: the probe has not said otherwise.
            crate::knowledge::effective_mode(k.retrieval.mode, full_text != Some(false)).as_str()
        }),
        milvus: match &milvus {
            None => "disabled",
            Some(Ok(Ok(_))) => "up",
            Some(_) => "down",
        },
        error: match milvus {
            Some(Ok(Err(err))) => {
                tracing::warn!(error = %err, "readiness: Milvus is down");
                Some("Milvus does not answer".to_owned())
            }
            Some(Err(_)) => Some("Milvus did not answer in time".to_owned()),
            _ => None,
        },
        embeddings: state.embedder.as_ref().map(|e| e.model_id.clone()),
        required: state
            .knowledge
            .as_ref()
            .is_some_and(|k| k.retrieval.on_unavailable == crate::config::OnUnavailable::Fail),
    };

    let mut backends = BTreeMap::new();
    let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, elapsed, result) in results {
        let latency_ms = elapsed.as_millis() as u64;
        let status = match result {
            Ok(models) => {
                served.insert(name.clone(), models);
                BackendStatus {
                    status: "up",
                    latency_ms,
                    error: None,
                    code: None,
                }
            }
            Err(err) => {
                tracing::warn!(backend = %name, error = %err, "readiness probe failed");
                let envelope = err.client_envelope();
                BackendStatus {
                    status: "down",
                    latency_ms,
                    error: Some(envelope.message),
                    code: envelope.code,
                }
            }
        };
        backends.insert(name, status);
    }

    let mut models = BTreeMap::new();
    for (id, targets) in state.pool.model_targets() {
        let mut up = Vec::new();
        let mut not_listed = Vec::new();
        for (backend, upstream_model) in targets {
            if let Some(listed) = served.get(&backend) {
                up.push(backend);
                if !lists_model(listed, &upstream_model) {
                    not_listed.push(upstream_model);
                }
            }
        }
        let status = if up.is_empty() {
            "unavailable"
        } else {
            "ready"
        };
        models.insert(
            id,
            ModelStatus {
                status,
                backends_up: up,
                not_listed_upstream: not_listed,
            },
        );
    }
    let guard = match &state.guard {
        None => GuardStatus {
            status: "disabled",
            backend: None,
            model: None,
            model_listed: None,
            required: false,
            policies: Vec::new(),
        },
        Some(guard) => {
            let listed = served.get(&guard.backend_name);
            let required = guard
                .default_policy()
                .is_some_and(|p| p.fail_mode == crate::guard::policy::FailMode::FailClosed);
            GuardStatus {
                status: if listed.is_some() { "up" } else { "down" },
                backend: Some(guard.backend_name.clone()),
                model: Some(guard.model.clone()),
                model_listed: listed.map(|l| lists_model(l, &guard.model)),
                required,
                policies: guard.policy_names(),
            }
        }
    };
    let ready = models.values().all(|m| m.status == "ready")
        && !(guard.required && guard.status == "down")
        && !(knowledge.required && knowledge.milvus == "down")
        && !(limits.required && limits.status == Some("down"));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        backends,
        models,
        guard,
        knowledge,
        limits,
    };
    (code, Json(readiness))
}

/// Ollama lists `llama3.2:latest` for a model pulled as `llama3.2`.
fn lists_model(listed: &[String], model: &str) -> bool {
    listed
        .iter()
        .any(|name| name == model || name.strip_suffix(":latest") == Some(model))
}

/// `GET /metrics`.
pub async fn metrics(state: AppState) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        {
            let mut text = state.metrics.render();
            if let Some(store) = state.access.limits.shared() {
                text.push_str(&crate::server::metrics::limits_store_gauge(
                    store.health().up,
                ));
            }
            text
        },
    )
}
