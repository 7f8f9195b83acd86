//! Sleep and wake (scale to zero): a sleeping service or resource is down without being a
//! crash or a user stop, the restart policy leaves it alone, a wake starts it through the
//! usual dependency check, and stopped or failed targets are refused.

use crate::support::*;
use kinfra_core::EventKind;
use kinfra_core::config::{DependCondition, RestartPolicy, ScaleToZero};
use kinfra_core::event::Event;
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run,
};
use kinfra_core::state::ServiceState;
use kinfra_core::view::{Action, ActionError};
use kinfra_supervisor::{ProcessResource, ResourceSpec, Supervisor};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::broadcast;

/// How long a test watches for a restart that must not come. Proving that something does
/// not happen needs a window: a restart under `restart = "always"` with no backoff would
/// come within milliseconds of the exit, so a second is ample on a loaded machine and keeps
/// the test short.
const NO_RESTART_WINDOW: Duration = Duration::from_secs(1);

/// True when a process with this pid exists (`kill(pid, 0)`), zombies included.
fn exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Collects `name`'s process starts and its states entered, from `rx`, for `window`.
async fn starts_within(
    rx: &mut broadcast::Receiver<Event>,
    name: &str,
    window: Duration,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        match ev.kind {
            EventKind::ProcessStarted { service, pid } if service == name => {
                seen.push(format!("process started (pid {pid})"));
            }
            EventKind::StateChanged { service, to, .. }
                if service == name
                    && matches!(
                        to,
                        ServiceState::Pending
                            | ServiceState::Starting
                            | ServiceState::Running
                            | ServiceState::Backoff
                    ) =>
            {
                seen.push(format!("state {to}"));
            }
            _ => {}
        }
    }
    seen
}

/// The states `name` entered, in order, among the events already in `rx`.
fn states_entered(rx: &mut broadcast::Receiver<Event>, name: &str) -> Vec<(ServiceState, String)> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        if let EventKind::StateChanged {
            service,
            to,
            message,
            ..
        } = ev.kind
            && service == name
        {
            out.push((to, message));
        }
    }
    out
}

fn pid_of(sup: &Supervisor, name: &str) -> u32 {
    status_of(sup, name)
        .pid
        .unwrap_or_else(|| panic!("{name} has no pid: {:?}", status_of(sup, name)))
}

