//! Provider resources through the binary: `[resources.NAME] provider = "..."` runs under the
//! supervisor like a process or container. The built-in `command` provider with real shell
//! commands (a state file stands in for the thing they manage) reaches running, is stopped by
//! `kinfra runtime stop` (its stop command runs), and a dependent service waits for it; an
//! uninstalled provider and a key the provider refuses fail `runtime up` with exit 2.

use crate::support::{Project, pids_tagged, stderr, unique_tag, wait_for};
use std::time::Duration;

fn config(tag: &str, extra: &str) -> String {
    format!(
        "[project]\nname = \"pr\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.sh]\nprovider = \"command\"\n\
         [resources.flag]\nprovider = \"sh\"\ninterval = \"200ms\"\n\
         start = \"touch flag.state\"\nstop = \"rm -f flag.state\"\nstatus = \"test -f flag.state\"\n\
         {extra}"
    )
}

#[test]
fn a_command_provider_resource_runs_stops_and_gates_its_dependent() {
    let tag = unique_tag("provider-res");
    let p = Project::with_config(&config(
        &tag,
        "[services.app]\ncommand = \"exec sleep 1000\"\ndepends_on = { flag = \"started\" }\n",
    ));
    let mut up = p.up(&[], &[]);
    let state = |p: &Project, name: &str| crate::cli::status_json(p)["services"][name].clone();
    wait_for(Duration::from_secs(20), "flag running", || {
        (state(&p, "flag")["state"] == "running").then_some(())
    });
    assert!(
        p.path().join("flag.state").exists(),
        "its start command ran"
    );
    wait_for(Duration::from_secs(20), "the dependent running", || {
        crate::cli::running_pid(&p, "app")
    });

    let out = p.run(&["runtime", "stop", "flag"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "flag stopped", || {
        (state(&p, "flag")["state"] == "stopped").then_some(())
    });
    assert!(
        !p.path().join("flag.state").exists(),
        "its stop command ran"
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn an_uninstalled_provider_or_a_refused_key_fails_runtime_up_naming_it() {
    let tag = unique_tag("provider-bad");
    let p = Project::with_config(&format!(
        "[project]\nname = \"pb\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.nowhere]\nprovider = \"not-installed-anywhere\"\n\
         [resources.x]\nprovider = \"nowhere\"\n"
    ));
    let out = p.run(&["runtime", "up"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resources.x")
            && stderr(&out).contains("not-installed-anywhere")
            && stderr(&out).contains("kinfra providers discover"),
        "{}",
        stderr(&out)
    );

    let p = Project::with_config(&config(&tag, "").replace("status = ", "stauts = "));
    let out = p.run(&["runtime", "up"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Every problem, each on its own `error:` line naming the resource and the key.
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: resources.flag") && l.contains("`stauts`"))
            && err
                .lines()
                .any(|l| l.starts_with("error: resources.flag") && l.contains("`status`: missing")),
        "{err}"
    );
    assert!(pids_tagged(&tag).is_empty());
}
