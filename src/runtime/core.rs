//! The runtime core: the one `RuntimeControl` the dashboard, control socket, bus and proxy
//! read and act through (status with CPU/memory and maintenance, actions, logs, history,
//! metrics, reload), and the late-bound view subsystems use before the core exists.

use super::metrics::runtime_metrics;
use super::reload::describe_reload;
use crate::maintenance::Maintenance;
use crate::procstat::ProcessSampler;
use kinfra_bus::Bus;
use kinfra_core::config::Config;
use kinfra_core::event::{Event, EventKind, EventSender};
use kinfra_core::state::ServiceState;
use kinfra_core::status::{CommandRecord, RunRecord, ServiceLogLine, StatusReport};
use kinfra_core::view::ALL_SERVICES;
use kinfra_core::view::{
    Action, ActionError, BoxFuture, CommandCall, CommandError, ReloadOutcome, RuntimeControl,
};
use kinfra_proxy::ProxyServer;
use kinfra_store::Store;
use kinfra_supervisor::Supervisor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{broadcast, watch};

/// Samples CPU and memory of the running services' process trees while status is read
/// ([`crate::procstat::sample_on_demand`]); asleep otherwise.
pub(super) async fn sample_processes(supervisor: Supervisor, sampler: ProcessSampler) {
    crate::procstat::sample_on_demand(sampler, move || {
        supervisor.status().values().filter_map(|s| s.pid).collect()
    })
    .await;
}

/// The runtime's control as seen by subsystems that start before the runtime core exists
/// (the bus must subscribe to events before the first service starts). Events are served
/// from the start; everything else once the core is set.
pub(super) struct LateControl {
    events: EventSender,
    core: std::sync::OnceLock<Arc<RuntimeCore>>,
    project: String,
}

impl LateControl {
    /// A view with events only, until [`LateControl::set`].
    pub(super) fn new(events: EventSender, project: &str) -> Self {
        Self {
            events,
            core: std::sync::OnceLock::new(),
            project: project.to_owned(),
        }
    }

    /// From now on, everything goes to `core`.
    pub(super) fn set(&self, core: Arc<RuntimeCore>) {
        let _ = self.core.set(core);
    }
}

impl RuntimeControl for LateControl {
    fn status(&self) -> StatusReport {
        match self.core.get() {
            Some(core) => core.status(),
            None => StatusReport::new(self.project.clone(), BTreeMap::new()),
        }
    }

    fn status_unobserved(&self) -> StatusReport {
        match self.core.get() {
            Some(core) => core.status_unobserved(),
            None => StatusReport::new(self.project.clone(), BTreeMap::new()),
        }
    }

    fn logs(
        &self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogLine>, ActionError> {
        match self.core.get() {
            Some(core) => core.logs(service, lines),
            None => Ok(Vec::new()),
        }
    }

    fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        match self.core.get() {
            Some(core) => core.subscribe_logs(),
            None => broadcast::channel(1).1,
        }
    }

    fn act(&self, action: Action, service: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        let service = service.to_owned();
        Box::pin(async move {
            match self.core.get() {
                Some(core) => core.act(action, &service).await,
                None => Err(ActionError::NotAvailable {
                    action: action.as_str().to_owned(),
                    service,
                    reason: "the runtime is still starting".into(),
                }),
            }
        })
    }

    fn request_shutdown(&self, reason: &str) {
        if let Some(core) = self.core.get() {
            core.request_shutdown(reason);
        }
    }

    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<serde_json::Value, CommandError>> {
        Box::pin(async move {
            match self.core.get() {
                Some(core) => core.run_command(call).await,
                None => Err(CommandError::Failed("the runtime is still starting".into())),
            }
        })
    }

    fn commands(&self, resource: &str) -> Result<Vec<serde_json::Value>, String> {
        match self.core.get() {
            Some(core) => core.commands(resource),
            None => Ok(Vec::new()),
        }
    }

    fn subscribe_fleet_events(&self) -> Option<broadcast::Receiver<Arc<str>>> {
        self.core
            .get()
            .and_then(|core| core.subscribe_fleet_events())
    }

    fn reload(&self) -> BoxFuture<'_, Result<ReloadOutcome, String>> {
        Box::pin(async move {
            match self.core.get() {
                Some(core) => core.reload().await,
                None => Err("the runtime is still starting".into()),
            }
        })
    }
}

