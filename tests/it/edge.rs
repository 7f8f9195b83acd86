//! The proxy's edge rules through the binary (`kinfra runtime up`, a real backend process):
//! kinfra's session cookie never reaches a service, transfer codings the proxy does not
//! handle get 501 and never reach the backend, an HTTP/1.1 request without `Host` gets 400,
//! and pipelined requests are each answered in order.

use crate::support::{Project, Up, pids_tagged, unique_tag, wait_for};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A backend that answers every request with its path and headers, and prints
/// `REQ METHOD PATH` for each request it receives.
const ECHO: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        print("REQ", self.command, self.path, flush=True)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = ("path: %s\n" % self.path + "".join("%s: %s\n" % kv for kv in self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = answer
    do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

fn start(tag: &str) -> (Project, Up, String) {
    let p = Project::with_config(&format!(
        "[project]\nname = \"edge\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nhttp = \"127.0.0.1:0\"\n\
         [services.app]\ncommand = [\"python3\", \"echo.py\", \"${{PORT}}\"]\nport = \"auto\"\n\
         health = {{ tcp = true, interval = \"200ms\" }}\n\
         [[routes]]\npath = \"/app\"\nstrip_prefix = true\nservice = \"app\"\n"
    ));
    p.write("echo.py", ECHO);
    let up = p.up(&[], &[]);
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    let proxy = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("proxy address in the banner")
        .to_string();
    wait_for(
        Duration::from_secs(30),
        "the backend through the proxy",
        || {
            let answer = exchange(
                &proxy,
                "GET /app/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            );
            answer.starts_with("HTTP/1.1 200").then_some(())
        },
    );
    (p, up, proxy)
}

/// Writes `raw` in one write and reads until the proxy closes the connection.
fn exchange(addr: &str, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

fn stop(mut up: Up, tag: &str) {
    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(tag).is_empty());
}

#[test]
fn the_session_cookie_never_reaches_a_service_and_other_cookies_do() {
    let tag = unique_tag("edge-cookie");
    let (_p, up, proxy) = start(&tag);
    let answer = exchange(
        &proxy,
        "GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\
         Cookie: theme=dark; kinfra_session=0123456789abcdef; lang=en\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("path: /echo"), "{answer}");
    assert!(
        answer.contains("theme=dark") && answer.contains("lang=en"),
        "the other cookies: {answer}"
    );
    assert!(
        !answer.contains("kinfra_session") && !answer.contains("0123456789abcdef"),
        "the backend got kinfra's session cookie: {answer}"
    );
    stop(up, &tag);
}

#[test]
fn unhandled_transfer_codings_get_501_a_missing_host_400_and_pipelined_requests_all_answers() {
    let tag = unique_tag("edge-rfc");
    let (_p, up, proxy) = start(&tag);

    let answer = exchange(
        &proxy,
        "POST /app/coded HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 501"), "{answer}");

    let answer = exchange(
        &proxy,
        "GET /app/nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let answer = exchange(
        &proxy,
        "GET /app/one HTTP/1.1\r\nHost: localhost\r\n\r\n\
         GET /app/two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        answer.matches("HTTP/1.1 200").count(),
        2,
        "both pipelined requests answered: {answer}"
    );
    let (one, two) = (
        answer.find("path: /one").expect("the first answer"),
        answer.find("path: /two").expect("the second answer"),
    );
    assert!(one < two, "answered out of order: {answer}");

    // Neither refused request reached the backend; the others did.
    up.wait_for_line(Duration::from_secs(10), "REQ GET /two");
    let lines = up.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("/coded") || l.contains("/nohost")),
        "a refused request reached the backend: {lines:?}"
    );
    stop(up, &tag);
}
