//! Rate limits: per key, requests per minute (GCRA, through `governor`) and requests in flight;
//! over all callers, requests in flight. Past a key's limit: 429 with `Retry-After` and OpenAI's
//! `x-ratelimit-*` headers; past the replica's: 503 with `Retry-After`, at once, never a queue.
//! The keys' counters live in this process (`store = "local"`: behind a load balancer each
//! replica counts its own share) or in Redis, shared by every replica ([`shared`]). The replica's
//! own limit of requests in flight is always local: it protects this process.

mod shared;

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

use crate::config::{Config, StoreFallback};
use crate::error::ApiError;
use crate::server::metrics::Metrics;
use governor::clock::Clock;
pub use shared::{Admission, Lease, RateState, SharedLimits, StoreHealth, Tokens, Unavailable};

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
    shared: Option<Arc<SharedLimits>>,
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
        // A reload that names the same store keeps its connection.
        let shared = match (
            &config.shared_limits,
            previous.and_then(|p| p.shared.as_ref()),
        ) {
            (Some(wanted), Some(store)) if store.config == *wanted => Some(store.clone()),
            (Some(wanted), _) => match SharedLimits::new(wanted) {
                Ok(store) => Some(store),
                Err(err) => {
                    // The config was checked; a client that still refuses it counts here.
                    tracing::error!(error = %err, "limits.redis: no client for the shared store; keys' limits are counted in this replica");
                    None
                }
            },
            (None, _) => None,
        };
        Limits {
            keys,
            in_flight,
            shared,
        }
    }
}

