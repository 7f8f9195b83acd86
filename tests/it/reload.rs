//! What a reload applies through the binary: `[[routes]]` reach the running proxy (by
//! `kinfra runtime reload` and by SIGHUP), and keys that cannot change live are reported as
//! needing a restart while status keeps describing what runs.

use crate::support::{Project, Up, http_get, pids_tagged, stderr, stdout, unique_tag, wait_for};
use std::net::TcpStream;
use std::time::Duration;

/// GET through the proxy: status code and body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let (code, _, body) = crate::proxy::get(addr, path, "text/html");
    (code, body)
}

fn proxy_addr(up: &Up) -> String {
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    line.split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("proxy address in the banner")
        .to_string()
}

fn config(tag: &str, route_path: &str, dashboard_listen: &str) -> String {
    format!(
        "[project]\nname = \"rr\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"{dashboard_listen}\"\n[proxy]\nhttp = \"127.0.0.1:0\"\n\
         [services.app]\ncommand = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"${{PORT}}\"]\n\
         port = \"auto\"\nhealth = {{ http = \"/\", interval = \"300ms\" }}\n\
         [[routes]]\npath = \"{route_path}\"\nstrip_prefix = true\nservice = \"app\"\n"
    )
}

/// Waits until `path` answers 200 with the test file through the proxy.
fn wait_routed(proxy: &str, path: &str) {
    wait_for(Duration::from_secs(10), &format!("{path} routed"), || {
        let (code, body) = get(proxy, path);
        (code == 200 && body == "served\n").then_some(())
    });
}

#[test]
fn a_reload_applies_route_changes_by_command_and_by_sighup() {
    let tag = unique_tag("reload-routes");
    let p = Project::with_config(&config(&tag, "/old", "127.0.0.1:0"));
    p.write("hello.txt", "served\n");
    let mut up = p.up(&[], &[]);
    let proxy = proxy_addr(&up);
    wait_routed(&proxy, "/old/hello.txt");
    let (code, _) = get(&proxy, "/new/hello.txt");
    assert_eq!(code, 404, "a path that is not routed yet");
    let app_pid = crate::cli::running_pid(&p, "app").expect("app pid");

    // `kinfra runtime reload`: the new path answers, the old one gets the 404 page.
    p.write("kinfra.toml", &config(&tag, "/new", "127.0.0.1:0"));
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("routes applied"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("needs_restart"), "{}", stdout(&out));
    let (code, body) = get(&proxy, "/new/hello.txt");
    assert_eq!((code, body.as_str()), (200, "served\n"), "the new path");
    let (code, body) = get(&proxy, "/old/hello.txt");
    assert_eq!(code, 404, "the removed path: {body}");
    assert!(
        body.contains("<html") || body.contains("<!DOCTYPE"),
        "the 404 page: {body}"
    );
    // Status shows the routes that run, and nothing waits for a restart.
    let status = crate::cli::status_json(&p);
    assert_eq!(status["routes"][0]["path"], "/new", "{status}");
    assert_eq!(status["pending_restart"], serde_json::json!([]), "{status}");

    // SIGHUP does the same; a route on a new host also opens the dashboard's paths on it.
    let with_host = config(&tag, "/third", "127.0.0.1:0")
        + "[[routes]]\nhost = \"added.kinfra.test\"\npath = \"/\"\nservice = \"app\"\n";
    let (code, _, _) = crate::proxy::get_host(&proxy, "/__status__", "added.kinfra.test");
    assert_eq!(code, 421, "a host no route names yet");
    p.write("kinfra.toml", &with_host);
    up.signal(libc::SIGHUP);
    up.wait_for_line(Duration::from_secs(10), "routes applied");
    let (code, body) = get(&proxy, "/third/hello.txt");
    assert_eq!(
        (code, body.as_str()),
        (200, "served\n"),
        "the path set by SIGHUP"
    );
    let (code, _) = get(&proxy, "/new/hello.txt");
    assert_eq!(code, 404, "the path removed by SIGHUP");
    let (code, _, body) = crate::proxy::get_host(&proxy, "/hello.txt", "added.kinfra.test");
    assert_eq!(
        (code, body.as_str()),
        (200, "served\n"),
        "the new host's route"
    );
    let (code, _, body) = crate::proxy::get_host(&proxy, "/__status__", "added.kinfra.test");
    assert_eq!(code, 200, "the dashboard on the new route host: {body}");
    // Routes alone never restart a service.
    assert_eq!(crate::cli::running_pid(&p, "app"), Some(app_pid));

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}

#[test]
fn a_listen_address_change_is_reported_as_needing_a_restart_and_nothing_else_changes() {
    let tag = unique_tag("reload-listen");
    let p = Project::with_config(&config(&tag, "/app", "127.0.0.1:0"));
    p.write("hello.txt", "served\n");
    let mut up = p.up(&[], &[]);
    let proxy = proxy_addr(&up);
    let dashboard = up.dashboard_addr();
    wait_routed(&proxy, "/app/hello.txt");
    let app_pid = crate::cli::running_pid(&p, "app").expect("app pid");

    // A free port that is not the one in use: the new address must not be bound by a reload.
    let other = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let other_addr = other.local_addr().expect("addr").to_string();
    drop(other);
    p.write("kinfra.toml", &config(&tag, "/app", &other_addr));
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("needs_restart: dashboard.listen"),
        "{}",
        stdout(&out)
    );

    // The dashboard still answers where it ran; nothing listens on the new address.
    let (code, body) = http_get(&dashboard, "/__status__").expect("the dashboard still answers");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(
        status["pending_restart"],
        serde_json::json!(["dashboard.listen"]),
        "{status}"
    );
    assert!(
        TcpStream::connect(&other_addr).is_err(),
        "a reload bound the new dashboard address"
    );
    // `runtime status` says so too.
    let out = p.run(&["runtime", "status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("pending restart: dashboard.listen"),
        "{}",
        stdout(&out)
    );
    // Nothing else changed: the same process serves the same route.
    assert_eq!(crate::cli::running_pid(&p, "app"), Some(app_pid));
    let (code, _) = get(&proxy, "/app/hello.txt");
    assert_eq!(code, 200);

    // Reverting the edit clears the pending restart.
    p.write("kinfra.toml", &config(&tag, "/app", "127.0.0.1:0"));
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = crate::cli::status_json(&p);
    assert_eq!(status["pending_restart"], serde_json::json!([]), "{status}");

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());
}
