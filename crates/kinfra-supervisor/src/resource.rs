//! Resources driven through the [`Resource`] adapter trait (containers, and processes through
//! [`crate::process::ProcessResource`]): one actor task per resource with the same states,
//! restart policy, backoff and crash-loop guard, readiness probes, log pipeline, events and
//! dependency conditions as a service. The process actor in [`crate::actor`] is left as it is;
//! this one only knows the trait.

use crate::actor::{Command, Shared, Snapshot, wake_refused};
use crate::lifecycle::{AfterExit, Mode, Restarts};
use crate::logs::LogSink;
use crate::probe::{self, ProbeEvent, ProbeKind};
use kinfra_core::config::{
    BackoffConfig, CrashLoopConfig, DependCondition, DependsOn, LogConfig, OnDown, ProbeConfig,
    ResourceConfig, RestartPolicy,
};
use kinfra_core::event::{EventKind, ExitInfo};
use kinfra_core::progress::Progress;
use kinfra_core::resource::{Observed, OutputLine, ReportedState, Resource, Run};
use kinfra_core::state::{Health, ServiceState};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the adapter's own health check is read while the resource starts.
const HEALTH_POLL_STARTING: Duration = Duration::from_millis(250);
/// How often it is read once the resource runs.
const HEALTH_POLL_RUNNING: Duration = Duration::from_secs(2);
/// Extra time, beyond the grace, that a stop waits for the run's exit to be reported.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(5);
/// How often a start in flight is sampled for progress (so at most four `progress` events a
/// second per resource).
const PROGRESS_TICK: Duration = Duration::from_millis(250);
/// A cloud operation whose phase stays the same is sent again this often (its elapsed time
/// moved on); the status shows the elapsed time at every tick.
const PROGRESS_QUIET_RESEND: Duration = Duration::from_secs(5);
/// After kinfra put a resource to sleep, observes in a row that may still say "running"
/// (a provider showing its pause late) before that is believed: an outside wake.
const SETTLE_OBSERVES: u32 = 3;

/// How the supervisor drives one resource: the adapter and the policies around it.
#[derive(Clone)]
pub struct ResourceSpec {
    /// The adapter.
    pub resource: Arc<dyn Resource>,
    /// What it waits for before it starts.
    pub depends_on: DependsOn,
    /// When it is restarted after it ends.
    pub restart: RestartPolicy,
    /// Restart delays.
    pub backoff: BackoffConfig,
    /// When restarts stop.
    pub crash_loop: CrashLoopConfig,
    /// kinfra's readiness probe, against the resource's published port.
    pub health: Option<ProbeConfig>,
    /// How long a stop waits before it forces the resource down.
    pub stop_grace: Duration,
    /// What the supervisor's shutdown does with it.
    pub on_down: OnDown,
    /// Log ring and file settings.
    pub log: LogConfig,
    /// For a provider resource: how often it is observed after its provider reported it
    /// stopped or sleeping outside kinfra's doing (paused in a console, a Neon compute gone
    /// idle), so that when it runs again (restored there, woken by a connection) it is taken
    /// up again (`start` adopts it) rather than shown stopped until someone starts it.
    /// `None`: not observed then.
    pub observe_interval: Option<Duration>,
}

impl std::fmt::Debug for ResourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceSpec")
            .field("kind", &self.resource.kind())
            .field("name", &self.resource.name())
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

impl ResourceSpec {
    /// A spec with the defaults of a service (restart on failure, no probe, 10 s grace).
    pub fn new(resource: Arc<dyn Resource>) -> Self {
        Self {
            resource,
            depends_on: DependsOn::default(),
            restart: RestartPolicy::default(),
            backoff: BackoffConfig::default(),
            crash_loop: CrashLoopConfig::default(),
            health: None,
            stop_grace: Duration::from_secs(10),
            on_down: OnDown::Stop,
            log: LogConfig::default(),
            observe_interval: None,
        }
    }

