//! One actor task per service: it owns the service's state, its child process, probes, backoff
//! and file watch. Commands come in over an mpsc channel; state goes out as events (emitted,
//! never awaited) and as a `watch` snapshot that status reads without asking the actor.

use crate::lifecycle::{AfterExit, Mode, Restarts};
use crate::logs::LogSink;
use crate::pids::{self, PidRecord, TAG_VAR};
use crate::ports::{self, PortError, PortStore};
use crate::probe::{self, ProbeEvent, ProbeKind};
use crate::procfs::{self, ProcStat};
use crate::spawn::{self, SpawnSpec};
use crate::watch::FileWatch;
use kinfra_core::config::interpolate::interpolate;
use kinfra_core::config::{CommandSpec, DependCondition, PortSpec, RestartPolicy, ServiceConfig};
use kinfra_core::event::{EventKind, EventSender, ExitInfo};
use kinfra_core::secret::{is_secret_name, redact};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::status::{LogStream, ServiceLogLine};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the process trees of the running children are walked to record their
/// descendants: one walk of every tree on one timer ([`TreeWatch`]), not one timer each.
const TREE_SCAN_EVERY: Duration = Duration::from_secs(3);

/// How soon after a start the new tree is walked first, to catch what a service forks at
/// startup.
const TREE_FIRST_SCAN: Duration = Duration::from_millis(500);

/// Trees due within this much of a walk are walked with it, so scans coalesce.
const TREE_SCAN_SLACK: Duration = Duration::from_millis(250);

/// Why a shell-string command cannot start where there is no `/bin/sh`.
const SHELL_MISSING: &str = "command is a shell string but /bin/sh does not exist; use an array command or include a static sh";

/// What every actor shares: options, state files, the registry of snapshots.
pub(crate) struct Shared {
    pub project: String,
    pub state_dir: PathBuf,
    pub base_dir: PathBuf,
    pub global_env: BTreeMap<String, String>,
    pub events: EventSender,
    pub ports: PortStore,
    pub pids: pids::PidRegistry,
    pub user_stopped: crate::stopped::StoppedSet,
    /// Restart counts and last exits known at start (from [`crate::persist::Persistence`]).
    pub history: BTreeMap<String, crate::persist::ServiceHistory>,
    /// Where history changes go, when the supervisor was started with persistence.
    pub state_sink: Option<Arc<dyn crate::persist::StateSink>>,
    pub tag_prefix: String,
    pub log_dir: PathBuf,
    pub log_tx: broadcast::Sender<ServiceLogLine>,
    /// The log file writer threads every service's and resource's log shares.
    pub log_writer: crate::logs::LogWriter,
    /// Snapshots of every service, for dependency checks.
    pub snapshots: RwLock<BTreeMap<String, watch::Receiver<Snapshot>>>,
    /// The port each service gets (resolved when it is added or changed).
    pub port_map: RwLock<BTreeMap<String, u16>>,
    /// How to reach each resource driven through an adapter (`${resources.NAME.FIELD}`).
    pub resource_conns: RwLock<BTreeMap<String, kinfra_core::resource::Connection>>,
    /// Bumped on every snapshot change, so waiting actors re-check their dependencies.
    pub world: watch::Sender<u64>,
    /// The process trees of the running children, walked together.
    pub trees: TreeWatch,
}

/// The process trees of every running child of one supervisor, walked together by one task
/// every [`TREE_SCAN_EVERY`] to record descendants (an escaped descendant that also cleared
/// its environment is then still known at stop). The task runs only while a tree is
/// registered, and walks each tree down from its root (`/proc/PID/task/*/children`), so an
/// idle supervisor wakes once per interval whatever the number of services, and the cost of a
/// walk grows with the services' processes, not with the machine's.
#[derive(Default)]
pub(crate) struct TreeWatch {
    inner: Arc<TreeWatchInner>,
}

