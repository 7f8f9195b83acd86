//! Dependency conditions, start order, parallel starts and reverse stop order.

use crate::support::*;
use kinfra_core::EventKind;
use kinfra_core::config::{DependCondition, Dur, ProbeConfig, RestartPolicy};
use kinfra_core::state::ServiceState;
use std::time::Duration;

fn dep(
    mut c: kinfra_core::config::ServiceConfig,
    on: &str,
    cond: DependCondition,
) -> kinfra_core::config::ServiceConfig {
    c.depends_on.0.insert(on.to_string(), cond);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_dependency_gates_the_dependent() {
    let p = Project::new();
    let mut db = sh("sleep 0.4; touch db-ready; exec sleep 30");
    db.health = Some(ProbeConfig {
        exec: Some("test -f db-ready".into()),
        interval: Dur::from_millis(50),
        ..ProbeConfig::default()
    });
    let api = dep(
        sh("test -f db-ready && echo db was ready; exec sleep 30"),
        "db",
        DependCondition::Healthy,
    );
    let s = p.start(&services(vec![])).await;
    let mut rx = s.events().subscribe();
    s.apply(&services(vec![("db", db), ("api", api)]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // While db starts, api waits and says why.
    assert!(
        wait_for(SECS(5), || status_of(&s, "api").status_message
            == "Waiting for db to be healthy")
        .await,
        "{:#?}",
        status_of(&s, "api")
    );
    assert_eq!(state_of(&s, "api"), ServiceState::Pending);
    expect_state(&s, "api", ServiceState::Running, SECS(10)).await;
    assert!(
        wait_for(SECS(5), || messages(&s, "api")
            .contains(&"db was ready".to_string()))
        .await
    );
    // Order of events: db running, then api spawned.
    let mut order = Vec::new();
    while let Ok(e) = rx.try_recv() {
        match e.kind {
            EventKind::StateChanged {
                service,
                to: ServiceState::Running,
                ..
            } => order.push(format!("{service} running")),
            EventKind::ProcessStarted { service, .. } => order.push(format!("{service} started")),
            _ => {}
        }
    }
    let pos = |x: &str| order.iter().position(|o| o == x).unwrap_or(usize::MAX);
    assert!(
        pos("db started") < pos("db running") && pos("db running") < pos("api started"),
        "{order:?}"
    );
    assert_eq!(
        status_of(&s, "db").health,
        kinfra_core::state::Health::Healthy
    );
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_successfully_waits_for_a_one_shot_task() {
    let p = Project::new();
    let mut migrate = sh("sleep 0.2; echo migrated > marker; exit 0");
    migrate.restart = RestartPolicy::No;
    let app = dep(
        sh("cat marker; exec sleep 30"),
        "migrate",
        DependCondition::CompletedSuccessfully,
    );
    let mut broken = sh("exit 4");
    broken.restart = RestartPolicy::No;
    let app2 = dep(
        sh("exec sleep 30"),
        "broken",
        DependCondition::CompletedSuccessfully,
    );
    let s = p
        .start(&services(vec![
            ("migrate", migrate),
            ("app", app),
            ("broken", broken),
            ("app2", app2),
        ]))
        .await;
    expect_state(&s, "migrate", ServiceState::Completed, SECS(5)).await;
    expect_state(&s, "app", ServiceState::Running, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || messages(&s, "app")
            .contains(&"migrated".to_string()))
        .await
    );
    expect_state(&s, "broken", ServiceState::Failed, SECS(5)).await;
    assert!(
        wait_for(SECS(5), || status_of(&s, "app2").status_message
            == "Waiting for broken to complete successfully (broken is failed)")
        .await,
        "{:#?}",
        status_of(&s, "app2")
    );
    assert_eq!(state_of(&s, "app2"), ServiceState::Pending);
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_condition_and_parallel_independent_starts() {
    let p = Project::new();
    let s = p.start(&services(vec![])).await;
    let mut rx = s.events().subscribe();
    let a = sh("exec sleep 30");
    let b = sh("exec sleep 30");
    let c = sh("exec sleep 30");
    let d = dep(sh("exec sleep 30"), "a", DependCondition::Started);
    s.apply(&services(vec![("a", a), ("b", b), ("c", c), ("d", d)]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for n in ["a", "b", "c", "d"] {
        expect_state(&s, n, ServiceState::Running, SECS(5)).await;
    }
    let mut started = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let EventKind::ProcessStarted { service, .. } = e.kind {
            started.push(service);
        }
    }
    let pos = |x: &str| started.iter().position(|o| o == x).unwrap_or(usize::MAX);
    assert!(pos("a") < pos("d"), "{started:?}");
    assert_eq!(started.len(), 4);
    s.shutdown(SECS(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_in_reverse_dependency_order() {
    let p = Project::new();
    let script = |name: &str| {
        sh(&format!(
            "trap 'echo {name} >> order; exit 0' TERM; echo up; while true; do sleep 0.05; done"
        ))
    };
    let db = script("db");
    let api = dep(script("api"), "db", DependCondition::Started);
    let web = dep(script("web"), "api", DependCondition::Started);
    let s = p
        .start(&services(vec![("db", db), ("api", api), ("web", web)]))
        .await;
    for n in ["db", "api", "web"] {
        expect_state(&s, n, ServiceState::Running, SECS(5)).await;
        assert!(wait_for(SECS(5), || messages(&s, n).contains(&"up".to_string())).await);
    }
    let pids: Vec<i32> = ["db", "api", "web"]
        .iter()
        .map(|n| status_of(&s, n).pid.unwrap_or(0) as i32)
        .collect();
    s.shutdown(SECS(10)).await;
    let order = std::fs::read_to_string(p.path().join("order")).unwrap_or_default();
    assert_eq!(order.lines().collect::<Vec<_>>(), vec!["web", "api", "db"]);
    assert!(pids.iter().all(|p| !alive(*p)));
    assert!(s.status().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_cycle_is_rejected() {
    let p = Project::new();
    let a = dep(sh("exec sleep 30"), "b", DependCondition::Started);
    let b = dep(sh("exec sleep 30"), "a", DependCondition::Started);
    let err = kinfra_supervisor::Supervisor::start(&services(vec![("a", a), ("b", b)]), p.opts())
        .await
        .err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.starts_with("dependency cycle: "), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_dependencies_gate_until_reported() {
    let p = Project::new();
    let api = dep(sh("exec sleep 30"), "pg", DependCondition::Healthy);
    let free = dep(sh("exec sleep 30"), "unlisted", DependCondition::Healthy);
    let s = kinfra_supervisor::Supervisor::start(
        &services(vec![("api", api), ("free", free)]),
        p.opts().with_external(["pg".to_string()]),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    expect_state(&s, "free", ServiceState::Running, SECS(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state_of(&s, "api"), ServiceState::Pending);
    assert_eq!(
        status_of(&s, "api").status_message,
        "Waiting for pg to be healthy"
    );
    s.set_external(
        "pg",
        ServiceState::Starting,
        kinfra_core::state::Health::Unknown,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state_of(&s, "api"), ServiceState::Pending);
    s.set_external(
        "pg",
        ServiceState::Running,
        kinfra_core::state::Health::Healthy,
    );
    expect_state(&s, "api", ServiceState::Running, SECS(5)).await;
    assert!(!s.status().contains_key("pg"));
    s.shutdown(SECS(5)).await;
}
