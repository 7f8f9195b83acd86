//! The managed `nats-server`: found on PATH, started on a loopback port with JetStream and
//! its store under `<state_dir>/nats`, restarted with backoff when it dies, and stopped with
//! the bus.
//!
//! One dedicated thread per managed server forks it and waits for it. `PR_SET_PDEATHSIG`
//! fires when the *thread* that forked a child exits, so the forking thread must live as long
//! as the server does; this one does, and a SIGKILL of kinfra takes the server with it.
//! Signals go through a pidfd taken right after the fork, so a stop can never hit a recycled
//! PID.
//!
//! Clients authenticate with a random token. It is written to `<state_dir>/nats/token` and to
//! the server's config file (both mode 0600), never onto a command line, which other users
//! could read in `/proc`.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Name of the binary looked up on PATH.
pub const BINARY: &str = "nats-server";
/// How long a fresh server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// First and longest delay between restarts of a server that keeps dying.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A server that ran this long before dying restarts after the shortest delay again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Output lines kept for error messages.
const TAIL_LINES: usize = 20;

/// Why the managed server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// A file or directory under the state dir could not be written.
    #[error("cannot prepare {}: {source}", .path.display())]
    Files {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The process could not be spawned.
    #[error("cannot run {}: {source}", .binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// It exited or did not accept connections in time.
    #[error("nats-server did not become ready on port {port}: {reason}")]
    NotReady {
        /// The port it was given.
        port: u16,
        /// What went wrong, with its last output lines.
        reason: String,
    },
}

