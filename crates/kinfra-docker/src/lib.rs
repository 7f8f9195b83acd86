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
//! - A template whose image cannot run a Docker healthcheck (nats: no shell in the official
//!   image) gets a [`HostCheck`] that kinfra runs from the host on the published port.
//! - Without an engine, every operation fails with
//!   [`ResourceError::EngineUnavailable`](kinfra_core::resource::ResourceError), which the
//!   supervisor shows on that resource alone.
//!
//! # Wiring (what the runtime does)
//!
//! ```no_run
//! use kinfra_core::config::{Config, PortSpec};
//! use kinfra_docker::{EngineHandle, PortSource, Secrets};
//! use kinfra_supervisor::ports::PortStore;
//! use kinfra_supervisor::{ResourceSpec, Supervisor, SupervisorOptions};
//!
//! struct Ports(PortStore);
//! impl PortSource for Ports {
//!     fn saved(&self, name: &str) -> Option<u16> {
//!         self.0.get(name)
//!     }
//!     fn resolve(&mut self, name: &str, spec: PortSpec) -> Result<u16, String> {
//!         self.0.resolve(name, spec).map(|(p, _)| p).map_err(|e| e.to_string())
//!     }
//! }
//!
//! # async fn boot(config: Config, opts: SupervisorOptions) -> Result<(), Box<dyn std::error::Error>> {
//! let engine = EngineHandle::local();
//! let secrets = Secrets::in_state_dir(&config.project.state_dir);
//! let mut ports = Ports(PortStore::load(&config.project.state_dir.join("ports.json"))?);
//! let built = kinfra_docker::from_config(&config, &engine, &secrets, &mut ports).await?;
//! drop(ports);
//! let resources = built
//!     .into_iter()
//!     .map(|b| (b.name, ResourceSpec::from_config(b.resource, &b.config)))
//!     .collect();
//! let sup = Supervisor::start(&config.services, opts.with_resources(resources)).await?;
//! // status(), act(), logs() and shutdown() now cover the containers too.
//! sup.shutdown(config.project.shutdown_timeout.0).await;
//! # Ok(())
//! # }
//! ```

pub mod build;
pub mod container;
pub mod engine;
pub mod error;
pub mod host_check;
pub mod pull;
pub mod secrets;
pub mod spec;
pub mod template;

pub use build::{Built, PortSource, from_config};
pub use container::{DockerResource, EngineHandle};
pub use engine::{Engine, ImageSource};
pub use error::DockerError;
pub use host_check::HostCheck;
pub use pull::PullProgress;
pub use secrets::Secrets;
pub use spec::{ContainerSpec, HealthCheck, Labels};
