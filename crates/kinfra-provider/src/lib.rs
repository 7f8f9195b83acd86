//! kinfra's provider SDK: what every managed thing that is not a local process or container
//! is built from. A provider describes itself ([`metadata`]), a configured instance of it (one
//! account) has a lifecycle ([`lifecycle`]), its commands are typed and validated before
//! anything is sent ([`command`]), and a dry-run shows the exact requests. Built-in providers
//! and external plugins (executables speaking JSON-RPC 2.0 over stdio) look the same through
//! the [`registry`].
//!
//! **Invariant:** this crate knows no particular cloud: providers (kinfra-cloud, plugins, the
//! application's own) plug into it; nothing here changes when one is added.
pub mod command;
pub mod lifecycle;
pub mod metadata;
pub mod result;

pub mod builtin;
pub mod discovery;
pub mod http;
pub mod observe;
pub mod operation;
pub mod plugin;
pub mod provider;
pub mod ratelimit;
pub mod registry;
pub mod rest;
pub mod retry;
pub mod run_slot;
pub mod simple;
