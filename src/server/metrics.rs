//! `GET /metrics` in the Prometheus text format: what operators watch. Counters and histograms
//! live in this process (per replica) behind short `std` mutexes; label values come from a small
//! set (routes, configured model and key names, verdicts), never from message content.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Counter(Mutex<BTreeMap<Labels, u64>>);

impl Counter {
    fn add(&self, labels: Labels, n: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(labels).or_insert(0) += n;
    }
}

/// Per bucket counts, sum and count of one labelled series.
type Series = (Vec<u64>, f64, u64);

#[derive(Default)]
struct Histogram(Mutex<BTreeMap<Labels, Series>>);

impl Histogram {
    fn observe(&self, labels: Labels, value: Duration) {
        let seconds = value.as_secs_f64();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(labels)
            .or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                entry.0[i] += 1;
            }
        }
        entry.1 += seconds;
        entry.2 += 1;
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: Counter,
    request_seconds: Histogram,
    first_token_seconds: Histogram,
    stage_seconds: Histogram,
    guard_verdicts: Counter,
    unjudged_parts: Counter,
    upstream_errors: Counter,
    rate_limited: Counter,
    limits_store_unavailable: Counter,
    retrieval_sources: Counter,
    tokens: Counter,
    reloads: Counter,
    streams_in_flight: AtomicI64,
    /// The last reload: when (RFC 3339), its outcome, and what failed. For the console.
    last_reload: std::sync::Mutex<Option<(String, &'static str, Option<String>)>>,
}

