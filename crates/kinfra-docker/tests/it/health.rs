//! Health from the container's own Docker healthcheck: the resource is `starting` until the
//! check passes, `running`/healthy then, unhealthy when it fails; and `on_down` removal at
//! shutdown.

use crate::support::*;
use kinfra_core::config::{CommandSpec, OnDown, ResourceConfig, Template};
use kinfra_core::state::{Health, ServiceState};
use kinfra_docker::template::{self, Resolved};
use kinfra_docker::{DockerResource, HealthCheck};
use kinfra_supervisor::{ResourceSpec, Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_healthcheck_gates_running_and_reports_unhealthy() {
    let project = Project::new("health").await;
    let mut cfg = ResourceConfig::new(Template::Docker);
    cfg.image = Some(BUSYBOX.into());
    cfg.command = Some(CommandSpec::Shell(
        "trap 'exit 0' TERM; sleep 1; touch /tmp/ok; while :; do sleep 0.1; done".into(),
    ));
    cfg.volumes.insert("data".into(), "/data".into());
    cfg.on_down = OnDown::RemoveVolumes;
    let Resolved {
        mut spec,
        connection,
        ..
    } = template::resolve(&project.name, "hc", &cfg, None, &project.secrets()).expect("resolve");
    let mut check = HealthCheck::new(vec!["CMD-SHELL".into(), "test -f /tmp/ok".into()]);
    check.retries = 2;
    spec.health = Some(check);
    let res = DockerResource::new(
        "hc",
        Resolved {
            spec,
            connection,
            host_check: None,
        },
        project.engine(),
    );
    let opts = SupervisorOptions::new(project.name.clone(), project.state_dir());
    let mut events = opts.events.subscribe();
    let sup = Supervisor::start(
        &BTreeMap::new(),
        opts.with_resources(vec![(
            "hc".into(),
            ResourceSpec::from_config(Arc::new(res), &cfg),
        )]),
    )
    .await
    .expect("supervisor");
    assert!(
        wait_for(SECS(30), || sup.status().get("hc").is_some_and(|s| s.state
            == ServiceState::Running
            && s.health == Health::Healthy))
        .await,
        "{:?}",
        sup.status().get("hc")
    );
    // It was `starting` until the check passed (it needs /tmp/ok, made after a second).
    let mut states = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let kinfra_core::EventKind::StateChanged { service, to, .. } = &ev.kind
            && service == "hc"
        {
            states.push(*to);
        }
    }
    assert_eq!(
        states,
        vec![ServiceState::Starting, ServiceState::Running],
        "starting, then running once healthy"
    );
    let ids = project.containers("hc");
    assert_eq!(ids.len(), 1);
    host(&format!("docker exec {} rm /tmp/ok", ids[0])).expect("exec");
    assert!(
        wait_for(SECS(30), || sup
            .status()
            .get("hc")
            .is_some_and(|s| s.health == Health::Unhealthy))
        .await,
        "{:?}",
        sup.status().get("hc")
    );
    assert_eq!(project.volumes().len(), 1);
    sup.shutdown(SECS(10)).await;
    assert!(
        project.containers("hc").is_empty(),
        "on_down removes the container"
    );
    assert!(project.volumes().is_empty(), "and, when asked, its volumes");
}
