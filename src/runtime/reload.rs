//! Reloading the config: validate, apply resources then services as a diff, and say what
//! only applies after a restart of kinfra.

use super::core::RuntimeCore;
use super::dashboard::{dashboard_hosts, interpolated_routes};
use super::providers::{provider_resources, runtime_catalog};
use super::resources::container_resources;
use kinfra_core::ConfigErrors;
use kinfra_core::config::{Config, ProxyConfig, ResourceConfig, ServiceConfig};
use kinfra_core::event::EventKind;
use kinfra_core::view::Action;
use kinfra_supervisor::{ReloadSummary, SupervisorError};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Why a reload was rejected. The running services were left as they were.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// There is no file to re-read (the config was built in code or is the built-in default).
    #[error("there is no config file to reload from (the runtime was started from {0})")]
    NoFile(String),
    /// The new config is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The supervisor refused the new set of services.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// A changed `[resources.NAME]` block could not be built again.
    #[error("resources: {0}")]
    Resources(String),
    /// The proxy refused the new `[[routes]]` (it keeps serving the old ones).
    #[error("routes: {0}")]
    Routes(String),
}

/// What a reload did: the services and resources it added, removed, restarted and left
/// alone, whether the proxy's routes changed, and the changed keys that only take effect when
/// kinfra restarts (the runtime keeps their old values until then).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Services and resources.
    #[serde(flatten)]
    pub services: ReloadSummary,
    /// The proxy now serves the new `[[routes]]`.
    pub routes_changed: bool,
    /// Changed keys that wait for a restart of kinfra, as `section.key` (`proxy.http`).
    pub needs_restart: Vec<String>,
}

/// Keys of `[proxy]` that a reload applies at once (the rest need a restart).
const LIVE_PROXY_KEYS: &[&str] = &["maintenance"];

/// The keys that differ between what runs and the new config in the sections that cannot
/// change while the runtime runs (listen addresses, the store, the bus, ACME, ...), as
/// `section.key`. A difference only a secret can explain (it serializes masked) is named by
/// its section.
pub(super) fn restart_only_keys(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    changed_keys("project", &running.project, &new.project, &[], &mut out);
    changed_keys(
        "dashboard",
        &running.dashboard,
        &new.dashboard,
        &[],
        &mut out,
    );
    changed_keys(
        "proxy",
        &running.proxy,
        &new.proxy,
        LIVE_PROXY_KEYS,
        &mut out,
    );
    changed_keys("bus", &running.bus, &new.bus, &[], &mut out);
    changed_keys("store", &running.store, &new.store, &[], &mut out);
    changed_keys("node", &running.node, &new.node, &[], &mut out);
    match (&running.acme, &new.acme) {
        (Some(old), Some(new)) => changed_keys("acme", old, new, &[], &mut out),
        (None, None) => {}
        _ => out.push("acme".to_owned()),
    }
    out
}

/// Pushes `section.key` for each key (other than `live` ones) whose value differs.
fn changed_keys<T: serde::Serialize + PartialEq>(
    section: &str,
    old: &T,
    new: &T,
    live: &[&str],
    out: &mut Vec<String>,
) {
    if old == new {
        return;
    }
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        out.push(section.to_owned());
        return;
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    if differing.is_empty() {
        // Only a masked value (a secret) changed.
        out.push(section.to_owned());
    }
    out.extend(
        differing
            .into_iter()
            .filter(|k| !live.contains(&k.as_str()))
            .map(|k| format!("{section}.{k}")),
    );
}

/// The config that runs after a reload to `new`: everything from `new` except the sections
/// that need a restart, which keep the values the runtime runs with (`running`).
fn applied_config(running: &Config, new: &Config) -> Config {
    let mut applied = new.clone();
    applied.project = running.project.clone();
    applied.dashboard = running.dashboard.clone();
    applied.proxy = ProxyConfig {
        maintenance: new.proxy.maintenance,
        ..running.proxy.clone()
    };
    applied.bus = running.bus.clone();
    applied.store = running.store.clone();
    applied.acme = running.acme.clone();
    applied.node = running.node.clone();
    applied
}

/// The services as the supervisor runs them: the global `[env]` merged under each service's
/// own `env`, so a change to `[env]` restarts exactly the services it reaches.
pub(super) fn effective_services(config: &Config) -> BTreeMap<String, ServiceConfig> {
    config
        .services
        .iter()
        .map(|(name, service)| {
            let mut service = service.clone();
            let mut env = config.env.clone();
            env.extend(std::mem::take(&mut service.env));
            service.env = env;
            (name.clone(), service)
        })
        .collect()
}

