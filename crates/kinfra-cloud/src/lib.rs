//! kinfra's built-in cloud providers, one module each, built on the provider SDK
//! (`kinfra_provider`): each is a [`kinfra_provider::provider::Provider`] that the facade
//! registers beside the generic ones (`command`, `http-api`).
//!
//! They are tested offline against the providers' own OpenAPI specs (`specs/`): Stoplight
//! Prism proxies every request to a stateful fake written in the tests and reports any request
//! or answer that leaves the spec (see `tests/support/prism.rs`).

pub mod fly;
pub mod fly_deploy;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod neon;
pub mod railway;
pub mod render;
pub mod supabase;
pub mod vercel;
