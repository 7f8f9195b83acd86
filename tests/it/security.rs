//! Issue 15's dashboard and control-socket defects, through the binary: the session cookie
//! (never the token, scoped, revocable), reads from a real remote client (a network namespace
//! with a veth pair), accept under descriptor exhaustion, and the dashboard's timeouts and
//! connection cap against raw sockets.
//!
//! `KINFRA_IT_BIN=/path/to/kinfra` runs these tests against another build (e.g. one from
//! before a fix, to show they fail there).

use crate::support::{Project, kill, kinfra_bin, unique_tag, wait_for};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "sec-token-0123456789abcdef0123456789";

/// The kinfra binary these tests run.
fn bin() -> String {
    std::env::var("KINFRA_IT_BIN").unwrap_or_else(|_| kinfra_bin().to_owned())
}

/// Lines that report a failed accept (the old control socket warned once per attempt).
fn is_accept_failure(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("accept") && (l.contains("fail") || l.contains("error"))
}

/// A running `kinfra runtime up`; SIGKILLed on drop if still running.
struct Running {
    child: Child,
    /// Output lines (stdout and stderr), at most the first 20 000.
    lines: Arc<Mutex<Vec<String>>>,
    /// Lines reporting a failed accept, all of them.
    accept_failures: Arc<AtomicUsize>,
}

