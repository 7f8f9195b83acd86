//! kinfra's shared vocabulary: config model, events, states, status shapes and the traits
//! through which the subsystems meet.
//!
//! This crate depends on nothing heavy (no pingora, surrealdb, axum, bollard, async-nats), so
//! every other crate can use it without pulling those in.

pub mod activity;
pub mod child;
pub mod config;
pub mod control;
pub mod docker_names;
pub mod event;
pub mod lockfile;
pub mod metrics;
pub mod persist;
pub mod procstat;
pub mod progress;
pub mod random;
pub mod resource;
pub mod secret;
pub mod state;
pub mod status;
#[cfg(feature = "tls")]
pub mod tls;
pub mod view;

pub use config::{Config, ConfigError, ConfigErrors};
pub use event::{Event, EventKind, EventSender};
pub use secret::Secret;
pub use state::{Health, ServiceState};
