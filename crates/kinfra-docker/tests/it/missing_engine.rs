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
    let sup = Supervisor::start(&services, opts.with_resources(vec![("cache".into(), spec)]))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_pulled_and_a_failed_pull_is_clear() {
    let project = Project::new("pull").await;
    let mut cfg = ResourceConfig::new(Template::Docker);
    cfg.image = Some("kinfra-test/not-here:1".into());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let progress = seen.clone();
    let res = DockerResource::from_config(
        &project.name,
        "ghost",
        &cfg,
        None,
        &project.secrets(),
        project.engine(),
    )
    .expect("resource")
    .with_progress(move |line| {
        if let Ok(mut v) = progress.lock() {
            v.push(line);
        }
    });
    let err = tokio::time::timeout(SECS(60), res.start())
        .await
        .expect("the pull ends")
        .expect_err("no registry here");
    assert!(
        !matches!(err, ResourceError::EngineUnavailable { .. }),
        "{err}"
    );
    assert!(err.is_permanent(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("image `kinfra-test/not-here:1` is not present and pulling it failed"),
        "{msg}"
    );
    let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("Pulling kinfra-test/not-here:1")
    );
    assert!(project.containers("ghost").is_empty(), "nothing created");
}
