//! The guardian: a tiny `/bin/sh` helper that outlives a SIGKILLed kinfra just long enough
//! to kill what it ran.
//!
//! The parent-death signal reaches only kinfra's direct children. A service run as
//! `sh -c "python app.py"` has its real work in a grandchild, and services may have escaped
//! their group (`setsid`). The guardian runs in its own session, reads kinfra's registrations
//! from a pipe (`+PGID`/`-PGID` for process groups, `T<tag>`/`U<tag>` for environment tags),
//! and when the pipe reaches EOF, which happens only when every kinfra thread is gone, it
//! SIGKILLs the registered groups and every process carrying a registered tag. After a
//! graceful shutdown nothing is registered, so it just exits.
//!
//! It is best effort: without `/bin/sh` (a scratch container) there is no guardian, and the
//! next start cleans up instead (see [`crate::pids::kill_leftovers`]).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use tracing::warn;

const SCRIPT: &str = r#"
trap '' INT TERM HUP QUIT PIPE
groups=" "
tags=" "
del_group() { n=" "; for x in $groups; do [ "$x" = "$1" ] || n="$n$x "; done; groups=$n; }
del_tag() { n=" "; for x in $tags; do [ "$x" = "$1" ] || n="$n$x "; done; tags=$n; }
while IFS= read -r line; do
  v=${line#?}
  case "$line" in
    +*) groups="$groups$v " ;;
    -*) del_group "$v" ;;
    T*) tags="$tags$v " ;;
    U*) del_tag "$v" ;;
  esac
done
for round in 1 2 3; do
  for g in $groups; do kill -9 -- "-$g" 2>/dev/null; done
  for t in $tags; do
    for f in $(grep -la "KINFRA_SUPERVISOR_TAG=$t" /proc/[0-9]*/environ 2>/dev/null); do
      p=${f#/proc/}
      kill -9 "${p%/environ}" 2>/dev/null
    done
  done
done
"#;

struct Guardian {
    stdin: ChildStdin,
    pid: u32,
}

fn guardian() -> &'static Mutex<Option<Guardian>> {
    static G: OnceLock<Mutex<Option<Guardian>>> = OnceLock::new();
    G.get_or_init(|| Mutex::new(start()))
}

fn start() -> Option<Guardian> {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", SCRIPT])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(mut child) => {
            let stdin = child.stdin.take()?;
            // Never let a stuck guardian block a supervisor: a full pipe drops the line.
            // SAFETY: fcntl on an fd owned by `stdin`.
            unsafe {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&stdin);
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
            }
            let pid = child.id();
            // Reap it if it ever ends before kinfra does.
            let _ = std::thread::Builder::new()
                .name("kinfra-guardian".into())
                .spawn(move || {
                    let _ = child.wait();
                });
            Some(Guardian { stdin, pid })
        }
        Err(error) => {
            warn!(%error, "No guardian process: leftovers of a killed kinfra are cleaned at the next start instead.");
            None
        }
    }
}

fn send(line: &str) {
    let mut g = match guardian().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(guard) = g.as_mut() {
        match guard.stdin.write_all(format!("{line}\n").as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                warn!("The guardian is not keeping up; a registration was dropped.");
            }
            Err(error) => {
                warn!(%error, "The guardian process is gone.");
                *g = None;
            }
        }
    }
}

/// Starts the guardian if it is not running yet.
pub fn init() {
    let _ = guardian();
}

/// The guardian's PID, when it runs.
pub fn pid() -> Option<u32> {
    match guardian().lock() {
        Ok(g) => g.as_ref().map(|g| g.pid),
        Err(p) => p.into_inner().as_ref().map(|g| g.pid),
    }
}

/// Registers a process group to kill if kinfra dies.
pub fn add_group(pgid: i32) {
    if pgid > 1 {
        send(&format!("+{pgid}"));
    }
}

/// Forgets a process group (it is gone).
pub fn remove_group(pgid: i32) {
    if pgid > 1 {
        send(&format!("-{pgid}"));
    }
}

/// Registers an environment tag prefix whose processes die with kinfra.
pub fn add_tag(prefix: &str) {
    if is_safe(prefix) {
        send(&format!("T{prefix}"));
    }
}

/// Forgets a tag prefix (its supervisor shut down).
pub fn remove_tag(prefix: &str) {
    if is_safe(prefix) {
        send(&format!("U{prefix}"));
    }
}

/// Tags go into a shell word and a grep pattern: hex digits and `/` only.
fn is_safe(prefix: &str) -> bool {
    !prefix.is_empty() && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_tags_pass() {
        assert!(is_safe("0123abcdef/"));
        assert!(!is_safe("abc; rm -rf /"));
        assert!(!is_safe(""));
    }

    #[test]
    fn guardian_runs_in_its_own_session() {
        init();
        let Some(pid) = pid() else {
            return;
        };
        let st = crate::procfs::stat(pid as i32);
        assert_eq!(st.map(|s| s.sid), Some(pid as i32));
    }
}
