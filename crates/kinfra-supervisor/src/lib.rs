//! kinfra's process supervisor: spawn, dependency order, restart policy with backoff and a
//! crash-loop guard, health probes, log capture, persistent ports and file watch.
//!
//! One actor task per service owns its state ([`actor`]); [`Supervisor`] is a cheap handle
//! that sends commands in and reads state out of `watch` snapshots, so status never waits on
//! an actor and the supervisor never waits on a consumer of its events.
//!
//! Files in the state dir: `logs/NAME.log` (JSON lines, rotated by size), `ports.json`
//! (persisted `"auto"` ports), `pids.json` (live processes, for cleanup after a SIGKILL of
//! kinfra), `stopped.json` (services a user stopped, kept stopped across restarts under
//! `unless-stopped`), `supervisor.lock` (one supervisor per state dir). Started with
//! [`SupervisorOptions::persistence`], it keeps ports, user stops, restart counts and last exits in
//! the caller's store instead ([`persist`]), and does not touch `ports.json` or `stopped.json`.
//!
//! Children inherit kinfra's environment, then the global `env`, the service's `env`, `PORT`,
//! `KINFRA_SERVICE` and `KINFRA_SUPERVISOR_TAG` (which marks every process a service started,
//! including those that leave its process group, so a stop finds them all).
//!
//! Scale to zero: [`Supervisor::sleep`] (or `act(Action::Sleep, ..)`) stops a service or
//! resource as `sleeping` (a resource through its adapter's stop: a provider's pause), which
//! is neither a user stop nor a crash, so no restart policy brings it back;
//! `act(Action::Wake, ..)` takes it to `pending`, and it starts once its `depends_on`
//! conditions hold (a sleeping dependency is not running: it needs its own wake first).
//! Deciding when to sleep and what to wake is the runtime's.
//!
//! When kinfra is SIGKILLed, the parent-death signal kills its direct children, and the
//! [`guardian`] helper kills their process groups and every tagged process; what survives
//! even that is killed by the next start ([`pids::kill_leftovers`]).
//!
//! `PR_SET_CHILD_SUBREAPER` is deliberately not set: kinfra is meant to be embedded in other
//! programs, and a subreaper would have to reap orphans it cannot tell apart from the host
//! program's own children. Escaped descendants are found by the tag and by process-tree walks
//! instead.

mod actor;
pub mod backoff;
pub mod conformance;
pub mod graph;
pub mod guardian;
pub mod leftovers;
mod lifecycle;
pub mod logs;
pub mod persist;
pub mod pids;
pub mod ports;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod resource;
pub mod spawn;
pub mod stopped;
#[cfg(test)]
mod test_support;
pub mod watch;

use actor::{Actor, Command, Shared, Snapshot};
use kinfra_core::config::{PortSpec, ServiceConfig};
use kinfra_core::event::{EventKind, EventSender};
use kinfra_core::lockfile::{LockFile, LockFileError};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::{LogLine, ServiceLogLine, ServiceStatus, format_uptime};
use kinfra_core::view::{Action, ActionError};
use logs::LogSink;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use leftovers::{LeftRunning, stop_left_running};
pub use persist::{Persistence, ServiceHistory, StateSink};
pub use ports::{PortHolder, PortInUse};
pub use process::ProcessResource;
pub use resource::ResourceSpec;

/// Log lines kept for followers that fall behind.
const LOG_BROADCAST: usize = 4096;
/// Log lines shown in status.
const STATUS_LOG_LINES: usize = 20;

/// What a supervisor needs besides the services.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Project name (for messages).
    pub project: String,
    /// State dir: logs under `logs/`, `ports.json`, `pids.json`.
    pub state_dir: PathBuf,
    /// Relative working directories resolve against this.
    pub base_dir: PathBuf,
    /// Environment given to every service (a service's own `env` wins).
    pub global_env: BTreeMap<String, String>,
    /// Where lifecycle events go.
    pub events: EventSender,
    /// Names of things managed elsewhere (containers, cloud resources) that services may
    /// depend on. Each starts `pending`; dependents wait until [`Supervisor::set_external`]
    /// reports a state that meets their condition. A `depends_on` name that is neither a
    /// service, a resource nor listed here does not gate anything.
    pub external: Vec<String>,
    /// Resources driven through an adapter ([`ResourceSpec`]): services that depend on them
    /// wait for them with the usual conditions, `${resources.NAME.FIELD}` resolves from the
    /// first service spawn on, and they appear in [`Supervisor::status`] with their
    /// adapter's `kind`.
    pub resources: Vec<(String, ResourceSpec)>,
    /// Durable state kept by the caller (the store) instead of `ports.json` and
    /// `stopped.json`: known ports, restart counts, last exits and user stops come from it,
    /// and changes go to its sink (new ports are announced by `PortAssigned` events).
    /// Neither file is read or written then. `pids.json` is kept as always.
    pub persistence: Option<Persistence>,
}