/// True when `resource` is a provider resource whose `[providers.X]` table differs between
/// `old` and `new` (a new token, base URL, ...): it is built again with the new instance.
fn instance_changed(old: &Config, new: &Config, resource: &ResourceConfig) -> bool {
    resource
        .provider
        .as_deref()
        .is_some_and(|i| old.providers.instances.get(i) != new.providers.instances.get(i))
}

/// One line for people about what a reload did.
pub(super) fn describe_reload(report: &ReloadReport) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let summary = &report.services;
    let mut text = format!(
        "reloaded: added {}; removed {}; restarted {}; unchanged {}",
        list(&summary.added),
        list(&summary.removed),
        list(&summary.changed),
        summary.unchanged.len()
    );
    if report.routes_changed {
        text.push_str("; routes applied");
    }
    if !report.needs_restart.is_empty() {
        text.push_str(&format!(
            "\nneeds_restart: {} (kinfra keeps the old values until it restarts)",
            report.needs_restart.join(", ")
        ));
    }
    text
}

impl RuntimeCore {
    /// Applies `new` as a diff from what runs: resources, then services, then the proxy's
    /// routes; changed keys that cannot apply live are reported and kept at their running
    /// values, so status goes on describing what runs.
    pub(super) async fn apply(&self, new: Config) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ReloadError::ShuttingDown);
        }
        if let Err(errors) = new.validate() {
            self.events.emit(EventKind::ConfigRejected {
                error: errors.to_string(),
            });
            return Err(errors.into());
        }
        let old = self.current_config();
        let needs_restart = restart_only_keys(&old, &new);
        // What runs here is decided by the running node's name (`[node]` needs a restart).
        let new = super::fleet::for_this_node(applied_config(&old, &new));
        // Routes first: an invalid set is refused before anything else changes, and a route
        // to a service that is only now added shows its loading page until it runs.
        let routes_changed = old.routes != new.routes;
        if routes_changed && let Some(proxy) = self.proxy.lock().await.as_ref() {
            proxy
                .set_routes(interpolated_routes(&new))
                .await
                .map_err(|e| ReloadError::Routes(e.to_string()))?;
        }
        if routes_changed && let Some(policy) = &self.dashboard_policy {
            // The proxy forwards the dashboard's paths on every route host.
            policy.set_allowed_hosts(dashboard_hosts(&new));
        }
        // The provider catalog (plugin discovery) only when something needs it: a provider
        // resource to build, an instance to initialize.
        let catalog = if self.instances.need_catalog(&new)
            || new.resources.iter().any(|(name, r)| {
                r.is_provider()
                    && (old.resources.get(name) != Some(r) || instance_changed(&old, &new, r))
            }) {
            runtime_catalog(&new, &self.state_dir, &self.providers).await
        } else {
            None
        };
        // Resources before services: services that depend on a new or changed one wait for it.
        let resources = self.apply_resources(&old, &new, catalog.as_ref()).await?;
        // Instances added, removed, changed or failed are initialized (again); then ready or
        // active by what their resources do now.
        self.instances.reconcile(&new, catalog.as_ref());
        self.instances.follow(&self.supervisor.status());
        let mut services = effective_services(&new);
        self.tunnel.keep_service(&old, &new, &mut services);
        // The targets before the services start, so the controller sees them turn running.
        self.scale.set_targets(&new, None);
        self.activity_changed().await;
        let mut summary = match self.supervisor.apply(&services).await {
            Ok(summary) => summary,
            Err(error) => {
                self.scale.set_targets(&old, None);
                self.activity_changed().await;
                return Err(error.into());
            }
        };
        // Services that depend on a changed resource get its new connection.
        for name in &resources.changed {
            for (service, cfg) in &new.services {
                if cfg.depends_on.0.contains_key(name)
                    && summary.unchanged.contains(service)
                    && let Err(error) = self.supervisor.act(Action::Restart, service).await
                {
                    tracing::warn!(%service, %error, "Cannot restart a dependent of a changed resource.");
                }
            }
        }
        summary.added.extend(resources.added);
        summary.removed.extend(resources.removed);
        summary.changed.extend(resources.changed);
        summary.unchanged.extend(resources.unchanged);
        {
            let mut m = match self.maintenance.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let before = m.clone();
            m.reconcile(&old, &new);
            if *m != before
                && let Err(error) = m.save(&self.state_dir)
            {
                tracing::warn!(%error, "Cannot save the maintenance state.");
            }
        }
        if !needs_restart.is_empty() {
            tracing::warn!(
                keys = %needs_restart.join(", "),
                "Config changes that only apply after a restart of kinfra."
            );
        }
        match self.pending_restart.lock() {
            Ok(mut p) => p.clone_from(&needs_restart),
            Err(poisoned) => poisoned.into_inner().clone_from(&needs_restart),
        }
        match self.current.lock() {
            Ok(mut c) => *c = new.clone(),
            Err(poisoned) => *poisoned.into_inner() = new.clone(),
        }
        // The tunnel's config follows the new routes (cloudflared restarted when it changed).
        self.tunnel.reloaded(self, &old, &new).await;
        Ok(ReloadReport {
            services: summary,
            routes_changed,
            needs_restart,
        })
    }

    /// Tells the proxy that scale to zero's targets changed (its routing snapshot carries
    /// them).
    async fn activity_changed(&self) {
        if let Some(proxy) = self.proxy.lock().await.as_ref() {
            proxy.activity_changed();
        }
    }

    /// Applies `[resources]` changes: removed and changed ones stop and leave the supervisor;
    /// added and changed ones are built again and started (a changed one has a new config
    /// hash, so its container is recreated; data volumes are kept).
    async fn apply_resources(
        &self,
        old: &Config,
        new: &Config,
        catalog: Option<&crate::providers::Catalog>,
    ) -> Result<ReloadSummary, ReloadError> {
        let mut out = ReloadSummary::default();
        let mut rebuild = BTreeMap::new();
        for (name, cfg) in &new.resources {
            match old.resources.get(name) {
                None => out.added.push(name.clone()),
                Some(before) if before != cfg || instance_changed(old, new, cfg) => {
                    out.changed.push(name.clone())
                }
                Some(_) => {
                    out.unchanged.push(name.clone());
                    continue;
                }
            }
            rebuild.insert(name.clone(), cfg.clone());
        }
        out.removed = old
            .resources
            .keys()
            .filter(|n| !new.resources.contains_key(*n))
            .cloned()
            .collect();
        self.forget_command_targets(out.removed.iter().chain(&out.changed));
        for name in out.removed.iter().chain(&out.changed) {
            if let Err(error) = self.supervisor.remove_resource(name).await {
                tracing::warn!(resource = %name, %error, "Cannot stop a resource for a reload.");
            }
        }
        if rebuild.is_empty() {
            return Ok(out);
        }
        let mut partial = new.clone();
        partial.resources = rebuild;
        let mut stored_ports = match &self.store {
            Some(store) => Some(
                store
                    .ports()
                    .await
                    .map_err(|e| ReloadError::Resources(e.to_string()))?,
            ),
            None => None,
        };
        let mut specs = container_resources(
            &partial,
            &self.state_dir,
            &self.events,
            stored_ports.as_mut(),
            self.store.as_ref(),
        )
        .await
        .map_err(|e| ReloadError::Resources(e.to_string()))?;
        let built = provider_resources(&partial, catalog)
            .await
            .map_err(|e| ReloadError::Resources(e.to_string()))?;
        specs.extend(built.specs);
        self.set_command_targets(built.targets);
        self.supervisor.add_resources(specs)?;
        Ok(out)
    }

    pub(super) async fn reload_file(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = &self.config_file else {
            return Err(ReloadError::NoFile(self.current_config().origin));
        };
        let config = match Config::from_file(path) {
            Ok(config) => config,
            Err(errors) => {
                self.events.emit(EventKind::ConfigRejected {
                    error: errors.to_string(),
                });
                return Err(errors.into());
            }
        };
        self.apply(config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::config::Format;

    fn config(text: &str) -> Config {
        match Config::parse(text, Format::Toml, "test", std::path::Path::new("."), &[]) {
            Ok(config) => config,
            Err(errors) => panic!("config: {errors}"),
        }
    }

    #[test]
    fn a_changed_instance_rebuilds_its_resources_only() {
        let text = "[project]\nname = \"t\"\n\
            [providers.a]\nprovider = \"command\"\n[providers.b]\nprovider = \"command\"\n\
            [resources.on_a]\nprovider = \"a\"\nstatus = \"true\"\n\
            [resources.on_b]\nprovider = \"b\"\nstatus = \"true\"\n";
        let old = config(text);
        let new = config(&text.replace(
            "[providers.a]\nprovider = \"command\"\n",
            "[providers.a]\nprovider = \"command\"\nbase_url = \"http://127.0.0.1:9\"\n",
        ));
        assert!(instance_changed(&old, &new, &new.resources["on_a"]));
        assert!(!instance_changed(&old, &new, &new.resources["on_b"]));
        assert!(!instance_changed(&old, &old, &old.resources["on_a"]));
    }
}
