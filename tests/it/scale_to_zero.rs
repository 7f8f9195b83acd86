//! Scale to zero for processes (issue 21), through the binary: a process behind a route
//! sleeps after `idle_after`, requests wake it (browsers get the loading page, API clients
//! and POSTs are held and answered by the woken service), 50 concurrent requests cause one
//! start, an open WebSocket keeps it awake, a failed wake answers 503, `runtime wake`/`sleep`,
//! a sleeping dependency wakes first, and `config check` refuses an unreachable target.

use crate::support::webdriver::Browser;
use crate::support::{Project, Up, http_get, pids_tagged, stderr, stdout, unique_tag, wait_for};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A small HTTP server: logs each start (`NAME PID`) to the file in argv[2], answers GET with
/// `hello from NAME`, echoes a POST's body in JSON, and accepts a WebSocket on any path (the
/// handshake by hand; the socket is then kept open until the client closes it). Refuses to
/// start while `NAME.broken` exists; listens only 1.5 s after starting while `NAME.slow` does.
const APP: &str = r#"
import base64, hashlib, http.server, json, os, sys
port, log, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if os.path.exists(name + ".broken"):
    print("broken on purpose", flush=True)
    sys.exit(3)
with open(log, "a") as f:
    f.write(f"{name} {os.getpid()}\n")
if os.path.exists(name + ".slow"):
    import time
    time.sleep(1.5)
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            key = self.headers["Sec-WebSocket-Key"]
            accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.end_headers()
            self.wfile.flush()
            while self.connection.recv(4096):
                pass
            self.close_connection = True
            return
        self.answer(200, f"hello from {name}\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.answer(200, json.dumps({"from": name, "echo": body.decode()}), "application/json")

http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// The start log every app of a project writes to.
const STARTS: &str = "starts.log";

/// A service block running [`APP`] as `name`.
fn app_service(name: &str, extra: &str) -> String {
    format!(
        "[services.{name}]\n\
         command = [\"python3\", \"app.py\", \"${{PORT}}\", \"{STARTS}\", \"{name}\"]\n\
         port = \"auto\"\nhealth = {{ http = \"/\", interval = \"200ms\" }}\n{extra}\n"
    )
}

/// The project head: a test tag on every process, dashboard and proxy on free ports.
fn head(tag: &str) -> String {
    format!(
        "[project]\nname = \"s2z\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nhttp = \"127.0.0.1:0\"\n"
    )
}

/// Started `kinfra runtime up` with its proxy and dashboard addresses.
struct Running {
    up: Up,
    proxy: String,
    dashboard: String,
}

fn start(p: &Project) -> Running {
    p.write("app.py", APP);
    let up = p.up(&[], &[]);
    let line = up.wait_for_line(Duration::from_secs(5), "proxy       http://");
    let proxy = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("proxy address")
        .to_owned();
    let dashboard = up.dashboard_addr();
    Running {
        up,
        proxy,
        dashboard,
    }
}

impl Running {
    /// `/__status__`'s entry of `name`.
    fn entry(&self, name: &str) -> serde_json::Value {
        let (code, body) = http_get(&self.dashboard, "/__status__").expect("status");
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        status["services"][name].clone()
    }

    /// Waits (bounded) until `name`'s status entry satisfies `cond`, and returns it.
    fn wait(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let entry = self.entry(name);
            if cond(&entry) {
                return entry;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} never {what} within {limit:?}: {entry:#}\n{}",
                    self.up.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_state(&self, name: &str, state: &str) -> serde_json::Value {
        self.wait(name, state, Duration::from_secs(30), |e| {
            e["state"] == state
        })
    }
}

/// Starts of `name` so far (lines of the start log).
fn starts(p: &Project, name: &str) -> usize {
    std::fs::read_to_string(p.path().join(STARTS))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(name))
        .count()
}

/// One raw HTTP/1.1 request (`Connection: close`) allowed to be held for up to `limit`:
/// status code, lower-cased head, body.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
    limit: Duration,
) -> (u16, String, String) {
    crate::support::raw_exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        limit,
    )
}