/// Finds `nats-server` in `search_path` (a PATH-style list); `None` when it is not there.
pub fn find_binary(search_path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(search_path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(BINARY))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What is needed to run the server.
#[derive(Debug, Clone)]
struct Spec {
    binary: PathBuf,
    args: Vec<String>,
    pid_file: PathBuf,
}

/// State shared between the handle and the supervising thread.
struct ServerShared {
    pid: AtomicU32,
    pidfd: Mutex<Option<OwnedFd>>,
    stopping: AtomicBool,
    restarts: AtomicU64,
    /// Counts exits, so a waiter can tell the server it started has died.
    exits: watch::Sender<u64>,
    tail: Mutex<VecDeque<String>>,
}

impl ServerShared {
    fn signal(&self, signal: libc::c_int) {
        let guard = match self.pidfd.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(fd) = guard.as_ref() {
            let _ = kinfra_core::child::pidfd_send_signal(fd.as_fd(), signal);
        }
    }

    fn tail(&self) -> String {
        let guard = match self.tail.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    fn push_line(&self, line: String) {
        let mut guard = match self.tail.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if guard.len() >= TAIL_LINES {
            guard.pop_front();
        }
        guard.push_back(line);
    }
}

/// A running managed server. Dropping it kills the server; [`ManagedServer::stop`] stops it
/// gracefully.
pub(crate) struct ManagedServer {
    port: u16,
    token: kinfra_core::Secret,
    token_file: PathBuf,
    shared: Arc<ServerShared>,
    stop_tx: Option<std_mpsc::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for ManagedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedServer")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ManagedServer {
    /// Starts the server and waits until it accepts connections. With no fixed `port`, the
    /// port used last time is preferred, and a port lost to a race is replaced by another.
    pub(crate) async fn start(
        binary: PathBuf,
        state_dir: &Path,
        name: &str,
        port: Option<u16>,
    ) -> Result<ManagedServer, ManagedError> {
        let dir = state_dir.join("nats");
        prepare_dir(&dir)?;
        kill_leftover(&dir);
        let token_file = dir.join("token");
        let token = kinfra_core::random::hex(24).map_err(|source| ManagedError::Files {
            path: token_file.clone(),
            source,
        })?;
        let token = kinfra_core::Secret::new(token);
        write_private(&token_file, token.expose())?;
        let conf = dir.join("nats-server.conf");
        write_private(
            &conf,
            &format!(
                "# Written by kinfra at each start.\nauthorization {{\n  token: \"{}\"\n}}\n",
                token.expose()
            ),
        )?;
        let store = dir.join("jetstream");
        let attempts = if port.is_some() { 1 } else { 3 };
        let mut last_error = None;
        for attempt in 0..attempts {
            let chosen = match port {
                Some(p) => p,
                None if attempt == 0 => previous_port(&dir)
                    .filter(|p| port_is_free(*p))
                    .map_or_else(free_port, Ok)
                    .map_err(|source| ManagedError::Files {
                        path: dir.clone(),
                        source,
                    })?,
                None => free_port().map_err(|source| ManagedError::Files {
                    path: dir.clone(),
                    source,
                })?,
            };
            let spec = Spec {
                binary: binary.clone(),
                args: vec![
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    chosen.to_string(),
                    "-n".into(),
                    crate::subject::token(name),
                    "-js".into(),
                    "-sd".into(),
                    store.display().to_string(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
                pid_file: dir.join("nats-server.pid"),
            };
            let mut server = Self::spawn(spec, chosen, token.clone(), token_file.clone()).await?;
            match server.wait_ready().await {
                Ok(()) => {
                    let url = format!("nats://127.0.0.1:{chosen}");
                    // Best effort: for scripts and for the next start's port choice.
                    let _ = fs::write(dir.join("port"), chosen.to_string());
                    let _ = fs::write(dir.join("url"), &url);
                    tracing::info!(
                        port = chosen,
                        pid = server.pid(),
                        "Managed nats-server ready."
                    );
                    return Ok(server);
                }
                Err(e) => {
                    tracing::warn!(port = chosen, error = %e, "Managed nats-server failed to start.");
                    server.stop(Duration::from_secs(2)).await;
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or(ManagedError::NotReady {
            port: port.unwrap_or(0),
            reason: "no attempt was made".into(),
        }))
    }

    async fn spawn(
        spec: Spec,
        port: u16,
        token: kinfra_core::Secret,
        token_file: PathBuf,
    ) -> Result<ManagedServer, ManagedError> {
        let shared = Arc::new(ServerShared {
            pid: AtomicU32::new(0),
            pidfd: Mutex::new(None),
            stopping: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            exits: watch::Sender::new(0),
            tail: Mutex::new(VecDeque::new()),
        });
        let (stop_tx, stop_rx) = std_mpsc::channel();
        let (first_tx, first_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let binary = spec.binary.clone();
        std::thread::Builder::new()
            .name("kinfra-nats".into())
            .spawn(move || {
                supervise(spec, thread_shared, stop_rx, first_tx);
                drop(done_tx);
            })
            .map_err(|source| ManagedError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let server = ManagedServer {
            port,
            token,
            token_file,
            shared,
            stop_tx: Some(stop_tx),
            done: Some(done_rx),
        };
        match first_rx.await {
            Ok(Ok(_pid)) => Ok(server),
            Ok(Err(source)) => Err(ManagedError::Spawn { binary, source }),
            Err(_) => Err(ManagedError::Spawn {
                binary,
                source: io::Error::other("the nats-server thread ended early"),
            }),
        }
    }

    async fn wait_ready(&self) -> Result<(), ManagedError> {
        let mut exits = self.shared.exits.subscribe();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if *exits.borrow_and_update() > 0 {
                return Err(ManagedError::NotReady {
                    port: self.port,
                    reason: format!("it exited: {}", self.shared.tail()),
                });
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ManagedError::NotReady {
                    port: self.port,
                    reason: format!(
                        "not accepting connections after {READY_TIMEOUT:?}: {}",
                        self.shared.tail()
                    ),
                });
            }
            tokio::select! {
                _ = exits.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The token clients authenticate with.
    pub(crate) fn token(&self) -> &kinfra_core::Secret {
        &self.token
    }

    /// The file holding the token.
    pub(crate) fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// PID of the current process, 0 between a death and the restart.
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::Acquire)
    }

    /// Restarts after the server died.
    pub(crate) fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Stops the server: SIGTERM, then SIGKILL after `grace`.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        self.shared.signal(libc::SIGTERM);
        let Some(mut done) = self.done.take() else {
            return;
        };
        if tokio::time::timeout(grace, &mut done).await.is_err() {
            tracing::warn!(
                pid = self.pid(),
                "nats-server did not stop in time; killing it."
            );
            self.shared.signal(libc::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
        }
    }
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.shared.stopping.store(true, Ordering::Release);
            if let Some(tx) = self.stop_tx.take() {
                let _ = tx.send(());
            }
            self.shared.signal(libc::SIGKILL);
        }
    }
}

/// The supervising thread: spawn, wait, restart with backoff, until stopped.
fn supervise(
    spec: Spec,
    shared: Arc<ServerShared>,
    stop_rx: std_mpsc::Receiver<()>,
    first: oneshot::Sender<io::Result<u32>>,
) {
    let mut first = Some(first);
    let mut delay = RESTART_MIN;
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            break;
        }
        let started = Instant::now();
        match spawn_child(&spec, &shared) {
            Ok(mut child) => {
                let pid = child.id();
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(pid));
                }
                let status = child.wait();
                {
                    let mut guard = match shared.pidfd.lock() {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                    *guard = None;
                }
                shared.pid.store(0, Ordering::Release);
                shared.exits.send_modify(|n| *n += 1);
                if shared.stopping.load(Ordering::Acquire) {
                    tracing::debug!(pid, ?status, "Managed nats-server stopped.");
                    break;
                }
                if started.elapsed() >= STABLE_AFTER {
                    delay = RESTART_MIN;
                }
                tracing::warn!(
                    pid,
                    status = %status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    delay_ms = delay.as_millis() as u64,
                    output = %shared.tail(),
                    "Managed nats-server died; restarting."
                );
            }
            Err(error) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(error));
                    return;
                }
                tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "Cannot restart nats-server.");
            }
        }
        match stop_rx.recv_timeout(delay) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        delay = (delay * 2).min(RESTART_MAX);
        shared.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn_child(spec: &Spec, shared: &Arc<ServerShared>) -> io::Result<std::process::Child> {
    let mut cmd = Command::new(&spec.binary);
    cmd.args(&spec.args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    // Its own process group (a Ctrl-C at the terminal reaches kinfra, which stops the server
    // in order, and not the server directly) and the parent-death signal.
    kinfra_core::child::tie_to_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // Taken before anyone waits on the child, so the PID cannot have been recycled.
    if let Ok(fd) = kinfra_core::child::pidfd_open(pid as i32) {
        let mut guard = match shared.pidfd.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *guard = Some(fd);
    }
    shared.pid.store(pid, Ordering::Release);
    let _ = fs::write(&spec.pid_file, pid.to_string());
    if let Some(out) = child.stdout.take() {
        forward_output(out, shared.clone(), pid);
    }
    if let Some(err) = child.stderr.take() {
        forward_output(err, shared.clone(), pid);
    }
    Ok(child)
}

/// Reads the server's output lines into tracing (errors and warnings at `warn`) and the tail.
fn forward_output(stream: impl io::Read + Send + 'static, shared: Arc<ServerShared>, pid: u32) {
    let spawned = std::thread::Builder::new()
        .name("kinfra-nats-log".into())
        .spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if line.contains("[ERR]") || line.contains("[FTL]") || line.contains("[WRN]") {
                    tracing::warn!(pid, line = %line, "nats-server");
                } else {
                    tracing::debug!(pid, line = %line, "nats-server");
                }
                shared.push_line(line);
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "Cannot read nats-server output.");
    }
}