impl SupervisorOptions {
    /// Options with an empty global environment and a fresh event channel; `base_dir` is the
    /// state dir's parent.
    pub fn new(project: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        let base_dir = state_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            project: project.into(),
            state_dir,
            base_dir,
            global_env: BTreeMap::new(),
            events: EventSender::new(1024),
            external: Vec::new(),
            resources: Vec::new(),
            persistence: None,
        }
    }

    /// These options with `external` names ([`SupervisorOptions::external`]).
    pub fn with_external(mut self, external: impl IntoIterator<Item = String>) -> Self {
        self.external.extend(external);
        self
    }

    /// These options with `resources` ([`SupervisorOptions::resources`]).
    pub fn with_resources(mut self, resources: Vec<(String, ResourceSpec)>) -> Self {
        self.resources.extend(resources);
        self
    }

    /// These options with durable state kept by the caller
    /// ([`SupervisorOptions::persistence`]).
    pub fn with_persistence(mut self, persistence: impl Into<Option<Persistence>>) -> Self {
        self.persistence = persistence.into();
        self
    }
}

/// Why the supervisor could not start or apply a config.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The state dir cannot be created or written.
    #[error("the state dir {} is not usable: {source}", path.display())]
    StateDir {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another supervisor holds the state dir.
    #[error("another kinfra instance{} is running with the state dir {}", .holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), .dir.display())]
    AlreadyRunning {
        /// The state dir.
        dir: PathBuf,
        /// The holder's PID, when its lock file says.
        holder: Option<u32>,
    },
    /// A fixed port is held by another process.
    #[error("service `{service}`: {source}")]
    PortInUse {
        /// The service.
        service: String,
        /// The port and its holder.
        #[source]
        source: PortInUse,
    },
    /// An auto port could not be allocated or saved.
    #[error("service `{service}`: cannot allocate a port: {source}")]
    PortAllocation {
        /// The service.
        service: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `depends_on` forms a cycle.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    DependencyCycle(Vec<String>),
    /// A service config cannot be run.
    #[error("service `{service}`: {message}")]
    InvalidService {
        /// The service.
        service: String,
        /// What is wrong.
        message: String,
    },
    /// The process-spawning thread could not be started.
    #[error("cannot start the spawner thread: {0}")]
    Spawner(#[source] io::Error),
    /// The supervisor is shutting down.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
}

/// What [`Supervisor::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadSummary {
    /// Services started because they are new.
    pub added: Vec<String>,
    /// Services stopped because they are gone.
    pub removed: Vec<String>,
    /// Services restarted because their config changed.
    pub changed: Vec<String>,
    /// Services left running as they were.
    pub unchanged: Vec<String>,
}

struct ServiceHandle {
    cmds: mpsc::Sender<Command>,
    snap: tokio::sync::watch::Receiver<Snapshot>,
    sink: LogSink,
    cfg: ServiceConfig,
    task: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    externals: RwLock<BTreeMap<String, tokio::sync::watch::Sender<Snapshot>>>,
    services: RwLock<BTreeMap<String, ServiceHandle>>,
    resources: RwLock<BTreeMap<String, resource::ResourceHandle>>,
    apply_lock: tokio::sync::Mutex<()>,
    shutting_down: AtomicBool,
    _lock: LockFile,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The state dir is free for another supervisor now; the guardian must not kill
        // that one's processes when this process dies.
        guardian::remove_tag(&self.shared.tag_prefix);
    }
}

/// A handle to a running supervisor. Cheap to clone. When the last handle is dropped, every
/// service is stopped (each with its own grace period).
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("project", &self.inner.shared.project)
            .field("state_dir", &self.inner.shared.state_dir)
            .finish_non_exhaustive()
    }
}

