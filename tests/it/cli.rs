//! `kinfra runtime up|status|logs|restart|stop|start|down` against the real binary and real
//! processes.

use crate::support::{Project, alive, http_get, pids_tagged, stderr, stdout, unique_tag, wait_for};
use std::time::Duration;

fn two_service_config(tag: &str) -> String {
    format!(
        r#"
[project]
name = "it"
shutdown_timeout = "20s"

[env]
KINFRA_TEST_TAG = "{tag}"

[dashboard]
listen = "127.0.0.1:0"

[proxy]
enabled = false

[services.worker]
command = "echo worker says hello; exec sleep 1000"
stop_grace = "5s"

[services.forker]
# Leaves a grandchild behind in the background; kinfra must stop it too.
command = "sleep 1000 & echo forked $!; wait"
depends_on = {{ worker = "started" }}
stop_grace = "5s"
"#
    )
}

fn status_json(p: &Project) -> serde_json::Value {
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("status JSON")
}

fn running_pid(p: &Project, service: &str) -> Option<u64> {
    let status = status_json(p);
    let svc = &status["services"][service];
    if svc["state"] == "running" {
        svc["pid"].as_u64()
    } else {
        None
    }
}

#[test]
fn up_status_logs_restart_down() {
    let tag = unique_tag("usd");
    let p = Project::with_config(&two_service_config(&tag));
    let mut up = p.up(&[], &[]);
    let worker_pid = wait_for(Duration::from_secs(20), "worker running", || {
        running_pid(&p, "worker")
    });
    wait_for(Duration::from_secs(20), "forker running", || {
        running_pid(&p, "forker")
    });

    // The JSON has the design's shape.
    let status = status_json(&p);
    assert_eq!(status["project"], "it");
    assert_eq!(status["stats"]["total"], 2);
    assert_eq!(status["services"]["worker"]["kind"], "process");
    assert!(status["timestamp"].as_str().is_some());

    // The same report over HTTP.
    let addr = up.dashboard_addr();
    let (code, body) = http_get(&addr, "/__status__").expect("GET /__status__");
    assert_eq!(code, 200);
    let http: serde_json::Value = serde_json::from_str(&body).expect("status JSON over HTTP");
    assert_eq!(http["services"]["worker"]["pid"], worker_pid);

    // Logs reach `runtime logs` and the foreground output, prefixed by service name.
    let out = p.run(&["runtime", "logs", "worker", "-n", "50"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("worker says hello"),
        "{}",
        stdout(&out)
    );
    up.wait_for_line(Duration::from_secs(10), "worker says hello");
    assert!(
        up.lines()
            .iter()
            .any(|l| l.starts_with("worker") && l.contains("| worker says hello"))
    );

    // Restart gives a new process.
    let out = p.run(&["runtime", "restart", "worker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new_pid = wait_for(Duration::from_secs(20), "worker restarted", || {
        running_pid(&p, "worker").filter(|pid| *pid != worker_pid)
    });
    assert!(
        !alive(worker_pid as u32),
        "old worker process survived a restart"
    );
    assert!(alive(new_pid as u32));

    // Stop and start.
    let out = p.run(&["runtime", "stop", "worker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(status_json(&p)["services"]["worker"]["state"], "stopped");
    assert!(!alive(new_pid as u32));
    let out = p.run(&["runtime", "start", "worker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "worker running again", || {
        running_pid(&p, "worker")
    });

    // An unknown service is bad input.
    let out = p.run(&["runtime", "restart", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope"));

    // Down stops everything, including the grandchild, and the foreground process exits 0.
    assert!(!pids_tagged(&tag).is_empty());
    let out = p.run(&["runtime", "down"]);
    assert!(out.status.success(), "down: {}", stderr(&out));
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "up exited with {status:?}");
    wait_for(Duration::from_secs(5), "no tagged process left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
    assert!(!p.path().join(".kinfra/control.sock").exists());

    // With nothing running, client commands say so and exit 1.
    let out = p.run(&["runtime", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no kinfra runtime is running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigterm_shuts_down_gracefully_leaving_nothing() {
    let tag = unique_tag("term");
    let p = Project::with_config(&two_service_config(&tag));
    let mut up = p.up(&[], &[]);
    wait_for(
        Duration::from_secs(20),
        "both services and the grandchild",
        || (pids_tagged(&tag).len() >= 3).then_some(()),
    );
    up.signal(libc::SIGTERM);
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    up.wait_for_line(Duration::from_secs(1), "SIGTERM: stopping gracefully");
    wait_for(Duration::from_secs(5), "no tagged process left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}

#[test]
fn second_runtime_on_same_state_dir_is_refused() {
    let tag = unique_tag("lock");
    let p = Project::with_config(&two_service_config(&tag));
    let _up = p.up(&[], &[]);
    let out = p.run(&["runtime", "up", "--color", "never"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already using the state dir"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn embedded_default_runs_the_demo() {
    let p = Project::new();
    let mut up = p.up(
        &[],
        &[
            ("KINFRA_DASHBOARD__LISTEN", "127.0.0.1:0"),
            ("KINFRA_PROXY__HTTP", "127.0.0.1:0"),
        ],
    );
    up.wait_for_line(Duration::from_secs(5), "built-in demo");
    let addr = up.dashboard_addr();
    // The demo web app becomes healthy and serves its page on its own port.
    let port = wait_for(Duration::from_secs(30), "hello healthy", || {
        let (_, body) = http_get(&addr, "/__status__").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let hello = &v["services"]["hello"];
        (hello["state"] == "running" && hello["health"] == "healthy")
            .then(|| hello["port"].as_u64())
            .flatten()
    });
    let (code, body) = http_get(&format!("127.0.0.1:{port}"), "/").expect("GET hello");
    assert_eq!(code, 200);
    assert!(body.contains("Hello from kinfra"));
    // The ticker waits for hello to be healthy, then logs.
    up.wait_for_line(Duration::from_secs(20), "| INFO tick 1");
    let (code, page) = http_get(&addr, "/kinfra").expect("GET /kinfra");
    assert_eq!(code, 200);
    assert!(page.contains("<title>kinfra</title>"));
    up.signal(libc::SIGINT);
    let status = up.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}