/// The part of the runtime shared with the dashboard and the control socket.
pub(super) struct RuntimeCore {
    pub(super) project: String,
    pub(super) events: EventSender,
    pub(super) supervisor: Supervisor,
    pub(super) shutdown_requested: watch::Sender<Option<String>>,
    pub(super) shutting_down: AtomicBool,
    /// The config now in force (changes on reload).
    pub(super) current: std::sync::Mutex<Config>,
    pub(super) config_file: Option<PathBuf>,
    /// One reload at a time.
    pub(super) reloading: tokio::sync::Mutex<()>,
    /// CPU and memory of each service's process tree.
    pub(super) sampler: ProcessSampler,
    /// What is in maintenance.
    pub(super) maintenance: std::sync::Mutex<Maintenance>,
    pub(super) state_dir: PathBuf,
    /// The message bus.
    pub(super) bus: Bus,
    /// Runtime state, runs and events; the user's database (`None`: `[store] enabled =
    /// false`).
    pub(super) store: Option<Store>,
    /// The proxy, when it runs (its routes show in status; reloads swap them). Taken at
    /// shutdown.
    pub(super) proxy: tokio::sync::Mutex<Option<ProxyServer>>,
    /// The proxy runs (its routes show in status).
    pub(super) proxy_enabled: bool,
    /// The dashboard's access rules, when it runs (a reload updates the hosts it answers to).
    pub(super) dashboard_policy: Option<kinfra_dashboard::auth::AccessPolicy>,
    /// Providers the application registered in code (reloads build resources with them too).
    pub(super) providers: Vec<Arc<dyn kinfra_provider::provider::Provider>>,
    /// The lifecycle of each `[providers.X]` instance (reloads add, remove and initialize
    /// them again; `follow_instances` moves them with their resources).
    pub(super) instances: super::providers::ProviderInstances,
    /// What each provider resource's commands need, by resource (reloads update it).
    pub(super) command_targets: std::sync::Mutex<BTreeMap<String, super::providers::CommandTarget>>,
    /// Keys changed by the last reload that wait for a restart of kinfra.
    pub(super) pending_restart: std::sync::Mutex<Vec<String>>,
    /// The proxy's request counters, when it runs.
    pub(super) proxy_metrics: Option<kinfra_proxy::ProxyMetricsHandle>,
    /// Automatic HTTPS, when `[acme]` is set (taken at shutdown).
    pub(super) acme: std::sync::Mutex<Option<kinfra_acme::AcmeHandle>>,
    /// The Cloudflare tunnel (`[tunnel]`), set up in the background after the proxy listens.
    pub(super) tunnel: super::tunnel::TunnelSlot,
    /// Scale to zero: puts idle targets to sleep, wakes them (`Action::Wake`/`Sleep`).
    pub(super) scale: Arc<super::scale::ScaleToZero>,
}

impl RuntimeCore {
    /// The ACME certificates and where each stands (empty without `[acme]`).
    pub(super) fn certificates(&self) -> Vec<kinfra_acme::CertStatus> {
        let acme = match self.acme.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        acme.as_ref()
            .map(kinfra_acme::AcmeHandle::status)
            .unwrap_or_default()
    }

