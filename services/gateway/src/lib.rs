//! Tributary's API gateway: the single entry point in front of the auth
//! and orders services.
//!
//! A request goes through [`proxy`]: the first route of the [`routes`] file
//! that matches takes it; the application's API key ([`keys`]) and, where
//! the route asks, the user's token (the kit's verifier) are checked
//! locally; the [`limit`] counts it against the key's limit across every
//! instance; a cacheable request may be answered from the [`cache`] (or
//! wait for an identical one's answer), a POST with an Idempotency-Key is
//! deduplicated across instances ([`idempotency`]); the upstream pool
//! ([`upstream`]) picks a healthy address behind its circuit breaker; and
//! the bodies stream both ways. Browsers' preflights are answered per
//! route ([`cors`]). Every refusal is one [`error::GatewayError`],
//! answered as problem+json. The proxy listener is served by a few
//! [`workers`], each a thread with its own runtime.

pub mod admin;
pub mod app;
pub mod cache;
pub mod cors;
pub mod error;
pub mod idempotency;
pub mod keys;
pub mod limit;
pub mod proxy;
pub mod routes;
pub mod settings;
pub mod upstream;
pub mod workers;

pub use app::{Server, StartError, start};
pub use settings::Settings;
