//! Health probes modelled on Kubernetes: HTTP GET (a minimal HTTP/1.1 client over a tokio
//! `TcpStream`, with status range and body match), TCP connect, and exec (killed, with its
//! whole process group, on timeout). A probe loop turns results into transitions after
//! `success_threshold` passes or `failure_threshold` failures in a row.

use kinfra_core::config::{CommandSpec, ProbeConfig, StatusRange, TcpTarget};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Largest HTTP response read by a probe.
const MAX_RESPONSE: usize = 64 * 1024;

/// A probe with everything resolved (port, URL, environment).
#[derive(Debug, Clone)]
pub enum ProbeTarget {
    /// GET `path` on `host:port`.
    Http {
        /// Host to connect to and send as `Host`.
        host: String,
        /// Port.
        port: u16,
        /// Path and query.
        path: String,
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

/// Splits `http://host:port/path` into its parts (port 80 by default).
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported probe URL `{url}`: only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("invalid port in probe URL `{url}`"))?;
            (h.trim_matches(|c| c == '[' || c == ']').to_string(), port)
        }
        _ => (authority.to_string(), 80),
    };
    if host.is_empty() {
        return Err(format!("probe URL `{url}` has no host"));
    }
    Ok((host, port, path.to_string()))
}

/// Resolves a probe config against the service's port and environment.
pub fn resolve(
    cfg: &ProbeConfig,
    port: Option<u16>,
    env: &[(String, String)],
    cwd: &std::path::Path,
) -> Result<ProbeTarget, String> {
    if let Some(http) = &cfg.http {
        let (host, port, path) = if http.starts_with("http://") {
            parse_http_url(http)?
        } else {
            let port = port.ok_or("an http probe with a path needs the service to have a port")?;
            let path = if http.starts_with('/') {
                http.clone()
            } else {
                format!("/{http}")
            };
            ("127.0.0.1".to_string(), port, path)
        };
        return Ok(ProbeTarget::Http {
            host,
            port,
            path,
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
        ProbeTarget::Http {
            host,
            port,
            path,
            status,
            body,
        } => http_get(host, *port, path, *status, body.as_deref()).await,
        ProbeTarget::Exec { argv, env, cwd } => exec(argv, env, cwd, timeout).await,
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    range: StatusRange,
    want_body: Option<&str>,
) -> Result<String, String> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kinfra-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request failed: {e}"))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the response failed: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= MAX_RESPONSE || response_complete(&buf) {
            break;
        }
    }
    let (code, body) = parse_response(&buf)?;
    if !range.contains(code) {
        return Err(format!(
            "HTTP {code} (expected {}-{})",
            range.min, range.max
        ));
    }
    if let Some(want) = want_body
        && !body.contains(want)
    {
        return Err(format!(
            "HTTP {code}, but the body does not contain `{want}`"
        ));
    }
    Ok(format!("HTTP {code}"))
}

fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// True when the buffer holds a whole response (by Content-Length or final chunk).
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = header_end(buf) else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    if let Some(len) = header_value(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return buf.len() >= end + len;
    }
    if header_value(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return buf[end..].windows(5).any(|w| w == b"0\r\n\r\n");
    }
    false
}

/// Parses status code and (de-chunked) body of an HTTP/1.x response.
pub fn parse_response(buf: &[u8]) -> Result<(u16, String), String> {
    let end = header_end(buf).unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..end]);
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        return Err(if buf.is_empty() {
            "empty response".to_string()
        } else {
            format!(
                "not an HTTP response: `{}`",
                status_line.chars().take(60).collect::<String>()
            )
        });
    }
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line `{status_line}`"))?;
    let raw = &buf[end.min(buf.len())..];
    let body = if header_value(&head, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(raw)
    } else {
        raw.to_vec()
    };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..nl]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        let start = nl + 2;
        let stop = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..stop]);
        raw = raw.get(stop + 2..).unwrap_or(&[]);
    }
    out
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
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/ready?x=1"),
            Ok(("127.0.0.1".into(), 8080, "/ready?x=1".into()))
        );
        assert_eq!(
            parse_http_url("http://localhost"),
            Ok(("localhost".into(), 80, "/".into()))
        );
        assert!(parse_http_url("https://x").is_err());
        assert!(parse_http_url("http://h:notaport/").is_err());
    }

    #[test]
    fn parses_responses() {
        let plain = b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain), Ok((204, "ok".into())));
        assert!(response_complete(plain));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Ok((200, "abcde".into())));
        assert!(response_complete(chunked));
        assert!(parse_response(b"SSH-2.0-OpenSSH").is_err());
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
            Ok(ProbeTarget::Http { port: 9000, .. })
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
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