fn refusal(result: Result<(), ActionError>) -> String {
    match result {
        Err(ActionError::NotAvailable { reason, .. }) => reason,
        other => panic!("expected NotAvailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_process_stays_down_under_restart_always_and_wakes_with_a_new_pid() {
    let project = Project::new();
    let mut svc = sh("exec sleep 30");
    svc.restart = RestartPolicy::Always;
    let sup = project.start(&services(vec![("web", svc)])).await;
    expect_state(&sup, "web", ServiceState::Running, SECS(10)).await;
    let old = pid_of(&sup, "web");
    let mut rx = sup.events().subscribe();

    sup.act(Action::Sleep, "web").await.expect("sleep");
    // The reply comes once the process tree is gone.
    assert!(!exists(old), "pid {old} still exists after the sleep");
    let web = status_of(&sup, "web");
    assert_eq!(web.state, ServiceState::Sleeping);
    assert_eq!(web.status_message, "Asleep after being idle");
    assert_eq!(web.pid, None);
    assert_eq!(web.restarts, 0, "a sleep is no crash");
    assert!(
        web.last_exit.is_some(),
        "the exit is recorded as for any stop"
    );
    let entered = states_entered(&mut rx, "web");
    assert_eq!(
        entered.last().map(|(s, _)| *s),
        Some(ServiceState::Sleeping),
        "{entered:?}"
    );
    let restarted = starts_within(&mut rx, "web", NO_RESTART_WINDOW).await;
    assert!(
        restarted.is_empty(),
        "restart = always brought it back: {restarted:?}"
    );
    assert_eq!(state_of(&sup, "web"), ServiceState::Sleeping);
    let stopped =
        kinfra_supervisor::stopped::StoppedSet::load(&project.state_dir().join("stopped.json"));
    assert!(!stopped.contains("web"), "a sleep is no user stop");
    // Asleep already: fine.
    sup.act(Action::Sleep, "web").await.expect("sleep again");

    sup.act(Action::Wake, "web").await.expect("wake");
    expect_state(&sup, "web", ServiceState::Running, SECS(10)).await;
    let new = pid_of(&sup, "web");
    assert_ne!(new, old, "a wake starts a new process");
    assert!(exists(new));
    let entered = states_entered(&mut rx, "web");
    assert!(
        entered.contains(&(ServiceState::Pending, "Waking up".into())),
        "{entered:?}"
    );
    // Awake already: fine, and nothing restarts.
    sup.act(Action::Wake, "web").await.expect("wake again");
    assert_eq!(pid_of(&sup, "web"), new);
    assert_eq!(status_of(&sup, "web").restarts, 0);
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_dependent_waits_for_its_sleeping_dependency() {
    let project = Project::new();
    let db = sh("exec sleep 30");
    let mut api = sh("exec sleep 30");
    api.depends_on
        .0
        .insert("db".into(), DependCondition::Healthy);
    let mut worker = sh("exec sleep 30");
    worker
        .depends_on
        .0
        .insert("db".into(), DependCondition::Started);
    let sup = project
        .start(&services(vec![
            ("db", db),
            ("api", api),
            ("worker", worker),
        ]))
        .await;
    for name in ["db", "api", "worker"] {
        expect_state(&sup, name, ServiceState::Running, SECS(10)).await;
    }
    for name in ["api", "worker", "db"] {
        sup.act(Action::Sleep, name).await.expect("sleep");
        assert_eq!(state_of(&sup, name), ServiceState::Sleeping);
    }

    sup.act(Action::Wake, "api").await.expect("wake api");
    sup.act(Action::Wake, "worker").await.expect("wake worker");
    // They wait, saying what for; nothing wakes db but a wake of db.
    for (name, message) in [
        ("api", "Waiting for db to be healthy (db is sleeping)"),
        ("worker", "Waiting for db to start (db is sleeping)"),
    ] {
        assert!(
            wait_for(SECS(10), || status_of(&sup, name).status_message == message).await,
            "{name}: {:?}",
            status_of(&sup, name)
        );
        let s = status_of(&sup, name);
        assert_eq!((s.state, s.pid), (ServiceState::Pending, None));
    }
    assert_eq!(state_of(&sup, "db"), ServiceState::Sleeping);

    sup.act(Action::Wake, "db").await.expect("wake db");
    for name in ["db", "api", "worker"] {
        expect_state(&sup, name, ServiceState::Running, SECS(10)).await;
    }
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_failed_services_neither_sleep_nor_wake() {
    let project = Project::new();
    let mut bad = sh("exit 3");
    bad.restart = RestartPolicy::No;
    let sup = project
        .start(&services(vec![("web", sh("exec sleep 30")), ("bad", bad)]))
        .await;
    expect_state(&sup, "web", ServiceState::Running, SECS(10)).await;
    expect_state(&sup, "bad", ServiceState::Failed, SECS(10)).await;
    sup.act(Action::Stop, "web").await.expect("stop");

    let reason = refusal(sup.act(Action::Sleep, "web").await);
    assert_eq!(reason, "not running");
    let reason = refusal(sup.act(Action::Wake, "web").await);
    assert!(
        reason.contains("stopped") && reason.contains("kinfra runtime start"),
        "{reason}"
    );
    assert_eq!(state_of(&sup, "web"), ServiceState::Stopped);

    assert_eq!(refusal(sup.act(Action::Sleep, "bad").await), "not running");
    let reason = refusal(sup.act(Action::Wake, "bad").await);
    assert!(reason.contains("kinfra runtime start"), "{reason}");
    assert_eq!(state_of(&sup, "bad"), ServiceState::Failed);

    // A user stop of a sleeping service wins: it is stopped, and a wake is refused.
    sup.act(Action::Start, "web").await.expect("start");
    expect_state(&sup, "web", ServiceState::Running, SECS(10)).await;
    sup.act(Action::Sleep, "web").await.expect("sleep");
    sup.act(Action::Stop, "web").await.expect("stop");
    assert_eq!(state_of(&sup, "web"), ServiceState::Stopped);
    refusal(sup.act(Action::Wake, "web").await);
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_sleeping_service_asleep_while_it_scales_to_zero() {
    let project = Project::new();
    let mut svc = sh("exec sleep 30");
    svc.scale_to_zero = Some(ScaleToZero::after(SECS(60)));
    let mut other = sh("exec sleep 30");
    other.scale_to_zero = Some(ScaleToZero::after(SECS(60)));
    let sup = project
        .start(&services(vec![
            ("web", svc.clone()),
            ("other", other.clone()),
        ]))
        .await;
    expect_state(&sup, "web", ServiceState::Running, SECS(10)).await;
    expect_state(&sup, "other", ServiceState::Running, SECS(10)).await;
    sup.act(Action::Sleep, "web").await.expect("sleep");
    sup.act(Action::Sleep, "other").await.expect("sleep");

    // A changed command that still scales to zero: asleep, woken with the new command.
    let mut changed = sh("exec sleep 31");
    changed.scale_to_zero = svc.scale_to_zero;
    // No longer scaling to zero: nothing will wake it, so it starts.
    let plain = sh("exec sleep 32");
    let summary = sup
        .apply(&services(vec![("web", changed), ("other", plain)]))
        .await
        .expect("reload");
    assert_eq!(summary.changed, vec!["other".to_owned(), "web".to_owned()]);
    expect_state(&sup, "other", ServiceState::Running, SECS(10)).await;
    let web = status_of(&sup, "web");
    assert_eq!(
        (web.state, web.pid),
        (ServiceState::Sleeping, None),
        "{web:?}"
    );
    sup.act(Action::Wake, "web").await.expect("wake");
    expect_state(&sup, "web", ServiceState::Running, SECS(10)).await;
    assert!(
        messages(&sup, "web").iter().any(|m| m.contains("sleep 31")),
        "woken with the new command: {:?}",
        messages(&sup, "web")
    );
    sup.shutdown(SECS(5)).await;
}

/// A process resource counting its adapter calls; after a stop, the next `lies` observes
/// say it still runs (a provider whose pause takes a while to show).
struct Counting {
    process: ProcessResource,
    starts: AtomicU32,
    stops: AtomicU32,
    observes: AtomicU32,
    lies: AtomicU32,
    lies_after_stop: u32,
}

impl Counting {
    fn new(name: &str, lies_after_stop: u32) -> Self {
        Self {
            process: ProcessResource::shell(
                name,
                "trap 'exit 0' TERM; while :; do sleep 0.1; done",
                None,
            ),
            starts: AtomicU32::new(0),
            stops: AtomicU32::new(0),
            observes: AtomicU32::new(0),
            lies: AtomicU32::new(0),
            lies_after_stop,
        }
    }
}

impl Resource for Counting {
    fn kind(&self) -> &'static str {
        "counting"
    }
    fn name(&self) -> &str {
        self.process.name()
    }
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        self.starts.fetch_add(1, SeqCst);
        self.process.start()
    }
    fn stop(&self, grace: Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.stops.fetch_add(1, SeqCst);
        self.lies.store(self.lies_after_stop, SeqCst);
        self.process.stop(grace)
    }
    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        self.observes.fetch_add(1, SeqCst);
        let lie = self
            .lies
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lie {
            return Box::pin(async { Ok(Observed::Running) });
        }
        self.process.status()
    }
    fn health(&self) -> BoxFuture<'_, Result<kinfra_core::state::Health, ResourceError>> {
        self.process.health()
    }
    fn connection(&self) -> Connection {
        self.process.connection()
    }
    fn logs(&self, tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        self.process.logs(tail)
    }
    fn remove(&self, volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.process.remove(volumes)
    }
}

fn resource_spec(adapter: Arc<Counting>) -> ResourceSpec {
    let mut spec = ResourceSpec::new(adapter);
    spec.restart = RestartPolicy::Always;
    spec.backoff.initial = kinfra_core::config::Dur::from_millis(0);
    spec.stop_grace = SECS(2);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_sleeps_through_its_adapters_stop_and_wakes_through_its_start() {
    let project = Project::new();
    let adapter = Arc::new(Counting::new("db", 0));
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project
            .opts()
            .with_resources(vec![("db".into(), resource_spec(adapter.clone()))]),
    )
    .await
    .expect("start");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    let old = pid_of(&sup, "db");
    assert_eq!(adapter.starts.load(SeqCst), 1);
    let mut rx = sup.events().subscribe();

    sup.act(Action::Sleep, "db").await.expect("sleep");
    assert_eq!(
        adapter.stops.load(SeqCst),
        1,
        "slept through Resource::stop"
    );
    assert!(!exists(old), "pid {old} still exists after the sleep");
    let db = status_of(&sup, "db");
    assert_eq!(
        (db.state, db.status_message.as_str(), db.restarts),
        (ServiceState::Sleeping, "Asleep after being idle", 0)
    );
    let entered = states_entered(&mut rx, "db");
    assert_eq!(
        entered.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![ServiceState::Stopping, ServiceState::Sleeping]
    );
    let restarted = starts_within(&mut rx, "db", NO_RESTART_WINDOW).await;
    assert!(
        restarted.is_empty(),
        "restart = always brought it back: {restarted:?}"
    );
    assert_eq!(adapter.starts.load(SeqCst), 1);
    sup.act(Action::Sleep, "db").await.expect("sleep again");

    sup.act(Action::Wake, "db").await.expect("wake");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    assert_eq!(
        adapter.starts.load(SeqCst),
        2,
        "woken through Resource::start"
    );
    assert_ne!(pid_of(&sup, "db"), old);
    let entered = states_entered(&mut rx, "db");
    assert!(
        entered.contains(&(ServiceState::Pending, "Waking up".into())),
        "{entered:?}"
    );
    sup.act(Action::Wake, "db").await.expect("wake again");
    assert_eq!(adapter.starts.load(SeqCst), 2);

    // Stopped by hand: neither sleeps nor wakes.
    sup.act(Action::Stop, "db").await.expect("stop");
    assert_eq!(refusal(sup.act(Action::Sleep, "db").await), "not running");
    let reason = refusal(sup.act(Action::Wake, "db").await);
    assert!(reason.contains("kinfra runtime start"), "{reason}");
    sup.shutdown(SECS(5)).await;
}

/// A provider resource put to sleep by kinfra is observed like one asleep outside kinfra:
/// while its provider still shows the pause winding down (it says "running" for a while),
/// it is left asleep; once it was seen down, running again means something outside woke it
/// (a connection to a Neon endpoint), and it is taken up again without a start of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observe_loop_does_not_undo_kinfras_sleep_but_sees_an_outside_wake() {
    let project = Project::new();
    let adapter = Arc::new(Counting::new("db", 2));
    let mut spec = resource_spec(adapter.clone());
    spec.observe_interval = Some(Duration::from_millis(50));
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("db".into(), spec)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    sup.act(Action::Sleep, "db").await.expect("sleep");
    assert_eq!(state_of(&sup, "db"), ServiceState::Sleeping);
    // Observed: twice "running" (the pause showing late), then down for real.
    let seen = adapter.observes.load(SeqCst);
    assert!(
        wait_for(SECS(10), || adapter.observes.load(SeqCst) >= seen + 4
            || adapter.starts.load(SeqCst) != 1)
        .await,
        "the sleeping resource is not observed"
    );
    assert_eq!(adapter.starts.load(SeqCst), 1, "kinfra started it again");
    assert_eq!(state_of(&sup, "db"), ServiceState::Sleeping);

    // Woken outside kinfra: taken up (the start adopts what runs).
    let woken = adapter.process.start().await.expect("woken outside");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    assert_eq!(status_of(&sup, "db").restarts, 0, "a wake is no restart");
    drop(woken);
    sup.shutdown(SECS(5)).await;
}
