//! `kinfra runtime tui` for real: the built binary in a tmux pane (a private tmux server per
//! test), driven with send-keys and read with capture-pane, against a running runtime.

use crate::cli::{running_pid, status_json};
use crate::support::{Project, kinfra_bin, stderr, unique_tag, wait_for};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A tmux server of this test's own (`tmux -L NAME`), killed on drop (its socket file
/// removed).
struct Tmux {
    socket: String,
    socket_path: Option<String>,
}

impl Tmux {
    /// Starts a detached 160x45 session running `command` (through the shell).
    fn start(tag: &str, command: &str) -> Self {
        let mut tmux = Self {
            socket: format!("kinfra-{tag}"),
            socket_path: None,
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "45",
            "-s",
            "tui",
            command,
        ]);
        assert!(out.status.success(), "tmux new-session: {}", stderr(&out));
        let out = tmux.run(&["display-message", "-p", "#{socket_path}"]);
        tmux.socket_path = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|path| !path.is_empty());
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        // `-f /dev/null`: no user config; `-L`: a server of this test's own.
        let out = Command::new("tmux")
            .args(["-f", "/dev/null", "-L"])
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(out) => out,
            Err(e) => panic!("cannot run tmux ({e}): install the tmux package (./x test does)"),
        }
    }

    /// The pane's text; with `escapes`, with its colours and attributes as SGR sequences.
    fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "tui"];
        if escapes {
            args.push("-e");
        }
        let out = self.run(&args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends keys (tmux key names, or literal text with `-l`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "tui"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "tmux send-keys: {}", stderr(&out));
    }

    /// Waits until the pane shows something `cond` accepts; panics with the pane.
    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let limit = Duration::from_secs(30);
        let deadline = std::time::Instant::now() + limit;
        loop {
            let screen = self.capture(false);
            if cond(&screen) {
                return screen;
            }
            last = if screen.is_empty() { last } else { screen };
            if std::time::Instant::now() > deadline {
                panic!("timed out after {limit:?} waiting for {what}; the pane:\n{last}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `1` while the pane is on the alternate screen.
    fn alternate_on(&self) -> String {
        let out = self.run(&["display-message", "-p", "-t", "tui", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The table row of `service` on the screen (a line holding its name and a state).
fn row<'a>(screen: &'a str, service: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        l.split_whitespace().any(|w| w == service)
            && ["running", "starting", "stopped", "pending", "stopping"]
                .iter()
                .any(|s| l.contains(s))
    })
}

fn config(tag: &str) -> String {
    format!(
        r#"
[project]
name = "tui"

[env]
KINFRA_TEST_TAG = "{tag}"

[dashboard]
listen = "127.0.0.1:0"

[proxy]
enabled = false

[services.ticker]
command = "i=0; while true; do i=$((i+1)); echo tui-known-line $i; sleep 0.3; done"
stop_grace = "2s"

[services.worker]
command = "exec sleep 1000"
stop_grace = "2s"
"#
    )
}

/// The command line tmux runs: the TUI, then a marker with its exit status, then a shell
/// that waits (so the pane stays to be read after the TUI left).
fn tui_command(p: &Project) -> String {
    format!(
        "cd '{}' && '{}' runtime tui; echo \"tui exited with $?\"; exec sleep 600",
        p.path().display(),
        kinfra_bin()
    )
}

#[test]
fn tui_lists_restarts_searches_and_restores_the_terminal() {
    let tag = unique_tag("tui");
    let p = Project::with_config(&config(&tag));
    let _up = p.up(&[], &[]);
    let old_pid = wait_for(Duration::from_secs(20), "ticker running", || {
        running_pid(&p, "ticker")
    });
    wait_for(Duration::from_secs(20), "worker running", || {
        running_pid(&p, "worker")
    });

    let tmux = Tmux::start(&tag, &tui_command(&p));
    // Both rows show running, with their PIDs.
    let old = old_pid.to_string();
    tmux.wait_screen("both services running in the list", |s| {
        row(s, "ticker").is_some_and(|r| r.contains("running") && r.contains(&old))
            && row(s, "worker").is_some_and(|r| r.contains("running"))
    });
    assert_eq!(
        tmux.alternate_on(),
        "1",
        "the TUI uses the alternate screen"
    );

    // Down to worker and back up to ticker: the log pane follows the selection.
    tmux.keys(&["j"]);
    tmux.wait_screen("worker's log pane", |s| s.contains("logs: worker"));
    tmux.keys(&["k"]);
    tmux.wait_screen("ticker's known line in the log pane", |s| {
        s.contains("logs: ticker") && s.contains("tui-known-line")
    });

    // `r` restarts the selected service: a new PID in the runtime and on the screen.
    tmux.keys(&["r"]);
    let new_pid = wait_for(Duration::from_secs(30), "ticker restarted", || {
        running_pid(&p, "ticker").filter(|pid| *pid != old_pid)
    });
    let new = new_pid.to_string();
    tmux.wait_screen("the new PID in the list", |s| {
        row(s, "ticker").is_some_and(|r| r.contains(&new) && r.contains("running"))
    });
    tmux.wait_screen("the action's result on the status line", |s| {
        s.contains("restart ticker: done")
    });
    assert_eq!(
        status_json(&p)["services"]["ticker"]["pid"].as_u64(),
        Some(new_pid)
    );

    // `/` searches the log pane: the matches are highlighted (yellow background).
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "known-line"]);
    tmux.keys(&["Enter"]);
    // Enter shows the newest match: the summary counts it (`N of M matches`).
    tmux.wait_screen("the search summary", |s| {
        s.contains("/known-line: ") && s.contains(" of ") && s.contains(" matches")
    });
    let coloured = tmux.capture(true);
    let highlighted = coloured
        .split('\x1b')
        .filter(|seq| {
            (seq.starts_with("[43m") || seq.starts_with("[48;5;3m") || seq.contains(";43m"))
                && seq.contains("known-line")
        })
        .count();
    assert!(
        highlighted > 0,
        "no highlighted match (yellow background: SGR 43 or 48;5;3) in the pane:\n{coloured:?}"
    );
    tmux.keys(&["Escape"]);

    // `q` quits: the alternate screen is left and the shell sees exit status 0.
    tmux.keys(&["q"]);
    let screen = tmux.wait_screen("the TUI's exit", |s| s.contains("tui exited with"));
    assert!(screen.contains("tui exited with 0"), "{screen}");
    assert_eq!(tmux.alternate_on(), "0", "the alternate screen was left");
}

#[test]
fn tui_exits_non_zero_when_the_runtime_stops() {
    let tag = unique_tag("tuidown");
    let p = Project::with_config(&config(&tag));
    let mut up = p.up(&[], &[]);
    wait_for(Duration::from_secs(20), "worker running", || {
        running_pid(&p, "worker")
    });
    let tmux = Tmux::start(&tag, &tui_command(&p));
    tmux.wait_screen("the list", |s| row(s, "worker").is_some());
    let out = p.run(&["runtime", "down"]);
    assert!(out.status.success(), "down: {}", stderr(&out));
    up.wait_exit(Duration::from_secs(30));
    let screen = tmux.wait_screen("the TUI's exit", |s| s.contains("tui exited with"));
    assert!(screen.contains("tui exited with 1"), "{screen}");
    assert!(screen.contains("runtime stopped"), "{screen}");
    assert_eq!(tmux.alternate_on(), "0", "the alternate screen was left");
}

#[test]
fn tui_restores_the_terminal_on_sigterm() {
    let tag = unique_tag("tuiterm");
    let p = Project::with_config(&config(&tag));
    let _up = p.up(&[], &[]);
    let tmux = Tmux::start(&tag, &tui_command(&p));
    tmux.wait_screen("the list", |s| row(s, "worker").is_some());
    assert_eq!(tmux.alternate_on(), "1");
    // The pane runs a shell; the TUI is its child.
    let out = tmux.run(&["display-message", "-p", "-t", "tui", "#{pane_pid}"]);
    let shell = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .unwrap_or_else(|e| panic!("children of the pane's shell {shell}: {e}"));
    let tui: u32 = children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no child of the pane's shell {shell}: {children:?}"));
    crate::support::kill(tui, libc::SIGTERM);
    let screen = tmux.wait_screen("the TUI's exit", |s| s.contains("tui exited with"));
    assert!(screen.contains("tui exited with 143"), "{screen}");
    assert_eq!(tmux.alternate_on(), "0", "the alternate screen was left");
    // The cursor the TUI hid is shown again.
    let out = tmux.run(&["display-message", "-p", "-t", "tui", "#{cursor_flag}"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "the cursor is shown"
    );
}

#[test]
fn tui_without_a_runtime_names_the_missing_control_socket() {
    let p = Project::with_config(&config(&unique_tag("tuinone")));
    let out = p.run(&["runtime", "tui"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no kinfra runtime is running"), "{err}");
    assert!(err.contains("control.sock"), "{err}");
    // Nothing was drawn: the error is plain text, no escape sequences.
    assert!(!err.contains('\x1b'), "{err:?}");
}
