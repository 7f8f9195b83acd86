//! The done-when scenario: a Redis resource from the template (image built from Debian's
//! redis-server), a service depending on it being healthy and reaching it through
//! `${resources.cache.url}`, a kinfra restart without a duplicate container, data kept.

use crate::support::*;
use kinfra_core::config::{Config, Format, PortSpec};
use kinfra_core::resource::Resource;
use kinfra_core::state::{Health, ServiceState};
use kinfra_docker::PortSource;
use kinfra_supervisor::ports::PortStore;
use kinfra_supervisor::{ResourceSpec, Supervisor, SupervisorOptions};

struct Ports(PortStore);

impl PortSource for Ports {
    fn saved(&self, name: &str) -> Option<u16> {
        self.0.get(name)
    }
    fn resolve(&mut self, name: &str, spec: PortSpec) -> Result<u16, String> {
        self.0
            .resolve(name, spec)
            .map(|(p, _)| p)
            .map_err(|e| e.to_string())
    }
}

/// Boots what `kinfra runtime up` would for this kinfra.toml: resources from the config,
/// services depending on them.
async fn boot(project: &Project, out: &std::path::Path, script: &str) -> (Supervisor, u16) {
    let toml = format!(
        r#"
[project]
name = "{name}"

[resources.cache]
template = "redis"
image = "{REDIS}"
port = "auto"

[services.app]
command = "{script} > {out} 2>&1; sleep 60"
env = {{ REDIS_URL = "${{resources.cache.url}}" }}
depends_on = {{ cache = "healthy" }}
"#,
        name = project.name,
        script = script.replace('"', "\\\""),
        out = out.display()
    );
    let config = Config::parse(&toml, Format::Toml, "kinfra.toml", project.dir.path(), &[])
        .unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    let mut ports = Ports(PortStore::load(&project.state_dir().join("ports.json")).expect("ports"));
    let built =
        kinfra_docker::from_config(&config, &project.engine(), &project.secrets(), &mut ports)
            .await
            .expect("resources");
    drop(ports);
    let port = built[0].resource.connection().port.expect("a port");
    let specs = built
        .into_iter()
        .map(|b| (b.name, ResourceSpec::from_config(b.resource, &b.config)))
        .collect();
    let opts = SupervisorOptions::new(project.name.clone(), project.state_dir());
    let sup = Supervisor::start(&config.services, opts.with_resources(specs))
        .await
        .expect("supervisor");
    (sup, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_template_serves_a_dependent_and_survives_a_restart() {
    let project = Project::new("redis").await;
    let out = project.dir.path().join("app.out");
    let (sup, port) = boot(
        &project,
        &out,
        "redis-cli -u \"$REDIS_URL\" --no-auth-warning set greeting hello && \
         redis-cli -u \"$REDIS_URL\" --no-auth-warning get greeting",
    )
    .await;
    assert!(
        wait_for(SECS(60), || std::fs::read_to_string(&out)
            .is_ok_and(|s| s.contains("hello")))
        .await,
        "the app never reached redis: {:?} / {:?}",
        std::fs::read_to_string(&out),
        sup.status()
    );
    let status = sup.status();
    let cache = &status["cache"];
    assert_eq!(cache.kind, "docker");
    assert_eq!(cache.state, ServiceState::Running);
    assert_eq!(cache.health, Health::Healthy, "Docker's healthcheck passed");
    assert_eq!(cache.port, Some(port));
    assert_eq!(status["app"].state, ServiceState::Running);
    // Without the password, redis refuses; the password is never shown.
    let anon = host(&format!("redis-cli -p {port} get greeting")).unwrap_or_default();
    assert!(anon.contains("NOAUTH"), "{anon}");
    let password = project
        .secrets()
        .get_or_create("cache.password")
        .expect("password");
    let shown = serde_json::to_string(&status).expect("json");
    assert!(
        !shown.contains(&password),
        "the password leaked into status"
    );
    let ids = project.containers("cache");
    assert_eq!(ids.len(), 1);
    sup.shutdown(SECS(15)).await;
    drop(sup);

    // A kinfra restart: the same container, started again; the data is still there.
    let out2 = project.dir.path().join("app2.out");
    let (sup, port2) = boot(
        &project,
        &out2,
        "redis-cli -u \"$REDIS_URL\" --no-auth-warning get greeting",
    )
    .await;
    assert_eq!(port2, port, "the auto port is kept");
    assert!(
        wait_for(SECS(60), || std::fs::read_to_string(&out2)
            .is_ok_and(|s| s.contains("hello")))
        .await,
        "data lost or app not started: {:?} / {:?}",
        std::fs::read_to_string(&out2),
        sup.status()
    );
    assert_eq!(project.containers("cache"), ids, "no duplicate container");
    sup.shutdown(SECS(15)).await;
}
