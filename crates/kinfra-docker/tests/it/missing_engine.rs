//! Without a reachable engine, the resources that need it fail with a clear message and
//! everything else runs.

use crate::support::*;
use kinfra_core::config::{CommandSpec, ServiceConfig};
use kinfra_core::config::{ResourceConfig, Template};
use kinfra_core::resource::{Resource, ResourceError};
use kinfra_core::state::ServiceState;
use kinfra_docker::{DockerResource, EngineHandle, Secrets};
use kinfra_supervisor::{ResourceSpec, Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_engine_fails_only_the_resource() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = Secrets::in_state_dir(dir.path());
    let nowhere = EngineHandle::at(format!("unix://{}/docker.sock", dir.path().display()));
    let cfg = ResourceConfig::new(Template::Redis);
    let res = DockerResource::from_config("p", "cache", &cfg, Some(1), &secrets, nowhere)
        .expect("resource");
    match res.start().await {
        Err(e @ ResourceError::EngineUnavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("Docker engine is not reachable"), "{msg}");
            assert!(msg.contains("docker.sock"), "{msg}");
        }
        other => panic!("expected EngineUnavailable, got {other:?}"),
    }
    let mut api = ServiceConfig::new(CommandSpec::Shell("sleep 30".into()));
    api.port = None;
    let services = BTreeMap::from([("api".to_owned(), api)]);
    let opts = SupervisorOptions::new("p", dir.path().join(".kinfra"));
    let spec = ResourceSpec::from_config(Arc::new(res), &cfg);
    let sup = Supervisor::start_with_resources(&services, opts, vec![("cache".into(), spec)])
        .await
        .expect("supervisor");
    assert!(
        wait_for(SECS(10), || {
            let st = sup.status();
            st.get("cache")
                .is_some_and(|s| s.state == ServiceState::Failed)
                && st
                    .get("api")
                    .is_some_and(|s| s.state == ServiceState::Running)
        })
        .await,
        "{:?}",
        sup.status()
    );
    let cache = &sup.status()["cache"];
    assert_eq!(cache.kind, "docker");
    assert!(
        cache
            .status_message
            .contains("Docker engine is not reachable"),
        "{}",
        cache.status_message
    );
    assert_eq!(cache.restarts, 0, "no restart loop on a missing engine");
    sup.shutdown(SECS(5)).await;
}
