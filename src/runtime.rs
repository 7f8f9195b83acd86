//! The runtime's lifecycle: start the subsystems in order, expose them, stop them all.

use crate::control::{ControlServer, ControlServerError};
use crate::lock::{LockError, StateLock};
use kinfra_core::ConfigErrors;
use kinfra_core::config::Config;
use kinfra_core::event::{Event, EventKind, EventSender};
use kinfra_core::status::{ServiceLogLine, StatusReport};
use kinfra_core::view::{Action, ActionError, BoxFuture, RuntimeControl};
use kinfra_dashboard::{DashboardError, DashboardServer};
use kinfra_supervisor::{Supervisor, SupervisorError, SupervisorOptions};
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
}

/// The part of the runtime shared with the dashboard and the control socket.
struct RuntimeCore {
    project: String,
    events: EventSender,
    supervisor: Supervisor,
    shutdown_requested: watch::Sender<Option<String>>,
    shutting_down: AtomicBool,
}

impl RuntimeControl for RuntimeCore {
    fn status(&self) -> StatusReport {
        StatusReport::new(self.project.clone(), self.supervisor.status())
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
            self.supervisor.act(action, &service).await
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
    control: ControlServer,
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
    let events = options.events.unwrap_or_else(|| EventSender::new(4096));

    // Bind the listeners first: a taken port is found before any service starts.
    let dashboard_listener = if config.dashboard.enabled {
        Some(DashboardServer::bind(&config.dashboard.listen).await?)
    } else {
        None
    };
    let control_listener = ControlServer::bind(&state_dir)?;

    let supervisor = Supervisor::start(
        &config.services,
        SupervisorOptions {
            project: config.project.name.clone(),
            state_dir: state_dir.clone(),
            base_dir: config.base_dir.clone(),
            global_env: config.env.clone(),
            events: events.clone(),
        },
    )
    .await?;

    let (shutdown_requested, _) = watch::channel(None);
    let core = Arc::new(RuntimeCore {
        project: config.project.name.clone(),
        events: events.clone(),
        supervisor,
        shutdown_requested,
        shutting_down: AtomicBool::new(false),
    });
    let control_view: Arc<dyn RuntimeControl> = core.clone();
    let dashboard = match dashboard_listener {
        Some(listener) => match DashboardServer::serve(listener, control_view.clone()) {
            Ok(server) => Some(server),
            Err(error) => {
                core.supervisor.shutdown(shutdown_timeout(&config)).await;
                return Err(error.into());
            }
        },
        None => None,
    };
    let control = control_listener.serve(control_view);
    events.emit(EventKind::RuntimeStarted {
        project: config.project.name.clone(),
    });
    tracing::info!(project = %config.project.name, state_dir = %state_dir.display(), "Runtime started.");
    Ok(Runtime {
        core,
        config,
        state_dir,
        dashboard,
        control,
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

    /// Where the proxy listens. `None` until the proxy subsystem exists in this build.
    pub fn proxy_addr(&self) -> Option<SocketAddr> {
        None
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

    /// Stops a service (it stays stopped until started).
    pub async fn stop(&self, service: &str) -> Result<(), ActionError> {
        self.core.act(Action::Stop, service).await
    }

    /// Starts a stopped or failed service.
    pub async fn start(&self, service: &str) -> Result<(), ActionError> {
        self.core.act(Action::Start, service).await
    }

    /// The config the runtime runs.
    pub fn config(&self) -> &Config {
        &self.config
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
        self.core.supervisor.shutdown(timeout).await;
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
