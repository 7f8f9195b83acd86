//! kinfra's Docker resources: a container per `[resources.NAME]`, made from a template
//! (postgres, redis, nats, mongodb, mysql, or any image) and driven by the supervisor through
//! the [`kinfra_core::resource::Resource`] trait like a process.
//!
//! - [`template`] turns a config block into a [`ContainerSpec`] and a connection string,
//!   with generated passwords kept in [`Secrets`] (a `0600` file, never printed).
//! - [`Engine`] is the bollard client: it negotiates the API version (Docker 20.10 speaks
//!   1.41) and uses only what kinfra needs.
//! - [`DockerResource`] adopts the container of a previous run by label (project, resource,
//!   config hash), recreates it when the hash changed, pulls only a missing image, publishes
//!   ports on 127.0.0.1 only, mounts named volumes only, and never runs privileged or on the
//!   host network.
//! - Without an engine, every operation fails with
//!   [`ResourceError::EngineUnavailable`](kinfra_core::resource::ResourceError), which the
//!   supervisor shows on that resource alone.

pub mod build;
pub mod container;
pub mod engine;
pub mod error;
pub mod secrets;
pub mod spec;
pub mod template;

pub use build::{Built, PortSource, from_config};
pub use container::{DockerResource, EngineHandle};
pub use engine::{Engine, ImageSource};
pub use error::DockerError;
pub use secrets::Secrets;
pub use spec::{ContainerSpec, HealthCheck, Labels};
