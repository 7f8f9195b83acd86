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
/// from, how many resources use it and its state, computed from the config: `ready` for an
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
    assert_eq!(sh["resources"], 2, "{sh}");
    assert_eq!(sh["state"], "ready", "{sh}");
    assert!(sh.get("reason").is_none(), "{sh}");

    let nowhere = row("nowhere");
    assert_eq!(nowhere["provider"], "not-installed-anywhere", "{nowhere}");
    assert_eq!(nowhere["from"]["source"], "missing", "{nowhere}");
    assert_eq!(nowhere["resources"], 1, "{nowhere}");
    assert_eq!(nowhere["state"], "failed", "{nowhere}");
    assert!(
        nowhere["reason"]
            .as_str()
            .is_some_and(|r| r.contains("kinfra-provider-not-installed-anywhere")),
        "{nowhere}"
    );

    let api = row("api");
    assert_eq!(api["state"], "failed", "{api}");
    assert_eq!(api["resources"], 0, "{api}");
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
