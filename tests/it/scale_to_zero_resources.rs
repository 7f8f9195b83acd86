//! Scale to zero for resources through `kinfra runtime up` (issue 21): a container resource
//! behind a route is stopped (kept, not removed) after `idle_after` and shown `sleeping`; a
//! JSON GET through the proxy is held and answered by the same container, started again; a
//! Neon endpoint (the spec-checked fake behind Prism) with `wake = "manual"` is suspended
//! after `idle_after`, shown `sleeping`, and resumed by `kinfra runtime wake`, every exchange
//! valid against Neon's spec.

// The Neon fake behind Prism (neon.rs's) and the engine and test images of kinfra-docker's own
// tests (docker.rs's: dockerd started when no engine answers; images made with `docker
// import`, since nothing can be pulled).
use crate::docker::docker_support;
use crate::neon::neon_fake;

use crate::support::{Project, Up, stderr, stdout, unique_tag};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// What the container's web server serves (busybox httpd, a static file).
const BODY: &str = r#"{"hello":"from the container"}"#;

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the project's containers, whatever the test did.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.kinfra.project={}", self.0);
        for id in docker(&["ps", "-aq", "--filter", &label]).lines() {
            docker(&["rm", "-f", id]);
        }
    }
}

/// Waits (bounded) until `name`'s status entry satisfies `cond`; the failure shows the status
/// and the runtime's output.
fn wait_service(
    p: &Project,
    up: &Up,
    name: &str,
    limit: Duration,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = crate::cli::status_json(p);
        let entry = status["services"][name].clone();
        if cond(&entry) {
            return entry;
        }
        if Instant::now() > deadline {
            panic!(
                "{name} never {what} within {limit:?}: {status:#}\n{}",
                up.lines().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The proxy's address from the banner.
fn proxy_addr(up: &Up) -> String {
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("proxy address")
        .to_owned()
}

/// A GET as an API client (`Accept: application/json`, `Connection: close`), allowed to be
/// held for up to `limit`: status code, lower-cased head, body.
fn get_json(addr: &str, path: &str, limit: Duration) -> (u16, String, String) {
    crate::support::raw_exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        ),
        limit,
    )
}

/// `docker inspect` of one container: (running, started at).
fn container_state(id: &str) -> (bool, String) {
    let out = docker(&[
        "inspect",
        "-f",
        "{{.State.Running}} {{.State.StartedAt}}",
        id,
    ]);
    let (running, started) = out.split_once(' ').unwrap_or((out.as_str(), ""));
    (running == "true", started.to_owned())
}

#[test]
fn a_container_resource_sleeps_when_idle_and_a_held_json_request_wakes_the_same_container() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(docker_support::docker());
    let name = unique_tag("stz").replace('_', "-");
    let _cleanup = Cleanup(name.clone());
    let p = Project::with_config(&format!(
        r#"
[project]
name = "{name}"

[dashboard]
listen = "127.0.0.1:0"

[resources.web]
template = "docker"
image = "{image}"
command = '''mkdir -p /www && echo '{BODY}' > /www/data.json && exec httpd -f -p 8080 -h /www'''
container_port = 8080
port = "auto"
stop_grace = "1s"
health = {{ http = "/data.json", interval = "300ms" }}
scale_to_zero = {{ idle_after = "3s", wake_timeout = "60s" }}

[[routes]]
path = "/"
service = "web"
"#,
        image = docker_support::BUSYBOX
    ));
    let label = format!("label=dev.kinfra.project={name}");
    let mut up = p.up(&[], &[]);
    let proxy = proxy_addr(&up);
    let limit = Duration::from_secs(90);

    let awake = wait_service(&p, &up, "web", limit, "running and healthy", |w| {
        w["state"] == "running" && w["health"] == "healthy"
    });
    assert_eq!(awake["kind"], "docker", "{awake}");
    assert_eq!(awake["sleep"]["idle_after_s"], 3, "{awake}");
    let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &label]);
    assert_eq!(ids.lines().count(), 1, "one container: {ids}");
    let id = ids.trim().to_owned();
    let (running, first_start) = container_state(&id);
    assert!(running, "the container runs");

    // Idle: stopped, not removed, and shown sleeping.
    let asleep = wait_service(&p, &up, "web", limit, "sleeping", |w| {
        w["state"] == "sleeping"
    });
    assert!(asleep["sleep"].is_object(), "{asleep}");
    let (running, _) = container_state(&id);
    assert!(!running, "the container still runs while web sleeps");
    assert_eq!(
        docker(&["ps", "-aq", "--no-trunc", "--filter", &label]),
        id,
        "the sleeping container was removed or duplicated"
    );

    // An API client's GET is held while the container starts, then answered by it.
    let (code, head, body) = get_json(&proxy, "/data.json", limit);
    assert_eq!(code, 200, "{head}\n{body}\n{}", up.lines().join("\n"));
    assert_eq!(body.trim(), BODY, "{head}");
    let (running, second_start) = container_state(&id);
    assert!(running, "the answer came but the container does not run");
    assert_ne!(
        second_start, first_start,
        "the container was not started again"
    );
    assert_eq!(
        docker(&["ps", "-aq", "--no-trunc", "--filter", &label]),
        id,
        "woken by recreating the container instead of starting it"
    );
    let woken = crate::cli::status_json(&p)["services"]["web"].clone();
    assert_eq!(woken["state"], "running", "{woken}");
    assert!(woken["sleep"]["wakes"].as_u64() >= Some(1), "{woken}");

    // It sleeps again once idle; `runtime wake` starts it, `runtime sleep` stops it at once.
    wait_service(&p, &up, "web", limit, "sleeping again", |w| {
        w["state"] == "sleeping"
    });
    let out = p.run(&["runtime", "wake", "web"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let (running, _) = container_state(&id);
    assert!(running, "`runtime wake` returned before the container ran");
    let out = p.run(&["runtime", "sleep", "web"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    wait_service(&p, &up, "web", limit, "put to sleep", |w| {
        w["state"] == "sleeping"
    });
    let (running, _) = container_state(&id);
    assert!(!running, "`runtime sleep` left the container running");

    // A clean shutdown with web asleep: nothing left running, the container kept.
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(60)).success());
    assert!(
        docker(&["ps", "-q", "--filter", &label]).is_empty(),
        "a container runs after shutdown"
    );
}

#[test]
fn a_neon_endpoint_is_suspended_when_idle_and_resumed_by_runtime_wake() {
    let (prism, fake) = neon_fake::neon();
    let (project, endpoint, _) = fake.project("sleep", "active");
    let p = Project::with_config(&format!(
        "[project]\nname = \"neon-stz\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.neon]\ntoken = \"{token}\"\nbase_url = \"{base}\"\n\
         [resources.db]\nprovider = \"neon\"\nproject_id = \"{project}\"\n\
         endpoint_id = \"{endpoint}\"\ninterval = \"300ms\"\n\
         scale_to_zero = {{ idle_after = \"2s\", wake = \"manual\" }}\n",
        token = neon_fake::TOKEN,
        base = prism.url,
    ));
    let calls = |action: &str| {
        let suffix = format!("/endpoints/{endpoint}/{action}");
        fake.requests(&project)
            .iter()
            .filter(|r| {
                r.starts_with("POST ")
                    && r.split_whitespace()
                        .nth(1)
                        .is_some_and(|t| t.ends_with(&suffix))
            })
            .count()
    };
    let mut up = p.up(&[], &[]);
    let limit = Duration::from_secs(60);
    let running = wait_service(&p, &up, "db", limit, "running", |d| d["state"] == "running");
    assert_eq!(running["kind"], "neon", "{running}");
    let starts = calls("start");

    // Idle for 2 s: suspended through the API, shown sleeping.
    let asleep = wait_service(&p, &up, "db", limit, "sleeping", |d| {
        d["state"] == "sleeping"
    });
    assert_eq!(calls("suspend"), 1, "{:?}", fake.requests(&project));
    assert_eq!(fake.state(&project, &endpoint), "idle");
    assert!(asleep["sleep"].is_object(), "{asleep}");
    assert_eq!(asleep["sleep"]["wake"], "manual", "{asleep}");
    // Asleep by kinfra's choice: the observe loop does not start it again by itself.
    wait_service(&p, &up, "db", limit, "observed asleep", |d| {
        d["provider_state"] == "idle" && d["last_sync"]["ok"] == true
    });
    assert_eq!(calls("start"), starts, "{:?}", fake.requests(&project));

    // `runtime wake` resumes it and returns once it runs.
    let out = p.run(&["runtime", "wake", "db"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(calls("start"), starts + 1, "{:?}", fake.requests(&project));
    assert_eq!(fake.state(&project, &endpoint), "active");
    let woken = crate::cli::status_json(&p)["services"]["db"].clone();
    assert_eq!(woken["state"], "running", "{woken}");
    assert!(woken["sleep"]["wakes"].as_u64() >= Some(1), "{woken}");

    // And sleeps again when idle: a second suspend, no restart counted.
    let again = wait_service(&p, &up, "db", limit, "sleeping again", |d| {
        d["state"] == "sleeping"
    });
    assert_eq!(calls("suspend"), 2, "{:?}", fake.requests(&project));
    assert_eq!(again["restarts"], 0, "{again}");

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    // Every exchange was valid against Neon's spec, both ways.
    prism.assert_clean(&project);
}
