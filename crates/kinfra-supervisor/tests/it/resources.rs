//! Resources driven through the `Resource` trait: the conformance suite on the process
//! adapter, and the resource actor's states, restart policy, dependencies, actions and logs.

use crate::support::*;
use kinfra_core::config::{BackoffConfig, DependCondition, Dur, RestartPolicy};
use kinfra_core::resource::{
    BoxFuture, Connection, Observed, OutputLine, Resource, ResourceError, Run, SyncFacts,
};
use kinfra_core::state::ServiceState;
use kinfra_core::status::LastSync;
use kinfra_supervisor::conformance::{self, Fixtures, HELLO};
use kinfra_supervisor::{ProcessResource, ResourceSpec, Supervisor};
use std::collections::BTreeMap;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_adapter_passes_the_conformance_suite() {
    let fixtures = Fixtures {
        long_running: Arc::new(ProcessResource::shell(
            "long",
            &format!("trap 'exit 0' TERM; echo {HELLO}; while :; do sleep 0.1; done"),
            None,
        )),
        exits_3: Arc::new(ProcessResource::shell("three", "echo bye; exit 3", None)),
        start_timeout: SECS(10),
    };
    conformance::run_all(&fixtures)
        .await
        .unwrap_or_else(|e| panic!("process adapter: {e}"));
}

