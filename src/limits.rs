//! Rate limits: per key, requests per minute (GCRA, through `governor`) and requests in flight;
//! over all callers, requests in flight. Past a key's limit: 429 with `Retry-After` and OpenAI's
//! `x-ratelimit-*` headers; past the replica's: 503 with `Retry-After`, at once, never a queue.
//! Counters live in this process: behind a load balancer each replica counts its own share.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter, clock::DefaultClock, state::InMemoryState, state::NotKeyed};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// A rate and its limiter; shared with the next generation when a reload leaves the rate as it
/// was, so the count goes on.
type Rate = Arc<(u32, Limiter)>;

struct KeyLimits {
    per_minute: Option<Rate>,
    tokens: Option<Rate>,
    in_flight: Option<(u32, Arc<Semaphore>)>,
}

pub struct Limits {
    keys: HashMap<String, KeyLimits>,
    in_flight: (u32, Arc<Semaphore>),
}

impl Limits {
    /// The limits of `config`'s keys. With `previous` (a reload), a limit whose key and number
    /// are unchanged keeps its limiter or semaphore: counts and permits held carry over.
    pub fn new(config: &Config, previous: Option<&Limits>) -> Limits {
        let rate = |n: Option<u32>, before: Option<&Rate>| -> Option<Rate> {
            let n = NonZeroU32::new(n?)?;
            match before {
                Some(rate) if rate.0 == n.get() => Some(rate.clone()),
                _ => Some(Arc::new((
                    n.get(),
                    RateLimiter::direct(Quota::per_minute(n))
                        .with_middleware::<StateInformationMiddleware>(),
                ))),
            }
        };
        let keys = config
            .keys
            .iter()
            .map(|key| {
                let before = previous.and_then(|p| p.keys.get(&key.name));
                let in_flight =
                    key.max_concurrent
                        .map(|n| match before.and_then(|b| b.in_flight.as_ref()) {
                            Some((m, semaphore)) if *m == n => (n, semaphore.clone()),
                            _ => (n, Arc::new(Semaphore::new(n as usize))),
                        });
                (
                    key.name.clone(),
                    KeyLimits {
                        per_minute: rate(
                            key.requests_per_minute,
                            before.and_then(|b| b.per_minute.as_ref()),
                        ),
                        tokens: rate(
                            key.tokens_per_minute,
                            before.and_then(|b| b.tokens.as_ref()),
                        ),
                        in_flight,
                    },
                )
            })
            .collect();
        let max = config.max_concurrent_requests;
        let in_flight = match previous {
            Some(p) if p.in_flight.0 == max => p.in_flight.clone(),
            _ => (max, Arc::new(Semaphore::new(max as usize))),
        };
        Limits { keys, in_flight }
    }
}

impl Limits {
    /// Takes `estimate` prompt tokens from the key's budget before the request goes out; the
    /// headers to add to the answer, or the refusal.
    pub fn take_tokens(&self, key: &str, estimate: u32) -> Result<HeaderMap, Response> {
        let mut headers = HeaderMap::new();
        let Some((limit, limiter)) = self.keys.get(key).and_then(|k| k.tokens.as_deref()) else {
            return Ok(headers);
        };
        let per_cell = Duration::from_secs(60) / *limit;
        set(&mut headers, "x-ratelimit-limit-tokens", limit.to_string());
        let wanted = NonZeroU32::new(estimate.max(1)).unwrap_or(NonZeroU32::MIN);
        match limiter.check_n(wanted) {
            Ok(Ok(snapshot)) => {
                let remaining = snapshot.remaining_burst_capacity();
                set(&mut headers, "x-ratelimit-remaining-tokens", remaining.to_string());
                set(&mut headers, "x-ratelimit-reset-tokens", openai_duration(per_cell * (limit - remaining)));
                Ok(headers)
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&DefaultClock::default()));
                let mut response = ApiError::RateLimited {
                    message: format!(
                        "Rate limit reached: {limit} tokens per minute for this key (this request needs about {estimate}). Retry in {}.",
                        openai_duration(wait)
                    ),
                }
                .into_response();
                let out = response.headers_mut();
                out.extend(headers);
                set(out, "x-ratelimit-remaining-tokens", "0".to_owned());
                set(out, "x-ratelimit-reset-tokens", openai_duration(wait));
                set(out, "retry-after", wait.as_secs_f64().ceil().max(1.0).to_string());
                Err(response)
            }
            Err(_) => Err(ApiError::InvalidRequest {
                message: format!(
                    "this request needs about {estimate} tokens, more than the key's {limit} tokens per minute"
                ),
                param: Some("messages".to_owned()),
                code: Some("tokens_exceed_limit"),
            }
            .into_response()),
        }
    }

    /// Counts what the backend reported beyond the estimate (the completion, mostly), draining
    /// the budget as far as empty: an overrun makes the next request wait, but is not carried
    /// further than that.
    pub fn settle_tokens(&self, key: &str, estimate: u32, used: u64) {
        let Some((_, limiter)) = self.keys.get(key).and_then(|k| k.tokens.as_deref()) else {
            return;
        };
        let mut left = used
            .saturating_sub(u64::from(estimate))
            .min(u64::from(u32::MAX)) as u32;
        let mut step = left;
        // A check that asks for more than is left takes nothing: take what there is, halving.
        while left > 0 && step > 0 {
            let take = step.min(left);
            match NonZeroU32::new(take).map(|n| limiter.check_n(n)) {
                Some(Ok(Ok(_))) => left -= take,
                _ => step /= 2,
            }
        }
    }

    pub fn limits_tokens(&self, key: &str) -> bool {
        self.keys.get(key).is_some_and(|k| k.tokens.is_some())
    }
}

