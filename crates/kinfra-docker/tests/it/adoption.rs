//! Adoption by label after a kinfra restart (no duplicate), recreation when the config hash
//! changed (volumes kept), and removal with and without volumes.

use crate::support::*;
use kinfra_core::config::{CommandSpec, ResourceConfig, Template};
use kinfra_core::resource::{Observed, Resource};
use kinfra_core::state::ServiceState;
use kinfra_docker::DockerResource;
use kinfra_supervisor::{ResourceSpec, Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

fn config() -> ResourceConfig {
    let mut cfg = ResourceConfig::new(Template::Docker);
    cfg.image = Some(BUSYBOX.into());
    cfg.command = Some(CommandSpec::Shell(
        "echo boot >> /data/boots; echo up; trap 'exit 0' TERM; while :; do sleep 0.1; done".into(),
    ));
    cfg.volumes.insert("data".into(), "/data".into());
    cfg
}

fn resource(project: &Project, cfg: &ResourceConfig) -> DockerResource {
    DockerResource::from_config(
        &project.name,
        "box",
        cfg,
        None,
        &project.secrets(),
        project.engine(),
    )
    .expect("resource")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_after_restart_recreates_on_change_and_keeps_volumes() {
    let project = Project::new("adopt").await;
    let first = resource(&project, &config());
    let run = first.start().await.expect("start");
    assert!(!run.adopted);
    let id = run.id.clone();
    drop(run);
    drop(first);

    // A new kinfra (a new adapter, nothing in memory) adopts the running container.
    let second = resource(&project, &config());
    let run = second.start().await.expect("adopt");
    assert!(run.adopted, "the running container is adopted");
    assert_eq!(run.id, id);
    assert_eq!(project.containers("box"), vec![id.clone()], "no duplicate");
    drop(run);

    // Through the supervisor too: running at once, still one container.
    let opts = SupervisorOptions::new(project.name.clone(), project.state_dir());
    let spec = ResourceSpec::from_config(Arc::new(resource(&project, &config())), &config());
    let sup = Supervisor::start(
        &BTreeMap::new(),
        opts.with_resources(vec![("box".into(), spec)]),
    )
    .await
    .expect("supervisor");
    assert!(
        wait_for(SECS(30), || sup
            .status()
            .get("box")
            .is_some_and(|s| s.state == ServiceState::Running))
        .await
    );
    assert!(
        wait_for(SECS(10), || sup.logs(Some("box"), 50).is_ok_and(|l| l
            .iter()
            .any(|l| l
                .line
                .message
                .starts_with("Adopted running container"))))
        .await,
        "{:?}",
        sup.logs(Some("box"), 50)
    );
    assert_eq!(project.containers("box"), vec![id.clone()]);
    drop(sup);

    // A changed config means a new container; the named volume and its data stay.
    let mut changed = config();
    changed.env.insert("MODE".into(), "2".into());
    let third = resource(&project, &changed);
    let run = third.start().await.expect("recreate");
    assert!(!run.adopted);
    assert_ne!(run.id, id, "recreated");
    assert_eq!(project.containers("box"), vec![run.id.clone()]);
    let boots = host(&format!("docker exec {} cat /data/boots", run.id)).expect("exec");
    assert_eq!(
        boots.lines().count(),
        2,
        "the volume kept the first boot: {boots}"
    );
    let env = host(&format!(
        "docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' {}",
        run.id
    ))
    .expect("inspect");
    assert!(env.lines().any(|l| l == "MODE=2"), "{env}");

    // Removal: containers go, volumes stay unless asked.
    third.remove(false).await.expect("remove");
    assert!(project.containers("box").is_empty());
    assert_eq!(third.status().await.expect("status"), Observed::Absent);
    let vol = format!("kinfra-{}-box-data", project.name);
    assert_eq!(project.volumes(), vec![vol]);
    third.remove(true).await.expect("remove volumes");
    assert!(project.volumes().is_empty());
}
