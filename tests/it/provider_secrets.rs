//! Secrets of provider resources never show: a provider instance token and a secret command
//! parameter are used on the wire, yet appear 0 times in `/__status__`, the SSE stream
//! (`/__events__`), `kinfra runtime logs`, `/metrics`, a dry-run's output, a failing command's
//! error and the state dir's files after `runtime down`.
//!
//! Stand-ins: the built-in `http-api` provider plays a cloud adapter; a tiny HTTP/1.1 server on
//! 127.0.0.1:0 in this file plays the cloud API (a database project that is `ACTIVE`, a
//! `rotate` command taking a secret password, a `fail` command answering 500 with an error
//! body that quotes the credentials it got, as careless APIs do). A plain service with a
//! secret-named env var stands beside it.

use crate::support::{Project, http_get, pids_tagged, stderr, stdout, unique_tag, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "tok-S3cr3t-9fQx-provider";
const PASSWORD: &str = "pw-Kx7-rotate-secret";
const ENV_SECRET: &str = "envpw-Lm2-app-secret";

/// One request the fake API received: its request line, headers (lower-case names) and body.
#[derive(Debug, Clone)]
struct Seen {
    line: String,
    authorization: Option<String>,
    body: String,
}

/// The fake cloud API; answers until the test ends (the thread dies with the test binary's
/// process only if still blocked in accept, which holds nothing of kinfra's).
fn fake_api() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
    let addr = listener.local_addr().expect("local addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || serve(stream, &log));
        }
    });
    (addr, seen)
}

