//! Child processes that die with kinfra, and pidfds to wait on and signal them. Shared by the
//! supervisor's spawner and the managed nats-server, so every child kinfra starts is set up
//! the same way.
//!
//! [`tie_to_parent`] gives a child its own process group and `PR_SET_PDEATHSIG` = SIGKILL.
//! The death signal fires when the *thread* that forked the child exits, not the process, so
//! callers fork from a thread that lives as long as the child should (the supervisor's
//! spawner thread, the managed server's own thread).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Highest signal number Linux knows (`_NSIG - 1`).
const MAX_SIGNAL: i32 = 64;

/// Sets `cmd` up so its child runs in its own process group (a Ctrl-C at the terminal reaches
/// kinfra, which stops children in order, and a stop signal reaches everything the child
/// started in its group), is SIGKILLed when the forking thread dies, and starts with no
/// signal ignored that kinfra happened to ignore.
pub fn tie_to_parent(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (prctl, getppid, raise, sigaction); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // kinfra died between fork and prctl: the death signal will never come.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            reset_ignored_signals();
            Ok(())
        });
    }
}

/// Gives every signal kinfra ignores back its default action. Ignored dispositions survive
/// `exec` (caught ones do not): started as a background job (SIGINT and SIGQUIT ignored) or
/// under `nohup` (SIGHUP), kinfra would pass that on, and a shell cannot trap a signal that
/// was ignored when it started, so a service would never see a `stop_signal = "INT"`.
/// (std already clears the signal mask and SIGPIPE.) Only async-signal-safe calls: it runs
/// between fork and exec.
fn reset_ignored_signals() {
    for sig in 1..=MAX_SIGNAL {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with a null new action only reads the disposition into `old`, a
        // valid, zeroed sigaction; numbers the kernel or libc reserve fail with EINVAL.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// A pidfd for `pid`: readable once the process exits, and a signal target that can never
/// be a recycled PID. Take it before the child can be reaped.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned no fd"))?;
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes an open pidfd (borrowed for the call), a signal number,
    // a null siginfo and flags 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdin(Stdio::null());
        tie_to_parent(&mut cmd);
        cmd
    }

    #[test]
    fn child_leads_its_group_and_dies_with_its_forking_thread() -> io::Result<()> {
        // Forked by a thread that then exits: the death signal must kill the child.
        let mut child = std::thread::spawn(|| sleeper().spawn())
            .join()
            .map_err(|_| io::Error::other("the forking thread panicked"))??;
        let pid = child.id() as i32;
        let pgid = crate::procstat::stat(pid).map(|s| s.pgid);
        let status = child.wait()?;
        assert_eq!(pgid, Some(pid), "not its own group leader");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        Ok(())
    }

    #[test]
    fn pidfd_signals_the_child() -> io::Result<()> {
        let mut child = sleeper().spawn()?;
        let fd = pidfd_open(child.id() as i32)?;
        pidfd_send_signal(fd.as_fd(), libc::SIGTERM)?;
        let status = child.wait()?;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
        // The process is reaped: signalling its pidfd now fails (ESRCH), never hits another.
        assert!(pidfd_send_signal(fd.as_fd(), libc::SIGTERM).is_err());
        Ok(())
    }
}
