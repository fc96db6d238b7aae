//! Tributary's auth service: users, password logins, EdDSA access tokens
//! that every service verifies locally against the JWKS, refresh tokens
//! rotated in families, sessions, and brute-force limits that hold across
//! instances. Handlers ([`api`]) call the domain modules ([`sessions`],
//! [`attempts`], [`keys`], [`passwords`]) over the stores (PostgreSQL in
//! [`users`], Redis in the first two); [`error::AuthError`] maps every
//! failure to a problem response.

pub mod api;
pub mod app;
pub mod attempts;
pub mod clock;
pub mod error;
pub mod events;
pub mod keys;
pub mod mail;
pub mod mfa;
pub mod oidc;
pub mod passwords;
pub mod random;
pub mod reset;
pub mod sealing;
pub mod sessions;
pub mod settings;
pub mod users;

pub use app::{Server, StartError, start, start_with_clock};
pub use clock::Clock;
pub use settings::Settings;

/// The service's outbox (table `outbox`): events for Kafka, mail for SMTP.
pub const OUTBOX: tributary_kit::outbox::Outbox = tributary_kit::outbox::Outbox::new("auth");