#[derive(Default)]
struct TreeWatchInner {
    state: std::sync::Mutex<TreeState>,
    /// A tree was registered (it may be due before the task's next wake-up).
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct TreeState {
    trees: BTreeMap<u64, Tracked>,
    next_id: u64,
    /// The walking task runs.
    walking: bool,
}

/// The descendants recorded for one tree, shared by the walking task and the child.
type Found = Arc<std::sync::Mutex<Vec<ProcStat>>>;

struct Tracked {
    service: String,
    root: i32,
    due: tokio::time::Instant,
    found: Found,
}

/// A child's place in the [`TreeWatch`]: the descendants recorded so far. Dropping it ends
/// the walks of that tree.
pub(crate) struct TreeHandle {
    id: u64,
    found: Found,
    watch: std::sync::Weak<TreeWatchInner>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl TreeHandle {
    /// The descendants recorded while the child ran (alive when last walked).
    fn descendants(&self) -> Vec<ProcStat> {
        locked(&self.found).clone()
    }
}

impl Drop for TreeHandle {
    fn drop(&mut self) {
        if let Some(inner) = self.watch.upgrade() {
            locked(&inner.state).trees.remove(&self.id);
        }
    }
}

impl TreeWatch {
    /// Starts walking the tree of `root` (first after [`TREE_FIRST_SCAN`]); the walking task
    /// is started when none runs. Must be called within the tokio runtime.
    fn register(&self, shared: &Arc<Shared>, service: &str, root: i32) -> TreeHandle {
        let found: Found = Arc::default();
        let (id, start) = {
            let mut state = locked(&self.inner.state);
            state.next_id += 1;
            let id = state.next_id;
            state.trees.insert(
                id,
                Tracked {
                    service: service.to_owned(),
                    root,
                    due: tokio::time::Instant::now() + TREE_FIRST_SCAN,
                    found: found.clone(),
                },
            );
            let start = !state.walking;
            state.walking = true;
            (id, start)
        };
        if start {
            drop(tokio::spawn(walk_trees(
                self.inner.clone(),
                Arc::downgrade(shared),
            )));
        } else {
            self.inner.changed.notify_one();
        }
        TreeHandle {
            id,
            found,
            watch: Arc::downgrade(&self.inner),
        }
    }
}

/// Clears `walking` when the walking task ends, however it ends (also when its runtime
/// shuts down), so the next registration starts a new one.
struct WalkingFlag {
    inner: Arc<TreeWatchInner>,
    armed: bool,
}

impl Drop for WalkingFlag {
    fn drop(&mut self) {
        if self.armed {
            locked(&self.inner.state).walking = false;
        }
    }
}

/// The one task that walks every registered tree when due; ends when none is left or the
/// supervisor is gone.
async fn walk_trees(inner: Arc<TreeWatchInner>, shared: std::sync::Weak<Shared>) {
    let mut flag = WalkingFlag {
        inner: inner.clone(),
        armed: true,
    };
    loop {
        let next = {
            let mut state = locked(&inner.state);
            match state.trees.values().map(|t| t.due).min() {
                Some(next) => next,
                None => {
                    // Decided under the lock: a registration after this starts a new task.
                    state.walking = false;
                    flag.armed = false;
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = inner.changed.notified() => continue,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let due: Vec<(String, i32, Found)> = {
            let mut state = locked(&inner.state);
            state
                .trees
                .values_mut()
                .filter(|t| t.due <= now + TREE_SCAN_SLACK)
                .map(|t| {
                    t.due = now + TREE_SCAN_EVERY;
                    (t.service.clone(), t.root, t.found.clone())
                })
                .collect()
        };
        let mut snapshot = None;
        for (service, root, found) in due {
            let added = walk_tree(root, &found, &mut snapshot);
            if !added.is_empty() {
                shared.pids.add(&service, &added);
            }
        }
    }
}

/// Walks the tree of `root` once: records descendants not seen before (returned, for the
/// PID registry) and forgets recorded ones that are gone. Without children files, the
/// process table is read once per round (`snapshot`) and shared by every tree.
fn walk_tree(
    root: i32,
    found: &std::sync::Mutex<Vec<ProcStat>>,
    snapshot: &mut Option<Arc<Vec<ProcStat>>>,
) -> Vec<PidRecord> {
    let now: Vec<ProcStat> = match procfs::descendant_pids(root) {
        Some(pids) => pids.into_iter().filter_map(procfs::stat).collect(),
        None => procfs::descendants(snapshot.get_or_insert_with(procfs::snapshot), root),
    };
    let mut recorded = locked(found);
    let mut added = Vec::new();
    for p in &now {
        if !recorded
            .iter()
            .any(|d| d.pid == p.pid && d.start_time == p.start_time)
        {
            recorded.push(*p);
            added.push(PidRecord {
                pid: p.pid,
                start_time: p.start_time,
                pgid: p.pgid,
            });
        }
    }
    recorded.retain(|d| {
        now.iter()
            .any(|p| p.pid == d.pid && p.start_time == d.start_time)
            || procfs::is_same_alive(d.pid, d.start_time)
    });
    added
}

impl Shared {
    pub fn tag_of(&self, service: &str) -> String {
        format!("{}{service}/", self.tag_prefix)
    }

    pub(crate) fn snapshot_of(&self, service: &str) -> Option<Snapshot> {
        let map = match self.snapshots.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.get(service).map(|rx| rx.borrow().clone())
    }

    /// A fresh snapshot for `service`, starting from its known history.
    pub fn initial_snapshot(&self, service: &str) -> Snapshot {
        let mut snap = Snapshot::pending(self.port_of(service));
        if let Some(h) = self.history.get(service) {
            snap.restarts = h.restarts;
            snap.last_exit = h.last_exit;
        }
        snap
    }

    pub fn port_of(&self, service: &str) -> Option<u16> {
        let map = match self.port_map.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.get(service).copied()
    }
}

/// What status shows about a service, published by its actor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub state: ServiceState,
    pub health: Health,
    pub message: String,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub started_at: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
    /// A process was spawned at least once since the last (re)configuration.
    pub spawned: bool,
}

impl Snapshot {
    pub fn pending(port: Option<u16>) -> Self {
        Self {
            state: ServiceState::Pending,
            health: Health::Unknown,
            message: "Waiting to start".into(),
            port,
            pid: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            spawned: false,
        }
    }
}

/// A request to an actor.
pub(crate) enum Command {
    /// Manual start (ignores dependency conditions, clears the crash-loop guard).
    Start(oneshot::Sender<Result<(), String>>),
    /// Manual stop; replies when the process is gone.
    Stop(oneshot::Sender<()>),
    /// Manual restart; replies when the new process is spawned.
    Restart(oneshot::Sender<Result<(), String>>),
    /// Stop before a reconfiguration (no restart policy applies).
    Halt(oneshot::Sender<()>),
    /// Take a new config, then start when dependencies hold.
    Reconfigure(Box<ServiceConfig>, oneshot::Sender<()>),
    /// Stop within at most this grace, then end the actor.
    Shutdown(Duration, oneshot::Sender<()>),
    /// Put it to sleep (scale to zero): stopped like a manual stop, shown `sleeping` with
    /// this message, without a user stop recorded and out of reach of the restart policy.
    /// Replies when the process is gone; `Err` when it is not running (nor about to).
    Sleep(String, oneshot::Sender<Result<(), String>>),
    /// Wake it from sleep: `pending`, then started when its dependencies hold. Replies once
    /// accepted (not when ready); `Ok` at once when it is awake, `Err` when it is stopped,
    /// failed or disabled.
    Wake(oneshot::Sender<Result<(), String>>),
}

/// What a sleeping target shows unless the caller says otherwise.
pub(crate) const ASLEEP: &str = "Asleep after being idle";

/// Why a wake is refused, from the state the target is in.
pub(crate) fn wake_refused(state: ServiceState) -> String {
    format!("{state}; start it with `kinfra runtime start`")
}

struct Child {
    pid: i32,
    start_time: u64,
    started: Instant,
    exit: oneshot::Receiver<ExitInfo>,
    probes: Vec<JoinHandle<()>>,
    /// Descendants seen while it ran, recorded by the supervisor's [`TreeWatch`].
    tree: TreeHandle,
    /// The stdout/stderr readers; they finish at EOF.
    readers: Vec<JoinHandle<()>>,
}

/// Longest wait for a process's output to reach EOF after it exited, so the exit line comes
/// after the process's own last lines. Short: a descendant still holding the pipe must not
/// delay a restart.
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// Waits (bounded by [`DRAIN_WAIT`]) until the readers have handed over every line.
async fn drain(readers: Vec<JoinHandle<()>>) {
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        for reader in readers {
            let _ = reader.await;
        }
    })
    .await;
}

impl Drop for Child {
    fn drop(&mut self) {
        for p in &self.probes {
            p.abort();
        }
    }
}

pub(crate) struct Actor {
    name: String,
    cfg: Arc<ServiceConfig>,
    shared: Arc<Shared>,
    sink: LogSink,
    snap: watch::Sender<Snapshot>,
    cmds: mpsc::Receiver<Command>,
    child: Option<Child>,
    mode: Mode,
    generation: u64,
    restarts: Restarts,
    probe_tx: mpsc::Sender<ProbeEvent>,
    probe_rx: mpsc::Receiver<ProbeEvent>,
    world: watch::Receiver<u64>,
    watcher: Option<FileWatch>,
    watch_rx: Option<mpsc::Receiver<Vec<PathBuf>>>,
    /// Values of secret-named variables of the current child, masked in probe messages.
    secrets: Vec<String>,
}

async fn wait_child(child: &mut Option<Child>) -> ExitInfo {
    match child {
        Some(c) => (&mut c.exit).await.unwrap_or(ExitInfo {
            code: None,
            signal: None,
        }),
        None => std::future::pending().await,
    }
}

async fn wait_backoff(mode: Mode) {
    match mode {
        Mode::Backoff(at) => tokio::time::sleep_until(at).await,
        _ => std::future::pending().await,
    }
}

async fn recv_watch(rx: &mut Option<mpsc::Receiver<Vec<PathBuf>>>) -> Option<Vec<PathBuf>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Describes an exit for people.
pub(crate) fn describe_exit(exit: &ExitInfo) -> String {
    match (exit.code, exit.signal) {
        (Some(127), _) => "Exited with code 127 (command not found)".into(),
        (Some(126), _) => "Exited with code 126 (command not executable)".into(),
        (Some(code), _) => format!("Exited with code {code}"),
        (None, Some(sig)) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| format!("signal {sig}"));
            format!("Killed by {name}")
        }
        (None, None) => "Exited".into(),
    }
}