fn state_err(path: &Path) -> impl FnOnce(io::Error) -> SupervisorError + '_ {
    move |source| SupervisorError::StateDir {
        path: path.to_path_buf(),
        source,
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Supervisor {
    /// Starts every enabled service in dependency order (independent ones in parallel) and
    /// returns once all have been launched into their actor tasks; it does not wait for them
    /// to be healthy. Before that, it kills whatever a previous instance with this state dir
    /// left behind. Names managed elsewhere, resources and durable state come with `opts`
    /// ([`SupervisorOptions::external`], [`SupervisorOptions::resources`],
    /// [`SupervisorOptions::persistence`]).
    pub async fn start(
        services: &BTreeMap<String, ServiceConfig>,
        mut opts: SupervisorOptions,
    ) -> Result<Supervisor, SupervisorError> {
        let resources = std::mem::take(&mut opts.resources);
        let persistence = opts.persistence.take();
        let mut external = std::mem::take(&mut opts.external);
        external.extend(resources.iter().map(|(n, _)| n.clone()));
        let conns = resources
            .iter()
            .map(|(n, spec)| (n.clone(), spec.resource.connection()))
            .collect();
        let sup = Self::start_inner(services, opts, &external, persistence, conns).await?;
        if !resources.is_empty() {
            sup.add_resources(resources)?;
        }
        Ok(sup)
    }

    async fn start_inner(
        services: &BTreeMap<String, ServiceConfig>,
        opts: SupervisorOptions,
        external: &[String],
        persistence: Option<Persistence>,
        conns: BTreeMap<String, kinfra_core::resource::Connection>,
    ) -> Result<Supervisor, SupervisorError> {
        let state_dir = opts.state_dir.clone();
        std::fs::create_dir_all(&state_dir).map_err(state_err(&state_dir))?;
        let log_dir = actor::log_dir(&state_dir);
        std::fs::create_dir_all(&log_dir).map_err(state_err(&log_dir))?;
        let lock_path = state_dir.join("supervisor.lock");
        // A child forked (by any thread of this process) in the instant before the previous
        // holder closed the lock shares it until its exec; give such a holder a moment.
        let lock_deadline = std::time::Instant::now() + Duration::from_millis(500);
        let lock = loop {
            match LockFile::try_acquire(&lock_path) {
                Ok(lock) => break lock,
                Err(LockFileError::Held { holder, .. }) => {
                    if std::time::Instant::now() >= lock_deadline {
                        return Err(SupervisorError::AlreadyRunning {
                            dir: state_dir,
                            holder,
                        });
                    }
                }
                Err(LockFileError::Io { path, source }) => {
                    return Err(SupervisorError::StateDir { path, source });
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        spawn::init().map_err(SupervisorError::Spawner)?;
        guardian::init();
        let tag_prefix = pids::tag_prefix(&state_dir);
        let pids_path = state_dir.join("pids.json");
        let killed =
            pids::kill_leftovers(&pids_path, &tag_prefix).map_err(state_err(&pids_path))?;
        if !killed.is_empty() {
            info!(
                killed = killed.len(),
                "Killed processes left by a previous run."
            );
            // Let them finish dying (a dying process holds its sockets until it is a zombie),
            // so their ports are free again.
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while killed
                .iter()
                .any(|(pid, start)| procfs::is_same_alive(*pid, *start))
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        guardian::add_tag(&tag_prefix);
        let pids = pids::PidRegistry::new(&pids_path);
        pids.set("", Vec::new());
        let (ports, user_stopped, history, state_sink) = match persistence {
            Some(p) => (
                ports::PortStore::in_memory(p.ports),
                stopped::StoppedSet::with_sink(p.user_stopped, p.sink.clone()),
                p.history,
                Some(p.sink),
            ),
            None => {
                let ports_path = state_dir.join("ports.json");
                let ports = ports::PortStore::load(&ports_path).map_err(state_err(&ports_path))?;
                let user_stopped = stopped::StoppedSet::load(&state_dir.join("stopped.json"));
                (ports, user_stopped, BTreeMap::new(), None)
            }
        };
        let (log_tx, _) = broadcast::channel(LOG_BROADCAST);
        let (world, _) = tokio::sync::watch::channel(0u64);
        let base_dir = std::fs::canonicalize(&opts.base_dir).unwrap_or(opts.base_dir);
        let shared = Arc::new(Shared {
            project: opts.project,
            state_dir,
            base_dir,
            global_env: opts.global_env,
            events: opts.events,
            ports,
            pids,
            user_stopped,
            history,
            state_sink,
            tag_prefix,
            log_dir,
            log_tx,
            log_writer: logs::LogWriter::new(),
            snapshots: RwLock::new(BTreeMap::new()),
            port_map: RwLock::new(BTreeMap::new()),
            resource_conns: RwLock::new(conns),
            world,
            trees: Default::default(),
        });
        let mut externals = BTreeMap::new();
        for name in external {
            if services.contains_key(name) {
                continue;
            }
            let (tx, rx) = tokio::sync::watch::channel(Snapshot::pending(None));
            write(&shared.snapshots).insert(name.clone(), rx);
            externals.insert(name.clone(), tx);
        }
        let sup = Supervisor {
            inner: Arc::new(Inner {
                shared,
                externals: RwLock::new(externals),
                services: RwLock::new(BTreeMap::new()),
                resources: RwLock::new(BTreeMap::new()),
                apply_lock: tokio::sync::Mutex::new(()),
                shutting_down: AtomicBool::new(false),
                _lock: lock,
            }),
        };
        sup.apply_inner(services, true).await?;
        Ok(sup)
    }

    /// The status of every service, from snapshots (never waits on an actor).
    pub fn status(&self) -> BTreeMap<String, ServiceStatus> {
        let services = read(&self.inner.services);
        services
            .iter()
            .map(|(name, h)| {
                let s = h.snap.borrow().clone();
                let uptime_s = s.started_at.map(|t| t.elapsed().as_secs());
                (
                    name.clone(),
                    ServiceStatus {
                        kind: "process".into(),
                        state: s.state,
                        health: s.health,
                        status_message: s.message,
                        port: s.port.or_else(|| self.inner.shared.port_of(name)),
                        pid: s.pid,
                        uptime_s,
                        uptime: uptime_s.map(format_uptime),
                        restarts: s.restarts,
                        last_exit: s.last_exit,
                        logs: h.sink.tail(STATUS_LOG_LINES),
                        cpu_percent: None,
                        memory_bytes: None,
                        last_sync: None,
                        provider_state: None,
                        sleep: None,
                        progress: None,
                    },
                )
            })
            .chain(read(&self.inner.resources).iter().map(|(name, h)| {
                let s = h.snap.borrow().clone();
                let sync = h.spec.resource.sync().unwrap_or_default();
                let uptime_s = s.started_at.map(|t| t.elapsed().as_secs());
                (
                    name.clone(),
                    ServiceStatus {
                        kind: h.spec.resource.kind().into(),
                        state: s.state,
                        health: s.health,
                        status_message: s.message,
                        port: s.port.or_else(|| h.spec.resource.connection().port),
                        pid: s.pid,
                        uptime_s,
                        uptime: uptime_s.map(format_uptime),
                        restarts: s.restarts,
                        last_exit: s.last_exit,
                        logs: h.sink.tail(STATUS_LOG_LINES),
                        cpu_percent: None,
                        memory_bytes: None,
                        last_sync: sync.last_sync,
                        provider_state: sync.provider_state,
                        sleep: None,
                        progress: resource::lock_progress(&h.progress).shown.clone(),
                    },
                )
            }))
            .collect()
    }

    /// The last `lines` log lines of one service, or of all services interleaved by time.
    pub fn logs(
        &self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogLine>, ActionError> {
        let services = read(&self.inner.services);
        let resources = read(&self.inner.resources);
        let sinks = services
            .iter()
            .map(|(n, h)| (n, &h.sink))
            .chain(resources.iter().map(|(n, h)| (n, &h.sink)));
        let wrap = |name: &str, l: Vec<LogLine>| {
            l.into_iter()
                .map(|line| ServiceLogLine {
                    service: name.to_owned(),
                    line,
                })
                .collect::<Vec<_>>()
        };
        match service {
            Some(name) => {
                let sink = services
                    .get(name)
                    .map(|h| &h.sink)
                    .or_else(|| resources.get(name).map(|h| &h.sink))
                    .ok_or_else(|| ActionError::UnknownService(name.to_owned()))?;
                Ok(wrap(name, sink.tail(lines)))
            }
            None => {
                let mut all: Vec<ServiceLogLine> = sinks
                    .flat_map(|(name, sink)| wrap(name, sink.tail(lines)))
                    .collect();
                all.sort_by(|a, b| a.line.timestamp.cmp(&b.line.timestamp));
                let skip = all.len().saturating_sub(lines);
                Ok(all.split_off(skip))
            }
        }
    }

    /// Every captured log line from now on.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<ServiceLogLine> {
        self.inner.shared.log_tx.subscribe()
    }

    /// Restarts, stops, starts, puts to sleep or wakes one service or resource. Resolves
    /// when done: for `stop` and `sleep`, when its processes are gone; for `start` and
    /// `restart`, when the new process is spawned; for `wake`, once accepted (it is
    /// `pending` then and starts when its dependencies hold: a sleeping dependency is not
    /// running, so it waits for that one's own wake; readiness shows in its state and
    /// events). `sleep` of a target that is not running and `wake` of one stopped by the
    /// user, failed or disabled answer `NotAvailable`; `sleep` of a sleeping one and `wake`
    /// of an awake one are `Ok`.
    pub async fn act(&self, action: Action, service: &str) -> Result<(), ActionError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ActionError::ShuttingDown);
        }
        let cmds = self.commands_of(service)?;
        let not_available = |reason: String| ActionError::NotAvailable {
            action: action.as_str().to_owned(),
            service: service.to_owned(),
            reason,
        };
        let gone = || not_available("the service is being removed".into());
        match action {
            Action::Stop => {
                let (tx, rx) = oneshot::channel();
                cmds.send(Command::Stop(tx)).await.map_err(|_| gone())?;
                rx.await.map_err(|_| gone())
            }
            Action::Start | Action::Restart => {
                let (tx, rx) = oneshot::channel();
                let cmd = if action == Action::Start {
                    Command::Start(tx)
                } else {
                    Command::Restart(tx)
                };
                cmds.send(cmd).await.map_err(|_| gone())?;
                rx.await.map_err(|_| gone())?.map_err(not_available)
            }
            Action::MaintenanceOn | Action::MaintenanceOff => Err(not_available(
                "maintenance is the runtime's business, not the supervisor's".into(),
            )),
            Action::Sleep => {
                let (tx, rx) = oneshot::channel();
                cmds.send(Command::Sleep(actor::ASLEEP.to_owned(), tx))
                    .await
                    .map_err(|_| gone())?;
                rx.await.map_err(|_| gone())?.map_err(not_available)
            }
            Action::Wake => {
                let (tx, rx) = oneshot::channel();
                cmds.send(Command::Wake(tx)).await.map_err(|_| gone())?;
                rx.await.map_err(|_| gone())?.map_err(not_available)
            }
        }
    }

    /// Puts a service or resource to sleep like `act(Action::Sleep, ..)`, shown `sleeping`
    /// with `message` (why it sleeps: "Asleep after 10m without requests"). Resolves when
    /// its processes are gone (a resource: when its adapter's stop returned);
    /// `NotAvailable` when it is not running (stopped, failed, completed, disabled).
    pub async fn sleep(
        &self,
        service: &str,
        message: impl Into<String>,
    ) -> Result<(), ActionError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ActionError::ShuttingDown);
        }
        let cmds = self.commands_of(service)?;
        let gone = || ActionError::NotAvailable {
            action: Action::Sleep.as_str().to_owned(),
            service: service.to_owned(),
            reason: "the service is being removed".into(),
        };
        let (tx, rx) = oneshot::channel();
        cmds.send(Command::Sleep(message.into(), tx))
            .await
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|reason| ActionError::NotAvailable {
                action: Action::Sleep.as_str().to_owned(),
                service: service.to_owned(),
                reason,
            })
    }

    /// The command channel of a service or resource.
    fn commands_of(&self, service: &str) -> Result<mpsc::Sender<Command>, ActionError> {
        read(&self.inner.services)
            .get(service)
            .map(|h| h.cmds.clone())
            .or_else(|| {
                read(&self.inner.resources)
                    .get(service)
                    .map(|h| h.cmds.clone())
            })
            .ok_or_else(|| ActionError::UnknownService(service.to_owned()))
    }

    /// Reports the state of something managed elsewhere (see
    /// [`SupervisorOptions::external`]), so services depending on it can start. For a
    /// `healthy` condition, report `running`; for `completed_successfully`, `completed`.
    pub fn set_external(&self, name: &str, state: ServiceState, health: Health) {
        let shared = &self.inner.shared;
        if read(&self.inner.services).contains_key(name) {
            return;
        }
        let mut externals = write(&self.inner.externals);
        let tx = externals.entry(name.to_owned()).or_insert_with(|| {
            let (tx, rx) = tokio::sync::watch::channel(Snapshot::pending(None));
            write(&shared.snapshots).insert(name.to_owned(), rx);
            tx
        });
        tx.send_modify(|s| {
            s.state = state;
            s.health = health;
            s.message = state.as_str().to_owned();
            s.spawned |= state.is_active() || state == ServiceState::Completed;
        });
        drop(externals);
        shared.world.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Adds resources, each driven by its own actor (started when its dependencies hold).
    /// A name that is already a service or a resource is refused, and nothing is added.
    pub fn add_resources(
        &self,
        resources: Vec<(String, ResourceSpec)>,
    ) -> Result<(), SupervisorError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let shared = self.inner.shared.clone();
        for (name, _) in &resources {
            if read(&self.inner.services).contains_key(name)
                || read(&self.inner.resources).contains_key(name)
            {
                return Err(SupervisorError::InvalidService {
                    service: name.clone(),
                    message: "the name is already taken by a service or a resource".into(),
                });
            }
        }
        let mut starting = Vec::new();
        for (name, spec) in resources {
            let sink = LogSink::new(
                &name,
                &shared.log_dir,
                spec.log,
                shared.log_tx.clone(),
                &shared.log_writer,
            )
            .map_err(state_err(&shared.log_dir))?;
            let conn = spec.resource.connection();
            let mut first = shared.initial_snapshot(&name);
            first.port = conn.port;
            let (snap_tx, snap_rx) = tokio::sync::watch::channel(first);
            let (cmd_tx, cmd_rx) = mpsc::channel(16);
            write(&self.inner.externals).remove(&name);
            write(&shared.snapshots).insert(name.clone(), snap_rx.clone());
            write(&shared.resource_conns).insert(name.clone(), conn);
            starting.push((name, spec, sink, snap_tx, snap_rx, cmd_tx, cmd_rx));
        }
        for (name, spec, sink, snap_tx, snap_rx, cmd_tx, cmd_rx) in starting {
            let actor = resource::ResourceActor::new(
                name.clone(),
                spec.clone(),
                shared.clone(),
                sink.clone(),
                snap_tx,
                cmd_rx,
            );
            let progress = actor.progress_cell();
            let task = tokio::spawn(actor.run());
            write(&self.inner.resources).insert(
                name,
                resource::ResourceHandle {
                    cmds: cmd_tx,
                    snap: snap_rx,
                    progress,
                    sink,
                    spec,
                    task,
                },
            );
        }
        shared.world.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    /// Stops a resource (within its grace) and forgets it, without its `on_down` removal:
    /// for a reload, remove the old adapter and [`Supervisor::add_resources`] the new one
    /// (a container whose config hash changed is then recreated by its adapter). Unknown
    /// names are refused.
    pub async fn remove_resource(&self, name: &str) -> Result<(), ActionError> {
        let handle = write(&self.inner.resources)
            .remove(name)
            .ok_or_else(|| ActionError::UnknownService(name.to_owned()))?;
        let (tx, rx) = oneshot::channel();
        if handle.cmds.send(Command::Halt(tx)).await.is_ok() {
            let _ = rx.await;
        }
        handle.task.abort();
        let shared = &self.inner.shared;
        write(&shared.snapshots).remove(name);
        write(&shared.resource_conns).remove(name);
        shared.world.send_modify(|v| *v = v.wrapping_add(1));
        Ok(())
    }

    /// How to reach a resource (what `${resources.NAME.FIELD}` resolves to).
    pub fn resource_connection(&self, name: &str) -> Option<kinfra_core::resource::Connection> {
        read(&self.inner.shared.resource_conns).get(name).cloned()
    }

    /// Stops every resource (in parallel, each within its grace and the deadline) and ends
    /// their actors; removal follows each one's `on_down`.
    async fn shutdown_resources(&self, deadline: tokio::time::Instant) {
        let handles: BTreeMap<String, resource::ResourceHandle> =
            std::mem::take(&mut *write(&self.inner.resources));
        let mut waits = Vec::new();
        for (_, h) in handles {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let grace = h.spec.stop_grace.min(left);
            let (tx, rx) = oneshot::channel();
            let sent = h.cmds.send(Command::Shutdown(grace, tx)).await.is_ok();
            waits.push((sent.then_some(rx), h.task));
        }
        // A container's stop takes its grace plus the engine's own round trips.
        let hard = deadline + Duration::from_secs(5);
        for (rx, mut task) in waits {
            if let Some(rx) = rx {
                let _ = tokio::time::timeout_at(hard, rx).await;
            }
            if tokio::time::timeout_at(hard, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// The port of a service (auto ports once allocated).
    pub fn port_of(&self, service: &str) -> Option<u16> {
        self.inner.shared.port_of(service)
    }

    /// The events this supervisor emits on.
    pub fn events(&self) -> &EventSender {
        &self.inner.shared.events
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        &self.inner.shared.state_dir
    }

    /// Applies a new set of services (a reload): added ones start, removed ones stop, changed
    /// ones restart (stopped in reverse and started in dependency order), unchanged ones are
    /// not touched. An invalid set is rejected before anything changes.
    pub async fn apply(
        &self,
        services: &BTreeMap<String, ServiceConfig>,
    ) -> Result<ReloadSummary, SupervisorError> {
        match self.apply_inner(services, false).await {
            Ok(summary) => Ok(summary),
            Err(e) => {
                self.inner.shared.events.emit(EventKind::ConfigRejected {
                    error: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// Applies a new set of services like [`Supervisor::apply`], without the
    /// `ConfigReloaded`/`ConfigRejected` events: for a service the runtime adds itself at run
    /// time (the tunnel's `cloudflared`), which is not a reload of the user's config; the
    /// caller reports a failure its own way.
    pub async fn apply_unannounced(
        &self,
        services: &BTreeMap<String, ServiceConfig>,
    ) -> Result<ReloadSummary, SupervisorError> {
        self.apply_inner(services, true).await
    }

    fn validate(
        services: &BTreeMap<String, ServiceConfig>,
    ) -> Result<Vec<String>, SupervisorError> {
        for (name, cfg) in services {
            if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
                return Err(SupervisorError::InvalidService {
                    service: name.clone(),
                    message: "a service name must be non-empty, without `/` or spaces".into(),
                });
            }
            if cfg.command.is_empty() {
                return Err(SupervisorError::InvalidService {
                    service: name.clone(),
                    message: "the command is empty".into(),
                });
            }
            if cfg.depends_on.0.contains_key(name) {
                return Err(SupervisorError::DependencyCycle(vec![
                    name.clone(),
                    name.clone(),
                ]));
            }
        }
        graph::topo_order(services).map_err(SupervisorError::DependencyCycle)
    }

    /// Resolves the ports of `names`: fixed ones must be free (unless `skip_check`), auto ones
    /// are allocated and persisted.
    fn resolve_ports(
        &self,
        services: &BTreeMap<String, ServiceConfig>,
        names: &[String],
        skip_check: &[String],
    ) -> Result<BTreeMap<String, u16>, SupervisorError> {
        let shared = &self.inner.shared;
        let mut out = BTreeMap::new();
        for name in names {
            let Some(cfg) = services.get(name) else {
                continue;
            };
            let Some(spec) = cfg.port else { continue };
            match spec {
                PortSpec::Fixed(p) => {
                    if !skip_check.contains(name)
                        && !cfg.disabled
                        && let Err(source) = ports::check_free(p)
                    {
                        return Err(SupervisorError::PortInUse {
                            service: name.clone(),
                            source,
                        });
                    }
                    out.insert(name.clone(), p);
                }
                PortSpec::Auto => {
                    if let Some(p) = shared.port_of(name) {
                        out.insert(name.clone(), p);
                        continue;
                    }
                    match shared.ports.resolve(name, PortSpec::Auto) {
                        Ok((p, new)) => {
                            if new {
                                shared.events.emit(EventKind::PortAssigned {
                                    service: name.clone(),
                                    port: p,
                                });
                            }
                            out.insert(name.clone(), p);
                        }
                        Err(ports::PortError::InUse(source)) => {
                            return Err(SupervisorError::PortInUse {
                                service: name.clone(),
                                source,
                            });
                        }
                        Err(ports::PortError::Io(source)) => {
                            return Err(SupervisorError::PortAllocation {
                                service: name.clone(),
                                source,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn apply_inner(
        &self,
        services: &BTreeMap<String, ServiceConfig>,
        initial: bool,
    ) -> Result<ReloadSummary, SupervisorError> {
        let _guard = self.inner.apply_lock.lock().await;
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(SupervisorError::ShuttingDown);
        }
        let order = Self::validate(services)?;
        let shared = self.inner.shared.clone();
        let current: BTreeMap<String, ServiceConfig> = read(&self.inner.services)
            .iter()
            .map(|(k, h)| (k.clone(), h.cfg.clone()))
            .collect();
        let mut summary = ReloadSummary::default();
        for name in &order {
            match current.get(name) {
                None => summary.added.push(name.clone()),
                Some(old) if old != &services[name] => summary.changed.push(name.clone()),
                Some(_) => summary.unchanged.push(name.clone()),
            }
        }
        let old_order =
            graph::topo_order(&current).unwrap_or_else(|_| current.keys().cloned().collect());
        summary.removed = old_order
            .iter()
            .rev()
            .filter(|n| !services.contains_key(*n))
            .cloned()
            .collect();

        // Ports first: nothing is touched when one is taken. A changed service keeping its
        // fixed port holds it itself right now.
        let keeps_port: Vec<String> = summary
            .changed
            .iter()
            .filter(|n| current.get(*n).map(|c| c.port) == services.get(*n).map(|c| c.port))
            .cloned()
            .collect();
        let mut to_resolve = summary.added.clone();
        to_resolve.extend(summary.changed.iter().cloned());
        let new_ports = self.resolve_ports(services, &to_resolve, &keeps_port)?;

        // Removed: reverse dependency order.
        for name in &summary.removed {
            let handle = write(&self.inner.services).remove(name);
            write(&shared.snapshots).remove(name);
            write(&shared.port_map).remove(name);
            if let Some(h) = handle {
                let grace = h.cfg.stop_grace.0;
                let (tx, rx) = oneshot::channel();
                if h.cmds.send(Command::Shutdown(grace, tx)).await.is_ok() {
                    let _ = rx.await;
                }
                let _ = h.task.await;
            }
        }
        {
            let mut pm = write(&shared.port_map);
            for name in &to_resolve {
                pm.remove(name);
            }
            pm.extend(new_ports);
        }
        // Changed: stop in reverse order, then reconfigure in dependency order.
        for name in summary.changed.iter().rev() {
            let cmds = read(&self.inner.services).get(name).map(|h| h.cmds.clone());
            if let Some(cmds) = cmds {
                let (tx, rx) = oneshot::channel();
                if cmds.send(Command::Halt(tx)).await.is_ok() {
                    let _ = rx.await;
                }
            }
        }
        // Register every new snapshot before any actor runs, so dependency checks see them.
        let mut starting = Vec::new();
        for name in &summary.added {
            let cfg = services[name].clone();
            let sink = LogSink::new(
                name,
                &shared.log_dir,
                cfg.log,
                shared.log_tx.clone(),
                &shared.log_writer,
            )
            .map_err(state_err(&shared.log_dir))?;
            let (snap_tx, snap_rx) = tokio::sync::watch::channel(shared.initial_snapshot(name));
            let (cmd_tx, cmd_rx) = mpsc::channel(16);
            write(&shared.snapshots).insert(name.clone(), snap_rx.clone());
            starting.push((name.clone(), cfg, sink, snap_tx, snap_rx, cmd_tx, cmd_rx));
        }
        for name in &summary.changed {
            let cmds = {
                let mut services_w = write(&self.inner.services);
                services_w.get_mut(name).map(|h| {
                    h.cfg = services[name].clone();
                    h.cmds.clone()
                })
            };
            if let Some(cmds) = cmds {
                let (tx, rx) = oneshot::channel();
                if cmds
                    .send(Command::Reconfigure(Box::new(services[name].clone()), tx))
                    .await
                    .is_ok()
                {
                    let _ = rx.await;
                }
            }
        }
        for (name, cfg, sink, snap_tx, snap_rx, cmd_tx, cmd_rx) in starting {
            let actor = Actor::new(
                name.clone(),
                Arc::new(cfg.clone()),
                shared.clone(),
                sink.clone(),
                snap_tx,
                cmd_rx,
            );
            let task = tokio::spawn(actor.run());
            write(&self.inner.services).insert(
                name,
                ServiceHandle {
                    cmds: cmd_tx,
                    snap: snap_rx,
                    sink,
                    cfg,
                    task,
                },
            );
        }
        if !initial {
            shared.events.emit(EventKind::ConfigReloaded {
                added: summary.added.clone(),
                removed: summary.removed.clone(),
                changed: summary.changed.clone(),
            });
        }
        info!(
            added = summary.added.len(),
            removed = summary.removed.len(),
            changed = summary.changed.len(),
            "Services applied."
        );
        Ok(summary)
    }

    /// Stops every service in reverse dependency order (a service stops after everything that
    /// depends on it), within `timeout` in all; then SIGKILLs whatever is left and reaps it.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let _guard = self.inner.apply_lock.lock().await;
        let deadline = tokio::time::Instant::now() + timeout;
        let handles: BTreeMap<String, ServiceHandle> =
            std::mem::take(&mut *write(&self.inner.services));
        let configs: BTreeMap<String, ServiceConfig> = handles
            .iter()
            .map(|(k, h)| (k.clone(), h.cfg.clone()))
            .collect();
        let dependents = graph::dependents(&configs);
        let mut done_tx = BTreeMap::new();
        let mut done_rx = BTreeMap::new();
        for name in handles.keys() {
            let (tx, rx) = tokio::sync::watch::channel(false);
            done_tx.insert(name.clone(), tx);
            done_rx.insert(name.clone(), rx);
        }
        let mut stoppers = Vec::new();
        let mut tasks = Vec::new();
        for (name, h) in handles {
            let waits: Vec<tokio::sync::watch::Receiver<bool>> = dependents
                .get(&name)
                .into_iter()
                .flatten()
                .filter_map(|d| done_rx.get(d).cloned())
                .collect();
            let done = done_tx.remove(&name);
            let grace = h.cfg.stop_grace.0;
            let cmds = h.cmds.clone();
            tasks.push(h.task);
            stoppers.push(tokio::spawn(async move {
                for mut w in waits {
                    let _ = w.wait_for(|v| *v).await;
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let (tx, rx) = oneshot::channel();
                if cmds
                    .send(Command::Shutdown(grace.min(left), tx))
                    .await
                    .is_ok()
                {
                    let _ = rx.await;
                }
                if let Some(done) = done {
                    let _ = done.send(true);
                }
            }));
        }
        let all = async {
            for s in stoppers.iter_mut() {
                let _ = s.await;
            }
        };
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            warn!("Shutdown timed out; killing what is left.");
        }
        // Resources after the services (services depend on resources, not the reverse).
        self.shutdown_resources(deadline).await;
        for s in &stoppers {
            s.abort();
        }
        self.kill_everything();
        // Actors reap their children as soon as they die.
        let reap_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for t in tasks.iter_mut() {
            if tokio::time::timeout_at(reap_deadline, &mut *t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        self.inner.shared.pids.set("", Vec::new());
        guardian::remove_tag(&self.inner.shared.tag_prefix);
    }

    /// SIGKILLs every process of every service (by record and by tag).
    fn kill_everything(&self) {
        let shared = &self.inner.shared;
        for (_, r) in shared.pids.all() {
            if spawn::signal_exact(r.pid, r.start_time, libc::SIGKILL) && r.pgid == r.pid {
                spawn::signal_group(r.pgid, libc::SIGKILL);
            }
        }
        pids::kill_tagged(&shared.tag_prefix, libc::SIGKILL);
    }
}
