//! Tributary's black-box tests: they drive the real `tributary` binary on
//! generated data and inspect what it writes. The Kafka tests start their
//! own broker processes (see `servers`).

mod check;
mod delivery;
mod dlq;
mod faults;
mod faulty_http;
mod kafka;
mod lookups;
mod orders;
mod servers;
mod support;
mod telemetry;