/// Decrements the in-flight stream gauge when the stream is dropped (ended or abandoned).
pub struct StreamGauge(std::sync::Arc<Metrics>);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.streams_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl Metrics {
    /// The route label: the path for known routes, a pattern for the knowledge-base routes.
    pub fn route_of(path: &str) -> &'static str {
        match path {
            "/v1/chat/completions" => "/v1/chat/completions",
            "/v1/models" => "/v1/models",
            "/v1/embeddings" => "/v1/embeddings",
            "/v1/moderations" => "/v1/moderations",
            "/v1/responses" => "/v1/responses",
            p if p.starts_with("/v1/responses/") => "/v1/responses/{id}",
            "/v1/collections" => "/v1/collections",
            "/healthz" => "/healthz",
            "/readyz" => "/readyz",
            "/metrics" => "/metrics",
            p if p.starts_with("/v1/models/") => "/v1/models/{id}",
            p if p.starts_with("/v1/collections/") => "/v1/collections/{name}/...",
            _ => "other",
        }
    }

    pub fn request(
        &self,
        route: &'static str,
        model: &str,
        key: &str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests.add(
            vec![
                ("route", route.to_owned()),
                ("model", model.to_owned()),
                ("key", key.to_owned()),
                ("status", status.to_string()),
            ],
            1,
        );
        self.request_seconds
            .observe(vec![("route", route.to_owned())], elapsed);
    }

    pub fn first_token(&self, model: &str, elapsed: Duration) {
        self.first_token_seconds
            .observe(vec![("model", model.to_owned())], elapsed);
    }

    /// Time spent in one stage of the request path: `guard_input`, `retrieval`, `upstream_first_chunk`, …
    pub fn stage(&self, stage: &'static str, elapsed: Duration) {
        self.stage_seconds
            .observe(vec![("stage", stage.to_owned())], elapsed);
    }

    /// Content parts a policy lets through without a guard reading them (images under
    /// `images = "pass"`).
    pub fn unjudged_parts(&self, policy: &str, kind: &'static str, count: usize) {
        self.unjudged_parts.add(
            vec![("policy", policy.to_owned()), ("type", kind.to_owned())],
            count as u64,
        );
    }

    pub fn guard_verdict(
        &self,
        policy: &str,
        turn: &'static str,
        verdict: &'static str,
        categories: &[String],
    ) {
        if categories.is_empty() {
            self.guard_verdicts.add(
                vec![
                    ("policy", policy.to_owned()),
                    ("turn", turn.to_owned()),
                    ("verdict", verdict.to_owned()),
                    ("category", String::new()),
                ],
                1,
            );
        }
        for category in categories {
            self.guard_verdicts.add(
                vec![
                    ("policy", policy.to_owned()),
                    ("turn", turn.to_owned()),
                    ("verdict", verdict.to_owned()),
                    ("category", category.clone()),
                ],
                1,
            );
        }
    }

    pub fn upstream_error(&self, backend: &str, kind: &'static str) {
        self.upstream_errors.add(
            vec![("backend", backend.to_owned()), ("kind", kind.to_owned())],
            1,
        );
    }

    pub fn rate_limited(&self, key: &str, reason: &'static str) {
        self.rate_limited.add(
            vec![("key", key.to_owned()), ("reason", reason.to_owned())],
            1,
        );
    }

    /// A request that met a shared limits store that did not answer, by what it got
    /// (`local`: counted in this replica; `refused`: 503).
    pub fn limits_store_unavailable(&self, outcome: &'static str) {
        self.limits_store_unavailable
            .add(vec![("outcome", outcome.to_owned())], 1);
    }

    /// Tokens as the backend counted them (`usage`), by key name and direction (`prompt`,
    /// `completion`).
    pub fn tokens(&self, key: &str, usage: &crate::types::Usage) {
        self.tokens.add(
            vec![("key", key.to_owned()), ("direction", "prompt".to_owned())],
            usage.prompt_tokens,
        );
        self.tokens.add(
            vec![
                ("key", key.to_owned()),
                ("direction", "completion".to_owned()),
            ],
            usage.completion_tokens,
        );
    }

    pub fn retrieval_sources(&self, collection: &str, count: usize) {
        self.retrieval_sources
            .add(vec![("collection", collection.to_owned())], count as u64);
    }

    /// A SIGHUP reload, by outcome (`ok`, `failed`), with what failed (the config, or the
    /// policies beside a config that loaded).
    pub fn reload(&self, outcome: &'static str, error: Option<String>) {
        self.reloads.add(vec![("outcome", outcome.to_owned())], 1);
        let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some((crate::server::audit::humantime_now(), outcome, error));
    }

    /// The last reload, if there was one: (time, outcome, error).
    pub fn last_reload(&self) -> Option<(String, &'static str, Option<String>)> {
        self.last_reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stream_started(self: &std::sync::Arc<Self>) -> StreamGauge {
        self.streams_in_flight.fetch_add(1, Ordering::Relaxed);
        StreamGauge(self.clone())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter); 9] = [
            (
                "warden_tokens_total",
                "Tokens by key name and direction, as the backends reported them.",
                &self.tokens,
            ),
            (
                "warden_requests_total",
                "Requests by route, model, key name and status.",
                &self.requests,
            ),
            (
                "warden_guard_verdicts_total",
                "Guard decisions by policy, turn (input/output), verdict and category.",
                &self.guard_verdicts,
            ),
            (
                "warden_unjudged_parts_total",
                "Content parts forwarded without a guard reading them (policy `images = \"pass\"`), by policy and type.",
                &self.unjudged_parts,
            ),
            (
                "warden_upstream_errors_total",
                "Backend failures by backend and kind.",
                &self.upstream_errors,
            ),
            (
                "warden_rate_limited_total",
                "Requests refused by a limit, by key name and reason.",
                &self.rate_limited,
            ),
            (
                "warden_limits_store_unavailable_total",
                "Requests that met the shared limits store down, by outcome (local: counted in this replica; refused: 503).",
                &self.limits_store_unavailable,
            ),
            (
                "warden_retrieval_sources_total",
                "Retrieved chunks injected into prompts, by collection.",
                &self.retrieval_sources,
            ),
            (
                "warden_config_reloads_total",
                "Config reloads (SIGHUP) by outcome; a failed one keeps the config in force.",
                &self.reloads,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let map = counter.0.lock().unwrap_or_else(|e| e.into_inner());
            for (labels, value) in map.iter() {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
        }
        let histograms: [(&str, &str, &Histogram); 3] = [
            (
                "warden_request_duration_seconds",
                "Time to the response head, by route (for streams: to the first chunk).",
                &self.request_seconds,
            ),
            (
                "warden_time_to_first_token_seconds",
                "Time to the first streamed chunk sent to the client, by model.",
                &self.first_token_seconds,
            ),
            (
                "warden_stage_duration_seconds",
                "Time spent in each stage of the request path.",
                &self.stage_seconds,
            ),
        ];
        for (name, help, histogram) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            let map = histogram.0.lock().unwrap_or_else(|e| e.into_inner());
            for (labels, (buckets, sum, count)) in map.iter() {
                for (bound, n) in BUCKETS.iter().zip(buckets) {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {n}",
                        render_labels(labels, Some(("le", bound.to_string())))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {count}",
                    render_labels(labels, Some(("le", "+Inf".to_owned())))
                );
                let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(labels, None));
                let _ = writeln!(out, "{name}_count{} {count}", render_labels(labels, None));
            }
        }
        let _ = writeln!(
            out,
            "# HELP warden_streams_in_flight Streams being relayed now.\n# TYPE warden_streams_in_flight gauge\nwarden_streams_in_flight {}",
            self.streams_in_flight.load(Ordering::Relaxed)
        );
        out
    }
}

