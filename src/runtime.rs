//! The runtime's lifecycle: start the subsystems in order, expose them, stop them all.

use crate::control::{ControlServer, ControlServerError};
use crate::lock::{LockError, StateLock};
use crate::maintenance::Maintenance;
use crate::procstat::ProcessSampler;
use kinfra_bus::{Bus, BusError, BusOptions};
use kinfra_core::ConfigErrors;
use kinfra_core::Secret;
use kinfra_core::config::Config;
use kinfra_core::config::ServiceConfig;
use kinfra_core::control::RuntimeInfo;
use kinfra_core::event::{Event, EventKind, EventSender};
use kinfra_core::state::ServiceState;
use kinfra_core::status::{RunRecord, ServiceLogLine, StatusReport};
use kinfra_core::view::ALL_SERVICES;
use kinfra_core::view::{Action, ActionError, BoxFuture, RuntimeControl};
use kinfra_dashboard::auth::AccessPolicy;
use kinfra_dashboard::sse::EventHistory;
use kinfra_dashboard::{DashboardError, DashboardOptions, DashboardServer};
use kinfra_proxy::{ProxyError, ProxyOptions, ProxyServer};
use kinfra_store::{Store, StoreError};
use kinfra_supervisor::{ReloadSummary, Supervisor, SupervisorError, SupervisorOptions};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Why the runtime could not start. Whatever had started is stopped again before this is
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The state dir cannot be created or used.
    #[error("cannot use the state dir {}: {source}", .path.display())]
    StateDir {
        /// The state dir.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another runtime holds the state dir.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// The supervisor refused to start.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// The dashboard listener could not start.
    #[error(transparent)]
    Dashboard(#[from] DashboardError),
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] ControlServerError),
    /// The proxy could not start (bad listen address, port taken, certificates).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The bus config is unusable (bad URL, unreadable credentials or TLS files).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A `[resources.NAME]` block cannot be built (its port, its template).
    #[error(transparent)]
    Docker(#[from] kinfra_docker::DockerError),
    /// Automatic HTTPS cannot start (an unreadable `acme.ca_roots` file).
    #[error(transparent)]
    Acme(#[from] kinfra_acme::AcmeError),
    /// The store cannot be opened (corrupt or locked data dir, unreachable URL) or its boot
    /// steps failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dashboard token file could not be read or written.
    #[error("dashboard token file {}: {source}", .path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The store's write counters in the Prometheus text format.
fn store_metrics(s: &kinfra_store::StoreStats) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
        out.push_str(&format!(
            "# HELP kinfra_store_{name} {help}\n# TYPE kinfra_store_{name} {kind}\nkinfra_store_{name} {value}\n"
        ));
    };
    counter(
        "writes_total",
        "Changes committed to the store.",
        "counter",
        s.written,
    );
    counter(
        "commits_total",
        "Store transactions committed.",
        "counter",
        s.commits,
    );
    counter(
        "write_failures_total",
        "Store write attempts that failed (each retried).",
        "counter",
        s.failures,
    );
    counter(
        "abandoned_total",
        "Changes the store rejected and gave up on.",
        "counter",
        s.abandoned,
    );
    counter(
        "dropped_total",
        "Changes dropped because the store queue was full.",
        "counter",
        s.dropped,
    );
    counter(
        "lagged_total",
        "Events the store missed because it fell behind.",
        "counter",
        s.lagged,
    );
    counter(
        "queued",
        "Changes waiting to be written.",
        "gauge",
        s.queued,
    );
    out
}

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
async fn container_resources(
    config: &Config,
    state_dir: &Path,
    events: &EventSender,
    stored_ports: Option<&mut BTreeMap<String, u16>>,
    store: Option<&Store>,
) -> Result<Vec<(String, kinfra_supervisor::ResourceSpec)>, StartError> {
    if config.resources.is_empty() {
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

/// Expiry of each ACME certificate as a Unix timestamp, in the Prometheus text format.
fn certificate_metrics(certs: &[kinfra_acme::CertStatus]) -> String {
    let mut out = String::new();
    for c in certs {
        let Some(expiry) = c
            .not_after
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            continue;
        };
        if out.is_empty() {
            out.push_str(
                "# HELP kinfra_certificate_expiry_timestamp_seconds When the served certificate \
                 of a domain expires (Unix time).\n\
                 # TYPE kinfra_certificate_expiry_timestamp_seconds gauge\n",
            );
        }
        let domain = kinfra_core::metrics::label_value(&c.domain);
        out.push_str(&format!(
            "kinfra_certificate_expiry_timestamp_seconds{{domain=\"{domain}\"}} {}\n",
            expiry.as_secs()
        ));
    }
    out
}

/// Samples CPU and memory of the running services' process trees, off the async threads.
async fn sample_processes(supervisor: Supervisor, sampler: ProcessSampler) {
    let mut tick = tokio::time::interval(crate::procstat::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let roots: Vec<u32> = supervisor.status().values().filter_map(|s| s.pid).collect();
        let sampler = sampler.clone();
        if tokio::task::spawn_blocking(move || sampler.sample(&roots))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The runtime's control as seen by subsystems that start before the runtime core exists
/// (the bus must subscribe to events before the first service starts). Events are served
/// from the start; everything else once the core is set.
struct LateControl {
    events: EventSender,
    core: std::sync::OnceLock<Arc<RuntimeCore>>,
    project: String,
}

impl RuntimeControl for LateControl {
    fn status(&self) -> StatusReport {
        match self.core.get() {
            Some(core) => core.status(),
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

    fn reload(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            match self.core.get() {
                Some(core) => core.reload().await,
                None => Err("the runtime is still starting".into()),
            }
        })
    }
}

/// Values of secret-named environment variables in the config, masked wherever kinfra
/// publishes text (the bus, for one).
fn secret_values(config: &Config) -> Vec<Secret> {
    let globals = config.env.iter();
    let per_service = config.services.values().flat_map(|s| s.env.iter());
    let mut out: Vec<Secret> = globals
        .chain(per_service)
        .filter(|(k, v)| kinfra_core::secret::is_secret_name(k) && v.len() >= 4)
        .map(|(_, v)| Secret::new(v.clone()))
        .collect();
    if let Some(token) = &config.dashboard.token {
        out.push(token.clone());
    }
    out
}

/// The routes with `${ENV}` references in upstream URLs resolved (the proxy takes them as
/// they are). A reference that cannot be resolved is left for the proxy to reject.
fn interpolated_routes(config: &Config) -> Vec<kinfra_core::config::RouteConfig> {
    let lookup = |name: &str| {
        config
            .env
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    };
    config
        .routes
        .iter()
        .cloned()
        .map(|mut route| {
            if let Some(upstreams) = route.upstream.as_mut() {
                for url in upstreams.0.iter_mut() {
                    if let Ok(resolved) =
                        kinfra_core::config::interpolate::interpolate(url, &lookup)
                    {
                        *url = resolved;
                    }
                }
            }
            route
        })
        .collect()
}

/// A background task that ends with its owner (also when startup fails half way).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// File name of the generated dashboard token inside the state dir.
pub const TOKEN_FILE: &str = "dashboard.token";

/// The dashboard token and whether the user configured it (`dashboard.token` or
/// `KINFRA_DASHBOARD_TOKEN`) rather than kinfra generating it into the state dir.
pub fn dashboard_token(config: &Config, state_dir: &Path) -> Result<(Secret, bool), StartError> {
    if let Some(token) = config
        .dashboard
        .token
        .as_ref()
        .filter(|t| !t.expose().is_empty())
    {
        return Ok((token.clone(), true));
    }
    if let Some(token) = std::env::var("KINFRA_DASHBOARD_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok((Secret::new(token.trim()), true));
    }
    let path = state_dir.join(TOKEN_FILE);
    let err = |source| StartError::Token {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok((Secret::new(text.trim()), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = kinfra_dashboard::generate_token().map_err(err)?;
    let tmp = state_dir.join(format!("{TOKEN_FILE}.tmp"));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        writeln!(file, "{token}").map_err(err)?;
        file.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok((Secret::new(token), false))
}

/// Host names the dashboard answers to besides loopback: configured ones, route hosts and
/// ACME domains (the proxy forwards reserved paths on those names to the dashboard).
fn dashboard_hosts(config: &Config) -> Vec<String> {
    let mut hosts = config.dashboard.allowed_hosts.clone();
    hosts.extend(config.routes.iter().filter_map(|r| r.host.clone()));
    if let Some(acme) = &config.acme {
        hosts.extend(acme.domains.iter().cloned());
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

impl StartError {
    /// True when the error is the user's input (config), as opposed to the environment.
    pub fn is_config_error(&self) -> bool {
        matches!(self, StartError::Config(_))
    }
}

/// Why a shutdown was not clean.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// Some subsystem had to be killed or aborted after the timeout.
    #[error("shutdown did not finish within {0:?}; what was left was killed")]
    TimedOut(Duration),
}

/// Knobs for [`start_with`] that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Use this event channel (subscribe to it before starting to see every event, including
    /// the first ones). A new one is made when absent.
    pub events: Option<EventSender>,
    /// The file the config was read from: `kinfra runtime reload` and SIGHUP re-read it.
    /// Without it, only [`Runtime::reload`] with a new `Config` can change the services.
    pub config_file: Option<PathBuf>,
}

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
}

/// Sections that cannot change while the runtime runs; a reload that changes them applies
/// the services and says a restart is needed for the rest.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.project != new.project {
        out.push("[project]");
    }
    if old.dashboard != new.dashboard {
        out.push("[dashboard]");
    }
    if old.proxy != new.proxy || old.routes != new.routes {
        out.push("[proxy] and [[routes]]");
    }
    if old.bus != new.bus {
        out.push("[bus]");
    }
    if old.store != new.store {
        out.push("[store]");
    }
    if old.acme != new.acme {
        out.push("[acme]");
    }
    out
}

/// The services as the supervisor runs them: the global `[env]` merged under each service's
/// own `env`, so a change to `[env]` restarts exactly the services it reaches.
fn effective_services(config: &Config) -> BTreeMap<String, ServiceConfig> {
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

/// The part of the runtime shared with the dashboard and the control socket.
struct RuntimeCore {
    project: String,
    events: EventSender,
    supervisor: Supervisor,
    shutdown_requested: watch::Sender<Option<String>>,
    shutting_down: AtomicBool,
    /// The config now in force (changes on reload).
    current: std::sync::Mutex<Config>,
    config_file: Option<PathBuf>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// CPU and memory of each service's process tree.
    sampler: ProcessSampler,
    /// What is in maintenance.
    maintenance: std::sync::Mutex<Maintenance>,
    state_dir: PathBuf,
    /// The message bus.
    bus: Bus,
    /// Runtime state, runs and events; the user's database (`None`: `[store] enabled =
    /// false`).
    store: Option<Store>,
    /// The proxy runs (its routes show in status).
    proxy_enabled: bool,
    /// The proxy's request counters, when it runs.
    proxy_metrics: Option<kinfra_proxy::ProxyMetricsHandle>,
    /// Automatic HTTPS, when `[acme]` is set (taken at shutdown).
    acme: std::sync::Mutex<Option<kinfra_acme::AcmeHandle>>,
}

impl RuntimeCore {
    /// The ACME certificates and where each stands (empty without `[acme]`).
    fn certificates(&self) -> Vec<kinfra_acme::CertStatus> {
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

    fn current_config(&self) -> Config {
        match self.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    async fn apply(&self, new: Config) -> Result<ReloadSummary, ReloadError> {
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
        // Resources first: services that depend on a new or changed one wait for it.
        let resources = self.apply_resources(&old, &new).await?;
        let mut summary = self.supervisor.apply(&effective_services(&new)).await?;
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
        let needs_restart = restart_only_changes(&old, &new);
        if !needs_restart.is_empty() {
            tracing::warn!(
                sections = %needs_restart.join(", "),
                "Config changes that only apply after a restart of kinfra."
            );
        }
        match self.current.lock() {
            Ok(mut c) => *c = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        Ok(summary)
    }

    /// Applies `[resources]` changes: removed and changed ones stop and leave the supervisor;
    /// added and changed ones are built again and started (a changed one has a new config
    /// hash, so its container is recreated; data volumes are kept).
    async fn apply_resources(
        &self,
        old: &Config,
        new: &Config,
    ) -> Result<ReloadSummary, ReloadError> {
        let mut out = ReloadSummary::default();
        let mut rebuild = BTreeMap::new();
        for (name, cfg) in &new.resources {
            match old.resources.get(name) {
                None => out.added.push(name.clone()),
                Some(before) if before != cfg => out.changed.push(name.clone()),
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
        let specs = container_resources(
            &partial,
            &self.state_dir,
            &self.events,
            stored_ports.as_mut(),
            self.store.as_ref(),
        )
        .await
        .map_err(|e| ReloadError::Resources(e.to_string()))?;
        self.supervisor.add_resources(specs)?;
        Ok(out)
    }

    async fn reload_file(&self) -> Result<ReloadSummary, ReloadError> {
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

/// One line for people about what a reload did.
fn describe_reload(summary: &ReloadSummary) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "reloaded: added {}; removed {}; restarted {}; unchanged {}",
        list(&summary.added),
        list(&summary.removed),
        list(&summary.changed),
        summary.unchanged.len()
    )
}

impl RuntimeControl for RuntimeCore {
    fn status(&self) -> StatusReport {
        let mut services = self.supervisor.status();
        let maintenance = self.maintenance_state();
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

    fn extra_metrics(&self) -> String {
        let b = self.bus.status();
        let state = serde_json::to_value(b.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        format!(
            "# HELP kinfra_bus_connected 1 when the bus is connected (or in process).\n\
             # TYPE kinfra_bus_connected gauge\n\
             kinfra_bus_connected{{state=\"{state}\"}} {}\n\
             # HELP kinfra_bus_events_published_total Events handed to the bus.\n\
             # TYPE kinfra_bus_events_published_total counter\n\
             kinfra_bus_events_published_total {}\n\
             # HELP kinfra_bus_events_dropped_total Events the bus could not keep.\n\
             # TYPE kinfra_bus_events_dropped_total counter\n\
             kinfra_bus_events_dropped_total {}\n\
             # HELP kinfra_bus_reconnects_total Reconnections after a lost connection.\n\
             # TYPE kinfra_bus_reconnects_total counter\n\
             kinfra_bus_reconnects_total {}\n",
            u8::from(state == "connected" || state == "in_process"),
            b.published,
            b.dropped,
            b.reconnects
        ) + &self
            .store
            .as_ref()
            .map(|s| store_metrics(&s.stats()))
            .unwrap_or_default()
            + &self
                .proxy_metrics
                .as_ref()
                .map(kinfra_proxy::ProxyMetricsHandle::render)
                .unwrap_or_default()
            + &certificate_metrics(&self.certificates())
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
            match action {
                Action::MaintenanceOn | Action::MaintenanceOff => {
                    self.set_maintenance(&service, action == Action::MaintenanceOn)
                }
                _ => self.supervisor.act(action, &service).await,
            }
        })
    }

    fn reload(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.reload_file()
                .await
                .map(|summary| describe_reload(&summary))
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

/// A running kinfra. Dropping it without [`Runtime::shutdown`] leaves the children to the
/// parent-death signal; call `shutdown` for a graceful stop.
pub struct Runtime {
    core: Arc<RuntimeCore>,
    config: Config,
    state_dir: PathBuf,
    dashboard: Option<DashboardServer>,
    proxy: Option<ProxyServer>,
    control: ControlServer,
    _history_task: AbortOnDrop,
    _sampler_task: AbortOnDrop,
    _lock: StateLock,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("project", &self.core.project)
            .field("state_dir", &self.state_dir)
            .field("dashboard", &self.dashboard_addr())
            .finish_non_exhaustive()
    }
}

/// Starts kinfra with `config` and returns once every subsystem is up (services are launched;
/// they may still be starting). Fails without leaving anything running.
pub async fn start(config: Config) -> Result<Runtime, StartError> {
    start_with(config, RuntimeOptions::default()).await
}

/// [`start`], with options that are not part of the config.
pub async fn start_with(config: Config, options: RuntimeOptions) -> Result<Runtime, StartError> {
    config.validate()?;
    let state_dir = config.state_dir();
    create_state_dir(&state_dir)?;
    let lock = StateLock::acquire(&state_dir)?;
    let events = options
        .events
        .clone()
        .unwrap_or_else(|| EventSender::new(4096));
    // The store records from the first event on, and cleans up after a killed instance
    // before anything starts.
    // (`[store] enabled = false`: no store; the supervisor keeps its state files.)
    let (store, persistence) = if config.store.enabled {
        let store = Store::open(&config.store, &state_dir).await?;
        store.record_events(events.subscribe());
        let boot = match store.boot(&state_dir).await {
            Ok(boot) => boot,
            Err(error) => {
                store.shutdown(Duration::from_secs(2)).await;
                return Err(error.into());
            }
        };
        for run in &boot.recovery.killed {
            tracing::warn!(service = %run.service, pid = run.pid, "Stopped a process a killed instance left running.");
        }
        (Some(store), Some(boot.persistence))
    } else {
        (None, None)
    };
    let started = start_subsystems(
        config,
        options,
        state_dir,
        lock,
        events,
        store.clone(),
        persistence,
    )
    .await;
    if started.is_err()
        && let Some(store) = store
    {
        store.shutdown(Duration::from_secs(5)).await;
    }
    started
}

/// Everything after the store: listeners, bus, proxy, supervisor, dashboard, control. On an
/// error, what this started is stopped again (the caller closes the store).
async fn start_subsystems(
    config: Config,
    options: RuntimeOptions,
    state_dir: PathBuf,
    lock: StateLock,
    events: EventSender,
    store: Option<Store>,
    persistence: Option<kinfra_store::Persistence>,
) -> Result<Runtime, StartError> {
    // The dashboard keeps recent events for streams that resume; it records from before the
    // first service starts.
    let history = EventHistory::new(10_000);
    let history_task = AbortOnDrop(history.clone().record(events.subscribe()));

    // Bind the listeners first: a taken port is found before any service starts.
    let (token, token_configured) = dashboard_token(&config, &state_dir)?;
    let dashboard_listener = if config.dashboard.enabled {
        match DashboardServer::bind(&config.dashboard.listen, token_configured).await {
            Ok(listener) => Some(listener),
            Err(error) => return Err(error.into()),
        }
    } else {
        None
    };
    let control_listener = ControlServer::bind(&state_dir)?;

    // The bus starts before the first service, so every event is published.
    let late = Arc::new(LateControl {
        events: events.clone(),
        core: std::sync::OnceLock::new(),
        project: config.project.name.clone(),
    });
    let bus = Bus::start(
        BusOptions {
            project: config.project.name.clone(),
            state_dir: state_dir.clone(),
            config: config.bus.clone(),
            base_dir: config.base_dir.clone(),
            events: Some(events.clone()),
            secrets: secret_values(&config),
            search_path: None,
        },
        late.clone(),
    )
    .await?;

    // The proxy binds its ports before any service starts; it learns the services' state
    // from the late-bound control and refreshes once the core exists.
    let proxy = if config.proxy.enabled {
        let started = ProxyServer::start(
            ProxyOptions {
                config: config.proxy.clone(),
                routes: interpolated_routes(&config),
                dashboard_addr: dashboard_listener
                    .as_ref()
                    .and_then(|l| l.local_addr().ok()),
                state_dir: state_dir.clone(),
                tls_hosts: dashboard_hosts(&config),
            },
            late.clone(),
        )
        .await;
        match started {
            Ok(proxy) => Some(proxy),
            Err(error) => {
                bus.shutdown(Duration::from_secs(2)).await;
                return Err(error.into());
            }
        }
    } else {
        None
    };

    // Automatic HTTPS: stored certificates are served before any service starts; orders and
    // renewals run in the background. (Validation made sure the proxy serves HTTPS and the
    // store runs when `[acme]` is set.)
    let acme = match (&config.acme, &proxy, &store) {
        (Some(acme_config), Some(proxy_server), Some(store)) => {
            let started = kinfra_acme::AcmeService::start(
                acme_config.clone(),
                kinfra_acme::AcmeOptions {
                    state_dir: Some(state_dir.clone()),
                    ..kinfra_acme::AcmeOptions::default()
                },
                store.clone(),
                proxy_server.cert_resolver(),
                proxy_server.acme_challenges(),
                events.clone(),
            )
            .await;
            match started {
                Ok(handle) => Some(handle),
                Err(error) => {
                    if let Some(proxy) = proxy {
                        proxy.shutdown(Duration::from_secs(2)).await;
                    }
                    bus.shutdown(Duration::from_secs(2)).await;
                    return Err(error.into());
                }
            }
        }
        _ => None,
    };

    let supervisor_options = SupervisorOptions {
        project: config.project.name.clone(),
        state_dir: state_dir.clone(),
        base_dir: config.base_dir.clone(),
        // Merged into each service by `effective_services`, so reloads see it.
        global_env: BTreeMap::new(),
        events: events.clone(),
    };
    let services = effective_services(&config);
    let mut persistence = persistence;
    let supervisor = match container_resources(
        &config,
        &state_dir,
        &events,
        persistence.as_mut().map(|p| &mut p.ports),
        store.as_ref(),
    )
    .await
    {
        Ok(resources) => {
            Supervisor::start_with_resources(&services, supervisor_options, resources, persistence)
                .await
                .map_err(StartError::from)
        }
        Err(error) => Err(error),
    };
    let supervisor = match supervisor {
        Ok(supervisor) => supervisor,
        Err(error) => {
            if let Some(acme) = acme {
                acme.shutdown().await;
            }
            if let Some(proxy) = proxy {
                proxy.shutdown(Duration::from_secs(2)).await;
            }
            bus.shutdown(Duration::from_secs(2)).await;
            return Err(error);
        }
    };

    let (shutdown_requested, _) = watch::channel(None);
    let core = Arc::new(RuntimeCore {
        project: config.project.name.clone(),
        events: events.clone(),
        supervisor,
        shutdown_requested,
        shutting_down: AtomicBool::new(false),
        current: std::sync::Mutex::new(config.clone()),
        config_file: options.config_file.clone(),
        reloading: tokio::sync::Mutex::new(()),
        sampler: ProcessSampler::default(),
        maintenance: std::sync::Mutex::new(Maintenance::load(&state_dir, &config)),
        state_dir: state_dir.clone(),
        bus,
        store,
        proxy_enabled: proxy.is_some(),
        proxy_metrics: proxy.as_ref().map(ProxyServer::metrics),
        acme: std::sync::Mutex::new(acme),
    });
    let _ = late.core.set(core.clone());
    if let Some(proxy) = &proxy {
        proxy.refresh(&*core);
    }
    let sampler_task = AbortOnDrop(tokio::spawn(sample_processes(
        core.supervisor.clone(),
        core.sampler.clone(),
    )));
    let control_view: Arc<dyn RuntimeControl> = core.clone();
    let dashboard_options = DashboardOptions {
        policy: AccessPolicy::new(
            token,
            dashboard_hosts(&config),
            dashboard_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .is_some_and(|a| a.ip().is_loopback()),
        ),
        history,
    };
    let dashboard = match dashboard_listener {
        Some(listener) => {
            match DashboardServer::serve(listener, control_view.clone(), dashboard_options) {
                Ok(server) => Some(server),
                Err(error) => {
                    core.supervisor.shutdown(shutdown_timeout(&config)).await;
                    return Err(error.into());
                }
            }
        }
        None => None,
    };
    let control = control_listener.serve(
        control_view,
        RuntimeInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            dashboard: dashboard.as_ref().map(|d| d.addr().to_string()),
            proxy: proxy
                .as_ref()
                .and_then(ProxyServer::http_addr)
                .map(|a| a.to_string()),
        },
    );
    events.emit(EventKind::RuntimeStarted {
        project: config.project.name.clone(),
    });
    tracing::info!(project = %config.project.name, state_dir = %state_dir.display(), "Runtime started.");
    Ok(Runtime {
        core,
        config,
        state_dir,
        dashboard,
        proxy,
        control,
        _history_task: history_task,
        _sampler_task: sampler_task,
        _lock: lock,
    })
}

fn shutdown_timeout(config: &Config) -> Duration {
    config.project.shutdown_timeout.0
}

fn create_state_dir(dir: &Path) -> Result<(), StartError> {
    let err = |source| StartError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // The state dir holds the control socket, tokens and keys: owner only.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

impl Runtime {
    /// Where the dashboard listens, when it is enabled.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard.as_ref().map(DashboardServer::addr)
    }

    /// Where the proxy listens for plain HTTP, when it runs.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(ProxyServer::http_addr)
    }

    /// Where the proxy listens for HTTPS, when configured.
    pub fn proxy_https_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(ProxyServer::https_addr)
    }

    /// The proxy's certificate store: add or swap certificates by SNI name at run time.
    pub fn certificates(&self) -> Option<Arc<kinfra_proxy::CertStore>> {
        self.proxy.as_ref().map(ProxyServer::cert_resolver)
    }

    /// A SurrealDB handle on the user's own namespace and database (`[store] user_namespace`,
    /// `user_database`) in the same engine as kinfra's state, apart from kinfra's tables.
    /// Fails with [`StoreError::Disabled`] when `[store] enabled = false`.
    pub fn db(&self) -> Result<kinfra_store::Db, StoreError> {
        self.store()?.user_db()
    }

    fn store(&self) -> Result<&Store, StoreError> {
        self.core.store.as_ref().ok_or(StoreError::Disabled)
    }

    /// Recent runs of one service (or of all), newest first, across restarts of kinfra.
    pub async fn history(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        self.store()?.history(service, limit).await
    }

    /// The message bus kinfra brought up (a NATS connection, or the in-process bus), for the
    /// application's own messages. `bus().nats_client()` is the raw async-nats client when a
    /// real server is used.
    pub fn bus(&self) -> Bus {
        self.core.bus.clone()
    }

    /// Every event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.core.events.subscribe()
    }

    /// Every captured log line from now on.
    pub fn logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        self.core.supervisor.subscribe_logs()
    }

    /// The last `lines` log lines of one service, or of all.
    pub fn recent_logs(
        &self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogLine>, ActionError> {
        self.core.logs(service, lines)
    }

    /// A snapshot of every service, as `/__status__` has it.
    pub async fn status(&self) -> StatusReport {
        self.core.status()
    }

    /// Restarts a service.
    pub async fn restart(&self, service: &str) -> Result<(), ActionError> {
        self.core.act(Action::Restart, service).await
    }

    /// Switches maintenance mode of one service, or of everything with `None`: the proxy
    /// answers with the maintenance page; processes keep running.
    pub async fn set_maintenance(
        &self,
        service: Option<&str>,
        on: bool,
    ) -> Result<(), ActionError> {
        let action = if on {
            Action::MaintenanceOn
        } else {
            Action::MaintenanceOff
        };
        self.core.act(action, service.unwrap_or(ALL_SERVICES)).await
    }

    /// Stops a service (it stays stopped until started).
    pub async fn stop(&self, service: &str) -> Result<(), ActionError> {
        self.core.act(Action::Stop, service).await
    }

    /// Starts a stopped or failed service.
    pub async fn start(&self, service: &str) -> Result<(), ActionError> {
        self.core.act(Action::Start, service).await
    }

    /// The config the runtime runs now (it changes on reload).
    pub fn config(&self) -> Config {
        self.core.current_config()
    }

    /// Applies a new config as a diff from the running one: added services start, removed
    /// ones stop, changed ones restart in dependency order, unchanged ones are not touched.
    /// An invalid config is rejected (with a `ConfigRejected` event) and nothing changes.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        self.core.apply(config).await
    }

    /// Re-reads the config file the runtime was started from and applies it.
    pub async fn reload_from_file(&self) -> Result<ReloadSummary, ReloadError> {
        self.core.reload_file().await
    }

    /// The state dir in use.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The control socket path.
    pub fn control_socket(&self) -> &Path {
        self.control.path()
    }

    /// A handle for the dashboard, control socket and bus to read and act through.
    pub fn control(&self) -> Arc<dyn RuntimeControl> {
        self.core.clone()
    }

    /// Resolves when someone asked the runtime to stop (`runtime down`, the API), with the
    /// reason. The owner then calls [`Runtime::shutdown`].
    pub async fn shutdown_requested(&self) -> String {
        let mut rx = self.core.shutdown_requested.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "runtime dropped".into();
            }
        }
    }

    /// Stops everything gracefully: services in reverse dependency order (each with its stop
    /// signal and grace period), then the dashboard and the control socket. Bounded by
    /// `project.shutdown_timeout`; what is left after it is killed.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        self.shutdown_because("shutdown requested").await
    }

    /// [`Runtime::shutdown`], with the reason recorded in the `RuntimeStopping` event.
    pub async fn shutdown_because(self, reason: &str) -> Result<(), ShutdownError> {
        let timeout = shutdown_timeout(&self.config);
        self.core.shutting_down.store(true, Ordering::SeqCst);
        self.core.events.emit(EventKind::RuntimeStopping {
            reason: reason.to_owned(),
        });
        tracing::info!(%reason, "Runtime stopping.");
        let started = tokio::time::Instant::now();
        // No new orders while stopping; an order in flight is abandoned (it is retried at the
        // next start).
        let acme = match self.core.acme.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(acme) = acme {
            acme.shutdown().await;
        }
        // The edge first: it stops accepting and lets requests in flight finish while the
        // services behind them still run.
        if let Some(proxy) = self.proxy {
            proxy.shutdown(Duration::from_secs(5)).await;
        }
        self.core.supervisor.shutdown(timeout).await;
        // After the services: their last state changes still go out on the bus.
        self.core.bus.clone().shutdown(Duration::from_secs(3)).await;
        // The store takes the last events (RuntimeStopping, the services' exits) and
        // commits what is queued.
        if let Some(store) = &self.core.store {
            store.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(dashboard) = self.dashboard {
            dashboard.shutdown(Duration::from_secs(3)).await;
        }
        self.control.shutdown().await;
        let took = started.elapsed();
        tracing::info!(took_ms = took.as_millis() as u64, "Runtime stopped.");
        if took > timeout + Duration::from_secs(5) {
            return Err(ShutdownError::TimedOut(timeout));
        }
        Ok(())
    }
}
