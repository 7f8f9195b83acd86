//! The proxy inside the runtime: requests reach a supervised service through its route, and
//! the proxy answers with the right page when the service is stopped or in maintenance.

use crate::support::{Project, http_get, pids_tagged, stderr, unique_tag, wait_for};
use std::time::Duration;

/// A raw GET (`Connection: close`): status code, lower-cased head, body.
pub(crate) fn get(addr: &str, path: &str, accept: &str) -> (u16, String, String) {
    request(addr, path, addr, accept)
}

/// [`get`] with another `Host`.
pub(crate) fn get_host(addr: &str, path: &str, host: &str) -> (u16, String, String) {
    request(addr, path, host, "*/*")
}

fn request(addr: &str, path: &str, host: &str, accept: &str) -> (u16, String, String) {
    crate::support::raw_exchange(
        addr,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        ),
        Duration::from_secs(10),
    )
}

#[test]
fn routes_pages_by_state_maintenance_and_dashboard_through_the_proxy() {
    let tag = unique_tag("proxy");
    let p = Project::with_config(&format!(
        "[project]\nname = \"px\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nhttp = \"127.0.0.1:0\"\n\
         [services.app]\ncommand = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"${{PORT}}\"]\n\
         port = \"auto\"\nhealth = {{ http = \"/\", interval = \"300ms\" }}\n\
         [[routes]]\npath = \"/app\"\nstrip_prefix = true\nservice = \"app\"\n"
    ));
    p.write("hello.txt", "hello through the proxy\n");
    let mut up = p.up(&[], &[]);
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    let proxy = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("proxy address")
        .to_string();
    let dashboard = up.dashboard_addr();
    wait_for(Duration::from_secs(30), "app healthy", || {
        let (_, body) = http_get(&dashboard, "/__status__").ok()?;
        body.contains("\"healthy\"").then_some(())
    });
    // python's http.server serves the working directory: our file, through the route. The
    // proxy follows state changes through events, a moment after the status shows them.
    let (code, head, body) = wait_for(Duration::from_secs(5), "the app through the proxy", || {
        let r = get(&proxy, "/app/hello.txt", "*/*");
        (r.0 == 200).then_some(r)
    });
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(body, "hello through the proxy\n");
    assert!(head.contains("via:"), "{head}");

    // The dashboard answers through the proxy too.
    let (code, _, body) = get(&proxy, "/__status__", "application/json");
    assert_eq!(code, 200);
    assert!(body.contains("\"project\":\"px\""), "{body}");

    // Stopped: a 503 page naming the service, HTML or JSON as asked.
    let out = p.run(&["runtime", "stop", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, head, body) = wait_for(Duration::from_secs(5), "the stopped page", || {
        let r = get(&proxy, "/app/hello.txt", "text/html");
        (r.1.contains("x-kinfra-page")).then_some(r)
    });
    assert_eq!(code, 503, "{head}\n{body}");
    assert!(
        head.contains("retry-after:") && head.contains("cache-control: no-store"),
        "{head}"
    );
    assert!(body.contains("app"), "{body}");
    let (code, _, body) = get(&proxy, "/app/hello.txt", "application/json");
    assert_eq!(code, 503);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json page");
    assert_eq!(v["service"], "app", "{v}");

    // Maintenance: the maintenance page, while the process runs again.
    let out = p.run(&["runtime", "start", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = p.run(&["runtime", "maintenance", "on", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = wait_for(Duration::from_secs(10), "the maintenance page", || {
        let (code, head, _) = get(&proxy, "/app/hello.txt", "text/html");
        (code == 503 && head.contains("x-kinfra-page: maintenance")).then_some(head)
    });
    assert!(page.contains("retry-after:"));
    let out = p.run(&["runtime", "maintenance", "off", "app"]);
    assert!(out.status.success());
    wait_for(Duration::from_secs(20), "the app again", || {
        let (code, _, _) = get(&proxy, "/app/hello.txt", "*/*");
        (code == 200).then_some(())
    });

    // /metrics counts the proxied requests by route and status class, with latency buckets.
    let (code, metrics) = http_get(&dashboard, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    let count = |labels: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("kinfra_proxy_requests_total{{{labels}}} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("route=\"app\",code=\"2xx\"") >= 1, "{metrics}");
    assert!(count("route=\"app\",code=\"5xx\"") >= 2, "{metrics}");
    assert!(count("route=\"dashboard\",code=\"2xx\"") >= 1, "{metrics}");
    assert!(
        metrics.contains(
            "kinfra_proxy_request_duration_seconds_bucket{route=\"app\",code=\"2xx\",le=\"+Inf\"}"
        ),
        "{metrics}"
    );

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    wait_for(Duration::from_secs(5), "nothing left", || {
        pids_tagged(&tag).is_empty().then_some(())
    });
}
