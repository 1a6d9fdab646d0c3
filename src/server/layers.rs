//! The layers `build_app` puts around the routes. Each takes the generation in force and hands
//! its parts to the module that does the work, so that metrics, authentication and limits
//! depend on what they use and never on the state that holds them.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::server::auth::Caller;
use crate::server::state::AppState;

/// Counts and times every request (outermost of the three: refused keys count too).
pub async fn count_requests(state: AppState, request: Request, next: Next) -> Response {
    crate::server::metrics::count(&state.metrics, request, next).await
}

/// Finds the caller, or answers 401.
pub async fn authenticate(state: AppState, request: Request, next: Next) -> Response {
    crate::server::auth::identify(
        &state.access,
        state.config.server.admin_token.as_ref(),
        request,
        next,
    )
    .await
}

/// The replica's and the caller's limits.
pub async fn limit(state: AppState, request: Request, next: Next) -> Response {
    let caller = request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.name.clone());
    crate::server::limits::enforce(
        state.access.limits.clone(),
        &state.metrics,
        caller,
        request,
        next,
    )
    .await
}