/// OpenAI writes durations like `6m0s`, `1s`, `120ms`.
fn openai_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds = duration.as_secs_f64().ceil() as u64;
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m{}s", seconds / 60, seconds % 60)
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

/// Takes the permits a request needs (the replica's, the key's) or refuses it; `caller` is the
/// key name authentication found.
pub async fn enforce(
    limits: Arc<Limits>,
    metrics: &Metrics,
    caller: Option<String>,
    request: Request,
    next: Next,
) -> Response {
    let limits = &limits;
    let Ok(global) = limits.in_flight.1.clone().try_acquire_owned() else {
        metrics.rate_limited("-", "replica_in_flight");
        let mut response = ApiError::Unavailable {
            message: "Warden is at its limit of requests in flight; retry shortly".to_owned(),
            code: "server_overloaded",
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let mut permits: Vec<OwnedSemaphorePermit> = vec![global];
    let key_limits = caller.as_deref().and_then(|name| limits.keys.get(name));
    let mut rate_headers = HeaderMap::new();
    if let Some(key) = key_limits {
        if let Some((limit, limiter)) = key.per_minute.as_deref() {
            let per_cell = Duration::from_secs(60) / *limit;
            set(
                &mut rate_headers,
                "x-ratelimit-limit-requests",
                limit.to_string(),
            );
            match limiter.check() {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    set(
                        &mut rate_headers,
                        "x-ratelimit-remaining-requests",
                        remaining.to_string(),
                    );
                    set(
                        &mut rate_headers,
                        "x-ratelimit-reset-requests",
                        openai_duration(per_cell * (limit - remaining)),
                    );
                }
                Err(not_until) => {
                    metrics.rate_limited(caller.as_deref().unwrap_or("-"), "requests_per_minute");
                    let wait = not_until
                        .wait_time_from(governor::clock::Clock::now(&DefaultClock::default()));
                    let mut response = ApiError::RateLimited {
                        message: format!("Rate limit reached: {limit} requests per minute for this key. Retry in {}.", openai_duration(wait)),
                    }
                    .into_response();
                    let headers = response.headers_mut();
                    headers.extend(rate_headers);
                    set(headers, "x-ratelimit-remaining-requests", "0".to_owned());
                    set(
                        headers,
                        "x-ratelimit-reset-requests",
                        openai_duration(per_cell * *limit),
                    );
                    set(
                        headers,
                        "retry-after",
                        wait.as_secs_f64().ceil().max(1.0).to_string(),
                    );
                    return response;
                }
            }
        }
        if let Some((_, in_flight)) = &key.in_flight {
            match in_flight.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => {
                    metrics.rate_limited(caller.as_deref().unwrap_or("-"), "key_in_flight");
                    let mut response = ApiError::RateLimited {
                        message:
                            "Too many requests in flight for this key; retry when one has finished."
                                .to_owned(),
                    }
                    .into_response();
                    response.headers_mut().extend(rate_headers);
                    set(response.headers_mut(), "retry-after", "1".to_owned());
                    return response;
                }
            }
        }
    }
    let mut response = next.run(request).await;
    response.headers_mut().extend(rate_headers);
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        // The body is complete in memory: the request is done.
        return response;
    }
    // A stream counts as in flight for as long as it runs: the permits go with its body and
    // are released when it ends or the client goes away.
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &permits;
        chunk
    }));
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_openai_does() {
        assert_eq!(openai_duration(Duration::from_millis(120)), "120ms");
        assert_eq!(openai_duration(Duration::from_millis(5200)), "6s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
    }
}
