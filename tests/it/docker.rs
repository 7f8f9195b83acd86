//! Container resources through `kinfra runtime up` against a real Docker engine: a Redis
//! resource from the template and a service that waits for it to be healthy, in
//! `/__status__`, adopted (not duplicated) by the next start, stopped by a clean shutdown.

use crate::support::{Project, stdout, unique_tag, wait_for};
use std::process::Command;
use std::time::Duration;

// The engine and test images are the ones kinfra-docker's own tests use (dockerd started
// when it is not running; images made with `docker import`, since nothing can be pulled).
#[allow(dead_code)]
#[path = "../../crates/kinfra-docker/tests/it/support.rs"]
mod docker_support;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the project's containers and volumes, whatever the test did.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.kinfra.project={}", self.0);
        for id in docker(&["ps", "-aq", "--filter", &label]).lines() {
            docker(&["rm", "-f", id]);
        }
        for v in docker(&["volume", "ls", "-q", "--filter", &label]).lines() {
            docker(&["volume", "rm", v]);
        }
    }
}

/// `GET key` from the published Redis port, with the generated password.
fn redis_get(port: u64, password: &str, key: &str) -> String {
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "-a",
            password,
            "--no-auth-warning",
            "get",
            key,
        ])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn status(p: &Project) -> Option<serde_json::Value> {
    let out = p.run(&["runtime", "status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_str(&stdout(&out)).ok())
        .flatten()
}

#[test]
fn redis_resource_with_a_dependent_service_survives_a_restart_without_a_duplicate() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(docker_support::docker());
    let name = unique_tag("dock").replace('_', "-");
    let _cleanup = Cleanup(name.clone());
    let p = Project::with_config(&format!(
        r#"
[project]
name = "{name}"

[dashboard]
enabled = false

[resources.cache]
template = "redis"
image = "{image}"
port = "auto"

[services.app]
command = "redis-cli -u \"$REDIS_URL\" --no-auth-warning set greeting hello && exec sleep 1000"
env = {{ REDIS_URL = "${{resources.cache.url}}" }}
depends_on = {{ cache = "healthy" }}
"#,
        image = docker_support::REDIS
    ));
    let label = format!("label=dev.kinfra.project={name}");

    let mut up = p.up(&[], &[]);
    let report = wait_for(
        Duration::from_secs(90),
        "cache healthy and app running",
        || {
            let s = status(&p)?;
            let cache = &s["services"]["cache"];
            (cache["kind"] == "docker"
                && cache["state"] == "running"
                && cache["health"] == "healthy"
                && s["services"]["app"]["state"] == "running")
                .then_some(s)
        },
    );
    let port = report["services"]["cache"]["port"]
        .as_u64()
        .expect("cache port");
    // The app reached Redis through the connection string; the password never shows.
    let secrets = std::fs::read_to_string(p.path().join(".kinfra/resources/secrets.json"))
        .expect("generated secrets");
    let secrets: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&secrets).expect("secrets json");
    let password = secrets
        .values()
        .next()
        .expect("a generated password")
        .clone();
    assert!(
        !report.to_string().contains(&password),
        "password in /__status__"
    );
    assert_eq!(redis_get(port, &password, "greeting"), "hello");
    let first = docker(&["ps", "-q", "--no-trunc", "--filter", &label]);
    assert_eq!(first.lines().count(), 1, "one container: {first}");

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    assert!(
        docker(&["ps", "-q", "--filter", &label]).is_empty(),
        "the container still runs after shutdown"
    );

    // The generated password is kept in the store: the state dir's working copy can go.
    std::fs::remove_file(p.path().join(".kinfra/resources/secrets.json")).expect("remove");

    // The next start adopts the same container instead of creating another.
    let mut up = p.up(&[], &[]);
    wait_for(Duration::from_secs(90), "cache healthy again", || {
        let s = status(&p)?;
        (s["services"]["cache"]["health"] == "healthy"
            && s["services"]["app"]["state"] == "running")
            .then_some(())
    });
    let all = docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
    assert_eq!(all, first, "a duplicate container was created");
    let restored = std::fs::read_to_string(p.path().join(".kinfra/resources/secrets.json"))
        .expect("secrets restored from the store");
    assert!(
        restored.contains(&password),
        "a different password after the restart"
    );
    assert_eq!(redis_get(port, &password, "greeting"), "hello");

    // A reload that changes the resource recreates its container (one, with a new id), and
    // the dependent service follows.
    let toml = std::fs::read_to_string(p.path().join("kinfra.toml")).expect("config");
    p.write(
        "kinfra.toml",
        &toml.replace(
            "port = \"auto\"\n",
            "port = \"auto\"\nenv = { KINFRA_TEST = \"changed\" }\n",
        ),
    );
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", crate::support::stderr(&out));
    assert!(stdout(&out).contains("cache"), "{}", stdout(&out));
    let recreated = wait_for(
        Duration::from_secs(90),
        "cache recreated and healthy",
        || {
            let s = status(&p)?;
            let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
            (s["services"]["cache"]["health"] == "healthy"
                && s["services"]["app"]["state"] == "running"
                && ids.lines().count() == 1
                && ids != first)
                .then_some(ids)
        },
    );
    assert_ne!(recreated, first);
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
}