    /// A spec with the policies of a `[resources.NAME]` block.
    pub fn from_config(resource: Arc<dyn Resource>, cfg: &ResourceConfig) -> Self {
        Self {
            depends_on: cfg.depends_on.clone(),
            restart: cfg.restart,
            health: cfg.health.clone(),
            stop_grace: cfg.stop_grace.0,
            on_down: cfg.on_down,
            observe_interval: cfg.provider.is_some().then(|| cfg.observe_interval().0),
            ..Self::new(resource)
        }
    }
}

struct Live {
    exit: oneshot::Receiver<ExitInfo>,
    forwarder: Option<JoinHandle<()>>,
    probe: Option<JoinHandle<()>>,
    started: Instant,
    pid: Option<u32>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(p) = &self.probe {
            p.abort();
        }
    }
}

/// Long work under way on a resource, as status shows it and as it was last sent.
#[derive(Default)]
pub(crate) struct ProgressCell {
    /// What status shows (`None`: nothing under way).
    pub shown: Option<Progress>,
    /// When the current start began (the elapsed time of a cloud operation).
    began: Option<Instant>,
    /// The last `progress` event: when, and what it said.
    sent: Option<(Instant, Option<Progress>)>,
}

/// Shared between a resource actor (which writes) and status (which reads).
pub(crate) type SharedProgress = Arc<Mutex<ProgressCell>>;

pub(crate) fn lock_progress(cell: &SharedProgress) -> std::sync::MutexGuard<'_, ProgressCell> {
    cell.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when `a` and `b` say the same apart from the elapsed time.
fn same_but_time(a: &Option<Progress>, b: &Option<Progress>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            Progress {
                elapsed_s: 0,
                ..a.clone()
            } == Progress {
                elapsed_s: 0,
                ..b.clone()
            }
        }
        (None, None) => true,
        _ => false,
    }
}

/// What `Supervisor` keeps of a resource actor.
pub(crate) struct ResourceHandle {
    pub cmds: mpsc::Sender<Command>,
    pub snap: watch::Receiver<Snapshot>,
    pub progress: SharedProgress,
    pub sink: LogSink,
    pub spec: ResourceSpec,
    pub task: JoinHandle<()>,
}

pub(crate) struct ResourceActor {
    name: String,
    spec: ResourceSpec,
    shared: Arc<Shared>,
    sink: LogSink,
    snap: watch::Sender<Snapshot>,
    cmds: mpsc::Receiver<Command>,
    world: watch::Receiver<u64>,
    mode: Mode,
    live: Option<Live>,
    restarts: Restarts,
    progress: SharedProgress,
    generation: u64,
    probe_tx: mpsc::Sender<ProbeEvent>,
    probe_rx: mpsc::Receiver<ProbeEvent>,
    probe_ok: Option<bool>,
    own_health: Health,
    /// Commands that arrived while a start was in flight, handled after it (a stop, halt,
    /// restart or shutdown goes first: it interrupted the start).
    deferred: VecDeque<Command>,
    /// Idle because the provider reported it stopped or sleeping outside kinfra: observed
    /// every [`ResourceSpec::observe_interval`] to take it up again when it runs. Any command
    /// ends this (the user decides from then on); kinfra's own sleep starts it again.
    watching: bool,
    /// Put to sleep by kinfra and not yet observed down: "running" observes in a row so far,
    /// which are the pause showing late, not an outside wake, up to [`SETTLE_OBSERVES`].
    settling: Option<u32>,
}

impl ResourceActor {
    pub fn new(
        name: String,
        spec: ResourceSpec,
        shared: Arc<Shared>,
        sink: LogSink,
        snap: watch::Sender<Snapshot>,
        cmds: mpsc::Receiver<Command>,
    ) -> Self {
        let (probe_tx, probe_rx) = mpsc::channel(16);
        let world = shared.world.subscribe();
        let restarts = Restarts::new(spec.crash_loop);
        Self {
            name,
            spec,
            shared,
            sink,
            snap,
            cmds,
            world,
            mode: Mode::WaitDeps,
            live: None,
            restarts,
            progress: SharedProgress::default(),
            generation: 0,
            probe_tx,
            probe_rx,
            probe_ok: None,
            own_health: Health::Unknown,
            deferred: VecDeque::new(),
            watching: false,
            settling: None,
        }
    }

