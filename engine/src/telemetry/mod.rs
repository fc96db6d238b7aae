//! What an operator sees of a running engine: on one HTTP port
//! (`tributary run --http ADDR`) a status page, Prometheus metrics and
//! health probes; and, when asked for, traces over OTLP ([`otlp`]).
//!
//! [`Metrics`] is always kept (updating it costs a few atomic adds and one
//! short lock per batch); [`serve`] exposes it with `/` (status page),
//! `/status.json`, `/metrics`, `/healthz` and `/readyz`.

pub mod heap;
mod http;
mod metrics;
mod status;
mod traces;

pub use http::serve;
pub(crate) use metrics::WatchedAlert;
pub use metrics::{Metrics, Readiness};
pub use traces::{Traces, TracesError, otlp};