fn get_json(addr: &str, path: &str) -> (u16, String, String) {
    request(
        addr,
        "GET",
        path,
        "Accept: application/json\r\n",
        "",
        Duration::from_secs(60),
    )
}

/// A WebSocket through the proxy: the handshake, then the open socket.
fn websocket(addr: &str, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write the handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the handshake ended early ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // base64(sha1(key + GUID)) for the RFC 6455 sample key.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s
}

#[test]
fn a_routed_process_sleeps_when_idle_and_requests_wake_it() {
    let tag = unique_tag("s2z");
    let p = Project::with_config(&format!(
        "{}{}{}[[routes]]\npath = \"/\"\nservice = \"app\"\n",
        head(&tag),
        app_service(
            "app",
            "scale_to_zero = { idle_after = \"2s\", wake_timeout = \"30s\" }"
        ),
        "[services.plain]\ncommand = \"sleep 1000\"\n",
    ));
    let k = start(&p);

    // Running and idle: status says when it will sleep (RFC 3339) before it does.
    let entry = k.wait(
        "app",
        "running with a sleeps_at",
        Duration::from_secs(30),
        |e| {
            assert_ne!(
                e["state"], "sleeping",
                "asleep before status said when: {e:#}"
            );
            e["state"] == "running" && e["sleep"]["sleeps_at"].is_string()
        },
    );
    let sleep = &entry["sleep"];
    assert_eq!(sleep["idle_after_s"], 2, "{entry:#}");
    assert_eq!(sleep["wake"], "request", "{entry:#}");
    assert!(
        sleep["sleeps_in_s"].as_u64().expect("sleeps_in_s") <= 2,
        "{entry:#}"
    );
    let at = sleep["sleeps_at"].as_str().expect("sleeps_at");
    assert!(humantime::parse_rfc3339(at).is_ok(), "{at}");
    assert!(
        k.entry("plain")["sleep"].is_null(),
        "a service without scale_to_zero has no sleep block"
    );

    // Idle for idle_after: asleep, its process gone, status and /metrics say so.
    let entry = k.wait_state("app", "sleeping");
    assert!(entry["pid"].is_null(), "{entry:#}");
    assert!(entry["sleep"]["sleeps_at"].is_null(), "{entry:#}");
    wait_for(Duration::from_secs(10), "the app's process gone", || {
        pids_tagged(&tag)
            .iter()
            .all(|pid| {
                !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .contains("app.py")
            })
            .then_some(())
    });
    assert_eq!(starts(&p, "app"), 1);
    let out = p.run(&["runtime", "status"]);
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("app "))
        .unwrap_or_else(|| panic!("no app row: {text}"));
    assert!(row.contains("sleeping") && row.contains("asleep"), "{text}");
    let (_, metrics) = http_get(&k.dashboard, "/metrics").expect("metrics");
    assert!(
        metrics.contains("kinfra_service_wakes_total{service=\"app\"} 0"),
        "{metrics}"
    );

    // A browser gets the loading page at once (503, Retry-After), then the real answer.
    let (code, head, body) = request(
        &k.proxy,
        "GET",
        "/",
        "Accept: text/html,application/xhtml+xml\r\n",
        "",
        Duration::from_secs(10),
    );
    assert_eq!(code, 503, "{head}\n{body}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(body.to_ascii_lowercase().contains("<html"), "{body}");
    let (_, _, body) = wait_for(Duration::from_secs(30), "the woken app", || {
        let r = request(
            &k.proxy,
            "GET",
            "/",
            "Accept: text/html\r\n",
            "",
            Duration::from_secs(10),
        );
        (r.0 == 200).then_some(r)
    });
    assert_eq!(body, "hello from app\n");
    assert_eq!(starts(&p, "app"), 2);

    // A JSON POST to the sleeping app is held, then answered by it with its body intact.
    k.wait_state("app", "sleeping");
    let payload = r#"{"order":42,"items":["a","b"],"note":"héllo"}"#;
    let (code, head, body) = request(
        &k.proxy,
        "POST",
        "/orders",
        "Accept: application/json\r\nContent-Type: application/json\r\n",
        payload,
        Duration::from_secs(60),
    );
    assert_eq!(code, 200, "{head}\n{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(echoed["from"], "app");
    assert_eq!(echoed["echo"], payload);
    assert_eq!(starts(&p, "app"), 3);

    // 50 concurrent requests to the sleeping app: one start, 50 real answers.
    k.wait_state("app", "sleeping");
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let proxy = k.proxy.clone();
                s.spawn(move || {
                    let (code, _, body) = get_json(&proxy, &format!("/n/{i}"));
                    (code, body)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    for (code, body) in &answers {
        assert_eq!((*code, body.as_str()), (200, "hello from app\n"));
    }
    assert_eq!(starts(&p, "app"), 4, "50 concurrent requests, one start");

    // An open WebSocket keeps it awake past idle_after; closing it lets it sleep.
    k.wait_state("app", "sleeping");
    let ws = websocket(&k.proxy, "/live");
    assert_eq!(starts(&p, "app"), 5);
    let entry = k.wait(
        "app",
        "kept awake by the WebSocket",
        Duration::from_secs(30),
        |e| e["state"] == "running" && e["sleep"]["open"] == 1,
    );
    assert_eq!(
        entry["sleep"]["kept_awake_by"], "1 open connection",
        "{entry:#}"
    );
    assert!(entry["sleep"]["sleeps_at"].is_null(), "{entry:#}");
    let text = stdout(&p.run(&["runtime", "status"]));
    assert!(text.contains("awake: 1 open connection"), "{text}");
    // Nothing to wait on for "did not sleep": a window of idle_after twice over (and a
    // margin) in which it would have slept without the socket.
    std::thread::sleep(Duration::from_secs(5));
    let entry = k.entry("app");
    assert_eq!(entry["state"], "running", "{entry:#}");
    assert_eq!(starts(&p, "app"), 5);
    drop(ws);
    k.wait(
        "app",
        "idle once the WebSocket closed",
        Duration::from_secs(10),
        |e| e["sleep"]["open"] == 0,
    );
    k.wait_state("app", "sleeping");

    // `runtime wake` returns once it is ready; `runtime sleep` puts it to sleep at once.
    let out = p.run(&["runtime", "wake", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("app: awake"), "{}", stdout(&out));
    let entry = k.entry("app");
    assert_eq!(
        entry["state"], "running",
        "ready when wake returned: {entry:#}"
    );
    assert_eq!(entry["sleep"]["wakes"], 5, "{entry:#}");
    assert_eq!(starts(&p, "app"), 6);
    let out = p.run(&["runtime", "sleep", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(k.entry("app")["state"], "sleeping");
    let (_, metrics) = http_get(&k.dashboard, "/metrics").expect("metrics");
    assert!(
        metrics.contains("kinfra_service_wakes_total{service=\"app\"} 5"),
        "{metrics}"
    );

    // A wake of something unknown, or of a service without scale_to_zero, names it.
    for (name, says) in [
        ("nosuch", "unknown service `nosuch`"),
        ("plain", "`plain` has no `scale_to_zero`"),
    ] {
        let out = p.run(&["runtime", "wake", name]);
        assert!(!out.status.success(), "wake {name} succeeded");
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    let out = p.run(&["runtime", "sleep", "plain"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`plain`"), "{}", stderr(&out));
    assert_eq!(k.entry("plain")["state"], "running");
}

#[test]
fn a_sleeping_dependency_wakes_before_its_dependent() {
    let tag = unique_tag("s2z-deps");
    let p = Project::with_config(&format!(
        "{}{}{}[[routes]]\npath = \"/\"\nservice = \"web\"\n",
        head(&tag),
        app_service(
            "db",
            "scale_to_zero = { idle_after = \"2s\", wake = \"manual\" }"
        ),
        app_service(
            "web",
            "depends_on = { db = \"healthy\" }\nscale_to_zero = { idle_after = \"2s\" }"
        ),
    ));
    let k = start(&p);
    // db stays awake while web is: its dependent needs it.
    let entry = k.wait("db", "kept awake by web", Duration::from_secs(30), |e| {
        e["sleep"]["kept_awake_by"] == "dependent web is awake"
    });
    assert_eq!(entry["state"], "running", "{entry:#}");
    assert_eq!(entry["sleep"]["wake"], "manual", "{entry:#}");
    // web sleeps, then db.
    k.wait_state("web", "sleeping");
    k.wait_state("db", "sleeping");
    assert_eq!((starts(&p, "db"), starts(&p, "web")), (1, 1));

    // A request to web wakes db first, then web.
    let (code, head, body) = get_json(&k.proxy, "/");
    assert_eq!((code, body.as_str()), (200, "hello from web\n"), "{head}");
    let log = std::fs::read_to_string(p.path().join(STARTS)).expect("start log");
    let order: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(order, ["db", "web", "db", "web"], "{log}");
    assert_eq!(k.entry("db")["state"], "running");
    assert_eq!(k.entry("db")["sleep"]["wakes"], 1);
}

#[test]
fn a_wake_that_fails_answers_503_not_200() {
    let tag = unique_tag("s2z-fail");
    let p = Project::with_config(&format!(
        "{}{}[[routes]]\npath = \"/\"\nservice = \"app\"\n",
        head(&tag),
        app_service(
            "app",
            "restart = \"no\"\nscale_to_zero = { idle_after = \"30s\", wake_timeout = \"20s\" }"
        ),
    ));
    let k = start(&p);
    k.wait_state("app", "running");
    let out = p.run(&["runtime", "sleep", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    k.wait_state("app", "sleeping");
    // From now on the app exits at once when started.
    p.write("app.broken", "");
    let (code, head, body) = get_json(&k.proxy, "/");
    assert_eq!(code, 503, "{head}\n{body}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(head.contains("application/json"), "{head}");
    assert!(body.contains("app"), "{body}");
    let out = p.run(&["runtime", "wake", "app"]);
    assert!(!out.status.success(), "a failing wake succeeded");
    assert!(
        stderr(&out).contains("cannot wake `app`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_reload_that_adds_scale_to_zero_puts_the_service_to_sleep_and_requests_wake_it() {
    let tag = unique_tag("s2z-reload");
    let config = |policy: &str| {
        format!(
            "{}{}[[routes]]\npath = \"/\"\nservice = \"app\"\n",
            head(&tag),
            app_service("app", policy)
        )
    };
    let p = Project::with_config(&config(""));
    let k = start(&p);
    let entry = k.wait_state("app", "running");
    assert!(entry["sleep"].is_null(), "{entry:#}");
    p.write(
        "kinfra.toml",
        &config("scale_to_zero = { idle_after = \"2s\" }"),
    );
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    k.wait_state("app", "sleeping");
    let before = starts(&p, "app");
    let (code, head, body) = get_json(&k.proxy, "/");
    assert_eq!((code, body.as_str()), (200, "hello from app\n"), "{head}");
    assert_eq!(starts(&p, "app"), before + 1);
    // And a reload that takes it away again: it stays awake.
    p.write("kinfra.toml", &config(""));
    let out = p.run(&["runtime", "reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entry = k.wait(
        "app",
        "running without a sleep block",
        Duration::from_secs(30),
        |e| e["state"] == "running" && e["sleep"].is_null(),
    );
    assert!(entry["pid"].is_u64(), "{entry:#}");
}

#[test]
fn the_dashboard_shows_a_sleeping_card_and_its_wake_button_wakes_it() {
    let tag = unique_tag("s2z-dash");
    let p = Project::with_config(&format!(
        "{}{}[[routes]]\npath = \"/\"\nservice = \"app\"\n",
        head(&tag),
        app_service("app", "scale_to_zero = { idle_after = \"2s\" }"),
    ));
    let k = start(&p);
    let out = p.run(&["dashboard", "url"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let login = stdout(&out).trim().to_owned();
    let browser = Browser::start(1280, 900);
    browser.goto(&login);
    // Awake: the countdown (before it sleeps, or the wait below fails it).
    let said = browser.wait_js(
        Duration::from_secs(30),
        "the app's card counting down to sleep, logged in",
        "const c = document.querySelector('.card[data-name=\"app\"]'); \
         if (!c || !document.querySelector('#session').textContent.includes('signed in')) return null; \
         if (c.dataset.state === 'sleeping') return 'asleep too early'; \
         const t = c.querySelector('.sleep').textContent; \
         return (c.dataset.state === 'running' && t.startsWith('sleeps in')) ? t : null",
    );
    assert!(
        said.as_str().is_some_and(|t| t.starts_with("sleeps in")),
        "{said}"
    );
    // Asleep: the card looks it, says it, and offers Wake (not Sleep).
    let seen = browser.wait_js(
        Duration::from_secs(30),
        "the app's card asleep",
        "const c = document.querySelector('.card[data-name=\"app\"]'); \
         if (c.dataset.state !== 'sleeping') return null; \
         const wake = c.querySelector('button[data-action=\"wake\"]'); \
         const sleep = c.querySelector('button[data-action=\"sleep\"]'); \
         return { text: c.querySelector('.sleep').textContent, opacity: getComputedStyle(c).opacity, \
                  wake: !wake.hidden && !wake.disabled, sleep: !sleep.hidden && !sleep.disabled }",
    );
    assert_eq!(seen["text"], "asleep", "{seen}");
    assert!(
        seen["opacity"]
            .as_str()
            .and_then(|o| o.parse::<f64>().ok())
            .is_some_and(|o| o < 1.0),
        "{seen}"
    );
    assert_eq!(
        (&seen["wake"], &seen["sleep"]),
        (&json!(true), &json!(false)),
        "{seen}"
    );
    let before = starts(&p, "app");
    browser.click(".card[data-name=\"app\"] button[data-action=\"wake\"]");
    browser.wait_js(
        Duration::from_secs(30),
        "the app's card awake again",
        "return document.querySelector('.card[data-name=\"app\"]').dataset.state === 'running'",
    );
    assert_eq!(starts(&p, "app"), before + 1);
    assert_eq!(k.entry("app")["sleep"]["wakes"], 1);
}

#[test]
fn config_check_refuses_scale_to_zero_that_no_route_reaches() {
    let p = Project::with_config(
        "[project]\nname = \"s2z\"\n\
         [services.api]\ncommand = \"sleep 100\"\n\
         scale_to_zero = { idle_after = \"1m\" }\n",
    );
    let out = p.run(&["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let text = stderr(&out);
    assert!(text.contains("services.api.scale_to_zero"), "{text}");
    assert!(text.contains("wake = \"manual\""), "{text}");
    // wake = "manual" needs no route.
    p.write(
        "kinfra.toml",
        "[project]\nname = \"s2z\"\n\
         [services.api]\ncommand = \"sleep 100\"\n\
         scale_to_zero = { idle_after = \"1m\", wake = \"manual\" }\n",
    );
    let out = p.run(&["config", "check"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Without a readiness probe, `running` means only that the process was spawned: a held
/// request must still wait until the woken service's port accepts connections, and get its
/// answer, never a refused connection turned into a 502.
#[test]
fn a_woken_service_without_a_probe_is_ready_when_its_port_accepts() {
    let tag = unique_tag("s2z-noprobe");
    let p = Project::with_config(&format!(
        "{}[services.app]\n\
         command = [\"python3\", \"app.py\", \"${{PORT}}\", \"{STARTS}\", \"app\"]\n\
         port = \"auto\"\nscale_to_zero = {{ idle_after = \"1h\", wake_timeout = \"20s\" }}\n\
         [[routes]]\npath = \"/\"\nservice = \"app\"\n",
        head(&tag),
    ));
    let k = start(&p);
    k.wait_state("app", "running");
    // Listening (so the first process has logged its start), then put to sleep.
    wait_for(Duration::from_secs(20), "the first app answering", || {
        (get_json(&k.proxy, "/").0 == 200).then_some(())
    });
    let out = p.run(&["runtime", "sleep", "app"]);
    assert!(out.status.success(), "{}", stderr(&out));
    k.wait_state("app", "sleeping");
    // From now on the app listens 1.5 s after it was spawned.
    p.write("app.slow", "");
    let (code, head, body) = get_json(&k.proxy, "/");
    assert_eq!(code, 200, "{head}\n{body}");
    assert_eq!(body, "hello from app\n");
    assert_eq!(
        starts(&p, "app"),
        2,
        "{:?}",
        std::fs::read_to_string(p.path().join(STARTS))
    );
}
