//! Health probes modelled on Kubernetes: HTTP GET (hyper's HTTP/1 client over a tokio
//! `TcpStream`, with status range and body match), TCP connect, and exec (killed, with its
//! whole process group, on timeout). A probe loop turns results into transitions after
//! `success_threshold` passes or `failure_threshold` failures in a row.

use http::Uri;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kinfra_core::config::{CommandSpec, ProbeConfig, StatusRange, TcpTarget};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Most of a response body a probe reads to match `body`.
const MAX_RESPONSE: usize = 64 * 1024;

/// A probe with everything resolved (port, URL, environment).
#[derive(Debug, Clone)]
pub enum ProbeTarget {
    /// GET `uri` (an `http://` URI with a host).
    Http {
        /// What to request: host and port to connect to, path and query.
        uri: Uri,
        /// Accepted statuses.
        status: StatusRange,
        /// Text the body must contain.
        body: Option<String>,
    },
    /// Connect to `host:port`.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// Run a command; exit 0 passes.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// Environment.
        env: Vec<(String, String)>,
        /// Working directory.
        cwd: PathBuf,
    },
}

/// Parses an `http://` probe URL (port 80 when it names none; IPv6 hosts in brackets).
pub fn parse_http_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid probe URL `{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "unsupported probe URL `{url}`: only http:// is supported"
        ));
    }
    if uri.host().is_none_or(|h| h.is_empty() || h == "[]") {
        return Err(format!("probe URL `{url}` has no host"));
    }
    // `http` keeps whatever follows the host's `:` as the port text; it must be a number.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let port_text = host_port
        .get(uri.host().map_or(0, str::len)..)
        .and_then(|rest| rest.strip_prefix(':'));
    if port_text.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(format!("invalid port in probe URL `{url}`"));
    }
    Ok(uri)
}

/// Where an HTTP probe connects (`host` without brackets, port) and the `Host` header it
/// sends (IPv6 in brackets, the port only when the URL names one).
pub fn http_endpoint(uri: &Uri) -> Result<(String, u16, String), String> {
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("probe URL `{uri}` has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let header = match uri.port() {
        Some(p) => format!("{host}:{}", p.as_str()),
        None => host.to_string(),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok((bare.to_string(), port, header))
}

/// Resolves a probe config against the service's port and environment.
pub fn resolve(
    cfg: &ProbeConfig,
    port: Option<u16>,
    env: &[(String, String)],
    cwd: &std::path::Path,
) -> Result<ProbeTarget, String> {
    if let Some(http) = &cfg.http {
        let uri = if http.starts_with("http://") {
            parse_http_url(http)?
        } else {
            let port = port.ok_or("an http probe with a path needs the service to have a port")?;
            let path = if http.starts_with('/') {
                http.clone()
            } else {
                format!("/{http}")
            };
            parse_http_url(&format!("http://127.0.0.1:{port}{path}"))?
        };
        return Ok(ProbeTarget::Http {
            uri,
            status: cfg.status,
            body: cfg.body.clone(),
        });
    }
    if let Some(tcp) = cfg.tcp {
        let port = match tcp {
            TcpTarget::Port(p) => p,
            TcpTarget::OwnPort(true) => {
                port.ok_or("a tcp probe on the own port needs the service to have a port")?
            }
            TcpTarget::OwnPort(false) => return Err("tcp = false is not a probe".into()),
        };
        return Ok(ProbeTarget::Tcp {
            host: "127.0.0.1".into(),
            port,
        });
    }
    if let Some(exec) = &cfg.exec {
        let argv = match exec {
            CommandSpec::Shell(s) => vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()],
            CommandSpec::Argv(v) => v.clone(),
        };
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err("the exec probe has an empty command".into());
        }
        return Ok(ProbeTarget::Exec {
            argv,
            env: env.to_vec(),
            cwd: cwd.to_path_buf(),
        });
    }
    Err("the probe names none of http, tcp or exec".into())
}

/// Runs one probe, bounded by `timeout`. `Ok` carries a short note, `Err` the reason.
pub async fn probe_once(target: &ProbeTarget, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, run(target, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn run(target: &ProbeTarget, timeout: Duration) -> Result<String, String> {
    match target {
        ProbeTarget::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
            .await
            .map(|_| format!("connected to {host}:{port}"))
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}")),
        ProbeTarget::Http { uri, status, body } => http_get(uri, *status, body.as_deref()).await,
        ProbeTarget::Exec { argv, env, cwd } => exec(argv, env, cwd, timeout).await,
    }
}

async fn http_get(
    uri: &Uri,
    range: StatusRange,
    want_body: Option<&str>,
) -> Result<String, String> {
    let (host, port, host_header) = http_endpoint(uri)?;
    let stream = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host_header}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // The connection is driven by its own task, which ends with the response (or with this
    // probe's timeout, when the sender and the task's handle are dropped).
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host_header.as_str())
        .header(hyper::header::USER_AGENT, "kinfra-probe")
        .header(hyper::header::ACCEPT, "*/*")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP request failed: {e}"))?;
    let code = response.status().as_u16();
    if !range.contains(code) {
        return Err(format!(
            "HTTP {code} (expected {}-{})",
            range.min, range.max
        ));
    }
    if let Some(want) = want_body {
        let body = read_body(response.into_body()).await?;
        if !String::from_utf8_lossy(&body).contains(want) {
            return Err(format!(
                "HTTP {code}, but the body does not contain `{want}`"
            ));
        }
    }
    drop(driver);
    Ok(format!("HTTP {code}"))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads a response body, keeping its first [`MAX_RESPONSE`] bytes.
async fn read_body(mut body: hyper::body::Incoming) -> Result<Vec<u8>, String> {
    let mut kept = Vec::new();
    while kept.len() < MAX_RESPONSE {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("reading the response failed: {e}")),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_RESPONSE - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    Ok(kept)
}

async fn exec(
    argv: &[String],
    env: &[(String, String)],
    cwd: &std::path::Path,
    timeout: Duration,
) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    // Spawned like a service (own group, parent-death signal), so a probe never outlives
    // kinfra either.
    let spawned = crate::spawn::spawn(crate::spawn::SpawnSpec {
        program: program.clone(),
        args: args.to_vec(),
        env: env.to_vec(),
        cwd: cwd.to_path_buf(),
    })
    .await
    .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    let pid = spawned.pid;
    // The group is killed when the probe times out (this future is dropped) as well as after
    // a normal exit (grandchildren left behind). The exit is reaped by its own task either way.
    struct KillGroup(i32);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            crate::spawn::signal_group(self.0, libc::SIGKILL);
        }
    }
    let _guard = KillGroup(pid);
    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = exit_tx.send(crate::spawn::wait_exit(pid).await);
    });
    let stdout = spawned.stdout.map(|fd| tokio::spawn(read_output(fd)));
    let stderr = spawned.stderr.map(|fd| tokio::spawn(read_output(fd)));
    let exit = tokio::time::timeout(timeout, exit_rx)
        .await
        .map_err(|_| format!("timed out after {}", humantime::format_duration(timeout)))?
        .map_err(|_| format!("waiting for `{program}` failed"))?;
    crate::spawn::signal_group(pid, libc::SIGKILL);
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match h {
            Some(h) => tokio::time::timeout(Duration::from_millis(200), h)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let (out, err) = (collect(stdout).await, collect(stderr).await);
    let text = String::from_utf8_lossy(if out.is_empty() { &err } else { &out })
        .trim()
        .chars()
        .take(200)
        .collect::<String>();
    if exit.success() {
        Ok(text)
    } else {
        Err(match exit.code {
            Some(code) if text.is_empty() => format!("exited with code {code}"),
            Some(code) => format!("exited with code {code}: {text}"),
            None => "killed by a signal".to_string(),
        })
    }
}

/// Reads a probe's output to EOF, keeping the first 4 KiB.
async fn read_output(fd: std::os::fd::OwnedFd) -> Vec<u8> {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = 4096usize.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Which probe a result is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `health`: gates `healthy` dependents.
    Readiness,
    /// `liveness`: restarts the service when failing.
    Liveness,
}

/// A change of a probe's verdict.
#[derive(Debug, Clone)]
pub struct ProbeEvent {
    /// The child generation the probe ran for.
    pub generation: u64,
    /// Which probe.
    pub kind: ProbeKind,
    /// The new verdict.
    pub healthy: bool,
    /// The last probe's note or error.
    pub message: String,
    /// False when only the message changed (still failing, for another reason).
    pub changed: bool,
}

/// Runs a probe loop until the returned handle is aborted, sending verdict changes.
pub fn start_loop(
    cfg: &ProbeConfig,
    target: ProbeTarget,
    kind: ProbeKind,
    generation: u64,
    tx: mpsc::Sender<ProbeEvent>,
) -> tokio::task::JoinHandle<()> {
    let initial_delay = cfg.initial_delay.0;
    let interval = cfg.interval.0.max(Duration::from_millis(10));
    let timeout = cfg.timeout.0.max(Duration::from_millis(10));
    let need_ok = cfg.success_threshold.max(1);
    let need_fail = cfg.failure_threshold.max(1);
    tokio::spawn(async move {
        tokio::time::sleep(initial_delay).await;
        let mut verdict: Option<bool> = None;
        let mut last_message = String::new();
        let (mut oks, mut fails) = (0u32, 0u32);
        loop {
            let result = probe_once(&target, timeout).await;
            let message = match &result {
                Ok(m) | Err(m) => m.clone(),
            };
            if result.is_ok() {
                oks += 1;
                fails = 0;
            } else {
                fails += 1;
                oks = 0;
            }
            let new = if oks >= need_ok {
                Some(true)
            } else if fails >= need_fail {
                Some(false)
            } else {
                verdict
            };
            let changed = new != verdict;
            let new_reason = new == Some(false) && message != last_message;
            if (changed || new_reason)
                && let Some(healthy) = new
            {
                verdict = new;
                last_message = message.clone();
                let ev = ProbeEvent {
                    generation,
                    kind,
                    healthy,
                    message,
                    changed,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let endpoint = |url: &str| parse_http_url(url).and_then(|u| http_endpoint(&u));
        assert_eq!(
            endpoint("http://127.0.0.1:8080/ready?x=1"),
            Ok(("127.0.0.1".into(), 8080, "127.0.0.1:8080".into()))
        );
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/ready?x=1")
                .ok()
                .and_then(|u| u.path_and_query().map(|p| p.to_string())),
            Some("/ready?x=1".into())
        );
        assert_eq!(
            endpoint("http://localhost"),
            Ok(("localhost".into(), 80, "localhost".into()))
        );
        // IPv6: connect to the bare address, send the bracketed one as `Host`.
        assert_eq!(
            endpoint("http://[::1]/"),
            Ok(("::1".into(), 80, "[::1]".into()))
        );
        assert_eq!(
            endpoint("http://[::1]:9000/healthz"),
            Ok(("::1".into(), 9000, "[::1]:9000".into()))
        );
        assert!(parse_http_url("https://x").is_err());
        assert!(parse_http_url("http://h:notaport/").is_err());
        assert!(parse_http_url("http:///path").is_err());
    }

    /// Serves one connection on `listener` with `response`, returning the request head.
    async fn serve_once(listener: tokio::net::TcpListener, response: &'static [u8]) -> String {
        use tokio::io::AsyncWriteExt;
        let Ok((mut stream, _)) = listener.accept().await else {
            return String::new();
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = stream.write_all(response).await;
        let _ = stream.shutdown().await;
        String::from_utf8_lossy(&head).into_owned()
    }

    fn http_target(url: &str, body: Option<&str>) -> ProbeTarget {
        let uri = parse_http_url(url).unwrap_or_else(|e| panic!("{e}"));
        ProbeTarget::Http {
            uri,
            status: StatusRange::default(),
            body: body.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn http_probe_to_ipv6_sends_a_bracketed_host() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("[::1]:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(serve_once(
            listener,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ));
        let target = http_target(&format!("http://[::1]:{port}/ready"), Some("ok"));
        let result = probe_once(&target, Duration::from_secs(10)).await;
        let head = server.await.map_err(std::io::Error::other)?;
        assert_eq!(result, Ok("HTTP 200".to_string()));
        assert!(head.starts_with("GET /ready HTTP/1.1\r\n"), "{head}");
        let host = head.lines().find_map(|l| {
            l.strip_prefix("host: ")
                .or_else(|| l.strip_prefix("Host: "))
        });
        assert_eq!(host, Some(format!("[::1]:{port}").as_str()), "{head}");
        Ok(())
    }

    #[tokio::test]
    async fn http_probe_checks_status_and_chunked_body() -> std::io::Result<()> {
        /// A response, the body to look for, and the probe's note or (part of) its error.
        type Case = (
            &'static [u8],
            Option<&'static str>,
            Result<&'static str, &'static str>,
        );
        let cases: [Case; 4] = [
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                Some("cde"),
                Ok("HTTP 200"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                Some("bye"),
                Err("does not contain `bye`"),
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                None,
                Err("HTTP 503 (expected 200-399)"),
            ),
            (b"SSH-2.0-OpenSSH_9.6\r\n", None, Err("HTTP request failed")),
        ];
        for (response, want, expected) in cases {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let server = tokio::spawn(serve_once(listener, response));
            let target = http_target(&format!("http://127.0.0.1:{port}/"), want);
            let result = probe_once(&target, Duration::from_secs(10)).await;
            server.abort();
            match (result, expected) {
                (Ok(note), Ok(want)) => assert_eq!(note, want),
                (Err(e), Err(want)) => assert!(e.contains(want), "{e} (wanted {want})"),
                (got, want) => panic!("got {got:?}, expected {want:?}"),
            }
        }
        Ok(())
    }

    #[test]
    fn resolves_targets() {
        let mut cfg = ProbeConfig {
            http: Some("/healthz".into()),
            ..ProbeConfig::default()
        };
        let cwd = std::path::Path::new("/");
        assert!(matches!(
            resolve(&cfg, Some(9000), &[], cwd),
            Ok(ProbeTarget::Http { uri, .. }) if uri == "http://127.0.0.1:9000/healthz"
        ));
        assert!(resolve(&cfg, None, &[], cwd).is_err());
        cfg.http = None;
        cfg.tcp = Some(TcpTarget::Port(5432));
        assert!(matches!(
            resolve(&cfg, None, &[], cwd),
            Ok(ProbeTarget::Tcp { port: 5432, .. })
        ));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn loop_honours_initial_delay_and_thresholds() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cfg = ProbeConfig {
            tcp: Some(TcpTarget::Port(port)),
            initial_delay: kinfra_core::config::Dur::from_secs(5),
            interval: kinfra_core::config::Dur::from_secs(1),
            success_threshold: 3,
            failure_threshold: 2,
            ..ProbeConfig::default()
        };
        let target =
            resolve(&cfg, None, &[], std::path::Path::new("/")).map_err(std::io::Error::other)?;
        let (tx, mut rx) = mpsc::channel(8);
        let t0 = tokio::time::Instant::now();
        let handle = start_loop(&cfg, target, ProbeKind::Readiness, 7, tx);
        let ev = rx.recv().await.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        assert!(ev.healthy && ev.changed && ev.generation == 7);
        // 5 s initial delay, then passes at 5, 6 and 7 s.
        assert_eq!(t0.elapsed().as_secs(), 7);
        drop(listener);
        let t1 = tokio::time::Instant::now();
        let ev = rx.recv().await.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        assert!(!ev.healthy && ev.changed);
        assert!(ev.message.contains("cannot connect"), "{}", ev.message);
        // Failures at +1 s and +2 s.
        assert_eq!(t1.elapsed().as_secs(), 2);
        handle.abort();
        Ok(())
    }

    #[tokio::test]
    async fn exec_probe_times_out_and_kills() {
        let target = ProbeTarget::Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), "sleep 30".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: "/".into(),
        };
        let started = std::time::Instant::now();
        let r = probe_once(&target, Duration::from_millis(200)).await;
        assert!(r.is_err_and(|e| e.contains("timed out")));
        // Well below the 30 s the command sleeps: the timeout killed it.
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}
