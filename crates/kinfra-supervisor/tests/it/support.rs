//! Test helpers: a temp project, service builders and a bounded `wait_for`.

use kinfra_core::config::{Dur, ServiceConfig};
use kinfra_core::state::ServiceState;
use kinfra_core::status::ServiceStatus;
use kinfra_supervisor::{Supervisor, SupervisorOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A temp dir with a state dir inside.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("kinfra-sup-it")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".kinfra")
    }

    pub fn opts(&self) -> SupervisorOptions {
        let mut o = SupervisorOptions::new("test", self.state_dir());
        o.base_dir = self.dir.path().to_path_buf();
        o
    }

    /// Writes a file in the project dir and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    pub async fn start(&self, services: &BTreeMap<String, ServiceConfig>) -> Supervisor {
        match Supervisor::start(services, self.opts()).await {
            Ok(s) => s,
            Err(e) => panic!("supervisor start failed: {e}"),
        }
    }
}

/// A shell service with quick defaults for tests (short grace, no backoff).
pub fn sh(cmd: &str) -> ServiceConfig {
    let mut c = ServiceConfig::new(cmd);
    c.stop_grace = Dur::from_millis(2000);
    c.backoff.initial = Dur::from_millis(0);
    c
}

pub fn services(list: Vec<(&str, ServiceConfig)>) -> BTreeMap<String, ServiceConfig> {
    list.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn status_of(sup: &Supervisor, name: &str) -> ServiceStatus {
    match sup.status().remove(name) {
        Some(s) => s,
        None => panic!("no status for {name}"),
    }
}

pub fn state_of(sup: &Supervisor, name: &str) -> ServiceState {
    status_of(sup, name).state
}

/// Waits for a state, panicking with the full status when it does not come.
pub async fn expect_state(sup: &Supervisor, name: &str, state: ServiceState, timeout: Duration) {
    let ok = wait_for(timeout, || state_of(sup, name) == state).await;
    assert!(
        ok,
        "{name} never reached {state}: {:#?}",
        status_of(sup, name)
    );
}

/// The messages of a service's log lines.
pub fn messages(sup: &Supervisor, name: &str) -> Vec<String> {
    sup.logs(Some(name), 100_000)
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.line.message)
        .collect()
}

/// True when a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    kinfra_supervisor::procfs::stat(pid).is_some_and(|s| !s.is_zombie())
}

/// Reads a pid written by a test script.
pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
