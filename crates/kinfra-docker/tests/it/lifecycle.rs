//! A container driven by the supervisor like a process: create, start, kinfra's health
//! probe, port on 127.0.0.1, logs in the pipeline, stop, and restart on exit by policy.

use crate::support::*;
use kinfra_core::config::{
    BackoffConfig, CommandSpec, Dur, PortSpec, ProbeConfig, ResourceConfig, RestartPolicy, Template,
};
use kinfra_core::state::{Health, ServiceState};
use kinfra_core::view::Action;
use kinfra_docker::DockerResource;
use kinfra_supervisor::ports::PortStore;
use kinfra_supervisor::{ResourceSpec, Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn state(sup: &Supervisor, name: &str) -> Option<ServiceState> {
    sup.status().get(name).map(|s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_publishes_on_loopback_logs_and_stops() {
    let project = Project::new("web").await;
    let mut cfg = ResourceConfig::new(Template::Docker);
    cfg.image = Some(BUSYBOX.into());
    cfg.command = Some(CommandSpec::Shell(
        "mkdir -p /www && echo ok > /www/index.html && echo serving && \
         exec httpd -f -v -p 8080 -h /www"
            .into(),
    ));
    cfg.container_port = Some(8080);
    cfg.port = Some(PortSpec::Auto);
    cfg.health = Some(ProbeConfig::http("/"));
    cfg.stop_grace = Dur(Duration::from_secs(1));
    let ports = PortStore::load(&project.state_dir().join("ports.json")).expect("ports");
    let engine = project.engine();
    let port = engine
        .host_port(&project.name, "web", cfg.port, ports.get("web"), |spec| {
            ports.resolve("web", spec).map(|(p, _)| p)
        })
        .await
        .expect("port")
        .expect("a port");
    let res = DockerResource::from_config(
        &project.name,
        "web",
        &cfg,
        Some(port),
        &project.secrets(),
        engine,
    )
    .expect("resource");
    let spec = ResourceSpec::from_config(Arc::new(res), &cfg);
    let opts = SupervisorOptions::new(project.name.clone(), project.state_dir());
    let sup = Supervisor::start(
        &BTreeMap::new(),
        opts.with_resources(vec![("web".into(), spec)]),
    )
    .await
    .expect("supervisor");
    assert!(
        wait_for(SECS(60), || state(&sup, "web")
            == Some(ServiceState::Running))
        .await,
        "web never ran: {:?}",
        sup.status().get("web")
    );
    let st = &sup.status()["web"];
    assert_eq!(st.kind, "docker");
    assert_eq!(st.health, Health::Healthy, "kinfra's http probe passed");
    assert_eq!(st.port, Some(port));
    // Published on 127.0.0.1 only, at the registry's port.
    let ids = project.containers("web");
    assert_eq!(ids.len(), 1);
    let published = host(&format!("docker port {} 8080/tcp", ids[0])).expect("docker port");
    assert_eq!(published.trim(), format!("127.0.0.1:{port}"));
    let body = host(&format!("busybox wget -qO- http://127.0.0.1:{port}/")).expect("GET");
    assert_eq!(body.trim(), "ok");
    // The container's output reaches the log pipeline.
    assert!(
        wait_for(SECS(10), || sup
            .logs(Some("web"), 100)
            .is_ok_and(|l| l.iter().any(|l| l.line.message == "serving")))
        .await,
        "no `serving` in {:?}",
        sup.logs(Some("web"), 100)
    );
    sup.act(Action::Stop, "web").await.expect("stop");
    assert_eq!(state(&sup, "web"), Some(ServiceState::Stopped));
    let running = host(&format!(
        "docker inspect -f '{{{{.State.Running}}}}' {}",
        ids[0]
    ))
    .expect("inspect");
    assert_eq!(running.trim(), "false");
    sup.act(Action::Start, "web").await.expect("start");
    assert!(
        wait_for(SECS(30), || state(&sup, "web")
            == Some(ServiceState::Running))
        .await
    );
    assert_eq!(
        project.containers("web"),
        ids,
        "the same container, started again"
    );
    sup.shutdown(SECS(10)).await;
    let running = host(&format!(
        "docker inspect -f '{{{{.State.Running}}}}' {}",
        ids[0]
    ))
    .expect("inspect");
    assert_eq!(running.trim(), "false", "shutdown stops the container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_feed_the_restart_policy() {
    let project = Project::new("crash").await;
    let mut cfg = ResourceConfig::new(Template::Docker);
    cfg.image = Some(BUSYBOX.into());
    cfg.command = Some(CommandSpec::Shell("echo run; exit 5".into()));
    cfg.restart = RestartPolicy::OnFailure;
    let res = DockerResource::from_config(
        &project.name,
        "crash",
        &cfg,
        None,
        &project.secrets(),
        project.engine(),
    )
    .expect("resource");
    let mut spec = ResourceSpec::from_config(Arc::new(res), &cfg);
    spec.backoff = BackoffConfig {
        initial: Dur(Duration::from_millis(100)),
        ..BackoffConfig::default()
    };
    let opts = SupervisorOptions::new(project.name.clone(), project.state_dir());
    let sup = Supervisor::start(
        &BTreeMap::new(),
        opts.with_resources(vec![("crash".into(), spec)]),
    )
    .await
    .expect("supervisor");
    assert!(
        wait_for(SECS(60), || sup
            .status()
            .get("crash")
            .is_some_and(|s| s.restarts >= 2))
        .await,
        "no restarts: {:?}",
        sup.status().get("crash")
    );
    let st = &sup.status()["crash"];
    assert_eq!(st.last_exit.and_then(|e| e.code), Some(5));
    assert_eq!(
        project.containers("crash").len(),
        1,
        "restarts reuse the container"
    );
    let has = |needle: &'static str| {
        sup.logs(Some("crash"), 200)
            .is_ok_and(|l| l.iter().any(|l| l.line.message.contains(needle)))
    };
    assert!(
        wait_for(SECS(10), || has("run") && has("exit code 5")).await,
        "{:?}",
        sup.logs(Some("crash"), 200)
    );
    sup.shutdown(SECS(10)).await;
}
