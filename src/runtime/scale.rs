//! Scale to zero: targets (`scale_to_zero` services and resources) are put to sleep after
//! `idle_after` without activity, and woken (their sleeping dependencies first) by requests
//! through the proxy or by `kinfra runtime wake`.
//!
//! The proxy records activity on the [`ActivityBoard`]; [`ScaleToZero`] reads it. Its loop is
//! one task that exists only while there are targets and sleeps until the earliest moment a
//! target may fall asleep, or until an event or a reload changes that: nothing polls.

use kinfra_core::activity::{ActivityBoard, TargetPolicy};
use kinfra_core::config::{Config, DependsOn, ScaleToZero as Policy, WakeMode};
use kinfra_core::event::{Event, EventKind, EventSender};
use kinfra_core::state::ServiceState;
use kinfra_core::status::{ServiceStatus, SleepStatus};
use kinfra_core::view::{Action, ActionError};
use kinfra_supervisor::Supervisor;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

/// The outcome of a wake, shared by everyone waiting for the same one.
type WakeOutcome = Option<Result<(), ActionError>>;

/// A wake in flight, as the callers that wait for it see it.
type WakeFuture = Pin<Box<dyn Future<Output = Result<(), ActionError>> + Send>>;

/// One target's policy and its place among the dependencies.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    policy: Policy,
    /// What it depends on (every kind: the supervisor waits for the others).
    depends_on: Vec<String>,
    /// Services and resources whose `depends_on` names it.
    dependents: Vec<String>,
    /// `running` means ready: it has a readiness probe, or it is a provider resource (the
    /// provider says when it runs; its port is not on this machine). Otherwise a woken
    /// target with a port is ready once the port accepts connections on 127.0.0.1.
    probed: bool,
}

/// The targets of a config, by name.
#[derive(Debug, Clone, Default, PartialEq)]
struct Plan {
    targets: BTreeMap<String, Target>,
}

impl Plan {
    fn of(config: &Config) -> Self {
        let all: Vec<(&String, Option<Policy>, &DependsOn, bool)> = config
            .services
            .iter()
            .map(|(name, s)| (name, s.scale_to_zero, &s.depends_on, s.health.is_some()))
            .chain(config.resources.iter().map(|(name, r)| {
                (
                    name,
                    r.scale_to_zero,
                    &r.depends_on,
                    r.health.is_some() || r.is_provider(),
                )
            }))
            .collect();
        let targets = all
            .iter()
            .filter_map(|(name, policy, depends_on, probed)| {
                let policy = (*policy)?;
                let dependents = all
                    .iter()
                    .filter(|(_, _, d, _)| d.0.contains_key(*name))
                    .map(|(n, _, _, _)| (*n).clone())
                    .collect();
                Some((
                    (*name).clone(),
                    Target {
                        policy,
                        depends_on: depends_on.0.keys().cloned().collect(),
                        dependents,
                        probed: *probed,
                    },
                ))
            })
            .collect();
        Self { targets }
    }

    fn policies(&self) -> Vec<(String, TargetPolicy)> {
        self.targets
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    TargetPolicy {
                        wakes_on_request: t.policy.wake == WakeMode::Request,
                        wake_timeout: t.policy.wake_timeout.0,
                    },
                )
            })
            .collect()
    }
}

/// What a target's state and activity say about its sleep.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Not running (sleeping, starting, stopped, ...): nothing to decide.
    NotRunning,
    /// Requests or connections are open through the proxy.
    Open(u32),
    /// A dependent is awake and needs it.
    NeededBy(String),
    /// It falls asleep after this much more idle time.
    SleepsIn(Duration),
    /// Idle long enough: put it to sleep now.
    Sleep,
}

impl Verdict {
    fn kept_awake_by(&self) -> Option<String> {
        match self {
            Self::Open(1) => Some("1 open connection".to_owned()),
            Self::Open(n) => Some(format!("{n} open connections")),
            Self::NeededBy(name) => Some(format!("dependent {name} is awake")),
            _ => None,
        }
    }
}

/// True when a dependent in `state` needs what it depends on to be awake.
fn keeps_awake(state: ServiceState) -> bool {
    !matches!(
        state,
        ServiceState::Stopped
            | ServiceState::Sleeping
            | ServiceState::Failed
            | ServiceState::Completed
    )
}

