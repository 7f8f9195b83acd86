//! Start-up claims the README makes, through the binary: a dashboard beyond loopback needs a
//! token (from the config or `KINFRA_DASHBOARD_TOKEN`), and `kinfra.yaml` / `kinfra.json`
//! are found without `-c` like `kinfra.toml`.

use crate::support::{Project, http_get, pids_tagged, stderr, stdout, unique_tag};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn config(tag: &str, listen: &str) -> String {
    format!(
        "[project]\nname = \"st\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"{listen}\"\n[proxy]\nenabled = false\n\
         [services.web]\ncommand = \"exec sleep 1000\"\n"
    )
}

/// POST an action with a bearer token; the status code.
fn post_action(addr: &str, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_dashboard_beyond_loopback_needs_a_token_and_takes_it_from_the_environment() {
    let tag = unique_tag("nonloop");
    // Every interface (the test only ever connects through loopback).
    let p = Project::with_config(&config(&tag, "0.0.0.0:0"));
    let out = p.run(&["runtime", "up"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("0.0.0.0:0") && err.contains("KINFRA_DASHBOARD_TOKEN"),
        "{err}"
    );
    assert!(pids_tagged(&tag).is_empty(), "a service started anyway");
    assert!(!p.path().join(".kinfra/control.sock").exists());

    // The same config with the token from the environment starts, and that token acts.
    let token = "env-token-for-the-test-0123456789";
    let mut up = p.up(&[], &[("KINFRA_DASHBOARD_TOKEN", token)]);
    let addr = up.dashboard_addr().replace("0.0.0.0", "127.0.0.1");
    crate::support::wait_for(Duration::from_secs(20), "web running", || {
        let (_, body) = http_get(&addr, "/__status__").ok()?;
        body.contains("\"running\"").then_some(())
    });
    assert_eq!(post_action(&addr, "/__action__/restart/web", "wrong"), 401);
    assert_eq!(post_action(&addr, "/__action__/restart/web", token), 200);
    // A token from the environment is never written into the state dir.
    let stored =
        std::fs::read_to_string(p.path().join(".kinfra/dashboard.token")).unwrap_or_default();
    assert!(
        !stored.contains(token),
        "the environment's token was written to disk"
    );
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn kinfra_yaml_and_kinfra_json_are_found_without_c() {
    let p = Project::new();
    p.write(
        "kinfra.yaml",
        "project:\n  name: from-yaml\nservices:\n  web:\n    command: exec sleep 1000\n",
    );
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("kinfra.yaml") && stdout(&out).contains("from-yaml"),
        "{}",
        stdout(&out)
    );

    let p = Project::new();
    p.write(
        "kinfra.json",
        r#"{"project": {"name": "from-json"}, "services": {"web": {"command": "exec sleep 1000"}}}"#,
    );
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("kinfra.json") && stdout(&out).contains("from-json"),
        "{}",
        stdout(&out)
    );
    // And `runtime up` runs it: the project name comes from the JSON file.
    let tag = unique_tag("json");
    p.write(
        "kinfra.json",
        &format!(
            r#"{{"project": {{"name": "from-json"}}, "env": {{"KINFRA_TEST_TAG": "{tag}"}},
               "dashboard": {{"listen": "127.0.0.1:0"}}, "proxy": {{"enabled": false}},
               "services": {{"web": {{"command": "exec sleep 1000"}}}}}}"#
        ),
    );
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let (code, body) = http_get(&addr, "/__status__").expect("status");
    assert_eq!(code, 200);
    assert!(body.contains("\"project\":\"from-json\""), "{body}");
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}
