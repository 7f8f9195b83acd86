//! Test support: running the built `kinfra` binary, temp projects, bounded waits, raw HTTP.

#![allow(dead_code)]

/// Debian's Pebble and pebble-challtestsrv, the TLS helpers and waits kinfra-acme's own tests
/// use.
#[path = "../../../crates/kinfra-acme/tests/it/support.rs"]
pub mod pebble;
pub mod surreal;
pub mod webdriver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the kinfra binary under test.
pub fn kinfra_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kinfra")
}

/// Polls `cond` every 20 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary project directory.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// An empty project dir.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("kinfra-it-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// A project with `kinfra.toml` holding `toml`.
    pub fn with_config(toml: &str) -> Self {
        let p = Self::new();
        p.write("kinfra.toml", toml);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Runs `kinfra ARGS` to completion in this dir (bounded by 60 s).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(kinfra_bin());
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("KINFRA_LOG")
            // Tests run in parallel: never the default proxy port.
            .env("KINFRA_PROXY__HTTP", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        output_within(
            &mut cmd,
            Duration::from_secs(60),
            &format!("kinfra {args:?}"),
        )
    }

    /// Starts `kinfra runtime up` in this dir and waits until it says it is ready.
    pub fn up(&self, extra: &[&str], env: &[(&str, &str)]) -> Up {
        let mut cmd = Command::new(kinfra_bin());
        cmd.args(["runtime", "up", "--color", "never"])
            .args(extra)
            .current_dir(self.path())
            .env_remove("KINFRA_LOG")
            // Tests run in parallel: never the default proxy port.
            .env("KINFRA_PROXY__HTTP", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kinfra runtime up");
        let output = Arc::new(Mutex::new(Vec::<String>::new()));
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
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().expect("output lock").push(line);
                }
            });
        }
        let up = Up { child, output };
        up.wait_for_line(Duration::from_secs(30), "Press Ctrl-C");
        up
    }
}

/// Runs `cmd` (its output piped) to completion; killed (SIGKILL) and the test failed when it
/// takes longer than `limit`.
pub fn output_within(cmd: &mut Command, limit: Duration, what: &str) -> Output {
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap_or_else(|e| panic!("wait for {what}: {e}")),
        Err(_) => {
            kill(pid, libc::SIGKILL);
            panic!("{what} did not finish within {limit:?}");
        }
    }
}

/// A running `kinfra runtime up`. Killed (SIGKILL) on drop if still running.
pub struct Up {
    pub child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Up {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits for an output line containing `needle`; panics with the output so far.
    pub fn wait_for_line(&self, limit: Duration, needle: &str) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!(
                    "no line containing {needle:?} within {limit:?}; output:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The dashboard address printed in the banner.
    pub fn dashboard_addr(&self) -> String {
        let line = self.wait_for_line(Duration::from_secs(5), "dashboard   http://");
        let url = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .expect("dashboard address in banner");
        url.to_string()
    }

    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "kinfra did not exit within {limit:?}; output:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// True when a process with this PID exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("X");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// PIDs of all processes whose environment holds `KINFRA_TEST_TAG=tag`.
pub fn pids_tagged(tag: &str) -> Vec<u32> {
    let needle = format!("KINFRA_TEST_TAG={tag}");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
                && env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
                && alive(pid)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// A unique tag for a test's processes.
pub fn unique_tag(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    )
}

/// A blocking HTTP/1.1 GET on 127.0.0.1; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_get_as(addr, path, None)
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) to `addr` and reads the
/// answer for up to `limit`: (status, lower-cased head, body). Status 0 when nothing came.
pub fn raw_exchange(addr: &str, request: &str, limit: Duration) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the proxy");
    s.set_read_timeout(Some(limit)).expect("read timeout");
    s.write_all(request.as_bytes()).expect("write the request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, head.to_ascii_lowercase(), body.to_owned())
}

/// A blocking HTTP/1.1 GET on 127.0.0.1 with `token` as a bearer token when given; returns
/// (status, body).
pub fn http_get_as(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}