/// Whether `target` (in `state`, with `open` requests and `idle` time) sleeps, and when.
fn verdict(
    target: &Target,
    state: Option<ServiceState>,
    open: u32,
    idle: Duration,
    state_of: impl Fn(&str) -> Option<ServiceState>,
) -> Verdict {
    if state != Some(ServiceState::Running) {
        return Verdict::NotRunning;
    }
    if open > 0 {
        return Verdict::Open(open);
    }
    if let Some(dependent) = target
        .dependents
        .iter()
        .find(|d| state_of(d).is_some_and(keeps_awake))
    {
        return Verdict::NeededBy(dependent.clone());
    }
    match target.policy.idle_after.0.checked_sub(idle) {
        Some(left) if !left.is_zero() => Verdict::SleepsIn(left),
        _ => Verdict::Sleep,
    }
}

/// A background task that ends with its owner.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The scale-to-zero controller: the targets of the config in force, their activity board
/// (shared with the proxy), the loop that puts idle targets to sleep, and wakes.
pub(super) struct ScaleToZero {
    board: Arc<ActivityBoard>,
    supervisor: Supervisor,
    events: EventSender,
    plan: Mutex<Plan>,
    /// Wakes since kinfra started, by target.
    wakes: Mutex<HashMap<String, u64>>,
    /// Wakes in flight (one per target; later callers wait for the same outcome).
    waking: Mutex<HashMap<String, watch::Receiver<WakeOutcome>>>,
    /// Targets being put to sleep now, and targets whose sleep failed with when to try again.
    sleeping: Mutex<HashSet<String>>,
    retry_at: Mutex<HashMap<String, Instant>>,
    /// Tells the loop its inputs changed (targets, a sleep done).
    replan: Arc<Notify>,
    task: Mutex<Option<Task>>,
}

impl ScaleToZero {
    /// A controller with `board` (handed to the proxy before the supervisor started). Call
    /// [`ScaleToZero::set_targets`] to start it.
    pub(super) fn new(
        board: Arc<ActivityBoard>,
        supervisor: Supervisor,
        events: EventSender,
    ) -> Self {
        Self {
            board,
            supervisor,
            events,
            plan: Mutex::new(Plan::default()),
            wakes: Mutex::new(HashMap::new()),
            waking: Mutex::new(HashMap::new()),
            sleeping: Mutex::new(HashSet::new()),
            retry_at: Mutex::new(HashMap::new()),
            replan: Arc::new(Notify::new()),
            task: Mutex::new(None),
        }
    }

    /// The board the proxy records activity on, with the targets of `config`.
    pub(super) fn board_for(config: &Config) -> Arc<ActivityBoard> {
        let board = ActivityBoard::new();
        board.set_targets(Plan::of(config).policies());
        Arc::new(board)
    }

    /// Takes the targets of `config` (at start and at each reload): the board follows (a
    /// target that stays keeps its activity, a new one starts active now), the loop runs
    /// while there is a target and re-reads its deadlines. `events` is a subscription taken
    /// before the targets' services started, so the loop misses none of their transitions.
    pub(super) fn set_targets(
        self: &Arc<Self>,
        config: &Config,
        events: Option<broadcast::Receiver<Event>>,
    ) {
        let plan = Plan::of(config);
        self.board.set_targets(plan.policies());
        let any = !plan.targets.is_empty();
        *lock(&self.plan) = plan;
        let mut task = lock(&self.task);
        if !any {
            // No target: no task at all.
            *task = None;
            return;
        }
        match &*task {
            Some(running) if !running.0.is_finished() => self.replan.notify_one(),
            _ => {
                let events = events.unwrap_or_else(|| self.events.subscribe());
                *task = Some(Task(tokio::spawn(run(Arc::downgrade(self), events))));
            }
        }
    }

    /// The target `name`'s policy, or why `action` does not apply to it.
    fn target(&self, action: Action, name: &str) -> Result<Target, ActionError> {
        if let Some(target) = lock(&self.plan).targets.get(name) {
            return Ok(target.clone());
        }
        if self.supervisor.status().contains_key(name) {
            Err(ActionError::NotAvailable {
                action: action.as_str().to_owned(),
                service: name.to_owned(),
                reason: format!("`{name}` has no `scale_to_zero`"),
            })
        } else {
            Err(ActionError::UnknownService(name.to_owned()))
        }
    }

