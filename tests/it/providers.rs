//! `kinfra providers` through the binary: plugins (the Python test plugin of kinfra-provider,
//! a real external executable speaking JSON-RPC over stdio) are discovered from a plugin dir,
//! listed, shown with their commands, and what is skipped says why.

use crate::support::{Project, stderr, stdout};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crates/kinfra-provider/tests/plugins")
}

#[test]
fn plugins_are_discovered_listed_and_shown_and_skips_say_why() {
    let p = Project::with_config("[project]\nname = \"pv\"\n");
    let dir = plugin_dir();
    let dir = dir.to_str().expect("utf-8 path");

    let out = p.run(&["providers", "--json", "--plugin-dir", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON list");
    let pyfake = list
        .as_array()
        .and_then(|a| a.iter().find(|p| p["id"] == "pyfake"))
        .unwrap_or_else(|| panic!("pyfake not listed: {list}"));
    assert_eq!(pyfake["from"]["source"], "plugin", "{pyfake}");
    assert!(
        pyfake["from"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("kinfra-provider-pyfake")),
        "{pyfake}"
    );

    let out = p.run(&["providers", "show", "pyfake", "--plugin-dir", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Python fake (pyfake)"), "{text}");
    assert!(
        text.contains("--param replicas=<integer> (required)"),
        "{text}"
    );

    // A plugin dir with a non-executable candidate: discovery says so, and uses the rest.
    let extra = p.path().join("plugins");
    std::fs::create_dir(&extra).expect("mkdir");
    let lame = extra.join("kinfra-provider-lame");
    std::fs::write(&lame, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&lame, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let extra = extra.to_str().expect("utf-8 path");
    let out = p.run(&[
        "providers",
        "discover",
        "--plugin-dir",
        extra,
        "--plugin-dir",
        dir,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("found   pyfake"), "{text}");
    assert!(
        text.contains("skipped lame") && text.contains("not executable"),
        "{text}"
    );

    // The built-ins are listed beside it, and a plugin cannot replace one.
    for id in ["command", "http-api"] {
        let entry = list
            .as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id))
            .unwrap_or_else(|| panic!("{id} not listed: {list}"));
        assert_eq!(entry["from"]["source"], "builtin", "{entry}");
    }
    let out = p.run(&["providers", "show", "command", "--plugin-dir", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("status (required)"),
        "{}",
        stdout(&out)
    );

    // `[providers] plugin_dirs` in the config is searched too (relative to the config).
    let p2 = Project::with_config(&format!(
        "[project]\nname = \"pv2\"\n[providers]\nplugin_dirs = [\"{dir}\"]\n"
    ));
    let out = p2.run(&["providers", "show", "pyfake"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // An unknown provider is the user's input error.
    let out = p.run(&["providers", "show", "nope", "--plugin-dir", dir]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown provider `nope`") && stderr(&out).contains("pyfake"),
        "{}",
        stderr(&out)
    );
}

/// `kinfra providers instances`: each configured instance with its provider, where that comes
/// from, the resources that use it and its state, computed from the config: `ready` for an
/// installed provider, `failed` with the reason for a provider that is nowhere or a token
/// file that cannot be read.
#[test]
fn instances_show_provider_source_resources_and_state() {
    let p = Project::with_config(
        "[project]\nname = \"pi\"\n\
         [providers.sh]\nprovider = \"command\"\n\
         [providers.nowhere]\nprovider = \"not-installed-anywhere\"\n\
         [providers.api]\nprovider = \"http-api\"\ntoken_file = \"no-such-token\"\n\
         [resources.a]\nprovider = \"sh\"\nstatus = \"true\"\n\
         [resources.b]\nprovider = \"sh\"\nstatus = \"true\"\n\
         [resources.c]\nprovider = \"nowhere\"\n",
    );
    let out = p.run(&["providers", "instances", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON list");
    let row = |name: &str| {
        rows.as_array()
            .and_then(|a| a.iter().find(|r| r["name"] == name))
            .unwrap_or_else(|| panic!("{name} not listed: {rows}"))
            .clone()
    };
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");

    let sh = row("sh");
    assert_eq!(sh["provider"], "command", "{sh}");
    assert_eq!(sh["from"]["source"], "builtin", "{sh}");
    assert_eq!(sh["resources"], serde_json::json!(["a", "b"]), "{sh}");
    assert_eq!(sh["live"], false, "{sh}");
    assert_eq!(sh["state"], "ready", "{sh}");
    assert!(sh.get("reason").is_none(), "{sh}");

    let nowhere = row("nowhere");
    assert_eq!(nowhere["provider"], "not-installed-anywhere", "{nowhere}");
    assert_eq!(nowhere["from"]["source"], "missing", "{nowhere}");
    assert_eq!(nowhere["resources"], serde_json::json!(["c"]), "{nowhere}");
    assert_eq!(nowhere["state"], "failed", "{nowhere}");
    assert!(
        nowhere["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kinfra-provider-not-installed-anywhere")),
        "{nowhere}"
    );

    let api = row("api");
    assert_eq!(api["state"], "failed", "{api}");
    assert_eq!(api["resources"], serde_json::json!([]), "{api}");
    assert!(
        api["reason"]
            .as_str()
            .is_some_and(|r| r.contains("providers.api.token_file")),
        "{api}"
    );

    // The table says the same, and that the states come from the config.
    let out = p.run(&["providers", "instances"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("nowhere"))
        .unwrap_or_else(|| panic!("no nowhere row:\n{text}"));
    assert!(
        line.contains("missing") && line.contains("failed: provider `not-installed-anywhere`"),
        "{text}"
    );
    assert!(text.contains("not read from a running runtime"), "{text}");
}

/// A config with a command-provider instance used by a resource, an instance whose token
/// file is missing and one whose provider is nowhere (those two without resources: a
/// resource of theirs would refuse `runtime up`).
fn live_config(tag: &str) -> String {
    format!(
        "[project]\nname = \"plive\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.sh]\nprovider = \"command\"\n\
         [providers.locked]\nprovider = \"http-api\"\ntoken_file = \"missing-token\"\n\
         [providers.nowhere]\nprovider = \"not-installed-anywhere\"\n\
         [resources.flag]\nprovider = \"sh\"\ninterval = \"200ms\"\n\
         start = \"touch flag.state\"\n\
         stop = \"while [ ! -f release ]; do sleep 0.1; done; rm -f flag.state\"\n\
         status = \"test -f flag.state\"\n"
    )
}

/// `providers instances --json` as rows by instance name.
fn instance_rows(p: &Project) -> serde_json::Value {
    let out = p.run(&["providers", "instances", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON list");
    let mut by_name = serde_json::Map::new();
    for row in rows.as_array().into_iter().flatten() {
        let name = row["name"].as_str().unwrap_or_default().to_owned();
        by_name.insert(name, row.clone());
    }
    serde_json::Value::Object(by_name)
}

/// The runtime keeps each `[providers.X]` instance's lifecycle: `active` while its resource
/// runs, `ready` once `kinfra runtime stop` stopped it, `failed` naming the missing token
/// file or the provider that is nowhere (the runtime itself up); `/__status__` shows them
/// under `providers` (no token), `providers instances --json` reads the same live states,
/// a reload adds, removes and retries instances, and after `runtime down` the command falls
/// back to its offline computation.
#[test]
fn a_running_runtime_shows_live_instance_states() {
    use crate::support::{http_get, unique_tag, wait_for};
    use std::time::Duration;
    let tag = unique_tag("provider-live");
    let p = Project::with_config(&live_config(&tag));
    // The resource's stop command waits for this file; this test does not hold it back.
    p.write("release", "");
    let mut up = p.up(&[], &[]);
    let providers = |p: &Project| crate::cli::status_json(p)["providers"].clone();
    wait_for(Duration::from_secs(20), "sh active", || {
        (providers(&p)["sh"]["state"] == "active").then_some(())
    });
    assert_eq!(
        crate::cli::status_json(&p)["services"]["flag"]["state"],
        "running"
    );

    // /__status__ over HTTP carries the same block.
    let (code, body) = http_get(&up.dashboard_addr(), "/__status__").expect("GET /__status__");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    let live = &status["providers"];
    let sh = &live["sh"];
    assert_eq!(sh["provider"], "command", "{live}");
    assert_eq!(sh["source"], "builtin", "{live}");
    assert_eq!(sh["state"], "active", "{live}");
    assert_eq!(sh["resources"], serde_json::json!(["flag"]), "{live}");
    assert!(
        sh["since"].as_str().is_some_and(|s| s.len() >= 20),
        "{live}"
    );
    assert!(sh.get("reason").is_none(), "{live}");
    // The plain `runtime status` lists the instances under the services.
    let plain = stdout(&p.run(&["runtime", "status"]));
    assert!(
        plain.lines().any(|l| l.starts_with("sh ")
            && l.contains("command")
            && l.contains("active")
            && l.ends_with("flag")),
        "{plain}"
    );
    let locked = &live["locked"];
    assert_eq!(locked["state"], "failed", "{live}");
    assert_eq!(locked["resources"], serde_json::json!([]), "{live}");
    assert!(
        locked["reason"].as_str().is_some_and(|r| {
            r.contains("providers.locked.token_file") && r.contains("missing-token")
        }),
        "{live}"
    );
    let nowhere = &live["nowhere"];
    assert_eq!(nowhere["state"], "failed", "{live}");
    assert_eq!(nowhere["source"], "missing", "{live}");
    assert!(
        nowhere["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kinfra-provider-not-installed-anywhere")),
        "{live}"
    );

    // `providers instances` asks the runtime: the same states, marked live.
    let rows = instance_rows(&p);
    assert_eq!(rows.as_object().map(|o| o.len()), Some(3), "{rows}");
    assert_eq!(rows["sh"]["live"], true, "{rows}");
    assert_eq!(rows["sh"]["state"], "active", "{rows}");
    assert_eq!(rows["sh"]["from"]["source"], "builtin", "{rows}");
    assert_eq!(
        rows["sh"]["resources"],
        serde_json::json!(["flag"]),
        "{rows}"
    );
    assert!(rows["sh"]["since"].is_string(), "{rows}");
    assert_eq!(rows["locked"]["state"], "failed", "{rows}");
    assert!(
        rows["locked"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("missing-token")),
        "{rows}"
    );
    assert_eq!(rows["nowhere"]["from"]["source"], "missing", "{rows}");
    let out = p.run(&["providers", "instances"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("sh") && l.contains("active")),
        "{text}"
    );
    assert!(!text.contains("not read from a running runtime"), "{text}");
    assert!(text.contains("read from the running runtime"), "{text}");

    // Its resource stopped: the instance is ready again, live both ways.
    let out = p.run(&["runtime", "stop", "flag"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(Duration::from_secs(20), "sh ready", || {
        (providers(&p)["sh"]["state"] == "ready").then_some(())
    });
    let rows = instance_rows(&p);
    assert_eq!(rows["sh"]["state"], "ready", "{rows}");
    assert_eq!(rows["sh"]["live"], true, "{rows}");

    // A reload: the token file now exists (the failed instance is retried and ready), a
    // new instance is added, the one whose provider is nowhere is removed.
    let token = p.write("missing-token", "tok-live-1234\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p.write(
        "kinfra.toml",
        &live_config(&tag).replace(
            "[providers.nowhere]\nprovider = \"not-installed-anywhere\"\n",
            "[providers.extra]\nprovider = \"command\"\n",
        ),
    );
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let live = providers(&p);
    assert_eq!(live["locked"]["state"], "ready", "{live}");
    assert!(live["locked"].get("reason").is_none(), "{live}");
    assert_eq!(live["extra"]["state"], "ready", "{live}");
    assert!(live.get("nowhere").is_none(), "{live}");
    assert_eq!(live["sh"]["state"], "ready", "{live}");
    // Never the token.
    let (_, body) = http_get(&up.dashboard_addr(), "/__status__").expect("GET /__status__");
    assert!(!body.contains("tok-live-1234"), "{body}");

    let out = p.run(&["runtime", "down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(up.wait_exit(Duration::from_secs(30)).success());

    // No runtime: computed from the config, and said so.
    let rows = instance_rows(&p);
    assert_eq!(rows["sh"]["live"], false, "{rows}");
    assert_eq!(rows["sh"]["state"], "ready", "{rows}");
    assert_eq!(
        rows["sh"]["resources"],
        serde_json::json!(["flag"]),
        "{rows}"
    );
    assert!(rows["sh"].get("since").is_none(), "{rows}");
    let out = p.run(&["providers", "instances"]);
    assert!(
        stdout(&out).contains("not read from a running runtime"),
        "{}",
        stdout(&out)
    );
    assert!(crate::support::pids_tagged(&tag).is_empty());
}

/// At shutdown every instance is terminated, and the status read while the runtime stops
/// says so (the resource's stop command holds the shutdown until the test lets it go).
#[test]
fn instances_are_terminated_when_the_runtime_stops() {
    use crate::support::{kinfra_bin, unique_tag, wait_for};
    use std::time::Duration;
    let tag = unique_tag("provider-term");
    let p = Project::with_config(&live_config(&tag));
    let mut up = p.up(&[], &[]);
    wait_for(Duration::from_secs(20), "sh active", || {
        (crate::cli::status_json(&p)["providers"]["sh"]["state"] == "active").then_some(())
    });
    let mut down = std::process::Command::new(kinfra_bin())
        .args(["runtime", "down"])
        .current_dir(p.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn kinfra runtime down");
    let seen = wait_for(Duration::from_secs(20), "sh terminated", || {
        let out = p.run(&["runtime", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
        (status["providers"]["sh"]["state"] == "terminated").then_some(status)
    });
    let live = &seen["providers"];
    assert_eq!(live["locked"]["state"], "terminated", "{live}");
    assert!(
        live["sh"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stopping")),
        "{live}"
    );
    p.write("release", "");
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    let ended = wait_for(Duration::from_secs(30), "runtime down returns", || {
        down.try_wait().ok().flatten()
    });
    assert!(ended.success(), "runtime down: {ended}");
    assert!(crate::support::pids_tagged(&tag).is_empty());
}
