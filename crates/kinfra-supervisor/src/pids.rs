//! The live-process record `STATE_DIR/pids.json`, and cleanup of what a previous instance
//! left behind (it was SIGKILLed, so it could not stop its children).
//!
//! Two independent ways find leftovers: the records (PID + start time + process group, so a
//! reused PID is never touched) and the environment tag `KINFRA_SUPERVISOR_TAG=<hash of the
//! state dir>/<service>` that every child carries and its descendants inherit, even those that
//! left the process group with `setsid` or a double fork.

use crate::ports::write_atomic;
use crate::procfs;
use crate::spawn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::{info, warn};

/// Environment variable that marks every process a supervisor started.
pub const TAG_VAR: &str = "KINFRA_SUPERVISOR_TAG";

/// One process the supervisor is responsible for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// The PID.
    pub pid: i32,
    /// Start time from `/proc/PID/stat`.
    pub start_time: u64,
    /// Its process group.
    pub pgid: i32,
}

/// The persisted records, by service.
#[derive(Debug)]
pub struct PidRegistry {
    path: PathBuf,
    records: Mutex<BTreeMap<String, Vec<PidRecord>>>,
}

/// The tag prefix of a state dir: a stable hash of its canonical path, then `/`.
pub fn tag_prefix(state_dir: &Path) -> String {
    let canon = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    // FNV-1a, 64 bits: stable across builds (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}/")
}

impl PidRegistry {
    /// An empty registry writing to `path`.
    pub fn new(path: &Path) -> PidRegistry {
        PidRegistry {
            path: path.to_path_buf(),
            records: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<PidRecord>>> {
        match self.records.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Replaces the records of `service` and saves.
    pub fn set(&self, service: &str, records: Vec<PidRecord>) {
        let json = {
            let mut all = self.lock();
            if records.is_empty() {
                all.remove(service);
            } else {
                all.insert(service.to_owned(), records);
            }
            serde_json::to_vec(&*all)
        };
        match json {
            Ok(json) => {
                if let Err(error) = write_atomic(&self.path, &json) {
                    warn!(path = %self.path.display(), %error, "Saving the pid file failed.");
                }
            }
            Err(error) => warn!(%error, "Encoding the pid file failed."),
        }
    }

    /// Adds records to `service` (descendants found while it runs) and saves.
    pub fn add(&self, service: &str, extra: &[PidRecord]) {
        let mut current = self.lock().get(service).cloned().unwrap_or_default();
        let before = current.len();
        for r in extra {
            if !current.contains(r) {
                current.push(*r);
            }
        }
        if current.len() != before {
            self.set(service, current);
        }
    }

    /// The records of `service`.
    pub fn get(&self, service: &str) -> Vec<PidRecord> {
        self.lock().get(service).cloned().unwrap_or_default()
    }

    /// Every record.
    pub fn all(&self) -> Vec<(String, PidRecord)> {
        self.lock()
            .iter()
            .flat_map(|(s, rs)| rs.iter().map(move |r| (s.clone(), *r)))
            .collect()
    }
}

/// Kills (SIGKILL) what a previous instance with this state dir left: the processes in
/// `pids.json` that are still the same processes, their groups, and every process carrying
/// the tag. Returns the processes signalled, as (pid, start time).
pub fn kill_leftovers(pids_file: &Path, tag_prefix: &str) -> io::Result<Vec<(i32, u64)>> {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    match std::fs::read(pids_file) {
        Ok(bytes) => {
            let records: BTreeMap<String, Vec<PidRecord>> =
                serde_json::from_slice(&bytes).unwrap_or_default();
            for (service, list) in records {
                for r in list {
                    if r.pid == me {
                        continue;
                    }
                    if spawn::signal_exact(r.pid, r.start_time, libc::SIGKILL) {
                        info!(service = %service, pid = r.pid, "Killed a process left by a previous run.");
                        killed.push((r.pid, r.start_time));
                        if r.pgid == r.pid {
                            spawn::signal_group(r.pgid, libc::SIGKILL);
                            crate::guardian::remove_group(r.pgid);
                        }
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for p in tagged(tag_prefix) {
        if spawn::signal_exact(p.pid, p.start_time, libc::SIGKILL) {
            info!(
                pid = p.pid,
                "Killed a tagged process left by a previous run."
            );
            killed.push((p.pid, p.start_time));
        }
    }
    Ok(killed)
}

/// Processes carrying a tag that starts with `prefix` (never this process).
pub fn tagged(prefix: &str) -> Vec<procfs::ProcStat> {
    let me = std::process::id() as i32;
    procfs::all()
        .into_iter()
        .filter(|p| p.pid != me && !p.is_zombie() && procfs::environ_has(p.pid, TAG_VAR, prefix))
        .collect()
}

/// Sends `sig` to every live process carrying a tag starting with `prefix`.
pub fn kill_tagged(prefix: &str, sig: i32) -> usize {
    tagged(prefix)
        .into_iter()
        .filter(|p| spawn::signal_exact(p.pid, p.start_time, sig))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_stable() {
        let a = tag_prefix(Path::new("/tmp"));
        assert_eq!(a, tag_prefix(Path::new("/tmp")));
        assert_ne!(a, tag_prefix(Path::new("/var")));
        assert_eq!(a.len(), 17);
    }

    #[test]
    fn registry_saves_and_merges() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pids.json");
        let reg = PidRegistry::new(&path);
        let r = |pid| PidRecord {
            pid,
            start_time: 1,
            pgid: pid,
        };
        reg.set("a", vec![r(10)]);
        reg.add("a", &[r(10), r(11)]);
        assert_eq!(reg.get("a"), vec![r(10), r(11)]);
        let text = std::fs::read_to_string(&path)?;
        assert!(text.contains("\"a\"") && text.contains("11"));
        reg.set("a", vec![]);
        assert!(reg.all().is_empty());
        Ok(())
    }
}
