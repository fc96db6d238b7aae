//! Tributary's orders service: a catalogue whose stock never oversells,
//! orders placed with idempotency keys, prices from a CEL rules file that
//! explain themselves, a payment saga that compensates and resumes after a
//! crash, reads from replicas that never miss the caller's own write, a
//! cache invalidated by events, and domain events delivered through the
//! outbox. Handlers ([`api`]) call the domain ([`pricing`], [`saga`],
//! [`workflow`], [`payments`]) over the stores ([`catalogue`], [`orders`],
//! [`idempotency`], [`db`], [`cache`]); [`error::OrdersError`] maps every
//! failure to a problem response.

pub mod api;
pub mod app;
pub mod cache;
pub mod catalogue;
pub mod db;
pub mod error;
pub mod events;
pub mod follow;
pub mod idempotency;
pub mod money;
pub mod orders;
pub mod payments;
pub mod pricing;
pub mod saga;
pub mod settings;
pub mod workflow;

pub use app::{Server, StartError, start};
pub use settings::Settings;

/// The service's outbox (table `outbox`): its events for Kafka.
pub const OUTBOX: tributary_kit::outbox::Outbox = tributary_kit::outbox::Outbox::new("orders");