fn fast(spec: &mut ResourceSpec) {
    spec.backoff = BackoffConfig {
        initial: Dur(std::time::Duration::from_millis(50)),
        ..BackoffConfig::default()
    };
    spec.stop_grace = SECS(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_restarts_on_failure_and_gates_its_dependents() {
    let project = Project::new();
    let marker = project.path().join("runs");
    let script = format!(
        "echo run >> {m}; n=$(wc -l < {m}); echo attempt $n; \
         if [ $n -lt 3 ]; then exit 4; fi; trap 'exit 0' TERM; while :; do sleep 0.1; done",
        m = marker.display()
    );
    let adapter = Arc::new(ProcessResource::shell("db", &script, None));
    let mut spec = ResourceSpec::new(adapter.clone());
    fast(&mut spec);
    spec.restart = RestartPolicy::OnFailure;
    let mut api = sh("echo db is up; sleep 30");
    api.depends_on
        .0
        .insert("db".into(), DependCondition::Healthy);
    let sup = Supervisor::start(
        &services(vec![("api", api)]),
        project.opts().with_resources(vec![("db".into(), spec)]),
    )
    .await
    .expect("start");
    assert!(
        wait_for(SECS(10), || {
            let db = status_of(&sup, "db");
            db.restarts == 2 && db.state == ServiceState::Running
        })
        .await,
        "db never ran after two restarts: {:?}",
        status_of(&sup, "db")
    );
    expect_state(&sup, "api", ServiceState::Running, SECS(10)).await;
    let db = status_of(&sup, "db");
    assert_eq!(db.kind, "process");
    assert_eq!(db.restarts, 2, "two failed runs before the good one");
    assert_eq!(db.last_exit.and_then(|e| e.code), Some(4));
    assert!(
        wait_for(SECS(5), || sup
            .logs(Some("db"), 50)
            .is_ok_and(|l| l.iter().any(|l| l.line.message == "attempt 3")))
        .await,
        "the resource's own output reaches the log pipeline: {:?}\nthe adapter read: {:?}",
        sup.logs(Some("db"), 50),
        kinfra_core::resource::Resource::logs(adapter.as_ref(), 50).await
    );
    // Actions work on resources like on services.
    sup.act(kinfra_core::view::Action::Stop, "db")
        .await
        .expect("stop");
    assert_eq!(state_of(&sup, "db"), ServiceState::Stopped);
    sup.act(kinfra_core::view::Action::Start, "db")
        .await
        .expect("start");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    let mut events = sup.events().subscribe();
    sup.shutdown(SECS(5)).await;
    let mut stopped = false;
    while let Ok(ev) = events.try_recv() {
        if let kinfra_core::event::EventKind::StateChanged { service, to, .. } = &ev.kind {
            stopped |= service == "db" && *to == ServiceState::Stopped;
        }
    }
    assert!(stopped, "shutdown stops the resource");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_restart_policy_completes_or_fails() {
    let project = Project::new();
    let mut ok = ResourceSpec::new(Arc::new(ProcessResource::shell("ok", "exit 0", None)));
    ok.restart = RestartPolicy::No;
    let mut bad = ResourceSpec::new(Arc::new(ProcessResource::shell("bad", "exit 2", None)));
    bad.restart = RestartPolicy::No;
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project
            .opts()
            .with_resources(vec![("ok".into(), ok), ("bad".into(), bad)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "ok", ServiceState::Completed, SECS(10)).await;
    expect_state(&sup, "bad", ServiceState::Failed, SECS(10)).await;
    assert_eq!(status_of(&sup, "bad").restarts, 0);
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_program_fails_the_resource_and_the_rest_runs() {
    let project = Project::new();
    let broken = ResourceSpec::new(Arc::new(ProcessResource::new(
        "broken",
        "/nonexistent/kinfra-program",
        Vec::new(),
        Vec::new(),
        project.path(),
        None,
    )));
    let sup = Supervisor::start(
        &services(vec![("api", sh("sleep 30"))]),
        project
            .opts()
            .with_resources(vec![("broken".into(), broken)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "broken", ServiceState::Failed, SECS(10)).await;
    expect_state(&sup, "api", ServiceState::Running, SECS(10)).await;
    assert!(
        status_of(&sup, "broken")
            .status_message
            .contains("/nonexistent/kinfra-program")
    );
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_can_be_replaced_for_a_reload() {
    let project = Project::new();
    let old = ResourceSpec::new(Arc::new(ProcessResource::shell(
        "db",
        "trap 'exit 0' TERM; echo old; while :; do sleep 0.1; done",
        Some(1111),
    )));
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("db".into(), old)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    assert_eq!(
        sup.resource_connection("db").and_then(|c| c.port),
        Some(1111)
    );
    sup.remove_resource("db").await.expect("remove");
    assert!(!sup.status().contains_key("db"));
    assert!(sup.remove_resource("db").await.is_err(), "unknown now");
    let new = ResourceSpec::new(Arc::new(ProcessResource::shell(
        "db",
        "trap 'exit 0' TERM; echo new; while :; do sleep 0.1; done",
        Some(2222),
    )));
    sup.add_resources(vec![("db".into(), new)]).expect("add");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    assert_eq!(status_of(&sup, "db").port, Some(2222));
    assert!(
        wait_for(SECS(5), || sup
            .logs(Some("db"), 20)
            .is_ok_and(|l| l.iter().any(|l| l.line.message == "new")))
        .await
    );
    sup.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_resource_urls_and_never_show_them() {
    let project = Project::new();
    let out = project.path().join("url.txt");
    let conn = kinfra_core::resource::Connection {
        host: "127.0.0.1".into(),
        port: Some(6399),
        url: Some(kinfra_core::Secret::new(
            "redis://default:s3cretpw@127.0.0.1:6399",
        )),
        fields: BTreeMap::from([("password".to_owned(), kinfra_core::Secret::new("s3cretpw"))]),
    };
    let db = ResourceSpec::new(Arc::new(
        ProcessResource::shell(
            "db",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            None,
        )
        .with_connection(conn),
    ));
    let api = sh(&format!(
        "echo ${{resources.db.url}} ${{resources.db.port}} > {}; sleep 30",
        out.display()
    ));
    // No depends_on: the URL resolves from the first spawn on anyway.
    let sup = Supervisor::start(
        &services(vec![("api", api)]),
        project.opts().with_resources(vec![("db".into(), db)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "api", ServiceState::Running, SECS(10)).await;
    assert!(
        wait_for(SECS(5), || std::fs::read_to_string(&out)
            .is_ok_and(|s| s.contains("6399")))
        .await
    );
    assert_eq!(
        std::fs::read_to_string(&out).expect("out").trim(),
        "redis://default:s3cretpw@127.0.0.1:6399 6399"
    );
    let shown = format!("{:?}", sup.status());
    assert!(
        !shown.contains("s3cretpw"),
        "a resource secret leaked: {shown}"
    );
    sup.shutdown(SECS(5)).await;
}

/// Output still in flight when a run exits (a flood the readers need a while for) reaches the
/// log in full: the run's output closes when its pipes are drained, not at a fixed cut-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_output_is_not_cut_off_at_its_exit() {
    let project = Project::new();
    let mut spec = ResourceSpec::new(Arc::new(ProcessResource::shell(
        "flood",
        "seq 1 100000; echo the-end",
        None,
    )));
    spec.restart = RestartPolicy::No;
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("flood".into(), spec)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "flood", ServiceState::Completed, SECS(20)).await;
    assert!(
        wait_for(SECS(20), || sup
            .logs(Some("flood"), 1000)
            .is_ok_and(|l| l.iter().any(|l| l.line.message == "the-end")))
        .await,
        "the last line never reached the log: {:?}",
        sup.logs(Some("flood"), 5)
    );
    sup.shutdown(SECS(5)).await;
}

/// A process resource that also reports sync facts, like a provider resource.
struct Synced {
    process: ProcessResource,
    facts: std::sync::Mutex<Option<SyncFacts>>,
}

impl Resource for Synced {
    fn kind(&self) -> &'static str {
        "synced"
    }
    fn name(&self) -> &str {
        self.process.name()
    }
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        self.process.start()
    }
    fn stop(&self, grace: std::time::Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.process.stop(grace)
    }
    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
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
    fn sync(&self) -> Option<SyncFacts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resources_sync_facts_appear_in_status_beside_its_state() {
    let project = Project::new();
    let adapter = Arc::new(Synced {
        process: ProcessResource::shell(
            "cloud",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            None,
        ),
        facts: std::sync::Mutex::new(None),
    });
    let mut spec = ResourceSpec::new(adapter.clone());
    fast(&mut spec);
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("cloud".into(), spec)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "cloud", ServiceState::Running, SECS(10)).await;
    let before = status_of(&sup, "cloud");
    assert_eq!((before.last_sync, before.provider_state), (None, None));
    let failed = LastSync {
        at: "2026-01-01T00:00:00Z".into(),
        ok: false,
        error: Some("status failed: HTTP 500".into()),
    };
    *adapter.facts.lock().expect("facts") = Some(SyncFacts {
        last_sync: Some(failed.clone()),
        provider_state: Some("ACTIVE".into()),
    });
    let after = status_of(&sup, "cloud");
    assert_eq!(
        after.state,
        ServiceState::Running,
        "a failed sync keeps the state"
    );
    assert_eq!(after.last_sync, Some(failed));
    assert_eq!(after.provider_state.as_deref(), Some("ACTIVE"));
    let json = serde_json::to_value(&after).expect("json");
    assert_eq!(json["last_sync"]["ok"], false);
    assert_eq!(json["provider_state"], "ACTIVE");
    sup.shutdown(SECS(5)).await;
}

/// A process resource whose "provider" reports states (like a cloud project) and counts how
/// it was ended: stopped or released.
struct Reporting {
    process: ProcessResource,
    reported: std::sync::Mutex<Option<kinfra_core::resource::ReportedState>>,
    stops: std::sync::atomic::AtomicU32,
    releases: std::sync::atomic::AtomicU32,
}

impl Reporting {
    fn new(name: &str) -> Self {
        Self {
            process: ProcessResource::shell(
                name,
                "trap 'exit 0' TERM; while :; do sleep 0.1; done",
                None,
            ),
            reported: std::sync::Mutex::new(None),
            stops: Default::default(),
            releases: Default::default(),
        }
    }

    fn report(&self, state: ServiceState, message: &str) {
        *self.reported.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(kinfra_core::resource::ReportedState {
                state,
                message: message.into(),
            });
    }
}

impl Resource for Reporting {
    fn kind(&self) -> &'static str {
        "reporting"
    }
    fn name(&self) -> &str {
        self.process.name()
    }
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        self.process.start()
    }
    fn stop(&self, grace: std::time::Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.stops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.process.stop(grace)
    }
    fn release(&self, grace: std::time::Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.releases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.process.stop(grace)
    }
    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
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
    fn reported_state(&self) -> Option<kinfra_core::resource::ReportedState> {
        self.reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn expect_message(sup: &Supervisor, name: &str, state: ServiceState, message: &str) {
    assert!(
        wait_for(SECS(10), || {
            let s = status_of(sup, name);
            s.state == state && s.status_message == message
        })
        .await,
        "{name} never showed {state} `{message}`: {:?}",
        status_of(sup, name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_reported_state_is_shown_and_a_reported_stop_is_final() {
    let project = Project::new();
    let adapter = Arc::new(Reporting::new("cloud"));
    let mut spec = ResourceSpec::new(adapter.clone());
    fast(&mut spec);
    spec.restart = RestartPolicy::Always;
    spec.on_down = kinfra_core::config::OnDown::Keep;
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("cloud".into(), spec)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "cloud", ServiceState::Running, SECS(10)).await;
    adapter.report(ServiceState::Starting, "RESTORING (restore sent 12s ago)");
    expect_message(
        &sup,
        "cloud",
        ServiceState::Starting,
        "RESTORING (restore sent 12s ago)",
    )
    .await;
    adapter.report(ServiceState::Running, "ACTIVE_HEALTHY");
    expect_message(&sup, "cloud", ServiceState::Running, "ACTIVE_HEALTHY").await;
    adapter.report(ServiceState::Maintenance, "UPGRADING");
    expect_message(&sup, "cloud", ServiceState::Maintenance, "UPGRADING").await;
    // Paused outside kinfra: the run ends and the provider says stopped. Not a restart.
    adapter.report(ServiceState::Stopped, "INACTIVE (paused outside kinfra)");
    adapter
        .process
        .stop(SECS(5))
        .await
        .expect("stop the process");
    expect_message(
        &sup,
        "cloud",
        ServiceState::Stopped,
        "INACTIVE (paused outside kinfra)",
    )
    .await;
    assert_eq!(status_of(&sup, "cloud").restarts, 0, "no restart policy");
    // Started again: runs; `on_down = "keep"` releases it at shutdown instead of stopping it.
    *adapter.reported.lock().expect("reported") = None;
    sup.act(kinfra_core::view::Action::Start, "cloud")
        .await
        .expect("start");
    expect_state(&sup, "cloud", ServiceState::Running, SECS(10)).await;
    let stops = adapter.stops.load(std::sync::atomic::Ordering::Relaxed);
    sup.shutdown(SECS(5)).await;
    assert_eq!(
        adapter.releases.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "keep releases"
    );
    assert_eq!(
        adapter.stops.load(std::sync::atomic::Ordering::Relaxed),
        stops,
        "keep never stops the thing"
    );
}

/// A resource whose start never ends (a cloud operation that takes minutes): counts the
/// starts given up (their future dropped) and the stops.
#[derive(Default)]
struct Hanging {
    abandoned: Arc<std::sync::atomic::AtomicU32>,
    stops: std::sync::atomic::AtomicU32,
}

/// Counts one when dropped.
struct CountOnDrop(Arc<std::sync::atomic::AtomicU32>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Resource for Hanging {
    fn kind(&self) -> &'static str {
        "hanging"
    }
    fn name(&self) -> &str {
        "slow"
    }
    fn start(&self) -> BoxFuture<'_, Result<Run, ResourceError>> {
        let guard = CountOnDrop(self.abandoned.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<Result<Run, ResourceError>>().await
        })
    }
    fn stop(&self, _grace: std::time::Duration) -> BoxFuture<'_, Result<(), ResourceError>> {
        self.stops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn status(&self) -> BoxFuture<'_, Result<Observed, ResourceError>> {
        Box::pin(async { Ok(Observed::Idle) })
    }
    fn health(&self) -> BoxFuture<'_, Result<kinfra_core::state::Health, ResourceError>> {
        Box::pin(async { Ok(kinfra_core::state::Health::Unknown) })
    }
    fn connection(&self) -> Connection {
        Connection::default()
    }
    fn logs(&self, _tail: usize) -> BoxFuture<'_, Result<Vec<OutputLine>, ResourceError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn remove(&self, _volumes: bool) -> BoxFuture<'_, Result<(), ResourceError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A stop, and the runtime's shutdown, never wait behind a start that takes minutes: they
/// interrupt it (the start is given up, then the resource is stopped), so `runtime stop` and
/// `runtime down` stay bounded whatever a provider's operation does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_or_shutdown_interrupts_a_start_that_takes_minutes() {
    use kinfra_core::view::Action;
    use std::sync::atomic::Ordering::SeqCst;
    let project = Project::new();
    let adapter = Arc::new(Hanging::default());
    let mut spec = ResourceSpec::new(adapter.clone());
    fast(&mut spec);
    let sup = Arc::new(
        Supervisor::start(
            &BTreeMap::new(),
            project.opts().with_resources(vec![("slow".into(), spec)]),
        )
        .await
        .expect("start"),
    );
    expect_state(&sup, "slow", ServiceState::Starting, SECS(10)).await;
    tokio::time::timeout(SECS(10), sup.act(Action::Stop, "slow"))
        .await
        .expect("the stop waited behind the start")
        .expect("stop");
    expect_state(&sup, "slow", ServiceState::Stopped, SECS(10)).await;
    assert_eq!(
        adapter.abandoned.load(SeqCst),
        1,
        "the start was not given up"
    );
    assert_eq!(
        adapter.stops.load(SeqCst),
        1,
        "the resource was not stopped"
    );

    // Started again by hand (its reply waits on the start), then the supervisor shuts down.
    let starter = {
        let sup = sup.clone();
        tokio::spawn(async move { sup.act(Action::Start, "slow").await })
    };
    expect_state(&sup, "slow", ServiceState::Starting, SECS(10)).await;
    tokio::time::timeout(SECS(20), sup.shutdown(SECS(2)))
        .await
        .expect("the shutdown waited behind the start");
    assert_eq!(adapter.abandoned.load(SeqCst), 2);
    assert_eq!(adapter.stops.load(SeqCst), 2);
    let _ = tokio::time::timeout(SECS(10), starter).await;
}

/// A provider resource gone to sleep outside kinfra (a Neon compute idle after its suspend
/// timeout) or paused there is observed at its interval, and taken up again when it runs
/// (woken by a connection, restored in a console): running again without a restart counted
/// and without anyone typing `runtime start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_asleep_outside_kinfra_is_taken_up_again_when_it_wakes() {
    let project = Project::new();
    let adapter = Arc::new(Reporting::new("db"));
    let mut spec = ResourceSpec::new(adapter.clone());
    fast(&mut spec);
    spec.observe_interval = Some(std::time::Duration::from_millis(100));
    let sup = Supervisor::start(
        &BTreeMap::new(),
        project.opts().with_resources(vec![("db".into(), spec)]),
    )
    .await
    .expect("start");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    adapter.report(ServiceState::Sleeping, "idle (wakes on connect)");
    adapter.process.stop(SECS(5)).await.expect("idle");
    expect_message(
        &sup,
        "db",
        ServiceState::Sleeping,
        "idle (wakes on connect)",
    )
    .await;

    // Woken outside kinfra: the observe sees it run, and the supervisor takes it up.
    *adapter.reported.lock().expect("reported") = None;
    let woken = adapter.process.start().await.expect("woken outside");
    expect_state(&sup, "db", ServiceState::Running, SECS(10)).await;
    assert_eq!(status_of(&sup, "db").restarts, 0, "a wake is no restart");
    assert!(
        sup.logs(Some("db"), 50)
            .is_ok_and(|l| l.iter().any(|l| l.line.message.contains("Running again"))),
        "the log says why it runs again"
    );
    drop(woken);
    sup.shutdown(SECS(5)).await;
}
