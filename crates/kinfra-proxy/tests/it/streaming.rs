//! WebSocket upgrades, server-sent events and request bodies pass through without buffering.

use crate::support::*;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (head_tx, head_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await;
        let _ = head_tx.send(head);
        s.write_all(WS_SWITCHING).await.unwrap();
        echo_until_closed(&mut s).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let proxy = ws_proxy(upstream, dir.path()).await;
    let (mut s, head) = ws_connect(proxy.http_addr().unwrap()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let upstream_head = head_rx.await.unwrap().to_ascii_lowercase();
    assert!(
        upstream_head.contains("upgrade: websocket"),
        "{upstream_head}"
    );
    assert!(upstream_head.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="));
    ws_echoes(&mut s, 3, "the WebSocket").await;
    drop(s);
    proxy.shutdown(Duration::from_secs(2)).await;
}

/// A backend that answers `101` the moment it accepts, before it has read the request: the
/// proxy then reads the `101` before it has passed on the end of the handshake's (empty)
/// request body, the ordering in which pingora 0.9 closed the tunnel right after the
/// handshake (cloudflare/pingora#946). Every one of twenty WebSockets must stay open both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_stay_open_when_the_backend_answers_101_at_once() {
    const SOCKETS: usize = 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (head_tx, mut head_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let head_tx = head_tx.clone();
            tokio::spawn(async move {
                s.write_all(WS_SWITCHING).await.unwrap();
                let head = read_head(&mut s).await;
                let _ = head_tx.send(head);
                echo_until_closed(&mut s).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let proxy = ws_proxy(upstream, dir.path()).await;
    for i in 0..SOCKETS {
        let (mut s, head) = ws_connect(proxy.http_addr().unwrap()).await;
        assert!(head.starts_with("HTTP/1.1 101"), "socket {i}: {head}");
        let upstream_head = tokio::time::timeout(WAIT, head_rx.recv())
            .await
            .unwrap()
            .unwrap()
            .to_ascii_lowercase();
        // What the backend sees is an ordinary upgrade request.
        assert!(
            upstream_head.contains("upgrade: websocket")
                && !upstream_head.contains("transfer-encoding"),
            "socket {i}: {upstream_head}"
        );
        ws_echoes(&mut s, 3, &format!("socket {i}")).await;
    }
    proxy.shutdown(Duration::from_secs(2)).await;
}

/// A backend that refuses the upgrade: the client gets its answer whole, and its connection
/// is closed soon after (the handshake's body, held open until a `101`, is not waited for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_answered_and_its_connection_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Type: text/plain\r\n\
              Content-Length: 12\r\n\r\nnot for you\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let proxy = ws_proxy(upstream, dir.path()).await;
    let mut s = TcpStream::connect(proxy.http_addr().unwrap())
        .await
        .unwrap();
    s.write_all(WS_HANDSHAKE).await.unwrap();
    // Everything until the proxy closes the connection (bounded: a hang fails here).
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the connection of a refused upgrade was kept open")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 426"), "{all}");
    assert!(all.ends_with("not for you\n"), "{all}");
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_are_not_buffered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (events_tx, mut events_rx) = mpsc::channel::<String>(4);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await;
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
        while let Some(data) = events_rx.recv().await {
            let event = format!("data: {data}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            s.write_all(chunk.as_bytes()).await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
    });
    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(
            vec![upstream_route("/", &[format!("http://{upstream}")], false)],
            dir.path(),
        ),
        &control,
    )
    .await;
    let stream = TcpStream::connect(proxy.http_addr().unwrap())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    events_tx.send("one".into()).await.unwrap();
    let resp = sender
        .send_request(request(
            "/events",
            "localhost",
            &[("accept", "text/event-stream")],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    for next in ["one", "two", "three"] {
        if next != "one" {
            // Sent only after the previous event arrived: nothing is held back.
            events_tx.send(next.into()).await.unwrap();
        }
        let mut got = String::new();
        while !got.ends_with("\n\n") {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("the event arrives without waiting for more")
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.push_str(&String::from_utf8_lossy(&data));
            }
        }
        assert_eq!(got, format!("data: {next}\n\n"));
    }
    drop(events_tx);
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_streamed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (first_tx, first_rx) = oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        let mut first = Some(first_tx);
        while !seen.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(tx) = first.take() {
                let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
            }
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
            .await
            .unwrap();
    });
    let control = FakeControl::new();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(
            vec![upstream_route("/", &[format!("http://{upstream}")], false)],
            dir.path(),
        ),
        &control,
    )
    .await;
    let mut s = TcpStream::connect(proxy.http_addr().unwrap())
        .await
        .unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // The upstream sees the first chunk while the client has not finished the body.
    let first = tokio::time::timeout(WAIT, first_rx).await.unwrap().unwrap();
    assert!(first.contains("hello"), "{first}");
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let head = tokio::time::timeout(WAIT, read_head(&mut s)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    proxy.shutdown(Duration::from_secs(2)).await;
}
