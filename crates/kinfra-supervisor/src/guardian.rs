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
//! Without `/bin/sh` (a scratch container) the program itself is the guardian when its `main`
//! calls [`serve_if_requested`] first, as the `kinfra` binary does: it runs `/proc/self/exe`
//! in guardian mode, which does in Rust what the script does. A program that does not call it
//! has no guardian there, and the next start cleans up instead (see
//! [`crate::pids::kill_leftovers`]).

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use tracing::warn;

/// Set (with argv[0] [`SELF_ARG0`]) only in the environment of a guardian started from the
/// program itself; the guardian's environment is otherwise empty, so services never see it.
const SELF_VAR: &str = "KINFRA_GUARDIAN";
const SELF_ARG0: &str = "kinfra-guardian";
/// True once `main` called [`serve_if_requested`]: the program can be its own guardian.
static SELF_SERVES: AtomicBool = AtomicBool::new(false);

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

/// Runs the guardian and exits when this process was started as one (by a supervisor in this
/// same program, where there is no `/bin/sh`); otherwise returns at once and lets the
/// supervisor start the program itself as its guardian when it needs to. Call it first in
/// `main`, before any thread exists.
pub fn serve_if_requested() {
    let arg0 = std::env::args_os().next();
    if std::env::var_os(SELF_VAR).is_some() && arg0.as_deref() == Some(SELF_ARG0.as_ref()) {
        // The signals a terminal or a service manager sends to everyone are not for it.
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            // SAFETY: SIG_IGN installs no handler; no other thread exists.
            unsafe { libc::signal(signal, libc::SIG_IGN) };
        }
        serve(std::io::stdin().lock());
        std::process::exit(0);
    }
    SELF_SERVES.store(true, Ordering::Relaxed);
}

/// The guardian in Rust, the script's twin: reads registrations until EOF, then kills the
/// registered groups and tagged processes, three rounds.
fn serve(input: impl BufRead) {
    let mut groups: Vec<i32> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let Some(kind) = line.chars().next() else {
            continue;
        };
        let value = &line[kind.len_utf8()..];
        match kind {
            '+' => groups.extend(value.parse::<i32>().ok().filter(|g| *g > 1)),
            '-' => groups.retain(|g| value.parse() != Ok(*g)),
            'T' if is_safe(value) => tags.push(value.to_owned()),
            'U' => tags.retain(|t| t != value),
            _ => {}
        }
    }
    let needles: Vec<Vec<u8>> = tags
        .iter()
        .map(|t| format!("{}={t}", crate::pids::TAG_VAR).into_bytes())
        .collect();
    let me = std::process::id();
    for _ in 0..3 {
        for g in &groups {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(-*g, libc::SIGKILL) };
        }
        if needles.is_empty() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir("/proc") else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let tagged = needles
                .iter()
                .any(|n| environ.windows(n.len()).any(|w| w == n.as_slice()));
            if tagged && let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// How the guardian starts: the script under `/bin/sh`, else the program itself when it
/// serves (see [`serve_if_requested`]); `None` when neither is possible.
fn command() -> Option<Command> {
    if Path::new("/bin/sh").exists() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", SCRIPT]).env_clear();
        Some(cmd)
    } else if SELF_SERVES.load(Ordering::Relaxed) {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0(SELF_ARG0).env_clear().env(SELF_VAR, "1");
        Some(cmd)
    } else {
        None
    }
}

fn start() -> Option<Guardian> {
    let Some(mut cmd) = command() else {
        warn!(
            "No guardian process (no /bin/sh): leftovers of a killed kinfra are cleaned at the next start instead."
        );
        return None;
    };
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
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

    /// The Rust guardian kills the groups still registered at EOF, and not the removed ones.
    #[test]
    fn rust_guardian_kills_registered_groups_at_eof() {
        let spawn_group = || {
            let mut child = Command::new("sleep");
            child.arg("30").process_group(0);
            child.spawn().expect("spawn sleep")
        };
        let mut kept = spawn_group();
        let mut removed = spawn_group();
        let (k, r) = (kept.id(), removed.id());
        let input = format!("+{k}\n+{r}\n-{r}\nTnot-hex;\n");
        serve(input.as_bytes());
        let status = kept.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(
            removed.try_wait().expect("try_wait").is_none(),
            "a removed group was killed"
        );
        let _ = removed.kill();
        let _ = removed.wait();
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