pub(crate) fn fmt_delay(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

impl Actor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        cfg: Arc<ServiceConfig>,
        shared: Arc<Shared>,
        sink: LogSink,
        snap: watch::Sender<Snapshot>,
        cmds: mpsc::Receiver<Command>,
    ) -> Self {
        let (probe_tx, probe_rx) = mpsc::channel(16);
        let world = shared.world.subscribe();
        let restarts = Restarts::new(cfg.crash_loop);
        let kept_stopped =
            cfg.restart == RestartPolicy::UnlessStopped && shared.user_stopped.contains(&name);
        // `maintenance` is the runtime's business (the proxy answers for the service); the
        // process runs as usual.
        let mode = if cfg.disabled || kept_stopped {
            Mode::Idle
        } else {
            Mode::WaitDeps
        };
        Self {
            name,
            cfg,
            shared,
            sink,
            snap,
            cmds,
            child: None,
            mode,
            generation: 0,
            restarts,
            probe_tx,
            probe_rx,
            world,
            watcher: None,
            watch_rx: None,
            secrets: Vec::new(),
        }
    }

    /// Runs until a `Shutdown` command or until every command sender is gone.
    pub async fn run(mut self) {
        self.apply_mode_entry();
        self.setup_watch();
        if self.mode == Mode::WaitDeps {
            self.check_deps().await;
        }
        loop {
            let waiting = self.mode == Mode::WaitDeps;
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Shutdown(grace, reply)) => {
                        self.stop_child(grace).await;
                        self.set_state(ServiceState::Stopped, "Stopped".into());
                        let _ = reply.send(());
                        break;
                    }
                    Some(cmd) => self.handle(cmd).await,
                    None => {
                        let grace = self.cfg.stop_grace.0;
                        self.stop_child(grace).await;
                        break;
                    }
                },
                exit = wait_child(&mut self.child) => self.on_exit(exit).await,
                _ = wait_backoff(self.mode) => {
                    self.mode = Mode::Active;
                    let _ = self.spawn_child().await;
                }
                changed = self.world.changed(), if waiting => {
                    if changed.is_ok() {
                        self.check_deps().await;
                    }
                }
                Some(ev) = self.probe_rx.recv() => self.on_probe(ev).await,
                Some(paths) = recv_watch(&mut self.watch_rx) => self.on_files_changed(paths).await,
            }
        }
        debug!(service = %self.name, "Actor ended.");
    }

    fn apply_mode_entry(&mut self) {
        if self.cfg.disabled {
            self.set_state(ServiceState::Stopped, "Disabled; start it by hand".into());
        } else if self.mode == Mode::Idle && self.shared.user_stopped.contains(&self.name) {
            self.set_state(
                ServiceState::Stopped,
                "Stopped by user (unless-stopped); start it by hand".into(),
            );
        }
    }

    fn setup_watch(&mut self) {
        self.watcher = None;
        self.watch_rx = None;
        let Some(wcfg) = self.cfg.watch.clone() else {
            return;
        };
        if wcfg.paths.is_empty() {
            return;
        }
        let cwd = self.working_dir();
        match FileWatch::start(&wcfg, &cwd, &self.shared.state_dir) {
            Ok((w, rx)) => {
                self.watcher = Some(w);
                self.watch_rx = Some(rx);
            }
            Err(error) => {
                warn!(service = %self.name, %error, "Cannot watch files.");
                self.sink
                    .system_warn(format!("Cannot watch files for changes: {error}"));
            }
        }
    }

    // ----- state publishing -----

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let mut history = None;
        self.snap.send_modify(|s| {
            let before = (s.restarts, s.last_exit);
            f(s);
            if (s.restarts, s.last_exit) != before {
                history = Some(crate::persist::ServiceHistory {
                    restarts: s.restarts,
                    last_exit: s.last_exit,
                });
            }
        });
        if let (Some(h), Some(sink)) = (history, &self.shared.state_sink) {
            sink.history_changed(&self.name, h);
        }
        self.shared.world.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn state(&self) -> ServiceState {
        self.snap.borrow().state
    }

    fn set_state(&self, to: ServiceState, message: String) {
        let from = self.state();
        let same_msg = self.snap.borrow().message == message;
        if from == to && same_msg {
            return;
        }
        self.update(|s| {
            s.state = to;
            s.message = message.clone();
        });
        if from != to {
            info!(service = %self.name, %from, %to, %message, "State changed.");
            self.shared.events.emit(EventKind::StateChanged {
                service: self.name.clone(),
                from,
                to,
                message,
            });
        }
    }

    fn set_health(&self, health: Health, message: String) {
        if self.snap.borrow().health == health {
            return;
        }
        self.update(|s| s.health = health);
        self.shared.events.emit(EventKind::HealthChanged {
            service: self.name.clone(),
            health,
            message,
        });
    }

    // ----- commands -----

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Start(reply) => {
                if self.child.is_some() {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.restarts.manual_start();
                self.mode = Mode::Active;
                self.shared.user_stopped.set(&self.name, false);
                let r = self.spawn_child().await;
                let _ = reply.send(r);
            }
            Command::Stop(reply) => {
                self.shared.user_stopped.set(&self.name, true);
                let grace = self.cfg.stop_grace.0;
                self.stop_child(grace).await;
                self.mode = Mode::Idle;
                self.restarts.reset_delays();
                self.set_state(ServiceState::Stopped, "Stopped by user".into());
                let _ = reply.send(());
            }
            Command::Restart(reply) => {
                let grace = self.cfg.stop_grace.0;
                self.stop_child(grace).await;
                self.restarts.manual_start();
                self.mode = Mode::Active;
                self.shared.user_stopped.set(&self.name, false);
                self.update(|s| s.restarts += 1);
                let r = self.spawn_child().await;
                let _ = reply.send(r);
            }
            Command::Halt(reply) => {
                if self.asleep() {
                    // Nothing runs; it stays asleep through the config change.
                    let _ = reply.send(());
                    return;
                }
                let grace = self.cfg.stop_grace.0;
                self.stop_child(grace).await;
                self.mode = Mode::Idle;
                self.set_state(ServiceState::Stopped, "Stopped for a config change".into());
                let _ = reply.send(());
            }
            Command::Reconfigure(cfg, reply) => {
                let was_asleep = self.asleep();
                let grace = self.cfg.stop_grace.0;
                self.stop_child(grace).await;
                self.cfg = Arc::new(*cfg);
                self.restarts = Restarts::new(self.cfg.crash_loop);
                let port = self.shared.port_of(&self.name);
                self.update(|s| {
                    s.spawned = false;
                    s.port = port;
                    s.health = Health::Unknown;
                });
                self.setup_watch();
                let kept_stopped = self.cfg.restart == RestartPolicy::UnlessStopped
                    && self.shared.user_stopped.contains(&self.name);
                if self.cfg.disabled || kept_stopped {
                    self.mode = Mode::Idle;
                    self.apply_mode_entry();
                } else if was_asleep && self.cfg.scale_to_zero.is_some() {
                    // Still scales to zero: it stays asleep and is woken with the new config.
                    self.mode = Mode::Idle;
                    self.set_state(
                        ServiceState::Sleeping,
                        "Asleep (config changed; the next wake starts the new one)".into(),
                    );
                } else {
                    self.mode = Mode::WaitDeps;
                    self.set_state(ServiceState::Pending, "Waiting to start".into());
                }
                let _ = reply.send(());
                if self.mode == Mode::WaitDeps {
                    self.check_deps().await;
                }
            }
            Command::Sleep(message, reply) => {
                let r = self.sleep(message).await;
                let _ = reply.send(r);
            }
            Command::Wake(reply) => {
                let r = self.wake();
                let woken = r.is_ok();
                let _ = reply.send(r);
                if woken && self.mode == Mode::WaitDeps {
                    self.check_deps().await;
                }
            }
            Command::Shutdown(..) => {}
        }
    }

    // ----- sleep and wake -----

    /// Asleep: nothing runs, and only a wake (or a manual start) brings it back.
    fn asleep(&self) -> bool {
        self.mode == Mode::Idle && self.state() == ServiceState::Sleeping
    }

    /// Stops a running (starting, waiting, restarting) service as asleep: like a manual
    /// stop, without the user stop and without the restart policy (the process's exit is
    /// not looked at as a crash: no restart counted, no crash-loop failure).
    async fn sleep(&mut self, message: String) -> Result<(), String> {
        if self.asleep() {
            return Ok(());
        }
        if self.mode == Mode::Idle && self.child.is_none() {
            return Err("not running".into());
        }
        let grace = self.cfg.stop_grace.0;
        self.stop_child(grace).await;
        self.mode = Mode::Idle;
        self.restarts.reset_delays();
        info!(service = %self.name, "Asleep.");
        self.sink.system(message.clone());
        self.set_state(ServiceState::Sleeping, message);
        Ok(())
    }

    /// Takes a sleeping service back to waiting for its dependencies (the caller checks
    /// them next). Awake ones are left as they are.
    fn wake(&mut self) -> Result<(), String> {
        if self.asleep() {
            self.mode = Mode::WaitDeps;
            info!(service = %self.name, "Waking up.");
            self.sink.system("Waking up".to_owned());
            self.set_state(ServiceState::Pending, "Waking up".into());
            return Ok(());
        }
        if self.mode != Mode::Idle || self.child.is_some() {
            return Ok(());
        }
        Err(wake_refused(self.state()))
    }

    // ----- dependencies -----

    /// Spawns when every dependency condition holds; otherwise says what it waits for.
    async fn check_deps(&mut self) {
        let mut waiting: Vec<String> = Vec::new();
        for (dep, cond) in &self.cfg.depends_on.0 {
            let Some(s) = self.shared.snapshot_of(dep) else {
                // Not a service of this supervisor (an external resource): not gated here.
                continue;
            };
            let ok = match cond {
                DependCondition::Started => {
                    s.spawned
                        && matches!(
                            s.state,
                            ServiceState::Starting
                                | ServiceState::Running
                                | ServiceState::Completed
                                | ServiceState::Backoff
                        )
                }
                DependCondition::Healthy => s.state == ServiceState::Running,
                DependCondition::CompletedSuccessfully => s.state == ServiceState::Completed,
            };
            if !ok {
                let what = match cond {
                    DependCondition::Started => "to start",
                    DependCondition::Healthy => "to be healthy",
                    DependCondition::CompletedSuccessfully => "to complete successfully",
                };
                let note = match s.state {
                    ServiceState::Failed | ServiceState::Stopped | ServiceState::Sleeping => {
                        format!(" ({} is {})", dep, s.state)
                    }
                    _ => String::new(),
                };
                waiting.push(format!("{dep} {what}{note}"));
            }
        }
        if waiting.is_empty() {
            self.mode = Mode::Active;
            let _ = self.spawn_child().await;
        } else {
            self.set_state(
                ServiceState::Pending,
                format!("Waiting for {}", waiting.join(", ")),
            );
        }
    }

    // ----- spawning -----

    fn working_dir(&self) -> PathBuf {
        match &self.cfg.working_dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => self.shared.base_dir.join(dir),
            None => self.shared.base_dir.clone(),
        }
    }

    fn lookup(&self, port: Option<u16>, name: &str) -> Option<String> {
        self.lookup_depth(port, name, 0)
    }

    /// Values from the service's (or the global) `env` may themselves hold references
    /// (`API_URL = "http://127.0.0.1:${services.api.port}"`); they are resolved too, up to a
    /// small depth so a cycle (`A = "${B}"`, `B = "${A}"`) ends as an unknown variable.
    fn lookup_depth(&self, port: Option<u16>, name: &str, depth: u8) -> Option<String> {
        if name == "PORT" {
            return port.map(|p| p.to_string());
        }
        if let Some(other) = name
            .strip_prefix("services.")
            .and_then(|r| r.strip_suffix(".port"))
        {
            return self.shared.port_of(other).map(|p| p.to_string());
        }
        if let Some((res, field)) = name
            .strip_prefix("resources.")
            .and_then(|r| r.split_once('.'))
        {
            let conns = match self.shared.resource_conns.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            return conns.get(res).and_then(|c| c.field(field));
        }
        if name.contains('.') {
            return None;
        }
        match self
            .cfg
            .env
            .get(name)
            .or_else(|| self.shared.global_env.get(name))
        {
            Some(value) if depth < 8 => {
                interpolate(value, &|n| self.lookup_depth(port, n, depth + 1)).ok()
            }
            Some(_) => None,
            None => std::env::var(name).ok(),
        }
    }

    fn interpolate(&self, port: Option<u16>, text: &str) -> Result<String, String> {
        interpolate(text, &|n| self.lookup(port, n)).map_err(|e| e.to_string())
    }

    /// The probe with `${...}` references in its command or URL resolved.
    fn interpolate_probe(
        &self,
        cfg: &kinfra_core::config::ProbeConfig,
        port: Option<u16>,
    ) -> Result<kinfra_core::config::ProbeConfig, String> {
        let mut out = cfg.clone();
        if let Some(http) = &cfg.http {
            out.http = Some(self.interpolate(port, http)?);
        }
        out.exec = match &cfg.exec {
            Some(CommandSpec::Shell(s)) => Some(CommandSpec::Shell(self.interpolate(port, s)?)),
            Some(CommandSpec::Argv(v)) => Some(CommandSpec::Argv(
                v.iter()
                    .map(|a| self.interpolate(port, a))
                    .collect::<Result<_, _>>()?,
            )),
            None => None,
        };
        Ok(out)
    }

    fn build_env(&self, port: Option<u16>) -> Result<Vec<(String, String)>, String> {
        // Variables that are not valid UTF-8 cannot be represented here and are skipped.
        let mut env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        env.remove(TAG_VAR);
        for (k, v) in &self.shared.global_env {
            env.insert(k.clone(), self.interpolate(port, v)?);
        }
        for (k, v) in &self.cfg.env {
            env.insert(k.clone(), self.interpolate(port, v)?);
        }
        if let Some(p) = port {
            env.insert("PORT".into(), p.to_string());
        }
        env.insert("KINFRA_SERVICE".into(), self.name.clone());
        env.insert(TAG_VAR.into(), self.shared.tag_of(&self.name));
        Ok(env.into_iter().collect())
    }

    fn build_argv(&self, port: Option<u16>) -> Result<(String, Vec<String>), String> {
        if self.cfg.command.is_empty() {
            return Err("the command is empty".into());
        }
        let args: Vec<String> = self
            .cfg
            .args
            .iter()
            .map(|a| self.interpolate(port, a))
            .collect::<Result<_, _>>()?;
        match &self.cfg.command {
            CommandSpec::Shell(s) => {
                // A shell-less image (a scratch container with the static binary) has no
                // /bin/sh: say so instead of "Command not found: /bin/sh".
                if std::fs::metadata("/bin/sh").is_err() {
                    return Err(SHELL_MISSING.into());
                }
                let mut script = self.interpolate(port, s)?;
                for a in &args {
                    script.push(' ');
                    script.push_str(&shell_quote(a));
                }
                Ok(("/bin/sh".into(), vec!["-c".into(), script]))
            }
            CommandSpec::Argv(v) => {
                let mut all: Vec<String> = v
                    .iter()
                    .map(|a| self.interpolate(port, a))
                    .collect::<Result<_, _>>()?;
                all.extend(args);
                let program = all.remove(0);
                Ok((program, all))
            }
        }
    }

    fn secret_values(&self, env: &[(String, String)]) -> Vec<String> {
        let mut out: Vec<String> = env
            .iter()
            .filter(|(k, _)| is_secret_name(k))
            .map(|(_, v)| v.clone())
            .collect();
        // Resource connection strings and passwords reach services through
        // `${resources.NAME.FIELD}`; they are masked wherever they show up.
        let conns = match self.shared.resource_conns.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for c in conns.values() {
            out.extend(c.url.iter().map(|u| u.expose().to_owned()));
            out.extend(
                c.fields
                    .iter()
                    .filter(|(k, _)| is_secret_name(k))
                    .map(|(_, v)| v.expose().to_owned()),
            );
        }
        out.retain(|v| !v.is_empty());
        out
    }

    /// Resolves the port right before a spawn; a stale process of ours holding it is killed.
    async fn ensure_port(&self) -> Result<Option<u16>, String> {
        let Some(spec) = self.cfg.port else {
            return Ok(None);
        };
        let port = match spec {
            PortSpec::Fixed(p) => p,
            PortSpec::Auto => match self.shared.port_of(&self.name) {
                Some(p) => p,
                None => {
                    let (p, _) = self
                        .shared
                        .ports
                        .resolve(&self.name, PortSpec::Auto)
                        .map_err(|e| e.to_string())?;
                    p
                }
            },
        };
        for _ in 0..50 {
            match ports::check_free(port) {
                Ok(()) => return Ok(Some(port)),
                Err(in_use) => {
                    // Only a leftover of this very service is ours to kill; a live process of
                    // another service holding the port is a conflict like any other.
                    let tag = self.shared.tag_of(&self.name);
                    let ours = in_use
                        .holder
                        .as_ref()
                        .is_some_and(|h| procfs::environ_has(h.pid, TAG_VAR, &tag));
                    match (&in_use.holder, ours) {
                        (Some(h), true) => {
                            warn!(service = %self.name, pid = h.pid, port, "Killing a stale process of ours that holds the port.");
                            let start = procfs::stat(h.pid).map_or(0, |s| s.start_time);
                            spawn::signal_exact(h.pid, start, libc::SIGKILL);
                            // It holds its sockets until it is a zombie.
                            let until = Instant::now() + Duration::from_secs(2);
                            while procfs::is_same_alive(h.pid, start) && Instant::now() < until {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        (None, _) => {
                            // Maybe a process of ours still closing it; give it a moment.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        (Some(_), false) => return Err(PortError::InUse(in_use).to_string()),
                    }
                }
            }
        }
        Err(format!("port {port} is still in use"))
    }

    fn fail(&mut self, message: String) {
        self.mode = Mode::Idle;
        self.sink.system_warn(message.clone());
        warn!(service = %self.name, %message, "Service failed.");
        self.set_state(ServiceState::Failed, message);
    }

    /// Spawns a new process. On error the service is `failed` with the reason.
    async fn spawn_child(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Ok(());
        }
        match self.try_spawn().await {
            Ok(()) => Ok(()),
            Err(message) => {
                self.fail(message.clone());
                Err(message)
            }
        }
    }

    async fn try_spawn(&mut self) -> Result<(), String> {
        let port = self.ensure_port().await?;
        let cwd = self.working_dir();
        if !cwd.is_dir() {
            return Err(format!(
                "Working directory {} does not exist",
                cwd.display()
            ));
        }
        let env = self.build_env(port)?;
        let (program, args) = self.build_argv(port)?;
        self.secrets = self.secret_values(&env);
        let secret_refs: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let full = match &self.cfg.command {
            CommandSpec::Shell(_) => args.last().cloned().unwrap_or_default(),
            CommandSpec::Argv(_) => {
                let mut all = vec![program.clone()];
                all.extend(args.iter().cloned());
                all.join(" ")
            }
        };
        let shown = redact(&full, &secret_refs);
        let spec = SpawnSpec {
            program: program.clone(),
            args,
            env: env.clone(),
            cwd: cwd.clone(),
        };
        let spawned = spawn::spawn(spec).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("Command not found: {program}"),
            std::io::ErrorKind::PermissionDenied => {
                format!("Command not executable: {program}")
            }
            _ => format!("Cannot start `{shown}`: {e}"),
        })?;
        let pid = spawned.pid;
        crate::guardian::add_group(pid);
        self.generation += 1;
        let generation = self.generation;
        let max_line = usize::try_from(self.cfg.log.max_line.0).unwrap_or(usize::MAX);
        // The status knows the process before the log does: whoever sees its spawn line or
        // its output in the log finds its pid in the status.
        let now = Instant::now();
        self.update(|s| {
            s.pid = Some(pid as u32);
            s.started_at = Some(now);
            s.port = port;
            s.spawned = true;
            s.health = Health::Unknown;
        });
        // The spawn line goes first, before anything the process writes.
        self.sink.system(format!("Started pid {pid}: {shown}"));
        let mut readers = Vec::new();
        if let Some(fd) = spawned.stdout {
            readers.push(self.sink.capture(fd, LogStream::Stdout, max_line));
        }
        if let Some(fd) = spawned.stderr {
            readers.push(self.sink.capture(fd, LogStream::Stderr, max_line));
        }
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn(async move {
            let exit = spawn::wait_exit(pid).await;
            let _ = exit_tx.send(exit);
        });
        self.shared.pids.set(
            &self.name,
            vec![PidRecord {
                pid,
                start_time: spawned.start_time,
                pgid: pid,
            }],
        );
        let mut probes = Vec::new();
        let mut has_readiness = false;
        for (kind, cfg) in [
            (ProbeKind::Readiness, self.cfg.health.as_ref()),
            (ProbeKind::Liveness, self.cfg.liveness.as_ref()),
        ] {
            let Some(cfg) = cfg else { continue };
            let resolved = self
                .interpolate_probe(cfg, port)
                .and_then(|cfg| probe::resolve(&cfg, port, &env, &cwd));
            match resolved {
                Ok(target) => {
                    has_readiness |= kind == ProbeKind::Readiness;
                    probes.push(probe::start_loop(
                        cfg,
                        target,
                        kind,
                        generation,
                        self.probe_tx.clone(),
                    ));
                }
                Err(error) => {
                    warn!(service = %self.name, %error, "Probe not usable.");
                    self.sink.system_warn(format!("Probe not usable: {error}"));
                }
            }
        }
        self.child = Some(Child {
            pid,
            start_time: spawned.start_time,
            started: Instant::now(),
            exit: exit_rx,
            probes,
            tree: self.shared.trees.register(&self.shared, &self.name, pid),
            readers,
        });
        info!(service = %self.name, pid, command = %shown, "Process started.");
        self.shared.events.emit(EventKind::ProcessStarted {
            service: self.name.clone(),
            pid: pid as u32,
        });
        if has_readiness {
            self.set_state(
                ServiceState::Starting,
                "Starting (waiting for the readiness probe)".into(),
            );
        } else {
            self.set_state(ServiceState::Running, "Service is running".into());
        }
        Ok(())
    }

    // ----- exits and restarts -----

    async fn on_exit(&mut self, exit: ExitInfo) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let uptime = child.started.elapsed();
        self.kill_leftovers_fast(&child);
        crate::guardian::remove_group(child.pid);
        drain(std::mem::take(&mut child.readers)).await;
        drop(child);
        self.after_exit(exit, uptime, None).await;
    }

    /// Decides what follows an exit the service did not ask for, or a liveness failure
    /// (`liveness` holds the reason; the process was already stopped and reported then).
    async fn after_exit(&mut self, exit: ExitInfo, uptime: Duration, liveness: Option<String>) {
        let failure = liveness.is_some() || !exit.success();
        let what = match liveness {
            Some(reason) => reason,
            None => {
                self.shared.pids.set(&self.name, Vec::new());
                let pid = self.snap.borrow().pid.unwrap_or(0);
                self.update(|s| {
                    s.pid = None;
                    s.started_at = None;
                    s.last_exit = Some(exit);
                    s.health = Health::Unknown;
                });
                self.shared.events.emit(EventKind::ProcessExited {
                    service: self.name.clone(),
                    pid,
                    exit,
                });
                let what = describe_exit(&exit);
                self.sink.system(format!("{what} (pid {pid})"));
                what
            }
        };
        let (delay, attempt) =
            match self
                .restarts
                .after_exit(self.cfg.restart, &self.cfg.backoff, failure, uptime)
            {
                AfterExit::Done { failed } => {
                    self.mode = Mode::Idle;
                    if failed {
                        self.set_state(ServiceState::Failed, what);
                    } else {
                        self.set_state(ServiceState::Completed, "Completed successfully".into());
                    }
                    return;
                }
                AfterExit::CrashLoop { failures } => {
                    let window = kinfra_core::config::format_duration(self.cfg.crash_loop.window.0);
                    let message =
                        format!("Crash loop: {failures} failures in {window}; start it by hand");
                    self.mode = Mode::Idle;
                    warn!(service = %self.name, failures, "Crash loop; giving up.");
                    self.sink.system_warn(message.clone());
                    self.shared.events.emit(EventKind::CrashLoop {
                        service: self.name.clone(),
                        failures,
                    });
                    self.set_state(ServiceState::Failed, message);
                    return;
                }
                AfterExit::Restart { delay, attempt } => (delay, attempt),
            };
        self.update(|s| s.restarts += 1);
        self.shared.events.emit(EventKind::RestartScheduled {
            service: self.name.clone(),
            delay_ms: delay.as_millis() as u64,
            attempt,
        });
        if delay.is_zero() {
            self.mode = Mode::Active;
            let _ = self.spawn_child().await;
        } else {
            self.mode = Mode::Backoff(tokio::time::Instant::now() + delay);
            self.set_state(
                ServiceState::Backoff,
                format!("{what}, restarting in {}", fmt_delay(delay)),
            );
        }
    }

    async fn on_probe(&mut self, mut ev: ProbeEvent) {
        if ev.generation != self.generation || self.child.is_none() {
            return;
        }
        let secret_refs: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        ev.message = redact(&ev.message, &secret_refs);
        match ev.kind {
            ProbeKind::Readiness => {
                if ev.healthy {
                    self.set_health(Health::Healthy, ev.message);
                    self.set_state(ServiceState::Running, "Service is running".into());
                } else {
                    if ev.changed {
                        self.sink
                            .system_warn(format!("Readiness probe failing: {}", ev.message));
                    }
                    self.set_health(Health::Unhealthy, ev.message.clone());
                    let state = self.state();
                    self.set_state(state, format!("Readiness probe failing: {}", ev.message));
                }
            }
            ProbeKind::Liveness => {
                if ev.healthy || !ev.changed {
                    return;
                }
                let reason = format!("Liveness probe failed: {}", ev.message);
                warn!(service = %self.name, message = %ev.message, "Liveness probe failed; restarting.");
                self.sink.system_warn(reason.clone());
                let grace = self.cfg.stop_grace.0;
                let (exit, uptime) = match self.stop_process(grace).await {
                    Some(r) => r,
                    None => return,
                };
                self.after_exit(exit, uptime, Some(reason)).await;
            }
        }
    }

    async fn on_files_changed(&mut self, paths: Vec<PathBuf>) {
        // A crashed or finished service runs again after an edit (the edit may be the fix);
        // one stopped on purpose, asleep, in maintenance or waiting for dependencies does
        // not (a sleeping one starts the edited files when it is woken).
        if matches!(
            self.state(),
            ServiceState::Stopped
                | ServiceState::Maintenance
                | ServiceState::Pending
                | ServiceState::Sleeping
        ) {
            return;
        }
        self.restarts.reset_guard();
        let shown: Vec<String> = paths
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        info!(service = %self.name, files = ?shown, "Files changed; restarting.");
        self.sink
            .system(format!("Files changed ({}); restarting", shown.join(", ")));
        let grace = self.cfg.stop_grace.0;
        self.stop_child(grace).await;
        self.restarts.reset_delays();
        self.mode = Mode::Active;
        self.update(|s| s.restarts += 1);
        let _ = self.spawn_child().await;
    }

    // ----- stopping -----

    /// Every live process that belongs to the child: its group, its descendants (now and
    /// recorded earlier), and whatever carries this service's tag.
    fn members(&self, child: &Child, with_tag: bool) -> Vec<ProcStat> {
        let procs = procfs::snapshot();
        let mut out: Vec<ProcStat> = procs
            .iter()
            .filter(|p| p.pgid == child.pid && !p.is_zombie())
            .copied()
            .collect();
        for p in procfs::descendants(&procs, child.pid)
            .into_iter()
            .chain(child.tree.descendants())
        {
            if !p.is_zombie()
                && procfs::is_same_alive(p.pid, p.start_time)
                && !out.iter().any(|o| o.pid == p.pid)
            {
                out.push(p);
            }
        }
        if with_tag {
            let tag = self.shared.tag_of(&self.name);
            for p in procs.iter() {
                if !p.is_zombie()
                    && !out.iter().any(|o| o.pid == p.pid)
                    && procfs::environ_has_cached(p, TAG_VAR, &tag)
                {
                    out.push(*p);
                }
            }
        }
        let me = std::process::id() as i32;
        out.retain(|p| p.pid != me);
        out
    }

    /// After the main process exited by itself: SIGKILL what it left in its group and the
    /// descendants recorded while it ran, so a restart starts clean.
    fn kill_leftovers_fast(&self, child: &Child) {
        spawn::signal_group(child.pid, libc::SIGKILL);
        for d in &child.tree.descendants() {
            spawn::signal_exact(d.pid, d.start_time, libc::SIGKILL);
        }
    }

    /// Stops the child (if any) without deciding what follows: stop signal to the group and
    /// every descendant, grace, then SIGKILL. Returns the exit and the uptime.
    async fn stop_process(&mut self, grace: Duration) -> Option<(ExitInfo, Duration)> {
        let mut child = self.child.take()?;
        for p in child.probes.drain(..) {
            p.abort();
        }
        let pid = child.pid;
        let uptime = child.started.elapsed();
        self.set_state(ServiceState::Stopping, "Stopping".into());
        let sig = self.cfg.stop_signal.0;
        let victims = self.members(&child, true);
        let deadline = tokio::time::Instant::now() + grace;
        let already_gone = !procfs::is_same_alive(pid, child.start_time);
        if !already_gone {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
        spawn::signal_group(pid, sig);
        for v in &victims {
            if v.pgid != pid {
                spawn::signal_exact(v.pid, v.start_time, sig);
            }
        }
        let exit = match tokio::time::timeout_at(deadline, &mut child.exit).await {
            Ok(r) => r.ok(),
            Err(_) => {
                info!(service = %self.name, pid, "Grace period over; sending SIGKILL.");
                self.sink
                    .system(format!("Did not stop within {}; killing", fmt_delay(grace)));
                spawn::signal_group(pid, libc::SIGKILL);
                for v in &victims {
                    spawn::signal_exact(v.pid, v.start_time, libc::SIGKILL);
                }
                tokio::time::timeout(Duration::from_secs(5), &mut child.exit)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            }
        };
        let exit = exit.unwrap_or(ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
        });
        // The rest of the group and the descendants get the rest of the grace period.
        loop {
            let left = self.members(&child, false);
            if left.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                for p in &left {
                    spawn::signal_exact(p.pid, p.start_time, libc::SIGKILL);
                }
                spawn::signal_group(pid, libc::SIGKILL);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A last sweep by tag catches whatever forked away in the meantime.
        for _ in 0..20 {
            let left = self.members(&child, true);
            if left.is_empty() {
                break;
            }
            for p in &left {
                spawn::signal_exact(p.pid, p.start_time, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shared.pids.set(&self.name, Vec::new());
        crate::guardian::remove_group(pid);
        drain(std::mem::take(&mut child.readers)).await;
        self.update(|s| {
            s.pid = None;
            s.started_at = None;
            s.last_exit = Some(exit);
            s.health = Health::Unknown;
        });
        self.shared.events.emit(EventKind::ProcessExited {
            service: self.name.clone(),
            pid: pid as u32,
            exit,
        });
        self.sink
            .system(format!("Stopped pid {pid} ({})", describe_exit(&exit)));
        Some((exit, uptime))
    }

    /// Stops the child (if any); the caller decides the next state.
    async fn stop_child(&mut self, grace: Duration) {
        if matches!(self.mode, Mode::Backoff(_)) {
            self.mode = Mode::Idle;
        }
        self.stop_process(grace).await;
    }
}

/// Where a service's log files are.
pub(crate) fn log_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs")
}