    fn maintenance_state(&self) -> Maintenance {
        match self.maintenance.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Switches maintenance of `service` (or everything, for `*`), saves it, and says so.
    fn set_maintenance(&self, service: &str, on: bool) -> Result<(), ActionError> {
        if service != ALL_SERVICES && !self.supervisor.status().contains_key(service) {
            return Err(ActionError::UnknownService(service.to_owned()));
        }
        let saved = {
            let mut m = match self.maintenance.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            if service == ALL_SERVICES {
                m.global = on;
            } else if on {
                m.services.insert(service.to_owned());
            } else {
                m.services.remove(service);
            }
            m.clone()
        };
        if let Err(error) = saved.save(&self.state_dir) {
            tracing::warn!(%error, "Cannot save the maintenance state; it holds until kinfra stops.");
        }
        self.events.emit(EventKind::MaintenanceChanged {
            service: service.to_owned(),
            on,
        });
        Ok(())
    }

    pub(super) fn current_config(&self) -> Config {
        match self.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl RuntimeCore {
    /// The status report; `observed`: a read by someone looking, which keeps CPU and memory
    /// sampled.
    fn report(&self, observed: bool) -> StatusReport {
        let mut services = self.supervisor.status();
        self.scale.annotate(&mut services);
        let maintenance = self.maintenance_state();
        if observed {
            self.sampler.wanted();
        }
        for (name, s) in services.iter_mut() {
            if let Some((cpu, mem)) = s.pid.and_then(|pid| self.sampler.get(pid)) {
                s.cpu_percent = Some(cpu);
                s.memory_bytes = Some(mem);
            }
            if maintenance.covers(name) {
                s.status_message = format!(
                    "In maintenance{} (process {})",
                    if maintenance.global {
                        ", runtime-wide"
                    } else {
                        ""
                    },
                    s.state
                );
                s.state = ServiceState::Maintenance;
            }
        }
        let mut report = StatusReport::new(self.project.clone(), services);
        report.bus = serde_json::to_value(self.bus.status()).ok();
        report.store = self
            .store
            .as_ref()
            .and_then(|s| serde_json::to_value(s.stats()).ok());
        report.certificates = self
            .certificates()
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        report.pending_restart = match self.pending_restart.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        report.providers = self.instances.report();
        report.node = self.bus.node().map(str::to_owned);
        report.fleet = self
            .bus
            .fleet()
            .and_then(|fleet| serde_json::to_value(fleet).ok());
        report.tunnel = self.tunnel.report(&report.services, &self.current_config());
        if self.proxy_enabled {
            report.routes = self
                .current_config()
                .routes
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect();
        }
        report
    }
}

impl RuntimeControl for RuntimeCore {
    fn status(&self) -> StatusReport {
        self.report(true)
    }

    fn status_unobserved(&self) -> StatusReport {
        self.report(false)
    }

    fn extra_metrics(&self) -> String {
        runtime_metrics(self)
    }

    fn subscribe_fleet_events(&self) -> Option<broadcast::Receiver<Arc<str>>> {
        self.bus.subscribe_fleet_events()
    }

    fn route_totals(&self) -> Vec<kinfra_core::metrics::RouteTotals> {
        self.proxy_metrics
            .as_ref()
            .map(kinfra_proxy::ProxyMetricsHandle::route_totals)
            .unwrap_or_default()
    }

    fn commands(&self, resource: &str) -> Result<Vec<serde_json::Value>, String> {
        let target = match self.command_targets.lock() {
            Ok(held) => held.get(resource).cloned(),
            Err(poisoned) => poisoned.into_inner().get(resource).cloned(),
        };
        match target {
            Some(target) => Ok(target
                .provider
                .resource_commands(&target.decl)
                .iter()
                .filter_map(|spec| serde_json::to_value(spec).ok())
                .collect()),
            None if self.supervisor.status().contains_key(resource)
                || self.current_config().services.contains_key(resource) =>
            {
                Ok(Vec::new())
            }
            None => Err(format!("unknown resource `{resource}`")),
        }
    }

    fn history(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<RunRecord>, String>> {
        let service = service.map(str::to_owned);
        Box::pin(async move {
            let Some(store) = &self.store else {
                return Err(
                    "the store is disabled (`[store] enabled = false`): no run history".into(),
                );
            };
            if let Some(name) = &service
                && !self.current_config().services.contains_key(name)
                && !self.supervisor.status().contains_key(name)
            {
                // A service removed from the config may still have runs on record.
                let runs = store
                    .history(Some(name), limit)
                    .await
                    .map_err(|e| e.to_string())?;
                if runs.is_empty() {
                    return Err(format!("unknown service `{name}`"));
                }
                return Ok(runs);
            }
            store
                .history(service.as_deref(), limit)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn command_history(
        &self,
        resource: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommandRecord>, String>> {
        let resource = resource.to_owned();
        Box::pin(async move {
            match &self.store {
                Some(store) => store
                    .command_history(&resource, limit)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(Vec::new()),
            }
        })
    }

    fn logs(
        &self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogLine>, ActionError> {
        self.supervisor.logs(service, lines)
    }

    fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        self.supervisor.subscribe_logs()
    }

    fn act(&self, action: Action, service: &str) -> BoxFuture<'_, Result<(), ActionError>> {
        let service = service.to_owned();
        Box::pin(async move {
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(ActionError::ShuttingDown);
            }
            if let Some((name, node)) = super::fleet::remote_target(&service) {
                if Some(node) != self.bus.node() {
                    return super::fleet::act_remote(&self.bus, action, name, node).await;
                }
                // Addressed to this node by name: the plain service.
                return Box::pin(self.act(action, name)).await;
            }
            match action {
                Action::MaintenanceOn | Action::MaintenanceOff => {
                    self.set_maintenance(&service, action == Action::MaintenanceOn)
                }
                Action::Wake => self.scale.wake(&service).await,
                Action::Sleep => self.scale.sleep(&service).await,
                _ => self.supervisor.act(action, &service).await,
            }
        })
    }

    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<serde_json::Value, CommandError>> {
        Box::pin(async move {
            if self.shutting_down.load(Ordering::SeqCst) {
                return Err(CommandError::Failed("the runtime is shutting down".into()));
            }
            self.run_command(call).await
        })
    }

    fn reload(&self) -> BoxFuture<'_, Result<ReloadOutcome, String>> {
        Box::pin(async move {
            self.reload_file()
                .await
                .map(|report| ReloadOutcome {
                    message: describe_reload(&report),
                    needs_restart: report.needs_restart,
                })
                .map_err(|e| e.to_string())
        })
    }

    fn request_shutdown(&self, reason: &str) {
        self.shutdown_requested.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason.to_owned());
                true
            } else {
                false
            }
        });
    }
}
