//! `[resources.NAME]` blocks with a `provider` as supervisor resources: each is built by the
//! provider of its `[providers.X]` instance (built in, registered by the application, or a
//! discovered plugin), after the provider checked the resource's keys. Beside them, the
//! lifecycle of each `[providers.X]` instance as the runtime lives it ([`ProviderInstances`]).

use super::StartError;
use super::core::RuntimeCore;
use crate::providers::{Catalog, ProviderSource, catalog};
use kinfra_core::Secret;
use kinfra_core::config::{Config, ProviderInstanceConfig, ResourceConfig};
use kinfra_core::event::{Event, EventKind};
use kinfra_core::resource::Resource;
use kinfra_core::state::ServiceState;
use kinfra_core::status::{ProviderInstanceStatus, ServiceStatus};
use kinfra_provider::lifecycle::{InstanceState, InstanceStatus};
use kinfra_provider::provider::{InstanceContext, Provider, ResourceDecl};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast;

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

/// The providers `config` can use: the built-ins, `extra` (registered in code) and the
/// discovered plugins; `None` when the config has neither a `[providers.X]` instance nor a
/// provider resource (plugin discovery only runs when it has one).
pub(super) async fn runtime_catalog(
    config: &Config,
    state_dir: &Path,
    extra: &[Arc<dyn Provider>],
) -> Option<Catalog> {
    if config.providers.instances.is_empty()
        && !config.resources.values().any(ResourceConfig::is_provider)
    {
        return None;
    }
    Some(catalog(state_dir, &config.provider_plugin_dirs(), extra.to_vec()).await)
}

