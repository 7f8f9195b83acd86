//! `[resources.NAME]` blocks with a `provider` as supervisor resources: each is built by the
//! provider of its `[providers.X]` instance (built in, registered by the application, or a
//! discovered plugin), after the provider checked the resource's keys.

use super::StartError;
use crate::providers::{Catalog, catalog};
use kinfra_core::Secret;
use kinfra_core::config::{Config, ResourceConfig};
use kinfra_core::resource::Resource;
use kinfra_provider::provider::{InstanceContext, Provider, ResourceDecl};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// What a provider resource's commands need, kept from its build: its provider, the
/// instance it belongs to and its declaration.
#[derive(Clone)]
pub(super) struct CommandTarget {
    /// The provider that built it.
    pub(super) provider: Arc<dyn Provider>,
    /// Its `[providers.X]` instance.
    pub(super) instance: InstanceContext,
    /// Its `[resources.NAME]` table.
    pub(super) decl: ResourceDecl,
}

/// The provider resources built from a config: their supervisor specs, and beside them what
/// their commands need, by resource name.
#[derive(Default)]
pub(super) struct ProviderResources {
    /// For the supervisor.
    pub(super) specs: Vec<(String, kinfra_supervisor::ResourceSpec)>,
    /// For commands.
    pub(super) targets: BTreeMap<String, CommandTarget>,
}

/// The provider resources of `config` (none when it has no `provider = ...` resource; plugin
/// discovery only runs then). A resource whose provider is not installed, or whose keys its
/// provider refuses, fails the start with every problem named.
pub(super) async fn provider_resources(
    config: &Config,
    state_dir: &Path,
    extra: &[Arc<dyn Provider>],
) -> Result<ProviderResources, StartError> {
    let wanted: Vec<(&String, &ResourceConfig)> = config
        .resources
        .iter()
        .filter(|(_, r)| r.is_provider())
        .collect();
    if wanted.is_empty() {
        return Ok(ProviderResources::default());
    }
    let catalog = catalog(state_dir, &config.provider_plugin_dirs(), extra.to_vec()).await;
    let mut problems = Vec::new();
    let mut out = ProviderResources::default();
    for (name, resource) in wanted {
        match build_resource(&catalog, config, name, resource).await {
            Ok(built) => {
                out.specs.push((
                    name.clone(),
                    kinfra_supervisor::ResourceSpec::from_config(
                        Arc::from(built.resource),
                        resource,
                    ),
                ));
                out.targets.insert(
                    name.clone(),
                    CommandTarget {
                        provider: built.provider,
                        instance: built.instance,
                        decl: built.decl,
                    },
                );
            }
            Err(refused) => problems.extend(refused),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(StartError::ProviderResources(problems.join("\n")))
    }
}

/// One provider resource, built after its provider checked its keys.
pub struct BuiltResource {
    /// The provider that built it.
    pub provider: Arc<dyn Provider>,
    /// Its `[providers.X]` instance as the provider sees it.
    pub instance: InstanceContext,
    /// Its `[resources.NAME]` table as the provider reads it.
    pub decl: ResourceDecl,
    /// The resource the supervisor drives.
    pub resource: Box<dyn Resource>,
}

/// Builds `[resources.name]` through the provider of its `[providers.X]` instance from
/// `catalog`, after the provider checked its keys. The error is every problem, one line each,
/// naming the resource (and the key, when the provider names one).
pub async fn build_resource(
    catalog: &Catalog,
    config: &Config,
    name: &str,
    resource: &ResourceConfig,
) -> Result<BuiltResource, Vec<String>> {
    let Some(instance_name) = resource.provider.as_deref() else {
        return Err(vec![format!("resources.{name}: not a provider resource")]);
    };
    // Validation made sure the instance exists.
    let Some(instance) = config.providers.instances.get(instance_name) else {
        return Err(vec![format!(
            "resources.{name}.provider: no [providers.{instance_name}] instance"
        )]);
    };
    let id = instance.provider_id(instance_name);
    let Some(provider) = catalog.registry.get(id) else {
        return Err(vec![format!(
            "resources.{name}: provider `{id}` (of [providers.{instance_name}]) is not built in \
             and no plugin kinfra-provider-{id} was found (see `kinfra providers discover`)"
        )]);
    };
    let context = instance_context(config, instance_name).map_err(|problem| vec![problem])?;
    let decl = resource_decl(name, resource);
    let refused = provider.validate_resource(&context, &decl).await;
    if !refused.is_empty() {
        return Err(refused
            .iter()
            .map(|p| format!("resources.{name} (provider `{id}`): {p}"))
            .collect());
    }
    let built = provider
        .resource(&context, &decl)
        .map_err(|error| vec![format!("resources.{name} (provider `{id}`): {error}")])?;
    Ok(BuiltResource {
        provider: provider.clone(),
        instance: context,
        decl,
        resource: built,
    })
}

/// What a provider sees of its `[providers.NAME]` instance: the token (from `token`, or read
/// from `token_file`, which must be the user's own and not writable by others), `base_url`,
/// and the table's other keys.
pub fn instance_context(config: &Config, instance_name: &str) -> Result<InstanceContext, String> {
    let Some(instance) = config.providers.instances.get(instance_name) else {
        return Err(format!("no [providers.{instance_name}] instance"));
    };
    let token = match (&instance.token, &instance.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => {
            let path = config.resolve_path(file);
            crate::ownership::check_private(&path)
                .map_err(|e| format!("providers.{instance_name}.token_file: {e}"))?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!(
                    "providers.{instance_name}.token_file: cannot read {}: {e}",
                    path.display()
                )
            })?;
            Some(Secret::new(text.trim()))
        }
        (None, None) => None,
    };
    let mut table: serde_json::Map<String, serde_json::Value> = instance
        .extra
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(rate) = &instance.rate_limit {
        table.insert("rate_limit".into(), rate.clone().into());
    }
    Ok(InstanceContext {
        instance: instance_name.to_owned(),
        token,
        base_url: instance.base_url.clone(),
        config: table,
    })
}

/// The resource's table as its provider reads it: its own keys plus kinfra's `interval`.
pub fn resource_decl(name: &str, resource: &ResourceConfig) -> ResourceDecl {
    let mut table: serde_json::Map<String, serde_json::Value> = resource
        .extra
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    table.insert(
        "interval".into(),
        humantime::format_duration(resource.observe_interval().0)
            .to_string()
            .into(),
    );
    ResourceDecl {
        name: name.to_owned(),
        config: table,
    }
}
