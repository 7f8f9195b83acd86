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

pub(crate) fn status_json(p: &Project) -> serde_json::Value {
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("status JSON")
}

pub(crate) fn running_pid(p: &Project, service: &str) -> Option<u64> {
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
    // A reader that goes away (`| head`) ends `logs` and `status` quietly, not with a panic
    // on the broken pipe: stdout is a pipe whose read end is closed before they write.
    for args in [
        &["runtime", "logs", "worker", "-n", "50"][..],
        &["runtime", "status", "--json"][..],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = crate::support::output_within(
            std::process::Command::new(crate::support::kinfra_bin())
                .args(args)
                .current_dir(p.path())
                .stdout(writer)
                .stderr(std::process::Stdio::piped()),
            Duration::from_secs(20),
            "kinfra with a closed stdout",
        );
        assert!(
            out.status.success() && !stderr(&out).contains("panicked"),
            "{args:?} with a closed stdout: {:?} {}",
            out.status,
            stderr(&out)
        );
    }
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
    let (code, body) = wait_for(Duration::from_secs(5), "hello's page", || {
        http_get(&format!("127.0.0.1:{port}"), "/").ok()
    });
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

fn pid_of(p: &Project, service: &str) -> Option<u64> {
    status_json(p)["services"][service]["pid"].as_u64()
}

#[test]
fn reload_applies_a_diff_and_rejects_bad_edits() {
    let tag = unique_tag("reload");
    let base = |services: &str| {
        format!(
            "[project]\nname = \"rl\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n{services}"
        )
    };
    let p = Project::with_config(&base(
        "[services.keep]\ncommand = \"exec sleep 1000\"\n\
         [services.change]\ncommand = \"exec sleep 1000\"\n\
         [services.gone]\ncommand = \"exec sleep 1000\"\n",
    ));
    let mut up = p.up(&[], &[]);
    for s in ["keep", "change", "gone"] {
        wait_for(Duration::from_secs(20), s, || running_pid(&p, s));
    }
    let keep = pid_of(&p, "keep").expect("keep pid");
    let change = pid_of(&p, "change").expect("change pid");
    let gone = pid_of(&p, "gone").expect("gone pid");

    // A broken edit is refused by the CLI with exit 2, and nothing changes.
    p.write(
        "kinfra.toml",
        &base("[services.keep]\ncommand = \"exec sleep 1000\"\nport = \"many\"\n"),
    );
    let out = p.run(&["runtime", "reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("kinfra.toml:"), "{}", stderr(&out));
    // The same broken edit through SIGHUP is rejected by the runtime with the error.
    up.signal(libc::SIGHUP);
    up.wait_for_line(Duration::from_secs(10), "reload rejected");
    assert_eq!(pid_of(&p, "gone"), Some(gone));

    p.write(
        "kinfra.toml",
        &base(
            "[services.keep]\ncommand = \"exec sleep 1000\"\n\
             [services.change]\ncommand = \"exec sleep 1001\"\n\
             [services.new]\ncommand = \"exec sleep 1000\"\n",
        ),
    );
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("added new"), "{}", stdout(&out));
    let new = wait_for(Duration::from_secs(20), "new running", || {
        running_pid(&p, "new")
    });
    let changed = wait_for(Duration::from_secs(20), "change restarted", || {
        running_pid(&p, "change").filter(|pid| *pid != change)
    });
    assert!(status_json(&p)["services"]["gone"].is_null());
    assert!(!alive(gone as u32), "a removed service kept running");
    assert!(
        !alive(change as u32),
        "the old process of a changed service kept running"
    );
    assert_eq!(
        pid_of(&p, "keep"),
        Some(keep),
        "an unchanged service was touched"
    );
    assert!(alive(new as u32) && alive(changed as u32));
    up.wait_for_line(Duration::from_secs(5), "config reloaded");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn second_ctrl_c_forces_exit_and_children_die() {
    let tag = unique_tag("force");
    // The service ignores SIGTERM and has a long grace period, so a graceful stop would hang.
    let p = Project::with_config(&format!(
        "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.stubborn]\ncommand = \"trap '' TERM; echo ready; while true; do sleep 0.1; done\"\n\
         stop_grace = \"60s\"\n"
    ));
    let mut up = p.up(&[], &[]);
    up.wait_for_line(Duration::from_secs(20), "stubborn | ready");
    // The control socket is private to its owner.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p.path().join(".kinfra/control.sock"))
            .expect("socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");
    up.signal(libc::SIGINT);
    up.wait_for_line(Duration::from_secs(10), "Ctrl-C: stopping gracefully");
    up.wait_for_line(Duration::from_secs(10), "stubborn: stopping");
    up.signal(libc::SIGINT);
    let status = up.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{status:?}");
    wait_for(
        Duration::from_secs(5),
        "the stubborn service to die with kinfra",
        || pids_tagged(&tag).is_empty().then_some(()),
    );
}

#[test]
fn maintenance_per_service_and_global_survives_a_restart() {
    let tag = unique_tag("maint");
    let p = Project::with_config(&format!(
        "[env]\nKINFRA_TEST_TAG = \"{tag}\"\n[dashboard]\nlisten = \"127.0.0.1:0\"\n\
         [services.web]\ncommand = \"exec sleep 1000\"\n\
         [services.api]\ncommand = \"exec sleep 1000\"\nmaintenance = true\n"
    ));
    let mut up = p.up(&[], &[]);
    let state = |p: &Project, s: &str| status_json(p)["services"][s]["state"].clone();
    wait_for(Duration::from_secs(20), "web running", || {
        running_pid(&p, "web")
    });
    // From config; the process behind it runs.
    assert_eq!(state(&p, "api"), "maintenance");
    wait_for(Duration::from_secs(20), "api's process running", || {
        status_json(&p)["services"]["api"]["status_message"]
            .as_str()
            .filter(|m| m.contains("process running"))
            .map(|_| ())
    });
    let out = p.run(&["runtime", "maintenance", "on", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&p, "web"), "maintenance");
    let out = p.run(&["runtime", "maintenance", "off", "api"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&p, "api"), "running");
    let out = p.run(&["runtime", "maintenance", "on", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    up.wait_for_line(Duration::from_secs(5), "web: maintenance on");

    // Survives a restart of kinfra (saved state wins over the config).
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    let mut up = p.up(&[], &[]);
    wait_for(Duration::from_secs(20), "api running", || {
        running_pid(&p, "api")
    });
    assert_eq!(state(&p, "web"), "maintenance");

    // Global maintenance covers everything; off restores.
    let out = p.run(&["runtime", "maintenance", "on"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("everything: in maintenance"));
    assert_eq!(state(&p, "api"), "maintenance");
    let out = p.run(&["runtime", "maintenance", "off"]);
    assert!(out.status.success());
    assert_eq!(state(&p, "api"), "running");
    assert_eq!(state(&p, "web"), "maintenance");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}

/// The first line of `runtime status` names the node (`[node] name`) beside the project.
#[test]
fn status_names_the_node() {
    let p = Project::with_config(
        "[project]\nname = \"it\"\n[node]\nname = \"edge-7\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [bus]\nenabled = false\n[store]\nenabled = false\n\
         [services.web]\ncommand = \"exec sleep 1000\"\n",
    );
    let mut up = p.up(&[], &[]);
    let out = p.run(&["runtime", "status"]);
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("project it on node edge-7 — "), "{text}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
}