/// The gauge of the shared limits store, for `/metrics` when there is one.
pub fn limits_store_gauge(up: bool) -> String {
    format!(
        "# HELP warden_limits_store_up Whether the shared limits store (Redis) answers: 1 yes, 0 no (keys' limits then follow limits.on_store_unavailable).\n# TYPE warden_limits_store_up gauge\nwarden_limits_store_up {}\n",
        u8::from(up)
    )
}

/// The model a response was for, put in the response's extensions by the handler.
#[derive(Debug, Clone)]
pub struct ModelLabel(pub String);

/// The key name a response was for, put in the response's extensions by authentication.
#[derive(Debug, Clone)]
pub struct KeyLabel(pub String);

/// Counts every request by route, model, key name and status, and times it to the response
/// head. It wraps authentication, so refused keys count too (key `-`); requests refused before
/// their body is read (limits) have no model.
pub async fn count(
    metrics: &Metrics,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = Metrics::route_of(request.uri().path());
    let response = next.run(request).await;
    let model = response
        .extensions()
        .get::<ModelLabel>()
        .map(|m| m.0.as_str())
        .unwrap_or("");
    let key = response
        .extensions()
        .get::<KeyLabel>()
        .map(|k| k.0.as_str())
        .unwrap_or("-");
    metrics.request(
        route,
        model,
        key,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_escapes_labels() {
        let metrics = std::sync::Arc::new(Metrics::default());
        metrics.request(
            "/v1/chat/completions",
            "llama\"3",
            "k",
            200,
            Duration::from_millis(3),
        );
        metrics.request(
            "/v1/chat/completions",
            "llama\"3",
            "k",
            200,
            Duration::from_millis(30),
        );
        let gauge = metrics.stream_started();
        let text = metrics.render();
        assert!(text.contains("warden_requests_total{route=\"/v1/chat/completions\",model=\"llama\\\"3\",key=\"k\",status=\"200\"} 2"), "{text}");
        assert!(text.contains(
            "warden_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.005\"} 1"
        ));
        assert!(
            text.contains(
                "warden_request_duration_seconds_count{route=\"/v1/chat/completions\"} 2"
            )
        );
        assert!(text.contains("warden_streams_in_flight 1"));
        drop(gauge);
        assert!(metrics.render().contains("warden_streams_in_flight 0"));
    }
}
