//! The runtime's lifecycle: start the subsystems in order, expose them, stop them all.

mod commands;
mod core;
mod dashboard;
mod fleet;
mod metrics;
pub(crate) mod providers;
mod reload;
mod resources;
mod scale;
mod start;
mod tunnel;

pub use dashboard::{TOKEN_FILE, dashboard_token};
pub use reload::{ReloadError, ReloadReport};

use crate::control::{ControlServer, ControlServerError};
use crate::lock::{LockError, StateLock};
use core::RuntimeCore;
use kinfra_bus::{Bus, BusError};
use kinfra_core::ConfigErrors;
use kinfra_core::config::Config;
use kinfra_core::event::{Event, EventKind, EventSender};
use kinfra_core::status::{RunRecord, ServiceLogLine, StatusReport};
use kinfra_core::view::ALL_SERVICES;
use kinfra_core::view::{Action, ActionError, RuntimeControl};
use kinfra_dashboard::{DashboardError, DashboardServer};
use kinfra_proxy::{ProxyError, ProxyServer};
use kinfra_store::{Store, StoreError};
use kinfra_supervisor::SupervisorError;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast;

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
    /// The state dir, or a secret file in it, belongs to another user or others may write it.
    #[error(transparent)]
    UnsafePath(#[from] crate::ownership::UnsafePath),
    /// A `[resources.NAME]` with a provider cannot be built: its provider is not installed,
    /// or refused its keys (every problem, one per line).
    #[error("{0}")]
    ProviderResources(String),
    /// The dashboard token file could not be read or written.
    #[error("dashboard token file {}: {source}", .path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A background task that ends with its owner (also when startup fails half way).
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl StartError {
    /// True when the error is the user's input (config), as opposed to the environment.
    /// (An unsafe state dir counts: the user must choose or fix the path.)
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            StartError::Config(_)
                | StartError::UnsafePath(_)
                | StartError::ProviderResources(_)
                | StartError::Dashboard(DashboardError::TokenRequired { .. })
        )
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
#[derive(Clone, Default)]
pub struct RuntimeOptions {
    /// Use this event channel (subscribe to it before starting to see every event, including
    /// the first ones). A new one is made when absent.
    pub events: Option<EventSender>,
    /// The file the config was read from: `kinfra runtime reload` and SIGHUP re-read it.
    /// Without it, only [`Runtime::reload`] with a new `Config` can change the services.
    pub config_file: Option<PathBuf>,
    /// Providers the application registers in code, used beside the built-in ones by
    /// `[providers.X] provider = "<id>"` (a built-in's id cannot be taken).
    pub providers: Vec<Arc<dyn kinfra_provider::provider::Provider>>,
}

impl std::fmt::Debug for RuntimeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeOptions")
            .field("events", &self.events.is_some())
            .field("config_file", &self.config_file)
            .field(
                "providers",
                &self
                    .providers
                    .iter()
                    .map(|p| p.metadata().id.clone())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A running kinfra. Dropping it without [`Runtime::shutdown`] leaves the children to the
/// parent-death signal; call `shutdown` for a graceful stop.
pub struct Runtime {
    core: Arc<RuntimeCore>,
    config: Config,
    state_dir: PathBuf,
    dashboard: Option<DashboardServer>,
    proxy: Option<ProxyFacts>,
    control: ControlServer,
    _history_task: AbortOnDrop,
    _sampler_task: AbortOnDrop,
    _lock: StateLock,
}

/// Where the proxy listens and its certificates (the proxy itself lives in the core, which
/// swaps its routes on reload).
#[derive(Debug, Clone)]
struct ProxyFacts {
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    certs: Arc<kinfra_proxy::CertStore>,
}

impl ProxyFacts {
    fn of(proxy: &ProxyServer) -> Self {
        Self {
            http: proxy.http_addr(),
            https: proxy.https_addr(),
            certs: proxy.cert_resolver(),
        }
    }
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
    // One TLS crypto provider for every subsystem, before any of them speaks TLS.
    kinfra_core::tls::install_crypto_provider();
    config.validate()?;
    let config = fleet::for_this_node(config);
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
        // The store finds what a killed instance left running; the supervisor stops it.
        kinfra_supervisor::stop_left_running(&boot.recovery.left_running()).await;
        for run in &boot.recovery.killed {
            tracing::warn!(service = %run.service, pid = run.pid, "Stopped a process a killed instance left running.");
        }
        (Some(store), Some(boot.persistence))
    } else {
        (None, None)
    };
    let started = start::start_subsystems(
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

pub(super) fn shutdown_timeout(config: &Config) -> Duration {
    config.project.shutdown_timeout.0
}

fn create_state_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| StartError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    // A state dir made in advance by someone else (or open to others) is refused, never
    // adopted: it may hold a token they know.
    crate::ownership::check_state_dir(dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
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
        self.proxy.as_ref().and_then(|p| p.http)
    }

    /// Where the proxy listens for HTTPS, when configured.
    pub fn proxy_https_addr(&self) -> Option<SocketAddr> {
        self.proxy.as_ref().and_then(|p| p.https)
    }

    /// The proxy's certificate store: add or swap certificates by SNI name at run time.
    pub fn certificates(&self) -> Option<Arc<kinfra_proxy::CertStore>> {
        self.proxy.as_ref().map(|p| p.certs.clone())
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
    /// ones stop, changed ones restart in dependency order, unchanged ones are not touched;
    /// the proxy's routes are swapped at once. Keys that cannot change live (listen
    /// addresses, the store, the bus, ACME) keep their running values and are listed in
    /// [`ReloadReport::needs_restart`] and in status as `pending_restart`. An invalid config
    /// is rejected (with a `ConfigRejected` event) and nothing changes.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        self.core.apply(config).await
    }

    /// Re-reads the config file the runtime was started from and applies it.
    pub async fn reload_from_file(&self) -> Result<ReloadReport, ReloadError> {
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
        let proxy = self.core.proxy.lock().await.take();
        if let Some(proxy) = proxy {
            proxy.shutdown(Duration::from_secs(5)).await;
        }
        self.core.supervisor.shutdown(timeout).await;
        // After cloudflared stopped: `on_down = "delete"` removes the tunnel's DNS records.
        self.core.tunnel.down().await;
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