    /// Puts a target to sleep now (`kinfra runtime sleep`).
    pub(super) async fn sleep(&self, name: &str) -> Result<(), ActionError> {
        self.target(Action::Sleep, name)?;
        let activity = self.board.get(name);
        if let Some(activity) = &activity {
            // New requests wait for the wake after the sleep instead of reaching a backend
            // that is going away.
            activity.drain();
        }
        let result = self.supervisor.act(Action::Sleep, name).await;
        if result.is_err()
            && let Some(activity) = &activity
        {
            activity.undrain();
        }
        result
    }

    /// Wakes `name` and resolves once it is ready (see [`Action::Wake`]). Concurrent wakes of
    /// one target share one; the wake goes on when the callers go away.
    pub(super) fn wake(self: &Arc<Self>, name: &str) -> WakeFuture {
        let this = self.clone();
        let name = name.to_owned();
        Box::pin(async move {
            this.target(Action::Wake, &name)?;
            let mut outcome = {
                let mut waking = lock(&this.waking);
                match waking.get(&name) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        waking.insert(name.clone(), rx.clone());
                        let runner = this.clone();
                        let target = name.clone();
                        drop(tokio::spawn(async move {
                            let result = runner.wake_now(&target).await;
                            lock(&runner.waking).remove(&target);
                            let _ = tx.send(Some(result));
                        }));
                        rx
                    }
                }
            };
            match outcome.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or(Ok(())),
                Err(_) => Err(not_available(&name, "the wake was abandoned".into())),
            }
        })
    }

    /// One wake of `name`: ready at once when running; from sleeping, its sleeping
    /// dependencies first, then the supervisor's wake, then the wait (on events) for running.
    async fn wake_now(self: &Arc<Self>, name: &str) -> Result<(), ActionError> {
        let target = self.target(Action::Wake, name)?;
        let timeout = target.policy.wake_timeout;
        let deadline = Instant::now() + timeout.0;
        let timed_out = || not_available(name, format!("did not become ready within {timeout}"));
        // Subscribed before the state is read: no transition is missed.
        let mut events = self.events.subscribe();
        let mut current = self.state_of(name);
        let mut woken = false;
        loop {
            let (state, message) = current
                .clone()
                .ok_or_else(|| ActionError::UnknownService(name.to_owned()))?;
            let activity = self.board.get(name);
            let draining = activity.as_ref().is_some_and(|a| a.is_draining());
            match state {
                // Running and not on its way to sleep: ready (without a readiness probe,
                // once its port accepts connections, so a held request never meets a
                // refused connection).
                ServiceState::Running if !draining => {
                    if !target.probed
                        && let Some(port) = self.port_of(name)
                        && !port_accepts(port, deadline).await
                    {
                        return Err(not_available(
                            name,
                            format!(
                                "it runs, but port {port} did not accept connections within \
                                 {timeout}"
                            ),
                        ));
                    }
                    if let Some(activity) = &activity {
                        activity.touch();
                    }
                    return Ok(());
                }
                // Its sleep was decided: wait for it to end, then wake it.
                ServiceState::Running => {}
                ServiceState::Sleeping if !woken => {
                    for dep in &target.depends_on {
                        if !lock(&self.plan).targets.contains_key(dep) {
                            continue;
                        }
                        match tokio::time::timeout_at(deadline, self.wake(dep)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => {
                                return Err(not_available(
                                    name,
                                    format!(
                                        "its dependency {dep} did not wake: {}",
                                        reason(&error)
                                    ),
                                ));
                            }
                            Err(_) => return Err(timed_out()),
                        }
                    }
                    if let Some(activity) = &activity {
                        activity.undrain();
                    }
                    self.supervisor.act(Action::Wake, name).await?;
                    woken = true;
                    *lock(&self.wakes).entry(name.to_owned()).or_default() += 1;
                    tracing::info!(service = %name, "Waking up.");
                }
                // On its way: waking already, starting, or stopping (to sleep, then woken).
                ServiceState::Sleeping
                | ServiceState::Pending
                | ServiceState::Starting
                | ServiceState::Stopping
                | ServiceState::Maintenance => {}
                ServiceState::Stopped => {
                    return Err(not_available(
                        name,
                        "stopped; start it with `kinfra runtime start`".into(),
                    ));
                }
                ServiceState::Failed | ServiceState::Backoff | ServiceState::Completed => {
                    let said = if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    };
                    return Err(not_available(
                        name,
                        format!("{state}{said}; start it with `kinfra runtime start`"),
                    ));
                }
            }
            // The next state of `name`.
            current = loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = tokio::time::sleep_until(deadline) => return Err(timed_out()),
                };
                match event {
                    Ok(Event {
                        kind:
                            EventKind::StateChanged {
                                service,
                                to,
                                message,
                                ..
                            },
                        ..
                    }) if service == name => break Some((to, message)),
                    Ok(Event {
                        kind: EventKind::RuntimeStopping { .. },
                        ..
                    }) => return Err(ActionError::ShuttingDown),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break self.state_of(name),
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ActionError::ShuttingDown);
                    }
                }
            };
        }
    }

    fn port_of(&self, name: &str) -> Option<u16> {
        self.supervisor.status().get(name).and_then(|s| s.port)
    }

    fn state_of(&self, name: &str) -> Option<(ServiceState, String)> {
        self.supervisor
            .status()
            .remove(name)
            .map(|s| (s.state, s.status_message))
    }

    /// Fills `sleep` of every target in `services` (the supervisor's states, before
    /// maintenance is applied).
    pub(super) fn annotate(&self, services: &mut BTreeMap<String, ServiceStatus>) {
        let plan = lock(&self.plan).clone();
        if plan.targets.is_empty() {
            return;
        }
        let states: HashMap<String, ServiceState> = services
            .iter()
            .map(|(name, s)| (name.clone(), s.state))
            .collect();
        let wakes = lock(&self.wakes).clone();
        let now = SystemTime::now();
        for (name, target) in &plan.targets {
            let (Some(status), Some(activity)) = (services.get_mut(name), self.board.get(name))
            else {
                continue;
            };
            let open = activity.in_flight();
            let running = status.state == ServiceState::Running;
            let idle = activity.idle_for();
            let v = verdict(target, Some(status.state), open, idle, |n| {
                states.get(n).copied()
            });
            let sleeps_in = match v {
                Verdict::SleepsIn(left) => Some(left),
                Verdict::Sleep => Some(Duration::ZERO),
                _ => None,
            };
            status.sleep = Some(SleepStatus {
                idle_after_s: target.policy.idle_after.0.as_secs(),
                wake_timeout_s: target.policy.wake_timeout.0.as_secs(),
                wake: match target.policy.wake {
                    WakeMode::Request => "request",
                    WakeMode::Manual => "manual",
                }
                .to_owned(),
                open,
                idle_s: if running && open == 0 {
                    idle.as_secs()
                } else {
                    0
                },
                sleeps_at: sleeps_in
                    .map(|left| humantime::format_rfc3339_seconds(now + left).to_string()),
                sleeps_in_s: sleeps_in.map(|left| left.as_secs()),
                kept_awake_by: v.kept_awake_by(),
                wakes: wakes.get(name).copied().unwrap_or(0),
            });
        }
    }

    /// The Prometheus series: seconds until each target sleeps, wakes per target.
    pub(super) fn metrics(&self) -> String {
        if lock(&self.plan).targets.is_empty() {
            return String::new();
        }
        let mut services = self.supervisor.status();
        self.annotate(&mut services);
        let mut sleeps_in = String::from(
            "# HELP kinfra_service_sleeps_in_seconds Seconds until an idle scale_to_zero target \
             is put to sleep (absent while it sleeps or something keeps it awake).\n\
             # TYPE kinfra_service_sleeps_in_seconds gauge\n",
        );
        let mut wakes = String::from(
            "# HELP kinfra_service_wakes_total Wakes of a scale_to_zero target since kinfra \
             started.\n# TYPE kinfra_service_wakes_total counter\n",
        );
        for (name, s) in &services {
            let Some(sleep) = &s.sleep else { continue };
            let label = kinfra_core::metrics::label_value(name);
            if let Some(left) = sleep.sleeps_in_s {
                sleeps_in.push_str(&format!(
                    "kinfra_service_sleeps_in_seconds{{service=\"{label}\"}} {left}\n"
                ));
            }
            wakes.push_str(&format!(
                "kinfra_service_wakes_total{{service=\"{label}\"}} {}\n",
                sleep.wakes
            ));
        }
        sleeps_in + &wakes
    }

    /// Looks at every target: touches the ones that became running (their grace period),
    /// puts the idle ones to sleep, and says when to look again (`None`: only on an event).
    fn evaluate(self: &Arc<Self>, seen: &mut HashMap<String, ServiceState>) -> Option<Instant> {
        let plan = lock(&self.plan).clone();
        let status = self.supervisor.status();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut at = |when: Instant| next = Some(next.map_or(when, |n| n.min(when)));
        seen.retain(|name, _| plan.targets.contains_key(name));
        for (name, target) in &plan.targets {
            let Some(activity) = self.board.get(name) else {
                continue;
            };
            let state = status.get(name).map(|s| s.state);
            let before = match state {
                Some(state) => seen.insert(name.clone(), state),
                None => seen.remove(name),
            };
            if state == Some(ServiceState::Running) && before != Some(ServiceState::Running) {
                // Became running some way (boot, start, restart, reload, a wake): a full
                // idle_after from now.
                activity.touch();
                if !lock(&self.sleeping).contains(name) {
                    activity.undrain();
                }
            }
            let v = verdict(
                target,
                state,
                activity.in_flight(),
                activity.idle_for(),
                |n| status.get(n).map(|s| s.state),
            );
            match v {
                Verdict::SleepsIn(left) => at(now + left),
                // Its end touches the activity: look again one idle_after from now.
                Verdict::Open(_) => at(now + target.policy.idle_after.0),
                Verdict::Sleep => {
                    if let Some(retry) = lock(&self.retry_at).get(name).copied()
                        && retry > now
                    {
                        at(retry);
                        continue;
                    }
                    if lock(&self.sleeping).contains(name) {
                        continue;
                    }
                    // Marked first, then nothing open checked: a request racing the decision
                    // either calls the sleep off or is held by the proxy and wakes it after.
                    if !activity.try_drain() {
                        at(now + target.policy.idle_after.0);
                        continue;
                    }
                    lock(&self.sleeping).insert(name.clone());
                    self.put_to_sleep(name, target.policy.idle_after.0);
                }
                Verdict::NotRunning | Verdict::NeededBy(_) => {}
            }
        }
        next
    }

    /// Puts `name` to sleep in the background; a failure is retried one `idle_after` later.
    fn put_to_sleep(self: &Arc<Self>, name: &str, idle_after: Duration) {
        let this = self.clone();
        let name = name.to_owned();
        drop(tokio::spawn(async move {
            tracing::info!(service = %name, idle_after = %humantime::format_duration(idle_after), "Idle: putting it to sleep.");
            match this.supervisor.act(Action::Sleep, &name).await {
                Ok(()) => {
                    lock(&this.retry_at).remove(&name);
                }
                Err(error) => {
                    if let Some(activity) = this.board.get(&name) {
                        activity.undrain();
                    }
                    tracing::warn!(service = %name, %error, "Cannot put an idle target to sleep; trying again later.");
                    lock(&this.retry_at).insert(name.clone(), Instant::now() + idle_after);
                }
            }
            lock(&this.sleeping).remove(&name);
            this.replan.notify_one();
        }));
    }

    /// True when `event` may change a deadline: a state change of a target or of a
    /// dependent of one. A target turning running is touched at once (its grace period).
    fn concerns(&self, event: &Event) -> bool {
        let EventKind::StateChanged { service, to, .. } = &event.kind else {
            return false;
        };
        let plan = lock(&self.plan);
        if plan.targets.contains_key(service) {
            if *to == ServiceState::Running
                && let Some(activity) = self.board.get(service)
            {
                activity.touch();
                if !lock(&self.sleeping).contains(service) {
                    activity.undrain();
                }
            }
            return true;
        }
        plan.targets
            .values()
            .any(|t| t.dependents.iter().any(|d| d == service))
    }
}

