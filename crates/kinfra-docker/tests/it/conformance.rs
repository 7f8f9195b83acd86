//! The driver conformance suite, run against both adapters: a container and a process.

use crate::support::*;
use kinfra_core::config::{CommandSpec, ResourceConfig, Template};
use kinfra_docker::DockerResource;
use kinfra_supervisor::ProcessResource;
use kinfra_supervisor::conformance::{self, Fixtures, HELLO};
use std::sync::Arc;

fn busybox(project: &Project, name: &str, script: &str) -> DockerResource {
    let mut cfg = ResourceConfig::new(Template::Docker);
    cfg.image = Some(BUSYBOX.into());
    cfg.command = Some(CommandSpec::Argv(vec![
        "sh".into(),
        "-c".into(),
        script.into(),
    ]));
    DockerResource::from_config(
        &project.name,
        name,
        &cfg,
        None,
        &project.secrets(),
        project.engine(),
    )
    .expect("resource")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_adapter_passes_the_conformance_suite() {
    let project = Project::new("conf").await;
    let fixtures = Fixtures {
        long_running: Arc::new(busybox(
            &project,
            "long",
            &format!("trap 'exit 0' TERM; echo {HELLO}; while :; do sleep 0.1; done"),
        )),
        exits_3: Arc::new(busybox(&project, "three", "echo bye; exit 3")),
        start_timeout: SECS(60),
    };
    conformance::run_all(&fixtures)
        .await
        .unwrap_or_else(|e| panic!("docker adapter: {e}"));
    assert!(project.containers("long").is_empty(), "remove removes");
}

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
