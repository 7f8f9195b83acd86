//! Start and stop: a taken port fails at once, graceful shutdown lets requests finish, the
//! grace period is bounded, threads are joined, and the proxy restarts in the same process.

use crate::support::*;
use kinfra_proxy::ProxyError;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![], dir.path());
    opts.config.http = Some(taken.local_addr().unwrap().to_string());
    let control: std::sync::Arc<dyn kinfra_core::view::RuntimeControl> = control;
    // The bound only catches a start that waits for the port instead of failing.
    let err = tokio::time::timeout(
        WAIT,
        kinfra_proxy::ProxyServer::start(opts.clone(), control.clone()),
    )
    .await
    .expect("a taken port fails at once, without retries")
    .unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::Bind {
                key: "proxy.http",
                ..
            }
        ),
        "{err}"
    );

    opts.config.http = Some("not an address".into());
    let err = kinfra_proxy::ProxyServer::start(opts.clone(), control.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::InvalidListen { .. }), "{err}");
    opts.config.http = None;
    let err = kinfra_proxy::ProxyServer::start(opts, control)
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::NoListener), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_requests_in_flight_finish() {
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

    let in_flight: Vec<_> = (0..3)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/slow?ms=700&i={i}")).await }))
        .collect();
    wait_for("the requests to be in flight", || async {
        (proxy.in_flight() == 3).then_some(())
    })
    .await;
    // A grace period far longer than the requests: shutdown ends when they are done, not
    // when the grace is over (the bound below is well under it).
    let shutdown = tokio::spawn(proxy.shutdown(Duration::from_secs(120)));
    // New connections are refused while the old requests finish.
    wait_for("the listener to close", || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    for r in in_flight {
        let r = r.await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "slow done"));
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown ends with the last request, not with the grace period")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_shutdown() {
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
    // The backend would answer after two minutes; the grace period is 300 ms.
    let stuck = tokio::spawn(async move { send(addr, request("/slow?ms=120000", "l", &[])).await });
    wait_for("the request to be in flight", || async {
        (proxy.in_flight() == 1).then_some(())
    })
    .await;
    tokio::time::timeout(WAIT, proxy.shutdown(Duration::from_millis(300)))
        .await
        .expect("the grace period bounds shutdown");
    let r = tokio::time::timeout(WAIT, stuck).await.unwrap().unwrap();
    assert!(r.is_err(), "the cut request fails: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_one_process_on_the_same_port() {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![service_route(None, "/", "api", false)], dir.path());
    opts.config.https = Some("127.0.0.1:0".into());
    let proxy = start(opts.clone(), &control).await;
    let addr = proxy.http_addr().unwrap();
    assert_eq!(get(addr, "/one").await.status, 200);
    // A keep-alive client connection stays open across the shutdown.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut idle, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let idle_conn = tokio::spawn(conn);
    assert_eq!(
        collect(idle.send_request(request("/ka", "l", &[])).await.unwrap())
            .await
            .unwrap()
            .status,
        200
    );
    tokio::time::timeout(WAIT, proxy.shutdown(Duration::from_secs(120)))
        .await
        .expect("an idle keep-alive connection does not hold shutdown");
    tokio::time::timeout(WAIT, idle_conn).await.unwrap().ok();

    for round in 0..3 {
        opts.config.http = Some(addr.to_string());
        let proxy = start(opts.clone(), &control).await;
        assert_eq!(proxy.http_addr(), Some(addr));
        let r = get(addr, &format!("/round{round}")).await;
        assert_eq!(r.status, 200);
        proxy.shutdown(Duration::from_secs(2)).await;
    }
}
