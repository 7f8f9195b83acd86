//! Fallback pages by service state, in HTML and JSON; maintenance flags; 404; overrides.

use crate::support::*;
use kinfra_core::{Health, ServiceState};
use std::time::Duration;

/// Waits until the proxy answers `path` with a page of this code.
async fn wait_page(addr: std::net::SocketAddr, path: &str, code: &str) -> Resp {
    wait_for(&format!("page {code}"), || async {
        let r = get(addr, path).await;
        (r.header("x-kinfra-page") == Some(code)).then_some(r)
    })
    .await
}

fn assert_page_headers(r: &Resp, status: u16, retry_after: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("retry-after"), Some(retry_after));
    assert_eq!(
        r.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_state_gets_its_page_in_html_and_json() {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.set("api", ServiceState::Pending, Health::Unknown, None, "");
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(vec![service_route(None, "/", "api", false)], dir.path()),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();

    // (state, health, message, page code, template marker, retry-after, words on the page)
    let cases: &[(ServiceState, Health, &str, &str, &str, &str, &str)] = &[
        (
            ServiceState::Pending,
            Health::Unknown,
            "",
            "service_starting",
            "data-kind=\"loading\"",
            "2",
            "api is about to start",
        ),
        (
            ServiceState::Starting,
            Health::Unknown,
            "",
            "service_starting",
            "data-kind=\"loading\"",
            "2",
            "api is starting",
        ),
        (
            ServiceState::Backoff,
            Health::Unknown,
            "exited with code 3",
            "service_unavailable",
            "data-kind=\"error\"",
            "5",
            "api stopped unexpectedly",
        ),
        (
            ServiceState::Failed,
            Health::Unknown,
            "crash loop: 5 failures in 60s\n    at main.rs:1",
            "service_unavailable",
            "data-kind=\"error\"",
            "10",
            "api is down",
        ),
        (
            ServiceState::Stopped,
            Health::Unknown,
            "stopped by user",
            "service_unavailable",
            "data-kind=\"error\"",
            "10",
            "api is stopped",
        ),
        (
            ServiceState::Running,
            Health::Unhealthy,
            "probe GET /healthz: 500",
            "service_unhealthy",
            "data-kind=\"error\"",
            "5",
            "api is not healthy",
        ),
        (
            ServiceState::Maintenance,
            Health::Unknown,
            "",
            "maintenance",
            "data-kind=\"maintenance\"",
            "30",
            "api is down for maintenance",
        ),
    ];
    for (state, health, message, code, marker, retry, words) in cases {
        control.set("api", *state, *health, Some(api.port()), message);
        let r = wait_page(addr, "/some/page", code).await;
        assert_page_headers(&r, 503, retry);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(r.body.contains(marker), "{state:?}: {}", r.body);
        assert!(
            r.body.contains(words),
            "{state:?} should say `{words}`: {}",
            r.body
        );
        assert!(
            r.body
                .contains(&format!("http-equiv=\"refresh\" content=\"{retry}\""))
        );
        assert!(!r.body.contains("{{"), "unfilled template");
        if let Some(first_line) = message.lines().next().filter(|l| !l.is_empty()) {
            assert!(r.body.contains(first_line), "the last error is shown");
            assert!(!r.body.contains("main.rs"), "no stack traces");
        }

        let j = get_with(addr, "/some/page", &[("accept", "application/json")]).await;
        assert_page_headers(&j, 503, retry);
        assert_eq!(j.header("content-type"), Some("application/json"));
        let v = j.json();
        assert_eq!(v["error"], *code);
        assert_eq!(v["service"], "api");
        assert_eq!(v["status"], 503);
        assert_eq!(v["retry_after"].as_u64().unwrap().to_string(), *retry);
    }

    // HEAD gets the headers only.
    let head = send(
        addr,
        hyper::Request::builder()
            .method("HEAD")
            .uri("/")
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((head.status, head.body.as_str()), (503, ""));

    // Running again: proxied.
    control.running("api", api.port());
    let r = wait_for("proxying", || async {
        let r = get(addr, "/x").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(backend_of(&r), "api");
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_per_service_global_and_from_config() {
    let (api, web) = (Backend::start("api").await, Backend::start("web").await);
    let control = FakeControl::new();
    control.running("api", api.port());
    control.running("web", web.port());
    let dir = tempfile::tempdir().unwrap();
    let routes = vec![
        service_route(None, "/api", "api", false),
        service_route(None, "/", "web", false),
    ];
    let proxy = start(options(routes.clone(), dir.path()), &control).await;
    let addr = proxy.http_addr().unwrap();

    proxy.set_maintenance(Some("api"), true);
    let r = get(addr, "/api/x").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (503, Some("maintenance"))
    );
    assert!(r.body.contains("api is down for maintenance"));
    assert_eq!(
        get(addr, "/").await.status,
        200,
        "other services are not affected"
    );
    proxy.set_maintenance(None, true);
    let r = get_with(addr, "/", &[("accept", "application/json")]).await;
    assert_eq!(r.json()["error"], "maintenance");
    assert!(r.json()["service"].is_null());
    assert_eq!(proxy.maintenance(), (true, vec!["api".to_owned()]));
    proxy.set_maintenance(None, false);
    proxy.set_maintenance(Some("api"), false);
    assert_eq!(get(addr, "/api/x").await.status, 200);
    proxy.shutdown(Duration::from_secs(2)).await;

    // Global maintenance from config.
    let mut opts = options(routes, dir.path());
    opts.config.maintenance = true;
    let proxy = start(opts, &control).await;
    let r = get(proxy.http_addr().unwrap(), "/").await;
    assert_eq!(r.header("x-kinfra-page"), Some("maintenance"));
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_template_overrides() {
    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages");
    std::fs::create_dir_all(&pages).unwrap();
    std::fs::write(
        pages.join("loading.html"),
        "<p>custom loading for {{service}} ({{state}}) every {{refresh}}s</p>",
    )
    .unwrap();
    let mut opts = options(
        vec![service_route(Some("app.test"), "/", "api", false)],
        dir.path(),
    );
    opts.config.pages_dir = Some(pages);
    control.set("api", ServiceState::Starting, Health::Unknown, Some(1), "");
    let proxy = start(opts, &control).await;
    let addr = proxy.http_addr().unwrap();

    let r = get_host(addr, "app.test", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "<p>custom loading for api (starting) every 2s</p>");
    let r = get_host(addr, "other.test", "/").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (404, Some("no_route"))
    );
    assert!(
        r.body.contains("data-kind=\"error\""),
        "the embedded error page is kept"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    proxy.shutdown(Duration::from_secs(2)).await;
}
