//! The `[resources.NAME]` blocks as supervisor resources, with ports from the services' registry.

use super::StartError;
use kinfra_core::config::Config;
use kinfra_core::event::{EventKind, EventSender};
use kinfra_store::Store;
use std::collections::BTreeMap;
use std::path::Path;

/// Ports for container resources, from the same registry as the services' ports: the store's
/// (new ones are announced as `PortAssigned` events, which the store records, and handed to
/// the supervisor with the rest) or `ports.json` without a store.
struct ResourcePorts<'a> {
    registry: kinfra_supervisor::ports::PortStore,
    /// The store's port map (`None` without a store: `ports.json` keeps them).
    stored: Option<&'a mut BTreeMap<String, u16>>,
    events: &'a EventSender,
}

impl kinfra_docker::PortSource for ResourcePorts<'_> {
    fn saved(&self, name: &str) -> Option<u16> {
        self.registry.get(name)
    }

    fn resolve(&mut self, name: &str, spec: kinfra_core::config::PortSpec) -> Result<u16, String> {
        let (port, new) = self
            .registry
            .resolve(name, spec)
            .map_err(|e| e.to_string())?;
        if let Some(stored) = self.stored.as_deref_mut() {
            stored.insert(name.to_owned(), port);
            if new {
                self.events.emit(EventKind::PortAssigned {
                    service: name.to_owned(),
                    port,
                });
            }
        }
        Ok(port)
    }
}

/// The `[resources.NAME]` blocks as adapters for the supervisor (containers today). Nothing
/// starts here; without a Docker engine each resource fails on its own when started.
pub(super) async fn container_resources(
    config: &Config,
    state_dir: &Path,
    events: &EventSender,
    stored_ports: Option<&mut BTreeMap<String, u16>>,
    store: Option<&Store>,
) -> Result<Vec<(String, kinfra_supervisor::ResourceSpec)>, StartError> {
    if config.resources.values().all(|r| r.is_provider()) {
        return Ok(Vec::new());
    }
    let registry = match stored_ports.as_deref() {
        Some(ports) => kinfra_supervisor::ports::PortStore::in_memory(ports.clone()),
        None => kinfra_supervisor::ports::PortStore::load(&state_dir.join("ports.json")).map_err(
            |source| StartError::StateDir {
                path: state_dir.join("ports.json"),
                source,
            },
        )?,
    };
    let mut ports = ResourcePorts {
        registry,
        stored: stored_ports,
        events,
    };
    let engine = kinfra_docker::EngineHandle::local();
    let secrets = kinfra_docker::Secrets::in_state_dir(state_dir);
    // Generated passwords are kept in the store: a state dir that lost its copy (or another
    // machine on the same remote store) gets the same ones, so data volumes keep working.
    let stored = match store {
        Some(store) => {
            let stored = store.resource_secrets().await?;
            secrets.add_missing(&stored)?;
            Some(stored)
        }
        None => None,
    };
    let built = kinfra_docker::from_config(config, &engine, &secrets, &mut ports).await?;
    if let (Some(store), Some(stored)) = (store, stored) {
        let now = secrets.all()?;
        if now != stored {
            store.save_resource_secrets(&now).await?;
        }
    }
    Ok(built
        .into_iter()
        .map(|b| {
            let spec = kinfra_supervisor::ResourceSpec::from_config(b.resource, &b.config);
            (b.name, spec)
        })
        .collect())
}
