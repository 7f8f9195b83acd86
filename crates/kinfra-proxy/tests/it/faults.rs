//! Faults: an upstream killed under load, oversized bodies, hanging upstreams, bad requests.

use crate::support::*;
use kinfra_core::config::ByteSize;
use kinfra_core::config::Dur;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_load_gets_pages_never_raw_errors() {
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

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        workers.push(tokio::spawn(async move {
            // Each worker sends one request per connection until told to stop.
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r = send(addr, request(&format!("/w{w}/{i}"), "localhost", &[])).await;
                let outcome = match r {
                    Ok(r) if r.status == 200 => "ok".to_owned(),
                    // The page of the runtime's Backoff state.
                    Ok(r) if r.status == 503 && r.body.contains("stopped unexpectedly") => {
                        "503 restarting".to_owned()
                    }
                    Ok(r) => format!(
                        "{} {}",
                        r.status,
                        r.header("x-kinfra-page").unwrap_or("RAW")
                    ),
                    Err(e) => format!("client error: {e}"),
                };
                outcomes.lock().unwrap().push(outcome);
            }
        }));
    }
    let seen = |what: &'static str| {
        let outcomes = outcomes.clone();
        move || {
            let found = outcomes.lock().unwrap().iter().any(|o| o == what);
            std::future::ready(found.then_some(()))
        }
    };
    wait_for("requests served under load", seen("ok")).await;
    api.kill();
    // Before the runtime notices: the proxy's own refused-connection page.
    wait_for(
        "the 503 page after the kill",
        seen("503 service_unavailable"),
    )
    .await;
    // The supervisor notices and says so.
    control.set(
        "api",
        kinfra_core::ServiceState::Backoff,
        kinfra_core::Health::Unknown,
        Some(api.port()),
        "exited with signal 9",
    );
    wait_for("the restarting page", seen("503 restarting")).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(WAIT, w).await.unwrap().unwrap();
    }
    let all = std::mem::take(&mut *outcomes.lock().unwrap());
    let counts = tally(all);
    eprintln!("outcomes: {counts:?}");
    assert!(counts.get("ok").copied().unwrap_or(0) > 0, "{counts:?}");
    for outcome in counts.keys() {
        assert!(
            outcome == "ok"
                || outcome == "503 service_unavailable"
                || outcome == "503 restarting"
                || outcome == "502 bad_gateway",
            "unexpected outcome `{outcome}`: {counts:?}"
        );
    }
    assert!(
        counts.contains_key("503 service_unavailable"),
        "the 503 page was served: {counts:?}"
    );

    // Back on the same port: served again.
    let again = Backend::start_on("api", api.addr).await;
    control.running("api", again.port());
    wait_for("the service to be served again", || async {
        (get(addr, "/").await.status == 200).then_some(())
    })
    .await;
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_before_the_runtime_notices_is_a_503_page() {
    let control = FakeControl::new();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    control.running("api", port);
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(vec![service_route(None, "/", "api", false)], dir.path()),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();
    let r = get(addr, "/").await;
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (503, Some("service_unavailable"))
    );
    assert!(r.body.contains("api is not answering"), "{}", r.body);
    assert!(r.body.contains("refused"));
    let j = get_with(addr, "/", &[("accept", "application/json")]).await;
    assert_eq!(j.json()["service"], "api");
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_hanging_upstreams() {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(vec![service_route(None, "/", "api", false)], dir.path());
    opts.config.max_body_size = ByteSize(1024);
    opts.config.read_timeout = Dur::from_millis(300);
    let proxy = start(opts, &control).await;
    let addr = proxy.http_addr().unwrap();

    // Declared too large: refused before anything is read or forwarded.
    let big = hyper::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            4096
        ])))
        .unwrap();
    let r = send(addr, big).await.unwrap();
    assert_eq!(
        (r.status, r.header("x-kinfra-page")),
        (413, Some("body_too_large"))
    );

    // Chunked, no length: cut when the limit is crossed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("400\r\n{}\r\n", "y".repeat(1024));
    let mut answer = String::new();
    for _ in 0..4 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0u8; 4096];
    if let Ok(Ok(n)) = tokio::time::timeout(WAIT, s.read(&mut buf)).await {
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Small bodies pass.
    let ok = hyper::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1000
        ])))
        .unwrap();
    let r = send(addr, ok).await.unwrap();
    assert_eq!((r.status, r.json()["body_len"].as_u64()), (200, Some(1000)));

    // An upstream that hangs: 504 page after read_timeout, and others are still served.
    // (The backend would answer `slow done` after 60 s: the page shows the timeout fired.)
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=60000").await });
    wait_for("the slow request to be in flight", || async {
        (proxy.in_flight() == 1).then_some(())
    })
    .await;
    assert_eq!(get(addr, "/fast").await.status, 200);
    let slow = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert_eq!(
        (slow.status, slow.header("x-kinfra-page")),
        (504, Some("upstream_timeout"))
    );

    // Malformed request: 400, and the proxy keeps serving.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GARBAGE\x01\x02 / HTTP/9.9\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");
    assert_eq!(get(addr, "/").await.status, 200);
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_oversized_headers_do_not_stop_others() {
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

    // Slowloris: many connections with a request head that never ends.
    let mut slow = Vec::new();
    for i in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /slow{i} HTTP/1.1\r\nHost: localhost\r\nX-A: ").as_bytes())
            .await
            .unwrap();
        slow.push(s);
    }
    // A head larger than the proxy accepts.
    let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "b".repeat(2 * 1024 * 1024)
    );
    let _ = big.write_all(huge.as_bytes()).await;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, big.read(&mut buf))
        .await
        .expect("the proxy answers or closes")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");

    // Everyone else is served (the bound only catches a hang).
    tokio::time::timeout(WAIT, async {
        for i in 0..20 {
            assert_eq!(get(addr, &format!("/ok{i}")).await.status, 200);
        }
    })
    .await
    .expect("the others are served while the slow clients hang");
    drop(slow);
    proxy.shutdown(Duration::from_secs(2)).await;
}
