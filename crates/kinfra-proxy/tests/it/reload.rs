//! Replacing the routes of a running proxy (`ProxyServer::set_routes`, used by a config
//! reload): new paths and hosts route, removed ones stop, an invalid set changes nothing, and
//! requests in flight during the swap finish.

use crate::support::*;
use kinfra_core::config::ProxyConfig;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_path_routes_and_the_old_one_gets_the_404_page() {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(vec![service_route(None, "/old", "api", true)], dir.path()),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();
    let r = get(addr, "/old/x").await;
    assert_eq!((r.status, backend_of(&r)), (200, "api".into()));
    assert_eq!(get(addr, "/new/x").await.status, 404);

    proxy
        .set_routes(vec![service_route(None, "/new", "api", true)])
        .await
        .unwrap();
    let r = get(addr, "/new/x").await;
    assert_eq!((r.status, backend_of(&r)), (200, "api".into()));
    assert_eq!(
        r.json()["path"],
        "/x",
        "strip_prefix of the new route applies"
    );
    let r = get(addr, "/old/x").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (404, Some("no_route"))
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_host_stops_routing_and_an_invalid_set_changes_nothing() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let control = FakeControl::new();
    control.running("a", a.port());
    control.running("b", b.port());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(
            vec![
                service_route(Some("a.test"), "/", "a", false),
                service_route(Some("b.test"), "/", "b", false),
            ],
            dir.path(),
        ),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();
    assert_eq!(backend_of(&get_host(addr, "b.test", "/").await), "b");

    proxy
        .set_routes(vec![
            service_route(Some("a.test"), "/", "a", false),
            upstream_route("/fixed", &[c.url()], false),
        ])
        .await
        .unwrap();
    assert_eq!(backend_of(&get_host(addr, "a.test", "/").await), "a");
    let r = get_host(addr, "b.test", "/").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (404, Some("no_route"))
    );
    assert_eq!(backend_of(&get_host(addr, "b.test", "/fixed").await), "c");

    // An upstream that cannot be used: refused, and the table in place keeps serving.
    let err = proxy
        .set_routes(vec![upstream_route("/", &["ftp://nope".into()], false)])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("routes[0]"), "{err}");
    assert_eq!(backend_of(&get_host(addr, "a.test", "/").await), "a");
    assert_eq!(get_host(addr, "other.test", "/").await.status, 404);

    // The services' state applies to the new table: maintenance too.
    proxy.set_maintenance(Some("a"), true);
    proxy
        .set_routes(vec![service_route(None, "/", "a", false)])
        .await
        .unwrap();
    let r = get(addr, "/").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (503, Some("maintenance"))
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_during_the_swap_finishes() {
    // A backend that answers only when the test says so.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_head(&mut stream).await;
        arrived_tx.send(head).unwrap();
        release_rx.await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nheld done")
            .await
            .unwrap();
    });
    let control = FakeControl::new();
    control.running("held", backend.port());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(
            vec![service_route(None, "/held", "held", false)],
            dir.path(),
        ),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();

    let in_flight = tokio::spawn(async move { get(addr, "/held").await });
    let head = tokio::time::timeout(WAIT, arrived_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(head.starts_with("GET /held "), "{head}");
    proxy
        .set_routes(vec![service_route(None, "/other", "held", false)])
        .await
        .unwrap();
    assert_eq!(get(addr, "/held").await.status, 404, "the new table serves");
    release_tx.send(()).unwrap();
    let r = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "held done"));
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_route_host_gets_a_certificate() {
    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(
        vec![service_route(Some("one.test"), "/", "one", false)],
        dir.path(),
    );
    opts.config = ProxyConfig {
        https: Some("127.0.0.1:0".into()),
        ..opts.config
    };
    let proxy = start(opts, &control).await;
    let certs = proxy.cert_resolver();
    assert_eq!(certs.names(), ["localhost", "one.test"]);
    let one = certs.get(Some("one.test")).unwrap();
    proxy
        .set_routes(vec![
            service_route(Some("one.test"), "/", "one", false),
            service_route(Some("Two.test"), "/", "two", false),
        ])
        .await
        .unwrap();
    assert_eq!(certs.names(), ["localhost", "one.test", "two.test"]);
    assert!(
        std::sync::Arc::ptr_eq(&one, &certs.get(Some("one.test")).unwrap()),
        "a certificate already served is kept"
    );
    assert!(
        dir.path()
            .join("certs/self-signed/two.test/cert.pem")
            .is_file()
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}