impl Limits {
    /// Takes `estimate` prompt tokens from the key's budget before the request goes out; the
    /// headers to add to the answer, or the refusal.
    pub async fn take_tokens(
        &self,
        metrics: &Metrics,
        key: &str,
        estimate: u32,
    ) -> Result<HeaderMap, Response> {
        let mut headers = HeaderMap::new();
        let Some((limit, limiter)) = self.keys.get(key).and_then(|k| k.tokens.as_deref()) else {
            return Ok(headers);
        };
        let limit = *limit;
        set(&mut headers, "x-ratelimit-limit-tokens", limit.to_string());
        let wanted = estimate.max(1);
        let shared = match &self.shared {
            Some(store) => match store.take_tokens(key, limit, wanted).await {
                Ok(outcome) => Some(outcome),
                Err(Unavailable) => {
                    fall_back(store, metrics, key)?;
                    None
                }
            },
            None => None,
        };
        let outcome = match shared {
            Some(outcome) => outcome,
            None => match check_locally(limit, limiter, wanted) {
                Some(Ok(state)) => Tokens::Taken(state),
                Some(Err(wait)) => Tokens::OverBudget(wait),
                None => Tokens::TooLarge,
            },
        };
        match outcome {
            Tokens::Taken(state) => {
                set(&mut headers, "x-ratelimit-remaining-tokens", state.remaining.to_string());
                set(&mut headers, "x-ratelimit-reset-tokens", openai_duration(state.reset));
                Ok(headers)
            }
            Tokens::OverBudget(wait) => {
                metrics.rate_limited(key, "tokens_per_minute");
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
                set(out, "retry-after", retry_after(wait));
                Err(response)
            }
            Tokens::TooLarge => Err(ApiError::InvalidRequest {
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
    /// further than that. With a shared store this runs in the background (the answer is out).
    pub fn settle_tokens(&self, key: &str, estimate: u32, used: u64) {
        let Some(rate) = self.keys.get(key).and_then(|k| k.tokens.clone()) else {
            return;
        };
        let limit = rate.0;
        let extra = used.saturating_sub(u64::from(estimate));
        if extra == 0 {
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        if let (Some(store), Ok(runtime)) = (self.shared.clone(), runtime) {
            let key = key.to_owned();
            runtime.spawn(async move {
                if store.settle_tokens(&key, limit, extra).await.is_err() {
                    settle_locally(&rate.1, extra);
                }
            });
        } else {
            settle_locally(&rate.1, extra);
        }
    }

    pub fn limits_tokens(&self, key: &str) -> bool {
        self.keys.get(key).is_some_and(|k| k.tokens.is_some())
    }

    /// The shared store, when the keys' limits live in one.
    pub fn shared(&self) -> Option<&Arc<SharedLimits>> {
        self.shared.as_ref()
    }
}

/// Takes `n` cells of a local rate of `limit` per minute: what is left, or how long until they
/// fit; `None` when `n` is more than the whole burst.
fn check_locally(limit: u32, limiter: &Limiter, n: u32) -> Option<Result<RateState, Duration>> {
    match limiter.check_n(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)) {
        Ok(Ok(snapshot)) => {
            let remaining = snapshot.remaining_burst_capacity();
            let per_cell = Duration::from_secs(60) / limit;
            Some(Ok(RateState {
                remaining,
                reset: per_cell * (limit - remaining),
            }))
        }
        Ok(Err(not_until)) => Some(Err(not_until.wait_time_from(DefaultClock::default().now()))),
        Err(_) => None,
    }
}

fn settle_locally(limiter: &Limiter, extra: u64) {
    let mut left = extra.min(u64::from(u32::MAX)) as u32;
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

/// The shared store did not answer: `Ok` to count this request locally, or the 503 that
/// `on_store_unavailable = "fail"` asks for.
fn fall_back(store: &SharedLimits, metrics: &Metrics, key: &str) -> Result<(), Response> {
    match store.on_unavailable() {
        StoreFallback::Local => {
            metrics.limits_store_unavailable("local");
            Ok(())
        }
        StoreFallback::Fail => {
            metrics.limits_store_unavailable("refused");
            metrics.rate_limited(key, "store_unavailable");
            Err(retry_shortly(ApiError::Unavailable {
                message: "the shared rate-limit store does not answer, and this Warden is set to refuse requests until it does (limits.on_store_unavailable = \"fail\"); retry shortly".to_owned(),
                code: "limits_unavailable",
            }))
        }
    }
}

/// A 503 that asks to come back in a second.
fn retry_shortly(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn retry_after(wait: Duration) -> String {
    wait.as_secs_f64().ceil().max(1.0).to_string()
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

/// What a request holds while it runs: its permits in this replica, its lease in the shared
/// store. Given back before the client can see the end of the answer (see [`Held::give_back`]),
/// or dropped with the body when the client leaves first.
struct Held {
    permits: Vec<OwnedSemaphorePermit>,
    lease: Option<Lease>,
}

impl Held {
    /// Releases everything, waiting for the shared store to take the lease back: after this a
    /// request of the same key finds the slot free.
    async fn give_back(self) {
        drop(self.permits);
        if let Some(lease) = self.lease {
            lease.release().await;
        }
    }
}

/// The SSE frame that ends every chat stream Warden writes.
const STREAM_END: &[u8] = b"data: [DONE]\n\n";

/// The events that end a Responses API stream (it has no `[DONE]`).
const RESPONSE_ENDS: [&[u8]; 3] = [
    b"event: response.completed\n",
    b"event: response.incomplete\n",
    b"event: response.failed\n",
];

/// Whether one written SSE frame is the last of its stream.
fn ends_stream(frame: &[u8]) -> bool {
    frame.ends_with(STREAM_END) || RESPONSE_ENDS.iter().any(|end| frame.starts_with(end))
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
    let Ok(global) = limits.in_flight.1.clone().try_acquire_owned() else {
        metrics.rate_limited("-", "replica_in_flight");
        return retry_shortly(ApiError::Unavailable {
            message: "Warden is at its limit of requests in flight; retry shortly".to_owned(),
            code: "server_overloaded",
        });
    };
    let mut held = Held {
        permits: vec![global],
        lease: None,
    };
    let mut rate_headers = HeaderMap::new();
    if let Some((name, key)) = caller
        .as_deref()
        .and_then(|name| Some((name, limits.keys.get(name)?)))
    {
        match admit(&limits, metrics, name, key).await {
            Ok((headers, permit, lease)) => {
                rate_headers = headers;
                held.permits.extend(permit);
                held.lease = lease;
            }
            Err(refusal) => return refusal,
        }
    }
    let mut response = next.run(request).await;
    response.headers_mut().extend(rate_headers);
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        // The body is complete in memory: the request is done before the client reads it.
        held.give_back().await;
        return response;
    }
    // A stream counts as in flight for as long as it runs: what it holds goes with its body, is
    // given back just before the frame that ends it goes out, and is dropped with the body if
    // the client goes away first.
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(futures_util::stream::unfold(
        (body.into_data_stream(), Some(held)),
        |(mut body, mut held)| async move {
            let chunk = body.next().await?;
            if let Ok(bytes) = &chunk
                && ends_stream(bytes)
                && let Some(held) = held.take()
            {
                held.give_back().await;
            }
            Some((chunk, (body, held)))
        },
    ));
    Response::from_parts(parts, body)
}

/// The key's requests per minute and requests in flight: in the shared store when there is one
/// (one round trip for both), else, or while it does not answer and the config says so, here.
async fn admit(
    limits: &Limits,
    metrics: &Metrics,
    name: &str,
    key: &KeyLimits,
) -> Result<(HeaderMap, Option<OwnedSemaphorePermit>, Option<Lease>), Response> {
    let per_minute = key.per_minute.as_ref().map(|rate| rate.0);
    let slots = key.in_flight.as_ref().map(|(n, _)| *n);
    if per_minute.is_none() && slots.is_none() {
        return Ok((HeaderMap::new(), None, None));
    }
    if let Some(store) = &limits.shared {
        match store
            .admit(name, per_minute.unwrap_or(0), slots.unwrap_or(0))
            .await
        {
            Ok(Admission::Admitted { rate, lease }) => {
                let headers = match (per_minute, rate) {
                    (Some(limit), Some(state)) => rate_headers(limit, state),
                    _ => HeaderMap::new(),
                };
                return Ok((headers, None, lease));
            }
            Ok(Admission::OverRate(wait)) => {
                return Err(over_rate(metrics, name, per_minute.unwrap_or(0), wait));
            }
            Ok(Admission::NoSlot) => {
                // The rate was not charged for a refused request: no rate headers to give.
                return Err(no_slot(metrics, name, HeaderMap::new()));
            }
            Err(Unavailable) => fall_back(store, metrics, name)?,
        }
    }
    let mut headers = HeaderMap::new();
    if let Some((limit, limiter)) = key.per_minute.as_deref() {
        // One request is never more than the burst: `None` cannot come back.
        match check_locally(*limit, limiter, 1) {
            Some(Ok(state)) => headers = rate_headers(*limit, state),
            Some(Err(wait)) => return Err(over_rate(metrics, name, *limit, wait)),
            None => {}
        }
    }
    let permit = match &key.in_flight {
        Some((_, in_flight)) => match in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return Err(no_slot(metrics, name, headers)),
        },
        None => None,
    };
    Ok((headers, permit, None))
}

fn rate_headers(limit: u32, state: RateState) -> HeaderMap {
    let mut headers = HeaderMap::new();
    set(
        &mut headers,
        "x-ratelimit-limit-requests",
        limit.to_string(),
    );
    set(
        &mut headers,
        "x-ratelimit-remaining-requests",
        state.remaining.to_string(),
    );
    set(
        &mut headers,
        "x-ratelimit-reset-requests",
        openai_duration(state.reset),
    );
    headers
}

fn over_rate(metrics: &Metrics, name: &str, limit: u32, wait: Duration) -> Response {
    metrics.rate_limited(name, "requests_per_minute");
    let mut response = ApiError::RateLimited {
        message: format!(
            "Rate limit reached: {limit} requests per minute for this key. Retry in {}.",
            openai_duration(wait)
        ),
    }
    .into_response();
    let headers = response.headers_mut();
    set(headers, "x-ratelimit-limit-requests", limit.to_string());
    set(headers, "x-ratelimit-remaining-requests", "0".to_owned());
    let per_cell = Duration::from_secs(60) / limit.max(1);
    set(
        headers,
        "x-ratelimit-reset-requests",
        openai_duration(per_cell * limit),
    );
    set(headers, "retry-after", retry_after(wait));
    response
}

fn no_slot(metrics: &Metrics, name: &str, rate_headers: HeaderMap) -> Response {
    metrics.rate_limited(name, "key_in_flight");
    let mut response = ApiError::RateLimited {
        message: "Too many requests in flight for this key; retry when one has finished."
            .to_owned(),
    }
    .into_response();
    response.headers_mut().extend(rate_headers);
    set(response.headers_mut(), "retry-after", "1".to_owned());
    response
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
