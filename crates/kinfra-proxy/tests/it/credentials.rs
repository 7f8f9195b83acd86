//! kinfra's own credentials stay with kinfra: the dashboard's session cookie never reaches a
//! service, and only the proxy names the client to the dashboard (`X-Kinfra-Client`).

use crate::support::*;
use std::time::Duration;

async fn proxy_with_dashboard(
    listen: &str,
) -> (
    Backend,
    Backend,
    kinfra_proxy::ProxyServer,
    tempfile::TempDir,
) {
    let (dash, app) = (Backend::start("dash").await, Backend::start("app").await);
    let control = FakeControl::new();
    control.running("app", app.port());
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![service_route(None, "/", "app", false)], dir.path());
    opts.config.http = Some(listen.to_owned());
    opts.dashboard_addr = Some(dash.addr);
    let proxy = start(opts, &control).await;
    (dash, app, proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_never_receives_the_dashboard_session_cookie() {
    let (_dash, _app, proxy, _dir) = proxy_with_dashboard("127.0.0.1:0").await;
    let addr = proxy.http_addr().unwrap();

    let r = get_with(
        addr,
        "/page",
        &[("cookie", "theme=dark; kinfra_session=s3cr3t-id; cart=7")],
    )
    .await;
    assert_eq!(backend_of(&r), "app");
    assert_eq!(r.json()["headers"]["cookie"], "theme=dark; cart=7");
    assert!(!r.body.contains("s3cr3t-id"), "{}", r.body);

    // Only the session cookie: no Cookie field at all.
    let r = get_with(addr, "/page", &[("cookie", "kinfra_session=s3cr3t-id")]).await;
    assert_eq!(backend_of(&r), "app");
    assert!(r.json()["headers"].get("cookie").is_none(), "{}", r.body);

    // Other cookies pass untouched, even ones whose name starts the same.
    let r = get_with(addr, "/page", &[("cookie", "kinfra_sessions=1; a=b=c")]).await;
    assert_eq!(r.json()["headers"]["cookie"], "kinfra_sessions=1; a=b=c");

    // The dashboard gets its cookie.
    let r = get_with(
        addr,
        "/kinfra",
        &[("cookie", "theme=dark; kinfra_session=s3cr3t-id")],
    )
    .await;
    assert_eq!(backend_of(&r), "dash");
    assert_eq!(
        r.json()["headers"]["cookie"],
        "theme=dark; kinfra_session=s3cr3t-id"
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_told_the_client_address_and_a_forged_one_is_dropped() {
    let (_dash, _app, proxy, _dir) = proxy_with_dashboard("127.0.0.1:0").await;
    let addr = proxy.http_addr().unwrap();

    let forged = [("x-kinfra-client", "203.0.113.7")];
    let r = get_with(addr, "/__status__", &forged).await;
    assert_eq!(backend_of(&r), "dash");
    assert_eq!(r.json()["headers"]["x-kinfra-client"], "127.0.0.1");
    assert!(!r.body.contains("203.0.113.7"), "{}", r.body);

    // Two forged copies: still exactly the proxy's one.
    let r = send(
        addr,
        request(
            "/metrics",
            "localhost",
            &[
                ("x-kinfra-client", "127.0.0.1"),
                ("x-kinfra-client", "198.51.100.1"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(backend_of(&r), "dash");
    assert_eq!(r.json()["headers"]["x-kinfra-client"], "127.0.0.1");
    assert!(!r.body.contains("198.51.100.1"), "{}", r.body);

    // A service never sees the header, forged or not.
    let r = get_with(addr, "/page", &forged).await;
    assert_eq!(backend_of(&r), "app");
    assert!(
        r.json()["headers"].get("x-kinfra-client").is_none(),
        "{}",
        r.body
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_is_named_by_its_bare_address() {
    let (_dash, _app, proxy, _dir) = proxy_with_dashboard("[::1]:0").await;
    let addr = proxy.http_addr().unwrap();
    let r = get_with(addr, "/kinfra", &[("x-kinfra-client", "127.0.0.1")]).await;
    assert_eq!(backend_of(&r), "dash");
    assert_eq!(r.json()["headers"]["x-kinfra-client"], "::1");
    proxy.shutdown(Duration::from_secs(2)).await;
}
