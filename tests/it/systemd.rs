//! The `systemd` provider through `kinfra runtime up`. No systemd runs here as PID 1: a private
//! `dbus-daemon --session` stands in for the system bus and python-dbusmock's `systemd`
//! template (PyPI `python-dbusmock`, a third-party implementation of
//! `org.freedesktop.systemd1`) stands in for systemd on it (kinfra-system's harness,
//! `mock_systemd.rs`); a script prints journal JSON lines in place of `journalctl`.
//!
//! Start (StartUnit and its job), stop (StopUnit), a change made outside kinfra arriving by
//! PropertiesChanged with `interval = "1h"` (so not by polling), a unit that fails (failed,
//! with its result), the bus going away (the resources fail with the cause, the runtime
//! answers, a plain service keeps its PID) and coming back (a restart takes the unit up again),
//! and `runtime down` leaving the unit running (on_down = keep) with no journalctl behind.

#[path = "../../crates/kinfra-system/tests/it/mock_systemd.rs"]
mod mock_systemd;

use crate::support::{Project, Up, pids_tagged, stderr, stdout, unique_tag, wait_for};
use mock_systemd::{MockSystemd, alive, journalctl_runs, journalctl_stand_in};
use std::time::Duration;

fn config(tag: &str, bus: &str, journalctl: &str) -> String {
    format!(
        "[project]\nname = \"systemd-it\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.systemd]\nbus = \"{bus}\"\njournalctl = \"{journalctl}\"\n\
         [resources.web]\nprovider = \"systemd\"\nunit = \"nginx.service\"\ninterval = \"1h\"\n\
         [resources.app]\nprovider = \"systemd\"\nunit = \"app.service\"\ninterval = \"1h\"\n\
         [services.plain]\ncommand = \"exec sleep 1000\"\n"
    )
}

/// Waits (bounded) until `name` is in state `want`; the failure shows the status and the
/// runtime's output.
fn wait_state(p: &Project, up: &Up, name: &str, want: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = crate::cli::status_json(p);
        let s = status["services"][name].clone();
        if s["state"] == want {
            return s;
        }
        if std::time::Instant::now() > deadline {
            panic!("{name} never {want}: {status:#}\n{}", up.lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn message(s: &serde_json::Value) -> String {
    s["status_message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn units_are_started_followed_by_signal_failed_and_kept_at_down() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut mock = rt.block_on(MockSystemd::start(dir.path()));
    rt.block_on(mock.add_unit("nginx.service"));
    rt.block_on(mock.add_unit("app.service"));
    let journalctl = journalctl_stand_in(dir.path());
    let tag = unique_tag("systemd");
    let p = Project::with_config(&config(
        &tag,
        &mock.address,
        &journalctl.display().to_string(),
    ));
    // `kinfra providers show systemd`: its commands, each with a dry-run.
    let out = p.run(&["providers", "show", "systemd", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let ids: Vec<&str> = shown["commands"]
        .as_array()
        .expect("commands")
        .iter()
        .filter(|c| c["dry_run"] == true)
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["start", "stop", "restart", "reload"], "{shown}");

    let mut up = p.up(&[], &[]);

    // Start: StartUnit for each, waited for; the journal's lines reach the log.
    let web = wait_state(&p, &up, "web", "running");
    wait_state(&p, &up, "app", "running");
    assert_eq!(rt.block_on(mock.calls("StartUnit")), 2);
    assert_eq!(rt.block_on(mock.active_state("nginx.service")), "active");
    assert_eq!(web["kind"], "systemd", "{web}");
    assert!(
        web["provider_state"]
            .as_str()
            .is_some_and(|s| s.starts_with("active")),
        "{web}"
    );
    let plain = wait_for(Duration::from_secs(30), "plain running", || {
        crate::cli::running_pid(&p, "plain")
    });
    wait_for(Duration::from_secs(30), "the journal in the log", || {
        let out = p.run(&["runtime", "logs", "web"]);
        stdout(&out).contains("hello from the unit").then_some(())
    });

    // A dry-run names the D-Bus call and makes none.
    let out = p.run(&["resource", "web", "restart", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("org.freedesktop.systemd1.Manager.RestartUnit"),
        "{}",
        stdout(&out)
    );
    assert_eq!(rt.block_on(mock.calls("RestartUnit")), 0);

    // Stopped outside kinfra: arrives by signal (the re-read is an hour away).
    rt.block_on(mock.set_state("nginx.service", "inactive", "dead", None));
    let web = wait_state(&p, &up, "web", "stopped");
    assert!(message(&web).contains("stopped outside kinfra"), "{web}");
    assert_eq!(web["provider_state"], "inactive/dead", "{web}");

    // runtime start / stop call StartUnit / StopUnit.
    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "running");
    assert_eq!(rt.block_on(mock.calls("StartUnit")), 3);
    let out = p.run(&["runtime", "stop", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "stopped");
    assert_eq!(rt.block_on(mock.calls("StopUnit")), 1);
    assert_eq!(rt.block_on(mock.active_state("nginx.service")), "inactive");
    let out = p.run(&["runtime", "start", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "running");

    // A unit that fails: failed, with its result.
    rt.block_on(mock.set_state("app.service", "failed", "failed", Some("exit-code")));
    let app = wait_state(&p, &up, "app", "failed");
    assert!(
        message(&app).contains("app.service") && message(&app).contains("exit-code"),
        "{app}"
    );

    // The bus goes away: the unit's resource fails with the cause; the runtime answers and
    // the plain service keeps its process.
    rt.block_on(mock.kill_bus());
    let web = wait_state(&p, &up, "web", "failed");
    assert!(message(&web).contains("was lost"), "{web}");
    assert_eq!(crate::cli::running_pid(&p, "plain"), Some(plain));

    // The bus comes back: a restart takes the unit up again.
    rt.block_on(mock.restart_bus());
    rt.block_on(mock.add_unit("nginx.service"));
    let out = p.run(&["runtime", "restart", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_state(&p, &up, "web", "running");
    assert_eq!(rt.block_on(mock.active_state("nginx.service")), "active");

    // runtime down: on_down = keep leaves the unit running; no journalctl is left behind.
    let stops = rt.block_on(mock.calls("StopUnit"));
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(rt.block_on(mock.active_state("nginx.service")), "active");
    assert_eq!(
        rt.block_on(mock.calls("StopUnit")),
        stops,
        "down stopped a kept unit"
    );
    let runs = journalctl_runs(dir.path());
    assert!(runs.len() >= 2, "{runs:?}");
    for (pid, args) in &runs {
        assert!(args.starts_with("-u "), "{args}");
        wait_for(Duration::from_secs(10), "journalctl gone", || {
            (!alive(*pid)).then_some(())
        });
    }
    assert!(pids_tagged(&tag).is_empty());
}