fn serve(stream: TcpStream, log: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0usize;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.trim().split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(value.trim().to_owned()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let seen = Seen {
        line: line.trim().to_owned(),
        authorization: authorization.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (status, answer) = if seen.line.starts_with("GET /v1/projects/p1 ") {
        ("200 OK", r#"{"project":{"status":"ACTIVE"}}"#.to_owned())
    } else if seen.line.starts_with("POST /v1/projects/p1/fail ") {
        (
            "500 Internal Server Error",
            format!(
                r#"{{"message":"refused credentials {}"}}"#,
                authorization.unwrap_or_default()
            ),
        )
    } else if seen.line.starts_with("POST ") {
        ("200 OK", r#"{"ok":true}"#.to_owned())
    } else {
        ("404 Not Found", r#"{"message":"no such thing"}"#.to_owned())
    };
    if let Ok(mut all) = log.lock() {
        all.push(seen);
    }
    let _ = write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// Reads the dashboard's SSE stream until it closes (runtime down) or a minute passed.
fn read_events(addr: String) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut raw = Vec::new();
        let Ok(mut stream) = TcpStream::connect(&addr) else {
            return raw;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = write!(
            stream,
            "GET /__events__ HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        raw
    })
}

/// Every file under `dir`, recursively, as (path, bytes).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn occurrences(haystack: &[u8], needle: &str) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle.as_bytes())
        .count()
}

/// Asserts none of the secrets is in `text`, naming where it was looked for.
fn assert_clean(place: &str, text: &[u8]) {
    for secret in [TOKEN, PASSWORD, ENV_SECRET] {
        let n = occurrences(text, secret);
        assert_eq!(
            n,
            0,
            "{place}: `{secret}` found {n} times in: {}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn provider_secrets_never_show_in_status_events_logs_metrics_dry_runs_errors_or_the_store() {
    let tag = unique_tag("provider-secrets");
    let (api, seen) = fake_api();
    let p = Project::with_config(&format!(
        "[project]\nname = \"psec\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [providers.cloud]\nprovider = \"http-api\"\nbase_url = \"http://{api}/v1\"\n\
         token = \"{TOKEN}\"\n\
         [resources.db]\nprovider = \"cloud\"\ninterval = \"200ms\"\nproject_id = \"p1\"\n\
         start = {{ method = \"POST\", path = \"/projects/{{project_id}}/resume\" }}\n\
         status = {{ method = \"GET\", path = \"/projects/{{project_id}}\" }}\n\
         state_pointer = \"/project/status\"\nstate_map = {{ ACTIVE = \"running\" }}\n\
         [[resources.db.commands]]\nid = \"rotate\"\nmethod = \"POST\"\n\
         path = \"/projects/{{project_id}}/rotate\"\n\
         params = [{{ name = \"password\", kind = \"secret\", required = true }}]\n\
         [[resources.db.commands]]\nid = \"fail\"\nmethod = \"POST\"\n\
         path = \"/projects/{{project_id}}/fail\"\n\
         [services.app]\ncommand = \"exec sleep 1000\"\n\
         env = {{ APP_PASSWORD = \"{ENV_SECRET}\" }}\n"
    ));
    let mut up = p.up(&[], &[]);
    let addr = up.dashboard_addr();
    let events = read_events(addr.clone());
    let db_running = || -> Option<()> {
        let (code, body) = http_get(&addr, "/__status__").ok()?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && status["services"]["db"]["state"] == "running").then_some(())
    };
    wait_for(Duration::from_secs(20), "db running", db_running);
    wait_for(Duration::from_secs(20), "app running", || {
        crate::cli::running_pid(&p, "app")
    });

    let password = format!("password={PASSWORD}");
    let out = p.run(&["resource", "db", "rotate", "--param", &password]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_clean(
        "rotate's output",
        format!("{}{}", stdout(&out), stderr(&out)).as_bytes(),
    );
    let out = p.run(&[
        "resource",
        "db",
        "rotate",
        "--param",
        &password,
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let result: serde_json::Value = serde_json::from_str(&text).expect("a JSON dry-run");
    assert_eq!(result["dry_run"], true, "{result}");
    assert_clean("the dry-run", format!("{text}{}", stderr(&out)).as_bytes());

    let out = p.run(&["resource", "db", "fail"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("500"), "{}", stderr(&out));
    assert_clean(
        "the failing command's error",
        format!("{}{}", stdout(&out), stderr(&out)).as_bytes(),
    );

    // The secrets were really used: on the wire, to the fake API.
    {
        let seen = seen.lock().expect("requests seen");
        let bearer = format!("Bearer {TOKEN}");
        assert!(
            seen.iter()
                .any(|s| s.line.starts_with("GET /v1/projects/p1 ")
                    && s.authorization.as_deref() == Some(bearer.as_str())),
            "no status poll carried the token: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|s| s.line.starts_with("POST /v1/projects/p1/rotate ")
                    && s.body.contains(PASSWORD)),
            "the rotate request did not carry the password: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|s| s.line.starts_with("POST /v1/projects/p1/fail ")),
            "{seen:?}"
        );
    }

    let (code, status) = http_get(&addr, "/__status__").expect("GET /__status__");
    assert_eq!(code, 200);
    assert_clean("/__status__", status.as_bytes());
    let (code, metrics) = http_get(&addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert_clean("/metrics", metrics.as_bytes());
    for name in ["db", "app"] {
        let out = p.run(&["runtime", "logs", name]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_clean(
            &format!("runtime logs {name}"),
            format!("{}{}", stdout(&out), stderr(&out)).as_bytes(),
        );
    }
    let out = p.run(&["runtime", "history", "db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_clean("runtime history db", stdout(&out).as_bytes());

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(pids_tagged(&tag).is_empty());

    let events = events.join().expect("the SSE reader");
    let text = String::from_utf8_lossy(&events);
    assert!(
        text.contains("data:") && text.contains("\"db\""),
        "no events of db arrived: {text}"
    );
    assert_clean("/__events__", &events);

    let files = files_under(&p.path().join(".kinfra"));
    assert!(
        !files.is_empty(),
        "no state dir under {}",
        p.path().display()
    );
    // The search reads real content: the store holds the commands' history in plain bytes.
    assert!(
        files
            .iter()
            .any(|(_, bytes)| occurrences(bytes, "rotate") > 0),
        "the state dir holds no history of `rotate`"
    );
    for (path, bytes) in files {
        assert_clean(&path, &bytes);
    }
}
