//! Spawning children from one dedicated, long-lived thread, and waiting for their exit.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! Tokio may retire its worker and blocking threads at any time, so every child is forked by
//! the `kinfra-spawner` thread, which is started once and lives as long as the process. With
//! that, a SIGKILL of kinfra takes its direct children with it.
//!
//! Each child gets its own process group (`setpgid(0, 0)`), so a stop signal reaches
//! everything it started that stayed in the group ([`kinfra_core::child::tie_to_parent`],
//! shared with the managed nats-server). Exit is awaited through a pidfd (readable
//! when the process exits), which wakes the waiting task within microseconds of the exit with
//! no polling; kernels without pidfd fall back to a blocking `waitpid` thread.

use crate::procfs;
use kinfra_core::event::ExitInfo;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// What to run.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// Program (looked up in `PATH` when it has no `/`).
    pub program: String,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// The complete environment of the child.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
}

/// A freshly spawned child.
#[derive(Debug)]
pub struct Spawned {
    /// Its PID (also its process group ID).
    pub pid: i32,
    /// Its start time from `/proc/PID/stat`, 0 when it could not be read.
    pub start_time: u64,
    /// Read end of its stdout pipe.
    pub stdout: Option<OwnedFd>,
    /// Read end of its stderr pipe.
    pub stderr: Option<OwnedFd>,
}

type Job = (SpawnSpec, oneshot::Sender<io::Result<Spawned>>);

fn spawner() -> io::Result<&'static std::sync::Mutex<std_mpsc::Sender<Job>>> {
    static SPAWNER: OnceLock<std::sync::Mutex<std_mpsc::Sender<Job>>> = OnceLock::new();
    if let Some(s) = SPAWNER.get() {
        return Ok(s);
    }
    let (tx, rx) = std_mpsc::channel::<Job>();
    let started = std::thread::Builder::new()
        .name("kinfra-spawner".into())
        .spawn(move || {
            // The sender lives in a static, so this loop runs for the life of the process.
            while let Ok((spec, reply)) = rx.recv() {
                let _ = reply.send(spawn_now(&spec));
            }
        });
    match started {
        Ok(_) => {
            // Another caller may have won the race; its thread is then the one used and ours
            // exits when its channel closes.
            Ok(SPAWNER.get_or_init(|| std::sync::Mutex::new(tx)))
        }
        Err(e) => Err(e),
    }
}

/// Makes sure the spawner thread runs (called early, so the first spawn is not slower).
pub fn init() -> io::Result<()> {
    spawner().map(|_| ())
}

/// Spawns `spec` on the spawner thread.
pub async fn spawn(spec: SpawnSpec) -> io::Result<Spawned> {
    let (tx, rx) = oneshot::channel();
    {
        let sender = spawner()?;
        let guard = match sender.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard
            .send((spec, tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    }
    rx.await
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

fn spawn_now(spec: &SpawnSpec) -> io::Result<Spawned> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group, parent-death signal, no inherited ignored signals.
    kinfra_core::child::tie_to_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let start_time = procfs::stat(pid).map_or(0, |s| s.start_time);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    // `child` is dropped without waiting: the exit is collected by [`wait_exit`].
    Ok(Spawned {
        pid,
        start_time,
        stdout,
        stderr,
    })
}

fn status_to_exit(status: nix::sys::wait::WaitStatus) -> Option<ExitInfo> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(ExitInfo {
            code: Some(code),
            signal: None,
        }),
        WaitStatus::Signaled(_, sig, _) => Some(ExitInfo {
            code: None,
            signal: Some(sig as i32),
        }),
        _ => None,
    }
}