/// Waits until `127.0.0.1:port` accepts a connection (retrying with a short, growing pause:
/// a port opening sends no event), or `deadline` passes.
async fn port_accepts(port: u16, deadline: Instant) -> bool {
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt = tokio::time::timeout_at(
            deadline,
            tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)),
        )
        .await;
        match attempt {
            Ok(Ok(_)) => return true,
            Err(_) => return false,
            Ok(Err(_)) if Instant::now() + pause >= deadline => return false,
            Ok(Err(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

fn not_available(name: &str, reason: String) -> ActionError {
    ActionError::NotAvailable {
        action: Action::Wake.as_str().to_owned(),
        service: name.to_owned(),
        reason,
    }
}

/// The reason an action error gives, without its "cannot ..." prefix.
fn reason(error: &ActionError) -> String {
    match error {
        ActionError::NotAvailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The loop: evaluate, then wait for the earliest deadline, a relevant event or a replan.
/// Ends when the runtime stops or the controller is gone.
async fn run(controller: Weak<ScaleToZero>, mut events: broadcast::Receiver<Event>) {
    let mut seen = HashMap::new();
    loop {
        let (deadline, replan) = {
            let Some(this) = controller.upgrade() else {
                return;
            };
            (this.evaluate(&mut seen), this.replan.clone())
        };
        loop {
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = timer => break,
                () = replan.notified() => break,
                event = events.recv() => match event {
                    Ok(Event { kind: EventKind::RuntimeStopping { .. }, .. })
                    | Err(broadcast::error::RecvError::Closed) => return,
                    Ok(event) => {
                        let Some(this) = controller.upgrade() else {
                            return;
                        };
                        if this.concerns(&event) {
                            // Take what else is queued before looking again.
                            while let Ok(more) = events.try_recv() {
                                if matches!(more.kind, EventKind::RuntimeStopping { .. }) {
                                    return;
                                }
                                this.concerns(&more);
                            }
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                },
            }
        }
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

    const TEXT: &str = "[project]\nname = \"t\"\n\
        [services.web]\ncommand = \"sleep 100\"\ndepends_on = [\"db\"]\n\
        scale_to_zero = { idle_after = \"10s\" }\n\
        [services.db]\ncommand = \"sleep 100\"\n\
        scale_to_zero = { idle_after = \"20s\", wake = \"manual\" }\n\
        [services.worker]\ncommand = \"sleep 100\"\ndepends_on = [\"db\"]\n\
        [[routes]]\npath = \"/\"\nservice = \"web\"\n";

    #[test]
    fn the_plan_knows_targets_their_dependencies_and_dependents() {
        let plan = Plan::of(&config(TEXT));
        assert_eq!(plan.targets.keys().collect::<Vec<_>>(), ["db", "web"]);
        assert_eq!(plan.targets["web"].depends_on, ["db"]);
        assert_eq!(plan.targets["db"].dependents, ["web", "worker"]);
        let policies = plan.policies();
        assert!(!policies[0].1.wakes_on_request);
        assert!(policies[1].1.wakes_on_request);
        assert_eq!(policies[1].1.wake_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_running_idle_target_sleeps_unless_open_or_needed() {
        let plan = Plan::of(&config(TEXT));
        let web = &plan.targets["web"];
        let db = &plan.targets["db"];
        let none = |_: &str| None;
        let running = Some(ServiceState::Running);
        assert_eq!(
            verdict(web, running, 0, Duration::from_secs(4), none),
            Verdict::SleepsIn(Duration::from_secs(6))
        );
        assert_eq!(
            verdict(web, running, 0, Duration::from_secs(10), none),
            Verdict::Sleep
        );
        assert_eq!(
            verdict(web, running, 2, Duration::ZERO, none),
            Verdict::Open(2)
        );
        assert_eq!(
            Verdict::Open(2).kept_awake_by().as_deref(),
            Some("2 open connections")
        );
        for state in [
            ServiceState::Sleeping,
            ServiceState::Starting,
            ServiceState::Stopped,
            ServiceState::Pending,
        ] {
            assert_eq!(
                verdict(web, Some(state), 0, Duration::from_secs(99), none),
                Verdict::NotRunning
            );
        }
        // db is needed while web or worker is awake.
        let states = |web: ServiceState, worker: ServiceState| {
            move |n: &str| match n {
                "web" => Some(web),
                "worker" => Some(worker),
                _ => None,
            }
        };
        let idle = Duration::from_secs(30);
        let v = verdict(
            db,
            running,
            0,
            idle,
            states(ServiceState::Running, ServiceState::Stopped),
        );
        assert_eq!(v, Verdict::NeededBy("web".into()));
        assert_eq!(v.kept_awake_by().as_deref(), Some("dependent web is awake"));
        assert_eq!(
            verdict(
                db,
                running,
                0,
                idle,
                states(ServiceState::Sleeping, ServiceState::Backoff)
            ),
            Verdict::NeededBy("worker".into())
        );
        assert_eq!(
            verdict(
                db,
                running,
                0,
                idle,
                states(ServiceState::Sleeping, ServiceState::Failed)
            ),
            Verdict::Sleep
        );
    }
}
