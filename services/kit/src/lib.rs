//! What Tributary's companion services share, and nothing a single service
//! needs alone: layered configuration ([`config`]), the database made on
//! first start ([`database`]), RFC 9457 problem
//! responses and a JSON extractor that names bad fields ([`problem`]), the
//! HTTP server with health, readiness, metrics and graceful shutdown
//! ([`server`]), request tracking ([`observe`]), logs and OTLP traces that
//! continue the caller's trace ([`traces`]), local verification of the auth
//! service's access tokens ([`jwt`]), the problems every OpenAPI document
//! lists alike ([`openapi`]), circuit breakers and retry budgets
//! ([`resilience`]), and the transactional outbox with its relays
//! ([`outbox`]; the Kafka sink with the `kafka` feature).

pub mod config;
pub mod database;
pub mod jwt;
pub mod observe;
pub mod openapi;
pub mod outbox;
pub mod problem;
pub mod resilience;
pub mod secret;
pub mod server;
pub mod traces;

pub use problem::{Json, Path, Problem};
pub use secret::Secret;
