//! The HTTP side of Warden: the routes and their handlers, the state a config generation builds,
//! and the layers around every request (request id, authentication, limits, metrics, audit).

pub mod audit;
pub mod auth;
pub mod extract;
pub mod handlers;
pub mod layers;
pub mod limits;
pub mod metrics;
pub mod request_id;
pub mod routes;
pub mod state;
