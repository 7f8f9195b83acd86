//! HTTP/1.1 conformance on raw sockets (RFC 9112): transfer codings the proxy does not handle,
//! a request without `Host`, and pipelined requests.

use crate::support::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status_line: String,
    head: String,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (its body framed by `Content-Length`), keeping what follows it.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> RawResponse {
    let read = async {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before a whole response head: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut response = RawResponse {
            status_line: head.lines().next().unwrap_or("").to_owned(),
            head,
            body: String::new(),
        };
        let len: usize = response
            .header("content-length")
            .unwrap_or_else(|| panic!("no Content-Length in {}", response.head))
            .parse()
            .unwrap();
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the whole body");
            buf.extend_from_slice(&chunk[..n]);
        }
        response.body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        buf.drain(..head_end + len);
        response
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a response in time")
}

/// True when the proxy closes the connection (EOF, or a reset after unread input).
async fn closed(stream: &mut TcpStream, buf: &[u8]) -> bool {
    assert!(
        buf.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(buf)
    );
    let mut byte = [0u8; 1];
    match tokio::time::timeout(WAIT, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

async fn proxy_to_echo() -> (
    Backend,
    kinfra_proxy::ProxyServer,
    SocketAddr,
    tempfile::TempDir,
) {
    let api = Backend::start("api").await;
    let control = FakeControl::new();
    control.running("api", api.port());
    let dir = tempfile::tempdir().unwrap();
    let proxy = start(
        options(vec![service_route(None, "/api", "api", false)], dir.path()),
        &control,
    )
    .await;
    let addr = proxy.http_addr().unwrap();
    (api, proxy, addr, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_before_chunked_is_refused_with_501_and_never_forwarded() {
    let (api, proxy, addr, _dir) = proxy_to_echo().await;
    for te in ["gzip, chunked", "chunked, chunked"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /api/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: {te}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut stream, &mut buf).await;
        assert_eq!(r.status_line, "HTTP/1.1 501 Not Implemented", "{te}");
        assert_eq!(
            r.header("x-kinfra-page"),
            Some("unsupported_transfer_coding")
        );
        assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
        assert!(
            closed(&mut stream, &buf).await,
            "{te}: the connection stays open"
        );
    }
    // Two fields that together say `gzip, chunked`.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let r = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(r.status_line, "HTTP/1.1 501 Not Implemented");
    assert_eq!(
        api.connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the backend"
    );

    // A plain chunked body still goes through.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let r = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert!(r.body.contains("\"body_len\":5"), "{}", r.body);
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_1_request_without_host_gets_400() {
    let (api, proxy, addr, _dir) = proxy_to_echo().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nAccept: */*\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut stream, &mut buf).await;
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(r.header("x-kinfra-page"), Some("missing_host"));
    assert!(closed(&mut stream, &buf).await);
    assert_eq!(api.connections.load(std::sync::atomic::Ordering::SeqCst), 0);

    // HTTP/1.0 needs no Host.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/x HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut stream, &mut Vec::new()).await;
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    proxy.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_each_answered_in_order() {
    let (_api, proxy, addr, _dir) = proxy_to_echo().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Forwarded, answered by the proxy itself (no route), a body, and one more: one write.
    stream
        .write_all(
            b"GET /api/one HTTP/1.1\r\nHost: localhost\r\n\r\n\
              GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n\
              POST /api/three HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc\
              GET /api/four HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let one = read_response(&mut stream, &mut buf).await;
    assert_eq!(one.status_line, "HTTP/1.1 200 OK");
    assert!(one.body.contains("\"path\":\"/api/one\""), "{}", one.body);
    let two = read_response(&mut stream, &mut buf).await;
    assert_eq!(two.status_line, "HTTP/1.1 404 Not Found");
    let three = read_response(&mut stream, &mut buf).await;
    assert_eq!(three.status_line, "HTTP/1.1 200 OK");
    assert!(
        three.body.contains("\"path\":\"/api/three\""),
        "{}",
        three.body
    );
    assert!(three.body.contains("\"body_len\":3"), "{}", three.body);
    let four = read_response(&mut stream, &mut buf).await;
    assert_eq!(four.status_line, "HTTP/1.1 200 OK");
    assert!(
        four.body.contains("\"path\":\"/api/four\""),
        "{}",
        four.body
    );

    // The connection is still usable afterwards.
    stream
        .write_all(b"GET /api/five HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let five = read_response(&mut stream, &mut buf).await;
    assert!(
        five.body.contains("\"path\":\"/api/five\""),
        "{}",
        five.body
    );
    proxy.shutdown(Duration::from_secs(2)).await;
}
