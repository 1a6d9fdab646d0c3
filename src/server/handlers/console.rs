//! `/console`: the web console, three files embedded in the binary at build time. The page
//! holds no data and no secret: it asks for the admin token and reads everything through the
//! admin routes with it, so serving the files needs no authentication and no cookie is ever
//! set. Off unless `[console] enabled = true`.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::server::state::AppState;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Only this origin's own files run; nothing may frame the page, no form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub async fn page(state: AppState) -> Response {
    asset(&state, "index.html")
}

pub async fn file(state: AppState, Path(name): Path<String>) -> Response {
    asset(&state, &name)
}

fn asset(state: &AppState, name: &str) -> Response {
    let found = match name {
        "index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "console.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "console.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    };
    let Some((body, kind)) = found.filter(|_| state.config.console) else {
        return ApiError::RouteNotFound {
            method: "GET".to_owned(),
            path: format!("/console/{name}"),
        }
        .into_response();
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
