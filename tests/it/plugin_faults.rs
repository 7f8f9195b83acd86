//! A provider plugin that misbehaves during a status poll, through `kinfra runtime up`: the
//! Python test plugin of kinfra-provider prints garbage on stdout (one instance) or hangs
//! past the plugin call timeout (another) once it has answered a few polls. Each resource
//! fails with the fault named in `/__status__`, while a healthy plugin resource (a third
//! instance) stays running and in sync, a plain service keeps its PID, the runtime keeps
//! answering, and no plugin process is left after `runtime down`. Also: `health = "true"` on
//! a command provider resource (the provider's health command) passes `kinfra config check`.

use crate::support::{Project, alive, pids_tagged, stderr, stdout, unique_tag, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;

/// The Python test plugin of kinfra-provider (a real external executable).
fn plugin_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/kinfra-provider/tests/plugins")
}

fn require_python() {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "python3 is missing: apt-get install python3");
}

/// The running plugin children of the runtime tagged `tag` (they inherit its environment).
fn plugin_pids(tag: &str) -> BTreeSet<u32> {
    pids_tagged(tag)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("kinfra-provider-pyfake"))
        })
        .collect()
}

#[test]
fn a_plugin_that_misbehaves_during_a_status_poll_fails_only_its_resource_naming_why() {
    require_python();
    let tag = unique_tag("plugin-faults");
    let p = Project::with_config(&format!(
        "[project]\nname = \"pf\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers]\nplugin_dirs = [\"{}\"]\n\
         [providers.calm]\nprovider = \"pyfake\"\ntoken = \"tok-calm\"\n\
         [providers.noisy]\nprovider = \"pyfake\"\n\
         [providers.stuck]\nprovider = \"pyfake\"\n\
         [resources.good]\nprovider = \"calm\"\ninterval = \"200ms\"\nproject_id = \"p1\"\n\
         restart = \"no\"\nstop_grace = \"3s\"\non_down = \"keep\"\n\
         depends_on = [\"app\"]\n\
         [resources.garbled]\nprovider = \"noisy\"\ninterval = \"200ms\"\nproject_id = \"p2\"\n\
         misbehave = \"garbage\"\nmisbehave_after = 3\nrestart = \"no\"\n\
         [resources.hung]\nprovider = \"stuck\"\ninterval = \"200ms\"\nproject_id = \"p3\"\n\
         misbehave = \"hang\"\nmisbehave_after = 3\nrestart = \"no\"\n\
         [services.app]\ncommand = \"exec sleep 1000\"\n",
        plugin_dir().display()
    ));
    // The runtime's own environment carries the tag, so its plugin children do too.
    let mut up = p.up(&[], &[("KINFRA_TEST_TAG", &tag)]);
    let addr = up.dashboard_addr();
    let service = |name: &str| -> Option<serde_json::Value> {
        let (code, body) = crate::support::http_get(&addr, "/__status__").ok()?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200).then(|| status["services"][name].clone())
    };
    let mut seen = BTreeSet::new();

    // The healthy resource is observed: the plugin's own word for its state, a good sync.
    let good = wait_for(Duration::from_secs(30), "good running and in sync", || {
        seen.extend(plugin_pids(&tag));
        service("good").filter(|g| {
            g["state"] == "running"
                && g["last_sync"]["ok"] == true
                && g["provider_state"] == "ACTIVE"
        })
    });
    assert!(good["last_sync"]["at"].as_str().is_some(), "{good}");
    assert!(good["last_sync"]["error"].is_null(), "{good}");
    let app_pid = wait_for(Duration::from_secs(20), "app running", || {
        crate::cli::running_pid(&p, "app")
    });

    // Garbage on stdout during `status`: the child is killed and its resource fails, saying so.
    let garbled = wait_for(Duration::from_secs(30), "garbled failed", || {
        seen.extend(plugin_pids(&tag));
        service("garbled").filter(|g| g["state"] == "failed")
    });
    let message = garbled["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plugin `pyfake` printed garbage on stdout during `status`"),
        "{garbled}"
    );
    assert!(!message.contains("crashed"), "{garbled}");
    assert_eq!(garbled["last_sync"]["ok"], false, "{garbled}");
    assert!(
        garbled["last_sync"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("garbage") && e.contains("status? no idea")),
        "{garbled}"
    );
    let out = p.run(&["runtime", "logs", "garbled"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("printed garbage on stdout during `status`; kinfra killed it"),
        "{}",
        stdout(&out)
    );

    // A hang past the plugin call timeout (10 s in the runtime): killed, named.
    let hung = wait_for(Duration::from_secs(60), "hung failed", || {
        seen.extend(plugin_pids(&tag));
        service("hung").filter(|h| h["state"] == "failed")
    });
    let message = hung["status_message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plugin `pyfake` timed out during `status` after 10s"),
        "{hung}"
    );
    assert_eq!(hung["last_sync"]["ok"], false, "{hung}");

    // The rest carries on: the service, the healthy plugin resource, the runtime.
    assert_eq!(
        crate::cli::running_pid(&p, "app"),
        Some(app_pid),
        "the plain service carried on"
    );
    let out = p.run(&["runtime", "status", "--json"]);
    assert!(out.status.success(), "status answers: {}", stderr(&out));
    let before = service("good").expect("good in status");
    let at = before["last_sync"]["at"].clone();
    wait_for(Duration::from_secs(20), "good synced again", || {
        service("good").filter(|g| {
            g["state"] == "running" && g["last_sync"]["ok"] == true && g["last_sync"]["at"] != at
        })
    });
    seen.extend(plugin_pids(&tag));
    // One child per instance at least was seen (more when one was replaced).
    assert!(seen.len() >= 3, "plugin children seen: {seen:?}");

    let out = p.run(&["runtime", "down"]);
    assert!(out.status.success(), "down: {}", stderr(&out));
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    wait_for(Duration::from_secs(10), "no plugin process left", || {
        seen.iter().all(|pid| !alive(*pid)).then_some(())
    });
    wait_for(Duration::from_secs(10), "no tagged process left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}

/// The command provider's `health` is its health command: `health = "true"` on a command
/// provider resource passes the check (kinfra's own `health` is a probe table).
#[test]
fn a_command_resource_with_a_health_command_passes_config_check() {
    let p = Project::with_config(
        "[project]\nname = \"hc\"\n\
         [providers.sh]\nprovider = \"command\"\n\
         [resources.flag]\nprovider = \"sh\"\nstart = \"touch flag.state\"\n\
         status = \"test -f flag.state\"\nhealth = \"true\"\n",
    );
    let out = p.run(&["config", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}