/// The provider resources of `config`, built through `catalog` (see [`runtime_catalog`]). A
/// resource whose provider is not installed, or whose keys its provider refuses, fails the
/// start with every problem named.
pub(super) async fn provider_resources(
    config: &Config,
    catalog: Option<&Catalog>,
) -> Result<ProviderResources, StartError> {
    let wanted: Vec<(&String, &ResourceConfig)> = config
        .resources
        .iter()
        .filter(|(_, r)| r.is_provider())
        .collect();
    if wanted.is_empty() {
        return Ok(ProviderResources::default());
    }
    let Some(catalog) = catalog else {
        return Err(StartError::ProviderResources(
            "provider resources need the provider catalog, which was not built".into(),
        ));
    };
    let mut problems = Vec::new();
    let mut out = ProviderResources::default();
    for (name, resource) in wanted {
        match build_resource(catalog, config, name, resource).await {
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
    let context = instance_context(config, instance_name, provider.instance_path_keys())
        .map_err(|problem| vec![problem])?;
    let decl = resource_decl(name, resource).map_err(|problem| vec![problem])?;
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

/// One `[providers.X]` instance as the runtime lives it.
struct LiveInstance {
    /// Its table as last initialized (a reload that changes it starts the instance anew).
    config: ProviderInstanceConfig,
    /// The provider's id.
    provider: String,
    /// Where the provider comes from; `None` when it is nowhere.
    source: Option<ProviderSource>,
    /// The `[resources.NAME]` that use it.
    resources: Vec<String>,
    /// Where it is in its lifecycle, moved only through [`InstanceStatus::transition`].
    status: InstanceStatus,
}

impl LiveInstance {
    fn new(name: &str, config: &ProviderInstanceConfig) -> Self {
        Self {
            config: config.clone(),
            provider: config.provider_id(name).to_owned(),
            source: None,
            resources: Vec::new(),
            status: InstanceStatus::new(),
        }
    }

    /// Moves to `to` (with `reason`); a move the lifecycle refuses is logged and changes
    /// nothing.
    fn move_to(&mut self, name: &str, to: InstanceState, reason: Option<String>) {
        if self.status.state == to && self.status.message == reason {
            return;
        }
        match self.status.transition(to, reason) {
            Ok(()) => {
                tracing::debug!(instance = %name, state = %to, "Provider instance changed state.");
            }
            Err(error) => {
                tracing::warn!(instance = %name, %error, "Provider instance transition refused.");
            }
        }
    }

    /// Initializing: finds its provider in `catalog` and reads its token; then ready, or
    /// failed with the reason.
    fn initialize(&mut self, name: &str, config: &Config, catalog: Option<&Catalog>) {
        self.move_to(name, InstanceState::Initializing, None);
        self.source = catalog.and_then(|c| c.source(&self.provider)).cloned();
        let checked = match &self.source {
            None => Err(missing_provider(&self.provider, catalog)),
            Some(_) => instance_context(config, name, &[]).map(|_| ()),
        };
        match checked {
            Ok(()) => self.move_to(name, InstanceState::Ready, None),
            Err(reason) => {
                tracing::warn!(instance = %name, %reason, "Provider instance failed.");
                self.move_to(name, InstanceState::Failed, Some(reason));
            }
        }
    }

    fn report(&self) -> ProviderInstanceStatus {
        let (source, path) = match &self.source {
            Some(ProviderSource::Builtin) => ("builtin", None),
            Some(ProviderSource::Plugin { path }) => ("plugin", Some(path.display().to_string())),
            None => ("missing", None),
        };
        ProviderInstanceStatus {
            provider: self.provider.clone(),
            source: source.to_owned(),
            path,
            state: self.status.state.as_str().to_owned(),
            reason: self.status.message.clone(),
            resources: self.resources.clone(),
            since: self.status.since.clone(),
        }
    }
}

/// Why provider `id` cannot be used: nowhere, or its plugin was found but skipped (it could
/// not start, answered garbage, ...).
fn missing_provider(id: &str, catalog: Option<&Catalog>) -> String {
    let skipped: Vec<String> = catalog
        .map(|c| {
            c.discovery
                .skipped
                .iter()
                .filter(|s| s.id == id)
                .map(|s| format!("{} skipped: {}", s.path.display(), s.reason))
                .collect()
        })
        .unwrap_or_default();
    if skipped.is_empty() {
        format!("provider `{id}` is not built in and no plugin kinfra-provider-{id} was found")
    } else {
        format!(
            "provider `{id}` is not built in and its plugin cannot be used ({})",
            skipped.join("; ")
        )
    }
}

/// The lifecycle of every `[providers.X]` instance of the running config:
/// `uninitialized → initializing → ready ⇄ active`, `failed` with the reason, `terminated`
/// at shutdown. Ready and active follow the instance's resources (active while one of them
/// is starting or running); reloads add, remove and initialize instances again.
#[derive(Default)]
pub(super) struct ProviderInstances {
    entries: std::sync::Mutex<BTreeMap<String, LiveInstance>>,
}

impl ProviderInstances {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LiveInstance>> {
        match self.entries.lock() {
            Ok(held) => held,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// True when bringing the instances in line with `config` needs the provider catalog:
    /// an instance is new, changed or failed (it is initialized again).
    pub(super) fn need_catalog(&self, config: &Config) -> bool {
        let entries = self.entries();
        config.providers.instances.iter().any(|(name, instance)| {
            entries.get(name).is_none_or(|e| {
                e.config != *instance
                    || matches!(
                        e.status.state,
                        InstanceState::Uninitialized | InstanceState::Failed
                    )
            })
        })
    }

    /// Brings the instances in line with `config`: removed ones are dropped, new and changed
    /// ones start anew and are initialized, failed ones are initialized again (a token file
    /// created since, a plugin installed since); each one's resources are listed again.
    pub(super) fn reconcile(&self, config: &Config, catalog: Option<&Catalog>) {
        let mut entries = self.entries();
        entries.retain(|name, _| config.providers.instances.contains_key(name));
        for (name, instance) in &config.providers.instances {
            let entry = entries
                .entry(name.clone())
                .or_insert_with(|| LiveInstance::new(name, instance));
            if entry.config != *instance {
                *entry = LiveInstance::new(name, instance);
            }
            entry.resources = config
                .resources
                .iter()
                .filter(|(_, r)| r.provider.as_deref() == Some(name.as_str()))
                .map(|(resource, _)| resource.clone())
                .collect();
            if matches!(
                entry.status.state,
                InstanceState::Uninitialized | InstanceState::Failed
            ) {
                entry.initialize(name, config, catalog);
            }
        }
    }

    /// Ready ⇄ active from the states of the resources (`services`: the supervisor's
    /// snapshot): active while at least one of an instance's resources is starting or
    /// running, ready when none is.
    pub(super) fn follow(&self, services: &BTreeMap<String, ServiceStatus>) {
        for (name, entry) in self.entries().iter_mut() {
            let used = entry.resources.iter().any(|r| {
                services.get(r).is_some_and(|s| {
                    matches!(s.state, ServiceState::Starting | ServiceState::Running)
                })
            });
            match (entry.status.state, used) {
                (InstanceState::Ready, true) => entry.move_to(name, InstanceState::Active, None),
                (InstanceState::Active, false) => entry.move_to(name, InstanceState::Ready, None),
                _ => {}
            }
        }
    }

    /// Every instance terminated (the runtime is stopping), with `reason`.
    pub(super) fn terminate(&self, reason: &str) {
        for (name, entry) in self.entries().iter_mut() {
            if entry.status.state != InstanceState::Terminated {
                entry.move_to(name, InstanceState::Terminated, Some(reason.to_owned()));
            }
        }
    }

    /// The instances for `/__status__`, by name.
    pub(super) fn report(&self) -> BTreeMap<String, ProviderInstanceStatus> {
        self.entries()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.report()))
            .collect()
    }
}

/// Keeps the core's provider instances in step with their resources: on each state change
/// (or a missed stretch of events) ready ⇄ active from the supervisor's snapshot; at
/// `RuntimeStopping`, every instance terminated. Ends then, or when the core is gone.
pub(super) async fn follow_instances(
    core: Weak<RuntimeCore>,
    mut events: broadcast::Receiver<Event>,
) {
    if let Some(core) = core.upgrade() {
        core.instances.follow(&core.supervisor.status());
    }
    loop {
        let event = events.recv().await;
        let Some(core) = core.upgrade() else {
            return;
        };
        match event {
            Ok(Event {
                kind: EventKind::StateChanged { .. },
                ..
            }) => core.instances.follow(&core.supervisor.status()),
            Ok(Event {
                kind: EventKind::RuntimeStopping { .. },
                ..
            }) => {
                core.instances.terminate("the runtime is stopping");
                return;
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                if core.shutting_down.load(Ordering::SeqCst) {
                    core.instances.terminate("the runtime is stopping");
                    return;
                }
                core.instances.follow(&core.supervisor.status());
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `${VAR}` (and `${VAR:-default}`) in a provider's or provider resource's string values,
/// from kinfra's environment: `token = "${NEON_API_KEY}"`. Other references
/// (`${resources.X.Y}`, `${PORT}`) mean nothing there and are errors naming `key`; so is an
/// unset variable without a default. Messages name the variable, never a value.
fn env_interpolated(key: &str, text: &str) -> Result<String, String> {
    let lookup = |name: &str| {
        if name == "PORT" || name.contains('.') {
            None
        } else {
            std::env::var(name).ok()
        }
    };
    kinfra_core::config::interpolate::interpolate(text, &lookup).map_err(|e| format!("{key}: {e}"))
}

/// [`env_interpolated`] over every string in a JSON value (tables and lists included).
fn env_interpolated_value(key: &str, value: &mut serde_json::Value) -> Result<(), String> {
    match value {
        serde_json::Value::String(text) => *text = env_interpolated(key, text)?,
        serde_json::Value::Array(items) => {
            for item in items {
                env_interpolated_value(key, item)?;
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                env_interpolated_value(&format!("{key}.{k}"), v)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What a provider sees of its `[providers.NAME]` instance: the token (from `token`, or read
/// from `token_file`, which must be the user's own and not writable by others), `base_url`,
/// and the table's other keys, with `${VAR}` filled in from the environment and the
/// provider's `path_keys` ([`Provider::instance_path_keys`]) resolved against the config
/// file's directory.
pub fn instance_context(
    config: &Config,
    instance_name: &str,
    path_keys: &[&str],
) -> Result<InstanceContext, String> {
    let Some(instance) = config.providers.instances.get(instance_name) else {
        return Err(format!("no [providers.{instance_name}] instance"));
    };
    let key = |k: &str| format!("providers.{instance_name}.{k}");
    let token = match (&instance.token, &instance.token_file) {
        (Some(token), _) => Some(Secret::new(env_interpolated(
            &key("token"),
            token.expose(),
        )?)),
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
    let mut table = serde_json::Map::new();
    for (k, v) in &instance.extra {
        let mut value = v.clone();
        env_interpolated_value(&key(k), &mut value)?;
        if path_keys.contains(&k.as_str())
            && let serde_json::Value::String(path) = &value
        {
            let resolved = config.resolve_path(Path::new(path));
            value = serde_json::Value::String(resolved.display().to_string());
        }
        table.insert(k.clone(), value);
    }
    if let Some(rate) = &instance.rate_limit {
        table.insert("rate_limit".into(), rate.clone().into());
    }
    let base_url = match &instance.base_url {
        Some(url) => Some(env_interpolated(&key("base_url"), url)?),
        None => None,
    };
    Ok(InstanceContext {
        instance: instance_name.to_owned(),
        token,
        base_url,
        config: table,
    })
}

/// The resource's table as its provider reads it: its own keys plus kinfra's `interval`, the
/// only kinfra key it carries ([`kinfra_provider::plugin::KINFRA_RESOURCE_KEYS`], documented
/// in the plugin protocol: a plugin's `validate` refuses any other key it does not know, so a
/// new kinfra key added here must be added there too).
/// `${VAR}` in its string values is filled in from the environment (an unset one is an error
/// naming the key).
pub fn resource_decl(name: &str, resource: &ResourceConfig) -> Result<ResourceDecl, String> {
    let mut table = serde_json::Map::new();
    for (k, v) in &resource.extra {
        let mut value = v.clone();
        env_interpolated_value(&format!("resources.{name}.{k}"), &mut value)?;
        table.insert(k.clone(), value);
    }
    table.insert(
        "interval".into(),
        humantime::format_duration(resource.observe_interval().0)
            .to_string()
            .into(),
    );
    Ok(ResourceDecl {
        name: name.to_owned(),
        config: table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::config::Format;

    fn config(dir: &Path, text: &str) -> Config {
        match Config::parse(text, Format::Toml, "test", dir, &[]) {
            Ok(config) => config,
            Err(errors) => panic!("config: {errors}"),
        }
    }

    const TEXT: &str = "[project]\nname = \"t\"\n\
        [providers.sh]\nprovider = \"command\"\n\
        [providers.locked]\nprovider = \"http-api\"\ntoken_file = \"token\"\n\
        [providers.nowhere]\nprovider = \"not-installed-anywhere\"\n\
        [resources.flag]\nprovider = \"sh\"\nstatus = \"true\"\n";

    fn services(states: &[(&str, &str)]) -> BTreeMap<String, ServiceStatus> {
        states
            .iter()
            .map(|(name, state)| {
                let status = serde_json::json!({
                    "kind": "provider", "state": state, "health": "unknown",
                    "status_message": "", "port": null, "pid": null, "uptime_s": null,
                    "uptime": null, "restarts": 0, "last_exit": null, "logs": [],
                });
                match serde_json::from_value(status) {
                    Ok(status) => ((*name).to_owned(), status),
                    Err(error) => panic!("status: {error}"),
                }
            })
            .collect()
    }

    fn state(instances: &ProviderInstances, name: &str) -> (String, Option<String>) {
        let report = instances.report();
        let entry = report
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {report:?}"));
        (entry.state.clone(), entry.reason.clone())
    }

    #[tokio::test]
    async fn instances_initialize_follow_their_resources_and_terminate() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A plugin that cannot start: discovery skips it, and the instance says why.
        std::fs::create_dir(dir.path().join("plugins")).expect("mkdir");
        let broken = dir.path().join("plugins/kinfra-provider-broken");
        std::fs::write(&broken, "#!/bin/sh\necho no >&2\nexit 3\n").expect("write plugin");
        std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let text = format!(
            "{TEXT}[providers]\nplugin_dirs = [\"plugins\"]\n\
             [providers.cracked]\nprovider = \"broken\"\n"
        );
        let config = config(dir.path(), &text);
        let catalog = runtime_catalog(&config, dir.path(), &[]).await;
        let instances = ProviderInstances::default();
        instances.reconcile(&config, catalog.as_ref());
        assert_eq!(state(&instances, "sh"), ("ready".into(), None));
        let (locked, reason) = state(&instances, "locked");
        assert_eq!(locked, "failed");
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("providers.locked.token_file") && r.contains("token")),
            "{reason:?}"
        );
        let (cracked, reason) = state(&instances, "cracked");
        assert_eq!(cracked, "failed");
        assert!(
            reason.as_deref().is_some_and(|r| {
                r.contains("kinfra-provider-broken skipped") && r.contains("describe failed")
            }),
            "{reason:?}"
        );
        let report = instances.report();
        assert_eq!(report["nowhere"].source, "missing");
        assert_eq!(report["sh"].source, "builtin");
        assert_eq!(report["sh"].resources, ["flag"]);

        for (flag, want) in [
            ("starting", "active"),
            ("running", "active"),
            ("stopping", "ready"),
            ("running", "active"),
            ("failed", "ready"),
        ] {
            instances.follow(&services(&[("flag", flag)]));
            assert_eq!(state(&instances, "sh").0, want, "flag {flag}");
        }
        // A failed instance does not become active by a resource of another one.
        assert_eq!(state(&instances, "locked").0, "failed");

        instances.terminate("the runtime is stopping");
        for name in ["sh", "locked", "nowhere", "cracked"] {
            assert_eq!(
                state(&instances, name),
                ("terminated".into(), Some("the runtime is stopping".into()))
            );
        }
        // Nothing leaves terminated.
        instances.follow(&services(&[("flag", "running")]));
        assert_eq!(state(&instances, "sh").0, "terminated");
    }

    #[tokio::test]
    async fn a_reload_retries_failed_instances_and_starts_changed_ones_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = config(dir.path(), TEXT);
        let instances = ProviderInstances::default();
        let catalog = runtime_catalog(&first, dir.path(), &[]).await;
        instances.reconcile(&first, catalog.as_ref());
        instances.follow(&services(&[("flag", "running")]));
        assert_eq!(state(&instances, "sh").0, "active");
        assert!(
            instances.need_catalog(&first),
            "a failed instance is retried"
        );

        // The token file appears; `sh` changes (it starts anew); `nowhere` goes.
        let token = dir.path().join("token");
        std::fs::write(&token, "t0k\n").expect("write token");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        let second = config(
            dir.path(),
            &TEXT
                .replace(
                    "[providers.nowhere]\nprovider = \"not-installed-anywhere\"\n",
                    "",
                )
                .replace(
                    "[providers.sh]\nprovider = \"command\"\n",
                    "[providers.sh]\nprovider = \"command\"\nbase_url = \"http://127.0.0.1:9\"\n",
                ),
        );
        let catalog = runtime_catalog(&second, dir.path(), &[]).await;
        instances.reconcile(&second, catalog.as_ref());
        assert_eq!(state(&instances, "locked"), ("ready".into(), None));
        assert_eq!(state(&instances, "sh").0, "ready", "changed: anew");
        assert!(!instances.report().contains_key("nowhere"));
        assert!(
            !instances.need_catalog(&second),
            "nothing to initialize: no discovery"
        );
        assert!(
            !serde_json::to_string(&instances.report())
                .expect("json")
                .contains("t0k"),
            "the token never shows"
        );
    }
}
