//! Routing rules, forwarding headers, load balancing and keep-alive pooling.

use crate::support::*;
use kinfra_core::{Health, ServiceState};
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_before_path_longest_prefix_and_strip_prefix() {
    let (root, api, api2, app, fixed) = (
        Backend::start("root").await,
        Backend::start("api").await,
        Backend::start("api2").await,
        Backend::start("app").await,
        Backend::start("fixed").await,
    );
    let control = FakeControl::new();
    for b in [&root, &api, &api2, &app] {
        control.running(&b.name, b.port());
    }
    let dir = tempfile::tempdir().unwrap();
    let routes = vec![
        service_route(None, "/", "root", false),
        service_route(None, "/api", "api", true),
        service_route(None, "/api/v2", "api2", false),
        service_route(Some("app.example.com"), "/", "app", false),
        upstream_route("/fixed", &[fixed.url()], true),
    ];
    let proxy = start(options(routes, dir.path()), &control).await;
    let addr = proxy.http_addr().unwrap();

    let r = get(addr, "/").await;
    assert_eq!((r.status, backend_of(&r)), (200, "root".into()));
    let r = get(addr, "/api/users?id=7").await;
    assert_eq!(backend_of(&r), "api");
    assert_eq!(
        r.json()["path"],
        "/users?id=7",
        "prefix stripped, query kept"
    );
    let r = get(addr, "/api").await;
    assert_eq!(r.json()["path"], "/");
    let r = get(addr, "/apix").await;
    assert_eq!(backend_of(&r), "root", "prefixes match whole segments");
    let r = get(addr, "/api/v2/items").await;
    assert_eq!(backend_of(&r), "api2", "longest prefix wins");
    assert_eq!(
        r.json()["path"],
        "/api/v2/items",
        "no strip_prefix, path kept"
    );
    let r = get_host(addr, "app.example.com:8080", "/api/users").await;
    assert_eq!(backend_of(&r), "app", "host before path");
    let r = get_host(addr, "APP.example.com", "/").await;
    assert_eq!(backend_of(&r), "app", "host match ignores case");
    let r = get_host(addr, "other.example.com", "/api/x").await;
    assert_eq!(backend_of(&r), "api");
    let r = get(addr, "/fixed/thing").await;
    assert_eq!(
        (backend_of(&r), r.json()["path"].as_str()),
        ("fixed".into(), Some("/thing"))
    );

    proxy.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_paths_go_to_the_dashboard_even_in_maintenance() {
    let (dash, app) = (Backend::start("dash").await, Backend::start("app").await);
    let control = FakeControl::new();
    control.running("app", app.port());
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![service_route(None, "/", "app", false)], dir.path());
    opts.dashboard_addr = Some(dash.addr);
    let proxy = start(opts, &control).await;
    let addr = proxy.http_addr().unwrap();

    for path in [
        "/kinfra",
        "/kinfra/app.js",
        "/__status__",
        "/__events__",
        "/__action__/restart/app",
        "/__logs__/app",
        "/__fleet__",
        "/__fleet__/events",
        "/__commands__/db",
        "/metrics",
        "/healthz",
    ] {
        let r = get(addr, path).await;
        assert_eq!(backend_of(&r), "dash", "{path}");
        assert_eq!(r.json()["path"], path, "{path} is forwarded as it is");
    }
    assert_eq!(backend_of(&get(addr, "/kinfrax").await), "app");
    assert_eq!(backend_of(&get(addr, "/").await), "app");

    proxy.set_maintenance(None, true);
    let r = get(addr, "/").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (503, Some("maintenance"))
    );
    assert_eq!(backend_of(&get(addr, "/__status__").await), "dash");
    // Every service down: the dashboard still answers.
    control.set(
        "app",
        ServiceState::Failed,
        Health::Unknown,
        None,
        "exited with code 1",
    );
    proxy.set_maintenance(None, false);
    wait_for("the failed page", || async {
        (get(addr, "/").await.status == 503).then_some(())
    })
    .await;
    assert_eq!(backend_of(&get(addr, "/kinfra").await), "dash");

    // The dashboard down: a page, not a raw error.
    dash.kill();
    let r = get(addr, "/kinfra").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("dashboard"), "{}", r.body);
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_via_and_hop_by_hop() {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(vec![service_route(None, "/", "api", false)], dir.path()),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();

    let r = send(
        addr,
        request(
            "/h",
            "shop.test:9100",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("x-keep-me", "yes"),
            ],
        ),
    )
    .await
    .unwrap();
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "the edge sets the scheme it saw"
    );
    assert_eq!(h["x-forwarded-host"], "shop.test:9100");
    assert_eq!(h["host"], "shop.test:9100", "Host is kept");
    assert_eq!(h["via"], "1.1 kinfra");
    assert_eq!(h["x-keep-me"], "yes");
    for gone in ["x-drop-me", "keep-alive", "proxy-connection", "te"] {
        assert!(h.get(gone).is_none(), "{gone} was forwarded: {h}");
    }
    assert_eq!(r.header("via"), Some("1.1 kinfra"));
    assert!(
        r.header("keep-alive").is_none(),
        "upstream Keep-Alive is hop-by-hop"
    );
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_with_a_dead_replica_and_pooled_connections() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let urls = [a.url(), format!("http://{dead}"), b.url()];
    let proxy = start(
        options(vec![upstream_route("/", &urls, false)], dir.path()),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();

    // One client connection, many requests: every one answered by a live replica.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut names = Vec::new();
    for i in 0..60 {
        sender.ready().await.unwrap();
        let resp = sender
            .send_request(request(&format!("/n{i}"), "localhost", &[]))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        let r = collect(resp).await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        names.push(backend_of(&r));
    }
    let counts = tally(names);
    assert!(counts["a"] >= 20 && counts["b"] >= 20, "{counts:?}");
    // Upstream keep-alive: far fewer upstream connections than requests.
    let conns = a.connections.load(Ordering::SeqCst) + b.connections.load(Ordering::SeqCst);
    assert!(conns <= 6, "{conns} upstream connections for 60 requests");
    proxy.shutdown(std::time::Duration::from_secs(2)).await;
}