    /// The cell status reads this resource's progress from.
    pub fn progress_cell(&self) -> SharedProgress {
        self.progress.clone()
    }

    /// Samples the work under way while the resource starts (the adapter's own measure, or a
    /// provider's phase and the time taken), puts it in status and sends a `progress` event
    /// when it changed: at most once per call (calls come every [`PROGRESS_TICK`] at most), a
    /// cloud operation whose phase stays the same every [`PROGRESS_QUIET_RESEND`], and one
    /// last `progress: null` once the start is over.
    fn refresh_progress(&self) {
        let starting = self.state() == ServiceState::Starting;
        let mut cell = lock_progress(&self.progress);
        let now = if starting {
            let began = *cell.began.get_or_insert_with(Instant::now);
            self.spec
                .resource
                .progress()
                .or_else(|| self.operation_progress(began))
        } else {
            cell.began = None;
            None
        };
        cell.shown = now.clone();
        let send = match &cell.sent {
            None => now.is_some(),
            Some((at, last)) => {
                !same_but_time(last, &now)
                    || (now.is_some() && at.elapsed() >= PROGRESS_QUIET_RESEND)
            }
        };
        if !send {
            return;
        }
        cell.sent = Some((Instant::now(), now.clone()));
        drop(cell);
        self.shared.events.emit(EventKind::Progress {
            service: self.name.clone(),
            progress: now,
        });
    }

