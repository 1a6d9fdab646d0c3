//! Who is calling: `Authorization: Bearer KEY`, as the OpenAI SDKs send it, matched against the
//! configured keys by SHA-256 digest in constant time. Each key brings its tenant, its policy,
//! the models and collections it may use, and whether it is an admin. With no keys configured
//! every caller is anonymous (tenant `default`), which the config allows only on loopback unless
//! `server.allow_anonymous` says otherwise.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::config::KeyConfig;
use crate::config::{Config, Secret};
use crate::error::ApiError;
use crate::knowledge::DEFAULT_TENANT;
use crate::server::limits::Limits;
use std::collections::HashMap;

/// The caller of one request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name (never the key), for logs and metrics; `anonymous` or `admin-token`.
    pub name: String,
    pub tenant: String,
    pub policy: Option<String>,
    pub models: Option<Arc<Vec<String>>>,
    pub collections: Option<Arc<Vec<String>>>,
    pub admin: bool,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".to_owned(),
            tenant: DEFAULT_TENANT.to_owned(),
            policy: None,
            models: None,
            collections: None,
            admin: false,
        }
    }

    fn of(key: &KeyConfig) -> Caller {
        Caller {
            name: key.name.clone(),
            tenant: key.tenant.clone(),
            policy: key.policy.clone(),
            models: key.models.clone().map(Arc::new),
            collections: key.collections.clone().map(Arc::new),
            admin: key.admin,
        }
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    pub fn may_use_collection(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|c| c.iter().any(|x| x == collection))
    }
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The caller a bearer token names. Keys are looked up by the SHA-256 of what was presented:
/// the time a lookup takes can only tell how close that digest came to a stored one, and
/// digests that nearly match say nothing about the keys behind them (a preimage would be
/// needed), so one map lookup is as safe as comparing with every key, and stays fast with many.
pub fn authenticate(
    access: &Access,
    admin_token: Option<&Secret>,
    bearer: Option<&str>,
) -> Result<Caller, ApiError> {
    let keys = &access.keys;
    let Some(bearer) = bearer else {
        return if keys.is_empty() {
            Ok(Caller::anonymous())
        } else {
            Err(ApiError::Unauthorized)
        };
    };
    let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
    if let Some(key) = access.by_digest.get(&digest).and_then(|&i| keys.get(i)) {
        return Ok(Caller::of(key));
    }
    if let Some(token) = admin_token {
        let expected: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
        if same(&digest, &expected) {
            return Ok(Caller {
                name: "admin-token".to_owned(),
                admin: true,
                ..Caller::anonymous()
            });
        }
    }
    if keys.is_empty() {
        // Anonymous mode: a client's own key (the SDKs always send one) is not Warden's business.
        Ok(Caller::anonymous())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Puts the [`Caller`] in the request, or answers 401. Health, metrics and the console's
/// static files are open.
pub async fn identify(
    access: &Access,
    admin_token: Option<&Secret>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // The console's files hold no data: what they show comes through the admin routes.
    if matches!(path, "/healthz" | "/readyz" | "/metrics" | "/console")
        || path.starts_with("/console/")
    {
        return next.run(request).await;
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match authenticate(access, admin_token, bearer) {
        Ok(caller) => {
            tracing::Span::current().record("key", tracing::field::display(&caller.name));
            let label = crate::server::metrics::KeyLabel(caller.name.clone());
            request.extensions_mut().insert(caller);
            let mut response = next.run(request).await;
            response.extensions_mut().insert(label);
            response
        }
        Err(err) => err.into_response(),
    }
}

/// Who may call and how much: the keys and the limiters made from them.
pub struct Access {
    pub keys: Vec<crate::config::KeyConfig>,
    /// Each key's place in `keys` by the SHA-256 of the key, to find a caller in one lookup.
    pub by_digest: HashMap<[u8; 32], usize>,
    pub limits: Arc<Limits>,
}

impl Access {
    pub fn new(config: &Config) -> Access {
        Access::with_limits(config, Limits::new(config, None))
    }

    /// The keys of `config`, carrying over the counts of every limit that did not change, so a
    /// reload does not hand every caller a fresh minute.
    pub(crate) fn next(previous: &Access, config: &Config) -> Access {
        Access::with_limits(config, Limits::new(config, Some(&previous.limits)))
    }

    fn with_limits(config: &Config, limits: Limits) -> Access {
        Access {
            keys: config.keys.clone(),
            by_digest: config
                .keys
                .iter()
                .enumerate()
                .map(|(i, key)| (key.sha256, i))
                .collect(),
            limits: Arc::new(limits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_default_to_everything() {
        let caller = Caller::anonymous();
        assert!(caller.may_use_model("x") && caller.may_use_collection("y"));
        let limited = Caller {
            models: Some(Arc::new(vec!["a".into()])),
            collections: Some(Arc::new(vec![])),
            ..Caller::anonymous()
        };
        assert!(limited.may_use_model("a") && !limited.may_use_model("b"));
        assert!(!limited.may_use_collection("docs"));
    }
}
