//! The supervisor with its state in the store: ports, restart counts, last exits and user
//! stops survive a restart of kinfra; no state-dir files are used for them.

use crate::support::*;
use kinfra_core::config::{Dur, PortSpec, RestartPolicy, ServiceConfig};
use kinfra_core::event::EventSender;
use kinfra_core::state::ServiceState;
use kinfra_core::view::Action;
use kinfra_supervisor::{Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn services() -> BTreeMap<String, ServiceConfig> {
    let mut api = ServiceConfig::new("sleep 30");
    api.port = Some(PortSpec::Auto);
    api.restart = RestartPolicy::Always;
    api.stop_grace = Dur::from_millis(2000);
    let mut keep = ServiceConfig::new("sleep 30");
    keep.restart = RestartPolicy::UnlessStopped;
    keep.stop_grace = Dur::from_millis(2000);
    BTreeMap::from([("api".to_string(), api), ("keep".to_string(), keep)])
}

async fn start(state_dir: &Path, base: &Path) -> (kinfra_store::Store, Supervisor, EventSender) {
    let store = open(&disk_config(), state_dir).await;
    let events = EventSender::new(4096);
    store.record_events(events.subscribe());
    let boot = store
        .boot(state_dir)
        .await
        .unwrap_or_else(|e| panic!("boot: {e}"));
    let mut opts = SupervisorOptions::new("it", state_dir);
    opts.base_dir = base.to_path_buf();
    opts.events = events.clone();
    let sup = Supervisor::start(&services(), opts.with_persistence(boot.persistence))
        .await
        .unwrap_or_else(|e| panic!("supervisor: {e}"));
    (store, sup, events)
}

fn state_of(sup: &Supervisor, name: &str) -> Option<ServiceState> {
    sup.status().get(name).map(|s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_state_survives_a_restart_of_kinfra() {
    let dir = tempdir();
    let state_dir = dir.path().join(".kinfra");
    std::fs::create_dir_all(&state_dir).unwrap_or_else(|e| panic!("{e}"));

    let (store, sup, events) = start(&state_dir, dir.path()).await;
    assert!(
        wait_for(WAIT, || state_of(&sup, "api")
            == Some(ServiceState::Running)
            && state_of(&sup, "keep") == Some(ServiceState::Running))
        .await
    );
    let port = sup.port_of("api").unwrap_or_else(|| panic!("no auto port"));
    sup.act(Action::Restart, "api")
        .await
        .unwrap_or_else(|e| panic!("restart: {e}"));
    sup.act(Action::Stop, "keep")
        .await
        .unwrap_or_else(|e| panic!("stop: {e}"));
    assert_eq!(sup.status().get("api").map(|s| s.restarts), Some(1));
    // As the runtime does it.
    events.emit(kinfra_core::EventKind::RuntimeStopping {
        reason: "test".into(),
    });
    sup.shutdown(Duration::from_secs(10)).await;
    drop(sup);
    store.shutdown(WAIT).await;
    for f in ["ports.json", "stopped.json"] {
        assert!(!state_dir.join(f).exists(), "{f} written with a store");
    }

    let (store, sup, events) = start(&state_dir, dir.path()).await;
    let status = sup.status();
    let api = status.get("api").unwrap_or_else(|| panic!("no api"));
    assert_eq!(api.restarts, 1, "restart count from the store");
    assert!(api.last_exit.is_some(), "last exit from the store");
    assert_eq!(sup.port_of("api"), Some(port), "auto port from the store");
    assert!(
        wait_for(WAIT, || state_of(&sup, "keep")
            == Some(ServiceState::Stopped))
        .await,
        "unless-stopped service a user stopped must stay stopped"
    );
    let runs = store
        .history(Some("api"), 10)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reasons: Vec<&str> = runs.iter().filter_map(|r| r.reason.as_deref()).collect();
    assert!(
        reasons.contains(&"stopped") && reasons.contains(&"shutdown"),
        "{runs:?}"
    );
    drop(events);
    sup.shutdown(Duration::from_secs(10)).await;
    drop(sup);
    store.shutdown(WAIT).await;
}
