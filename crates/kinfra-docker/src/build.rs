//! From a whole config to the Docker resources the supervisor drives: host ports resolved
//! (kept across restarts, including while kinfra's own container holds them), passwords
//! generated once, one [`DockerResource`] per `[resources.NAME]`.

use crate::container::{DockerResource, EngineHandle};
use crate::error::DockerError;
use crate::secrets::Secrets;
use kinfra_core::config::{Config, PortSpec, ResourceConfig};
use std::sync::Arc;

/// Where resources' host ports come from: the runtime's port registry (`ports.json` or the
/// store), the same one services use.
pub trait PortSource {
    /// The port saved for `name` by an earlier run, if any.
    fn saved(&self, name: &str) -> Option<u16>;
    /// The port `name` gets for `spec`: a fixed one must be free; an auto one is reused or
    /// allocated, and saved.
    fn resolve(&mut self, name: &str, spec: PortSpec) -> Result<u16, String>;
}

/// One resource of a config, ready for `kinfra_supervisor::ResourceSpec::from_config`.
#[derive(Debug, Clone)]
pub struct Built {
    /// The resource name.
    pub name: String,
    /// The adapter.
    pub resource: Arc<DockerResource>,
    /// Its config block (policies: restart, health, depends_on, stop_grace, on_down).
    pub config: ResourceConfig,
}

/// Builds every resource of `config` (they are all containers today). Nothing is started;
/// with no engine reachable this still succeeds (ports are then resolved as for a service),
/// and each resource fails on its own when started.
pub async fn from_config(
    config: &Config,
    engine: &EngineHandle,
    secrets: &Secrets,
    ports: &mut (dyn PortSource + Send),
) -> Result<Vec<Built>, DockerError> {
    let project = &config.project.name;
    let mut out = Vec::new();
    // Provider resources (`provider = "..."`) are not containers.
    for (name, cfg) in config
        .resources
        .iter()
        .filter(|(_, cfg)| !cfg.is_provider())
    {
        let saved = ports.saved(name);
        let port = engine
            .host_port(project, name, cfg.port, saved, |spec| {
                ports.resolve(name, spec)
            })
            .await
            .map_err(|reason| DockerError::Port {
                resource: name.clone(),
                reason,
            })?;
        let resource =
            DockerResource::from_config(project, name, cfg, port, secrets, engine.clone())
                .map_err(|e| DockerError::Invalid(format!("resource `{name}`: {e}")))?;
        out.push(Built {
            name: name.clone(),
            resource: Arc::new(resource),
            config: cfg.clone(),
        });
    }
    Ok(out)
}