    /// A provider's long operation while it starts: its phase (the provider's own word for
    /// the state, else what it reports) and the time since the start began. No percent: a
    /// provider that has one reports it through [`Resource::progress`].
    fn operation_progress(&self, began: Instant) -> Option<Progress> {
        let reported = self.spec.resource.reported_state()?;
        if reported.state != ServiceState::Starting {
            return None;
        }
        let phase = self
            .spec
            .resource
            .sync()
            .and_then(|s| s.provider_state)
            .unwrap_or(reported.message);
        Some(Progress {
            task: "operation".into(),
            phase,
            target: None,
            current: None,
            total: None,
            unit: None,
            percent: None,
            elapsed_s: began.elapsed().as_secs(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snap.send_modify(f);
        self.shared.world.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn state(&self) -> ServiceState {
        self.snap.borrow().state
    }

    /// Takes the resource's connection facts again for dependents, which resolve
    /// `${resources.NAME.FIELD}` when they spawn: a cloud resource learns them while it
    /// starts (a run begins) and once it runs (a database pooler known only when active).
    fn take_connection(&self) -> kinfra_core::resource::Connection {
        let conn = self.spec.resource.connection();
        match self.shared.resource_conns.write() {
            Ok(mut conns) => conns.insert(self.name.clone(), conn.clone()),
            Err(p) => p.into_inner().insert(self.name.clone(), conn.clone()),
        };
        conn
    }

    fn set_state(&self, to: ServiceState, message: impl Into<String>) {
        let message = message.into();
        let from = self.state();
        if from == to && self.snap.borrow().message == message {
            return;
        }
        if to == ServiceState::Running && from != ServiceState::Running {
            // Before dependents waiting for it can see it running.
            self.take_connection();
        }
        self.update(|s| {
            s.state = to;
            s.message = message.clone();
        });
        if from != to {
            info!(resource = %self.name, %from, %to, %message, "State changed.");
            self.shared.events.emit(EventKind::StateChanged {
                service: self.name.clone(),
                from,
                to,
                message,
            });
            if from == ServiceState::Starting {
                // The work of the start is over: status and a last event say so.
                self.refresh_progress();
            } else if to == ServiceState::Starting {
                lock_progress(&self.progress).began = Some(Instant::now());
            }
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

    pub async fn run(mut self) {
        loop {
            if let Some(cmd) = self.deferred.pop_front() {
                if self.handle(cmd).await {
                    return;
                }
                continue;
            }
            match self.mode {
                Mode::WaitDeps => {
                    if self.deps_met() {
                        self.mode = Mode::Active;
                        self.launch().await;
                        continue;
                    }
                    tokio::select! {
                        cmd = self.cmds.recv() => match cmd {
                            Some(cmd) => if self.handle(cmd).await { return },
                            None => return,
                        },
                        _ = self.world.changed() => {}
                    }
                }
                Mode::Backoff(at) => {
                    tokio::select! {
                        cmd = self.cmds.recv() => match cmd {
                            Some(cmd) => if self.handle(cmd).await { return },
                            None => return,
                        },
                        _ = tokio::time::sleep_until(at) => {
                            self.mode = Mode::Active;
                            self.launch().await;
                        }
                    }
                }
                Mode::Idle => {
                    let watch = self.spec.observe_interval.filter(|_| self.watching);
                    tokio::select! {
                        cmd = self.cmds.recv() => match cmd {
                            Some(cmd) => {
                                self.watching = false;
                                if self.handle(cmd).await {
                                    return;
                                }
                            }
                            None => return,
                        },
                        () = tokio::time::sleep(watch.unwrap_or_default()), if watch.is_some() => {
                            self.observe_idle().await;
                        }
                    }
                }
                Mode::Active => {
                    let poll = if self.state() == ServiceState::Starting {
                        HEALTH_POLL_STARTING
                    } else {
                        HEALTH_POLL_RUNNING
                    };
                    let Some(live) = self.live.as_mut() else {
                        self.mode = Mode::Idle;
                        continue;
                    };
                    tokio::select! {
                        cmd = self.cmds.recv() => match cmd {
                            Some(cmd) => if self.handle(cmd).await { return },
                            None => return,
                        },
                        exit = &mut live.exit => {
                            let exit = match exit {
                                Ok(e) => Some(e),
                                Err(_) => self.observed_exit().await,
                            };
                            self.on_exit(exit).await;
                        }
                        Some(ev) = self.probe_rx.recv() => self.on_probe(ev),
                        _ = tokio::time::sleep(poll) => {
                            self.poll_health().await;
                            self.apply_reported();
                            self.refresh_progress();
                        }
                    }
                }
            }
        }
    }

    fn deps_met(&self) -> bool {
        let mut waiting = Vec::new();
        for (dep, cond) in &self.spec.depends_on.0 {
            let Some(s) = self.shared.snapshot_of(dep) else {
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
                match s.state {
                    ServiceState::Failed | ServiceState::Stopped | ServiceState::Sleeping => {
                        waiting.push(format!("{dep} ({})", s.state));
                    }
                    _ => waiting.push(dep.clone()),
                }
            }
        }
        if waiting.is_empty() {
            return true;
        }
        self.set_state(
            ServiceState::Pending,
            format!("Waiting for {}", waiting.join(", ")),
        );
        false
    }

    /// Starts (or adopts) a run. Failures go through the restart policy, except permanent
    /// ones (no engine, an invalid definition), which fail at once with their message.
    /// Launches now and says whether the resource failed to start (with its message).
    async fn launch_and_report(&mut self) -> Result<(), String> {
        self.launch().await;
        match self.state() {
            ServiceState::Failed => Err(self.snap.borrow().message.clone()),
            _ => Ok(()),
        }
    }

    async fn launch(&mut self) {
        self.set_state(
            ServiceState::Starting,
            format!("Starting {}", self.spec.resource.kind()),
        );
        lock_progress(&self.progress).began = Some(Instant::now());
        // A start may wait minutes (a cloud operation): commands keep arriving meanwhile. A
        // stop, halt, restart, sleep or shutdown interrupts it (the start future is dropped,
        // which cancels what it was waiting for, and the command then stops the resource); a
        // wake is answered at once (starting is awake); any other command waits its turn.
        let resource = self.spec.resource.clone();
        let start = resource.start();
        tokio::pin!(start);
        let started = loop {
            tokio::select! {
                result = &mut start => break Some(result),
                () = tokio::time::sleep(PROGRESS_TICK) => self.refresh_progress(),
                cmd = self.cmds.recv() => match cmd {
                    Some(
                        cmd @ (Command::Stop(_)
                        | Command::Halt(_)
                        | Command::Restart(_)
                        | Command::Shutdown(..)
                        | Command::Sleep(..)),
                    ) => {
                        self.deferred.push_front(cmd);
                        break None;
                    }
                    // Starting is awake: a wake has nothing to wait for here.
                    Some(Command::Wake(reply)) => {
                        let _ = reply.send(Ok(()));
                    }
                    Some(cmd) => self.deferred.push_back(cmd),
                    None => break Some(start.as_mut().await),
                },
            }
        };
        // What the start reached last (a pull's `complete`) is shown before it moves on.
        self.refresh_progress();
        let Some(started) = started else {
            self.mode = Mode::Idle;
            self.sink.system("Start interrupted by a stop.");
            self.set_state(ServiceState::Stopping, "Start interrupted");
            return;
        };
        match started {
            Ok(run) => self.on_started(run),
            Err(error) => {
                warn!(resource = %self.name, %error, "Start failed.");
                self.sink.system_warn(format!("Start failed: {error}"));
                if error.is_permanent() {
                    self.mode = Mode::Idle;
                    self.set_state(ServiceState::Failed, error.to_string());
                } else {
                    let next = self.restarts.after_start_failure(&self.spec.backoff);
                    self.follow(next, error.to_string());
                }
            }
        }
    }

    fn on_started(&mut self, run: Run) {
        self.generation += 1;
        self.settling = None;
        self.probe_ok = None;
        self.own_health = Health::Unknown;
        let Run {
            id,
            pid,
            adopted,
            output,
            exit,
        } = run;
        let conn = self.take_connection();
        // The status knows the run before the log does: whoever sees its start line or its
        // output in the log finds its pid in the status.
        self.update(|s| {
            s.pid = pid;
            s.port = conn.port;
            s.started_at = Some(Instant::now());
            s.spawned = true;
        });
        let what = if adopted { "Adopted" } else { "Started" };
        self.sink.system(format!(
            "{what} {} {}",
            self.spec.resource.kind(),
            short_id(&id)
        ));
        if let Some(pid) = pid {
            self.shared.events.emit(EventKind::ProcessStarted {
                service: self.name.clone(),
                pid,
            });
        }
        let forwarder = tokio::spawn(forward(output, self.sink.clone()));
        let probe = self.spec.health.as_ref().and_then(|cfg| {
            match probe::resolve(cfg, conn.port, &[], &self.shared.base_dir) {
                Ok(target) => Some(probe::start_loop(
                    cfg,
                    target,
                    ProbeKind::Readiness,
                    self.generation,
                    self.probe_tx.clone(),
                )),
                Err(error) => {
                    self.sink
                        .system_warn(format!("The health probe cannot run: {error}"));
                    None
                }
            }
        });
        self.live = Some(Live {
            exit,
            forwarder: Some(forwarder),
            probe,
            started: Instant::now(),
            pid,
        });
        self.mode = Mode::Active;
        self.check_ready();
    }

    /// Running once every check there is says so; `Starting` until then.
    fn check_ready(&mut self) {
        let probe_ok = self.spec.health.is_none() || self.probe_ok == Some(true);
        let own_ok = !self.spec.resource.has_own_health() || self.own_health == Health::Healthy;
        let ready = probe_ok && own_ok;
        let has_checks = self.spec.health.is_some() || self.spec.resource.has_own_health();
        if ready {
            if has_checks {
                self.set_health(Health::Healthy, "all checks pass".into());
            }
            let message = match self.spec.resource.reported_state() {
                Some(r) if r.state == ServiceState::Running => r.message,
                _ => "Running".to_owned(),
            };
            self.set_state(ServiceState::Running, message);
        } else if self.state() == ServiceState::Running
            && (self.probe_ok == Some(false) || self.own_health == Health::Unhealthy)
        {
            self.set_health(Health::Unhealthy, "a check fails".into());
        }
    }

    /// Shows what the provider reports while the run is live (see
    /// [`Resource::reported_state`]): its `Starting`, `Stopping` or `Maintenance` with the
    /// message, and `Running` once kinfra's own probe (if any) passes; the adapter's health
    /// then only marks it unhealthy, as for a running resource.
    fn apply_reported(&mut self) {
        let Some(ReportedState { state, message }) = self.spec.resource.reported_state() else {
            return;
        };
        match state {
            ServiceState::Starting | ServiceState::Stopping | ServiceState::Maintenance => {
                self.set_state(state, message);
            }
            ServiceState::Running => {
                let probe_ok = self.spec.health.is_none() || self.probe_ok == Some(true);
                if !probe_ok {
                    return;
                }
                self.set_state(ServiceState::Running, message);
                match self.own_health {
                    Health::Healthy => self.set_health(Health::Healthy, "all checks pass".into()),
                    Health::Unhealthy => self.set_health(Health::Unhealthy, "a check fails".into()),
                    _ => {}
                }
            }
            // Final states are read when the run ends.
            _ => {}
        }
    }

    fn on_probe(&mut self, ev: ProbeEvent) {
        if ev.generation != self.generation || !ev.changed {
            return;
        }
        self.probe_ok = Some(ev.healthy);
        if !ev.healthy {
            self.sink
                .system_warn(format!("Health probe failing: {}", ev.message));
        }
        self.check_ready();
    }

    async fn poll_health(&mut self) {
        if !self.spec.resource.has_own_health() {
            return;
        }
        match self.spec.resource.health().await {
            Ok(h) => {
                if h != self.own_health {
                    self.own_health = h;
                    self.check_ready();
                }
            }
            Err(error) => warn!(resource = %self.name, %error, "Health check failed."),
        }
    }

    /// One observe of a resource stopped or sleeping outside kinfra, or asleep by kinfra's
    /// doing: when it runs again, it is taken up (started, which adopts what runs) as if it
    /// had never stopped. Right after kinfra's own sleep, "running" is believed only once it
    /// was seen down, or after [`SETTLE_OBSERVES`] in a row (the pause did not take, or
    /// something woke it before the first look): a provider showing the pause late must not
    /// have kinfra undo its own sleep.
    async fn observe_idle(&mut self) {
        match self.spec.resource.status().await {
            Ok(Observed::Running) => {
                if let Some(seen) = self.settling {
                    let seen = seen.saturating_add(1);
                    if seen < SETTLE_OBSERVES {
                        debug!(resource = %self.name, seen, "Still shown running after the sleep.");
                        self.settling = Some(seen);
                        return;
                    }
                }
                self.settling = None;
                info!(resource = %self.name, "Running again outside kinfra; taking it up.");
                self.sink
                    .system("Running again (started or woken outside kinfra); taking it up.");
                self.watching = false;
                self.mode = Mode::Active;
                self.launch().await;
            }
            Ok(_) => self.settling = None,
            Err(error) => {
                warn!(resource = %self.name, %error, "Observe of a stopped resource failed.");
            }
        }
    }

    async fn observed_exit(&self) -> Option<ExitInfo> {
        match self.spec.resource.status().await {
            Ok(Observed::Exited(e)) => Some(e),
            _ => None,
        }
    }

    async fn end_live(&mut self) -> Option<Duration> {
        let mut live = self.live.take()?;
        let ran = live.started.elapsed();
        // The output ends with the run; give it a moment so the exit line comes last.
        if let Some(forwarder) = live.forwarder.take() {
            let _ = tokio::time::timeout(Duration::from_millis(200), forwarder).await;
        }
        Some(ran)
    }

    async fn on_exit(&mut self, exit: Option<ExitInfo>) {
        let pid = self.live.as_ref().and_then(|l| l.pid);
        let ran = self.end_live().await.unwrap_or_default();
        let mut shown = exit.map_or_else(|| "an unknown exit".to_owned(), |e| e.to_string());
        if let Some(reason) = self.spec.resource.exit_reason() {
            shown = format!("{shown} ({reason})");
        }
        self.sink.system(format!("Exited with {shown}"));
        if let (Some(pid), Some(exit)) = (pid, exit) {
            self.shared.events.emit(EventKind::ProcessExited {
                service: self.name.clone(),
                pid,
                exit,
            });
        }
        self.update(|s| {
            s.pid = None;
            s.started_at = None;
            s.last_exit = exit;
            s.health = Health::Unknown;
        });
        if let Some(ReportedState { state, message }) = self.spec.resource.reported_state()
            && matches!(
                state,
                ServiceState::Stopped | ServiceState::Sleeping | ServiceState::Failed
            )
        {
            // The provider says how it ended (paused outside kinfra, a failed restore): shown
            // as it is; restarting would not change it. A stopped or sleeping one is observed,
            // to be taken up again when it runs.
            self.mode = Mode::Idle;
            self.watching = state != ServiceState::Failed && self.spec.observe_interval.is_some();
            self.set_state(state, message);
            return;
        }
        let success = exit.is_some_and(|e| e.success());
        let next = self
            .restarts
            .after_exit(self.spec.restart, &self.spec.backoff, !success, ran);
        self.follow(next, format!("Exited with {shown}"));
    }

    /// Carries out what the lifecycle core decided after an exit or a failed start.
    fn follow(&mut self, next: AfterExit, why: String) {
        match next {
            AfterExit::Done { failed } => {
                self.mode = Mode::Idle;
                if failed {
                    self.set_state(ServiceState::Failed, why);
                } else {
                    self.set_state(ServiceState::Completed, "Completed");
                }
            }
            AfterExit::CrashLoop { failures } => {
                self.mode = Mode::Idle;
                self.shared.events.emit(EventKind::CrashLoop {
                    service: self.name.clone(),
                    failures,
                });
                self.set_state(
                    ServiceState::Failed,
                    format!("{why}; crash loop, not restarting"),
                );
            }
            AfterExit::Restart { delay, attempt } => {
                self.update(|s| s.restarts = s.restarts.saturating_add(1));
                self.shared.events.emit(EventKind::RestartScheduled {
                    service: self.name.clone(),
                    delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
                    attempt,
                });
                self.mode = Mode::Backoff(tokio::time::Instant::now() + delay);
                self.set_state(
                    ServiceState::Backoff,
                    format!("{why}; restarting in {}", crate::actor::fmt_delay(delay)),
                );
            }
        }
    }

    /// Stops the run (if any) within `grace` and waits for its exit report; `stopped` then.
    async fn stop_live(&mut self, grace: Duration) {
        self.end_run(grace, false).await;
        self.set_state(ServiceState::Stopped, "Stopped");
    }

    /// Asleep: nothing runs, and only a wake (a manual start, an outside wake the observe
    /// sees) brings it back.
    fn asleep(&self) -> bool {
        self.mode == Mode::Idle && self.live.is_none() && self.state() == ServiceState::Sleeping
    }

    /// Ends the run: stops the resource, or with `keep` lets go of it and leaves the thing
    /// as it is ([`Resource::release`], `on_down = "keep"` at shutdown). The caller sets the
    /// state that follows. A sleeping resource is down already: nothing to do.
    async fn end_run(&mut self, grace: Duration, keep: bool) {
        if self.asleep() {
            return;
        }
        self.set_state(ServiceState::Stopping, "Stopping");
        let ended = if keep {
            self.spec.resource.release(grace).await
        } else {
            self.spec.resource.stop(grace).await
        };
        if let Err(error) = ended {
            warn!(resource = %self.name, %error, "Stop failed.");
            self.sink.system_warn(format!("Stop failed: {error}"));
        }
        if let Some(live) = self.live.as_mut() {
            let exit = tokio::time::timeout(grace + EXIT_REPORT_WAIT, &mut live.exit)
                .await
                .ok()
                .and_then(Result::ok);
            let pid = live.pid;
            self.end_live().await;
            if let Some(exit) = exit {
                self.sink.system(format!("Stopped ({exit})"));
                if let Some(pid) = pid {
                    self.shared.events.emit(EventKind::ProcessExited {
                        service: self.name.clone(),
                        pid,
                        exit,
                    });
                }
            }
            self.update(|s| {
                s.pid = None;
                s.started_at = None;
                s.last_exit = exit.or(s.last_exit);
                s.health = Health::Unknown;
            });
        }
    }

    /// Puts a running (starting, waiting, restarting) resource to sleep through its
    /// adapter's stop (a provider's pause; a container stopped and kept): `sleeping`, out of
    /// reach of the restart policy, observed (when it has an observe interval) so an outside
    /// wake is taken up.
    async fn sleep(&mut self, message: String) -> Result<(), String> {
        let watch = self.spec.observe_interval.is_some();
        if self.asleep() {
            // The run loop ended the watch for this command; asleep, it goes on.
            self.watching = watch;
            return Ok(());
        }
        // Idle with a start interrupted by this very command: the start may have begun.
        let interrupted = self.state() == ServiceState::Stopping;
        if self.mode == Mode::Idle && self.live.is_none() && !interrupted {
            return Err("not running".into());
        }
        if self.live.is_some() || interrupted {
            self.end_run(self.spec.stop_grace, false).await;
        }
        self.mode = Mode::Idle;
        self.restarts.reset_delays();
        self.watching = watch;
        self.settling = Some(0);
        info!(resource = %self.name, "Asleep.");
        self.sink.system(message.clone());
        self.set_state(ServiceState::Sleeping, message);
        Ok(())
    }

    /// Takes a sleeping resource back to waiting for its dependencies, then the usual start
    /// (which adopts or resumes it). Awake ones are left as they are.
    fn wake(&mut self) -> Result<(), String> {
        if self.asleep() {
            self.mode = Mode::WaitDeps;
            self.watching = false;
            self.settling = None;
            info!(resource = %self.name, "Waking up.");
            self.sink.system("Waking up");
            self.set_state(ServiceState::Pending, "Waking up");
            return Ok(());
        }
        if self.mode != Mode::Idle || self.live.is_some() {
            return Ok(());
        }
        Err(wake_refused(self.state()))
    }

    /// Handles one command; true when the actor ends.
    async fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Start(reply) => {
                if self.live.is_some() {
                    let _ = reply.send(Ok(()));
                    return false;
                }
                self.restarts.manual_start();
                self.mode = Mode::Active;
                let r = self.launch_and_report().await;
                let _ = reply.send(r);
            }
            Command::Stop(reply) => {
                self.stop_live(self.spec.stop_grace).await;
                self.mode = Mode::Idle;
                self.restarts.reset_delays();
                let _ = reply.send(());
            }
            Command::Restart(reply) => {
                self.stop_live(self.spec.stop_grace).await;
                self.restarts.manual_start();
                self.mode = Mode::Active;
                let r = self.launch_and_report().await;
                let _ = reply.send(r);
            }
            Command::Halt(reply) => {
                self.stop_live(self.spec.stop_grace).await;
                self.mode = Mode::Idle;
                let _ = reply.send(());
            }
            Command::Reconfigure(_, reply) => {
                // Resources are reconfigured by replacing their adapter, not through here.
                let _ = reply.send(());
            }
            Command::Sleep(message, reply) => {
                let r = self.sleep(message).await;
                let _ = reply.send(r);
            }
            Command::Wake(reply) => {
                let r = self.wake();
                let _ = reply.send(r);
            }
            Command::Shutdown(grace, reply) => {
                self.end_run(grace, self.spec.on_down == OnDown::Keep).await;
                self.set_state(ServiceState::Stopped, "Stopped");
                let removal = match self.spec.on_down {
                    OnDown::Stop => None,
                    OnDown::Remove => Some(false),
                    OnDown::RemoveVolumes => Some(true),
                    // Provider resources: `keep` and `pause` leave it here (pausing is their
                    // driver's), `delete` removes it.
                    OnDown::Keep | OnDown::Pause => None,
                    OnDown::Delete => Some(false),
                };
                if let Some(volumes) = removal
                    && let Err(error) = self.spec.resource.remove(volumes).await
                {
                    warn!(resource = %self.name, %error, "Removal failed.");
                }
                let _ = reply.send(());
                return true;
            }
        }
        false
    }
}

async fn forward(mut output: mpsc::Receiver<OutputLine>, sink: LogSink) {
    while let Some(line) = output.recv().await {
        sink.write(line.stream, line.text).await;
    }
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