impl Running {
    /// Starts `kinfra runtime up` in `p` with `env` (the proxy on 127.0.0.1:0 unless `env`
    /// says otherwise) and waits until it is ready.
    fn start(p: &Project, env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(bin());
        cmd.args(["runtime", "up", "--color", "never"])
            .current_dir(p.path())
            .env_remove("KINFRA_LOG")
            .env("KINFRA_PROXY__HTTP", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Its own process group, so a stuck run can be killed whole.
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("spawn kinfra runtime up");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let accept_failures = Arc::new(AtomicUsize::new(0));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            let failures = accept_failures.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if is_accept_failure(&line) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut lines = lines.lock().expect("lines lock");
                    if lines.len() < 20_000 {
                        lines.push(line);
                    }
                }
            });
        }
        let mut running = Running {
            child,
            lines,
            accept_failures,
        };
        running.wait_for_line("Press Ctrl-C");
        running
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// Waits for an output line containing `needle`; panics with the output when the
    /// runtime exits first or after 30 s.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                // The readers may still be draining the pipes.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "no line containing {needle:?} (exit: {exited:?}); output:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `host:port` from the banner line starting with `label` (`dashboard`, `proxy`).
    fn banner_addr(&mut self, label: &str) -> String {
        let line = self.wait_for_line(&format!("{label:<12}http://"));
        line.split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Waits for the exit (bounded) and returns whether it was a success.
    fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "kinfra did not exit; output:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Runs `kinfra ARGS` in `p` to completion (bounded by 60 s).
fn cli(p: &Project, args: &[&str]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(p.path())
        .env_remove("KINFRA_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kinfra");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            kill(child.id(), libc::SIGKILL);
            panic!("kinfra {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// An HTTP response read off a raw socket.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One HTTP/1.1 request with `Connection: close` on a fresh connection to `addr`.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut head_lines = head.lines();
    let status = head_lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn get_status(addr: &str, host: &str, path: &str, bearer: bool) -> u16 {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("Host", host)];
    if bearer {
        headers.push(("Authorization", auth.as_str()));
    }
    http(addr, "GET", path, &headers, "")
        .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
        .status
}

fn config(tag: &str, dashboard: &str, extra: &str) -> String {
    format!(
        "[project]\nname = \"sec\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"{dashboard}\"\ntoken = \"{TOKEN}\"\n{extra}\n\
         [services.web]\ncommand = \"exec sleep 1000\"\nstop_grace = \"2s\"\n"
    )
}

/// The session id in a `kinfra_session=ID; ...` Set-Cookie value.
fn session_id(set_cookie: &str) -> String {
    set_cookie
        .strip_prefix("kinfra_session=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("not a session cookie: {set_cookie}"))
        .to_owned()
}

fn login(addr: &str) -> Response {
    let origin = format!("http://{addr}");
    http(
        addr,
        "POST",
        "/kinfra/login",
        &[
            ("Origin", origin.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("token={TOKEN}"),
    )
    .expect("login")
}

fn act_with_cookie(addr: &str, id: &str) -> u16 {
    let origin = format!("http://{addr}");
    let cookie = format!("kinfra_session={id}");
    http(
        addr,
        "POST",
        "/__action__/restart/web",
        &[("Origin", origin.as_str()), ("Cookie", cookie.as_str())],
        "",
    )
    .expect("action")
    .status
}

#[test]
fn the_session_cookie_is_a_scoped_revocable_id_never_the_token() {
    let tag = unique_tag("sess");
    let p = Project::with_config(&config(&tag, "127.0.0.1:0", ""));
    let mut up = Running::start(&p, &[]);
    let addr = up.banner_addr("dashboard");

    let r = login(&addr);
    assert_eq!(r.status, 303, "{r:?}");
    let cookies = r.all("set-cookie");
    assert!(!cookies.is_empty(), "{r:?}");
    for cookie in &cookies {
        assert!(!cookie.contains(TOKEN), "the token in a cookie: {cookie}");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let path = cookie
            .split(';')
            .find_map(|a| a.trim().strip_prefix("Path="))
            .unwrap_or("(none)");
        assert!(
            path.len() > 1 && path.starts_with('/'),
            "a cookie for more than the dashboard: {cookie}"
        );
    }
    assert!(
        cookies.iter().any(|c| c.contains("Path=/__action__")),
        "{cookies:?}"
    );
    let id = session_id(cookies[0]);
    assert!(id.len() >= 32 && id != TOKEN, "{id}");

    // The session acts (same origin), and logout ends it on the server.
    assert_eq!(act_with_cookie(&addr, &id), 200);
    let origin = format!("http://{addr}");
    let cookie = format!("kinfra_session={id}");
    let out = http(
        &addr,
        "POST",
        "/kinfra/logout",
        &[("Origin", origin.as_str()), ("Cookie", cookie.as_str())],
        "",
    )
    .expect("logout");
    assert_eq!(out.status, 303);
    assert_eq!(
        act_with_cookie(&addr, &id),
        401,
        "a logged-out session acted"
    );

    // A session does not outlive the runtime: `runtime down`, up again, refused.
    let second = session_id(login(&addr).all("set-cookie")[0]);
    assert_eq!(act_with_cookie(&addr, &second), 200);
    let down = cli(&p, &["runtime", "down"]);
    assert!(down.status.success(), "{down:?}");
    assert!(up.wait_exit());
    let mut up = Running::start(&p, &[]);
    let addr = up.banner_addr("dashboard");
    assert_eq!(
        act_with_cookie(&addr, &second),
        401,
        "a session from before `runtime down` acted"
    );
    let bearer = format!("Bearer {TOKEN}");
    let r = http(
        &addr,
        "POST",
        "/__action__/restart/web",
        &[("Authorization", bearer.as_str())],
        "",
    )
    .expect("action");
    assert_eq!(r.status, 200, "{r:?}");
    drop(up);
}

/// A network namespace joined to this one by a veth pair: `host_ip` here, `ns_ip` there.
/// Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{}{n}", pid % 1_000_000);
        let subnet = (pid + n * 7) % 250;
        let ns = Netns {
            name: format!("kfsec{id}"),
            host_if: format!("kfh{id}"),
            host_ip: format!("10.231.{subnet}.1"),
        };
        let peer_if = format!("kfn{id}");
        let ns_ip = format!("10.231.{subnet}.2");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
                panic!("cannot run `ip` ({e}): this test needs iproute2 (apt install iproute2)")
            });
            assert!(
                out.status.success(),
                "ip {args:?} failed (this test needs root for network namespaces): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &peer_if]);
        inside(&["link", "set", &peer_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that lives in the namespace (its sockets are made there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns(2) on this thread only, with a valid descriptor.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The README's public setup: the dashboard on loopback, the proxy on every address. A
/// client in another network namespace reads nothing without the token through the proxy;
/// a client on this machine does.
#[test]
fn a_remote_client_needs_the_token_to_read_through_the_proxy() {
    let net = Netns::new();
    let tag = unique_tag("remote");
    let p = Project::with_config(&config(&tag, "127.0.0.1:0", ""));
    let mut up = Running::start(&p, &[("KINFRA_PROXY__HTTP", "0.0.0.0:0")]);
    let proxy_port = up
        .banner_addr("proxy")
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let via_veth = format!("{}:{proxy_port}", net.host_ip);
    let from_ns = via_veth.clone();
    let remote = net.run(move || {
        [
            "/__status__",
            "/metrics",
            "/__logs__/web?format=json",
            "/kinfra",
        ]
        .map(|path| (path, get_status(&from_ns, "localhost", path, false)))
    });
    for (path, code) in remote {
        let want = if path == "/kinfra" { 303 } else { 401 };
        assert_eq!(code, want, "remote GET {path} through the proxy");
    }
    let from_ns = via_veth.clone();
    let with_token = net.run(move || get_status(&from_ns, "localhost", "/__status__", true));
    assert_eq!(with_token, 200, "remote with the token");
    let local = format!("127.0.0.1:{proxy_port}");
    assert_eq!(get_status(&local, "localhost", "/__status__", false), 200);
    drop(up);
}

/// The dashboard itself on a non-loopback address (with a token), the proxy on every
/// address: a remote client needs the token directly and through the proxy; this machine
/// reads without it, through the proxy too.
#[test]
fn a_remote_client_needs_the_token_to_read_the_dashboard_directly() {
    let net = Netns::new();
    let tag = unique_tag("direct");
    let p = Project::with_config(&config(&tag, &format!("{}:0", net.host_ip), ""));
    let mut up = Running::start(&p, &[("KINFRA_PROXY__HTTP", "0.0.0.0:0")]);
    let dashboard = up.banner_addr("dashboard");
    let proxy_port = up
        .banner_addr("proxy")
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let proxy_via_veth = format!("{}:{proxy_port}", net.host_ip);
    let (d, pv) = (dashboard.clone(), proxy_via_veth.clone());
    let codes = net.run(move || {
        [
            get_status(&d, "localhost", "/__status__", false),
            get_status(&d, "localhost", "/__status__", true),
            get_status(&pv, "localhost", "/__status__", false),
            get_status(&pv, "localhost", "/__status__", true),
        ]
    });
    assert_eq!(
        codes,
        [401, 200, 401, 200],
        "remote: direct without/with token, proxy without/with token"
    );
    let local = format!("127.0.0.1:{proxy_port}");
    assert_eq!(get_status(&local, "localhost", "/__status__", false), 200);
    drop(up);
}

/// Open descriptors of a process.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[test]
fn accept_backs_off_when_descriptors_run_out_and_serving_resumes() {
    let tag = unique_tag("emfile");
    let p = Project::with_config(&config(&tag, "127.0.0.1:0", ""));
    let mut up = Running::start(&p, &[]);
    let dashboard = up.banner_addr("dashboard");
    wait_for(Duration::from_secs(20), "the service running", || {
        (!crate::support::pids_tagged(&tag).is_empty()).then_some(())
    });
    // Leave 64 descriptors free, then take them all (and more) with idle connections.
    let limit = open_fds(up.pid()) + 64;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: prlimit(2) on a child we started, with a valid struct.
    let rc = unsafe {
        libc::prlimit(
            up.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlimit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut idle = Vec::new();
    for _ in 0..(64 + 100) {
        idle.push(TcpStream::connect(&dashboard).expect("connect (the backlog takes it)"));
    }
    wait_for(
        Duration::from_secs(20),
        "the runtime out of descriptors",
        || (open_fds(up.pid()) >= limit).then_some(()),
    );
    // A CLI request on the control socket while no descriptor is left.
    let status_dir = p.path().to_owned();
    let waiting = std::thread::spawn(move || {
        Command::new(bin())
            .args(["runtime", "status"])
            .current_dir(&status_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
    });
    // Let the listeners fail for a while: a spinning loop logs thousands of lines here.
    std::thread::sleep(Duration::from_secs(3));
    let failures = up.accept_failures.load(Ordering::Relaxed);
    assert!(
        failures <= 6,
        "{failures} accept-failure lines in 3 s; first ones:\n{}",
        up.lines()
            .into_iter()
            .filter(|l| is_accept_failure(l))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(failures >= 1, "no accept failure was reported at all");
    // The idle connections go: everything answers again.
    for s in &idle {
        let _ = s.shutdown(Shutdown::Both);
    }
    drop(idle);
    let out = waiting
        .join()
        .expect("status thread")
        .expect("runtime status");
    assert!(
        out.status.success(),
        "runtime status during exhaustion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(20), "the dashboard answering", || {
        http(&dashboard, "GET", "/healthz", &[], "")
            .ok()
            .filter(|r| r.status == 200 && r.body == "ok\n")
    });
    let out = cli(&p, &["runtime", "status"]);
    assert!(
        out.status.success(),
        "runtime status after: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(up);
}

/// Reads until the server closes; returns what came. Panics after `limit` (the generous
/// bound that catches "never closes").
fn read_until_closed(mut s: TcpStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the server kept the connection open for {limit:?}; got {:?}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connect_and_send(addr: &str, bytes: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes.as_bytes()).expect("write");
    s
}

#[test]
fn the_dashboard_closes_idle_and_half_sent_connections() {
    let tag = unique_tag("slow");
    let p = Project::with_config(&config(
        &tag,
        "127.0.0.1:0",
        "header_timeout = \"1s\"\nidle_timeout = \"2s\"\nbody_timeout = \"1s\"\n",
    ));
    let mut up = Running::start(&p, &[]);
    let addr = up.banner_addr("dashboard");
    let bound = Duration::from_secs(30);
    // All at once, so the waits overlap.
    let nothing = TcpStream::connect(&addr).expect("connect");
    let half_header = connect_and_send(
        &addr,
        "GET /__status__ HTTP/1.1\r\nHost: localhost\r\nX-A: ",
    );
    let kept_alive = connect_and_send(&addr, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let half_body = connect_and_send(
        &addr,
        &format!(
            "POST /kinfra/login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 300\r\n\r\ntoken="
        ),
    );
    let threads = [
        ("nothing sent", nothing),
        ("half a header", half_header),
        ("kept alive", kept_alive),
        ("half a body", half_body),
    ]
    .map(|(what, s)| {
        (
            what,
            std::thread::spawn(move || read_until_closed(s, bound)),
        )
    });
    let mut got = std::collections::BTreeMap::new();
    for (what, t) in threads {
        got.insert(what, t.join().expect("reader"));
    }
    assert_eq!(got["nothing sent"], "");
    assert_eq!(got["half a header"], "");
    assert!(
        got["kept alive"].starts_with("HTTP/1.1 200") && got["kept alive"].ends_with("ok\n"),
        "{}",
        got["kept alive"]
    );
    assert!(
        got["half a body"].starts_with("HTTP/1.1 400"),
        "{}",
        got["half a body"]
    );
    assert!(!got["half a body"].contains("kinfra_session"));
    drop(up);
}

#[test]
fn the_dashboard_closes_connections_beyond_its_cap() {
    let tag = unique_tag("cap");
    let p = Project::with_config(&config(&tag, "127.0.0.1:0", "max_connections = 3\n"));
    let mut up = Running::start(&p, &[]);
    let addr = up.banner_addr("dashboard");
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // One more: closed without an answer, though its request is complete.
    let extra = connect_and_send(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(read_until_closed(extra, Duration::from_secs(30)), "");
    drop(held);
    wait_for(
        Duration::from_secs(20),
        "the dashboard serving again",
        || {
            http(&addr, "GET", "/healthz", &[], "")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    drop(up);
}

/// With the defaults (no timeout configured), a half-sent header is still closed: within
/// the 10 s header timeout, bounded here by 60 s.
#[test]
fn a_half_sent_header_is_closed_with_the_default_timeout() {
    let tag = unique_tag("slowdef");
    let p = Project::with_config(&config(&tag, "127.0.0.1:0", ""));
    let mut up = Running::start(&p, &[]);
    let addr = up.banner_addr("dashboard");
    let s = connect_and_send(
        &addr,
        "GET /__status__ HTTP/1.1\r\nHost: localhost\r\nX-A: ",
    );
    assert_eq!(read_until_closed(s, Duration::from_secs(60)), "");
    drop(up);
}

#[test]
fn zero_dashboard_limits_are_config_errors() {
    let p = Project::with_config(
        "[dashboard]\nheader_timeout = \"0s\"\nidle_timeout = \"0s\"\nbody_timeout = \"0s\"\nmax_connections = 0\n",
    );
    let out = cli(&p, &["config", "check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "dashboard.header_timeout",
        "dashboard.idle_timeout",
        "dashboard.body_timeout",
        "dashboard.max_connections",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
}