fn try_reap(pid: i32) -> io::Result<Option<ExitInfo>> {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(status) => Ok(status_to_exit(status)),
        Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Waits for the child `pid` (spawned by [`spawn`]) to exit and reaps it.
pub async fn wait_exit(pid: i32) -> ExitInfo {
    let unknown = ExitInfo {
        code: None,
        signal: None,
    };
    let registered = kinfra_core::child::pidfd_open(pid).and_then(|fd| {
        // SAFETY: `fd` is an open pidfd owned by the AsyncFd for its whole life.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))
    });
    if let Ok(afd) = registered {
        loop {
            match try_reap(pid) {
                Ok(Some(exit)) => return exit,
                Ok(None) => {}
                Err(_) => return unknown,
            }
            match afd.readable().await {
                Ok(mut guard) => {
                    // The pidfd stays readable once the process exited; the reap above then
                    // succeeds. Clearing guards against a spurious wake-up.
                    if let Ok(Some(exit)) = try_reap(pid) {
                        return exit;
                    }
                    guard.clear_ready();
                }
                Err(_) => break,
            }
        }
    }
    // Fallback: a blocking waitpid on a blocking-pool thread.
    let res = tokio::task::spawn_blocking(move || {
        use nix::sys::wait::waitpid;
        loop {
            match waitpid(nix::unistd::Pid::from_raw(pid), None) {
                Ok(status) => {
                    if let Some(exit) = status_to_exit(status) {
                        return exit;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    return ExitInfo {
                        code: None,
                        signal: None,
                    };
                }
            }
        }
    })
    .await;
    res.unwrap_or(unknown)
}

/// Sends `sig` to the process group `pgid`. Returns false when the group is empty.
pub fn signal_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-pgid, sig) == 0 }
}

/// Sends `sig` to `pid` if it is still the process started at `start_time`.
pub fn signal_exact(pid: i32, start_time: u64, sig: i32) -> bool {
    if pid <= 1 || !procfs::is_same_alive(pid, start_time) {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// True when a live (not zombie) process is still in group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    procfs::snapshot()
        .iter()
        .any(|p| p.pgid == pgid && !p.is_zombie())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str) -> SpawnSpec {
        SpawnSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: std::env::temp_dir(),
        }
    }

    #[tokio::test]
    async fn spawns_in_own_group_and_reaps_exit_code() {
        let s = spawn(spec("exit 7")).await;
        let Ok(s) = s else {
            panic!("spawn failed: {s:?}");
        };
        let exit = wait_exit(s.pid).await;
        assert_eq!(exit.code, Some(7));
        assert!(procfs::stat(s.pid).is_none(), "child must be reaped");
    }

    #[tokio::test]
    async fn child_is_group_leader_with_death_signal() {
        let Ok(s) = spawn(spec("sleep 5")).await else {
            panic!("spawn failed");
        };
        let st = procfs::stat(s.pid);
        assert_eq!(st.map(|s| s.pgid), Some(s.pid));
        assert!(s.start_time > 0);
        assert!(signal_group(s.pid, libc::SIGKILL));
        let exit = wait_exit(s.pid).await;
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        // The leader can be reaped while another member of its group is still on its way out
        // of the kernel after the same SIGKILL (not yet a zombie): the group is gone soon, not
        // necessarily at this instant.
        assert!(
            crate::test_support::eventually(10, || !group_alive(s.pid)).await,
            "group {} still alive 10 s after SIGKILL",
            s.pid
        );
    }

    #[tokio::test]
    async fn children_do_not_inherit_ignored_signals() {
        // Like a background job ignoring SIGINT; SIGUSR2 is used by nothing else in this
        // test binary, and the child must still be able to trap it.
        // SAFETY: setting a disposition to SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        let s = spawn(spec("trap 'exit 9' USR2; kill -USR2 $$; sleep 5; exit 0")).await;
        let Ok(s) = s else {
            panic!("spawn failed: {s:?}");
        };
        let exit = wait_exit(s.pid).await;
        assert_eq!(exit.code, Some(9), "the trap never ran: {exit:?}");
    }

    #[tokio::test]
    async fn missing_program_is_an_error() {
        let mut sp = spec("");
        sp.program = "/no/such/program".into();
        let err = spawn(sp).await.err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::NotFound));
    }
}