fn prepare_dir(dir: &Path) -> Result<(), ManagedError> {
    let wrap = |source| ManagedError::Files {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(wrap)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)
}

fn write_private(path: &Path, contents: &str) -> Result<(), ManagedError> {
    let wrap = |source| ManagedError::Files {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(wrap)?;
    // An older file may have been created with other permissions.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(wrap)?;
    file.write_all(contents.as_bytes()).map_err(wrap)
}

fn previous_port(dir: &Path) -> Option<u16> {
    fs::read_to_string(dir.join("port"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p != 0)
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port nobody listens on right now (the OS picks it).
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Kills a nats-server left over from a kinfra that died without stopping it (it would
/// hold the store). Only a process whose command line names this state dir is touched.
fn kill_leftover(dir: &Path) {
    let Some(pid) = fs::read_to_string(dir.join("nats-server.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        return;
    };
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let store = dir.join("jetstream").display().to_string();
    if !cmdline.contains(BINARY) || !cmdline.contains(&store) {
        return;
    }
    tracing::warn!(pid, "Killing a leftover managed nats-server.");
    // SAFETY: kill with a positive pid and a valid signal has no memory effects.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        // Gone, or a zombie waiting for a parent that is not us.
        if kinfra_core::procstat::stat(pid).is_none_or(|s| s.is_zombie()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binary_only_where_it_is() {
        let dir = tempfile::tempdir().ok();
        let Some(dir) = dir else { return };
        let empty = std::ffi::OsString::from(dir.path());
        assert_eq!(find_binary(&empty), None);
        let bin = dir.path().join(BINARY);
        assert!(fs::write(&bin, "#!/bin/sh\n").is_ok());
        assert_eq!(find_binary(&empty), None, "not executable yet");
        assert!(fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).is_ok());
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).ok();
        assert_eq!(path.and_then(|p| find_binary(&p)), Some(bin));
    }

    #[test]
    fn private_files_are_0600() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let path = dir.path().join("token");
        assert!(write_private(&path, "abc").is_ok());
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .ok();
        assert_eq!(mode, Some(0o600));
        assert_eq!(fs::read_to_string(&path).ok().as_deref(), Some("abc"));
    }
}
